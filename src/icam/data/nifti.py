"""The user's own cohort: NIfTI images listed in a CSV, preprocessed once into a disk cache.

Preprocessing of one row (its image, brain mask and ground-truth map together, so they stay
aligned): reorient (RAS by default) and optionally resample to a voxel size (MONAI, nibabel
reader); take the brain mask (the table's, else a foreground mask: Otsu, largest connected
component, holes filled); then fit the model's shape (for 2D models, the two in-plane axes;
slices are taken across ``slice_axis``, within the brain's extent). ``pad_crop`` keeps the
voxel size and centres the window on the brain where the image is larger than the shape;
``resize`` scales the brain's bounding box (plus a margin) to fill the shape, by one factor on
every axis. The share of the brain a fit would cut off is measured per image and refused
above ``data.max_brain_cropped``.

Each row is stored as ``<cache>/<key>.{image,mask,gt_map}.npy`` with its affines in
``<key>.json``; the key hashes the files (path, size, modification time) and the spatial
settings, so a changed file or setting is preprocessed again. The cache lives outside the data
(``data.cache_dir``, default ``$XDG_CACHE_HOME/icam``). Training reads it through memory maps:
the cohort is never held in RAM. Intensity normalisation is applied on reading, so it can
change without re-preprocessing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from ..files import write_atomically
from .cohort import Item
from .resample import resample_to_grid
from .table import DataError, Problem, Row, nifti_stem

CACHE_VERSION = 2
KINDS = ("image", "mask", "gt_map")


def default_cache_dir() -> Path:
    """The user's cache directory: $XDG_CACHE_HOME/icam, else ~/.cache/icam (never the data folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icam"


@dataclass(frozen=True)
class Spatial:
    """The spatial preprocessing: what a cache entry depends on (besides the files)."""

    shape: tuple[int, ...]  # the model's shape: 3 sides, or 2 for slices
    orientation: str | None
    spacing: tuple[float, ...] | None
    fit: str
    slice_axis: int
    brain_mask: str = "auto"
    brain_margin: int = 4

    @property
    def volume_size(self) -> tuple[int, ...]:
        """Target size of the preprocessed volume; -1 keeps the slice axis as it is."""
        if len(self.shape) == 3:
            return self.shape
        size = list(self.shape)
        size.insert(self.slice_axis, -1)
        return tuple(size)

    @classmethod
    def of(cls, data_config) -> Spatial:
        return cls(tuple(data_config.shape), data_config.orientation,
                   tuple(data_config.spacing) if data_config.spacing else None, data_config.fit,
                   data_config.slice_axis, data_config.brain_mask, data_config.brain_margin)


def _save_array(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as f:
        np.save(f, array)


def _file_key(path: Path | None) -> list | None:
    if path is None:
        return None
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _cache_key(row: Row, spatial: Spatial) -> str:
    description = json.dumps([CACHE_VERSION, [_file_key(getattr(row, k)) for k in KINDS], spatial.volume_size,
                              spatial.orientation, spatial.spacing, spatial.fit, spatial.brain_mask,
                              spatial.brain_margin])
    return hashlib.sha1(description.encode()).hexdigest()


def is_slice(shape) -> bool:
    """Whether an image of this shape is one 2D slice (X, Y) or (X, Y, 1), not a volume."""
    return len(shape) == 2 or (len(shape) >= 3 and shape[2] == 1)


def slices_among_volumes(shapes: dict[int, list[int]], rows: list[Row], volumes_only: bool) -> list[Problem]:
    """A 2D slice in a cohort of 3D volumes (or any slice, ``volumes_only``: a 3D model's cohort):
    one problem per slice, naming its file."""
    volume = next((shapes[r.number] for r in rows if r.number in shapes and not is_slice(shapes[r.number])), None)
    if volume is None and not volumes_only:
        return []
    among = f"among 3D volumes (e.g. {'x'.join(map(str, volume[:3]))})" if volume else "for a 3D model"
    return [Problem(r.number, f"a 2D image ({'x'.join(map(str, shapes[r.number]))}) {among}: a cohort is all "
                              "volumes or all slices", str(r.image))
            for r in rows if r.number in shapes and is_slice(shapes[r.number])]


def check_array(array: np.ndarray, path: Path, number: int | None, may_be_constant: bool = False) -> list[Problem]:
    """Content checks of a decoded image: dimensions, finite values, not constant (a mask or a
    ground-truth map may be: a subject can show no change)."""
    problems = []
    shape = array.shape
    if array.ndim == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        problems.append(Problem(number, f"expected a 3D image (or a 2D slice), got shape {array.shape}"
                                        + (" (a 4D series?)" if array.ndim == 4 else ""), str(path)))
        return problems
    if not np.isfinite(array).all():
        problems.append(Problem(number, f"{int((~np.isfinite(array)).sum())} voxels are NaN or infinite", str(path)))
    elif array.size == 0 or (array.min() == array.max() and not may_be_constant):
        problems.append(Problem(number, "the image is empty (every voxel has the same value)", str(path)))
    return problems


def load_array(path: Path, number: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a NIfTI file with nibabel (scale slope and intercept applied); unreadable or truncated
    files become a DataError."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        return np.asarray(image.dataobj, dtype=np.float32), image.affine
    except Exception as e:
        raise DataError([Problem(number, f"cannot read the image ({type(e).__name__}: {e})", str(path))]) from None


def _reorient(array: np.ndarray, affine: np.ndarray, spatial: Spatial, interpolation: str):
    """Orientation and voxel size (MONAI): (volume (X, Y, Z), its affine)."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientation, Spacing

    steps: list[Orientation | Spacing] = []
    if spatial.orientation:
        # explicit labels: MONAI warns that their default will change
        steps.append(Orientation(axcodes=spatial.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spatial.spacing:
        steps.append(Spacing(pixdim=spatial.spacing, mode=interpolation))
    tensor = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(affine, dtype=torch.float64))
    if steps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tensor = Compose(steps)(tensor)
    return np.asarray(tensor[0].numpy(), dtype=np.float32), np.asarray(tensor.affine, dtype=np.float64)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the histogram."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    background, foreground = weight[:-1], total - weight[:-1]
    valid = (background > 0) & (foreground > 0)
    between = np.zeros_like(centres[:-1])
    mu_b = mean[:-1][valid] / background[valid]
    mu_f = (total_mean - mean[:-1][valid]) / foreground[valid]
    between[valid] = background[valid] * foreground[valid] * (mu_b - mu_f) ** 2
    return float(edges[1:][int(between.argmax())])


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """The head or brain of a scan without a mask: voxels above Otsu's threshold, the largest
    connected component, holes filled (in 3D, and per slice for the ventricles open to a cut).
    Background noise, however bright its corners, stays out."""
    from scipy import ndimage

    squeezed = volume.squeeze() if volume.ndim == 3 and 1 in volume.shape else volume
    mask = squeezed > _otsu(squeezed.ravel())
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    mask = ndimage.binary_fill_holes(mask)
    if mask.ndim == 3:
        for k in range(mask.shape[2]):
            mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask.reshape(volume.shape).astype(np.float32)


@dataclass
class Window:
    """Where the model's grid lies in the (reoriented) volume: voxel j of axis i is at source
    coordinate ``start[i] + j * step[i]``."""

    start: np.ndarray
    step: np.ndarray
    size: tuple[int, ...]

    @property
    def matrix(self) -> np.ndarray:
        """Model voxel → source voxel (4×4)."""
        m = np.diag([*self.step, 1.0])
        m[:3, 3] = self.start
        return m


def _bounding_box(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first and last voxel index of the mask along each axis (the whole volume without one)."""
    if mask is None or not (mask > 0).any():
        return np.zeros(3), np.array(shape, dtype=float) - 1
    found = np.nonzero(mask > 0)
    return np.array([f.min() for f in found], dtype=float), np.array([f.max() for f in found], dtype=float)


def fit_window(volume_shape: tuple[int, ...], mask: np.ndarray | None, spatial: Spatial) -> Window:
    """The model's grid in the volume: see the module docstring for pad_crop and resize."""
    size = [s if s > 0 else n for s, n in zip(spatial.volume_size, volume_shape)]
    fitted = [s > 0 for s in spatial.volume_size]
    lo, hi = _bounding_box(mask, volume_shape)
    start, step = np.zeros(3), np.ones(3)
    if spatial.fit == "resize":
        margin = spatial.brain_margin if mask is not None else 0
        extent = np.array([hi[i] - lo[i] + 1 + 2 * margin if fitted[i] else size[i] for i in range(3)], dtype=float)
        scale = max(extent[i] / size[i] for i in range(3) if fitted[i])
        centre = (lo + hi) / 2
        for i in range(3):
            if fitted[i]:  # voxel centres spread evenly over the box, the same step on every axis
                step[i] = scale
                start[i] = centre[i] - scale * (size[i] - 1) / 2
    else:
        for i in range(3):
            n, s = size[i], volume_shape[i]
            if not fitted[i]:
                continue
            if s <= n:  # pad, the image in the middle
                start[i] = -((n - s) // 2)
            else:  # crop, the window centred on the brain (on the image without one), inside the image
                start[i] = min(max(math.floor((lo[i] + hi[i] + 1) / 2 - n / 2), 0), s - n)
    return Window(start, step, tuple(size))


def apply_window(volume: np.ndarray, window: Window, mode: str = "bilinear") -> np.ndarray:
    """The volume on the model's grid; 0 outside it. Whole-voxel shifts are copied exactly."""
    integral = np.allclose(window.step, 1) and np.allclose(window.start, np.round(window.start))
    if not integral:
        return resample_to_grid(volume, np.eye(4), window.matrix, window.size, mode)[0, 0].numpy()
    out = np.zeros(window.size, dtype=np.float32)
    start = np.round(window.start).astype(int)
    source = tuple(slice(max(0, a), min(s, a + n)) for a, n, s in zip(start, window.size, volume.shape))
    target = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(source, start))
    out[target] = volume[source]
    return out


@dataclass
class Preprocessed:
    arrays: dict  # kind → array on the model's grid (image; mask and gt_map when there are)
    meta: dict  # affines, source grid, window, brain facts


def decode_row(row: Row) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode and check a row's image, mask and ground-truth map: {kind: (array, affine)}; every
    problem of the row at once (a mask or map of another shape than its image is one)."""
    sources, problems = {}, []
    for kind in KINDS:
        path = getattr(row, kind)
        if path is None:
            continue
        try:
            array, affine = load_array(path, row.number)
        except DataError as e:
            problems += e.problems
            continue
        problems += check_array(array, path, row.number, may_be_constant=kind != "image")
        sources[kind] = (array, affine)
    if "image" in sources:
        image_shape = sources["image"][0].shape[:3]
        for kind in ("mask", "gt_map"):
            if kind in sources and sources[kind][0].shape[:3] != image_shape:
                problems.append(Problem(row.number, f"{kind} shape {list(sources[kind][0].shape)} differs from "
                                                    f"the image's {list(image_shape)}", str(getattr(row, kind))))
    if problems:
        raise DataError(problems)
    return sources


def _as_volume(array: np.ndarray) -> np.ndarray:
    """(X, Y, Z): a 4D image's first volume, a 2D slice as one plane."""
    return array[..., 0] if array.ndim == 4 else array[:, :, None] if array.ndim == 2 else array


def preprocess_row(row: Row, spatial: Spatial) -> Preprocessed:
    """Decode, check and preprocess one row's image, brain mask and ground-truth map together."""
    decoded = decode_row(row)
    source_shape = list(decoded["image"][0].shape[:3])
    sources = {kind: (_as_volume(array), affine) for kind, (array, affine) in decoded.items()}
    image, affine = sources["image"]
    volumes = {kind: _reorient(a, aff, spatial, "nearest" if kind == "mask" else "bilinear")[0]
               for kind, (a, aff) in sources.items() if kind != "image"}
    volumes["image"], oriented_affine = _reorient(image, affine, spatial, "bilinear")
    if "mask" not in volumes and spatial.brain_mask == "auto":
        volumes["mask"] = foreground_mask(volumes["image"])
    mask = (volumes["mask"] > 0).astype(np.float32) if "mask" in volumes else None
    # brain_mask none (phantoms): the whole image is fitted; a table's mask still masks the maps
    window = fit_window(volumes["image"].shape, mask if spatial.brain_mask == "auto" else None, spatial)
    arrays = {kind: np.ascontiguousarray(apply_window(v, window, "nearest" if kind == "mask" else "bilinear"),
                                         dtype=np.float32) for kind, v in volumes.items()}
    meta = {"source": str(row.image), "affine": (oriented_affine @ window.matrix).tolist(),
            "source_affine": np.asarray(affine, dtype=np.float64).tolist(), "source_shape": source_shape,
            "shape": list(arrays["image"].shape), "brain_cropped": 0.0,
            "brain_mask": "table" if row.mask is not None else "foreground" if mask is not None else "none"}
    if mask is not None and mask.sum() > 0:
        kept = float((arrays["mask"] > 0).sum()) if spatial.fit == "pad_crop" else float(mask.sum())
        meta["brain_cropped"] = round(max(0.0, 1 - kept / float(mask.sum())), 4)
        axis = spatial.slice_axis
        along = np.nonzero((arrays["mask"] > 0).any(axis=tuple(a for a in range(3) if a != axis)))[0]
        meta["brain_extent"] = [int(along.min()), int(along.max()) + 1] if len(along) else None
    return Preprocessed(arrays, meta)


def preprocess(path: Path, spatial: Spatial, number: int | None = None) -> tuple[np.ndarray, dict]:
    """One image file as the model sees it, before intensity scaling: (volume, meta)."""
    done = preprocess_row(Row(number or 0, Path(path), 0, math.nan, nifti_stem(path), None, id=nifti_stem(path)),
                          spatial)
    return done.arrays["image"], done.meta


class PreprocessingCache:
    """Preprocessed rows on disk, written atomically, read by memory map."""

    def __init__(self, directory: str | Path | None, spatial: Spatial, max_brain_cropped: float = 1.0):
        self.directory = Path(directory) if directory else default_cache_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the preprocessing cache {self.directory} ({e.strerror}); set "
                             "data.cache_dir to a folder you can write") from None
        self.spatial = spatial
        self.max_brain_cropped = max_brain_cropped

    def ensure(self, row: Row) -> dict:
        """Preprocess ``row`` unless cached: {kind: .npy path, "meta": its facts}."""
        key = _cache_key(row, self.spatial)
        meta_path = self.directory / f"{key}.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
        else:
            done = preprocess_row(row, self.spatial)
            suffix = f".{os.getpid()}.tmp"  # two processes may preprocess the same scan at once
            for kind, array in done.arrays.items():
                write_atomically(self.directory / f"{key}.{kind}.npy", functools.partial(_save_array, array), suffix)
            meta = {**done.meta, "kinds": list(done.arrays)}
            write_atomically(meta_path, lambda temporary: temporary.write_text(json.dumps(meta)), suffix)
        if len(self.spatial.shape) == 3 and is_slice(meta["source_shape"]):
            raise DataError([Problem(row.number, f"a 2D image ({'x'.join(map(str, meta['source_shape']))}), but "
                                                 f"the model takes 3D volumes (data.shape {list(self.spatial.shape)})",
                                     str(row.image))])
        if meta["brain_cropped"] > self.max_brain_cropped:
            raise DataError([Problem(row.number, f"fitting the shape {list(self.spatial.shape)} would cut off "
                                                 f"{meta['brain_cropped']:.1%} of the brain (more than "
                                                 f"data.max_brain_cropped {self.max_brain_cropped:.1%}); set "
                                                 "data.spacing to a coarser voxel size, data.fit=resize or a "
                                                 "larger data.shape, or raise data.max_brain_cropped to accept it",
                                     str(row.image))])
        return {**{kind: str(self.directory / f"{key}.{kind}.npy") for kind in meta["kinds"]}, "meta": meta}


class _Jobs(Dataset):
    """Runs ``work(row)`` for each row, in DataLoader worker processes; a DataError becomes a
    list of problems instead of stopping the pass."""

    def __init__(self, work, rows: list[Row]):
        self.work, self.rows = work, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        try:
            return i, self.work(self.rows[i]), None
        except DataError as e:
            return i, None, [(p.row, p.message, p.file) for p in e.problems]


def _for_each_row(work, rows: list[Row], workers: int, progress=None):
    """Apply ``work`` to every row: ({row number: result}, problems)."""
    results: dict[int, object] = {}
    problems: list[Problem] = []
    loader = DataLoader(_Jobs(work, rows), batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    for done, (i, result, found) in enumerate(loader, 1):
        if found:
            problems.extend(Problem(*p) for p in found)
        else:
            results[rows[i].number] = result
        if progress:
            progress(done, len(rows))
    return results, problems


def _check_row(row: Row) -> dict[str, list[int]]:
    """Decode and check a row's files: {kind: shape}."""
    return {kind: list(array.shape) for kind, (array, _) in decode_row(row).items()}


def fill_cache(cache: PreprocessingCache, rows: list[Row], workers: int = 0, progress=None
               ) -> tuple[dict[int, dict], list[Problem]]:
    """Preprocess every row: {row number: {kind: cache path, "meta": …}} and the problems found."""
    return _for_each_row(cache.ensure, rows, workers, progress)


def check_files(rows: list[Row], workers: int = 0, progress=None) -> tuple[dict[int, dict[str, list]], list[Problem]]:
    """Decode and check every file of ``rows`` without preprocessing: ({row: {kind: shape}}, problems)."""
    return _for_each_row(_check_row, rows, workers, progress)


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Affine of slice ``index`` across ``axis`` of a volume, written as an (A, B, 1) image:
    the two in-plane axes first, the slice axis last, the origin moved to the slice."""
    order = [a for a in range(3) if a != axis] + [axis]
    out = np.eye(4)
    out[:3, :3] = affine[:3, order]
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * index
    return out


class NiftiCohort(Dataset):
    """Images (3D volumes, or 2D slices of them) read from the preprocessing cache.

    Items: ``image`` (1, *shape) normalised, ``label``, ``target`` (NaN when unknown), and,
    when the table has them, ``mask`` and ``gt_map``; ``affine`` is the item's voxel → mm
    matrix (4×4) and ``row`` its row in the table.
    """

    def __init__(self, rows: list[Row], entries: dict[int, dict[str, Any]], data_config,
                 intensity_range: tuple[float, float] | None = None, augment: bool = False):
        self.config = data_config
        self.rows = rows
        self.entries = [entries[r.number] for r in rows]
        self.spatial = Spatial.of(data_config)
        self.intensity_range = intensity_range
        self.augment = augment and data_config.augment.enabled
        self._augmenter: Callable | None = None
        # each row's facts (affines, source grid, brain extent)
        self.metas = [entry["meta"] for entry in self.entries]
        self.samples: list[tuple[int, int | None]] = []  # (row index, slice index or None)
        for i, meta in enumerate(self.metas):
            if len(self.spatial.shape) == 3:
                self.samples.append((i, None))
            else:
                extent = meta.get("brain_extent") or [0, meta["shape"][self.spatial.slice_axis]]
                self.samples.extend((i, s) for s in self.slice_indices(*extent))
        self.labels = torch.tensor([rows[i].label for i, _ in self.samples], dtype=torch.long)
        self.targets = torch.tensor([rows[i].target for i, _ in self.samples], dtype=torch.float32)

    def slice_indices(self, first: int, end: int) -> list[int]:
        """Slices at ``data.slice_range`` (fractions) of the brain's extent [first, end) on the slice axis."""
        lo, hi = self.config.slice_range
        n = self.config.slices_per_subject
        positions = [lo + (hi - lo) * (k + 0.5) / n for k in range(n)] if n > 1 else [(lo + hi) / 2]
        depth = end - first
        return sorted({first + min(depth - 1, max(0, int(p * depth))) for p in positions})

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.spatial.shape)

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def has_gt_maps(self) -> bool:
        return all("gt_map" in e for e in self.entries) and len(self.entries) > 0

    @property
    def has_masks(self) -> bool:
        return all("mask" in e for e in self.entries) and len(self.entries) > 0

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: str, index: int | None) -> np.ndarray:
        volume = np.load(path, mmap_mode="r")
        if index is not None:
            volume = np.take(volume, index, axis=self.spatial.slice_axis)
        return np.array(volume, dtype=np.float32)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (a cohort lives as long as its process)
    def _volume_range(self, path: str) -> tuple[float, float]:
        """The intensity range of a whole volume (so all slices of a scan share one scaling)."""
        volume = np.load(path, mmap_mode="r")
        if self.config.clip_percentiles is None:
            return float(volume.min()), float(volume.max())
        values = volume[volume != 0] if (volume != 0).any() else np.asarray(volume).ravel()
        lo, hi = np.percentile(values, self.config.clip_percentiles)
        return float(lo), float(hi)

    def intensity_scale(self, i: int) -> tuple[float, float] | None:
        """The (low, high) input intensities item ``i`` was scaled from (None: not scaled)."""
        mode = self.config.intensity
        if mode == "none":
            return None
        if mode == "cohort":
            return self.intensity_range
        return self._volume_range(self.entries[self.samples[i][0]]["image"])

    def denormalise(self, image: np.ndarray, i: int) -> np.ndarray:
        """A model-space image of item ``i`` back in the input's intensity units."""
        scale = self.intensity_scale(i)
        if scale is None:
            return image
        unit = image if self.config.intensity == "minmax01" else (image + 1) / 2
        return scale[0] + unit * (scale[1] - scale[0])

    def normalise(self, image: np.ndarray, path: str) -> np.ndarray:
        mode = self.config.intensity
        if mode == "none":
            return image
        if mode != "cohort":
            lo, hi = self._volume_range(path)
        elif self.intensity_range is None:
            raise UserError("data.intensity is cohort, but this cohort was given no intensity range")
        else:
            lo, hi = self.intensity_range
        scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
        return scaled if mode == "minmax01" else scaled * 2 - 1

    def __getitem__(self, i: int) -> Item:
        row_index, index = self.samples[i]
        entry, row = self.entries[row_index], self.rows[row_index]
        image = torch.from_numpy(self.normalise(self._read(entry["image"], index), entry["image"]))[None]
        if self.augment:
            image = self._augment(image)
        affine = self.item_affine(i)
        item: Item = {"image": image, "label": torch.tensor(row.label), "target": torch.tensor(row.target),
                      "affine": torch.from_numpy(affine), "row": torch.tensor(row_index)}
        for kind in ("mask", "gt_map"):
            if kind in entry:
                item[kind] = torch.from_numpy(self._read(entry[kind], index))[None]
        return item

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        if self._augmenter is None:  # built lazily, in the worker process that uses it
            from monai.transforms import Compose, RandAffine, RandScaleIntensity, RandShiftIntensity

            a = self.config.augment
            d = len(self.spatial.shape)
            augmenter = Compose([
                RandAffine(prob=a.probability, rotate_range=[math.radians(a.rotate_degrees)] * (1 if d == 2 else 3),
                           scale_range=[a.scale] * d, translate_range=[a.translate_voxels] * d,
                           padding_mode="border"),
                RandScaleIntensity(factors=a.intensity, prob=a.probability),
                RandShiftIntensity(offsets=a.intensity, prob=a.probability),
            ])
            augmenter.set_random_state(seed=int(torch.initial_seed() % 2**32))
            self._augmenter = augmenter
        return torch.as_tensor(self._augmenter(image)).float()

    def item_affine(self, i: int) -> np.ndarray:
        """Item ``i``'s voxel → mm matrix (a slice's own, for 2D models)."""
        row_index, index = self.samples[i]
        affine = np.asarray(self.metas[row_index]["affine"])
        return affine if index is None else slice_affine(affine, self.spatial.slice_axis, index)

    def source(self, i: int) -> Source:
        """Where item ``i`` came from: its table row, source file, affine and shape (for writing outputs back)."""
        row_index, index = self.samples[i]
        meta = self.metas[row_index]
        row = self.rows[row_index]
        return Source(row.number, str(row.image), index, row.subject, row.id or nifti_stem(row.image),
                      row.raw_label, np.asarray(meta["source_affine"], dtype=np.float64), tuple(meta["source_shape"]))


@dataclass(frozen=True)
class Source:
    """Where one item of a NIfTI cohort came from: what its outputs are named by and written onto."""

    row: int  # the table row, numbered as the table's reader counts them
    file: str  # the input NIfTI file
    slice: int | None  # 2D models: the slice's index along data.slice_axis; None for volumes
    subject: str
    id: str  # the table's id, or the file's stem
    raw_label: str  # the label as the table wrote it (kept for classes the run does not model)
    source_affine: np.ndarray  # the file's own voxel → mm matrix
    source_shape: tuple[int, ...]  # the file's own grid


def cohort_intensity_range(cohort: NiftiCohort, percentiles: tuple[float, float] | None,
                           max_volumes: int = 200) -> tuple[float, float]:
    """One intensity range for every image: percentiles (default 0.5, 99.5) of the non-zero
    voxels of up to ``max_volumes`` training volumes."""
    percentiles = percentiles or (0.5, 99.5)
    paths = list(dict.fromkeys(e["image"] for e in cohort.entries))[:max_volumes]
    values = []
    for p in paths:
        v = np.load(p, mmap_mode="r")
        v = np.asarray(v[v != 0] if (v != 0).any() else v).ravel()
        values.append(v[:: max(1, len(v) // 20000)])
    lo, hi = np.percentile(np.concatenate(values), percentiles)
    return float(lo), float(hi)

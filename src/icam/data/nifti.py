"""The user's own cohort: NIfTI images listed in a CSV, preprocessed once into a disk cache.

Preprocessing (MONAI, nibabel reader): reorient (RAS by default), optionally resample to a
voxel size, then pad/crop or resize to the model's shape (for 2D models, the two in-plane
axes; slices are taken across ``slice_axis`` afterwards). Each preprocessed volume is
stored as ``<cache>/<key>.npy`` with its affine in ``<key>.json``; the key hashes the file
(path, size, modification time) and the spatial settings, so a changed file or setting
is preprocessed again. Training reads the cache through memory maps: the cohort is never
held in RAM. Intensity normalisation is applied on reading, so it can change without
re-preprocessing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .table import DataError, Problem, Row

CACHE_VERSION = 1


@dataclass(frozen=True)
class Spatial:
    """The spatial preprocessing: what a cache entry depends on (besides the file)."""

    shape: tuple[int, ...]  # the model's shape: 3 sides, or 2 for slices
    orientation: str | None
    spacing: tuple[float, ...] | None
    fit: str
    slice_axis: int

    @property
    def volume_size(self) -> tuple[int, ...]:
        """Target size of the preprocessed volume; -1 keeps the slice axis as it is."""
        if len(self.shape) == 3:
            return self.shape
        size = list(self.shape)
        size.insert(self.slice_axis, -1)
        return tuple(size)

    @classmethod
    def of(cls, data_config) -> "Spatial":
        return cls(tuple(data_config.shape), data_config.orientation,
                   tuple(data_config.spacing) if data_config.spacing else None, data_config.fit,
                   data_config.slice_axis)


def _cache_key(path: Path, spatial: Spatial, interpolation: str) -> str:
    stat = path.stat()
    description = json.dumps([CACHE_VERSION, str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                              spatial.volume_size, spatial.orientation, spatial.spacing, spatial.fit, interpolation])
    return hashlib.sha1(description.encode()).hexdigest()


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


def nifti_stem(path: str | Path) -> str:
    """A NIfTI file's name without .nii.gz / .nii: how outputs name the input they belong to."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_array(path: Path, number: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a NIfTI file with nibabel; unreadable or truncated files become a DataError."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        return np.asarray(image.dataobj, dtype=np.float32), image.affine
    except Exception as e:  # noqa: BLE001 - nibabel, gzip and OS errors all mean "unreadable"
        raise DataError([Problem(number, f"cannot read the image ({type(e).__name__}: {e})", str(path))]) from None


def _monai_pipeline(spatial: Spatial, interpolation: str):
    from monai.transforms import Compose, Orientation, Resize, ResizeWithPadOrCrop, Spacing

    steps = []
    if spatial.orientation:
        # explicit labels: MONAI warns that their default will change
        steps.append(Orientation(axcodes=spatial.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spatial.spacing:
        steps.append(Spacing(pixdim=spatial.spacing, mode=interpolation))
    if spatial.fit == "resize":
        steps.append(Resize(spatial.volume_size, mode="nearest" if interpolation == "nearest" else "trilinear"))
    else:
        steps.append(ResizeWithPadOrCrop(spatial.volume_size))
    return Compose(steps)


def preprocess(path: Path, spatial: Spatial, interpolation: str = "bilinear", number: int | None = None,
               may_be_constant: bool = False):
    """Decode, check and preprocess one image: (volume (X, Y, Z) float32, affine, source affine, source shape)."""
    from monai.data import MetaTensor

    array, affine = load_array(path, number)
    problems = check_array(array, path, number, may_be_constant)
    if problems:
        raise DataError(problems)
    source_shape = array.shape[:3] if array.ndim >= 3 else array.shape
    if array.ndim == 4:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(affine, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = _monai_pipeline(spatial, interpolation)(tensor)
    return (np.ascontiguousarray(out[0].numpy(), dtype=np.float32), np.asarray(out.affine, dtype=np.float64),
            np.asarray(affine, dtype=np.float64), list(source_shape))


class PreprocessingCache:
    """Preprocessed volumes on disk, written atomically, read by memory map."""

    def __init__(self, directory: str | Path, spatial: Spatial):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.spatial = spatial

    def paths(self, file: Path, interpolation: str) -> tuple[Path, Path]:
        key = _cache_key(file, self.spatial, interpolation)
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def ensure(self, file: Path, interpolation: str = "bilinear", number: int | None = None,
               may_be_constant: bool = False) -> str:
        """Preprocess ``file`` unless cached; returns the entry's .npy path."""
        array_path, meta_path = self.paths(file, interpolation)
        if meta_path.is_file() and array_path.is_file():
            return str(array_path)
        volume, affine, source_affine, source_shape = preprocess(file, self.spatial, interpolation, number,
                                                                 may_be_constant)
        suffix = f".{os.getpid()}.tmp"
        with open(str(array_path) + suffix, "wb") as f:
            np.save(f, volume)
        os.replace(str(array_path) + suffix, array_path)
        meta = {"source": str(file), "affine": affine.tolist(), "source_affine": source_affine.tolist(),
                "source_shape": source_shape, "shape": list(volume.shape)}
        Path(str(meta_path) + suffix).write_text(json.dumps(meta))
        os.replace(str(meta_path) + suffix, meta_path)
        return str(array_path)

    @staticmethod
    def meta(array_path: str) -> dict:
        return json.loads(Path(array_path[: -len(".npy")] + ".json").read_text())


class _Jobs(Dataset):
    """Runs ``work(row, kind)`` for each (row, kind) job, in DataLoader worker processes;
    a DataError becomes a list of problems instead of stopping the pass."""

    def __init__(self, work, jobs: list[tuple[Row, str]]):
        self.work, self.jobs = work, jobs

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i):
        row, kind = self.jobs[i]
        try:
            return i, self.work(row, kind), None
        except DataError as e:
            return i, None, [(p.row, p.message, p.file) for p in e.problems]


def _for_each_file(work, rows: list[Row], workers: int, progress=None):
    """Apply ``work`` to every image, mask and ground-truth file of ``rows``:
    ({row number: {kind: result}}, problems)."""
    jobs = [(r, kind) for r in rows for kind in ("image", "mask", "gt_map") if getattr(r, kind) is not None]
    results: dict[int, dict] = {}
    problems: list[Problem] = []
    loader = DataLoader(_Jobs(work, jobs), batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    for done, (i, result, found) in enumerate(loader, 1):
        row, kind = jobs[i]
        if found:
            problems.extend(Problem(*p) for p in found)
        else:
            results.setdefault(row.number, {})[kind] = result
        if progress:
            progress(done, len(jobs))
    return results, problems


def _fill_one(cache: "PreprocessingCache", row: Row, kind: str) -> str:
    return cache.ensure(getattr(row, kind), "nearest" if kind == "mask" else "bilinear", row.number,
                        may_be_constant=kind != "image")


def _check_one(row: Row, kind: str) -> list[int]:
    path = getattr(row, kind)
    array, _ = load_array(path, row.number)
    problems = check_array(array, path, row.number, may_be_constant=kind != "image")
    if problems:
        raise DataError(problems)
    return list(array.shape)


def fill_cache(cache: PreprocessingCache, rows: list[Row], workers: int = 0, progress=None
               ) -> tuple[dict[int, dict[str, str]], list[Problem]]:
    """Preprocess every file of ``rows``: {row number: {kind: cache path}} and the problems found."""
    return _for_each_file(functools.partial(_fill_one, cache), rows, workers, progress)


def check_files(rows: list[Row], workers: int = 0, progress=None) -> tuple[dict[int, dict[str, list]], list[Problem]]:
    """Decode and check every file of ``rows`` without preprocessing: ({row: {kind: shape}}, problems)."""
    return _for_each_file(_check_one, rows, workers, progress)


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

    def __init__(self, rows: list[Row], entries: dict[int, dict[str, str]], data_config,
                 intensity_range: tuple[float, float] | None = None, augment: bool = False):
        self.config = data_config
        self.rows = rows
        self.entries = [entries[r.number] for r in rows]
        self.spatial = Spatial.of(data_config)
        self.intensity_range = intensity_range
        self.augment = augment and data_config.augment.enabled
        self._augmenter = None
        # each image's cache metadata (affine, source grid), read once rather than per item
        self.metas = [PreprocessingCache.meta(entry["image"]) for entry in self.entries]
        self.samples: list[tuple[int, int | None]] = []  # (row index, slice index or None)
        for i, meta in enumerate(self.metas):
            if len(self.spatial.shape) == 3:
                self.samples.append((i, None))
            else:
                self.samples.extend((i, s) for s in self.slice_indices(meta["shape"][self.spatial.slice_axis]))
        self.labels = torch.tensor([rows[i].label for i, _ in self.samples], dtype=torch.long)
        self.targets = torch.tensor([rows[i].target for i, _ in self.samples], dtype=torch.float32)

    def slice_indices(self, depth: int) -> list[int]:
        lo, hi = self.config.slice_range
        n = self.config.slices_per_subject
        positions = [lo + (hi - lo) * (k + 0.5) / n for k in range(n)] if n > 1 else [(lo + hi) / 2]
        return sorted({min(depth - 1, max(0, int(p * depth))) for p in positions})

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

    @functools.lru_cache(maxsize=256)
    def _volume_range(self, path: str) -> tuple[float, float]:
        """The intensity range of a whole volume (so all slices of a scan share one scaling)."""
        volume = np.load(path, mmap_mode="r")
        if self.config.clip_percentiles is None:
            return float(volume.min()), float(volume.max())
        values = volume[volume != 0] if (volume != 0).any() else np.asarray(volume).ravel()
        lo, hi = np.percentile(values, self.config.clip_percentiles)
        return float(lo), float(hi)

    def normalise(self, image: np.ndarray, path: str) -> np.ndarray:
        mode = self.config.intensity
        if mode == "none":
            return image
        lo, hi = self.intensity_range if mode == "cohort" else self._volume_range(path)
        scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
        return scaled if mode == "minmax01" else scaled * 2 - 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row_index, index = self.samples[i]
        entry, row = self.entries[row_index], self.rows[row_index]
        image = torch.from_numpy(self.normalise(self._read(entry["image"], index), entry["image"]))[None]
        if self.augment:
            image = self._augment(image)
        affine = np.asarray(self.metas[row_index]["affine"])
        if index is not None:
            affine = slice_affine(affine, self.spatial.slice_axis, index)
        item = {"image": image, "label": torch.tensor(row.label), "target": torch.tensor(row.target),
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
            self._augmenter = Compose([
                RandAffine(prob=a.probability, rotate_range=[math.radians(a.rotate_degrees)] * (1 if d == 2 else 3),
                           scale_range=[a.scale] * d, translate_range=[a.translate_voxels] * d,
                           padding_mode="border"),
                RandScaleIntensity(factors=a.intensity, prob=a.probability),
                RandShiftIntensity(offsets=a.intensity, prob=a.probability),
            ])
            self._augmenter.set_random_state(seed=int(torch.initial_seed() % 2**32))
        return torch.as_tensor(self._augmenter(image)).float()

    def source(self, i: int) -> dict:
        """Where item ``i`` came from: its table row, source file, affine and shape (for writing outputs back)."""
        row_index, index = self.samples[i]
        meta = self.metas[row_index]
        return {"row": self.rows[row_index].number, "file": str(self.rows[row_index].image), "slice": index,
                "subject": self.rows[row_index].subject, **meta}


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

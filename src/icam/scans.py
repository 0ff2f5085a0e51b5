"""One file at a time, between a run and the disk: files read through the run's own
preprocessing (orientation, spacing, brain window, shape, intensities), named, and their maps
written back onto each file's own grid. Below both the explainer (``Explainer.preprocess``)
and the cohort-level commands (``inference``)."""

from __future__ import annotations

import csv
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import BidsData, BrainSynthData, CsvData, FileData
from .data import read_cohort
from .data.brain_synth import DESIGNS
from .data.cohort import Item
from .data.nifti import NiftiCohort, PreprocessingCache, Spatial, fill_cache
from .data.table import DataError, Problem, require_split
from .errors import UserError
from .outputs import ExplanationFolder, write_map

if TYPE_CHECKING:
    from .loaded_run import LoadedRun


def preprocessing_for(model: LoadedRun, source: Path) -> CsvData | BidsData:
    """The data settings that turn the files ``source`` lists (a CSV, or a BIDS dataset's folder)
    into what this model was trained on."""
    data = model.config.data if model.config is not None else None
    if isinstance(data, FileData):
        return data.listed_in(source).model_copy(update={
            "skip_bad": False, "max_brain_cropped": 1.0, "augment": data.augment.model_copy(update={"enabled": False})})
    # brain-synth files are already in [−1, 1] and span one field of view at any size (resize, the
    # whole image); squares were min–max scaled per image and have no anatomy to mask
    synth = isinstance(data, BrainSynthData)
    return CsvData(csv="", shape=list(model.image_shape), intensity="none" if synth else "minmax",
                   fit="resize" if synth else "pad_crop", brain_mask="auto" if data is None else "none",
                   slice_axis=DESIGNS[data.design].slice_axis if isinstance(data, BrainSynthData) else 2
                   ).listed_in(source)


def load_images(model: LoadedRun, images: list[Path]) -> NiftiCohort:
    """Single NIfTI files (``--image``, ``--pair``, ``--interpolate``) as a cohort, through the run's
    preprocessing: listed in a temporary table under the run's image column."""
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"no such image: {image}")
    with tempfile.TemporaryDirectory(prefix="icam-inputs-") as folder:
        path = Path(folder) / "inputs.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([preprocessing_for(model, path).columns.image])
            writer.writerows([[str(Path(image).resolve())] for image in images])
        try:
            return load_inputs(model, path)
        except DataError as e:  # the user's files, not the rows of a table they never wrote
            raise DataError([Problem(None, p.message, p.file or (str(images[p.row - 2]) if p.row else None))
                             for p in e.problems], skippable=False) from None


def load_inputs(model: LoadedRun, csv_path: Path, split: str | None = None) -> NiftiCohort:
    """Read, check and preprocess the files a table lists (``csv_path``: a CSV, or a BIDS
    dataset's folder; labels and targets optional), through the run's column names, classes,
    splits and preprocessing."""
    data = preprocessing_for(model, csv_path)
    run_dir = model.run_dir
    table = read_cohort(data, require_label=False, run_dir=run_dir)
    rows, problems = table.rows, table.problems
    for warning in table.warnings:
        warnings.warn(f"{csv_path}: {warning}", stacklevel=2)
    if split is not None:
        rows = require_split(table, split, csv_path)
        if not rows:
            raise UserError(f"{csv_path}: no rows in split {split!r}")
    cache = PreprocessingCache(data.cache_dir, Spatial.of(data))
    entries, file_problems = fill_cache(cache, rows, data.preprocess_workers)
    problems += file_problems
    if problems:
        raise DataError(problems, f"{csv_path}: ", skippable=False)
    saved = data.intensity_range
    if data.intensity == "cohort" and saved is None and run_dir is not None and (run_dir / "data.json").is_file():
        saved = json.loads((run_dir / "data.json").read_text()).get("intensity_range") or None
    range_ = (float(saved[0]), float(saved[1])) if saved else None
    if data.intensity == "cohort" and range_ is None:
        raise UserError("this run scales intensities with a cohort-wide range, which is in its run folder's "
                         "data.json (intensity_range): load the model from its run folder")
    return NiftiCohort(rows, entries, data, intensity_range=range_)


class Scan:
    """One file as the model sees it, and the way back to the file's grid (``model.preprocess``)."""

    def __init__(self, dataset: NiftiCohort, stamp: str = ""):
        self.dataset, self.stamp = dataset, stamp
        self.item = dataset[0]

    @property
    def image(self):
        """(1, 1, *shape): the preprocessed, scaled image."""
        return self.item["image"][None]

    @property
    def mask(self):
        """(1, 1, *shape): the brain mask (the table's, or the foreground mask), or None."""
        return self.item["mask"][None] if "mask" in self.item else None

    def write(self, array, path: str | Path, description: str = "icam map", display: str = "symmetric") -> Path:
        """A map of this scan (tensor or array of the model's shape) on the file's grid, as NIfTI."""
        volume = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array, dtype=np.float32)
        return write_map(volume.reshape(volume.shape[-len(self.dataset.image_shape):]), self.dataset, 0, Path(path),
                         description, self.stamp, display)


def output_id(dataset: NiftiCohort, i: int) -> str:
    source = dataset.source(i)
    stem = source.id
    if source.slice is not None and dataset.config.slices_per_subject > 1:
        stem += f"_slice{source.slice}"
    return stem


def brain_mask(item: Item) -> np.ndarray:
    """The item's brain mask (the table's or the foreground mask), else every voxel."""
    return item["mask"][0].numpy() if "mask" in item else np.ones(item["image"].shape[1:], dtype=np.float32)


def write_scan_map(folder: ExplanationFolder, dataset: NiftiCohort, i: int, kind: str, array: np.ndarray,
                   description: str, stamp: str, facts: dict, display: str = "symmetric",
                   mode: str = "bilinear") -> Path:
    """One map of item ``i`` (``kind``: fa_mean, mask, …) where ``folder`` keeps it, on the input's
    grid, and (a BIDS derivative) its sidecar: ``facts`` and the scan it came from."""
    path = write_map(array, dataset, i, folder.map(output_id(dataset, i), kind), description, stamp, display, mode)
    folder.describe(path, {**facts, "Sources": [dataset.source(i).file]})
    return path


def write_mask(folder: ExplanationFolder, item: Item, dataset: NiftiCohort, i: int, stamp: str) -> None:
    """The brain mask the maps were masked and scored with, on the input's grid (once per scan)."""
    if "mask" in item:
        write_scan_map(folder, dataset, i, "mask", item["mask"][0].numpy(), "icam brain mask (table or foreground)",
                       stamp, {"Description": "the brain mask icam's maps were masked and scored with (the table's, "
                                              "else the scan's foreground)", "Type": "Brain"}, "range", "nearest")


def write_scan_maps(folder: ExplanationFolder, dataset: NiftiCohort, i: int, maps: ScanMaps, stamp: str,
                    native_intensity: bool = False) -> None:
    """Item ``i``'s mean and variance FA maps and mean translation (``maps/<id>_fa_mean.nii.gz``,
    …) on its input's own grid, each stamped with its checkpoint's hash; the description says
    what made them (``recipe``: "residual vs input, refined 50"; NIfTI keeps 80 characters, so
    it comes first) and the ``direction`` ("AD->CN, 100 samples"); a BIDS derivative's sidecars
    say it all (``maps.facts``)."""
    translated = dataset.denormalise(maps.translated, i) if native_intensity else maps.translated
    for kind, array, description, display in (
            ("fa_mean", maps.mean, f"icam FA mean, {maps.recipe}: {maps.direction}", "symmetric"),
            ("fa_var", maps.var, f"icam FA variance, {maps.recipe}: {maps.direction}", "range"),
            ("translated", translated, f"icam mean translation {maps.direction}"
             + (", input units" if native_intensity else ""), "range")):
        write_scan_map(folder, dataset, i, kind, array, description, stamp, {"Description": description, **maps.facts},
                       display)


@dataclass
class ScanMaps:
    """One scan's maps as arrays of the model's shape, and what made them."""

    mean: np.ndarray
    var: np.ndarray
    translated: np.ndarray
    recipe: str  # "residual vs input, counterfactual" (Explanation.recipe)
    direction: str  # "AD->CN, 100 samples"
    facts: dict = field(default_factory=dict)  # the same, one by one (a BIDS derivative's sidecars)

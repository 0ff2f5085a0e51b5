"""Cohorts: the built-in synthetic benchmarks and the user's own NIfTI + CSV data.

:func:`build_cohorts` turns the ``data`` section of a config into train/val/test datasets.
Every dataset exposes ``labels``, ``targets`` (NaN where unknown), ``image_shape``,
``in_channels`` and ``has_gt_maps``, and yields dicts with ``image``, ``label``, ``target``
and, where the cohort has them, ``gt_map`` and ``mask``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CsvData
from .bids import read_bids
from .brain_synth import DESIGNS, GENERATOR_VERSION
from .cohort import InMemoryCohort
from .nifti import NiftiCohort, PreprocessingCache, Spatial, cohort_intensity_range, fill_cache
from .sampling import ClassBalancedBatchSampler
from .splits import SPLITS, assign_splits
from .squares import make_squares
from .synth_export import write_brain_synth
from .table import DataError, Problem, Table, class_problems, read_table


@dataclass
class Cohorts:
    splits: dict  # split name → dataset
    assignments: list[dict] = field(default_factory=list)  # one per table row: where it went (splits.csv)
    excluded: list[Problem] = field(default_factory=list)  # rows left out with data.skip_bad
    info: dict = field(default_factory=dict)  # e.g. the cohort-wide intensity range

    def __getitem__(self, split: str):
        return self.splits[split]


def build_cohorts(data_config, seed: int, progress=None) -> Cohorts:
    """The train/val/test cohorts a ``data`` config describes."""
    kind = data_config.kind
    if kind == "squares":
        base = data_config.seed if data_config.seed is not None else seed
        sizes = {"train": data_config.n_train, "val": data_config.n_val, "test": data_config.n_test}
        return Cohorts({split: make_squares(sizes[split], data_config.image_size, data_config.spatial_dims,
                                            data_config.effect, data_config.continuous_target,
                                            data_config.class_thresholds, seed=base * 3 + i)
                        for i, split in enumerate(SPLITS)})
    if kind == "brain-synth":
        return _brain_synth_on_disk(data_config, seed, progress)
    return load_file_cohorts(data_config, seed, progress)


def _synth_settings(data_config, seed: int) -> tuple[int, dict, Path]:
    base = data_config.seed if data_config.seed is not None else seed
    settings = {"shape": list(data_config.shape), "n": data_config.n_subjects, "seed": base,
                "slices": data_config.slices_per_subject, "fractions": list(data_config.split_fractions),
                "version": GENERATOR_VERSION}
    if data_config.design != "brain-synth":  # brain-synth folders keep the names they had
        settings["design"] = data_config.design
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return base, settings, Path(data_config.cache_dir) / f"brain-synth-{key}"


def _brain_synth_on_disk(data_config, seed: int, progress) -> Cohorts:
    """brain-synth, 2D or 3D: written once as NIfTI + CSV (like `icam synth`), then read as a user
    cohort, through the preprocessing cache: training never holds the whole cohort in memory."""
    base, settings, folder = _synth_settings(data_config, seed)
    if not (folder / "cohort.csv").is_file():
        write_brain_synth(folder, len(data_config.shape), data_config.n_subjects, base, tuple(data_config.shape),
                          data_config.slices_per_subject, tuple(data_config.split_fractions), progress=progress,
                          design=data_config.design)
    csv_config = CsvData(csv=str(folder / "cohort.csv"), shape=list(data_config.shape), intensity="none",
                         cache_dir=str(folder / ".icam-cache"), slice_axis=DESIGNS[data_config.design].slice_axis)
    cohorts = load_file_cohorts(csv_config, base, progress)
    cohorts.info["brain_synth"] = settings
    return cohorts


def cohort_source(data_config) -> Path:
    """Where a cohort of files is listed: its CSV, or its BIDS dataset's folder."""
    return Path(data_config.bids_root if data_config.kind == "bids" else data_config.csv)


def read_cohort(data_config, require_label: bool = True, run_dir: str | Path | None = None) -> Table:
    """The cohort a csv or bids data config lists, as one table (the same rows, whoever read them)."""
    if data_config.kind == "bids":
        return read_bids(data_config, require_label, run_dir)
    return read_table(data_config.csv, data_config, require_label, run_dir)


def load_file_cohorts(data_config, seed: int, progress=None) -> Cohorts:
    """Read and check the table (a CSV or a BIDS dataset), assign splits where it has none, fill
    the preprocessing cache (decoding and checking every image), and build one dataset per split."""
    csv_path = cohort_source(data_config)
    table = read_cohort(data_config)
    rows, problems = table.rows, table.problems
    for warning in table.warnings:
        warnings.warn(f"{csv_path}: {warning}", stacklevel=2)
    if any(p.row is None for p in problems):  # a table-wide problem (e.g. labels that are not classes)
        raise DataError(problems, f"{csv_path}: ")
    cache = PreprocessingCache(data_config.cache_dir, Spatial.of(data_config), data_config.max_brain_cropped)
    bad_rows = {p.row for p in problems}
    entries, image_problems = fill_cache(cache, [r for r in rows if r.number not in bad_rows],
                                         data_config.preprocess_workers, progress)
    for p in image_problems:  # numbered as the table numbers its rows (a BIDS dataset: its scans)
        p.where = table.where
    problems += image_problems
    bad_rows = {p.row for p in problems}
    if problems and (not data_config.skip_bad or None in bad_rows):
        raise DataError(problems, f"{csv_path}: ", skippable=not data_config.skip_bad)
    rows = [r for r in rows if r.number not in bad_rows]
    splits = splits_for(rows, data_config, seed)
    cohort_problems = class_problems(rows, splits, data_config)
    if cohort_problems:
        raise DataError(cohort_problems, f"{csv_path}: ", skippable=False)
    datasets = {s: NiftiCohort([r for r, k in zip(rows, splits) if k == s], entries, data_config, augment=s == "train")
                for s in SPLITS}
    info = {"csv": str(csv_path), "cache": str(cache.directory), "identity": table.identity,
            "preprocessing": preprocessing_facts(rows, entries), **({"bids": table.facts} if table.facts else {})}
    if data_config.classes:
        info["classes"] = [str(c) for c in data_config.classes]
    if data_config.intensity == "cohort":
        lo_hi = tuple(data_config.intensity_range or cohort_intensity_range(datasets["train"],
                                                                             data_config.clip_percentiles))
        for d in datasets.values():
            d.intensity_range = lo_hi
        info["intensity_range"] = list(lo_hi)
    assignments = [{"row": r.number, "image": str(r.image), "subject": r.subject, "split": k}
                   for r, k in zip(rows, splits)]
    return Cohorts(datasets, assignments, table.excluded + problems, info)


def preprocessing_facts(rows, entries: dict) -> dict:
    """What preprocessing did to the cohort (data.json): shapes in and out, brain masks, and
    every image whose fit cut off part of its brain (a warning is shown for them)."""
    metas = [(r, entries[r.number]["meta"]) for r in rows]
    cropped = [{"row": r.number, "file": str(r.image), "brain_cropped": m["brain_cropped"]}
               for r, m in metas if m["brain_cropped"] > 0]
    if cropped:
        worst = max(cropped, key=lambda c: c["brain_cropped"])
        warnings.warn(f"fitting the shape cuts off part of the brain in {len(cropped)} image(s), at most "
                      f"{worst['brain_cropped']:.1%} ({worst['file']}); listed in the run's data.json", stacklevel=2)
    return {"source_shapes": sorted({"x".join(map(str, m["source_shape"])) for _, m in metas}),
            "brain_masks": {k: sum(m["brain_mask"] == k for _, m in metas) for k in ("table", "foreground", "none")},
            "brain_cropped": cropped}


def splits_for(rows, data_config, seed: int) -> list[str]:
    """The table's own splits; rows without one are assigned by subject (stratified, seeded)."""
    given = {r.subject: r.split for r in rows if r.split}
    free = [r for r in rows if r.subject not in given]
    assigned = dict(zip([r.number for r in free],
                        assign_splits([r.subject for r in free], [r.label for r in free], [r.target for r in free],
                                      tuple(data_config.split_fractions), seed))) if free else {}
    return [given.get(r.subject) or assigned[r.number] for r in rows]


__all__ = ["ClassBalancedBatchSampler", "Cohorts", "DataError", "InMemoryCohort", "build_cohorts", "make_squares"]

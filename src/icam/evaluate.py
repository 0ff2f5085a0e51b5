"""`icam evaluate`: score what an explanation folder holds (its maps and predictions.csv)
against the cohort table's ground truth, and write evaluation.json beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.nifti import load_array
from .data.table import require_split
from .errors import UserError
from .files import write_json
from .methods import ONE_WAY
from .metrics import Direction, classification_metrics, map_metrics, regression_metrics, summarise_maps
from .outputs import ExplanationFolder, map_stamp, write_csv
from .predictions import read_predictions
from .run import read_run_table


def prediction_metrics(predictions: Path) -> dict:
    """Classification and regression metrics of a predictions.csv (``icam predict``/``explain``),
    over its rows with a known label / target; {} when there is no such file."""
    if not predictions.is_file():
        return {}
    result = {}
    names, records = read_predictions(predictions)
    labelled = [r for r in records if r.label in names and r.probabilities]  # not unlabelled rows, nor MCI
    if labelled:
        result["classification"] = classification_metrics(
            np.array([names.index(r.label) for r in labelled if r.label is not None]),
            np.array([[r.probabilities[n] for n in names] for r in labelled]))
    regressed = [r for r in records if r.target is not None and r.predicted_target is not None]
    if regressed:
        result["regression"] = regression_metrics(np.array([r.target for r in regressed]),
                                                  np.array([r.predicted_target for r in regressed]))
    return result


def evaluate_outputs(outputs: str | Path, csv_path: str | Path, split: str | None = None,
                     map_suffix: str = "fa_mean", run_dir: str | Path | None = None) -> dict:
    """Score the maps and predictions an explanation run wrote (``outputs/maps/<id>_<suffix>.nii.gz``,
    ``outputs/predictions.csv``) against the cohort table's ground truth, read through the
    explained run's column names, classes and splits (``run_dir``, else the folder named in
    ``outputs/summary.json``).
    Maps are compared in each input's own space, where both were written, within the brain mask
    written with them. Directions: NCC(+) over subjects of class 0 (translated 0 → 1, effects
    added), NCC(−) over class 1 (1 → 0, effects removed). A method that translates one way
    (VA-GAN: 1 → 0) is scored in that direction only: its plus direction is None, and its maps
    of class-0 subjects are counted as ``not_translated``, never scored. Without ground-truth
    maps, only the predictions are scored."""
    folder, csv_path = ExplanationFolder.at(Path(outputs)), Path(csv_path)
    folder.require_complete()
    table = read_run_table(run_dir or folder.run_dir(), csv_path)
    rows = table.rows if split is None else require_split(table, split, csv_path)
    # the classes whose scans the method never translates: class 0 for a one-way method (1 → 0)
    untranslated = {Direction.PLUS.source} if folder.read_summary().get("method") in ONE_WAY else set()
    per_subject, missing, not_translated = [], [], 0
    stamps: dict[str, list[str]] = {}
    for r in rows:
        path = folder.map(r.id, map_suffix)
        if r.gt_map is None:
            continue
        if r.label in untranslated:
            not_translated += 1
            continue
        if not path.is_file():
            missing.append(path.name)
            continue
        fa, gt = load_array(path)[0], load_array(r.gt_map)[0]
        stamps.setdefault(map_stamp(path), []).append(r.id)
        written_mask = folder.map(r.id, "mask")
        mask = load_array(r.mask)[0] if r.mask is not None else \
            load_array(written_mask)[0] if written_mask.is_file() else None
        if fa.shape != gt.shape:
            raise UserError(f"{path.name} has shape {fa.shape} but its ground truth {r.gt_map} has {gt.shape}")
        per_subject.append({"id": r.id, "label": r.label, **map_metrics(fa, gt, mask)})
    if len(stamps) > 1:  # each map carries its checkpoint's hash: a folder mixing models is no result
        raise UserError(f"the maps in {folder.maps} come from {len(stamps)} different models (checkpoint "
                         + "; ".join(f"{k or 'unstamped'}: {', '.join(v[:3])}" for k, v in stamps.items())
                         + "); explain again into a new folder")
    has_gt = any(r.gt_map is not None for r in rows)
    if has_gt and not per_subject:
        raise UserError(f"no maps to score in {folder.maps} (suffix '_{map_suffix}') for rows with a gt_map "
                         f"in {csv_path}" + (f" and split {split}" if split else ""))
    maps = {"all": summarise_maps(per_subject),
            **{direction.value: summarise_maps([m for m in per_subject if m["label"] == direction.source])
               if direction.source not in untranslated else None for direction in Direction},
            "scored": len(per_subject), "missing": len(missing), "not_translated": not_translated} if has_gt else None
    result = {"maps": maps, "producer": folder.producer(), **prediction_metrics(folder.predictions)}
    if has_gt:
        write_csv(folder.per_subject, per_subject)
    write_json(folder.evaluation, result)
    return result

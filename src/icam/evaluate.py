"""`icam evaluate`: score what an explanation folder holds (its maps and predictions.csv)
against the cohort table's ground truth, and write evaluation.json beside them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .metrics import Direction, classification_metrics, map_metrics, regression_metrics, summarise_maps


def prediction_metrics(predictions: Path) -> dict:
    """Classification and regression metrics of a predictions.csv (``icam predict``/``explain``),
    over its rows with a known label / target; {} when there is no such file."""
    if not predictions.is_file():
        return {}
    result = {}
    from .data.table import names_from_columns

    with predictions.open(newline="") as f:
        reader = csv.DictReader(f)
        header, records = reader.fieldnames or [], list(reader)
    names = names_from_columns(header)
    columns = [c for c in header if c.startswith("p_")]
    labelled = [p for p in records if p.get("label", "") in names]  # not unlabelled rows, nor MCI for CN/AD
    if labelled and columns:
        result["classification"] = classification_metrics(
            np.array([names.index(p["label"]) for p in labelled]),
            np.array([[float(p[k]) for k in columns] for p in labelled]))
    regressed = [p for p in records if p.get("target", "") != "" and p.get("predicted_target", "") != ""]
    if regressed:
        result["regression"] = regression_metrics(np.array([float(p["target"]) for p in regressed]),
                                                  np.array([float(p["predicted_target"]) for p in regressed]))
    return result


def evaluate_outputs(outputs: str | Path, csv_path: str | Path, split: str | None = None,
                     map_suffix: str = "fa_mean", run_dir: str | Path | None = None) -> dict:
    """Score the maps and predictions an explanation run wrote (``outputs/maps/<id>_<suffix>.nii.gz``,
    ``outputs/predictions.csv``) against the cohort table's ground truth, read through the
    explained run's column names, classes and splits (``run_dir``, else the folder named in
    ``outputs/summary.json``).
    Maps are compared in each input's own space, where both were written, within the brain mask
    written with them. Directions: NCC(+) over subjects of class 0 (translated 0 → 1, effects
    added), NCC(−) over class 1 (1 → 0, effects removed). Without ground-truth maps, only the
    predictions are scored."""
    from .data.nifti import load_array
    from .data.table import require_split
    from .files import write_json
    from .outputs import MANIFEST, map_stamp, require_complete, write_csv
    from .run import explained_run, read_run_table

    outputs, csv_path = Path(outputs), Path(csv_path)
    require_complete(outputs)
    table = read_run_table(run_dir or explained_run(outputs), csv_path)
    rows = table.rows if split is None else require_split(table, split, csv_path)
    per_subject, missing = [], []
    stamps: dict[str, list[str]] = {}
    for r in rows:
        path = outputs / "maps" / f"{r.id}_{map_suffix}.nii.gz"
        if r.gt_map is None:
            continue
        if not path.is_file():
            missing.append(path.name)
            continue
        fa, gt = load_array(path)[0], load_array(r.gt_map)[0]
        stamps.setdefault(map_stamp(path), []).append(r.id)
        written_mask = outputs / "maps" / f"{r.id}_mask.nii.gz"
        mask = load_array(r.mask)[0] if r.mask is not None else \
            load_array(written_mask)[0] if written_mask.is_file() else None
        if fa.shape != gt.shape:
            raise ValueError(f"{path.name} has shape {fa.shape} but its ground truth {r.gt_map} has {gt.shape}")
        per_subject.append({"id": r.id, "label": r.label, **map_metrics(fa, gt, mask)})
    if len(stamps) > 1:  # each map carries its checkpoint's hash: a folder mixing models is no result
        raise ValueError(f"the maps in {outputs / 'maps'} come from {len(stamps)} different models (checkpoint "
                         + "; ".join(f"{k or 'unstamped'}: {', '.join(v[:3])}" for k, v in stamps.items())
                         + "); explain again into a new folder")
    has_gt = any(r.gt_map is not None for r in rows)
    if has_gt and not per_subject:
        raise ValueError(f"no maps to score in {outputs / 'maps'} (suffix '_{map_suffix}') for rows with a gt_map "
                         f"in {csv_path}" + (f" and split {split}" if split else ""))
    maps = {"all": summarise_maps(per_subject),
            **{direction.value: summarise_maps([m for m in per_subject if m["label"] == direction.source])
               for direction in Direction},
            "scored": len(per_subject), "missing": len(missing)} if has_gt else None
    manifest = outputs / MANIFEST  # which model made the maps (icam explain writes it)
    producer = json.loads(manifest.read_text()).get("producer") if manifest.is_file() else None
    result = {"maps": maps, "producer": producer, **prediction_metrics(outputs / "predictions.csv")}
    if has_gt:
        write_csv(outputs / "per_subject_maps.csv", per_subject)
    write_json(outputs / "evaluation.json", result)
    return result

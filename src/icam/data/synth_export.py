"""Write a synthetic brain cohort (brain-synth, brain-deep) to disk in the generic format: NIfTI
files and a CSV.

<out>/cohort.csv         one row per image: image, label, target (brain-synth: age; brain-deep: a
                         score), subject, split, mask, gt_map, counterfactual (val/test rows), and
                         the subject's make-up (severity, effect weights, parcels, lesions)
<out>/images/…nii.gz     the scans;  masks/, gt_maps/, counterfactuals/ beside them
<out>/synth.json         the generator's settings, counts and effect statistics, timings, and the
                         axis 2D slices are cut across once read in RAS (``data.slice_axis``)

2D rows are single slices (axial or coronal) stored as one-voxel-thick volumes with the slice's
own affine, so viewers place them where they lie in MNI space.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atlas import PLANES
from .brain_synth import DESIGNS, design_of, render_subjects, slice_positions_mm, subject_targets
from .splits import SPLITS, assign_splits
from .squares import make_squares

SHAPE_3D = (64, 80, 64)  # the default volume; 2D slices default to their design's shape_2d
COLUMNS = ["image", "label", "target", "subject", "split", "mask", "gt_map", "counterfactual", "slice_mm", "severity"]


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    if array.ndim == 2:
        array = array[:, :, None]
    image = nib.Nifti1Image(array.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def write_brain_synth(out: str | Path, dims: int = 2, n: int = 100, seed: int = 0,
                      shape: tuple[int, ...] | None = None, slices_per_subject: int = 1,
                      fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), progress=None,
                      design: str = "brain-synth") -> dict:
    """Render ``n`` subjects of ``design`` (``brain_synth.DESIGNS``) and write them under ``out``;
    returns the summary (also synth.json). ``progress(done, total)`` is called after each chunk."""
    out = Path(out)
    cohort_design = design_of(design)
    shape = tuple(shape or (cohort_design.shape_2d if dims == 2 else SHAPE_3D))
    if len(shape) != dims:
        raise UserError(f"--size needs {dims} numbers for a {dims}D cohort, got {shape}")
    if min(shape) < 16:  # the files may have any shape (training fits them to data.shape); anatomy needs pixels
        raise UserError(f"--size: every side must be 16 or more, got {'x'.join(map(str, shape))}")
    for folder in ("images", "masks", "gt_maps", "counterfactuals"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    subjects = list(range(n))
    targets = subject_targets(cohort_design, seed, subjects)
    split_of = dict(zip(subjects, assign_splits(subjects, cohort_design.label(targets).tolist(), targets.tolist(),
                                                fractions, seed)))
    weight_columns = [f"{effect}_weight" for effect in cohort_design.effects]
    level_axis = "xyz"[PLANES[cohort_design.plane][2]]  # 2D file names say where the slice lies: _z+15, _y-6

    started = time.perf_counter()
    render_seconds = 0.0
    rows = []
    chunk = max(1, 256 // slices_per_subject) if dims == 2 else max(1, 2**22 // int(np.prod(shape)))
    for start in range(0, n, chunk):
        t = time.perf_counter()
        cohort = render_subjects(shape, subjects[start:start + chunk], seed, slices_per_subject, design=cohort_design)
        render_seconds += time.perf_counter() - t
        for r in range(len(cohort.images)):
            subject, split = int(cohort.subjects[r]), split_of[int(cohort.subjects[r])]
            name = f"sub-{subject:05d}" + (f"_{level_axis}{cohort.slice_mm[r]:+.0f}" if dims == 2 else "")
            paths = {folder: f"{folder}/{name}.nii.gz" for folder in ("images", "masks", "gt_maps")}
            arrays = {"images": cohort.images, "masks": cohort.masks, "gt_maps": cohort.gt_maps}
            if split != "train":  # the paired rendering, for scoring translations both ways
                paths["counterfactuals"] = f"counterfactuals/{name}.nii.gz"
                arrays["counterfactuals"] = cohort.counterfactuals
            for folder, rel in paths.items():
                _save(arrays[folder][r, 0].numpy(), cohort.affines[r], out / rel)
            weights = dict(zip(cohort_design.effects, cohort.effect_weights[r].tolist()))
            row = {
                "image": paths["images"], "label": int(cohort.labels[r]), "target": round(float(cohort.targets[r]), 3),
                "subject": f"sub-{subject:05d}", "split": split, "mask": paths["masks"], "gt_map": paths["gt_maps"],
                "counterfactual": paths.get("counterfactuals", ""),
                "slice_mm": "" if dims == 3 else round(float(cohort.slice_mm[r]), 1),
                "severity": round(float(cohort.severity[r]), 4),
                **{f"{effect}_weight": round(w, 4) for effect, w in weights.items()}}
            if "cortex" in weights:
                row["regions_affected"] = int(cohort.regions_affected[r]) if weights["cortex"] > 0 else 0
            if "lesions" in weights:
                row["lesions"] = int(cohort.lesions[r]) if weights["lesions"] > 0 else 0
            rows.append(row)
        if progress:
            progress(min(n, start + chunk), n)
    columns = COLUMNS + weight_columns + [c for c in ("regions_affected", "lesions") if c in rows[0]]
    return _write_table_and_summary(out, columns, rows, _summary(rows, dims, shape, n, seed, slices_per_subject,
                                                                 render_seconds, time.perf_counter() - started,
                                                                 cohort_design.name))


def _write_table_and_summary(out: Path, columns: list[str], rows: list[dict], summary: dict) -> dict:
    """cohort.csv and synth.json, the two files every synthetic cohort ends with."""
    with (out / "cohort.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summary(rows, dims, shape, n, seed, slices_per_subject, render_seconds, total_seconds, design: str) -> dict:
    def stats(values):
        values = np.asarray(values, dtype=float)
        return {"mean": round(float(values.mean()), 3), "sd": round(float(values.std()), 3),
                "min": round(float(values.min()), 3), "max": round(float(values.max()), 3)}

    cohort_design = DESIGNS[design]
    per_split = {s: {"rows": sum(r["split"] == s for r in rows),
                     "subjects": len({r["subject"] for r in rows if r["split"] == s}),
                     "class_counts": [sum(r["split"] == s and r["label"] == k for r in rows) for k in (0, 1)]}
                 for s in SPLITS}
    effects = {}
    for name in cohort_design.effects:
        present = [r for r in rows if r[f"{name}_weight"] > 0]
        effects[name] = {"subjects_share": round(len(present) / len(rows), 3),
                         "weight_when_present": stats([r[f"{name}_weight"] for r in present]) if present else None}
        count = {"cortex": "regions_affected", "lesions": "lesions"}.get(name)
        if count and present:
            effects[name][count] = stats([r[count] for r in present])
    return {
        "generator": design, "dims": dims, "shape": list(shape), "subjects": n, "rows": len(rows),
        "slices_per_subject": slices_per_subject if dims == 2 else None,
        "plane": cohort_design.plane if dims == 2 else None,
        "slice_axis": cohort_design.slice_axis if dims == 2 else None,
        "slices_mm": list(slice_positions_mm(slices_per_subject, cohort_design)) if dims == 2 else None,
        "seed": seed, "class_rule": cohort_design.class_rule, "classes": list(cohort_design.class_names),
        "target": {"name": cohort_design.target_name, **stats([r["target"] for r in rows])},
        "splits": per_split, "effects": effects,
        "seconds": {"render": round(render_seconds, 2), "total_with_writing": round(total_seconds, 2)},
    }


def write_squares(out: str | Path, n: int = 600, size: int = 64, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """The squares benchmark as a cohort table and NIfTI files, in its ICAM-reg form: each image
    has a score t ~ U(0, 1) that sets its boxes' intensity, class 1 where t ≥ 0.5, and its
    ground truth is the boxes' mask (what a translation to the other class must change).
    A second kind of cohort for `icam benchmark --set cohort=squares`: no anatomy, no brain mask."""
    out = Path(out)
    if size % 16:
        raise UserError(f"the side must be a multiple of 16 (the model's requirement), got {size}")
    for folder in ("images", "gt_maps"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    cohort = make_squares(n, size, continuous_target=True, seed=seed)
    assert cohort.gt_maps is not None  # squares are made with their change maps
    names = [f"sq-{i:05d}" for i in range(n)]
    splits = assign_splits(names, cohort.labels.tolist(), cohort.targets.tolist(), fractions, seed)
    rows = []
    for i, (name, split) in enumerate(zip(names, splits)):
        for folder, array in (("images", cohort.images), ("gt_maps", cohort.gt_maps)):
            _save(array[i, 0].numpy(), np.eye(4), out / folder / f"{name}.nii.gz")
        rows.append({"image": f"images/{name}.nii.gz", "label": int(cohort.labels[i]),
                     "target": round(float(cohort.targets[i]), 4), "subject": name, "split": split,
                     "gt_map": f"gt_maps/{name}.nii.gz"})
    return _write_table_and_summary(out, list(rows[0]), rows, {
        "generator": "squares", "size": size, "subjects": n, "seed": seed,
        "class_rule": "label 1 when the score (box intensity) >= 0.5",
        "splits": {s: sum(r["split"] == s for r in rows) for s in SPLITS}})

"""`icam data check`: every problem of a cohort table and its images, before any training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .splits import SPLITS
from .table import Problem, class_problems, read_table


def check_cohort(csv_path: str | Path, data_config, seed: int = 0, workers: int = 0, progress=None) -> tuple[dict, list[Problem]]:
    """Read the table, decode every image, mask and map, and check them; (summary, problems)."""
    from . import _splits_for
    from .nifti import check_files

    rows, problems = read_table(csv_path, data_config.columns, data_config.class_thresholds)
    shapes, file_problems = check_files(rows, workers, progress)
    problems += file_problems
    for r in rows:
        found = shapes.get(r.number, {})
        image_shape = found.get("image")
        for kind in ("mask", "gt_map"):
            if image_shape and kind in found and found[kind][:3] != image_shape[:3]:
                problems.append(Problem(r.number, f"{kind} shape {found[kind]} differs from the image's {image_shape}",
                                        str(getattr(r, kind))))
    bad = {p.row for p in problems}
    good = [r for r in rows if r.number not in bad]
    splits = _splits_for(good, data_config, seed) if good else []
    problems += class_problems(good, splits) if good else [Problem(None, "no usable rows")]
    targets = np.array([r.target for r in good if not math.isnan(r.target)])
    labels = np.array([r.label for r in good], dtype=int)
    summary = {
        "rows": len(rows) + len({p.row for p in problems if p.row is not None} - {r.number for r in rows}),
        "usable_rows": len(good),
        "rows_with_problems": len(bad - {None}),
        "subjects": len({r.subject for r in good}),
        "class_counts": np.bincount(labels).tolist() if len(labels) else [],
        "target": ({"known": int(len(targets)), "mean": round(float(targets.mean()), 3),
                    "sd": round(float(targets.std()), 3), "min": float(targets.min()), "max": float(targets.max())}
                   if len(targets) else None),
        "splits": {s: sum(k == s for k in splits) for s in SPLITS},
        "split_source": "table" if all(r.split for r in good) else "assigned by subject (seeded)"
                        if not any(r.split for r in good) else "table, the rest assigned by subject",
        "image_shapes": sorted({tuple(shapes[r.number]["image"]) for r in good}, key=str)[:10],
    }
    return summary, problems

"""`icam data check`: every problem of a cohort table and its images, before any training."""

from __future__ import annotations

import math

import numpy as np

from . import read_cohort, splits_for
from .nifti import check_files, slices_among_volumes
from .splits import SPLITS
from .table import Problem, class_names, class_problems, num_classes_of


def check_cohort(data_config, seed: int = 0, workers: int = 0, progress=None) -> tuple[dict, list[Problem]]:
    """Read the table (a CSV or a BIDS dataset), decode every image, mask and map, and check
    them; (summary, problems)."""
    table = read_cohort(data_config)
    rows, problems = table.rows, table.problems
    shapes, file_problems = check_files(rows, workers, progress)
    for p in file_problems:  # numbered as the table numbers its rows (a BIDS dataset: its scans)
        p.where = table.where
    problems += file_problems
    image_shapes = {number: found["image"] for number, found in shapes.items()}
    problems += slices_among_volumes(image_shapes, rows, len(data_config.shape) == 3)
    bad = {p.row for p in problems}
    good = [r for r in rows if r.number not in bad]
    splits = splits_for(good, data_config, seed) if good else []
    num_classes = num_classes_of(data_config, [r.label for r in good])
    problems += class_problems(good, splits, data_config) if good else [Problem(None, "no usable rows")]
    targets = np.array([r.target for r in good if not math.isnan(r.target)])
    labels = np.array([r.label for r in good], dtype=int)
    subjects = len({r.subject for r in good})
    summary = {
        "rows": len(rows) + len(table.excluded) + len({p.row for p in problems if p.row is not None}
                                                      - {r.number for r in rows}),
        "usable_rows": len(good),
        "rows_with_problems": len(bad - {None}),
        "subjects": subjects,
        "class_counts": np.bincount(labels, minlength=num_classes).tolist() if len(labels) else [],
        "classes": class_names(data_config, num_classes),
        "excluded": [str(p) for p in table.excluded],
        "identity": table.identity,
        "target": ({"known": len(targets), "mean": round(float(targets.mean()), 3),
                    "sd": round(float(targets.std()), 3), "min": float(targets.min()), "max": float(targets.max())}
                   if len(targets) else None),
        "splits": {s: sum(k == s for k in splits) for s in SPLITS},
        "split_source": "table" if all(r.split for r in good) else "assigned by subject (seeded)"
                        if not any(r.split for r in good) else "table, the rest assigned by subject",
        "warnings": table.warnings + [
            f"the {s} split is empty ({subjects} subject{'s' * (subjects != 1)}; a subject's scans stay in one "
            "split): no validation or test scores" for s in ("val", "test")
            if good and not any(k == s for k in splits)],
        "dataset": table.facts,
        "image_shapes": sorted({tuple(shapes[r.number]["image"]) for r in good}, key=str)[:10],
    }
    return summary, problems

"""Reading and checking a cohort table (CSV): one row per image.

Columns (names configurable): ``image`` (path, relative to the CSV), ``label`` (class)
and/or ``target`` (a number), and optionally ``subject`` (keeps a subject's scans in one
split), ``split`` (train/val/test), ``mask`` (brain mask) and ``gt_map`` (ground-truth
change map). Every problem is reported with its row (as numbered in a spreadsheet: the
header is row 1) and file; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .splits import SPLITS


class DataError(ValueError):
    """Bad input data; the message names each row or file and what was expected."""

    def __init__(self, problems: list["Problem"], context: str = ""):
        problems = sorted(problems, key=lambda p: (p.row is not None, p.row or 0))
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        hint = "\n(set data.skip_bad=true to leave such rows out; they are then listed in excluded.csv)"
        super().__init__(f"{context}{len(problems)} problem(s) in the data:\n  {shown}{more}{hint}")


@dataclass
class Problem:
    row: int | None  # spreadsheet row number (header = 1), None for cohort-wide problems
    message: str
    file: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "cohort"
        return f"{where}: {self.message}" + (f" ({self.file})" if self.file else "")


@dataclass
class Row:
    number: int  # spreadsheet row number
    image: Path
    label: int
    target: float  # NaN when unknown
    subject: str
    split: str | None
    mask: Path | None = None
    gt_map: Path | None = None
    extra: dict = field(default_factory=dict)


UNKNOWN_LABEL = -1


def read_table(path: str | Path, columns, class_thresholds: list[float] | None = None,
               require_label: bool = True) -> tuple[list[Row], list[Problem]]:
    """Rows that passed the table-level checks, and the problems of those that did not.
    A file that is missing or a column that is absent is a problem of every row, raised at once.
    With ``require_label=False`` (prediction), a row may have no label: it gets UNKNOWN_LABEL."""
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(None, "the cohort table does not exist", str(path))])
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        records = list(reader)
    names = {k: getattr(columns, k) for k in ("image", "label", "target", "subject", "split", "mask", "gt_map")}
    if names["image"] not in header:
        raise DataError([Problem(1, f"no '{names['image']}' column; the header has: {', '.join(header) or 'nothing'}",
                                 str(path))])
    has_label, has_target = names["label"] in header, names["target"] in header
    if require_label and not has_label and not (has_target and class_thresholds):
        raise DataError([Problem(1, f"no '{names['label']}' column, and no '{names['target']}' column with "
                                    f"data.class_thresholds to derive the class from", str(path))])
    root = path.parent
    rows, problems = [], []
    for i, record in enumerate(records):
        number = i + 2
        row_problems = []

        def file_of(key):
            value = (record.get(names[key]) or "").strip()
            if not value:
                return None
            file = Path(value) if Path(value).is_absolute() else root / value
            if not file.is_file():
                row_problems.append(Problem(number, f"{key} file not found", str(file)))
            return file

        image = file_of("image")
        if image is None:
            row_problems.append(Problem(number, f"empty '{names['image']}'"))
        target = math.nan
        raw_target = (record.get(names["target"]) or "").strip() if has_target else ""
        if raw_target:
            try:
                target = float(raw_target)
                if not math.isfinite(target):
                    raise ValueError
            except ValueError:
                row_problems.append(Problem(number, f"target {raw_target!r} is not a finite number"))
        raw_label = (record.get(names["label"]) or "").strip() if has_label else ""
        label = None
        if raw_label:
            try:
                label = int(float(raw_label))
                if label < 0 or label != float(raw_label):
                    raise ValueError
            except ValueError:
                row_problems.append(Problem(number, f"label {raw_label!r} is not a class number 0, 1, 2, …"))
        elif class_thresholds and not math.isnan(target):
            label = int(np.searchsorted(np.asarray(class_thresholds), target, side="right"))
        elif not require_label:
            label = UNKNOWN_LABEL
        elif not row_problems:
            row_problems.append(Problem(number, "no label, and no target to derive it from"))
        split = (record.get(names["split"]) or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            row_problems.append(Problem(number, f"split {split!r} is not one of {', '.join(SPLITS)}"))
        mask, gt_map = file_of("mask"), file_of("gt_map")
        if row_problems:
            problems.extend(row_problems)
            continue
        subject = (record.get(names["subject"]) or "").strip() or image.name.split(".")[0]
        used = {names[k] for k in names}
        rows.append(Row(number, image, label, target, subject, split, mask, gt_map,
                        {k: v for k, v in record.items() if k not in used}))
    problems.extend(_split_problems(rows))
    return rows, problems


def _split_problems(rows: list[Row]) -> list[Problem]:
    splits_of: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.split:
            splits_of.setdefault(r.subject, {}).setdefault(r.split, r.number)
    return [Problem(min(found.values()), f"subject {s!r} is in more than one split: "
                    + ", ".join(f"{k} (row {n})" for k, n in sorted(found.items())))
            for s, found in splits_of.items() if len(found) > 1]


def class_problems(rows: list[Row], splits: list[str]) -> list[Problem]:
    """Every class 0..K-1 must have training images (K = the largest label + 1)."""
    if not rows:
        return [Problem(None, "no usable rows")]
    k = max(r.label for r in rows) + 1
    trained = {r.label for r, s in zip(rows, splits) if s == "train"}
    return [Problem(None, f"class {c} has no training images (classes are 0..{k - 1}; "
                          f"every class needs some)") for c in range(k) if c not in trained]

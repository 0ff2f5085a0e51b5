"""Reading and checking a cohort table (CSV): one row per image.

Columns (names configurable, ``data.columns``): ``image`` (path, relative to the CSV),
``label`` (class) and/or ``target`` (a number), and optionally ``subject`` (keeps a subject's
scans in one split), ``split`` (train/val/test), ``mask`` (brain mask) and ``gt_map``
(ground-truth change map). Labels are class numbers 0, 1, 2, … or, with ``data.classes``
(e.g. ``[CN, AD]``), any values: the position in that list is the class, and rows with
another label (MCI) are left out and listed, never an error. A table without a split column
takes the splits of the run it is used with (its ``splits.csv``). Every problem is reported
with its row (as numbered in a spreadsheet: the header is row 1) and file; nothing is
dropped silently.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .splits import SPLITS


class DataError(UserError):
    """Bad input data; the message names each row or file and what was expected. ``skippable``:
    whether leaving rows out (data.skip_bad) is a way on for the command that met them; it is
    offered only when every problem is a row's."""

    def __init__(self, problems: list[Problem], context: str = "", skippable: bool = True):
        problems = sorted(problems, key=lambda p: (p.row is not None, p.row or 0))
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        rows_only = all(p.row is not None and p.row > 1 for p in problems)
        hint = "\n(set data.skip_bad=true to leave such rows out; they are then listed in excluded.csv)" \
            if skippable and rows_only else ""
        super().__init__(f"{context}{len(problems)} problem(s) in the data:\n  {shown}{more}{hint}")


@dataclass
class Problem:
    row: int | None  # spreadsheet row number (header = 1), None for cohort-wide problems
    message: str
    file: str | None = None
    where: str = "row"  # what the number counts: a table's rows, or a BIDS dataset's scans

    def __str__(self) -> str:
        if self.row is None and self.file:  # a problem of one file, not of a table's row
            return f"{self.file}: {self.message}"
        where = f"{self.where} {self.row}" if self.row is not None else "cohort"
        return f"{where}: {self.message}" + (f" ({self.file})" if self.file else "")


@dataclass
class Row:
    number: int  # spreadsheet row number
    image: Path
    label: int  # class index; UNKNOWN_LABEL when the row has none (or, predicting, one not in data.classes)
    target: float  # NaN when unknown
    subject: str
    split: str | None
    mask: Path | None = None
    gt_map: Path | None = None
    extra: dict = field(default_factory=dict)
    raw_label: str = ""  # the label as the table writes it (CN, MCI, 1)
    id: str = ""  # unique in the table: names the row's outputs (see assign_identity)


UNKNOWN_LABEL = -1


@dataclass
class Table:
    """A cohort table read through a run's settings: the usable rows, the problems of the others,
    and the rows left out by design (a label not in ``data.classes``)."""

    rows: list[Row]
    problems: list[Problem]
    excluded: list[Problem] = field(default_factory=list)
    split_source: str = "table"  # table, run (the run's splits.csv) or none
    identity: str = ""  # how ids and subjects were found (data check and train say it)
    warnings: list[str] = field(default_factory=list)  # what was read leniently (labels matched ignoring case)
    where: str = "row"  # what its problems' numbers count: a table's rows or a dataset's scans
    facts: dict = field(default_factory=dict)  # what a dataset reader found (BIDS: subjects, sessions, scans)


def class_names(data_config, num_classes: int) -> list[str]:
    """What outputs call each class: ``data.classes`` as written, else the class numbers."""
    classes = getattr(data_config, "classes", None) if data_config is not None else None
    return [str(c) for c in classes] if classes else [str(k) for k in range(num_classes)]


def probability_columns(names: list[str]) -> list[str]:
    """The predictions table's probability columns: p_CN, p_AD for named classes, p_class0, … for numbers."""
    return [f"p_class{n}" if n == str(k) else f"p_{n}" for k, n in enumerate(names)]


def names_from_columns(header) -> list[str]:
    """The class names of a predictions table, in class order, from its probability columns."""
    return [c[len("p_class"):] if c.startswith("p_class") else c[2:] for c in header if c.startswith("p_")]


def num_classes_of(data_config, labels) -> int:
    """K: the length of ``data.classes``, else the largest class number + 1."""
    classes = getattr(data_config, "classes", None)
    return len(classes) if classes else int(max(labels, default=-1)) + 1


def _matches(raw: str, value) -> bool:
    """A table's label against one of ``data.classes``: as text, or as numbers (1 = 1.0)."""
    if raw == str(value).strip():
        return True
    try:
        return float(raw) == float(value)
    except (TypeError, ValueError):
        return False


def class_of(raw: str, classes: list) -> tuple[int | None, bool]:
    """The position of a (stripped) label in ``data.classes``, and whether it matched only when case
    is ignored (``cn`` for CN: said as a warning); (None, False) when it is none of them, or when
    ignoring case it would be two of them."""
    exact = next((k for k, c in enumerate(classes) if _matches(raw, c)), None)
    if exact is not None:
        return exact, False
    folded = [k for k, c in enumerate(classes) if str(c).strip().casefold() == raw.casefold()]
    return (folded[0], True) if len(folded) == 1 else (None, False)


DELIMITERS = ",;\t"  # what spreadsheets write: comma, semicolon (where the comma is the decimal mark), tab


def read_records(path: Path) -> tuple[list[str], list[dict], str]:
    """A table's header, rows as text and delimiter, as spreadsheets write them: comma-,
    semicolon- or tab-separated (a .tsv is tab; otherwise the header line tells), a byte order
    mark, spaces around the column names."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        f.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" else max(DELIMITERS, key=first.count)
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        return header, list(reader), delimiter


def read_table(path: str | Path, data_config, require_label: bool = True, run_dir: str | Path | None = None) -> Table:
    """The table at ``path`` through ``data_config``'s column names, classes and class thresholds.
    A file that is missing or a column that is absent is a problem of every row, raised at once.
    With ``require_label=False`` (prediction), a row may have no label, or one that is not a
    class: it gets UNKNOWN_LABEL. Rows without a split take their split from ``run_dir``'s
    splits.csv when given (matched by subject, then by image)."""
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(None, "the cohort table does not exist", str(path.absolute()))])
    header, records, delimiter = read_records(path)
    return table_of(path, header, records, data_config, require_label, run_dir, decimal_comma=delimiter == ";")


def table_of(source: Path, header: list[str], records: list[dict], data_config, require_label: bool = True,
             run_dir: str | Path | None = None, decimal_comma: bool = False, where: str = "row") -> Table:
    """Records (one dict per image, keyed by ``data.columns``' names) read as a cohort table's
    rows, whoever listed them: a CSV (``read_table``) or a BIDS dataset (``data.bids``). Rows
    are numbered from 2 as a spreadsheet shows them, and problems name them ``where`` ("row",
    or "scan" for a dataset without a table)."""
    reader = _RowReader(source, _column_names(header, data_config, require_label, source), header, data_config,
                        require_label, decimal_comma, where)
    for i, record in enumerate(records):
        reader.read(i + 2, record)
    rows, problems = reader.rows, reader.problems + reader.label_problems()
    identity, duplicates = assign_identity(rows)
    problems += duplicates + _split_problems(rows)
    split_source = "table" if any(r.split for r in rows) else "none"
    if run_dir is not None and not all(r.split for r in rows) and (Path(run_dir) / "splits.csv").is_file():
        _splits_from_run(rows, Path(run_dir) / "splits.csv")
        split_source = "run"
    return Table(rows, problems, reader.excluded, split_source, identity, reader.warnings(), where)


COLUMN_KEYS = ("image", "label", "target", "subject", "split", "mask", "gt_map")


def _column_names(header: list[str], data_config, require_label: bool, path: Path) -> dict[str, str]:
    """Each column's name in this table (``data.columns``); a column asked for that is absent is
    one problem of the whole table, raised at once."""
    columns = data_config.columns
    names = {k: getattr(columns, k) for k in COLUMN_KEYS}
    if names["image"] not in header:
        raise DataError([Problem(1, f"no '{names['image']}' column; the header has: {', '.join(header) or 'nothing'}",
                                 str(path))])
    defaults = type(columns).model_fields
    for key in ("target", "subject", "split", "mask", "gt_map"):  # optional, but asked for by name in training
        if require_label and names[key] != defaults[key].default and names[key] not in header:
            raise DataError([Problem(1, f"no '{names[key]}' column (data.columns.{key}); the header has: "
                                        f"{', '.join(header)}", str(path))])
    thresholds = getattr(data_config, "class_thresholds", None)
    if require_label and names["label"] not in header and not (names["target"] in header and thresholds):
        raise DataError([Problem(1, f"no '{names['label']}' column, and no '{names['target']}' column with "
                                    f"data.class_thresholds to derive the class from", str(path))])
    return names


class _LeftOut(Exception):
    """A row left out by design: its label is no class (MCI for [CN, AD]), or no class number."""


class _RowReader:
    """Reads the rows of one table, one at a time, gathering what each row is (``rows``), its
    problems, the rows left out, and what is said once for many rows (labels that are not class
    numbers, labels matched ignoring case)."""

    def __init__(self, path: Path, names: dict[str, str], header: list[str], data_config, require_label: bool,
                 decimal_comma: bool, where: str):
        self.path, self.names, self.require_label, self.decimal_comma = path, names, require_label, decimal_comma
        self.where = where
        self.classes = getattr(data_config, "classes", None)
        self.thresholds = getattr(data_config, "class_thresholds", None)
        self.has_label, self.has_target = names["label"] in header, names["target"] in header
        self.rows: list[Row] = []
        self.problems: list[Problem] = []
        self.excluded: list[Problem] = []
        self.not_numbers: dict[str, list[int]] = {}
        self.case_matched: dict[tuple[str, str], list[int]] = {}

    def _problem(self, number: int, message: str, file: str | None = None) -> Problem:
        return Problem(number, message, file, self.where)

    def _text(self, record: dict, key: str) -> str:
        return (record.get(self.names[key]) or "").strip()

    def read(self, number: int, record: dict) -> None:
        problems: list[Problem] = []
        image = self._file("image", record, number, problems)
        if image is None:
            problems.append(self._problem(number, f"empty '{self.names['image']}'"))
        raw_target = self._text(record, "target") if self.has_target else ""
        target = self._target(raw_target, number, problems)
        raw_label = self._text(record, "label") if self.has_label else ""
        try:
            label = self._label(raw_label, raw_target, target, number, problems, image)
        except _LeftOut:
            return
        split = self._text(record, "split").lower() or None
        if split is not None and split not in SPLITS:
            problems.append(self._problem(number, f"split {split!r} is not one of {', '.join(SPLITS)}"))
        mask, gt_map = (self._file(key, record, number, problems) for key in ("mask", "gt_map"))
        if problems:
            self.problems.extend(problems)
            return
        assert image is not None and label is not None  # a row without either has a problem above
        used = set(self.names.values())
        self.rows.append(Row(number, image, label, target, self._text(record, "subject"), split, mask, gt_map,
                             {k: v for k, v in record.items() if k not in used}, raw_label))

    def _file(self, key: str, record: dict, number: int, problems: list[Problem]) -> Path | None:
        """A file the row names (relative to the table), or None; a missing one is a problem."""
        value = self._text(record, key)
        if not value:
            return None
        file = Path(value) if Path(value).is_absolute() else self.path.parent / value
        if not file.is_file():
            problems.append(self._problem(number, f"{key} file not found", str(file)))
        return file

    def _target(self, raw: str, number: int, problems: list[Problem]) -> float:
        """The row's target; NaN when unknown (a semicolon table may write a decimal comma)."""
        if not raw:
            return math.nan
        try:
            target = float(raw.replace(",", ".") if self.decimal_comma else raw)
        except ValueError:
            target = math.nan
        if not math.isfinite(target):
            problems.append(self._problem(number, f"target {raw!r} is not a finite number"))
        return target

    def _label(self, raw: str, raw_target: str, target: float, number: int, problems: list[Problem],
               image: Path | None) -> int | None:
        """The row's class: by name in data.classes, as a class number, or from its target and
        data.class_thresholds; UNKNOWN_LABEL when predicting. Raises _LeftOut for rows left out."""
        if raw and self.classes:
            label, case_only = class_of(raw, self.classes)
            if case_only and label is not None:
                self.case_matched.setdefault((raw, str(self.classes[label])), []).append(number)
            if label is None and self.require_label:
                self.excluded.append(self._problem(number, f"label {raw!r} is not one of data.classes "
                                                     f"[{', '.join(map(str, self.classes))}]", str(image or "")))
                raise _LeftOut
            return UNKNOWN_LABEL if label is None else label
        if raw:
            number_label = _class_number(raw)
            if number_label is None and self.require_label:  # one line for all such rows: label_problems
                self.not_numbers.setdefault(raw, []).append(number)
                raise _LeftOut
            return UNKNOWN_LABEL if number_label is None else number_label
        if self.thresholds and not math.isnan(target):
            return int(np.searchsorted(np.asarray(self.thresholds), target, side="right"))
        if not self.require_label:
            return UNKNOWN_LABEL
        if not problems:
            problems.append(self._problem(number, "empty label, and no data.class_thresholds to derive the class from "
                                                  "its target" if raw_target else "no label, and no target to derive "
                                                  "it from"))
        return None

    def label_problems(self) -> list[Problem]:
        """One problem for every label that is not a class number (with the fix: data.classes)."""
        if not self.not_numbers:
            return []
        shown = ", ".join(f"{v!r} (rows {', '.join(map(str, n[:3]))}{', …' if len(n) > 3 else ''})"
                          for v, n in list(self.not_numbers.items())[:6])
        return [Problem(None, f"labels are not class numbers 0, 1, 2, …: {shown}. Name the classes in the config, "
                              f"e.g. data.classes: [{', '.join(list(self.not_numbers)[:2])}] (the position is the "
                              "class; rows with a label not listed are left out and listed in excluded.csv)",
                        str(self.path))]

    def warnings(self) -> list[str]:
        if not self.case_matched:
            return []
        return ["labels matched to data.classes only when case is ignored: " + "; ".join(
            f"{raw!r} as {name} ({self.where}s {', '.join(map(str, numbers[:5]))}{', …' if len(numbers) > 5 else ''})"
            for (raw, name), numbers in self.case_matched.items())]


def _class_number(raw: str) -> int | None:
    """A label written as a class number (0, 1, 2.0), else None."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value >= 0 and value == int(value) else None


def nifti_stem(path: str | Path) -> str:
    """A NIfTI file's name without .nii.gz / .nii: how outputs name the input they belong to."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def assign_identity(rows: list[Row]) -> tuple[str, list[Problem]]:
    """Give every row a unique id (what its outputs are called) and a subject when the table has
    none; returns the rule used and one problem per row that repeats an earlier row's image.

    Ids are file names without .nii.gz while they are unique; when names repeat (sub-01/T1.nii.gz,
    sub-02/T1.nii.gz; BIDS' sub-01/anat/T1w.nii.gz) they are the path below the folders every
    scan shares, with / as _ (sub-01_T1, sub-01_anat_T1w). A row without a subject is its own
    subject, named by its file, or by the first folder that tells the scans apart when file
    names repeat (sub-01)."""
    first_of: dict[Path, Row] = {}
    problems = []
    for r in rows:
        earlier = first_of.setdefault(r.image.resolve(), r)
        if earlier is not r:
            same = "" if r.subject == earlier.subject else \
                f" under another subject ({earlier.subject or '(none)'} there, {r.subject or '(none)'} here)"
            problems.append(Problem(r.number, f"the image is also on row {earlier.number}{same}: a scan can "
                                              "be used once", str(r.image)))
    repeated = len({nifti_stem(r.image) for r in rows}) < len(rows)
    given = sum(bool(r.subject) for r in rows)
    folders = [r.image.resolve().parent.parts for r in rows]
    shared = 0  # how many leading folders every scan has in common
    while folders and all(len(f) > shared and f[shared] == folders[0][shared] for f in folders):
        shared += 1
    for r, parts in zip(rows, folders):
        below = parts[shared:]
        r.id = "_".join([*below, nifti_stem(r.image)]) if repeated else nifti_stem(r.image)
        if not r.subject:
            r.subject = below[0] if repeated and below else nifti_stem(r.image)
    fallback = "the first folder that tells scans apart (file names repeat)" if repeated else "its file name"
    subjects = ("the subject column" if given == len(rows) else f"for rows without a subject, {fallback}" if given
                else fallback)
    ids = "its path below the folders all scans share (file names repeat)" if repeated else "its file name"
    return f"each scan is named by {ids}; its subject is {subjects}", problems


def _splits_from_run(rows: list[Row], splits_csv: Path) -> None:
    """Give rows without a split the one the run assigned: by subject, then by image file."""
    with splits_csv.open(newline="") as f:
        assigned = list(csv.DictReader(f))
    by_subject = {a["subject"]: a["split"] for a in assigned}
    by_image = {str(Path(a["image"]).resolve()): a["split"] for a in assigned}
    for r in rows:
        if not r.split:
            r.split = by_subject.get(r.subject) or by_image.get(str(r.image.resolve()))


def require_split(table: Table, split: str, path: Path) -> list[Row]:
    """The rows of one split; one clear line when the table and the run give no splits."""
    if table.split_source == "none":
        raise UserError(f"{path}: --split {split}: the table has no split column, and the run has no splits.csv to "
                         f"take them from; drop --split, or add a split column (train/val/test)")
    return [r for r in table.rows if r.split == split]


def _split_problems(rows: list[Row]) -> list[Problem]:
    splits_of: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.split:
            splits_of.setdefault(r.subject, {}).setdefault(r.split, r.number)
    return [Problem(min(found.values()), f"subject {s!r} is in more than one split: "
                    + ", ".join(f"{k} (row {n})" for k, n in sorted(found.items())))
            for s, found in splits_of.items() if len(found) > 1]


def class_problems(rows: list[Row], splits: list[str], data_config=None) -> list[Problem]:
    """Every class 0..K-1 must have training images (K = len(data.classes), else the largest label + 1).
    Class numbers with no rows at all below the largest are most likely a typo: that row is named."""
    if not rows:
        return [Problem(None, "no usable rows")]
    k = num_classes_of(data_config, [r.label for r in rows])
    unused = [c for c in range(k) if all(r.label != c for r in rows)]
    if unused and not getattr(data_config, "classes", None):
        top = [r.number for r in rows if r.label == k - 1]
        return [Problem(top[0], f"label {k - 1} (rows {', '.join(map(str, top[:5]))}) makes {k} classes, but "
                                f"{', '.join(map(str, unused))} have no rows at all: a typo? (data.classes lists "
                                "the classes; rows with other labels are then left out)")]
    trained = {r.label for r, s in zip(rows, splits) if s == "train"}
    return [Problem(None, f"class {c} has no training images (classes are 0..{k - 1}; "
                          f"every class needs some)") for c in range(k) if c not in trained]

"""A scan's prediction as a typed record, from the model to predictions.csv and back: numbers
are floats or None and classes are names; text only at the edge (one writer, one reader)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .data.table import names_from_columns, probability_columns, read_records
from .outputs import write_csv

BASE_COLUMNS = ("id", "row", "file", "slice", "label", "target")  # always written, empty when unknown
LATER_COLUMNS = ("predicted_target", "target_class", "mean_abs_fa", "acceptance_rate", "fallback",
                 "reconstruction_mean_abs_fa")  # written when known


@dataclass
class PredictionRecord:
    """One scan's row of predictions.csv. ``label`` is the table's label as a class name, or as
    the table wrote it when it is no class (MCI), None when unlabelled; ``target`` the table's
    target; ``probabilities`` class name → probability. What `icam explain` adds about the map
    comes last."""

    id: str
    row: int
    file: str
    slice: int | None = None
    label: str | None = None
    target: float | None = None
    predicted_class: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted_target: float | None = None
    target_class: str | None = None  # explain: the class the scan was translated to
    mean_abs_fa: float | None = None  # explain: mean |FA| in the brain
    acceptance_rate: float | None = None
    fallback: bool | None = None
    reconstruction_mean_abs_fa: float | None = None

    @property
    def error(self) -> float | None:
        """Predicted minus true target, where both are known."""
        if self.predicted_target is None or self.target is None:
            return None
        return round(self.predicted_target - self.target, 4)

    def to_row(self) -> dict[str, str | int | float | bool]:
        """The CSV row: the base columns always (empty when unknown), then the probabilities
        (``p_CN``, ``p_class0``) and whatever else is known."""
        row: dict[str, str | int | float | bool] = {
            k: "" if getattr(self, k) is None else getattr(self, k) for k in BASE_COLUMNS}
        if self.predicted_class is not None:
            row["predicted_class"] = self.predicted_class
        names = list(self.probabilities)
        row.update(zip(probability_columns(names), self.probabilities.values()))
        row.update({k: getattr(self, k) for k in LATER_COLUMNS if getattr(self, k) is not None})
        return row

    @classmethod
    def from_row(cls, row: dict[str, str], names: list[str]) -> PredictionRecord:
        def number(key: str) -> float | None:
            text = row.get(key, "")
            return float(text) if text not in ("", None) else None

        return cls(row["id"], int(row["row"]), row.get("file", ""), int(row["slice"]) if row.get("slice") else None,
                   row.get("label") or None, number("target"), row.get("predicted_class") or None,
                   {n: float(row[c]) for n, c in zip(names, probability_columns(names)) if row.get(c, "") != ""},
                   number("predicted_target"), row.get("target_class") or None, number("mean_abs_fa"),
                   number("acceptance_rate"), row["fallback"] == "True" if row.get("fallback") else None,
                   number("reconstruction_mean_abs_fa"))


def known_target(value: float) -> float | None:
    """A target as records hold it: None for the NaN a dataset uses for unknown."""
    return None if math.isnan(value) else value


def write_predictions(path: Path, records: list[PredictionRecord], extra: list[dict] | None = None) -> Path:
    """predictions.csv (or outliers.csv, with ``extra`` columns per record)."""
    return write_csv(path, [{**r.to_row(), **(e or {})} for r, e in zip(records, extra or [{}] * len(records))])


def read_predictions(path: Path) -> tuple[list[str], list[PredictionRecord]]:
    """The class names (from the probability columns) and the records of a predictions table
    (.csv, or a BIDS derivative's .tsv)."""
    header, rows, _ = read_records(path)
    names = names_from_columns(header)
    return names, [PredictionRecord.from_row(row, names) for row in rows]

"""Train/val/test splits by subject, stratified by class and target, seeded.

All rows (scans, slices) of a subject land in the same split, so no subject's anatomy is
seen in training and scored in validation or test.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..errors import UserError

SPLITS = ("train", "val", "test")


def _spread(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """k positions evenly spread over range(n), with a random phase."""
    phase = rng.random()
    return [int((j + phase) * n / k) for j in range(k)]


def assign_splits(subjects: Sequence, labels: Sequence[int], targets: Sequence[float] | None = None,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[str]:
    """One split name per row.

    Within each class (a subject's most common label), subjects are ordered by their mean
    target (shuffled when there is none) and the val and test subjects are picked evenly along
    that order, so each split spans the classes and the target range. Every class with at
    least three subjects gives val and test one subject at least.
    """
    if len(subjects) != len(labels):
        raise UserError(f"{len(subjects)} subjects but {len(labels)} labels: one label per row is needed")
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise UserError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    rows_of = defaultdict(list)
    for row, subject in enumerate(subjects):
        rows_of[subject].append(row)
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for s in sorted(rows_of, key=str):
        by_class[int(np.bincount([int(labels[r]) for r in rows_of[s]]).argmax())].append(s)
    split_of = {}
    for k in sorted(by_class):
        members = by_class[k]
        rng.shuffle(members)
        if targets is not None:
            mean = {s: np.nanmean([float(targets[r]) for r in rows_of[s]]) if any(
                not math.isnan(float(targets[r])) for r in rows_of[s]) else math.inf for s in members}
            members.sort(key=lambda s: mean[s])  # stable: ties keep their random order
        n = len(members)
        counts = [round(n * f) for f in fractions[1:]]
        if n >= 3:
            counts = [max(1, c) if f > 0 else 0 for c, f in zip(counts, fractions[1:])]
        val = set(_spread(n, counts[0], rng)) if counts[0] else set()
        rest = [i for i in range(n) if i not in val]
        test = {rest[i] for i in _spread(len(rest), counts[1], rng)} if counts[1] and rest else set()
        for i, s in enumerate(members):
            split_of[s] = "val" if i in val else "test" if i in test else "train"
    return [split_of[s] for s in subjects]

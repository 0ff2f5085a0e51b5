"""Cohorts: the built-in synthetic benchmarks and (later) the user's own NIfTI + CSV data."""

from __future__ import annotations

from .cohort import InMemoryCohort
from .sampling import ClassBalancedBatchSampler
from .squares import make_squares

SPLITS = ("train", "val", "test")


def build_cohorts(data_config, seed: int) -> dict[str, InMemoryCohort]:
    """The train/val/test cohorts a config describes."""
    base = data_config.seed if data_config.seed is not None else seed
    sizes = {"train": data_config.n_train, "val": data_config.n_val, "test": data_config.n_test}
    return {split: make_squares(sizes[split], data_config.image_size, data_config.spatial_dims,
                                data_config.effect, data_config.continuous_target,
                                data_config.class_thresholds, seed=base * 3 + i)
            for i, split in enumerate(SPLITS)}


__all__ = ["ClassBalancedBatchSampler", "InMemoryCohort", "build_cohorts", "make_squares"]

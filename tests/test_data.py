"""The squares benchmark."""

import torch

from icam.config import SquaresData
from icam.data import build_cohorts, make_squares


def test_squares_are_balanced_scaled_and_have_ground_truth():
    cohort = make_squares(40, 64, seed=0)
    assert cohort.images.shape == (40, 1, 64, 64)
    assert cohort.images.min() == -1 and cohort.images.max() == 1
    assert cohort.labels.tolist() == [0, 1] * 20
    box_pixels = cohort.gt_maps.flatten(1).sum(1)
    assert (box_pixels[cohort.labels == 0] == 0).all()
    assert (box_pixels[cohort.labels == 1] == 2 * 10 * 10).all()  # two 10×10 boxes at 64×64
    # class 1 is brighter inside its boxes than outside
    inside = (cohort.images * cohort.gt_maps).flatten(1).sum(1) / box_pixels.clamp(min=1)
    assert (inside[cohort.labels == 1] > cohort.images[cohort.labels == 1].flatten(1).mean(1)).all()


def test_both_subtypes_occur_in_every_split():
    cohorts = build_cohorts(SquaresData(n_train=20, n_val=8, n_test=8), seed=0)
    for split, cohort in cohorts.splits.items():
        maps = cohort.gt_maps[cohort.labels == 1, 0]
        rows_with_box = maps.sum(2) > 0  # (n, H): which rows hold a box
        upper = rows_with_box[:, :20].any(1)  # subtype B: second box above the centre
        lower = rows_with_box[:, 44:].any(1)  # subtype A: below
        assert upper.any() and lower.any(), split


def test_seeded_and_distinct_per_seed():
    assert torch.equal(make_squares(6, 32, seed=1).images, make_squares(6, 32, seed=1).images)
    assert not torch.equal(make_squares(6, 32, seed=1).images, make_squares(6, 32, seed=2).images)


def test_3d_squares():
    cohort = make_squares(4, 32, spatial_dims=3)
    assert cohort.images.shape == (4, 1, 32, 32, 32)
    assert cohort.gt_maps[1].sum() == 2 * 5 ** 3


def test_continuous_target_sets_the_class_by_threshold():
    cohort = make_squares(50, 32, continuous_target=True, class_thresholds=[0.3], seed=0)
    assert torch.equal(cohort.labels, (cohort.targets >= 0.3).long())
    assert not torch.isnan(cohort.targets).any()

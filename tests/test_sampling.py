"""Rejection sampling of class attributes, and the class-balanced batch sampler."""

import pytest
import torch

from icam.data import ClassBalancedBatchSampler
from icam.model import ICAM


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = ICAM((32, 32), num_classes=3, width=4)
    with torch.no_grad():  # a classifier whose classes are easy to tell apart
        m.classifier.weight.normal_(0, 2.0)
    return m.eval()


@pytest.mark.parametrize("target", [0, 1, 2])
def test_sampled_attributes_belong_to_the_asked_class(model, target):
    sample = model.sample_attribute(target, n=100, min_probability=0.9,
                                    generator=torch.Generator().manual_seed(1))
    assert sample.attribute.shape == (100, model.latent_size)
    assert sample.accepted.all() and not sample.fallback
    probabilities = torch.softmax(model.classifier(sample.attribute), 1)
    assert (probabilities.argmax(1) == target).all()
    assert (probabilities[:, target] >= 0.9).all()
    assert 0 < sample.acceptance_rate <= 1
    assert len(torch.unique(sample.attribute, dim=0)) == 100  # distinct draws


def test_one_class_per_row_and_seeded(model):
    classes = torch.tensor([2, 0, 1, 2])
    first = model.sample_attribute(classes, generator=torch.Generator().manual_seed(3))
    again = model.sample_attribute(classes, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.attribute, again.attribute)
    assert torch.equal(model.classifier(first.attribute).argmax(1), classes)


def test_unreachable_class_falls_back_and_says_so(model):
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, -1e4, 0.0]))  # class 1 never wins
    sample = model.sample_attribute(1, n=5, candidates_per_row=8, max_candidates=200)
    assert sample.fallback and not sample.accepted.any()
    assert sample.acceptance_rate == 0 and sample.drawn >= 200
    assert sample.attribute.shape == (5, model.latent_size)


def test_single_round_mode_draws_once(model):
    sample = model.sample_attribute(torch.tensor([0, 1]), candidates_per_row=16, max_candidates=None)
    assert sample.drawn == 32


def test_bad_class_is_an_error(model):
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        model.sample_attribute(3, n=2)


def test_batches_hold_every_class_in_order():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 7)
    sampler = ClassBalancedBatchSampler(labels, images_per_class=2, seed=0)
    it = iter(sampler)
    for _ in range(20):
        batch = next(it)
        assert labels[batch].tolist() == [0, 0, 1, 1, 2, 2]


def test_each_pass_visits_every_image_once_and_ranks_do_not_overlap():
    labels = torch.tensor([0] * 8 + [1] * 8)
    ranks = [ClassBalancedBatchSampler(labels, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [i for b in range(2) for s in ranks for i in s.batch(b)]  # 2 batches × 2 ranks × 4 = one pass
    assert sorted(seen) == list(range(16))


def test_starting_later_continues_the_same_stream():
    labels = torch.tensor([0] * 5 + [1] * 3)
    full = ClassBalancedBatchSampler(labels, 1, seed=2)
    late = iter(ClassBalancedBatchSampler(labels, 1, seed=2, start_batch=7))
    assert [next(late) for _ in range(5)] == [full.batch(b) for b in range(7, 12)]


def test_a_missing_class_is_a_clear_error():
    with pytest.raises(ValueError, match="classes without images"):
        ClassBalancedBatchSampler(torch.tensor([0, 0, 2]), 1)

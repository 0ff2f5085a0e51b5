"""Every term of the objective is finite and reaches the parameters it should train."""

import math

import torch

from icam import losses
from icam.config import LossWeights
from icam.model import ICAM
from icam.nets import ContentDiscriminator, DomainDiscriminator


def test_every_generator_term_is_finite_and_differentiable():
    torch.manual_seed(0)
    model = ICAM((32, 32), num_classes=3, width=4)
    encoded, random = (DomainDiscriminator(2, (32, 32), 3, width=4) for _ in range(2))
    content_d = ContentDiscriminator(2, model.content_shape, 16, 3)
    images = torch.rand(6, 1, 32, 32) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    partner = (torch.arange(6) + 2) % 6
    random_attribute = torch.randn(6, model.latent_size)
    target = torch.tensor([0.5, float("nan"), -1.0, 2.0, 0.0, 1.0])
    for name in LossWeights.model_fields:
        if name == "domain_classification_discriminator":
            continue
        out = model(images, partner, random_attribute)
        terms = losses.generator_terms(out, images, labels, labels[partner], target, random_attribute,
                                       encoded(out.translated), random(out.randomly_translated),
                                       content_d(out.content))
        assert set(terms) == set(LossWeights.model_fields) - {"domain_classification_discriminator"}
        term = terms[name]
        assert torch.isfinite(term), name
        model.zero_grad()
        term.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_discriminator_terms():
    real = (torch.tensor([3.0, -1.0]), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    terms = losses.domain_discriminator_terms(real, torch.tensor([-3.0, 0.5]), torch.tensor([0, 1]))
    assert set(terms) == {"domain_adversarial", "domain_classification_discriminator"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert losses.content_discriminator_terms(torch.tensor([[5.0, -5.0]]), torch.tensor([0]))[
        "content_adversarial"] < 1e-3


def test_content_adversarial_is_zero_only_without_class_information():
    assert abs(losses.kl_from_uniform(torch.zeros(4, 3))) < 1e-6
    assert losses.kl_from_uniform(torch.tensor([[4.0, 0.0, 0.0]])) > 0.5


def test_kl_is_a_per_element_mean():
    assert losses.kl_divergence(torch.zeros(2, 64), torch.zeros(2, 64)) == 0
    small = losses.kl_divergence(torch.ones(2, 64), torch.zeros(2, 64))
    large_batch = losses.kl_divergence(torch.ones(8, 640), torch.zeros(8, 640))
    assert math.isclose(small, 0.5) and math.isclose(large_batch, 0.5)  # no batch/size scaling


def test_regression_ignores_unknown_targets():
    prediction = torch.tensor([0.0, 10.0])
    assert losses.masked_smooth_l1(prediction, torch.tensor([0.0, float("nan")])) == 0


def test_weighted_sum_uses_each_terms_weight():
    weights = LossWeights(fa_map_l1=2.0, cycle_l1=0.5)
    total = losses.weighted_sum({"fa_map_l1": torch.tensor(1.0), "cycle_l1": torch.tensor(4.0)}, weights)
    assert total == 4.0

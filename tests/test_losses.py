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
    discriminators_only = {"domain_classification_discriminator", "domain_gradient_penalty"}
    for name in sorted(set(LossWeights.model_fields) - discriminators_only):
        out = model(images, partner, random_attribute)
        validity = model.classifier(model.encode_attribute(torch.cat([out.translated, out.randomly_translated]))[0])
        terms = losses.generator_terms(out, images, labels, labels[partner], target, random_attribute,
                                       encoded(out.translated, labels[partner]),
                                       random(out.randomly_translated, labels[partner]),
                                       content_d(out.content), validity, structure=True)
        assert set(terms) == set(LossWeights.model_fields) - discriminators_only
        term = terms[name]
        assert torch.isfinite(term), name
        model.zero_grad()
        term.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_discriminator_terms_are_the_gan_and_class_losses_computed_by_hand():
    def softplus(x):  # −log σ(−x): the BCE of logit x against 0; softplus(−x) against 1
        return math.log1p(math.exp(x))

    real = (torch.tensor([3.0, -1.0]), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    terms = losses.domain_discriminator_terms(real, torch.tensor([-3.0, 0.5]), torch.tensor([0, 1]))
    assert set(terms) == {"domain_adversarial", "domain_classification_discriminator"}
    # real judged real (logits 3, −1 against 1) plus fakes judged fake (−3, 0.5 against 0)
    expected = (softplus(-3.0) + softplus(1.0)) / 2 + (softplus(-3.0) + softplus(0.5)) / 2
    assert math.isclose(float(terms["domain_adversarial"]), expected, rel_tol=1e-6)
    # the class head on real images only: both right with margin 2
    assert math.isclose(float(terms["domain_classification_discriminator"]), softplus(-2.0), rel_tol=1e-6)
    swapped = losses.domain_discriminator_terms(real, torch.tensor([-3.0, 0.5]), torch.tensor([1, 0]))
    assert math.isclose(float(swapped["domain_classification_discriminator"]), softplus(2.0), rel_tol=1e-6)
    # the content discriminator: cross-entropy of the class from the content latent
    right = losses.content_discriminator_terms(torch.tensor([[5.0, -5.0]]), torch.tensor([0]))["content_adversarial"]
    wrong = losses.content_discriminator_terms(torch.tensor([[5.0, -5.0]]), torch.tensor([1]))["content_adversarial"]
    assert abs(float(right) - softplus(-10.0)) < 1e-6 and math.isclose(float(wrong), softplus(10.0), rel_tol=1e-5)


def test_the_gradient_penalty_is_the_judges_squared_gradient_at_real_images():
    """R1 of a linear judge w·x is ½‖w‖² at every image, and its gradient trains the judge (d/dw = w)."""
    weight = torch.randn(1, 1, 6, 6, requires_grad=True)
    real = torch.randn(3, 1, 6, 6).requires_grad_(True)
    penalty = losses.gradient_penalty((real * weight).flatten(1).sum(1), real)
    assert torch.allclose(penalty, 0.5 * weight.pow(2).sum())
    penalty.backward()
    assert torch.allclose(weight.grad, weight.detach())
    # through a real judge (a judge per class, centred, spectrally normalised): finite, and it reaches the weights
    judge = DomainDiscriminator(2, (16, 16), 2, width=4, spectral_norm=True, real_fake="per-class", centred=True)
    real = torch.randn(4, 1, 16, 16).requires_grad_(True)
    penalty = losses.gradient_penalty(judge(real, torch.tensor([0, 1, 0, 1]))[0], real)
    penalty.backward()
    assert float(penalty.detach()) > 0 and all(p.grad is not None and torch.isfinite(p.grad).all()
                                      for p in judge.features.parameters())


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


def test_the_structural_dissimilarity_is_one_minus_ssim():
    """0 for an image against itself; for flat images a and b only SSIM's luminance factor is left,
    (2ab + C1) / (a² + b² + C1) with C1 = (0.01 · 2)² on images in [-1, 1]; inverted structure
    about the same means costs more than 1. In 2D and 3D."""
    c1 = (0.01 * 2) ** 2
    for shape in ((2, 1, 24, 32), (2, 1, 16, 24, 16)):
        a, b = torch.full(shape, 0.1), torch.full(shape, -0.05)  # dark enough for C1 to count
        luminance = (2 * 0.1 * -0.05 + c1) / (0.1 ** 2 + 0.05 ** 2 + c1)
        # float32 leaves a flat window a variance of ~1e-8, a few 1e-5 of the result
        assert abs(losses.structural_dissimilarity(a, b).item() - (1 - luminance)) < 1e-3
        texture = torch.rand(shape, generator=torch.Generator().manual_seed(0)) - 0.5
        assert losses.structural_dissimilarity(0.3 + texture, 0.3 + texture).abs() < 1e-5
        assert losses.structural_dissimilarity(0.3 - texture, 0.3 + texture) > 1  # same means, inverted


def test_weighted_sum_uses_each_terms_weight():
    weights = LossWeights(fa_map_l1=2.0, cycle_l1=0.5)
    total = losses.weighted_sum({"fa_map_l1": torch.tensor(1.0), "cycle_l1": torch.tensor(4.0)}, weights)
    assert total == 4.0


def test_each_generator_term_has_the_form_of_the_objective():
    """Each term against its formula written out by hand: a change to any term's form fails here."""
    from icam.model import TrainingOutputs

    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    n, k, nz = 4, 3, 16
    images = r(n, 1, 8, 8)
    out = TrainingOutputs(content=r(n, 2, 2, 2), mu=r(n, nz), logvar=r(n, nz) * 0.1, class_logits=r(n, k),
                          regression=r(n), translated=r(n, 1, 8, 8), reconstructed=r(n, 1, 8, 8),
                          randomly_translated=r(n, 1, 8, 8), cycle_reconstructed=r(n, 1, 8, 8),
                          random_attribute_estimate=r(n, nz))
    labels, translated_labels = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 1])
    random_attribute, target = r(n, nz), torch.tensor([0.3, float("nan"), -2.0, 1.0])
    encoded, random, content_logits, validity = (r(n), r(n, k)), (r(n), r(n, k)), r(n, k), r(2 * n, k)
    terms = losses.generator_terms(out, images, labels, translated_labels, target, random_attribute,
                                   encoded, random, content_logits, validity)

    def bce_real(logits):  # −log σ(logit), the non-saturating generator loss
        return -torch.log(torch.sigmoid(logits)).mean()

    def cross_entropy(logits, classes):
        return -torch.log_softmax(logits, 1)[torch.arange(len(classes)), classes].mean()

    known = ~torch.isnan(target)
    error = (out.regression - target)[known].abs()
    expected = {
        "content_adversarial": (-torch.log_softmax(content_logits, 1).mean(1) - math.log(k)).mean(),
        "content_reversal": -cross_entropy(content_logits, labels),
        "domain_adversarial": bce_real(encoded[0]) + bce_real(random[0]),
        "domain_classification": cross_entropy(encoded[1], translated_labels) + cross_entropy(random[1],
                                                                                              translated_labels),
        "classification": cross_entropy(out.class_logits, labels),
        "kl_attribute": (-0.5 * (1 + out.logvar - out.mu ** 2 - out.logvar.exp())).mean(),
        "content_l2": (out.content ** 2).mean(),
        "fa_map_l1": (out.translated - images).abs().mean(),
        "latent_regression": (out.random_attribute_estimate - random_attribute).abs().mean(),
        "reconstruction_l1": (out.reconstructed - images).abs().mean(),
        "reconstruction_l2": ((out.reconstructed - images) ** 2).mean(),
        "cycle_l1": (out.cycle_reconstructed - images).abs().mean(),
        "cycle_l2": ((out.cycle_reconstructed - images) ** 2).mean(),
        "regression": torch.where(error < 1, 0.5 * error ** 2, error - 0.5).mean(),
        "translation_validity": cross_entropy(validity, torch.cat([translated_labels, translated_labels])),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, atol=1e-5), name

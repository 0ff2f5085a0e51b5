"""The terms of ICAM's objective (paper eq. 5), as pure functions of network outputs.

Every function returns *unweighted* terms keyed by the name of their weight in
``icam.config.LossWeights``; :func:`weighted_sum` applies the weights. Deviations from the
authors' code, on purpose:
- classification is cross-entropy on logits (their BCE on softmax outputs has a minimum > 0);
- KL(z_a) is a mean over latent elements and samples, so its weight does not change with
  batch size or input size (their sum over both is B·nz = 128 times larger at 128², batch 2);
- regression has its own weight and works on standardised targets;
- GAN terms are means over the batch (theirs sum over samples, so scale with batch size).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from .model import TrainingOutputs, fa_map


def adversarial(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss: BCE of real/fake logits against 1 (real) or 0 (fake)."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), float(real)))


def kl_from_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform ‖ softmax(logits)): 0 when the logits carry no class information.

    The content encoder minimises this on the content discriminator's output, which pushes
    class information out of z_c (the paper's soft target 0.5, generalised to K classes).
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.mean(1) + math.log(logits.shape[1])).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)), averaged over latent elements and samples."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()


def masked_smooth_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth L1 over the samples whose target is known (NaN marks an unknown target)."""
    known = ~torch.isnan(target)
    per_sample = F.smooth_l1_loss(prediction.float(), torch.where(known, target, 0.0), reduction="none")
    return (per_sample * known).sum() / known.sum().clamp(min=1)


@functools.cache
def _ssim_loss(spatial_dims: int) -> SSIMLoss:
    # images lie in [-1, 1] (G ends in tanh), so a data range of 2; MONAI's Gaussian 11-voxel window
    return SSIMLoss(spatial_dims, data_range=2.0)


def structural_dissimilarity(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """1 − SSIM (Wang et al. 2004) of ``image`` against ``reference``, over the batch: local
    means, contrasts and structure, which an L1 or L2 per voxel does not compare."""
    return _ssim_loss(image.dim() - 2)(image.float(), reference.float())


def content_discriminator_terms(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dc's own update: predict each image's class from its content latent."""
    return {"content_adversarial": F.cross_entropy(logits.float(), labels)}


def domain_discriminator_terms(real: tuple[torch.Tensor, torch.Tensor], fake: torch.Tensor,
                               labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One domain discriminator's update: ``real`` = (adversarial, class) logits on real images,
    ``fake`` = adversarial logits on (detached) translations. The class head learns on real only."""
    real_adversarial, real_class = real
    return {
        "domain_adversarial": adversarial(real_adversarial, True) + adversarial(fake, False),
        "domain_classification_discriminator": F.cross_entropy(real_class.float(), labels),
    }


def gradient_penalty(real_adversarial: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: half the squared norm of the judge's gradient at each real image, averaged over images.
    ``real`` must require grad and ``real_adversarial`` depend on it; the graph is kept, so the
    penalty trains the judge."""
    (gradient,) = torch.autograd.grad(real_adversarial.float().sum(), real, create_graph=True)
    return 0.5 * gradient.float().pow(2).flatten(1).sum(1).mean()


def generator_terms(out: TrainingOutputs, images: torch.Tensor, labels: torch.Tensor,
                    translated_labels: torch.Tensor, standardised_target: torch.Tensor | None,
                    random_attribute: torch.Tensor,
                    encoded_judgement: tuple[torch.Tensor, torch.Tensor],
                    random_judgement: tuple[torch.Tensor, torch.Tensor],
                    content_logits: torch.Tensor,
                    validity_logits: torch.Tensor | None = None,
                    structure: bool = False) -> dict[str, torch.Tensor]:
    """The encoders' and generator's objective.

    ``encoded_judgement`` / ``random_judgement``: (adversarial, class) logits of the two
    domain discriminators on the translations made with encoded / random attributes, whose
    class is ``translated_labels``. ``content_logits``: the content discriminator on z_c.
    ``standardised_target`` is None when the model does not regress. ``validity_logits``: the
    model's own classifier, frozen, on both translations (encoded, then random), when weighed.
    ``structure``: add the reconstruction's structural dissimilarity (computed only when weighed).
    """
    images = images.float()
    translated, reconstructed = out.translated.float(), out.reconstructed.float()
    cycled = out.cycle_reconstructed.float()
    terms = {
        "content_adversarial": kl_from_uniform(content_logits),
        "content_reversal": -F.cross_entropy(content_logits.float(), labels),
        "domain_adversarial": adversarial(encoded_judgement[0], True) + adversarial(random_judgement[0], True),
        "domain_classification": (F.cross_entropy(encoded_judgement[1].float(), translated_labels)
                                  + F.cross_entropy(random_judgement[1].float(), translated_labels)),
        "classification": F.cross_entropy(out.class_logits.float(), labels),
        "kl_attribute": kl_divergence(out.mu, out.logvar),
        "content_l2": out.content.float().pow(2).mean(),
        "fa_map_l1": fa_map(translated, images).abs().mean(),
        "latent_regression": F.l1_loss(out.random_attribute_estimate.float(), random_attribute.float()),
        "reconstruction_l1": F.l1_loss(reconstructed, images),
        "reconstruction_l2": F.mse_loss(reconstructed, images),
        "cycle_l1": F.l1_loss(cycled, images),
        "cycle_l2": F.mse_loss(cycled, images),
    }
    if standardised_target is not None:
        terms["regression"] = masked_smooth_l1(out.regression, standardised_target)
    if structure:
        terms["reconstruction_ssim"] = structural_dissimilarity(reconstructed, images)
    if validity_logits is not None:
        terms["translation_validity"] = F.cross_entropy(validity_logits.float(), translated_labels.repeat(2))
    return terms


def weighted_sum(terms: dict[str, torch.Tensor], weights) -> torch.Tensor:
    """Σ weight·term, the weight of each term read from ``weights`` (a LossWeights) by name."""
    return sum(getattr(weights, name) * value for name, value in terms.items())

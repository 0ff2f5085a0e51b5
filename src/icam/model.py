"""The ICAM module: encode, predict, decode, translate, and sample class attributes.

An image x is split into a content latent z_c (class-irrelevant anatomy) and an attribute
latent z_a ~ N(mu, exp(logvar)) (class-relevant). The classifier fC1 and the regressor fC2
read the attribute mean. Translating x to class k keeps z_c(x) and swaps in an attribute of
class k; the feature-attribution map is ``translate(x, k) - x`` (``fa_map``).

Two kinds of translation (``translation``, :meth:`ICAM.translate_from`): ``image``, the paper's,
where the generator's output G(z_c, z_a) is the translated scan, so every map also holds whatever
the decoder fails to reproduce of the scan; and ``residual``, where the translation is the scan
plus the change the attribute makes to the decoding, x + G(z_c, z_a) − G(z_c, z_a(x)): the
translation to the scan's own attribute is the scan itself, the map is the decoded change and
nothing of the decoder's error, and the discriminators judge translations that keep every
detail of the scan.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import get_args, overload

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, Reference, Sampling, Translation
from .errors import UserError
from .nets import AttributeEncoder, ContentEncoder, Generator
from .nets.blocks import init_weights

SIDE_MULTIPLE = 16  # every side of the input divides by 16 (the attribute encoder's and discriminators' strides)


@dataclass
class Prediction:
    """What a model predicts for a batch; None where it makes no such output (a baseline
    regressor has no classes, a classifier no target, only ICAM has attributes)."""

    probabilities: torch.Tensor | None  # (B, K)
    predicted_class: torch.Tensor | None  # (B,)
    target: torch.Tensor | None  # (B,) regressed value in the target's original units
    attribute_mean: torch.Tensor | None = None  # (B, nz)


@dataclass
class AttributePrediction(Prediction):
    """ICAM's prediction: it makes every output, all read from the attribute."""

    probabilities: torch.Tensor
    predicted_class: torch.Tensor
    target: torch.Tensor
    attribute_mean: torch.Tensor


@dataclass
class AttributeSample:
    """Attributes drawn from N(0, I) and accepted by the classifier (rejection sampling)."""

    attribute: torch.Tensor  # (rows, nz)
    accepted: torch.Tensor  # (rows,) bool; False where no candidate passed and the best one was used
    hits: torch.Tensor  # scalar: candidates that passed the test
    drawn: int  # candidates drawn in all

    @property
    def acceptance_rate(self) -> float:
        return float(self.hits) / self.drawn

    @property
    def fallback(self) -> bool:
        """True if any row holds a candidate that did not pass (the classifier rarely predicts its class)."""
        return not bool(self.accepted.all())


@dataclass
class TrainingOutputs:
    """Everything the losses of one encoder/generator update need."""

    content: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    class_logits: torch.Tensor
    regression: torch.Tensor  # standardised units
    translated: torch.Tensor  # G(z_c(x_i), z_a(x_partner(i))): x_i moved to its partner's class
    reconstructed: torch.Tensor  # G(z_c(x_i), z_a(x_i))
    randomly_translated: torch.Tensor  # G(z_c(x_i), random attribute of the partner's class)
    cycle_reconstructed: torch.Tensor  # x_i rebuilt from the translations (cross-cycle)
    random_attribute_estimate: torch.Tensor  # mu of Ea(randomly_translated), to regress the random attribute


@overload
def next_class(labels: int, num_classes: int) -> int: ...
@overload
def next_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor: ...
def next_class(labels: torch.Tensor | int, num_classes: int) -> torch.Tensor | int:
    """The class an image is translated to when no other is asked for: the next one, (label + 1)
    mod K, which is the other class when K = 2. Training pairs, validation maps, the TensorBoard
    grids and ``icam explain --from-label`` all translate this way."""
    return (labels + 1) % num_classes


def translation_partners(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """For each image of a class-balanced batch, the index of an image of the next class: the j-th
    image of class k is paired with the j-th of class next_class(k). A permutation (every class
    has the same count in a batch), so the cross-cycle can undo it; no host synchronisation."""
    order = torch.argsort(labels, stable=True)  # indices grouped by class, classes ascending
    partner = torch.empty_like(order)
    partner[order] = order.roll(-(len(labels) // num_classes))
    return partner


# what a translation is compared with; own-class (the mean translation to the scan's own class)
# needs sampling, so the Explainer makes it
FA_REFERENCES: tuple[str, ...] = get_args(Reference)
TRANSLATIONS: tuple[str, ...] = get_args(Translation)
# How the attributes of a map are drawn: every element from the prior (the paper), or only what the
# prediction heads read, the rest kept from the scan's own attribute mean (a counterfactual draw).
SAMPLINGS: tuple[str, ...] = get_args(Sampling)


def fa_map(translated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The feature-attribution map: a translation minus what it is compared with. The paper
    compares with the input itself; comparing with the input translated to its own attribute
    mean (``ICAM.fa_reference``) cancels the decoder's own error, which both images share."""
    return translated - reference


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class ICAM(nn.Module):
    """ICAM / ICAM-reg for 2D or 3D images (``image_shape`` of 2 or 3 sides, each divisible by 16)."""

    target_mean: torch.Tensor  # buffers: the regression target's standardisation
    target_std: torch.Tensor

    def __init__(self, image_shape: tuple[int, ...] | list[int], num_classes: int = 2,
                 in_channels: int = 1, width: int = 16, init: str = "kaiming", upsampling: str = "transposed",
                 attribute_stride: int = 16, content_noise: float = 1.0, translation: str = "image",
                 attribute_channels: int = 1, attribute_injection: str = "input", generator_norm: str = "instance",
                 content_channels: int | None = None, content_stride: int = 4):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) not in (2, 3):
            raise UserError(f"image_shape must have 2 or 3 sides, got {image_shape}")
        if any(s % SIDE_MULTIPLE or s <= 0 for s in image_shape):
            raise UserError(f"every side of image_shape must be a positive multiple of {SIDE_MULTIPLE}, "
                             f"got {image_shape}")
        if num_classes < 2:
            raise UserError(f"num_classes must be at least 2, got {num_classes}")
        if translation not in TRANSLATIONS:
            raise UserError(f"translation must be one of {TRANSLATIONS}, got {translation!r}")
        self.hparams = dict(image_shape=list(image_shape), num_classes=num_classes,
                            in_channels=in_channels, width=width, upsampling=upsampling,
                            attribute_stride=attribute_stride, content_noise=content_noise,
                            translation=translation, attribute_channels=attribute_channels,
                            attribute_injection=attribute_injection,
                            generator_norm=generator_norm,
                            content_channels=content_channels,
                            content_stride=content_stride)  # what rebuilds it around a state dict
        self.translation = translation
        self.image_shape = image_shape
        self.spatial_dims = len(image_shape)
        self.num_classes = num_classes
        self.latent_shape = tuple(s // attribute_stride for s in image_shape)  # the attribute map's sides
        self.attribute_channels = attribute_channels
        self.latent_size = attribute_channels * math.prod(self.latent_shape)

        self.content_stride = content_stride
        self.content_encoder = ContentEncoder(self.spatial_dims, in_channels, width, noise=content_noise,
                                              channels=content_channels, stride=content_stride)
        self.attribute_encoder = AttributeEncoder(self.spatial_dims, in_channels, width, attribute_stride,
                                                  attribute_channels)
        self.classifier = nn.Linear(self.latent_size, num_classes)  # fC1
        self.regressor = nn.Linear(self.latent_size, 1)  # fC2 (ICAM-reg), on standardised targets
        self.generator = Generator(self.spatial_dims, self.content_encoder.out_channels, in_channels, width,
                                   upsampling=upsampling, attribute_channels=attribute_channels,
                                   attribute_injection=attribute_injection, norm=generator_norm,
                                   gate=translation == "gated", attribute_size=self.latent_size,
                                   content_stride=content_stride)
        self.in_channels = in_channels
        # The regressor learns standardised targets; these map its output back to original units.
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))
        init_weights(self, init)

    @classmethod
    def complete_hparams(cls, hparams: dict) -> dict:
        """A checkpoint's hyperparameters with the defaults of those added since it was written."""
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        return {**defaults, **hparams}

    @property
    def content_shape(self) -> tuple[int, ...]:
        return tuple(s // self.content_stride for s in self.image_shape)

    # -- the parts ---------------------------------------------------------------------------

    def encode_content(self, x: torch.Tensor) -> torch.Tensor:
        return self.content_encoder(x)

    def encode_attribute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of the attribute latent, each (B, nz)."""
        return self.attribute_encoder(x)

    def generate(self, content: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
        """G's whole output: the image channels, then (``gated``) where a change applies."""
        return self.generator(content, attribute.view(-1, self.attribute_channels, *self.latent_shape))

    def decode(self, content: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
        return self.generate(content, attribute)[:, :self.in_channels]

    def compose(self, x: torch.Tensor, target: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """A translation from G's outputs for the target attribute and for x's own: the target's
        image (``image``), x plus the change between the two decodings (``residual``), or that
        change where the target's gate opens (``gated``)."""
        if self.translation == "image":
            return target[:, :self.in_channels]
        change = target[:, :self.in_channels] - own[:, :self.in_channels]
        return x + (change if self.translation == "residual" else target[:, self.in_channels:] * change)

    def translate_from(self, x: torch.Tensor, content: torch.Tensor, attribute: torch.Tensor,
                       source_attribute: torch.Tensor) -> torch.Tensor:
        """x, whose content code is ``content`` and own attribute ``source_attribute`` (one row for
        every x, or one for all), moved to ``attribute``: G(z_c, z_a) (``image``), or
        x + G(z_c, z_a) − G(z_c, z_a(x)) (``residual``; G decodes both in one call; ``gated``: the
        change where G's gate for z_a opens)."""
        if self.translation == "image":
            return self.decode(content, attribute)
        rows = len(source_attribute)
        decoded = self.generate(torch.cat([content, content[:rows]]), torch.cat([attribute, source_attribute]))
        return self.compose(x, decoded[:len(attribute)], decoded[len(attribute):])

    def standardise_target(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.target_mean) / self.target_std

    def regress(self, attribute: torch.Tensor) -> torch.Tensor:
        """The regressed target, in original units, for attribute vectors (B, nz)."""
        return self.regressor(attribute).squeeze(1) * self.target_std + self.target_mean

    def predict(self, x: torch.Tensor) -> AttributePrediction:
        mu, _ = self.encode_attribute(x)
        probabilities = F.softmax(self.classifier(mu).float(), dim=1)
        return AttributePrediction(probabilities, probabilities.argmax(1), self.regress(mu).float(), mu)

    # -- translation -------------------------------------------------------------------------

    def reconstruct(self, x: torch.Tensor, content: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's rebuilding G(z_c, mu) of x. Where it differs from x is the decoder's error:
        the floor under every map an image translation makes (a residual one leaves it out)."""
        content = self.encode_content(x) if content is None else content
        return self.decode(content, self.encode_attribute(x)[0].to(content.dtype))

    def fa_reference(self, x: torch.Tensor, reference: str = "input",
                     content: torch.Tensor | None = None) -> torch.Tensor:
        """What a translation of x is compared with (``fa_map``): x (``input``, the paper), or x
        translated to its own attribute mean (``reconstruction``: G(z_c, mu) for an image
        translation; x itself for a residual one, where the two references agree)."""
        if reference == "input" or (reference == "reconstruction" and self.translation != "image"):
            return x
        if reference == "reconstruction":
            return self.reconstruct(x, content)
        if reference == "own-class":
            raise UserError("the own-class reference is a mean over sampled translations: Explainer.explain makes it")
        raise UserError(f"reference must be one of {FA_REFERENCES}, got {reference!r}")

    @torch.no_grad()
    def prediction_subspace(self, regressing: bool) -> torch.Tensor:
        """An orthonormal basis (r, nz) of what the prediction heads read of an attribute vector:
        the differences of the classifier's class weights (K − 1 directions; softmax sees nothing
        else) and, for a model that regresses, the regressor's weights."""
        weights = self.classifier.weight.detach().float()
        directions = [weights[1:] - weights[:1]]
        if regressing:
            directions.append(self.regressor.weight.detach().float())
        q, r = torch.linalg.qr(torch.cat(directions).T)
        return q[:, r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()].T  # without dependent directions

    def sampling_arguments(self, sampling: str, attribute_mean: torch.Tensor, regressing: bool) -> dict:
        """``sample_attribute``'s ``keep`` and ``subspace`` for one draw per row of
        ``attribute_mean`` (each scan's own, repeated as often as it is sampled): nothing for
        ``prior`` (the paper), the scan's attribute and the heads' subspace for ``counterfactual``."""
        if sampling not in SAMPLINGS:
            raise UserError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if sampling == "prior":
            return {}
        return {"keep": attribute_mean, "subspace": self.prediction_subspace(regressing)}

    def sample_attribute(self, target_class: int | torch.Tensor, n: int = 1,
                         min_probability: float | None = None, candidates_per_row: int = 32,
                         max_candidates: int | None = 100_000,
                         generator: torch.Generator | None = None, keep: torch.Tensor | None = None,
                         subspace: torch.Tensor | None = None) -> AttributeSample:
        """Draw attribute vectors from N(0, I) that the classifier assigns to ``target_class``.

        ``target_class`` is one class (then ``n`` rows) or a tensor of classes (one row each).
        Each round draws ``candidates_per_row`` candidates for every row still missing one,
        classifies them all in one call and keeps the first that passes (argmax is the class
        and, if given, its probability ≥ ``min_probability``). Rounds stop when every row is
        filled or ``max_candidates`` are spent; rows still empty take their most probable
        candidate and are marked in ``accepted``. ``max_candidates=None`` runs one round
        with no host synchronisation (the training loop's setting).

        ``keep`` (rows, nz) with ``subspace`` (``prediction_subspace``): a counterfactual draw,
        each row's own attribute with only its part in the subspace drawn from the prior, so
        what the prediction heads do not read (where this scan's effects lie, its intensity)
        stays the scan's own.
        """
        device = self.classifier.weight.device
        classes = (torch.full((n,), int(target_class), device=device) if isinstance(target_class, int)
                   else target_class.to(device).long().flatten())
        # Checking reads the classes back from the device: skipped in training (labels checked at load).
        if max_candidates is not None and classes.numel() and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise UserError(f"target classes must lie in [0, {self.num_classes - 1}]")
        attribute = torch.zeros(len(classes), self.latent_size, device=device)
        accepted = torch.zeros(len(classes), dtype=torch.bool, device=device)
        hits, drawn = torch.zeros((), device=device), 0
        rows = torch.arange(len(classes), device=device)
        kept = None
        if keep is not None:
            if subspace is None:
                raise UserError("keep needs the subspace the draw replaces")
            keep = keep.to(device).float().expand(len(classes), -1)
            kept = (keep - (keep @ subspace.T) @ subspace, subspace)  # what the draw leaves as it is
        while len(rows):
            z, ok, row_hits = self._rejection_round(classes[rows], candidates_per_row, min_probability,
                                                    generator, None if kept is None else (kept[0][rows], kept[1]))
            attribute[rows], accepted[rows] = z, ok
            hits, drawn = hits + row_hits, drawn + len(rows) * candidates_per_row
            if max_candidates is None or drawn >= max_candidates:
                break
            rows = rows[~ok]
        return AttributeSample(attribute, accepted, hits, drawn)

    def _rejection_round(self, classes: torch.Tensor, candidates: int, min_probability: float | None,
                         generator: torch.Generator | None, kept: tuple[torch.Tensor, torch.Tensor] | None = None):
        z = torch.randn(len(classes), candidates, self.latent_size, device=classes.device,
                        generator=generator)
        if kept is not None:  # the rest of each row's own attribute plus the drawn part the heads read
            rest, subspace = kept
            z = rest[:, None] + (z @ subspace.T) @ subspace
        probabilities = F.softmax(self.classifier(z).float(), dim=-1)  # (rows, candidates, K)
        target_probability = probabilities.gather(
            -1, classes.view(-1, 1, 1).expand(-1, candidates, 1)).squeeze(-1)
        passed = probabilities.argmax(-1) == classes.view(-1, 1)
        if min_probability is not None:
            passed &= target_probability >= min_probability
        any_passed = passed.any(1)
        # The first passing candidate is an unbiased draw from the accepted region; the most
        # probable one is only the fallback for rows where none passed.
        choice = torch.where(any_passed, passed.int().argmax(1), target_probability.argmax(1))
        return z[torch.arange(len(classes), device=z.device), choice], any_passed, passed.sum()

    @torch.no_grad()
    def translate(self, x: torch.Tensor, target_class: int | torch.Tensor | None = None,
                  attribute: torch.Tensor | None = None, min_probability: float | None = None,
                  generator: torch.Generator | None = None, sampling: str = "prior",
                  regressing: bool = False) -> torch.Tensor:
        """x moved to ``target_class`` (an attribute per image, drawn as ``sampling`` says) or to
        ``attribute``."""
        if (target_class is None) == (attribute is None):
            raise UserError("give exactly one of target_class or attribute")
        mu = self.encode_attribute(x)[0]
        if attribute is None:
            assert target_class is not None  # exactly one was given
            classes = (torch.full((len(x),), target_class, device=x.device)
                       if isinstance(target_class, int) else target_class)
            attribute = self.sample_attribute(classes, min_probability=min_probability, generator=generator,
                                              **self.sampling_arguments(sampling, mu, regressing)).attribute
        return self.translate_from(x, self.encode_content(x), attribute.to(x.dtype), mu)

    # -- training ----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, partner: torch.Tensor,
                random_attribute: torch.Tensor) -> TrainingOutputs:
        """The encoder/generator computation of one training step.

        Image i is translated with the attribute of image ``partner[i]`` (of another class) and
        with ``random_attribute[i]`` (sampled for the partner's class); it is also rebuilt from
        its own latents, and from the translations (cross-cycle: the translation that kept its
        content, and the one that took its attribute). One generator call serves all three
        first-pass decodings. A ``residual`` translation adds x_i − G(z_c, z_a(x_i)) to the other
        two (the reconstruction losses still hold G(z_c, z_a(x_i)) to x_i: they are what teaches
        the decoder what the attribute renders), and the cycle goes back from the translation the
        same way, with the translation's own attribute as the source.
        """
        n = images.shape[0]
        inverse = torch.empty_like(partner)
        inverse[partner] = torch.arange(n, device=partner.device)

        content = self.encode_content(images)
        mu, logvar = self.encode_attribute(images)
        attribute = reparameterise(mu, logvar)
        decoded = self.generate(torch.cat([content] * 3),
                                torch.cat([attribute[partner], attribute, random_attribute.to(attribute.dtype)]))
        translated, own, randomly_translated = decoded.split(n)  # the decoding of x_i's own attribute is shared
        translated, randomly_translated = (self.compose(images, t, own) for t in (translated, randomly_translated))
        reconstructed = own[:, :self.in_channels]

        cycle_mu, cycle_logvar = self.encode_attribute(torch.cat([translated, randomly_translated]))
        cycle_attribute = reparameterise(cycle_mu[:n], cycle_logvar[:n])
        cycle_reconstructed = self.translate_from(translated, self.encode_content(translated),
                                                  cycle_attribute[inverse], cycle_attribute)
        return TrainingOutputs(
            content=content, mu=mu, logvar=logvar,
            class_logits=self.classifier(mu), regression=self.regressor(mu).squeeze(1),
            translated=translated, reconstructed=reconstructed, randomly_translated=randomly_translated,
            cycle_reconstructed=cycle_reconstructed, random_attribute_estimate=cycle_mu[n:],
        )


def build_model(m: ModelConfig, image_shape: tuple[int, ...] | list[int], num_classes: int,
                in_channels: int = 1) -> ICAM:
    """The network ``model.*`` asks for, for images of this shape and this many classes."""
    return ICAM(image_shape, num_classes, in_channels, m.width, m.init, m.upsampling, m.attribute_stride,
                m.content_noise, m.translation, m.attribute_channels, m.attribute_injection, m.generator_norm,
                m.content_channels, m.content_stride)

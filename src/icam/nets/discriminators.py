"""The two kinds of discriminator: on images (real/fake + class) and on the content latent."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from .blocks import Blocks, ConvNormAct, conv


def _halvings(shape: tuple[int, ...], smallest: int, most: int) -> int:
    """How many stride-2 convs fit while the smallest side stays at least ``smallest`` before each."""
    side, count = min(shape), 0
    while side >= smallest and count < most:
        side, count = (side + 1) // 2, count + 1
    return count


class DomainDiscriminator(nn.Module):
    """(image, class it is said to be) → (real/fake logit (B,), class logits (B, K)).

    Up to six stride-2 3×3 convs (w, 2w, … capped at 16w), fewer for small inputs, then two
    1×1 heads averaged over space (PatchGAN-style). ``real_fake="shared"`` (the paper's): one
    real/fake judge for every class, which ignores the class; ``"per-class"``: one judge per
    class, and an image is judged by its class's (StarGAN v2's multi-task discriminator).
    """

    def __init__(self, spatial_dims: int, image_shape: tuple[int, ...], num_classes: int,
                 in_channels: int = 1, width: int = 16, layers: int = 6, norm: bool = False,
                 spectral_norm: bool = False, real_fake: str = "shared", centred: bool = False):
        super().__init__()
        self.centred = centred
        if real_fake not in REAL_FAKE_JUDGES:
            raise UserError(f"the domain discriminators' real/fake judge is one of {REAL_FAKE_JUDGES}, "
                            f"got {real_fake!r}")
        blocks, channels = [], in_channels
        # InstanceNorm needs more than one element per channel, so stop at side 2 with it.
        for i in range(_halvings(image_shape, smallest=4 if norm else 2, most=layers)):
            out = width * min(2 ** i, 16)
            blocks.append(ConvNormAct(spatial_dims, channels, out, 3, stride=2, padding=1, norm=norm))
            channels = out
        self.features = Blocks(*blocks)
        self.adversarial_head = conv(spatial_dims, channels, num_classes if real_fake == "per-class" else 1, 1,
                                     bias=False)
        self.class_head = conv(spatial_dims, channels, num_classes, 1, bias=False)
        if spectral_norm:  # every convolution 1-Lipschitz: a smoother judge, harder to fool with texture
            for module in list(self.modules()):
                if isinstance(module, nn.modules.conv._ConvNd):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, image: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.centred:  # blind to each image's overall brightness, so a translation gains nothing by shifting it
            image = image - image.mean(dim=tuple(range(2, image.ndim)), keepdim=True)
        features = self.features(image)
        judges = self.adversarial_head(features).flatten(2).mean(2)  # (B, 1) or (B, K)
        judge = classes if judges.shape[1] > 1 else torch.zeros_like(classes)
        return (judges.gather(1, judge[:, None])[:, 0],
                self.class_head(features).flatten(2).mean(2))


REAL_FAKE_JUDGES = ("shared", "per-class")


class ContentDiscriminator(nn.Module):
    """z_c → class logits. The content encoder is trained to make these uninformative.

    ``reads="pooled"`` (the paper's) averages its features over space before the classifier, so
    it sees what z_c holds anywhere, not where; ``"whole"`` classifies the whole feature map
    (a linear layer over every position), as a probe on the flattened code does."""

    def __init__(self, spatial_dims: int, content_shape: tuple[int, ...], channels: int,
                 num_classes: int, layers: int = 3, norm: bool = True, reads: str = "pooled"):
        super().__init__()
        if reads not in CONTENT_DISCRIMINATOR_READS:
            raise UserError(f"the content discriminator reads one of {CONTENT_DISCRIMINATOR_READS}, got {reads!r}")
        # Stop halving at side 2: InstanceNorm needs more than one element per channel.
        halvings = _halvings(content_shape, smallest=4, most=layers)
        blocks = [ConvNormAct(spatial_dims, channels, channels, 3, stride=2, padding=1, norm=norm)
                  for _ in range(halvings)]
        blocks.append(ConvNormAct(spatial_dims, channels, channels, 3, padding=1))
        self.features = Blocks(*blocks)
        side = content_shape
        for _ in range(halvings):
            side = tuple((s + 1) // 2 for s in side)
        self.reads = reads
        self.classifier = nn.Linear(channels * (math.prod(side) if reads == "whole" else 1), num_classes)

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        features = self.features(content)
        return self.classifier(features.flatten(1) if self.reads == "whole" else features.flatten(2).mean(2))


CONTENT_DISCRIMINATOR_READS = ("pooled", "whole")


class DomainDiscriminators(nn.Module):
    """The two image discriminators of the paper's code: one judges translations made with
    encoded attributes, the other translations made with randomly sampled attributes."""

    def __init__(self, spatial_dims: int, image_shape, num_classes: int, in_channels: int, width: int,
                 spectral_norm: bool = False, real_fake: str = "shared", centred: bool = False):
        super().__init__()
        self.encoded, self.random = (
            DomainDiscriminator(spatial_dims, image_shape, num_classes, in_channels, width,
                                spectral_norm=spectral_norm, real_fake=real_fake, centred=centred)
            for _ in range(2))

    def forward(self, real: torch.Tensor, labels: torch.Tensor, translated: torch.Tensor,
                randomly_translated: torch.Tensor, translated_labels: torch.Tensor):
        """(adversarial, class) logits on [real; fake] for each discriminator, in one call each;
        real images are judged as their own class, translations as their target class."""
        n, classes = len(real), torch.cat([labels, translated_labels])
        encoded_adv, encoded_cls = self.encoded(torch.cat([real, translated]), classes)
        random_adv, random_cls = self.random(torch.cat([real, randomly_translated]), classes)
        return ((encoded_adv[:n], encoded_cls[:n]), encoded_adv[n:],
                (random_adv[:n], random_cls[:n]), random_adv[n:])

"""The networks of the paper's baselines, one code path for 2D and 3D.

- ResNetClassifier: a stem and 4 down-sampling ResNet blocks + a linear layer, the plain
  classifier the post-hoc saliency methods explain.
- AttributeCNN: ICAM's attribute-encoder architecture with a linear head: the baseline CNN
  regressor of ICAM-reg, and the independent classifier that judges translations.
- UNetMapGenerator and WGANCritic: VA-GAN's map generator M(x) (U-Net 16/32/64/128 channels,
  batch norm + ReLU) and its critic (convolutions 16…256, no normalisation).
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import torch
from torch import nn

from ..errors import UserError
from ..nets.blocks import conv as reflect_conv
from ..nets.blocks import layer_type
from ..nets.encoders import AttributeEncoder

# Zero padding, as these networks are usually built (and it works down to 1-voxel maps).
conv = partial(reflect_conv, padding_mode="zeros")


def _batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    return layer_type("BatchNorm", spatial_dims)(channels)


class ResidualDown(nn.Module):
    """3×3 conv (stride 2) → BN → ReLU → 3×3 conv → BN, plus a strided 1×1 shortcut, then ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            conv(spatial_dims, in_channels, out_channels, 3, stride=2, padding=1, bias=False),
            _batch_norm(spatial_dims, out_channels), nn.ReLU(),
            conv(spatial_dims, out_channels, out_channels, 3, padding=1, bias=False),
            _batch_norm(spatial_dims, out_channels))
        self.shortcut = nn.Sequential(conv(spatial_dims, in_channels, out_channels, 1, stride=2, bias=False),
                                      _batch_norm(spatial_dims, out_channels))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class ResNetClassifier(nn.Module):
    def __init__(self, spatial_dims: int, num_classes: int, in_channels: int = 1, width: int = 16):
        super().__init__()
        channels = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.stem = nn.Sequential(conv(spatial_dims, in_channels, width, 3, padding=1, bias=False),
                                  _batch_norm(spatial_dims, width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualDown(spatial_dims, a, b) for a, b in itertools.pairwise(channels)])
        self.pool = layer_type("AdaptiveAvgPool", spatial_dims)(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    @property
    def last_block(self) -> nn.Module:
        """Where Grad-CAM reads its activations and gradients."""
        return self.blocks[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class AttributeCNN(nn.Module):
    """ICAM's attribute encoder (its mu head) followed by one linear layer."""

    def __init__(self, spatial_dims: int, latent_size: int, outputs: int, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.encoder = AttributeEncoder(spatial_dims, in_channels, width)
        self.head = nn.Linear(latent_size, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[0])


def _conv_bn_relu(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv(spatial_dims, in_channels, out_channels, 3, padding=1, bias=False),
                         _batch_norm(spatial_dims, out_channels), nn.ReLU())


class UNetMapGenerator(nn.Module):
    """VA-GAN's M(x): encoder [16,16] ↓ [32,32] ↓ [64,64] ↓ [128,128]; decoder: a transposed
    conv to 16 channels, concatenation with the skip, then [64,64], [32,32], [16]; a final 3×3
    conv to one channel with no activation (the additive map)."""

    def __init__(self, spatial_dims: int, in_channels: int = 1, width: int = 16):
        super().__init__()
        d, w = spatial_dims, width
        self.encoder = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(d, in_channels, w), _conv_bn_relu(d, w, w)),
            nn.Sequential(_conv_bn_relu(d, w, 2 * w), _conv_bn_relu(d, 2 * w, 2 * w)),
            nn.Sequential(_conv_bn_relu(d, 2 * w, 4 * w), _conv_bn_relu(d, 4 * w, 4 * w)),
            nn.Sequential(_conv_bn_relu(d, 4 * w, 8 * w), _conv_bn_relu(d, 8 * w, 8 * w))])
        self.pool = layer_type("MaxPool", d)(2)
        up = layer_type("ConvTranspose", d)
        self.up = nn.ModuleList([nn.Sequential(up(c, w, 4, stride=2, padding=1, bias=False), _batch_norm(d, w),
                                               nn.ReLU()) for c in (8 * w, 4 * w, 2 * w)])
        self.decoder = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(d, w + 4 * w, 4 * w), _conv_bn_relu(d, 4 * w, 4 * w)),
            nn.Sequential(_conv_bn_relu(d, w + 2 * w, 2 * w), _conv_bn_relu(d, 2 * w, 2 * w)),
            _conv_bn_relu(d, w + w, w)])
        self.out = conv(d, w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, stage in zip(self.up, self.decoder):
            x = stage(torch.cat([up(x), skips.pop()], 1))
        return self.out(x)


class WGANCritic(nn.Module):
    """VA-GAN's critic: conv16 ↓ conv32 ↓ conv64×2 ↓ conv128×2 ↓ conv256×2, conv256, 1×1 → 1,
    averaged over space; 3×3 convolutions with ReLU and no normalisation (fewer poolings for
    small inputs)."""

    def __init__(self, spatial_dims: int, image_shape: tuple[int, ...], in_channels: int = 1, width: int = 16):
        super().__init__()
        d, w = spatial_dims, width
        plan = [[w], [2 * w], [4 * w, 4 * w], [8 * w, 8 * w], [16 * w, 16 * w, 16 * w]]
        pools = min(4, max(0, (min(image_shape)).bit_length() - 3))  # keep at least 4 voxels a side
        layers, channels = [], in_channels
        for stage, widths in enumerate(plan):
            if 0 < stage <= pools:
                layers.append(layer_type("MaxPool", d)(2))
            for out in widths:
                layers += [conv(d, channels, out, 3, padding=1), nn.ReLU()]
                channels = out
        layers.append(conv(d, channels, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1).mean(1)


def build_network(hparams: dict) -> torch.nn.Module:
    """A baseline's network from the hyperparameters stored in its checkpoint."""
    method, d, width = hparams["method"], len(hparams["image_shape"]), hparams["width"]
    if method == "resnet":
        return ResNetClassifier(d, hparams["num_classes"], hparams["in_channels"], width)
    if method in ("cnn-regressor", "cnn-classifier"):
        latent = math.prod(s // 16 for s in hparams["image_shape"])
        outputs = 1 if method == "cnn-regressor" else hparams["num_classes"]
        return AttributeCNN(d, latent, outputs, hparams["in_channels"], width)
    if method == "vagan":
        return UNetMapGenerator(d, hparams["in_channels"], width)
    raise UserError(f"unknown baseline method {method!r}")

"""Dimension-agnostic building blocks shared by every ICAM network.

Each block takes ``spatial_dims`` (2 or 3) and picks the matching PyTorch layer, so the
2D and 3D models are the same code. Padding is reflective, as in the authors' networks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError


def layer_type(name: str, spatial_dims: int) -> type[nn.Module]:
    """``layer_type("Conv", 3)`` → ``nn.Conv3d``; also for InstanceNorm, AvgPool, ConvTranspose."""
    if spatial_dims not in (2, 3):
        raise UserError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return getattr(nn, f"{name}{spatial_dims}d")


class _PaddingInItsOwnDtype:
    """A convolution whose reflective padding keeps the activations' dtype under autocast. CPU
    autocast runs reflection padding in float32, so each padded bf16 convolution cost two
    extra copies of its input (up to float32, back down to bf16) and a padding pass at twice
    the bytes, in forward and backward. Padding copies values, so the result is the same."""

    # what the torch convolution it is mixed into holds
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    _reversed_padding_repeated_twice: list[int]
    unpadded: Callable[..., torch.Tensor]

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if self.padding_mode == "zeros":
            return super()._conv_forward(input, weight, bias)  # type: ignore[misc]  # the torch class's own
        with torch.autocast(input.device.type, enabled=False):
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return self.unpadded(padded, weight, bias, self.stride, 0, self.dilation, self.groups)


class Conv2d(_PaddingInItsOwnDtype, nn.Conv2d):
    unpadded = staticmethod(F.conv2d)


class Conv3d(_PaddingInItsOwnDtype, nn.Conv3d):
    unpadded = staticmethod(F.conv3d)


def conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
         stride: int = 1, padding: int = 0, bias: bool = True,
         padding_mode: Literal["reflect", "zeros"] = "reflect") -> Conv2d | Conv3d:
    layer = Conv2d if spatial_dims == 2 else Conv3d
    return layer(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                 padding_mode=padding_mode if padding else "zeros", bias=bias)


def instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    return layer_type("InstanceNorm", spatial_dims)(channels, affine=False)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at each voxel, with a per-channel affine. Unlike instance or
    layer norm, whose statistics span the whole image, it couples no two voxels: a change the
    attribute makes in one place stays there instead of shifting every voxel's features."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean) * torch.rsqrt(variance + self.eps) * self.weight.view(shape) + self.bias.view(shape)


GENERATOR_NORMS = ("instance", "channel")


def generator_norm(kind: str, spatial_dims: int, channels: int, image_wide: nn.Module) -> nn.Module:
    """``instance``: the paper's (``image_wide``, statistics over the whole image); ``channel``:
    ChannelNorm, statistics at each voxel."""
    if kind not in GENERATOR_NORMS:
        raise UserError(f"generator norm must be one of {GENERATOR_NORMS}, got {kind!r}")
    return image_wide if kind == "instance" else ChannelNorm(channels)


class Checkpointable(nn.Module):
    """A network part that can run as one activation-checkpointing segment: only its inputs are
    kept for backward, and its forward runs again there (less memory, about one more forward
    pass). Full-size 3D volumes need it for batches beyond a few images."""

    checkpointing = False

    def segment(self, forward, *inputs: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(forward, *inputs, use_reentrant=False)
        return forward(*inputs)


class Blocks(nn.Sequential, Checkpointable):
    """A chain of blocks that checkpoints as one segment. Parameter names are nn.Sequential's,
    so checkpoints load either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(super().forward, x)


def outermost(module: nn.Module, kinds) -> list[nn.Module]:
    """The parts of ``module`` of the given kinds that lie inside no other such part."""
    parts = [m for m in module.modules() if isinstance(m, kinds)]
    inner = {id(d) for m in parts for d in m.modules() if d is not m}
    return [m for m in parts if id(m) not in inner]


def set_activation_checkpointing(module: nn.Module, enabled: bool) -> None:
    """Checkpoint the outermost checkpointable parts of ``module`` (a part inside another would
    only be recomputed twice)."""
    chosen = {id(m) for m in outermost(module, Checkpointable)}
    for m in module.modules():
        if isinstance(m, Checkpointable):
            m.checkpointing = enabled and id(m) in chosen


class ConvNormAct(nn.Sequential):
    """Conv → optional InstanceNorm → LeakyReLU (slope 0 gives ReLU)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, norm: bool = False, negative_slope: float = 0.01):
        layers: list[nn.Module] = [conv(spatial_dims, in_channels, out_channels, kernel_size, stride, padding)]
        if norm:
            layers.append(instance_norm(spatial_dims, out_channels))
        layers.append(nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU())
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3×3 convs with a norm (InstanceNorm; ``norm="channel"``: ChannelNorm) and a ReLU
    between them, plus the input.

    With one input channel the skip connection broadcasts it over all output channels
    (the generator's attribute stem relies on this, as the authors' network does); from any
    other number of channels to another, the skip is a 1×1 convolution.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int | None = None, norm: str = "instance"):
        super().__init__()
        out_channels = out_channels or in_channels
        self.body = nn.Sequential(
            conv(spatial_dims, in_channels, out_channels, 3, padding=1),
            generator_norm(norm, spatial_dims, out_channels, instance_norm(spatial_dims, out_channels)),
            nn.ReLU(),
            conv(spatial_dims, out_channels, out_channels, 3, padding=1),
            generator_norm(norm, spatial_dims, out_channels, instance_norm(spatial_dims, out_channels)),
        )
        self.shortcut = (nn.Identity() if in_channels in (1, out_channels)
                         else conv(spatial_dims, in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class AttributeModulation(nn.Module):
    """Feature-wise modulation by the attribute map (SPADE-style): features × (1 + γ) + β, with γ
    and β convolved from the attribute map brought (bilinear) to the features' size. At every
    scale of the decoder it lets the attribute change fine structure, not only what the S/4
    features carry. It starts as the identity (γ = β = 0)."""

    def __init__(self, spatial_dims: int, attribute_channels: int, features: int, hidden: int):
        super().__init__()
        self.shared = nn.Sequential(conv(spatial_dims, attribute_channels, hidden, 3, padding=1), nn.ReLU())
        self.scale_and_shift = conv(spatial_dims, hidden, 2 * features, 3, padding=1)
        for parameter in self.scale_and_shift.parameters():
            nn.init.zeros_(parameter)

    def forward(self, features: torch.Tensor, attribute_map: torch.Tensor) -> torch.Tensor:
        mode = "bilinear" if features.dim() == 4 else "trilinear"
        attribute_map = F.interpolate(attribute_map, size=features.shape[2:], mode=mode, align_corners=False)
        scale, shift = self.scale_and_shift(self.shared(attribute_map)).chunk(2, dim=1)
        return features * (1 + scale) + shift


class StyleModulation(nn.Module):
    """Feature-wise modulation by a style code (FiLM; MUNIT and StarGAN v2 inject style so):
    features × (1 + γ) + β with one γ and β per channel, the same at every voxel, so where the
    features change is left to the features themselves. It starts as the identity."""

    def __init__(self, style_size: int, features: int):
        super().__init__()
        self.scale_and_shift = nn.Linear(style_size, 2 * features)
        nn.init.zeros_(self.scale_and_shift.weight)
        nn.init.zeros_(self.scale_and_shift.bias)

    def forward(self, features: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        per_channel = self.scale_and_shift(style).view(*style.shape[:1], -1, *[1] * (features.dim() - 2))
        scale, shift = per_channel.to(features.dtype).chunk(2, dim=1)
        return features * (1 + scale) + shift


class DownResBlock(nn.Module):
    """Residual down-sampling block of the attribute encoder (BicycleGAN's encoder block).

    Main path: LeakyReLU(0.2) → 3×3 conv → LeakyReLU(0.2) → 3×3 conv → 2× average pool;
    shortcut: 2× average pool → 1×1 conv. No normalisation. ``downsample=False`` leaves out
    both pools (the same block at full resolution).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, downsample: bool = True):
        super().__init__()
        pool = layer_type("AvgPool", spatial_dims)(2) if downsample else nn.Identity()
        self.main = nn.Sequential(
            nn.LeakyReLU(0.2),
            conv(spatial_dims, in_channels, in_channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            conv(spatial_dims, in_channels, out_channels, 3, padding=1),
            pool,
        )
        self.shortcut = nn.Sequential(pool, conv(spatial_dims, in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


UPSAMPLING = ("transposed", "transposed-avgpool", "resize")


class UpBlock(nn.Module):
    """×2 up-sampling → LayerNorm over (C, space) (``norm="channel"``: over C at each voxel) → LeakyReLU.

    ``resize``: nearest-neighbour ×2 then a 3×3 conv, which treats every output voxel alike
    (Odena et al. 2016). ``transposed``: a transposed conv (k4, s2, p1), whose kernel overlaps
    its outputs unevenly: a checkerboard that a residual map, the difference of two decodings,
    shows. ``transposed-avgpool`` (the authors' block): the same conv with output padding
    (2S + 1) then a 2×2 average pool of stride 1 (back to 2S), which smooths it.
    GroupNorm with one group is exactly a per-sample LayerNorm with a per-channel affine.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, mode: str = "transposed",
                 norm: str = "instance"):
        super().__init__()
        if mode not in UPSAMPLING:
            raise UserError(f"upsampling must be one of {UPSAMPLING}, got {mode!r}")
        smooth = mode == "transposed-avgpool"
        if mode == "resize":
            layers = [nn.Upsample(scale_factor=2, mode="nearest"),
                      layer_type("Conv", spatial_dims)(in_channels, out_channels, 3, padding=1, bias=False)]
        else:
            layers = [layer_type("ConvTranspose", spatial_dims)(in_channels, out_channels, 4, stride=2, padding=1,
                                                                output_padding=int(smooth), bias=False)]
        if smooth:
            layers.append(layer_type("AvgPool", spatial_dims)(2, stride=1))
        self.block = nn.Sequential(*layers,
                                   generator_norm(norm, spatial_dims, out_channels, nn.GroupNorm(1, out_channels)),
                                   nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def compile_networks(networks: list[nn.Module], how: str, mode: str = "default") -> None:
    """torch.compile ``networks`` whole (``how="networks"``) or region by region (``"regional"``:
    each outermost repeated block, so one compiled graph serves every block of its kind and
    compile time does not grow with depth or volume size). CUDA graphs (``reduce-overhead``)
    need a GPU: elsewhere the mode falls back to default, with a warning saying so."""
    if how == "off":
        return
    if mode == "reduce-overhead" and not torch.cuda.is_available():
        warnings.warn("runtime.compile_mode=reduce-overhead captures CUDA graphs, and no GPU is in use: "
                      "compiling without them (mode default)", stacklevel=2)
        mode = "default"
    for network in networks:
        if how == "networks":
            network.compile(mode=mode)
            continue
        for region in outermost(network, REPEATED_BLOCKS):
            region.compile(mode=mode, dynamic=True)  # one graph per kind, whatever its shape


class GaussianNoise(nn.Module):
    """Adds N(0, sd²) noise in training mode only, so evaluation is deterministic."""

    def __init__(self, sd: float = 1.0):
        super().__init__()
        self.sd = sd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sd * torch.randn_like(x) if self.training and self.sd else x


# the blocks every network repeats: regional compilation compiles each kind once
REPEATED_BLOCKS = (ConvNormAct, ResBlock, DownResBlock, UpBlock)

INITS = ("kaiming", "normal")


def init_weights(module: nn.Module, scheme: str = "kaiming") -> None:
    """``kaiming``: PyTorch's default (scaled to each layer's fan-in). ``normal``: N(0, 0.02)
    for every (transposed) convolution's weights, as in the authors' code; it shrinks the
    signal through every layer, and on brain images the attribute encoder then learns
    nothing in the first thousand steps (measured), so it is not the default."""
    if scheme not in INITS:
        raise UserError(f"init must be one of {INITS}, got {scheme!r}")
    if scheme == "normal":
        for m in module.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.normal_(m.weight, 0.0, 0.02)

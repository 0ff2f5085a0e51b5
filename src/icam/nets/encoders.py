"""The two encoders: content (class-irrelevant, spatial, wide) and attribute (class-relevant).

Shapes for an input of side S (every side must divide by 16), base width w:
- content: w → 2w → 4w channels, S → S/2 → S/4; four residual blocks; z_c is 4w × S/4 (or
  ``channels`` × S/4 through a 1×1 convolution: a bottleneck). ``stride`` 2 keeps S/2: the
  second widening convolution does not halve, so z_c holds finer structure for G to keep.
- attribute: w → 2w → 3w channels, S/2 → S/4 → S/8; two heads give mu and logvar, each
  1 × S/16 (8×8 for 128², 8×10×8 for 128×160×128; more channels if asked), returned
  flattened (S/8 with stride 8).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .blocks import Blocks, ConvNormAct, DownResBlock, GaussianNoise, ResBlock, conv

CONTENT_STRIDES = (2, 4)


class ContentEncoder(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int = 1, width: int = 16, res_blocks: int = 4,
                 noise: float = 1.0, channels: int | None = None, stride: int = 4):
        super().__init__()
        if stride not in CONTENT_STRIDES:
            raise UserError(f"the content code's stride must be one of {CONTENT_STRIDES}, got {stride}")
        self.out_channels = channels or 4 * width
        # fewer channels than the trunk's: a bottleneck that leaves z_c less room for the class
        bottleneck = [conv(spatial_dims, 4 * width, self.out_channels, 1)] if self.out_channels != 4 * width else []
        self.layers = Blocks(
            ConvNormAct(spatial_dims, in_channels, width, 3, padding=1),
            ConvNormAct(spatial_dims, width, 2 * width, 3, stride=2, padding=1, norm=True, negative_slope=0),
            ConvNormAct(spatial_dims, 2 * width, 4 * width, 3, stride=stride // 2, padding=1, norm=True,
                        negative_slope=0),
            *[ResBlock(spatial_dims, 4 * width) for _ in range(res_blocks)],
            *bottleneck,
            # Noise on z_c during training keeps G from reading fine detail off the content
            # code alone, so the attribute has to carry what differs between classes.
            GaussianNoise(noise),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AttributeEncoder(nn.Module):
    """``stride`` 16 (the paper) or 8: the heads then keep the trunk's resolution, for an
    attribute latent of twice the side (an 8×8 latent at 64², as the paper's at 128²).
    ``channels``: of the attribute map (the paper's 1)."""

    def __init__(self, spatial_dims: int, in_channels: int = 1, width: int = 16, stride: int = 16,
                 channels: int = 1):
        super().__init__()
        if stride not in (8, 16):
            raise UserError(f"the attribute latent's stride must be 8 or 16, got {stride}")
        self.trunk = Blocks(
            conv(spatial_dims, in_channels, width, 4, stride=2, padding=1),
            DownResBlock(spatial_dims, width, 2 * width),
            DownResBlock(spatial_dims, 2 * width, 3 * width),
        )
        self.mu_head = DownResBlock(spatial_dims, 3 * width, channels, downsample=stride == 16)
        self.logvar_head = DownResBlock(spatial_dims, 3 * width, channels, downsample=stride == 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.mu_head(features).flatten(1), self.logvar_head(features).flatten(1)

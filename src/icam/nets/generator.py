"""The generator G(z_c, z_a): content latent plus attribute latent back to an image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Checkpointable, InstanceNormResBlock, UpBlock, conv


class Generator(Checkpointable):
    """z_a (1 × S/16) is up-sampled ×4 (nearest) to z_c's size, lifted to ``width`` channels by a
    residual block, concatenated with z_c (4w channels), refined by three residual blocks at 5w,
    and up-sampled twice (5w → 5w/2 → 5w/4) to a tanh image.
    """

    def __init__(self, spatial_dims: int, content_channels: int, out_channels: int = 1,
                 width: int = 16, res_blocks: int = 3, upsampling: str = "transposed"):
        super().__init__()
        mixed = content_channels + width
        self.attribute_stem = InstanceNormResBlock(spatial_dims, 1, width)
        self.body = nn.Sequential(*[InstanceNormResBlock(spatial_dims, mixed) for _ in range(res_blocks)])
        self.upsample = nn.Sequential(
            UpBlock(spatial_dims, mixed, mixed // 2, upsampling),
            UpBlock(spatial_dims, mixed // 2, mixed // 4, upsampling),
        )
        self.to_image = nn.Sequential(conv(spatial_dims, mixed // 4, out_channels, 1), nn.Tanh())

    def forward(self, content: torch.Tensor, attribute_map: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled() and len(content) > 1:
            # one segment per image (each is decoded on its own: no norm mixes images), so backward
            # recomputes one volume's full-resolution tail at a time, not the whole batch's (a
            # training step decodes three volumes per image at once)
            return torch.cat([self.segment(self._decode, c, a)
                              for c, a in zip(content.split(1), attribute_map.split(1))])
        # one checkpointing segment: the full-resolution tail holds most of G's activations
        return self.segment(self._decode, content, attribute_map)

    def _decode(self, content: torch.Tensor, attribute_map: torch.Tensor) -> torch.Tensor:
        attribute_map = F.interpolate(attribute_map, size=content.shape[2:], mode="nearest")
        mixed = torch.cat([self.attribute_stem(attribute_map), content], dim=1)
        return self.to_image(self.upsample(self.body(mixed)))

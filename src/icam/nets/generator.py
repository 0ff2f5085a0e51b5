"""The generator G(z_c, z_a): content latent plus attribute latent back to an image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .blocks import AttributeModulation, Checkpointable, ResBlock, UpBlock, conv

ATTRIBUTE_INJECTIONS = ("input", "every-scale")


class Generator(Checkpointable):
    """z_a (``attribute_channels`` × S/16) is up-sampled ×4 (nearest) to z_c's size, lifted to
    ``width`` channels by a residual block, concatenated with z_c (4w channels), refined by three
    residual blocks at 5w, and up-sampled twice (5w → 5w/2 → 5w/4) to a tanh image.
    ``attribute_injection="every-scale"`` also modulates the output of each up-sampling block by
    the attribute map (``AttributeModulation``), so the attribute reaches S/2 and S directly.
    ``norm``: ``instance`` (the paper's InstanceNorm and LayerNorm, statistics over the image) or
    ``channel`` (``ChannelNorm``, statistics at each voxel, so a local change stays local).
    """

    def __init__(self, spatial_dims: int, content_channels: int, out_channels: int = 1,
                 width: int = 16, res_blocks: int = 3, upsampling: str = "transposed",
                 attribute_channels: int = 1, attribute_injection: str = "input", norm: str = "instance",
                 gate: bool = False):
        super().__init__()
        if attribute_injection not in ATTRIBUTE_INJECTIONS:
            raise UserError(f"attribute_injection must be one of {ATTRIBUTE_INJECTIONS}, got {attribute_injection!r}")
        mixed = content_channels + width
        self.attribute_stem = ResBlock(spatial_dims, attribute_channels, width, norm)
        self.body = nn.Sequential(*[ResBlock(spatial_dims, mixed, norm=norm) for _ in range(res_blocks)])
        self.upsample = nn.ModuleList([
            UpBlock(spatial_dims, mixed, mixed // 2, upsampling, norm),
            UpBlock(spatial_dims, mixed // 2, mixed // 4, upsampling, norm),
        ])
        self.modulations = nn.ModuleList(
            [AttributeModulation(spatial_dims, attribute_channels, channels, width) for channels in (mixed // 2,
                                                                                                      mixed // 4)]
            if attribute_injection == "every-scale" else [])
        self.to_image = nn.Sequential(conv(spatial_dims, mixed // 4, out_channels, 1), nn.Tanh())
        # a gated generator also says where its output applies (a sigmoid map, after the image channels)
        self.to_gate = nn.Sequential(conv(spatial_dims, mixed // 4, 1, 1), nn.Sigmoid()) if gate else None

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
        lifted = F.interpolate(attribute_map, size=content.shape[2:], mode="nearest")
        features = self.body(torch.cat([self.attribute_stem(lifted), content], dim=1))
        for i, up in enumerate(self.upsample):
            features = up(features)
            if self.modulations:
                features = self.modulations[i](features, attribute_map)
        image = self.to_image(features)
        return image if self.to_gate is None else torch.cat([image, self.to_gate(features)], 1)

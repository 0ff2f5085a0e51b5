"""The generator G(z_c, z_a): content latent plus attribute latent back to an image."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .blocks import AttributeModulation, Checkpointable, ResBlock, StyleModulation, UpBlock, conv

ATTRIBUTE_INJECTIONS = ("input", "every-scale", "style")


class Generator(Checkpointable):
    """z_a (``attribute_channels`` × S/16) is up-sampled (nearest) to z_c's size, lifted to
    ``width`` channels by a residual block, concatenated with z_c (4w channels), refined by three
    residual blocks at 5w, and up-sampled twice (5w → 5w/2 → 5w/4) to a tanh image; a content code
    at S/2 (``content_stride`` 2) is up-sampled once (5w → 5w/2).
    ``attribute_injection="every-scale"`` also modulates the output of each up-sampling block by
    the attribute map (``AttributeModulation``), so the attribute reaches S/2 and S directly.
    ``"style"`` reads the attribute as one vector, not as a map: an MLP turns it into a style
    code, broadcast over space in place of the lifted map and scaling and shifting the channels
    after every residual and up-sampling block (``StyleModulation``). A change of attribute then
    says what changes, and the scan's own features say where, not the attribute map's cells.
    ``norm``: ``instance`` (the paper's InstanceNorm and LayerNorm, statistics over the image) or
    ``channel`` (``ChannelNorm``, statistics at each voxel, so a local change stays local).
    """

    def __init__(self, spatial_dims: int, content_channels: int, out_channels: int = 1,
                 width: int = 16, res_blocks: int = 3, upsampling: str = "transposed",
                 attribute_channels: int = 1, attribute_injection: str = "input", norm: str = "instance",
                 gate: bool = False, attribute_size: int | None = None, content_stride: int = 4):
        super().__init__()
        if attribute_injection not in ATTRIBUTE_INJECTIONS:
            raise UserError(f"attribute_injection must be one of {ATTRIBUTE_INJECTIONS}, got {attribute_injection!r}")
        mixed = content_channels + width
        styled = attribute_injection == "style"
        style_size = 4 * width
        self.style: nn.Module | None = None  # without a style code the attribute map conditions each block
        if styled:
            if attribute_size is None:
                raise UserError("attribute_injection=style needs the attribute's size (attribute_size)")
            self.style = nn.Sequential(nn.Linear(attribute_size, style_size), nn.ReLU(),
                                       nn.Linear(style_size, style_size), nn.ReLU())
        self.attribute_stem = (nn.Linear(style_size, width) if styled
                               else ResBlock(spatial_dims, attribute_channels, width, norm))
        self.body = nn.Sequential(*[ResBlock(spatial_dims, mixed, norm=norm) for _ in range(res_blocks)])
        # the channels after the body and after each up-sampling block (halved by each)
        widths = [mixed // 2**i for i in range(int(math.log2(content_stride)) + 1)]
        self.upsample = nn.ModuleList([UpBlock(spatial_dims, c_in, c_out, upsampling, norm)
                                       for c_in, c_out in itertools.pairwise(widths)])
        # what modulates the output of each residual block, then of each up-sampling block
        self.body_modulations = nn.ModuleList([StyleModulation(style_size, mixed) for _ in range(res_blocks)]
                                              if styled else [])
        self.modulations = nn.ModuleList(
            [StyleModulation(style_size, channels) if styled
             else AttributeModulation(spatial_dims, attribute_channels, channels, width)
             for channels in widths[1:]]
            if attribute_injection != "input" else [])
        self.to_image = nn.Sequential(conv(spatial_dims, widths[-1], out_channels, 1), nn.Tanh())
        # a gated generator also says where its output applies (a sigmoid map, after the image channels)
        self.to_gate = nn.Sequential(conv(spatial_dims, widths[-1], 1, 1), nn.Sigmoid()) if gate else None

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
        if self.style is None:
            condition = attribute_map
            stem = self.attribute_stem(F.interpolate(attribute_map, size=content.shape[2:], mode="nearest"))
        else:
            condition = self.style(attribute_map.flatten(1))
            stem = self.attribute_stem(condition).view(*condition.shape[:1], -1, *[1] * (content.dim() - 2))
            stem = stem.to(content.dtype).expand(-1, -1, *content.shape[2:])
        features = torch.cat([stem, content], dim=1)
        for i, block in enumerate(self.body):
            features = block(features)
            if self.body_modulations:
                features = self.body_modulations[i](features, condition)
        for i, up in enumerate(self.upsample):
            features = up(features)
            if self.modulations:
                features = self.modulations[i](features, condition)
        image = self.to_image(features)
        return image if self.to_gate is None else torch.cat([image, self.to_gate(features)], 1)

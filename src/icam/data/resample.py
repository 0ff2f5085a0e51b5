"""Resampling between voxel grids described by their voxel → world (mm) affines."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resample_to_grid(volume: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray,
                     shape: tuple[int, ...], mode: str = "bilinear") -> torch.Tensor:
    """Sample a 3D ``volume`` (voxel → mm ``source_affine``) on the grid of ``shape`` voxels with
    voxel → mm ``target_affine``: (1, 1, *shape). A 2-sided shape is one plane (third index 0).
    Outside the volume: 0. ``mode``: bilinear (trilinear) or nearest."""
    full = tuple(shape) + (1,) * (3 - len(shape))
    index = np.indices(full, dtype=np.float64).reshape(3, -1)
    world = target_affine[:3, :3] @ index + target_affine[:3, 3:4]
    source = np.linalg.inv(source_affine)[:3] @ np.vstack([world, np.ones(world.shape[1])])
    size = np.array(volume.shape, dtype=np.float64).reshape(3, 1)
    # align_corners=True convention; a single-voxel axis (a 2D slice) is hit only within half a voxel
    # (grid_sample maps every coordinate of a one-voxel axis onto it, so the rest is zeroed here)
    normalised = np.where(size > 1, 2 * source / np.maximum(size - 1, 1) - 1, 0.0)
    off_plane = ((size == 1) & (np.abs(source) > 0.5)).any(0)
    # grid_sample wants (x, y, z) = (last, middle, first) volume axis, per output voxel in C order
    grid = torch.from_numpy(normalised[::-1].T.copy()).float().view(1, *full, 3)
    src = torch.from_numpy(np.ascontiguousarray(volume)).float()[None, None]
    out = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=True)
    out[torch.from_numpy(off_plane).view(1, 1, *full)] = 0
    return out.reshape(1, 1, *shape)

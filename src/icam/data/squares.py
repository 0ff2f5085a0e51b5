"""The squares benchmark (VA-GAN, ICAM): smooth noise, and for class 1 two bright boxes.

At side S (the original is 128): background N(0, 50²) smoothed with a Gaussian of σ = 2.5·S/128
and rescaled to sd 50. Class 1 adds ``effect`` (100) inside two boxes of side 20·S/128: one in
the centre and one displaced diagonally by ±S/3.5 (subtype A: +, subtype B: −) with a jitter
of ±5·S/128 per axis. Each image is then min–max scaled to [−1, 1]; the ground-truth map is
the boxes' mask. Works in 2D and 3D. Unlike the authors' split, every split is generated
with both classes and both subtypes in equal numbers.
"""

from __future__ import annotations

import math

import torch

from .cohort import InMemoryCohort


def smoothing_matrix(size: int, sigma: float) -> torch.Tensor:
    """(size, size) matrix applying a 1D Gaussian of ``sigma`` with reflect boundaries."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    source = torch.arange(size).view(-1, 1) + taps.view(1, -1)
    source = source.abs()  # reflect at 0: -1 → 1
    source = torch.where(source >= size, 2 * (size - 1) - source, source)  # reflect at the end
    matrix = torch.zeros(size, size)
    matrix.scatter_add_(1, source, kernel.expand(size, -1).contiguous())
    return matrix


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, 1, *spatial): one matrix product per axis."""
    for axis in range(2, x.dim()):
        matrix = smoothing_matrix(x.shape[axis], sigma)
        x = torch.movedim(torch.movedim(x, axis, -1) @ matrix.T, -1, axis)
    return x


def box_masks(lower: torch.Tensor, side: int, size: int, dims: int) -> torch.Tensor:
    """Masks (N, 1, *spatial) of cubes with corners ``lower`` (N, dims) and side ``side``:
    the outer product of one 1D indicator per axis."""
    coords = torch.arange(size)
    along = (coords >= lower.unsqueeze(-1)) & (coords < lower.unsqueeze(-1) + side)  # (N, dims, size)
    mask = along[:, 0].float()
    for axis in range(1, dims):
        mask = mask.unsqueeze(-1) * along[:, axis].float().view(len(lower), *[1] * axis, size)
    return mask.unsqueeze(1)


def make_squares(n: int, image_size: int = 64, spatial_dims: int = 2, effect: float = 100.0,
                 continuous_target: bool = False, class_thresholds: list[float] | None = None,
                 seed: int = 0) -> InMemoryCohort:
    """``n`` images, classes alternating (0, 1, 0, …) and class-1 subtypes alternating (A, B, …).

    With ``continuous_target`` every image gets a target t ~ U(0, 1), carries boxes of
    intensity effect·t, and its class is the number of ``class_thresholds`` (default [0.5])
    that t reaches: the ICAM-reg set-up of a continuous score thresholded into classes.
    """
    g = torch.Generator().manual_seed(seed)
    size, dims, scale = image_size, spatial_dims, image_size / 128
    shape = (n, 1) + (size,) * dims
    # In-place steps throughout: at 128² the cost is memory traffic, not arithmetic.
    background = gaussian_smooth(torch.randn(shape, generator=g), 2.5 * scale)
    per_image = (n,) + (1,) * (dims + 1)
    background.mul_((50 / background.flatten(1).std(1)).view(per_image))

    side = max(2, round(20 * scale))
    jitter = max(1, round(5 * scale))
    centre = size // 2 - side // 2
    offset = int(size / 3.5 + 0.5)
    subtype_sign = torch.where(torch.arange(n) // 2 % 2 == 0, 1, -1)  # A, B alternate within class 1
    moved = (centre + subtype_sign.view(-1, 1) * offset
             + torch.randint(-jitter, jitter, (n, dims), generator=g))
    masks = torch.maximum(box_masks(torch.full((n, dims), centre), side, size, dims),
                          box_masks(moved, side, size, dims))

    if continuous_target:
        targets = torch.rand(n, generator=g)
        thresholds = torch.tensor(class_thresholds if class_thresholds is not None else [0.5])
        labels = torch.bucketize(targets, thresholds, right=True)
        strength = targets
    else:
        targets = None
        labels = torch.arange(n) % 2
        strength = labels.float()
    images = background.addcmul_(masks, (effect * strength).view(per_image))

    low, high = torch.aminmax(images.flatten(1), dim=1)
    images.sub_(low.view(per_image)).mul_((2 / (high - low)).view(per_image)).sub_(1)
    gt_maps = masks.mul_((strength > 0).float().view(per_image))
    return InMemoryCohort(images, labels, targets, gt_maps=gt_maps)

"""Real brain anatomy offline: the MNI152 2009a template that the nilearn wheel ships.

From the 1 mm T1 template and its brain, grey- and white-matter maps we derive what the
synthetic cohort needs (once per process):
- the lateral ventricles: the largest dark CSF component near the centre;
- cortical regions: the grey-matter ribbon near the brain surface, split into parcels by
  k-means on voxel positions (no atlas download);
- the deep grey-matter nuclei (thalamus and basal ganglia), left and right;
- where focal lesions may sit: deep white matter.
:func:`atlas_on_grid` resamples all of it onto a target grid: a 3D box of ``shape`` voxels,
or a stack of parallel 2D slices (axial or coronal).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .resample import resample_to_grid

# Field of view around the brain's centre (mm, RAS): 1.2 mm voxels at 128×160×128,
# 1.5 mm pixels at 128×128 axial slices.
CENTRE_MM = (0.0, -17.0, 5.0)
FOV_3D_MM = (153.6, 192.0, 153.6)
FOV_2D_MM = (192.0, 192.0)
VENTRICLE_SLICE_MM = 15.0  # axial level through the bodies of the lateral ventricles
CORTICAL_REGIONS = 24
# A 2D grid's plane: the world (RAS) axes of its two sides, then the axis it is cut across.
PLANES = {"axial": (0, 1, 2), "coronal": (0, 2, 1)}


@dataclass
class Atlas:
    """Maps on a target grid, each (S, 1, *spatial): S = 1 for 3D, the slices for 2D."""

    t1: torch.Tensor  # intensity in [0, 1]
    brain: torch.Tensor  # brain mask (soft, from interpolation)
    gm: torch.Tensor
    wm: torch.Tensor
    ventricles: torch.Tensor
    deep_gm: torch.Tensor  # long: 0 elsewhere, 1 the left and 2 the right deep grey-matter nuclei
    regions: torch.Tensor  # long: 0 outside the cortex, 1..R cortical parcels
    lesion_zone: torch.Tensor  # deep white matter, where lesions may be placed
    affines: np.ndarray  # (S, 4, 4) voxel → mm (RAS) of each slice / the volume

    @property
    def num_regions(self) -> int:
        return CORTICAL_REGIONS


def _shipped(name: str):
    """One of the MNI152 2009a maps inside the nilearn wheel, read directly with nibabel
    (importing nilearn.datasets alone costs seconds)."""
    import importlib.resources

    import nibabel as nib

    templates = importlib.resources.files("nilearn.datasets") / "data"
    path = templates / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    image = nib.load(str(path))
    return image.get_fdata(dtype=np.float32), image.affine


@functools.lru_cache(maxsize=1)
def _template() -> dict:
    """Template maps as (array, affine) pairs: intensities at 1 mm, derived masks at 2 mm."""
    from scipy import ndimage

    (t1, affine), (gm, _), (wm, _) = (_shipped(name) for name in ("t1", "gm", "wm"))
    t1, gm, wm = (m / m.max() for m in (t1, gm, wm))  # stored as 0..255; nilearn rescales to [0, 1] too
    brain = (t1 > 0.2).astype(np.float32)  # nilearn's load_mni152_brain_mask threshold

    # Masks derived at 2 mm: eight times fewer voxels, and finer than any target grid needs.
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    affine2 = affine @ coarse
    t1_2, gm_2, wm_2, brain_2 = (m[::2, ::2, ::2] for m in (t1, gm, wm, brain))
    csf = brain_2 * np.clip(1 - gm_2 - wm_2, 0, 1)
    xyz = np.indices(t1_2.shape, dtype=np.float32).transpose(1, 2, 3, 0) @ affine2[:3, :3].T + affine2[:3, 3]
    near_centre = ((np.abs(xyz[..., 0]) < 30) & (xyz[..., 1] > -45) & (xyz[..., 1] < 30)
                   & (xyz[..., 2] > -5) & (xyz[..., 2] < 35))
    dark = t1_2 < np.percentile(t1_2[brain_2 > 0], 20)
    labels, n = ndimage.label((csf > 0.5) & near_centre & dark)
    sizes = ndimage.sum(np.ones_like(labels), labels, range(1, n + 1))
    ventricles = (labels == 1 + int(np.argmax(sizes))).astype(np.float32)

    depth = 2 * ndimage.distance_transform_edt(brain_2 > 0.5)  # mm from the brain's surface
    cortex = (gm_2 > 0.5) & (depth < 12)
    regions = np.zeros(t1_2.shape, dtype=np.int64)
    regions[cortex] = 1 + _kmeans_labels(xyz[cortex], CORTICAL_REGIONS)
    near_ventricles = 2 * ndimage.distance_transform_edt(ventricles == 0) <= 4
    lesion_zone = ((wm_2 > 0.9) & (depth > 15) & ~near_ventricles).astype(np.float32)
    deep_gm = _deep_grey_matter(gm_2 * (2 * ndimage.distance_transform_edt(ventricles == 0) > 6), xyz, depth)
    fine, coarse_maps = dict(t1=t1, brain=brain, gm=gm, wm=wm), dict(
        ventricles=ventricles, deep_gm=deep_gm, regions=regions, lesion_zone=lesion_zone)
    return {**{k: (v, affine) for k, v in fine.items()}, **{k: (v, affine2) for k, v in coarse_maps.items()}}


def _deep_grey_matter(gm: np.ndarray, xyz: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Thalamus and basal ganglia: grey matter (``gm``, here without what lies within 6 mm of the
    ventricles) more than 18 mm below the brain's surface inside a box around them (the insula and
    the medial cortex lie outside it); the largest component of each hemisphere, labelled 1
    (left) and 2 (right)."""
    from scipy import ndimage

    box = ((np.abs(xyz[..., 0]) > 4) & (np.abs(xyz[..., 0]) < 34) & (xyz[..., 1] > -38) & (xyz[..., 1] < 28)
           & (xyz[..., 2] > -12) & (xyz[..., 2] < 24))
    labels = np.zeros(gm.shape, dtype=np.int64)
    for side, hemisphere in ((1, xyz[..., 0] < 0), (2, xyz[..., 0] > 0)):
        components, n = ndimage.label((gm > 0.5) & (depth > 18) & box & hemisphere)
        sizes = ndimage.sum(np.ones_like(components), components, range(1, n + 1))
        labels[components == 1 + int(np.argmax(sizes))] = side
    return labels


def _kmeans_labels(points: np.ndarray, k: int, iterations: int = 20) -> np.ndarray:
    """Deterministic k-means on voxel positions (farthest-point start, Lloyd iterations)."""
    sample = points[:: max(1, len(points) // 20000)]
    chosen = [sample[0]]
    distance = np.full(len(sample), np.inf)
    for _ in range(k - 1):
        distance = np.minimum(distance, ((sample - chosen[-1]) ** 2).sum(1))
        chosen.append(sample[int(np.argmax(distance))])
    centres = np.stack(chosen)
    for _ in range(iterations):
        assign = ((sample[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([sample[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    return np.concatenate([((chunk[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
                           for chunk in np.array_split(points, max(1, len(points) // 100000))])


def grid_affine(shape: tuple[int, ...], fov_mm: tuple[float, ...], centre_mm=CENTRE_MM, level_mm: float | None = None,
                plane: str = "axial"):
    """Voxel → mm affine of a grid of ``shape`` covering ``fov_mm`` around ``centre_mm`` (RAS).
    For a 2D grid (two sides), the plane (``PLANES``) lies at ``level_mm`` along the axis it is
    cut across (axial: the height, default through the lateral ventricles)."""
    axes = PLANES[plane] if len(shape) == 2 else (0, 1, 2)
    spacing = [f / s for f, s in zip(fov_mm, shape)]
    spacing += [spacing[0]] * (3 - len(shape))  # a slice's thickness, for viewers
    sizes = list(shape) + [1] * (3 - len(shape))
    affine = np.eye(4)
    affine[:3, :3] = 0
    for column, (axis, step) in enumerate(zip(axes, spacing)):
        affine[axis, column] = step
    centre = np.array(centre_mm, dtype=np.float64)
    if len(shape) == 2:
        centre[axes[2]] = level_mm if level_mm is not None else VENTRICLE_SLICE_MM
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(sizes) - 1) / 2)
    return affine


@functools.lru_cache(maxsize=4)
def atlas_on_grid(shape: tuple[int, ...], slices_mm: tuple[float, ...] = (VENTRICLE_SLICE_MM,),
                  plane: str = "axial", fov_mm: tuple[float, ...] | None = None) -> Atlas:
    """The atlas on a 3D grid of ``shape`` (3 sides), or on 2D planes (``PLANES``) at ``slices_mm``
    (2 sides); ``fov_mm``: the grid's extent (default ``FOV_3D_MM`` / ``FOV_2D_MM``)."""
    template = _template()
    if len(shape) == 3:
        affines = [grid_affine(shape, fov_mm or FOV_3D_MM)]
    else:
        affines = [grid_affine(shape, fov_mm or FOV_2D_MM, level_mm=level, plane=plane) for level in slices_mm]

    def stack(name, mode="bilinear"):
        volume, source_affine = template[name]
        return torch.cat([resample_to_grid(volume, source_affine, a, shape, mode) for a in affines])

    return Atlas(t1=stack("t1"), brain=stack("brain"), gm=stack("gm"), wm=stack("wm"),
                 ventricles=stack("ventricles"), deep_gm=stack("deep_gm", "nearest").long(),
                 regions=stack("regions", "nearest").long(),
                 lesion_zone=(stack("lesion_zone") > 0.5).float(), affines=np.stack(affines))

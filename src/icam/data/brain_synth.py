"""`brain-synth`: a synthetic ageing cohort on real brain anatomy, with exact ground truth.

Each subject is the MNI152 template warped into an individual anatomy (a small affine and a
smooth random deformation), with a bias field, an intensity scale and noise. A latent
severity s ∈ [0, 1] drives three effects whose mix differs from subject to subject:
- ventricle enlargement: a local zoom of the tissue around the lateral ventricles;
- cortical atrophy: grey-matter intensity loss in a random subset of cortical parcels;
- focal white-matter lesions (bright or dark) at random deep-white-matter places.
Each effect is present in a subject with some probability and weighted at random, so two
subjects of the same age differ in *where* they changed. The exported target is an age,
45 + 40 s + N(0, 2²) years; the class is age ≥ 65 (young 0 / old 1), as in the paper's UK
Biobank set-up.

Every subject is rendered twice with the same anatomy, bias and noise: at its own severity
and at the other class's mean severity (0.75 for the young, 0.25 for the old). The
ground-truth map is the exact difference ``counterfactual − image``: non-zero only where an
effect acts. Intensities are scaled to [−1, 1] the same way for every subject.

All randomness of subject i comes from a generator seeded with (seed, i), so a subject is
the same whether it is rendered alone or in a batch, in 2D or on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .atlas import CORTICAL_REGIONS, Atlas, atlas_on_grid
from .squares import gaussian_smooth

AGE_AT_ZERO, AGE_SPAN, AGE_NOISE = 45.0, 40.0, 2.0
OLD_FROM_AGE = 65.0
COUNTERFACTUAL_SEVERITY = (0.75, 0.25)  # rendering of a young subject as old, of an old one as young
MAX_LESIONS = 6

GENERATOR_VERSION = 4  # part of every cache key: bump when rendering changes
INTENSITY_SCALE = 1.3  # rendered intensities [0, 1.3] → [−1, 1], the same for every subject

# Effect strengths at severity 1 and full weight.
VENTRICLE_ZOOM = 0.5  # tissue near the ventricles is sampled 50% closer to their centre
CORTICAL_LOSS = 0.8  # grey-matter intensity loss in an affected parcel
LESION_CONTRAST = 1.0  # in T1 intensity units (white matter ≈ 0.9)
LESION_RADIUS_MM = (2.0, 5.0)
LESION_EXTENT = 3.0  # lesions are truncated at 3 radii, so maps have compact support
# Differences between people that have nothing to do with age.
HEAD_SCALE, AXIS_SCALE, ROTATION_DEGREES, DEFORMATION_MM = 0.03, 0.02, 4.0, 2.0


@dataclass
class SubjectDraws:
    """The random make-up of a batch of rows (one row = one subject, or one slice of one)."""

    severity: torch.Tensor  # (B,)
    age: torch.Tensor  # (B,)
    slice: torch.Tensor  # (B,) which atlas plane (0 in 3D)
    linear: torch.Tensor  # (B, d, d) anatomy: scaling and rotation
    displacement_mm: torch.Tensor  # (B, d, *ctrl): smooth deformation, control points in mm
    ventricle_weight: torch.Tensor  # (B,) 0 when the subject has no ventricle effect
    cortex_weight: torch.Tensor  # (B,)
    region_weights: torch.Tensor  # (B, R + 1): per parcel, 0 for unaffected parcels and background
    lesion_weight: torch.Tensor  # (B,)
    lesion_centres: torch.Tensor  # (B, L, d) normalised atlas coordinates
    lesion_radius_mm: torch.Tensor  # (B, L)
    lesion_sign: torch.Tensor  # (B, L): +1 bright, −1 dark, 0 no lesion
    bias_log: torch.Tensor  # (B, 1, *ctrl): log of the bias field at control points
    intensity: torch.Tensor  # (B,)
    noise: torch.Tensor  # (B, 1, *spatial), unit variance

    @staticmethod
    def stack(rows: list["SubjectDraws"]) -> "SubjectDraws":
        return SubjectDraws(**{f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in fields(SubjectDraws)})


def subject_generator(seed: int, subject: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + subject) % 2**63)


def age_class(age: torch.Tensor) -> torch.Tensor:
    return (age >= OLD_FROM_AGE).long()


def _severity_and_age(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The first draws of every subject: its latent severity and its age."""
    severity = torch.rand(1, generator=g)
    return severity, (AGE_AT_ZERO + AGE_SPAN * severity + AGE_NOISE * torch.randn(1, generator=g)).clamp(40, 90)


def subject_ages(seed: int, subjects: list[int]) -> torch.Tensor:
    """Ages of subjects without rendering them (to stratify splits before rendering)."""
    return torch.cat([_severity_and_age(subject_generator(seed, i))[1] for i in subjects])


def draw_subject(atlas: Atlas, seed: int, subject: int, slices: list[int], noise_sd: float = 0.02) -> SubjectDraws:
    """The random make-up of one subject, for each of its atlas ``slices`` (one row each)."""
    g = subject_generator(seed, subject)
    d = atlas.t1.dim() - 2
    spatial = atlas.t1.shape[2:]

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(shape, generator=g)

    severity, age = _severity_and_age(g)
    # Which effects this subject shows, and how strongly (at least one).
    present = torch.rand(3, generator=g) < 0.7
    if not present.any():
        present[torch.randint(3, (1,), generator=g)] = True
    weights = present * uniform(0.5, 1.0, 3)
    # parcels the subject's planes cut (all of them in 3D), so a cortical effect is always visible
    visible = torch.unique(atlas.regions[slices])
    visible = visible[visible > 0] - 1
    affected = visible[torch.randperm(len(visible), generator=g)][: int(torch.randint(3, 9, (1,), generator=g))]
    region_weights = torch.zeros(1, CORTICAL_REGIONS + 1)
    region_weights[0, 1 + affected] = uniform(0.5, 1.0, len(affected))
    polarity = 1.0 if torch.rand(1, generator=g) < 0.5 else -1.0
    n_lesions = int(torch.randint(1, MAX_LESIONS + 1, (1,), generator=g))
    scale = uniform(1 - HEAD_SCALE, 1 + HEAD_SCALE, 1).item() * uniform(1 - AXIS_SCALE, 1 + AXIS_SCALE, d)
    angle = math.radians(uniform(-ROTATION_DEGREES, ROTATION_DEGREES, 1).item())
    intensity = uniform(0.9, 1.1, 1)

    rows = []
    for index in slices:
        linear = torch.diag(scale)
        rotation = torch.eye(d)
        rotation[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        zone = torch.nonzero(atlas.lesion_zone[index, 0].flatten()).flatten()
        picks = zone[torch.randint(len(zone), (MAX_LESIONS,), generator=g)] if len(zone) else torch.zeros(
            MAX_LESIONS, dtype=torch.long)
        centres = torch.stack(torch.unravel_index(picks, spatial), -1).float()
        centres = 2 * centres / (torch.tensor(spatial).float() - 1) - 1
        sign = torch.zeros(MAX_LESIONS)
        sign[:n_lesions] = polarity if len(zone) else 0.0
        rows.append(SubjectDraws(
            severity=severity, age=age, slice=torch.tensor([index]), linear=(rotation @ linear)[None],
            displacement_mm=DEFORMATION_MM * torch.randn(1, d, *[5] * d, generator=g),
            ventricle_weight=weights[:1], cortex_weight=weights[1:2], region_weights=region_weights,
            lesion_weight=weights[2:], lesion_centres=centres[None],
            lesion_radius_mm=uniform(*LESION_RADIUS_MM, 1, MAX_LESIONS), lesion_sign=sign[None],
            bias_log=0.1 * torch.randn(1, 1, *[3] * d, generator=g), intensity=intensity,
            noise=noise_sd * torch.randn(1, 1, *spatial, generator=g)))
    return SubjectDraws.stack(rows)


class Renderer:
    """Renders batches of subjects on one atlas grid (2D planes or a 3D volume)."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas
        self.spatial = tuple(atlas.t1.shape[2:])
        self.d = len(self.spatial)
        spacing = np.abs(np.diagonal(atlas.affines[0])[: self.d])
        self.mm_per_unit = torch.tensor([(n - 1) / 2 * s for n, s in zip(self.spatial, spacing)]).float()
        axes = [torch.linspace(-1, 1, n) for n in self.spatial]
        self.identity = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (*spatial, d), array-axis order
        # The zone the ventricle zoom acts on: the ventricles, smoothed (σ 5 mm) and cut at 2%.
        bump = gaussian_smooth(atlas.ventricles.clone(), float(5.0 / spacing.mean()))
        bump = bump / bump.flatten(1).amax(1).clamp(min=1e-6).view(-1, *[1] * (self.d + 1))
        self.ventricle_zone = torch.where(bump > 0.02, bump, 0.0)
        mass = atlas.ventricles.flatten(1).sum(1).clamp(min=1e-6)
        self.ventricle_centre = torch.einsum("sn,nd->sd", atlas.ventricles.flatten(1),
                                             self.identity.reshape(-1, self.d)) / mass[:, None]
        self.intensity_maps = torch.cat([atlas.t1, atlas.brain, atlas.gm, atlas.wm], 1)

    def _sample(self, maps: torch.Tensor, where: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Sample (B, C, *spatial) maps at normalised positions (B, *spatial, d) in array-axis order."""
        return F.grid_sample(maps, where.flip(-1), mode=mode, padding_mode="zeros", align_corners=True)

    def _upsample(self, control: torch.Tensor) -> torch.Tensor:
        return F.interpolate(control, size=self.spatial, mode="bicubic" if self.d == 2 else "trilinear",
                             align_corners=True)

    def anatomy(self, draws: SubjectDraws) -> torch.Tensor:
        """Where each output voxel samples the atlas before any disease effect: (B, *spatial, d)."""
        linear = torch.einsum("bij,...j->b...i", draws.linear, self.identity)
        displacement = self._upsample(draws.displacement_mm) / self.mm_per_unit.view(1, -1, *[1] * self.d)
        return linear + torch.movedim(displacement, 1, -1)

    def render(self, draws: SubjectDraws, severity: torch.Tensor, anatomy: torch.Tensor | None = None):
        """Images (B, 1, *spatial), unscaled (background 0), and brain masks, at ``severity`` (B,)."""
        b, s = len(severity), draws.slice
        expand = (b,) + (1,) * self.d
        position = self.anatomy(draws) if anatomy is None else anatomy
        zone = self._sample(self.ventricle_zone[s], position)  # (B, 1, *spatial)
        zoom = (VENTRICLE_ZOOM * severity * draws.ventricle_weight).view(*expand, 1)
        centre = self.ventricle_centre[s].view(b, *[1] * self.d, self.d)
        position = position - zoom * torch.movedim(zone, 1, -1) * (position - centre)

        t1, brain, gm, wm = self._sample(self.intensity_maps[s], position).unbind(1)
        regions = self._sample(self.atlas.regions[s].float(), position, mode="nearest").long().flatten(1)
        atrophy = torch.gather(draws.region_weights, 1, regions).view(b, *self.spatial)
        atrophy = atrophy * (CORTICAL_LOSS * severity * draws.cortex_weight).view(expand)
        tissue = t1 * (1 - atrophy * gm)

        offset_mm = (position.unsqueeze(1) - draws.lesion_centres.view(b, -1, *[1] * self.d, self.d)) * self.mm_per_unit
        distance2 = offset_mm.pow(2).sum(-1) / draws.lesion_radius_mm.view(b, -1, *[1] * self.d) ** 2
        blobs = torch.where(distance2 < LESION_EXTENT ** 2, torch.exp(-0.5 * distance2), 0.0)
        lesions = (blobs * draws.lesion_sign.view(b, -1, *[1] * self.d)).sum(1)
        tissue = tissue + (LESION_CONTRAST * severity * draws.lesion_weight).view(expand) * lesions * wm

        bias = torch.exp(self._upsample(draws.bias_log))[:, 0]
        image = tissue * brain * bias * draws.intensity.view(expand) + draws.noise[:, 0] * brain
        # No negative intensities (noise at the brain's edge); pointwise, so maps stay exact.
        return image.clamp(min=0).unsqueeze(1), (brain > 0).float().unsqueeze(1)

    def render_pair(self, draws: SubjectDraws):
        """(image, counterfactual, ground-truth map, mask), in [−1, 1].

        One fixed intensity scale for everyone: a per-subject scale (say, its maximum) would
        depend on its lesions and so tell the class through the overall brightness."""
        labels = age_class(draws.age)
        counter = torch.tensor(COUNTERFACTUAL_SEVERITY)[labels]
        anatomy = self.anatomy(draws)
        own, mask = self.render(draws, draws.severity, anatomy)
        other, _ = self.render(draws, counter, anatomy)
        own, other = ((x / INTENSITY_SCALE).clamp(max=1) * 2 - 1 for x in (own, other))
        return own, other, other - own, mask


def slice_positions_mm(slices_per_subject: int, spacing_mm: float = 4.0, centre_mm: float = 15.0) -> tuple:
    """Axial levels of a subject's 2D slices: centred on the lateral ventricles."""
    return tuple(centre_mm + spacing_mm * (k - (slices_per_subject - 1) / 2) for k in range(slices_per_subject))


@dataclass
class BrainSynthCohort:
    """Rendered rows (one per subject in 3D, one per slice in 2D) and their make-up."""

    images: torch.Tensor
    counterfactuals: torch.Tensor
    gt_maps: torch.Tensor
    masks: torch.Tensor
    ages: torch.Tensor
    labels: torch.Tensor
    subjects: torch.Tensor
    slice_mm: torch.Tensor  # axial level of each row (2D); NaN in 3D
    severity: torch.Tensor
    effect_weights: torch.Tensor  # (rows, 3): ventricles, cortex, lesions
    regions_affected: torch.Tensor
    lesions: torch.Tensor
    affines: np.ndarray  # (rows, 4, 4)


def render_subjects(shape: tuple[int, ...], subjects: list[int], seed: int = 0, slices_per_subject: int = 1,
                    voxels_per_chunk: int = 2**22) -> BrainSynthCohort:
    """Render ``subjects`` (their indices) on a 2D (two sides) or 3D (three sides) grid, in
    chunks of about ``voxels_per_chunk`` voxels (memory stays bounded in 3D)."""
    slices_mm = slice_positions_mm(slices_per_subject) if len(shape) == 2 else (float("nan"),)
    atlas = atlas_on_grid(tuple(shape), slices_mm if len(shape) == 2 else ())
    renderer = Renderer(atlas)
    planes = list(range(len(slices_mm)))
    outputs, metadata = [], []
    rows_per_subject = len(planes)
    step = max(1, voxels_per_chunk // (math.prod(shape) * rows_per_subject))
    for start in range(0, len(subjects), step):
        batch = subjects[start:start + step]
        draws = SubjectDraws.stack([draw_subject(atlas, seed, i, planes) for i in batch])
        outputs.append(renderer.render_pair(draws))
        metadata.append(draws)
    images, counterfactuals, gt_maps, masks = (torch.cat(parts) for parts in zip(*outputs))
    draws = SubjectDraws.stack(metadata)
    subject_ids = torch.tensor(subjects).repeat_interleave(rows_per_subject)
    return BrainSynthCohort(
        images=images, counterfactuals=counterfactuals, gt_maps=gt_maps, masks=masks,
        ages=draws.age, labels=age_class(draws.age), subjects=subject_ids,
        slice_mm=torch.tensor(slices_mm).repeat(len(subjects)).float(), severity=draws.severity,
        effect_weights=torch.stack([draws.ventricle_weight, draws.cortex_weight, draws.lesion_weight], 1),
        regions_affected=(draws.region_weights > 0).sum(1), lesions=(draws.lesion_sign != 0).sum(1),
        affines=atlas.affines[draws.slice.numpy()])

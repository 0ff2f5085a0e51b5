"""Synthetic cohorts on real brain anatomy, with exact ground truth: `brain-synth` and `brain-deep`.

Each subject is the MNI152 template warped into an individual anatomy (a small affine and a
smooth random deformation), with a bias field, an intensity scale and noise. A latent
severity s ∈ [0, 1] drives the effects of its cohort's :class:`Design`, whose mix differs
from subject to subject:
- `brain-synth` (axial slices; the target is an age, 45 + 40 s + N(0, 2²) years, class old
  when ≥ 65, as in the paper's UK Biobank set-up):
  - ventricle enlargement: a local zoom of the tissue around the lateral ventricles;
  - cortical atrophy: grey-matter intensity loss in a random subset of cortical parcels;
  - focal white-matter lesions (bright or dark) at random deep-white-matter places.
- `brain-deep` (coronal slices of other pixel size and shape; the target is a cognitive score,
  30 − 14 s + N(0, 1), class impaired when ≤ 23): changes away from the high-contrast edges
  of the ventricles and the cortex:
  - the deep grey-matter nuclei (thalamus, basal ganglia) shrinking, each side by its own amount;
  - focal white-matter lesions, as above;
  - a diffuse white-matter signal loss over a broad random region.
Each effect is present in a subject with some probability and weighted at random, so two
subjects of the same target differ in *where* they changed.

Every subject is rendered twice with the same anatomy, bias and noise: at its own severity
and at the other class's mean severity (0.75 for class 0, 0.25 for class 1). The
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

from ..errors import UserError
from .atlas import CORTICAL_REGIONS, Atlas, atlas_on_grid
from .squares import gaussian_smooth

COUNTERFACTUAL_SEVERITY = (0.75, 0.25)  # rendering of a class-0 subject as class 1, of a class-1 one as class 0
MAX_LESIONS = 6

GENERATOR_VERSION = 4  # part of every cache key: bump when rendering changes
INTENSITY_SCALE = 1.3  # rendered intensities [0, 1.3] → [−1, 1], the same for every subject

# Effect strengths at severity 1 and full weight.
VENTRICLE_ZOOM = 0.5  # tissue near the ventricles is sampled 50% closer to their centre
DEEP_GM_SHRINK = 1.0  # tissue near a deep grey-matter nucleus is sampled up to twice as far from its centre
CORTICAL_LOSS = 0.8  # grey-matter intensity loss in an affected parcel
LESION_CONTRAST = 1.0  # in T1 intensity units (white matter ≈ 0.9); brain-deep's are 1.5 times as strong
LESION_RADIUS_MM = (2.0, 5.0)
LESION_EXTENT = 3.0  # lesions (and the diffuse change) are truncated at 3 radii: maps have compact support
DIFFUSE_LOSS = 0.6  # white-matter signal loss at the centre of the diffuse change
DIFFUSE_RADIUS_MM = (8.0, 16.0)
# Differences between people that have nothing to do with the target.
HEAD_SCALE, AXIS_SCALE, ROTATION_DEGREES, DEFORMATION_MM = 0.03, 0.02, 4.0, 2.0
EFFECTS = ("ventricles", "cortex", "lesions", "deep_gm", "diffuse")


@dataclass(frozen=True)
class Design:
    """What a synthetic cohort is made of: its effects (in the order they are drawn), its target
    (a linear function of the severity plus noise, clamped to ``target_range``; class 1 on the
    side of ``threshold`` that high severity lies on) and its 2D slicing."""

    name: str
    effects: tuple[str, ...]
    target_name: str
    target_at_zero: float
    target_span: float  # change of the target from severity 0 to 1
    target_noise: float
    target_range: tuple[float, float]
    threshold: float
    class_names: tuple[str, str]
    plane: str  # 2D: axial or coronal (atlas.PLANES)
    level_mm: float  # 2D: where the middle slice lies along the axis the plane is cut across
    fov_2d_mm: tuple[float, float]
    shape_2d: tuple[int, int]  # 2D: the default image shape (the pixel size is fov_2d_mm / shape)
    slice_axis: int  # 2D: the axis the slices are cut across once the files are read in RAS
    lesion_contrast: float = LESION_CONTRAST

    def label(self, target: torch.Tensor) -> torch.Tensor:
        above = target >= self.threshold if self.target_span > 0 else target <= self.threshold
        return above.long()

    @property
    def class_rule(self) -> str:
        side = ">=" if self.target_span > 0 else "<="
        return f"label 1 ({self.class_names[1]}) when {self.target_name} {side} {self.threshold:g}"


DESIGNS = {
    "brain-synth": Design("brain-synth", ("ventricles", "cortex", "lesions"), "age", 45.0, 40.0, 2.0, (40.0, 90.0),
                          65.0, ("young", "old"), "axial", 15.0, (192.0, 192.0), (128, 128), 2),
    "brain-deep": Design("brain-deep", ("deep_gm", "lesions", "diffuse"), "score", 30.0, -14.0, 1.0, (0.0, 30.0),
                         23.0, ("unimpaired", "impaired"), "coronal", -6.0, (160.0, 200.0), (64, 80), 1,
                         # its other effects are subtle (tissue against tissue, a broad change like a bias
                         # field): stronger lesions give the dedicated classifiers ~0.75 accuracy at 600 subjects
                         lesion_contrast=1.5 * LESION_CONTRAST),
}


def design_of(name: str) -> Design:
    if name not in DESIGNS:
        raise UserError(f"unknown synthetic cohort {name!r}; choose one of {', '.join(DESIGNS)}")
    return DESIGNS[name]


@dataclass
class SubjectDraws:
    """The random make-up of a batch of rows (one row = one subject, or one slice of one)."""

    severity: torch.Tensor  # (B,)
    target: torch.Tensor  # (B,) the design's target (brain-synth: age)
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
    deep_gm_weight: torch.Tensor  # (B,)
    deep_gm_sides: torch.Tensor  # (B, 2): how much of the shrinkage each side's nuclei show
    diffuse_weight: torch.Tensor  # (B,)
    diffuse_centre: torch.Tensor  # (B, d) normalised atlas coordinates
    diffuse_radius_mm: torch.Tensor  # (B,)
    bias_log: torch.Tensor  # (B, 1, *ctrl): log of the bias field at control points
    intensity: torch.Tensor  # (B,)
    noise: torch.Tensor  # (B, 1, *spatial), unit variance

    @staticmethod
    def stack(rows: list[SubjectDraws]) -> SubjectDraws:
        return SubjectDraws(**{f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in fields(SubjectDraws)})


def subject_generator(seed: int, subject: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + subject) % 2**63)


def _severity_and_target(design: Design, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The first draws of every subject: its latent severity and its target."""
    severity = torch.rand(1, generator=g)
    target = design.target_at_zero + design.target_span * severity + design.target_noise * torch.randn(1, generator=g)
    return severity, target.clamp(*design.target_range)


def subject_targets(design: Design, seed: int, subjects: list[int]) -> torch.Tensor:
    """Targets of subjects without rendering them (to stratify splits before rendering)."""
    return torch.cat([_severity_and_target(design, subject_generator(seed, i))[1] for i in subjects])


def draw_subject(atlas: Atlas, seed: int, subject: int, slices: list[int], noise_sd: float = 0.02,
                 design: Design = DESIGNS["brain-synth"]) -> SubjectDraws:
    """The random make-up of one subject, for each of its atlas ``slices`` (one row each)."""
    g = subject_generator(seed, subject)
    d = atlas.t1.dim() - 2
    spatial = atlas.t1.shape[2:]

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(shape, generator=g)

    severity, target = _severity_and_target(design, g)
    # Which effects this subject shows, and how strongly (at least one).
    present = torch.rand(len(design.effects), generator=g) < 0.7
    if not present.any():
        present[torch.randint(len(design.effects), (1,), generator=g)] = True
    drawn = present * uniform(0.5, 1.0, len(design.effects))
    weight = {name: drawn[design.effects.index(name)].view(1) if name in design.effects else torch.zeros(1)
              for name in EFFECTS}
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

    def zone_positions(index: int, count: int) -> torch.Tensor:
        """``count`` random places of deep white matter in plane ``index``, normalised (count, d)."""
        zone = torch.nonzero(atlas.lesion_zone[index, 0].flatten()).flatten()
        picks = zone[torch.randint(len(zone), (count,), generator=g)] if len(zone) else torch.zeros(
            count, dtype=torch.long)
        centres = torch.stack(torch.unravel_index(picks, spatial), -1).float()
        return 2 * centres / (torch.tensor(spatial).float() - 1) - 1

    rows = []
    for index in slices:
        linear = torch.diag(scale)
        rotation = torch.eye(d)
        rotation[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        has_zone = bool(atlas.lesion_zone[index, 0].any())
        centres = zone_positions(index, MAX_LESIONS)
        sign = torch.zeros(MAX_LESIONS)
        sign[:n_lesions] = polarity if has_zone else 0.0
        row = dict(
            severity=severity, target=target, slice=torch.tensor([index]), linear=(rotation @ linear)[None],
            displacement_mm=DEFORMATION_MM * torch.randn(1, d, *[5] * d, generator=g),
            ventricle_weight=weight["ventricles"], cortex_weight=weight["cortex"], region_weights=region_weights,
            lesion_weight=weight["lesions"], lesion_centres=centres[None],
            lesion_radius_mm=uniform(*LESION_RADIUS_MM, 1, MAX_LESIONS), lesion_sign=sign[None],
            bias_log=0.1 * torch.randn(1, 1, *[3] * d, generator=g), intensity=intensity,
            noise=noise_sd * torch.randn(1, 1, *spatial, generator=g),
            deep_gm_weight=weight["deep_gm"], deep_gm_sides=torch.ones(1, 2), diffuse_weight=weight["diffuse"],
            diffuse_centre=torch.zeros(1, d), diffuse_radius_mm=torch.ones(1))
        # drawn after everything else, so the cohorts without these effects keep their bytes
        if "deep_gm" in design.effects:
            row["deep_gm_sides"] = uniform(0.3, 1.0, 1, 2)
        if "diffuse" in design.effects:
            row.update(diffuse_centre=zone_positions(index, 1), diffuse_radius_mm=uniform(*DIFFUSE_RADIUS_MM, 1))
            row["diffuse_weight"] = row["diffuse_weight"] * has_zone
        rows.append(SubjectDraws(**row))
    return SubjectDraws.stack(rows)


class Renderer:
    """Renders batches of subjects of one :class:`Design` on one atlas grid (2D planes or a 3D volume)."""

    def __init__(self, atlas: Atlas, design: Design = DESIGNS["brain-synth"]):
        self.atlas, self.design = atlas, design
        self.spatial = tuple(atlas.t1.shape[2:])
        self.d = len(self.spatial)
        self.spacing = np.linalg.norm(atlas.affines[0][:3, : self.d], axis=0)  # mm along each array axis
        self.mm_per_unit = torch.tensor([(n - 1) / 2 * s for n, s in zip(self.spatial, self.spacing)]).float()
        axes = [torch.linspace(-1, 1, n) for n in self.spatial]
        self.identity = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (*spatial, d), array-axis order
        # The zones the zooms act on: each structure smoothed (σ 5 mm for the ventricles, 3 mm for
        # the deep nuclei, which sit among other tissue) and cut at 2% of its peak, and its centre.
        self.ventricle_zone, self.ventricle_centre = self._zoom_zone(atlas.ventricles, 5.0)
        deep_sides = torch.cat([(atlas.deep_gm == side).float() for side in (1, 2)], 1)
        self.deep_gm_zone, self.deep_gm_centre = self._zoom_zone(deep_sides, 3.0)
        # the nuclei shrink among white matter: their zone fades out towards the ventricles, whose
        # high-contrast walls stay where they are
        near_ventricles, _ = self._zoom_zone(atlas.ventricles, 3.0)
        self.deep_gm_zone = self.deep_gm_zone * (1 - near_ventricles).square()
        self.intensity_maps = torch.cat([atlas.t1, atlas.brain, atlas.gm, atlas.wm], 1)

    def _zoom_zone(self, structures: torch.Tensor, sigma_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(zones (S, C, *spatial), centres (S, C, d)) of the C structures (S, C, *spatial)."""
        bump = gaussian_smooth(structures.clone(), float(sigma_mm / self.spacing.mean()))
        bump = bump / bump.flatten(2).amax(2).clamp(min=1e-6).view(*bump.shape[:2], *[1] * self.d)
        mass = structures.flatten(2).sum(2).clamp(min=1e-6)
        centres = torch.einsum("scn,nd->scd", structures.flatten(2), self.identity.reshape(-1, self.d))
        centres = centres / mass[..., None]
        return torch.where(bump > 0.02, bump, 0.0), centres

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

    def _zoomed(self, position: torch.Tensor, zones: torch.Tensor, centres: torch.Tensor,
                amounts: torch.Tensor) -> torch.Tensor:
        """Positions moved towards each structure's centre by ``amounts`` (B, C) of their distance
        where the structure's zone is full (away from it where negative: the structure shrinks)."""
        b = len(position)
        zone = self._sample(zones, position)  # (B, C, *spatial)
        for c in range(zones.shape[1]):
            amount = amounts[:, c].reshape(b, *[1] * self.d, 1)
            centre = centres[:, c].reshape(b, *[1] * self.d, self.d)
            position = position - amount * torch.movedim(zone[:, c:c + 1], 1, -1) * (position - centre)
        return position

    def _blobs(self, position: torch.Tensor, centres: torch.Tensor, radius_mm: torch.Tensor) -> torch.Tensor:
        """Gaussian blobs (B, L, *spatial) around ``centres`` (B, L, d), truncated at LESION_EXTENT radii."""
        b = len(position)
        offset_mm = (position.unsqueeze(1) - centres.view(b, -1, *[1] * self.d, self.d)) * self.mm_per_unit
        distance2 = offset_mm.pow(2).sum(-1) / radius_mm.view(b, -1, *[1] * self.d) ** 2
        return torch.where(distance2 < LESION_EXTENT ** 2, torch.exp(-0.5 * distance2), 0.0)

    def render(self, draws: SubjectDraws, severity: torch.Tensor, anatomy: torch.Tensor | None = None):
        """Images (B, 1, *spatial), unscaled (background 0), and brain masks, at ``severity`` (B,)."""
        b, s = len(severity), draws.slice
        expand = (b,) + (1,) * self.d
        position = self.anatomy(draws) if anatomy is None else anatomy
        position = self._zoomed(position, self.ventricle_zone[s], self.ventricle_centre[s],
                                (VENTRICLE_ZOOM * severity * draws.ventricle_weight)[:, None])
        if draws.deep_gm_weight.any():
            shrink = -DEEP_GM_SHRINK * (severity * draws.deep_gm_weight)[:, None] * draws.deep_gm_sides
            position = self._zoomed(position, self.deep_gm_zone[s], self.deep_gm_centre[s], shrink)

        t1, brain, gm, wm = self._sample(self.intensity_maps[s], position).unbind(1)
        regions = self._sample(self.atlas.regions[s].float(), position, mode="nearest").long().flatten(1)
        atrophy = torch.gather(draws.region_weights, 1, regions).view(b, *self.spatial)
        atrophy = atrophy * (CORTICAL_LOSS * severity * draws.cortex_weight).view(expand)
        tissue = t1 * (1 - atrophy * gm)
        if draws.diffuse_weight.any():
            bump = self._blobs(position, draws.diffuse_centre[:, None], draws.diffuse_radius_mm[:, None])[:, 0]
            tissue = tissue * (1 - (DIFFUSE_LOSS * severity * draws.diffuse_weight).view(expand) * bump * wm)

        blobs = self._blobs(position, draws.lesion_centres, draws.lesion_radius_mm)
        lesions = (blobs * draws.lesion_sign.view(b, -1, *[1] * self.d)).sum(1)
        tissue = tissue + (self.design.lesion_contrast * severity * draws.lesion_weight).view(expand) * lesions * wm

        bias = torch.exp(self._upsample(draws.bias_log))[:, 0]
        image = tissue * brain * bias * draws.intensity.view(expand) + draws.noise[:, 0] * brain
        # No negative intensities (noise at the brain's edge); pointwise, so maps stay exact.
        return image.clamp(min=0).unsqueeze(1), (brain > 0).float().unsqueeze(1)

    def render_pair(self, draws: SubjectDraws):
        """(image, counterfactual, ground-truth map, mask), in [−1, 1].

        One fixed intensity scale for everyone: a per-subject scale (say, its maximum) would
        depend on its lesions and so tell the class through the overall brightness."""
        labels = self.design.label(draws.target)
        counter = torch.tensor(COUNTERFACTUAL_SEVERITY)[labels]
        anatomy = self.anatomy(draws)
        own, mask = self.render(draws, draws.severity, anatomy)
        other, _ = self.render(draws, counter, anatomy)
        own, other = ((x / INTENSITY_SCALE).clamp(max=1) * 2 - 1 for x in (own, other))
        return own, other, other - own, mask


def slice_positions_mm(slices_per_subject: int, design: Design = DESIGNS["brain-synth"],
                       spacing_mm: float = 4.0) -> tuple:
    """Levels of a subject's 2D slices, 4 mm apart around the design's level (brain-synth: the
    axial level through the lateral ventricles; brain-deep: the coronal one through the deep nuclei)."""
    return tuple(design.level_mm + spacing_mm * (k - (slices_per_subject - 1) / 2) for k in range(slices_per_subject))


@dataclass
class BrainSynthCohort:
    """Rendered rows (one per subject in 3D, one per slice in 2D) and their make-up."""

    design: Design
    images: torch.Tensor
    counterfactuals: torch.Tensor
    gt_maps: torch.Tensor
    masks: torch.Tensor
    targets: torch.Tensor  # the design's target (brain-synth: age)
    labels: torch.Tensor
    subjects: torch.Tensor
    slice_mm: torch.Tensor  # level of each row's plane (2D); NaN in 3D
    severity: torch.Tensor
    effect_weights: torch.Tensor  # (rows, effects): the weight of each of the design's effects, 0 where absent
    regions_affected: torch.Tensor
    lesions: torch.Tensor
    affines: np.ndarray  # (rows, 4, 4)


def render_subjects(shape: tuple[int, ...], subjects: list[int], seed: int = 0, slices_per_subject: int = 1,
                    voxels_per_chunk: int = 2**22, design: Design = DESIGNS["brain-synth"]) -> BrainSynthCohort:
    """Render ``subjects`` (their indices) on a 2D (two sides) or 3D (three sides) grid, in
    chunks of about ``voxels_per_chunk`` voxels (memory stays bounded in 3D)."""
    slices_mm = slice_positions_mm(slices_per_subject, design) if len(shape) == 2 else (float("nan"),)
    atlas = atlas_on_grid(tuple(shape), slices_mm if len(shape) == 2 else (), design.plane,
                          design.fov_2d_mm if len(shape) == 2 else None)
    renderer = Renderer(atlas, design)
    planes = list(range(len(slices_mm)))
    outputs, metadata = [], []
    rows_per_subject = len(planes)
    step = max(1, voxels_per_chunk // (math.prod(shape) * rows_per_subject))
    for start in range(0, len(subjects), step):
        batch = subjects[start:start + step]
        draws = SubjectDraws.stack([draw_subject(atlas, seed, i, planes, design=design) for i in batch])
        outputs.append(renderer.render_pair(draws))
        metadata.append(draws)
    images, counterfactuals, gt_maps, masks = (torch.cat(parts) for parts in zip(*outputs))
    draws = SubjectDraws.stack(metadata)
    subject_ids = torch.tensor(subjects).repeat_interleave(rows_per_subject)
    weights = {"ventricles": draws.ventricle_weight, "cortex": draws.cortex_weight, "lesions": draws.lesion_weight,
               "deep_gm": draws.deep_gm_weight, "diffuse": draws.diffuse_weight}
    return BrainSynthCohort(
        design=design, images=images, counterfactuals=counterfactuals, gt_maps=gt_maps, masks=masks,
        targets=draws.target, labels=design.label(draws.target), subjects=subject_ids,
        slice_mm=torch.tensor(slices_mm).repeat(len(subjects)).float(), severity=draws.severity,
        effect_weights=torch.stack([weights[name] for name in design.effects], 1),
        regions_affected=(draws.region_weights > 0).sum(1), lesions=(draws.lesion_sign != 0).sum(1),
        affines=atlas.affines[draws.slice.numpy()])

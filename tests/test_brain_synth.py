"""brain-synth: real anatomy, heterogeneous effects, exact ground truth."""

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from icam.data.atlas import atlas_on_grid
from icam.data.brain_synth import (
    DESIGNS,
    LESION_EXTENT,
    Renderer,
    SubjectDraws,
    draw_subject,
    render_subjects,
    subject_targets,
)
from icam.data.synth_export import write_brain_synth

SHAPE = (64, 64)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(atlas_on_grid(SHAPE, (15.0,)))


@pytest.fixture(scope="module")
def coronal_renderer():
    deep = DESIGNS["brain-deep"]
    return Renderer(atlas_on_grid(deep.shape_2d, (deep.level_mm,), deep.plane, deep.fov_2d_mm), deep)


def draws_for(renderer, subjects, **zeroed):
    draws = SubjectDraws.stack([draw_subject(renderer.atlas, 0, i, [0], design=renderer.design) for i in subjects])
    return dataclasses.replace(draws, **{k: torch.zeros_like(getattr(draws, k)) for k in zeroed})


def test_same_seed_same_bytes_and_a_subject_is_itself_alone_or_in_a_batch():
    a = render_subjects(SHAPE, [0, 1, 2, 3], seed=5)
    b = render_subjects(SHAPE, [0, 1, 2, 3], seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.gt_maps, b.gt_maps)
    alone = render_subjects(SHAPE, [2], seed=5)  # same draws; batched kernels may round differently
    assert torch.allclose(alone.images[0], a.images[2], atol=1e-5)
    assert not torch.equal(render_subjects(SHAPE, [0], seed=6).images[0], a.images[0])


def test_ground_truth_is_the_exact_difference_of_the_two_renderings():
    cohort = render_subjects(SHAPE, list(range(6)), seed=0)
    assert torch.equal(cohort.gt_maps, cohort.counterfactuals - cohort.images)
    assert cohort.images.min() >= -1 and cohort.images.max() <= 1
    assert cohort.counterfactuals.min() >= -1 and cohort.counterfactuals.max() <= 1
    assert (cohort.gt_maps.flatten(1).abs().amax(1) > 0).all()  # every subject has some effect
    assert torch.equal(cohort.labels, (cohort.targets >= 65).long())
    assert (cohort.images[cohort.masks == 0] == -1).all()  # skull-stripped: background at −1


def _support(renderer, draws, effect):
    position = renderer.anatomy(draws)
    if effect == "ventricle":
        return renderer._sample(renderer.ventricle_zone[draws.slice], position)[:, 0] > 0
    if effect == "deep_gm":
        return renderer._sample(renderer.deep_gm_zone[draws.slice], position).amax(1) > 0
    if effect == "cortex":
        regions = renderer._sample(renderer.atlas.regions[draws.slice].float(), position, "nearest").long()[:, 0]
        return torch.gather(draws.region_weights, 1, regions.flatten(1)).view(regions.shape) > 0
    if effect == "diffuse":
        centres, radii, signs = (draws.diffuse_centre[:, None], draws.diffuse_radius_mm[:, None],
                                 torch.ones(len(position), 1))
    else:
        centres, radii, signs = draws.lesion_centres, draws.lesion_radius_mm, draws.lesion_sign
    offset = (position.unsqueeze(1) - centres.view(len(position), -1, 1, 1, 2)) * renderer.mm_per_unit
    reach = (offset.pow(2).sum(-1) < (LESION_EXTENT * radii.view(len(position), -1, 1, 1)) ** 2)
    return (reach & (signs != 0).view(len(position), -1, 1, 1)).any(1)


EFFECT_WEIGHTS = ("ventricle_weight", "cortex_weight", "lesion_weight", "deep_gm_weight", "diffuse_weight")


@pytest.mark.parametrize("design, effect", [("brain-synth", "ventricle"), ("brain-synth", "cortex"),
                                            ("brain-synth", "lesion"), ("brain-deep", "deep_gm"),
                                            ("brain-deep", "diffuse")])
def test_each_effect_changes_only_where_it_acts(renderer, coronal_renderer, design, effect):
    renderer = renderer if design == "brain-synth" else coronal_renderer
    others = [name for name in EFFECT_WEIGHTS if name != f"{effect}_weight"]
    draws = draws_for(renderer, range(12), **dict.fromkeys(others))
    draws = dataclasses.replace(draws, **{f"{effect}_weight": torch.full_like(draws.ventricle_weight, 0.8)})
    _, _, gt, _ = renderer.render_pair(draws)
    changed = gt[:, 0] != 0
    assert changed.any()
    assert not (changed & ~_support(renderer, draws, effect)).any()


def test_no_effect_means_no_change(renderer, coronal_renderer):
    for each in (renderer, coronal_renderer):
        draws = draws_for(each, range(4), **dict.fromkeys(EFFECT_WEIGHTS))
        _, _, gt, _ = each.render_pair(draws)
        assert torch.count_nonzero(gt) == 0


def test_the_deep_nuclei_shrink_among_white_matter_not_at_the_ventricles(coronal_renderer):
    """brain-deep's geometric change lies around the thalamus and basal ganglia, where tissue
    meets tissue; the ventricles' high-contrast walls stay where they are."""
    draws = draws_for(coronal_renderer, range(12), **{n: None for n in EFFECT_WEIGHTS if n != "deep_gm_weight"})
    draws = dataclasses.replace(draws, deep_gm_weight=torch.ones_like(draws.deep_gm_weight))
    _, _, gt, _ = coronal_renderer.render_pair(draws)
    position = coronal_renderer.anatomy(draws)
    ventricles = coronal_renderer._sample(coronal_renderer.atlas.ventricles[draws.slice], position)[:, 0] > 0.5
    near_nuclei = coronal_renderer._sample(coronal_renderer.deep_gm_zone[draws.slice], position).amax(1) > 0.3
    change = gt[:, 0].abs()
    assert change[ventricles].sum() < 0.02 * change.sum()
    assert change[near_nuclei].sum() > 0.5 * change.sum()


def test_brain_deep_is_another_cohort_on_the_same_anatomy(tmp_path):
    """Coronal 2.5 mm slices of 64×80 with their own affine, a score that falls with severity
    (class 1 when it is low), its own effects; read back through the table like any cohort."""
    summary = write_brain_synth(tmp_path / "deep", dims=2, n=16, seed=2, design="brain-deep")
    assert summary["shape"] == [64, 80] and summary["plane"] == "coronal" and summary["slice_axis"] == 1
    assert set(summary["effects"]) == {"deep_gm", "lesions", "diffuse"}
    rows = (tmp_path / "deep" / "cohort.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "deep_gm_weight" in header and "ventricles_weight" not in header
    first = dict(zip(header, rows[1].split(",")))
    image = nib.load(str(tmp_path / "deep" / first["image"]))
    assert image.shape == (64, 80, 1) and first["image"].endswith("_y-6.nii.gz")
    assert np.allclose(np.linalg.norm(image.affine[:3, :3], axis=0), 2.5)
    assert np.allclose(image.affine[:3, 1], [0, 0, 2.5]) and abs(image.affine[1, 3] + 6) < 1e-6  # x by z, at y −6
    labels = [int(dict(zip(header, r.split(",")))["label"]) for r in rows[1:]]
    scores = [float(dict(zip(header, r.split(",")))["target"]) for r in rows[1:]]
    assert all(label == int(score <= 23) for label, score in zip(labels, scores)) and 0 < sum(labels) < 16

    from icam.config import load_config
    from icam.data import build_cohorts

    config = load_config(None, ["data.kind=csv", f"data.csv={tmp_path / 'deep' / 'cohort.csv'}", "data.shape=[64,80]",
                                "data.slice_axis=1", "data.intensity=none", f"data.cache_dir={tmp_path / 'cache'}"])
    cohorts = build_cohorts(config.data, seed=0)
    item = cohorts["train"][0]
    assert item["image"].shape == (1, 64, 80) and item["gt_map"].abs().max() > 0


def test_subjects_differ_in_where_they_change():
    cohort = render_subjects(SHAPE, list(range(20)), seed=0)
    present = {tuple((w > 0).tolist()) for w in cohort.effect_weights}
    assert len(present) > 1  # different mixes of effects
    maps = cohort.gt_maps.flatten(1).abs()
    correlation = torch.corrcoef(maps)
    off_diagonal = correlation[~torch.eye(20, dtype=torch.bool)]
    assert off_diagonal.max() < 0.99 and off_diagonal.mean() < 0.8
    ages = cohort.targets
    assert ages.min() >= 40 and ages.max() <= 90
    assert torch.equal(ages, subject_targets(DESIGNS["brain-synth"], 0, list(range(20))))


def test_3d_subjects():
    cohort = render_subjects((32, 48, 32), [0, 1], seed=0)
    assert cohort.images.shape == (2, 1, 32, 48, 32)
    assert torch.equal(cohort.gt_maps, cohort.counterfactuals - cohort.images)
    assert cohort.masks.mean() > 0.2  # a brain fills a good part of the box


def test_written_cohort_opens_with_sensible_affines(tmp_path):
    summary = write_brain_synth(tmp_path / "c2", dims=2, n=12, seed=1, shape=(64, 64), slices_per_subject=2)
    assert summary["rows"] == 24 and summary["subjects"] == 12
    assert sum(s["subjects"] for s in summary["splits"].values()) == 12
    lines = (tmp_path / "c2" / "cohort.csv").read_text().splitlines()
    assert len(lines) == 25 and lines[0].startswith("image,label,target,subject,split,mask,gt_map")
    first = lines[1].split(",")
    image = nib.load(str(tmp_path / "c2" / first[0]))
    assert image.shape == (64, 64, 1)
    spacing = np.diag(image.affine)[:3]
    assert np.allclose(spacing, 3.0)  # 192 mm field of view in 64 pixels, RAS
    assert image.affine[2, 3] in (13.0, 17.0)  # two slices 4 mm apart around 15 mm
    assert abs(image.affine[0, 3] + 94.5) < 1e-6  # centred on the brain (x from −94.5 mm)

    write_brain_synth(tmp_path / "c3", dims=3, n=2, seed=1, shape=(32, 48, 32))
    volume = nib.load(str(tmp_path / "c3" / "images" / "sub-00000.nii.gz"))
    assert volume.shape == (32, 48, 32) and np.allclose(np.diag(volume.affine)[:3], [4.8, 4.0, 4.8])
    write_brain_synth(tmp_path / "c4", dims=3, n=1, seed=1, shape=(64, 80, 64))
    volume = nib.load(str(tmp_path / "c4" / "images" / "sub-00000.nii.gz"))
    assert volume.shape == (64, 80, 64) and np.allclose(np.diag(volume.affine)[:3], 2.4)  # isotropic


def test_written_cohort_takes_any_size_of_16_or_more(tmp_path):
    """Files of any shape (training fits them to its data.shape, multiples of 16), as `icam synth --size` says."""
    import nibabel as nib

    with pytest.raises(ValueError, match="16 or more, got 12x64"):
        write_brain_synth(tmp_path / "small", dims=2, n=2, shape=(12, 64))
    write_brain_synth(tmp_path / "odd", dims=2, n=2, shape=(60, 70))
    assert {nib.load(str(f)).shape[:2] for f in (tmp_path / "odd" / "images").iterdir()} == {(60, 70)}


def test_brain_deep_as_a_training_cohort_is_read_across_its_own_slice_axis(tmp_path):
    from icam.config import load_config
    from icam.data import build_cohorts

    config = load_config(None, ["data.kind=brain-synth", "data.design=brain-deep", "data.shape=[32,48]",
                                "data.n_subjects=10", f"data.cache_dir={tmp_path}"]).data
    item = build_cohorts(config, seed=0)["train"][0]
    assert item["image"].shape == (1, 32, 48) and int(item["label"]) == int(item["target"] <= 23)


@pytest.mark.parametrize("shape", [(32, 32), (16, 32, 16)])
def test_brain_synth_as_a_training_cohort_is_read_from_disk(tmp_path, shape):
    from icam.config import load_config
    from icam.data import build_cohorts
    from icam.data.nifti import NiftiCohort

    config = load_config(None, ["data.kind=brain-synth", f"data.shape={list(shape)}", "data.n_subjects=12",
                                f"data.cache_dir={tmp_path}"]).data
    cohorts = build_cohorts(config, seed=0)
    train = cohorts["train"]
    assert isinstance(train, NiftiCohort)  # memory-mapped cache entries, not the cohort in RAM
    assert sum(len(cohorts[s]) for s in ("train", "val", "test")) == 12
    item = train[0]
    assert item["image"].shape == (1, *shape) and item["gt_map"].shape == (1, *shape)
    assert int(item["label"]) == int(item["target"] >= 65)
    again = build_cohorts(config, seed=0)  # the second run reuses what the first wrote
    assert torch.equal(again["train"][0]["image"], item["image"])

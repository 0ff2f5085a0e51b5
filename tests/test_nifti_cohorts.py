"""The user's path: a CSV of NIfTI files, checked, preprocessed, cached and split by subject."""

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from icam.cli import app
from icam.config import load_config
from icam.data import DataError, build_cohorts
from icam.data.brain_synth import render_subjects
from icam.data.splits import assign_splits
from icam.data.synth_export import write_brain_synth
from icam.train import train

from .conftest import TINY_TRAINING

runner = CliRunner()


def csv_config(path, *overrides, shape="[64,64]"):
    return load_config(None, [f"data.shape={shape}", *overrides], {"data.kind": "csv", "data.csv": path}).data


@pytest.fixture(scope="module")
def synth2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth2d") / "study #2"  # a name YAML would cut at the '#'
    write_brain_synth(folder, dims=2, n=16, seed=3, shape=(64, 64))
    return folder


def write_table(folder, rows, header=("image", "label", "target", "subject", "split")):
    with (folder / "cohort.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return folder / "cohort.csv"


def save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else affine), str(path))


def test_synth_then_load_round_trip(synth2d):
    cohorts = build_cohorts(csv_config(synth2d / "cohort.csv", "data.intensity=none"), seed=0)
    rendered = render_subjects((64, 64), list(range(16)), seed=3)
    table = list(csv.DictReader((synth2d / "cohort.csv").open()))
    for split, dataset in cohorts.splits.items():
        for i in range(len(dataset)):
            item = dataset[i]
            subject = int(dataset.rows[i].subject.split("-")[1])
            assert torch.allclose(item["image"][0], rendered.images[subject, 0, :, :], atol=1e-6)
            assert torch.allclose(item["gt_map"][0], rendered.gt_maps[subject, 0], atol=1e-6)
            assert item["label"] == rendered.labels[subject]
            assert item["target"] == pytest.approx(float(rendered.targets[subject]), abs=1e-3)
            assert table[dataset.rows[i].number - 2]["split"] == split
            file_affine = nib.load(str(dataset.rows[i].image)).affine
            assert np.allclose(item["affine"].numpy(), file_affine)  # the input's own space travels along
    assert cohorts["train"].has_gt_maps and cohorts["train"].has_masks


def test_affine_is_preserved_through_reorientation_and_resampling(tmp_path):
    # An LAS volume with one bright voxel: after RAS reorientation, 2 mm resampling and padding,
    # the bright voxel must sit at the same place in the world.
    affine = np.array([[-1.5, 0, 0, 40.0], [0, 1.5, 0, -50.0], [0, 0, 1.5, -20.0], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).random((40, 50, 30)) * 0.1
    volume[30, 10, 12] = 10.0
    save(tmp_path / "a.nii.gz", volume, affine)
    save(tmp_path / "b.nii.gz", volume[::-1] + 0.5, affine)
    path = write_table(tmp_path, [["a.nii.gz", 0, "", "a", "train"], ["b.nii.gz", 1, "", "b", "train"]])
    data = csv_config(path, "data.spacing=[2,2,2]", "data.intensity=none", shape="[48,48,32]")
    item = build_cohorts(data, seed=0)["train"][0]
    out = item["image"][0].numpy()
    assert out.shape == (48, 48, 32)
    peak = np.array(np.unravel_index(out.argmax(), out.shape))
    world_in = affine @ np.array([30, 10, 12, 1.0])
    world_out = item["affine"].numpy() @ np.append(peak, 1.0)
    assert np.abs(world_out - world_in)[:3].max() <= 2.0  # within one output voxel
    assert item["affine"][0, 0] > 0  # RAS


def test_2d_slices_of_3d_volumes_share_the_subjects_split(tmp_path):
    rows = []
    for s in range(12):
        save(tmp_path / f"s{s}.nii.gz", np.random.default_rng(s).random((32, 32, 20)) + s)
        rows.append([f"s{s}.nii.gz", s % 2, 50 + s, f"sub{s}", ""])
    path = write_table(tmp_path, rows)
    data = csv_config(path, "data.slices_per_subject=3", "data.slice_range=[0.2,0.8]", shape="[32,32]")
    cohorts = build_cohorts(data, seed=0)
    assert sum(len(d) for d in cohorts.splits.values()) == 36
    seen = {}
    for split, dataset in cohorts.splits.items():
        for i in range(len(dataset)):
            seen.setdefault(dataset.source(i).subject, set()).add(split)
            assert dataset[i]["image"].shape == (1, 32, 32)
    assert all(len(v) == 1 for v in seen.values())
    assert all(len(cohorts[s]) > 0 for s in ("train", "val", "test"))
    # every slice is scaled with its whole volume's range (slices of one scan stay comparable)
    dataset = cohorts["train"]
    for i in range(3):
        source = dataset.source(i)
        raw = nib.load(source.file).get_fdata(dtype=np.float32)
        expected = (raw[:, :, source.slice] - raw.min()) / (raw.max() - raw.min()) * 2 - 1
        assert torch.allclose(dataset[i]["image"][0], torch.from_numpy(expected), atol=1e-5)


def test_splits_never_share_a_subject_and_are_stratified():
    subjects = [f"s{i // 2}" for i in range(400)]
    labels = [(i // 2) % 2 for i in range(400)]
    splits = assign_splits(subjects, labels, [float(i // 2) for i in range(400)], seed=1)
    by_subject = {}
    for s, k in zip(subjects, splits):
        by_subject.setdefault(s, set()).add(k)
    assert all(len(v) == 1 for v in by_subject.values())
    for k in ("val", "test"):
        assert sum(1 for s, label in zip(splits, labels) if s == k and label == 0) == 20
        assert sum(1 for s, label in zip(splits, labels) if s == k and label == 1) == 20
    assert splits == assign_splits(subjects, labels, [float(i // 2) for i in range(400)], seed=1)


@pytest.fixture
def bad_cohort(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        save(tmp_path / f"ok{i}.nii.gz", rng.random((16, 16, 16)))
    save(tmp_path / "fourd.nii.gz", rng.random((16, 16, 16, 3)))
    nan = rng.random((16, 16, 16))
    nan[0, 0, 0] = np.nan
    save(tmp_path / "nan.nii.gz", nan)
    save(tmp_path / "constant.nii.gz", np.ones((16, 16, 16)))
    raw = (tmp_path / "ok0.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    rows = [["ok0.nii.gz", 0, 50, "a", "train"], ["ok1.nii.gz", 1, 70, "b", "train"],
            ["ok2.nii.gz", 0, 51, "c", "val"], ["ok3.nii.gz", 1, 71, "d", "test"],
            ["ok4.nii.gz", 0, 52, "e", "train"], ["ok5.nii.gz", 1, 72, "f", "train"],
            ["missing.nii.gz", 0, 50, "g", "train"], ["truncated.nii.gz", 0, 50, "h", "train"],
            ["fourd.nii.gz", 0, 50, "i", "train"], ["nan.nii.gz", 1, 50, "j", "train"],
            ["constant.nii.gz", 1, 50, "k", "train"], ["ok4.nii.gz", 0, "old", "l", "train"],
            ["ok5.nii.gz", 1, 60, "c", "train"]]
    return write_table(tmp_path, rows)


EXPECTED = {8: "file not found", 9: "cannot read the image", 10: "4D", 11: "NaN", 12: "empty",
            13: "not a finite number", 14: "more than one split"}


def test_every_bad_input_is_named_with_its_row(bad_cohort):
    with pytest.raises(DataError) as error:
        build_cohorts(csv_config(bad_cohort, shape="[16,16,16]"), seed=0)
    found = {p.row: p.message for p in error.value.problems}
    for row, words in EXPECTED.items():
        row_with = row if row != 14 else 4  # the subject also appears on row 4 (val)
        assert words in found.get(row_with, "") + found.get(row, ""), (row, found)
    assert "missing.nii.gz" in str(error.value)


def test_skip_bad_leaves_rows_out_and_lists_them(bad_cohort, tmp_path):
    config = load_config(None, TINY_TRAINING + ["data.kind=csv", f"data.csv={bad_cohort}", "data.shape=[16,16,16]",
                                       "data.skip_bad=true", "train.steps=1", f"out_dir={tmp_path / 'runs'}"])
    summary = train(config, show_progress=False)
    with open(f"{summary['run_dir']}/excluded.csv") as table:
        excluded = list(csv.DictReader(table))
    assert {int(r["row"]) for r in excluded} == {8, 9, 10, 11, 12, 13, 14, 4}  # 14 also repeats row 7's image
    assert all(r["reason"] for r in excluded)


def test_missing_columns_and_classes_are_clear(tmp_path):
    save(tmp_path / "a.nii.gz", np.random.default_rng(0).random((16, 16, 16)))
    save(tmp_path / "b.nii.gz", np.random.default_rng(1).random((16, 16, 16)))
    no_label = write_table(tmp_path, [["a.nii.gz", "x"]], header=("image", "diagnosis"))
    with pytest.raises(DataError, match="no 'label' column"):
        build_cohorts(csv_config(no_label, shape="[16,16,16]"), seed=0)
    one_class_in_train = write_table(tmp_path, [["a.nii.gz", 0, "", "a", "train"], ["b.nii.gz", 1, "", "b", "val"]])
    with pytest.raises(DataError, match="class 1 has no training images"):
        build_cohorts(csv_config(one_class_in_train, shape="[16,16,16]"), seed=0)
    with pytest.raises(DataError, match="does not exist"):
        build_cohorts(csv_config(tmp_path / "nope.csv", shape="[16,16,16]"), seed=0)


def test_class_from_target_thresholds(tmp_path):
    rows = []
    for i, age in enumerate([50, 60, 66, 80, 45, 70]):
        save(tmp_path / f"{i}.nii.gz", np.random.default_rng(i).random((16, 16, 16)))
        rows.append([f"{i}.nii.gz", age, f"s{i}", "train"])
    path = write_table(tmp_path, rows, header=("image", "target", "subject", "split"))
    cohort = build_cohorts(csv_config(path, "data.class_thresholds=[65]", shape="[16,16,16]"), seed=0)["train"]
    assert cohort.labels.tolist() == [0, 0, 1, 1, 0, 1]


def test_data_check_command(bad_cohort, synth2d):
    bad = runner.invoke(app, ["data", "check", str(bad_cohort)])
    assert bad.exit_code == 1
    assert "row 9" in bad.stderr and "problem(s)" in bad.stderr
    good = runner.invoke(app, ["data", "check", str(synth2d / "cohort.csv")])
    assert good.exit_code == 0, good.output
    assert "16 usable rows of 16" in good.stdout and "no problems found" in good.stdout


def test_data_check_fills_the_training_cache(synth2d, tmp_path):
    cache = tmp_path / "cache"
    sets = ["--set", "data.shape=[64,64]", "--set", f"data.cache_dir={cache}"]
    filled = runner.invoke(app, ["data", "check", str(synth2d / "cohort.csv"), "--fill-cache", *sets])
    assert filled.exit_code == 0, filled.output
    entries = sorted(cache.glob("*.npy"))
    assert len(entries) == 3 * 16  # image, mask and gt map of every row
    stamps = [p.stat().st_mtime_ns for p in entries]
    build_cohorts(csv_config(synth2d / "cohort.csv", f"data.cache_dir={cache}"), seed=0)
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("*.npy"))] == stamps  # training found it all cached
    no_shape = runner.invoke(app, ["data", "check", str(synth2d / "cohort.csv"), "--fill-cache"])
    assert no_shape.exit_code == 2 and "data.shape" in no_shape.stderr


def test_icam_trains_on_the_synthetic_cohort_through_the_csv_path(synth2d, tmp_path):
    config = load_config(None, TINY_TRAINING + ["data.kind=csv", f"data.csv={synth2d / 'cohort.csv'}",
                                                "data.shape=[64,64]", f"out_dir={tmp_path / 'runs'}", "train.steps=3"])
    summary = train(config, show_progress=False)
    assert summary["regressing"] and summary["selection"]["metric"] == "mae"
    assert {"mae", "ncc", "accuracy"} <= set(summary["validation"])
    assert (tmp_path / "runs").is_dir()


def test_intensity_options_and_augmentation(tmp_path):
    rows = []
    for s in range(8):
        save(tmp_path / f"s{s}.nii.gz", np.random.default_rng(s).random((16, 16, 16)) * (s + 1) * 100)
        rows.append([f"s{s}.nii.gz", s % 2, "", f"sub{s}", "train" if s < 6 else "val"])
    path = write_table(tmp_path, rows)
    shape = "[16,16,16]"
    per_image = build_cohorts(csv_config(path, shape=shape), seed=0)["train"][3]["image"]
    assert per_image.min() == -1 and per_image.max() == 1
    unit = build_cohorts(csv_config(path, "data.intensity=minmax01", shape=shape), seed=0)["train"][3]["image"]
    assert unit.min() == 0 and unit.max() == 1
    cohort = build_cohorts(csv_config(path, "data.intensity=cohort", "data.intensity_range=[0,800]", shape=shape),
                           seed=0)
    brightest = cohort["val"][1]["image"]  # values up to 800: the full range
    dimmest = cohort["train"][0]["image"]  # values up to 100: an eighth of it
    assert brightest.max() > 0.9 and dimmest.max() < -0.7
    computed = build_cohorts(csv_config(path, "data.intensity=cohort", shape=shape), seed=0)
    assert computed.info["intensity_range"][1] > 300  # percentiles of the training images

    augmented = build_cohorts(csv_config(path, "data.augment.enabled=true", "data.augment.probability=1",
                                         shape=shape), seed=0)
    train_a, train_b = augmented["train"][0]["image"], augmented["train"][0]["image"]
    assert not torch.equal(train_a, train_b)  # random each time
    assert torch.equal(augmented["val"][0]["image"], augmented["val"][0]["image"])  # never for validation

"""A researcher's own cohort, end to end through the command line: an ADNI-like folder (scans of
two shapes and voxel sizes, LPS and RAS, int16 with a scale slope and the scanner's header
fields, per-subject subfolders), a table with its own column names, string diagnoses with MCI
among them and no split column, the data folder read-only."""

import csv
import json
import os
import stat

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from icam.cli import app

from .conftest import TINY_TRAINING

runner = CliRunner()
HEAD_MM = np.array([30.0, 36.0, 30.0])  # the head's semi-axes


def head(shape, affine, ventricle: float, rng, scale: float = 1.0) -> np.ndarray:
    """A head phantom in world coordinates (the same anatomy at any voxel size and orientation):
    bright tissue, a dark central ventricle whose size is the diagnosis, and a noisy background
    that is brighter in the corners, as coil sensitivity makes it."""
    index = np.indices(shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    r = np.sqrt(((world / (HEAD_MM[:, None] * scale)) ** 2).sum(0)).reshape(shape)
    volume = np.where(r < 1, 100.0, 0.0) - np.where(r < ventricle, 70.0, 0.0)
    corner = np.sqrt(((np.indices(shape) / (np.array(shape) - 1)[:, None, None, None] - 0.5) ** 2).sum(0))
    return volume + np.abs(rng.normal(0, 4 + 20 * corner, shape))


def scanner_file(path, volume, affine) -> None:
    """int16 with a scale slope, cal_min/cal_max and descrip as the scanner software writes them."""
    image = nib.Nifti1Image(np.round(volume / 0.5).astype(np.int16), affine)
    image.header.set_slope_inter(0.5, 0)
    image.header["cal_min"], image.header["cal_max"] = 0, 200
    image.header["descrip"] = b"MPRAGE scanner 3T"
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def grid(voxel: float, fov_mm=(96, 112, 96), lps: bool = False):
    shape = tuple(int(f / voxel) for f in fov_mm)
    sign = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    affine = np.diag([*(sign * voxel), 1.0])
    affine[:3, 3] = -sign * voxel * (np.array(shape) - 1) / 2
    return shape, affine


@pytest.fixture(scope="module")
def adni(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    data = root / "adni"
    rng = np.random.default_rng(0)
    rows = []
    diagnoses = ["CN"] * 8 + ["AD"] * 8 + ["MCI"] * 3
    for i, dx in enumerate(diagnoses):
        ptid = f"002_S_{i:04d}"
        shape, affine = grid(2.0 if i % 2 else 3.0, lps=i % 3 == 0)
        big = i == 2  # a head too big for the model's field of view: part of it is cut
        volume = head(shape, affine, {"CN": 0.25, "MCI": 0.35, "AD": 0.5}[dx], rng, 1.35 if big else 1.0)
        path = f"{ptid}/{ptid}_T1w.nii.gz"
        scanner_file(data / path, volume, affine)
        rows.append({"PTID": ptid, "path": path, "DX": dx, "AGE": round(60 + 2.0 * i % 25, 1)})
    with (data / "adni.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = _listing(data)
    for folder, _, files in os.walk(data):  # a read-only shared mount (root would still write: see `before`)
        for name in files:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    yield {"root": root, "data": data, "csv": data / "adni.csv", "rows": rows, "before": before}
    for folder, _, _ in os.walk(data):
        os.chmod(folder, stat.S_IRWXU)


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def config_file(adni, name: str, shape: list[int], *extra: str):
    tree = {"data": {"kind": "csv", "csv": str(adni["csv"]), "shape": shape, "spacing": [5, 5, 5],
                     "classes": ["CN", "AD"], "max_brain_cropped": 0.3,
                     "columns": {"image": "path", "label": "DX", "target": "AGE", "subject": "PTID"}}}
    path = adni["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return ["-c", str(path), *[f"--set={o}" for o in TINY_TRAINING + ["train.steps=4", "train.images_per_class=2",
                                                                      *extra]]]


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def check_map(path, source):
    """A map a viewer opens right: the input's shape and affine, float32, its own display range."""
    written, original = nib.load(str(path)), nib.load(str(source))
    assert written.shape == original.shape and np.allclose(written.affine, original.affine)
    assert written.get_data_dtype() == np.float32
    header = written.header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    assert header.get_slope_inter() in ((None, None), (1.0, 0.0))
    data = written.get_fdata()
    assert float(header["cal_max"]) == pytest.approx(np.abs(data).max(), rel=1e-5) or "mask" in path.name
    assert header["descrip"].tobytes().startswith(b"icam")  # not the scanner's
    return data


@pytest.fixture(scope="module")
def run3d(adni):
    out = adni["root"] / "runs"
    with pytest.warns(UserWarning, match="cuts off part of the brain"):
        cli("train", *config_file(adni, "own3d", [16, 16, 16]), "--out", out, "--name", "r3d", "--quiet")
    return out / "r3d"


def test_data_check_names_the_classes_and_the_rows_left_out(adni):
    output = cli("data", "check", adni["csv"], *config_file(adni, "check", [16, 16, 16])[:2])
    assert "CN 8, AD 8" in output and "16 usable rows of 19" in output
    assert "3 rows left out by data.classes" in output and "'MCI'" in output


def test_a_3d_run_on_the_folder(adni, run3d):
    excluded = list(csv.DictReader((run3d / "excluded.csv").open()))
    assert len(excluded) == 3 and all("'MCI' is not one of data.classes" in e["reason"] for e in excluded)
    data = json.loads((run3d / "data.json").read_text())
    assert data["classes"] == ["CN", "AD"]
    assert data["preprocessing"]["brain_masks"]["foreground"] == 16
    cropped = data["preprocessing"]["brain_cropped"]
    assert [c["row"] for c in cropped] == [4] and 0 < cropped[0]["brain_cropped"] < 0.3  # the big head, row 4
    assert {s["split"] for s in csv.DictReader((run3d / "splits.csv").open())} == {"train", "val", "test"}
    assert _listing(adni["data"]) == adni["before"]  # nothing written next to the images


def test_predict_explain_evaluate_report_on_the_runs_own_splits(adni, run3d, tmp_path):
    cli("predict", run3d, "--csv", adni["csv"], "--split", "test", "-o", tmp_path / "test.csv")
    records = list(csv.DictReader((tmp_path / "test.csv").open()))
    test_ids = {s["subject"] for s in csv.DictReader((run3d / "splits.csv").open()) if s["split"] == "test"}
    assert {r["file"].split("/")[-2] for r in records} == test_ids
    assert {"p_CN", "p_AD"} <= set(records[0]) and {r["label"] for r in records} <= {"CN", "AD"}
    assert {r["predicted_class"] for r in records} <= {"CN", "AD"}

    explained = tmp_path / "explained"
    cli("explain", run3d, "--csv", adni["csv"], "--split", "test", "--out", explained, "--n-samples", "3",
        "--min-probability", "0.5", "--native-intensity")
    for r in records:
        stem = r["id"]
        fa = check_map(explained / "maps" / f"{stem}_fa_mean.nii.gz", r["file"])
        mask = check_map(explained / "maps" / f"{stem}_mask.nii.gz", r["file"])
        assert fa.any() and mask[tuple(n // 2 for n in mask.shape)] == 1  # the brain, the ventricle filled in
        assert not mask[:3, :3, :3].any() and not mask[-3:, -3:, -3:].any()  # not the noisy corners
        translated = nib.load(str(explained / "maps" / f"{stem}_translated.nii.gz")).get_fdata()
        assert translated.max() > 20  # in the scan's own units (its tissue is ~100), not [-1, 1]
    predictions = list(csv.DictReader((explained / "predictions.csv").open()))
    assert {r["target_class"] for r in predictions if r.get("target_class")} <= {"CN", "AD"}

    mci = next(r for r in adni["rows"] if r["DX"] == "MCI")
    single = tmp_path / "single"
    cli("explain", run3d, "--image", adni["data"] / mci["path"], "--out", single, "--n-samples", "3",
        "--min-probability", "0.5", "--target-class", "AD")
    check_map(single / "maps" / f"{mci['PTID']}_T1w_fa_mean.nii.gz", adni["data"] / mci["path"])

    output = cli("evaluate", explained, "--csv", adni["csv"], "--split", "test")
    assert "not scored (the table has no ground-truth maps" in output and "classification: accuracy" in output
    cli("report", run3d, "--explained", explained, "--csv", adni["csv"], "-o", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "Feature-attribution maps" in html
    assert _listing(adni["data"]) == adni["before"]


def test_a_2d_model_writes_its_map_into_the_scans_volume(adni, tmp_path):
    out = adni["root"] / "runs"
    with pytest.warns(UserWarning):
        cli("train", *config_file(adni, "own2d", [16, 16]), "--out", out, "--name", "r2d", "--quiet")
    scan = adni["data"] / adni["rows"][1]["path"]
    cli("explain", out / "r2d", "--image", scan, "--out", tmp_path / "x", "--n-samples", "3",
        "--min-probability", "0.5")
    fa = check_map(tmp_path / "x" / "maps" / f"{adni['rows'][1]['PTID']}_T1w_fa_mean.nii.gz", scan)
    filled = np.flatnonzero(np.abs(fa).sum((0, 1)))
    assert 1 <= len(filled) <= 3 and abs(filled.mean() - fa.shape[2] / 2) < fa.shape[2] / 4  # mid-brain slice


def test_bad_input_on_this_path_is_one_line_per_row(adni, tmp_path):
    # the default data.max_brain_cropped refuses the big head, naming its row and file; no run folder is left
    args = config_file(adni, "strict", [16, 16, 16], "data.max_brain_cropped=0.01")
    result = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "runs"), "--name", "strict", "--quiet"])
    assert result.exit_code == 2
    assert "row 4: fitting the shape [16, 16, 16] would cut off" in result.output
    assert "002_S_0002_T1w.nii.gz" in result.output and not (tmp_path / "runs" / "strict").exists()
    # string labels without data.classes: one line that shows the fix
    plain = config_file(adni, "plain", [16, 16, 16], "data.classes=null")
    result = runner.invoke(app, ["data", "check", str(adni["csv"]), *plain[:2], "--set", "data.classes=null"])
    assert result.exit_code == 1 and result.output.count("not class numbers") == 1
    assert "data.classes: [CN, AD]" in result.output


def test_classes_by_name_and_string_labels_without_them(tmp_path):
    from icam.config import load_config
    from icam.data.table import read_table

    rows = [[f"{i}.nii.gz", dx] for i, dx in enumerate(("CN", "AD", "MCI", "AD", "SMC"))]
    (tmp_path / "t.csv").write_text("image,DX\n" + "\n".join(",".join(r) for r in rows) + "\n")
    for name, _ in rows:
        (tmp_path / name).touch()
    data = load_config(None, ["data.kind=csv", f"data.csv={tmp_path / 't.csv'}", "data.shape=[16,16]",
                              "data.columns.label=DX", "data.classes=[CN, AD]"]).data
    table = read_table(tmp_path / "t.csv", data)
    assert [r.label for r in table.rows] == [0, 1, 1] and not table.problems
    assert [(p.row, p.message) for p in table.excluded] == [
        (4, "label 'MCI' is not one of data.classes [CN, AD]"), (6, "label 'SMC' is not one of data.classes [CN, AD]")]
    predicting = read_table(tmp_path / "t.csv", data, require_label=False)  # MCI can still be predicted
    assert [r.raw_label for r in predicting.rows if r.label == -1] == ["MCI", "SMC"]
    plain = read_table(tmp_path / "t.csv", data.model_copy(update={"classes": None}))
    assert len(plain.problems) == 1 and plain.problems[0].row is None
    assert "'CN' (rows 2)" in plain.problems[0].message and "data.classes: [CN, AD]" in plain.problems[0].message
    numbers = read_table(tmp_path / "t.csv", data.model_copy(update={"classes": [1, 2]}))  # numbers match as numbers
    assert not numbers.rows and len(numbers.excluded) == 5


def test_foreground_mask_is_the_head_not_the_noisy_background():
    from icam.data.nifti import foreground_mask

    shape, affine = grid(3.0)
    volume = head(shape, affine, 0.4, np.random.default_rng(1))
    mask = foreground_mask(volume)
    index = np.indices(shape).reshape(3, -1).astype(float)
    world = (affine[:3, :3] @ index + affine[:3, 3:4]) / HEAD_MM[:, None]
    inside = (np.sqrt((world ** 2).sum(0)) < 1).reshape(shape)
    agreement = (mask.astype(bool) == inside).mean()
    assert agreement > 0.97 and mask[tuple(n // 2 for n in shape)] == 1  # the dark ventricle is filled in
    assert volume[~inside].max() > volume[inside].min()  # the corners are brighter than the ventricle


def test_pad_crop_centres_the_window_on_the_brain_and_resize_keeps_its_aspect():
    from icam.data.nifti import Spatial, apply_window, fit_window

    mask = np.zeros((60, 40, 30), dtype=np.float32)
    mask[34:58, 8:30, 5:25] = 1  # a brain off the image's centre
    spatial = Spatial((32, 32, 32), None, None, "pad_crop", 2)
    window = fit_window(mask.shape, mask, spatial)
    assert apply_window(mask, window, "nearest").sum() == mask.sum()  # nothing cut, though the image is larger
    centred = fit_window(mask.shape, None, spatial)  # without a mask: the image's centre, as before
    assert apply_window(mask, centred, "nearest").sum() < mask.sum()
    resized = fit_window(mask.shape, mask, Spatial((16, 16, 16), None, None, "resize", 2))
    assert np.allclose(resized.step, resized.step[0])  # one zoom factor: no stretching
    assert apply_window(mask, resized, "nearest").sum() > 0
    slices = fit_window(mask.shape, mask, Spatial((32, 32), None, None, "pad_crop", 2))
    assert slices.size == (32, 32, 30)  # 2D: the slice axis is kept whole


def test_a_split_needs_a_split_column_or_the_runs_splits(adni, run3d, tmp_path):
    from icam.explain import open_run
    from icam.scans import load_inputs

    model = open_run(run3d)
    assert len(load_inputs(model, adni["csv"], "test")) == 2  # the run's splits.csv
    model.run_dir = None  # a checkpoint file copied out of its run folder
    with pytest.raises(ValueError, match=r"no split column, and the run has no splits\.csv"):
        load_inputs(model, adni["csv"], "test")


def test_python_preprocess_and_explain_file(adni, run3d, tmp_path):
    import torch

    from icam.explain import open_run

    model = open_run(run3d)
    scan_path = adni["data"] / adni["rows"][0]["path"]
    scan = model.preprocess(scan_path)
    assert scan.image.shape == (1, 1, 16, 16, 16) and scan.mask.shape == (1, 1, 16, 16, 16)
    explanation = model.explain_file(scan_path, out=tmp_path, n_samples=3, min_probability=0.5)
    assert explanation.mean.shape == (1, 1, 16, 16, 16)
    check_map(tmp_path / "maps" / "002_S_0000_T1w_fa_mean.nii.gz", scan_path)  # as icam explain --image writes
    assert (tmp_path / "maps" / "002_S_0000_T1w_mask.nii.gz").is_file()
    assert json.loads((tmp_path / "icam-outputs.json").read_text())["complete"]
    raw = torch.from_numpy(nib.load(str(scan_path)).get_fdata()[:16, :16, :16]).float()[None, None]
    with pytest.warns(UserWarning, match="far from the \\[-1, 1\\] range"):
        model.explain(raw, n_samples=2, min_probability=0.5)


def test_a_mask_of_another_shape_than_its_image_is_refused_before_training(tmp_path):
    from icam.config import load_config
    from icam.data import DataError, build_cohorts

    rng = np.random.default_rng(0)
    for name, shape in (("a", (16, 16, 16)), ("b", (16, 16, 16)), ("a_mask", (16, 16, 16)), ("b_mask", (16, 16, 12))):
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "t.csv").write_text("image,label,mask\na.nii.gz,0,a_mask.nii.gz\nb.nii.gz,1,b_mask.nii.gz\n")
    data = load_config(None, ["data.kind=csv", f"data.csv={tmp_path / 't.csv'}", "data.shape=[16,16,16]"]).data
    with pytest.raises(DataError, match=r"row 3: mask shape \[16, 16, 12\] differs from the image's \[16, 16, 16\]"):
        build_cohorts(data, seed=0)


def test_a_2d_image_in_a_3d_cohort_is_refused_by_check_train_and_explain(adni, run3d, tmp_path):
    shape, affine = grid(2.0)
    volume = head(shape, affine, 0.25, np.random.default_rng(1))
    slice_file = tmp_path / "slice2d.nii.gz"
    scanner_file(slice_file, volume[:, :, shape[2] // 2], affine)  # one 48x56 slice among volumes
    rows = [{**r, "path": str(adni["data"] / r["path"])} for r in adni["rows"]]
    rows.append({"PTID": "002_S_0099", "path": str(slice_file), "DX": "CN", "AGE": 70})
    table = tmp_path / "mixed.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    args = config_file(adni, "mixed", [16, 16, 16], f"data.csv={table}")
    check = runner.invoke(app, ["data", "check", str(table), *args[:2]])
    assert check.exit_code == 1 and "row 21: a 2D image (48x56) among 3D volumes" in check.stderr
    assert str(slice_file) in check.stderr
    train = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "runs"), "--name", "mixed", "--quiet"])
    assert train.exit_code == 2 and "row 21: a 2D image (48x56), but the model takes 3D volumes" in train.output
    assert not (tmp_path / "runs" / "mixed").exists()
    out = tmp_path / "explained"
    explain = runner.invoke(app, ["explain", str(run3d), "--image", str(slice_file), "--out", str(out),
                                  "--n-samples", "2", "--figures", "none"])
    assert explain.exit_code == 2 and f"{slice_file}: a 2D image (48x56), but the model takes 3D" in explain.stderr
    assert not list(out.glob("maps/*"))

"""A BIDS dataset in: scans found with pybids, labels and targets from participants.tsv and
sessions.tsv, read as a CSV's rows are, through data check, training and explanation."""

import csv
import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from icam.cli import EXIT_BAD_INPUT, app

from .conftest import TINY_TRAINING

runner = CliRunner()
DIAGNOSES = {"01": "CN", "02": "AD", "03": "CN", "04": "AD", "05": "CN", "06": "AD", "07": "CN", "08": "AD",
             "09": "MCI", "10": "CN", "11": "AD", "12": "CN"}
SESSIONS = {"01": ("1", "2"), "02": ("1", "2"), "05": ("1", "2")}  # longitudinal subjects; the rest one scan
NO_SCAN = "12"  # in participants.tsv, without a T1w


def scan(path, diagnosis: str, rng) -> None:
    volume = rng.normal(0, 5, (20, 22, 20))
    volume[4:16, 4:18, 4:16] += 100  # a head
    volume[8:12, 8:14, 8:12] -= 60 if diagnosis == "AD" else 20  # its ventricles, larger in AD
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))


def write_dataset(root):
    rng = np.random.default_rng(0)
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    with (root / "participants.tsv").open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["participant_id", "diagnosis", "age"])
        for number, dx in DIAGNOSES.items():
            writer.writerow([f"sub-{number}", dx, 60 + int(number)])
    for number, dx in DIAGNOSES.items():
        if number == NO_SCAN:
            continue
        subject = f"sub-{number}"
        if number in SESSIONS:
            for session in SESSIONS[number]:
                scan(root / subject / f"ses-{session}" / "anat" / f"{subject}_ses-{session}_T1w.nii.gz", dx, rng)
            (root / subject / f"{subject}_sessions.tsv").write_text(
                "session_id\tage\n" + "".join(f"ses-{s}\t{60 + int(number) + 2 * int(s)}\n" for s in SESSIONS[number]))
        else:
            scan(root / subject / "anat" / f"{subject}_T1w.nii.gz", dx, rng)


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids") / "ds"
    write_dataset(root)
    before = listing(root)
    for folder, _, files in os.walk(root):  # a read-only shared dataset
        for name in files:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP)
    yield root
    for folder, _, _ in os.walk(root):
        os.chmod(folder, stat.S_IRWXU)
    assert listing(root) == before


SETTINGS = ["data.columns.label=diagnosis", "data.columns.target=age", "data.classes=[CN, AD]"]


def sets(*items):
    return [a for item in items for a in ("--set", item)]


def test_the_fixture_is_valid_bids(dataset):
    from bids_validator import BIDSValidator

    validator = BIDSValidator()
    files = [f"/{p.relative_to(dataset)}" for p in dataset.rglob("*") if p.is_file()]
    assert len(files) > 10 and [f for f in files if not validator.is_bids(f)] == []


def test_data_check_says_what_it_found_and_left_out(dataset):
    result = runner.invoke(app, ["data", "check", str(dataset), *sets(*SETTINGS)])
    assert result.exit_code == 0, result.output
    assert "BIDS: 14 scans of 11 subjects, 6 sessions (ses-*) of 3; no scan for 1 participant(s): sub-12; 0 scans " \
           "without a target" in result.stdout
    assert "scan 13: label 'MCI' is not one of data.classes [CN, AD] (" in result.stdout  # left out, named
    assert "13 usable rows of 14, 10 subjects" in result.stdout and "target: 13 known" in result.stdout


@pytest.fixture(scope="module")
def bids_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["train", "-q", "--out", str(out), "--name", "bids",
                                 *sets("data.kind=bids", f"data.bids_root={dataset}", "data.shape=[16,16,16]",
                                       "data.max_brain_cropped=1", *SETTINGS, *TINY_TRAINING, "train.steps=2",
                                       "train.images_per_class=1", "data.split_fractions=[0.5, 0.25, 0.25]")])
    assert result.exit_code == 0, result.output
    return out / "bids"


def test_train_explain_and_report_on_a_dataset(dataset, bids_run, tmp_path):
    splits = list(csv.DictReader((bids_run / "splits.csv").open()))
    by_subject: dict[str, set] = {}
    for row in splits:
        by_subject.setdefault(row["subject"], set()).add(row["split"])
    assert len(splits) == 13 and all(len(s) == 1 for s in by_subject.values())  # sessions stay together
    assert len([r for r in splits if r["subject"] == "sub-01"]) == 2
    data = json.loads((bids_run / "data.json").read_text())
    assert data["bids"]["without_scan"] == ["sub-12"]
    out = tmp_path / "explained"
    result = runner.invoke(app, ["explain", str(bids_run), "--bids", str(dataset), "--out", str(out), "--which",
                                 "last", "--n-samples", "2", "--min-probability", "0.5", "--figures", "none"])
    assert result.exit_code == 0, result.output
    predictions = {r["id"]: r for r in csv.DictReader((out / "predictions.tsv").open(), delimiter="\t")}
    assert predictions["sub-01_ses-2_T1w"]["target"] == "65.0" and predictions["sub-09_T1w"]["label"] == "MCI"
    report = runner.invoke(app, ["report", str(bids_run), "--explained", str(out), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "prediction results" in (tmp_path / "r.html").read_text()  # the figure of the dataset's predictions


def test_explanations_of_a_dataset_are_a_bids_derivative_pybids_indexes(dataset, bids_run, tmp_path):
    from bids import BIDSLayout

    out = tmp_path / "derivatives" / "icam"
    result = runner.invoke(app, ["explain", str(bids_run), "--bids", str(dataset), "--out", str(out), "--which",
                                 "last", "--n-samples", "2", "--min-probability", "0.5", "--figures", "none"])
    assert result.exit_code == 0, result.output
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "icam"
    checkpoint = json.loads((out / "icam-outputs.json").read_text())["producer"]["checkpoint_sha256"]
    assert checkpoint in description["GeneratedBy"][0]["Description"]
    layout = BIDSLayout(str(dataset), derivatives=str(out), validate=False)
    means = layout.get(scope="derivatives", desc="famean", extension=".nii.gz")
    assert len(means) == 14  # every scan, MCI too: it is predicted and explained, not trained on
    assert {m.entities["subject"] for m in means} == {f"{i:02d}" for i in range(1, 12)}
    longitudinal = layout.get(scope="derivatives", subject="01", session="2", desc="famean", extension=".nii.gz")
    assert [m.filename for m in longitudinal] == ["sub-01_ses-2_desc-famean_T1w.nii.gz"]
    for desc in ("favar", "translation"):
        assert len(layout.get(scope="derivatives", desc=desc, extension=".nii.gz")) == 14
    assert len(layout.get(scope="derivatives", desc="brain", suffix="mask", extension=".nii.gz")) == 14
    sidecar = json.loads(Path(longitudinal[0].path.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Samples"] == 2 and sidecar["TargetClass"] in ("CN", "AD") and sidecar["Reference"] == "input"
    assert sidecar["Sources"] == [str(dataset / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz")]
    scored = runner.invoke(app, ["report", str(bids_run), "--explained", str(out), "-o", str(tmp_path / "r.html")])
    assert scored.exit_code == 0, scored.output


def test_bad_datasets_are_one_line_naming_the_file(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root)
    check = ["data", "check", str(root), *sets(*SETTINGS)]
    text = (root / "participants.tsv").read_text()
    (root / "participants.tsv").write_text(text.replace("sub-03\tCN\t63", "sub-03\tCN\tn/a"))
    result = runner.invoke(app, check)  # BIDS writes an unknown value as n/a: a scan without a target, no problem
    assert result.exit_code == 0 and "1 scans without a target" in result.stdout, result.output
    (root / "participants.tsv").rename(tmp_path / "participants.tsv")
    result = runner.invoke(app, check)
    assert result.exit_code == EXIT_BAD_INPUT and f"{root / 'participants.tsv'}: no participants.tsv" in result.stderr
    lines = (tmp_path / "participants.tsv").read_text().splitlines()
    (root / "participants.tsv").write_text("\n".join(line for line in lines if not line.startswith("sub-03")) + "\n")
    result = runner.invoke(app, check)
    assert result.exit_code == EXIT_BAD_INPUT and "sub-03 has scans but no row in participants.tsv" in result.stderr
    assert "skip_bad" not in result.output
    result = runner.invoke(app, [*check, "--set", "data.echo=2"])
    assert result.exit_code == EXIT_BAD_INPUT and "echo" in result.stderr
    result = runner.invoke(app, [*check, "--set", "data.session=9"])
    assert result.exit_code == EXIT_BAD_INPUT and "no scans match suffix=T1w" in result.stderr
    (root / "dataset_description.json").write_text('{"Name": "tiny"}')
    result = runner.invoke(app, check)
    assert result.exit_code == EXIT_BAD_INPUT and "dataset_description.json lacks BIDSVersion" in result.stderr

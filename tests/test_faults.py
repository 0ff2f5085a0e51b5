"""Nothing lost, nothing mixed, nothing leaked: faults and bad input through the command line.
Each case asserts the one-line error (or the refusal) and that nothing else changed on disk."""

import base64
import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from icam.cli import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, app

from .conftest import TINY

runner = CliRunner()


def sets(*overrides):
    return [x for o in overrides for x in ("--set", o)]


def square_scan(path, seed: int) -> None:
    """A 64×64 squares-like image, as the shared squares run was trained on."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 50, (64, 64, 1))
    image[24:40, 24:40] += 300 * (seed % 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(path))


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def other_model(run_dir, tmp_path):
    """A second model: the shared run's folder with a checkpoint of other bytes (hence another hash)."""
    import shutil

    from icam.checkpoint import load_checkpoint, save_checkpoint

    other = tmp_path / "other-run"
    shutil.copytree(run_dir, other)
    state = load_checkpoint(other, "last")
    save_checkpoint({**state, "step": state["step"] + 1}, other / "checkpoints" / "last.pt")
    return other


@pytest.fixture
def same_names(tmp_path):
    """The commonest layout: sub-XX/T1.nii.gz, no subject column."""
    rows = []
    for i in range(12):
        square_scan(tmp_path / f"sub-{i:02d}" / "T1.nii.gz", i)
        rows.append([f"sub-{i:02d}/T1.nii.gz", i % 2])
    with (tmp_path / "cohort.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], *rows])
    return tmp_path / "cohort.csv"


def test_same_file_names_in_subject_folders_are_subjects_and_distinct_outputs(same_names, run_dir, tmp_path):
    check = runner.invoke(app, ["data", "check", str(same_names)])
    assert check.exit_code == 0, check.output
    assert "12 subjects" in check.stdout and "its subject is the first folder that tells scans apart" in check.stdout
    assert "'val': 0" not in check.stdout and "warning" not in check.output  # the subjects spread over the splits
    out = tmp_path / "explained"
    result = runner.invoke(app, ["explain", str(run_dir), "--csv", str(same_names), "--out", str(out),
                                 "--n-samples", "2", "--min-probability", "0.5", "--which", "last",
                                 "--figures", "none"])
    assert result.exit_code == 0, result.output
    ids = [r["id"] for r in csv.DictReader((out / "predictions.csv").open())]
    assert len(set(ids)) == 12 and "sub-03_T1" in ids
    assert len(list((out / "maps").glob("*_fa_mean.nii.gz"))) == 12


def test_bids_layout_subjects_are_the_subject_folders_and_an_empty_split_is_said(tmp_path):
    rows = []
    for i in range(8):
        square_scan(tmp_path / "rawdata" / f"sub-{i:02d}" / "anat" / "T1w.nii.gz", i)
        rows.append([f"rawdata/sub-{i:02d}/anat/T1w.nii.gz", i % 2, f"{60 + i}"])
    with (tmp_path / "participants.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "label", "age"], *rows])
    check = runner.invoke(app, ["data", "check", str(tmp_path / "participants.csv")])
    assert check.exit_code == 0 and "8 subjects" in check.stdout  # not one subject called "anat"
    from icam.config import load_config
    from icam.data.table import read_table

    table = read_table(tmp_path / "participants.csv", load_config(None, ["data.kind=csv", "data.csv=x",
                                                                         "data.shape=[64,64]"]).data)
    assert [r.subject for r in table.rows][:2] == ["sub-00", "sub-01"]
    assert table.rows[0].id == "sub-00_anat_T1w"
    with (tmp_path / "one.csv").open("w", newline="") as f:  # one subject's scans: no val or test possible
        csv.writer(f).writerows([["image", "label", "subject"], *[[r[0], r[1], "s"] for r in rows]])
    check = runner.invoke(app, ["data", "check", str(tmp_path / "one.csv")])
    assert "warning: the val split is empty (1 subject;" in check.stderr


def test_a_scan_listed_twice_is_one_line_per_row(same_names):
    with same_names.open("a", newline="") as f:
        csv.writer(f).writerow(["sub-01/T1.nii.gz", 0])
    result = runner.invoke(app, ["data", "check", str(same_names)])
    assert result.exit_code == 1
    assert "row 14: the image is also on row 3 under another subject" not in result.output  # same folder: same subject
    assert "row 14: the image is also on row 3: a scan can be used once" in result.stderr


def test_report_embeds_only_files_inside_its_folders_and_escapes_names(run_dir, tmp_path):
    secret = tmp_path / "private.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"SECRET" * 20)
    explained = tmp_path / "<img src=x onerror=alert(1)>"
    (explained / "figures").mkdir(parents=True)
    (explained / "predictions.csv").write_text("row,id,label,predicted_class\n")
    (explained / "summary.json").write_text(json.dumps({"outliers": [
        {"id": "a", "error": 1.0, "figure": str(secret)}, {"id": "b", "error": 1.0, "figure": "../private.png"}]}))
    result = runner.invoke(app, ["report", str(run_dir), "--explained", str(explained), "-o",
                                 str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:40] not in page
    assert "<img src=x onerror" not in page  # the folder's name, escaped wherever it appears


def test_explaining_into_another_models_folder_is_refused_unless_overwrite(run_dir, other_model, same_names,
                                                                           tmp_path):
    out = tmp_path / "x"
    args = ["--csv", str(same_names), "--out", str(out), "--n-samples", "2", "--min-probability", "0.5",
            "--which", "last", "--figures", "none"]
    assert runner.invoke(app, ["explain", str(run_dir), *args, "--limit", "2"]).exit_code == 0
    assert len(list((out / "maps").glob("*_fa_mean.nii.gz"))) == 2  # --limit: at most
    before = listing(out)
    other = runner.invoke(app, ["explain", str(other_model), *args])
    assert other.exit_code == EXIT_BAD_INPUT and "outputs of another model" in other.stderr
    assert listing(out) == before
    replaced = runner.invoke(app, ["explain", str(other_model), *args, "--overwrite", "--limit", "3"])
    assert replaced.exit_code == 0, replaced.output
    assert len(list((out / "maps").glob("*_fa_mean.nii.gz"))) == 3  # the old maps were cleared


def test_explaining_into_a_folder_of_other_files_is_refused(run_dir, same_names, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = runner.invoke(app, ["explain", str(run_dir), "--csv", str(same_names), "--out", str(tmp_path / "mine"),
                                 "--which", "last"])
    assert result.exit_code == EXIT_BAD_INPUT and "did not write" in result.stderr
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_synth_never_writes_into_a_folder_with_files(tmp_path):
    (tmp_path / "cohort.csv").write_text("image,label\nmine.nii.gz,0\n")
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--n", "4"])
    assert result.exit_code == EXIT_BAD_INPUT and "not empty" in result.stderr
    assert (tmp_path / "cohort.csv").read_text() == "image,label\nmine.nii.gz,0\n"
    for bad in (["--n", "0"], ["--slices", "0"]):
        result = runner.invoke(app, ["synth", "--out", str(tmp_path / "new"), *bad])
        assert result.exit_code == EXIT_BAD_INPUT and "Traceback" not in result.output


def test_a_read_only_output_folder_is_an_environment_error_before_the_data_are_read(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    os.chmod(out, 0o555)
    # root ignores permissions: run as nobody where we can, else check the error path with a file in the way
    code = ("import sys; from typer.testing import CliRunner; from icam.cli import app; "
            f"r = CliRunner().invoke(app, ['train', '--out', {str(out)!r}, '-q', '--set', 'train.steps=1']); "
            "print(r.exit_code); print(r.output)")
    if os.geteuid() == 0:
        blocked = tmp_path / "file"
        blocked.write_text("")
        result = runner.invoke(app, ["train", "--out", str(blocked / "runs"), "-q", "--set", "train.steps=1"])
        assert result.exit_code == EXIT_ENVIRONMENT, result.output
        assert "error: Not a directory" in result.stderr and "Traceback" not in result.output
        for command in (["synth", "--out", str(blocked / "s"), "--n", "4"],
                        ["config", "-c", str(blocked / "c.yaml")]):
            result = runner.invoke(app, command)
            assert result.exit_code in (EXIT_BAD_INPUT, EXIT_ENVIRONMENT) and "Traceback" not in result.output
    else:  # pragma: no cover - CI runs as root
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.stdout.splitlines()[0] == str(EXIT_ENVIRONMENT)
    assert list(out.iterdir()) == []


def test_resume_of_a_finished_run_changes_nothing_and_a_bad_init_leaves_no_folder(run_dir, tmp_path):
    from pathlib import Path

    run_dir = Path(run_dir)
    summary = (run_dir / "summary.json").read_text()
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 0 and "already finished" in result.stdout
    assert (run_dir / "summary.json").read_text() == summary
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    args = ["train", "-q", "--out", str(tmp_path / "runs"), "--name", "r", *sets(*TINY)]
    assert runner.invoke(app, [*args, "--init-from", str(bad)]).exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / "runs" / "r").exists()


def test_small_table_mistakes_are_one_line_each(tmp_path):
    square_scan(tmp_path / "a.nii.gz", 0)
    square_scan(tmp_path / "b.nii.gz", 1)
    cases = {
        "\ufeffimage,label\na.nii.gz,0\nb.nii.gz,1\n": None,  # a UTF-8 byte order mark (Excel) is fine
        "image,label,target\na.nii.gz,0,50\nb.nii.gz,,70\n": "row 3: empty label, and no data.class_thresholds",
        "image,label\na.nii.gz,0\nb.nii.gz,5\n": "row 3: label 5 (rows 3) makes 6 classes, but 1, 2, 3, 4 have no",
    }
    for text, expected in cases.items():
        (tmp_path / "t.csv").write_text(text, encoding="utf-8")
        result = runner.invoke(app, ["data", "check", str(tmp_path / "t.csv")])
        if expected is None:
            assert "no 'image' column" not in result.output
        else:
            assert result.exit_code == 1 and expected in result.stderr, result.output
    (tmp_path / "t.csv").write_text("image,label\na.nii.gz,0\nb.nii.gz,1\n")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "t.csv"), "--set", "data.columns.mask=msk"])
    assert result.exit_code == EXIT_BAD_INPUT and "no 'msk' column (data.columns.mask)" in result.stderr
    result = runner.invoke(app, ["train", "--set", "train.steps=true"])
    assert result.exit_code == EXIT_BAD_INPUT and "'steps' expects a number, got true" in result.stderr


def test_a_run_without_validation_points_to_its_last_checkpoint(tmp_path):
    from icam.checkpoint import CheckpointError, resolve_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="--which last"):
        resolve_checkpoint(tmp_path, "best")


def test_a_killed_checkpoint_write_leaves_no_temporary_file(tmp_path):
    from icam.checkpoint import save_checkpoint

    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"")  # what kill -9 during a write leaves
    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_run_folder_is_locked_while_training(tmp_path):
    from icam.run import run_lock

    with run_lock(tmp_path), pytest.raises(FileExistsError, match="another icam process is training"), \
            run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released
        pass


def test_evaluate_refuses_a_folder_of_maps_from_two_models(same_names, run_dir, other_model, tmp_path):
    import shutil

    rows = list(csv.reader(same_names.open()))
    for row in rows[1:]:
        gt = np.zeros((64, 64, 1), dtype=np.float32)
        gt[24:40, 24:40] = 1
        nib.save(nib.Nifti1Image(gt, np.eye(4)), str(same_names.parent / row[0].replace("T1", "gt")))
    with same_names.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0] + ["gt_map"]] + [r + [r[0].replace("T1", "gt")] for r in rows[1:]])
    folders = {}
    for name, model in (("a", run_dir), ("b", other_model)):
        folders[name] = tmp_path / name
        result = runner.invoke(app, ["explain", str(model), "--csv", str(same_names), "--out", str(folders[name]),
                                     "--which", "last", "--n-samples", "2", "--min-probability", "0.5", "--limit", "3",
                                     "--figures", "none"])
        assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["evaluate", str(folders["a"]), "--csv", str(same_names)]).exit_code == 0
    copied = next((folders["b"] / "maps").glob("*_fa_mean.nii.gz")).name
    shutil.copy(folders["b"] / "maps" / copied, folders["a"] / "maps")
    mixed = runner.invoke(app, ["evaluate", str(folders["a"]), "--csv", str(same_names)])
    assert mixed.exit_code == EXIT_BAD_INPUT and "come from 2 different models" in mixed.stderr


def test_an_accelerator_the_machine_lacks_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - CI has no GPU
        pytest.skip("this machine has a GPU")
    tiny = [o for o in TINY if not o.startswith("runtime.accelerator")]
    result = runner.invoke(app, ["train", "--accelerator", "gpu", "--out", str(tmp_path), "-q", *sets(*tiny)])
    assert result.exit_code == EXIT_ENVIRONMENT and "runtime.accelerator=gpu" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder


# -- a new user's folder and faults, tried again ---------------------------------------------------------------

EXPLAIN_FAST = ["--n-samples", "2", "--min-probability", "0.5", "--which", "last", "--figures", "none"]


def icam_process(*args) -> subprocess.Popen:
    """`python -m icam …` in its own process (one the test can kill)."""
    return subprocess.Popen([sys.executable, "-m", "icam", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@contextlib.contextmanager
def file_size_limit(size: int):
    """No file this process writes may grow past ``size`` bytes meanwhile (RLIMIT_FSIZE: a write
    past it fails as on a full disk; Python ignores the signal that comes with it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def hidden_files(folder):
    return [p.name for p in folder.rglob(".*")]


def test_a_second_explain_into_a_folder_being_written_is_refused(run_dir, same_names, tmp_path):
    from icam.explain import open_run
    from icam.outputs import ExplanationFolder, producer_of

    out = tmp_path / "x"
    args = ["explain", str(run_dir), "--csv", str(same_names), "--out", str(out), *EXPLAIN_FAST]
    folder = ExplanationFolder(out)
    with folder.claim(producer_of(open_run(run_dir, "last"))):  # the first one, running
        assert folder.complete() is False
        before = listing(out)
        second = runner.invoke(app, args)
        assert second.exit_code == EXIT_BAD_INPUT and f"another icam explain is writing into {out}" in second.stderr
        assert listing(out) == before
    assert folder.complete() is True and not (out / ".lock").exists()  # done: lock released and gone
    assert runner.invoke(app, [*args, "--limit", "1"]).exit_code == 0


def test_an_interrupted_explain_is_said_by_evaluate_and_report(run_dir, same_names, tmp_path):
    import signal
    import time

    out = tmp_path / "killed"
    process = icam_process("explain", run_dir, "--csv", same_names, "--out", out, "--n-samples", "500",
                           "--which", "last")
    deadline = time.time() + 120
    while not (out / "icam-outputs.json").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # kill -9 as soon as it has claimed the folder
    process.wait()
    for command in (["evaluate", str(out), "--csv", str(same_names)],
                    ["evaluate", str(out), "--csv", str(same_names), "--run", str(run_dir)],
                    ["report", str(run_dir), "--explained", str(out), "-o", str(tmp_path / "r.html")]):
        result = runner.invoke(app, command)
        assert result.exit_code == EXIT_BAD_INPUT, (command, result.output)
        assert "incomplete explain output (interrupted?); rerun icam explain" in result.stderr
    assert not (tmp_path / "r.html").exists() and not (out / "evaluation.json").exists()
    again = runner.invoke(app, ["explain", str(run_dir), "--csv", str(same_names), "--out", str(out), *EXPLAIN_FAST,
                                "--limit", "2"])  # the lock file a killed process leaves blocks nobody
    assert again.exit_code == 0, again.output
    assert runner.invoke(app, ["evaluate", str(out), "--csv", str(same_names)]).exit_code == 0


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(run_dir, same_names, tmp_path):
    runs = tmp_path / "runs"
    with file_size_limit(200_000):  # the config, metrics and logs fit; a checkpoint does not
        train = runner.invoke(app, ["train", "-q", "--out", str(runs), "--name", "full", *sets(*TINY, "train.steps=2")])
    assert train.exit_code == EXIT_ENVIRONMENT, train.output
    error = [line for line in train.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(runs / "full" / "checkpoints") in error[0] and "Traceback" not in train.output
    assert hidden_files(runs / "full") == []  # no lock, no partial checkpoint
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "icam"
    for warm in (False, True):  # the preprocessing cache's files fail first, then (filled) the maps
        out = tmp_path / f"explained-{warm}"
        if warm:
            assert runner.invoke(app, ["explain", str(run_dir), "--csv", str(same_names), "--out",
                                       str(tmp_path / "fills-the-cache"), *EXPLAIN_FAST, "--limit", "1"]).exit_code == 0
        with file_size_limit(2_000):
            explain = runner.invoke(app, ["explain", str(run_dir), "--csv", str(same_names), "--out", str(out),
                                          *EXPLAIN_FAST])
        assert explain.exit_code == EXIT_ENVIRONMENT, explain.output
        error = [line for line in explain.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "/." not in error[0], error  # the file's own name, not a hidden temporary one
        assert str(out / "maps" if warm else cache) in error[0]
        assert hidden_files(out) == [] and [p for p in hidden_files(cache) if "tmp" in p] == []


def test_labels_are_matched_after_stripping_and_a_case_mismatch_is_said(tmp_path):
    rows = [["image", "label"]]
    for i, dx in enumerate(["CN", "cn", "AD", "Ad", " ad ", "CN ", "MCI", "cn"]):
        square_scan(tmp_path / f"s{i}.nii.gz", i)
        rows.append([f"s{i}.nii.gz", dx])
    with (tmp_path / "t.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    result = runner.invoke(app, ["data", "check", str(tmp_path / "t.csv"), "--set", "data.classes=[CN, AD]"])
    assert result.exit_code == 0, result.output
    assert "images per class: CN 4, AD 3" in result.stdout and "1 rows left out by data.classes" in result.stdout
    assert "labels matched to data.classes only when case is ignored: 'cn' as CN (rows 3, 9); 'Ad' as AD (rows 5); " \
           "'ad' as AD (rows 6)" in result.stderr


def test_tables_as_spreadsheets_write_them(tmp_path):
    for i in range(4):
        square_scan(tmp_path / f"s{i}.nii.gz", i)
    tables = {"spaces.csv": "image, label , age\n" + "".join(f"s{i}.nii.gz, {i % 2}, {60 + i}\n" for i in range(4)),
              "semicolons.csv": "image;label;age\n" + "".join(f"s{i}.nii.gz;{i % 2};{60 + i},5\n" for i in range(4)),
              "tabs.tsv": "image\tlabel\tage\n" + "".join(f"s{i}.nii.gz\t{i % 2}\t{60 + i}\n" for i in range(4))}
    for name, text in tables.items():
        (tmp_path / name).write_text(text)
        result = runner.invoke(app, ["data", "check", str(tmp_path / name), "--set", "data.columns.target=age"])
        assert "4 usable rows of 4" in result.stdout, (name, result.output)
        assert "target: 4 known, 6" in result.stdout, (name, result.output)  # 60.5 ± … with a decimal comma too


def test_each_hint_fits_its_error(run_dir, tmp_path):
    square_scan(tmp_path / "a.nii.gz", 0)
    (tmp_path / "t.csv").write_text("file,label\na.nii.gz,0\n")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    cases = {"no column": ["train", "-q", "--out", str(tmp_path / "runs"),
                           *sets("data.kind=csv", f"data.csv={tmp_path / 't.csv'}", "data.shape=[64,64]")],
             "no table": ["train", "-q", "--out", str(tmp_path / "runs"),
                          *sets("data.kind=csv", f"data.csv={tmp_path / 'none.csv'}", "data.shape=[64,64]")],
             "bad image": ["predict", str(run_dir), "--which", "last", "--image", str(tmp_path / "broken.nii.gz"),
                           "-o", str(tmp_path / "p.csv")]}
    for case, command in cases.items():
        result = runner.invoke(app, command)
        assert result.exit_code == EXIT_BAD_INPUT, (case, result.output)
        assert "skip_bad" not in result.output, case
    assert "no 'image' column; the header has: file, label" in runner.invoke(app, cases["no column"]).stderr
    assert str((tmp_path / "none.csv").absolute()) in runner.invoke(app, cases["no table"]).stderr
    bad = runner.invoke(app, cases["bad image"]).stderr
    assert f"{tmp_path / 'broken.nii.gz'}: cannot read the image" in bad and "inputs.csv" not in bad
    (tmp_path / "rows.csv").write_text("image,label\na.nii.gz,0\nmissing.nii.gz,1\n")
    skipping = runner.invoke(app, ["train", "-q", "--skip-bad", "--out", str(tmp_path / "runs"),
                                   *sets("data.kind=csv", f"data.csv={tmp_path / 'rows.csv'}", "data.shape=[64,64]")])
    assert skipping.exit_code == EXIT_BAD_INPUT and "skip_bad" not in skipping.output  # set already: no such hint


def test_paths_in_a_config_are_read_from_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for i in range(4):
        square_scan(tmp_path / "data" / f"s{i}.nii.gz", i)
    (tmp_path / "data" / "cohort.csv").write_text("image,label\n" + "".join(f"s{i}.nii.gz,{i % 2}\n" for i in range(4)))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("data:\n  kind: csv\n  csv: ../data/cohort.csv\n  shape: [64, 64]\n"
                                                    "out_dir: ../runs\n")
    monkeypatch.chdir(tmp_path / "data")  # elsewhere than the config
    result = runner.invoke(app, ["config", "-c", str(tmp_path / "configs" / "mine.yaml")])
    assert f"csv: {tmp_path / 'data' / 'cohort.csv'}" in result.stdout
    assert f"out_dir: {tmp_path / 'runs'}" in result.stdout
    check = runner.invoke(app, ["data", "check", str(tmp_path / "data" / "cohort.csv"), "-c",
                                str(tmp_path / "configs" / "mine.yaml")])
    assert check.exit_code == 0, check.output
    (tmp_path / "configs" / "mine.yaml").write_text("data:\n  kind: csv\n  csv: ../data/gone.csv\n  shape: [64, 64]\n")
    missing = runner.invoke(app, ["train", "-q", "-c", str(tmp_path / "configs" / "mine.yaml")])
    assert missing.exit_code == EXIT_BAD_INPUT and str(tmp_path / "data" / "gone.csv") in missing.stderr
    assert "read from the file's folder" in runner.invoke(app, ["config", "--print-defaults", "--kind", "csv"]).stdout


def test_a_report_of_an_incomplete_run_folder_says_what_is_missing(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "partial"
    shutil.copytree(run_dir, copy)
    (copy / "metrics.jsonl").unlink()
    (copy / "data.json").unlink()
    result = runner.invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    page = (copy / "report.html").read_text()
    assert "This run folder lacks metrics.jsonl (the training curves), data.json (the data section)" in page


def test_explaining_with_every_sample_rejected_warns_on_the_command_line(run_dir, same_names, tmp_path):
    result = runner.invoke(app, ["explain", str(run_dir), "--csv", str(same_names), "--out", str(tmp_path / "x"),
                                 "--n-samples", "2", "--min-probability", "1.0", "--which", "last", "--figures", "none",
                                 "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "warning: 2 of 2 scans' maps used sampled attributes the classifier did not accept" in result.stderr


def test_resume_reads_and_names_the_folder_it_is_given(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    result = runner.invoke(app, ["train", "--resume", str(copy), "-q"])
    assert result.exit_code == 0 and f"{copy} already finished" in result.stdout
    checkpoint = copy / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a copy cut short
    result = runner.invoke(app, ["train", "--resume", str(copy), "-q"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert f"error: {checkpoint} is not a readable icam checkpoint" in result.stderr
    assert "the file is damaged" in result.stderr and str(run_dir) not in result.output


def test_images_with_the_same_file_name_are_named_by_their_folders(run_dir, same_names, tmp_path):
    images = [same_names.parent / "sub-00" / "T1.nii.gz", same_names.parent / "sub-01" / "T1.nii.gz"]
    result = runner.invoke(app, ["explain", str(run_dir), *[a for i in images for a in ("--image", str(i))],
                                 "--out", str(tmp_path / "x"), *EXPLAIN_FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "x" / "maps").glob("*_fa_mean.nii.gz")) == [
        "sub-00_T1_fa_mean.nii.gz", "sub-01_T1_fa_mean.nii.gz"]


def survivors(marker: str) -> list[int]:
    """Processes whose environment holds ``marker``: those a command started, and left behind."""
    found = []
    for proc in os.listdir("/proc"):
        try:
            if proc.isdigit() and marker.encode() in Path(f"/proc/{proc}/environ").read_bytes():
                found.append(int(proc))
        except OSError:
            continue
    return found


def test_two_processes_stay_in_step_repeat_exactly_and_every_rank_exits(tmp_path, monkeypatch):
    """The real launcher path (rank 0 re-runs the command line for rank 1, gloo on CPU), through
    the DDP scaling benchmark; then its command once more: the same seed and world size give
    the same weights. When each command returns, no process of it is left (a rank that never
    exits holds its GPUs until the job's time limit)."""
    import time

    from icam.checkpoint import load_checkpoint

    from .test_benchmark_scripts import run_benchmark

    def no_survivors(marker: str) -> None:
        deadline = time.time() + 20
        while survivors(marker) and time.time() < deadline:
            time.sleep(0.2)
        left = survivors(marker)
        for pid in left:  # pragma: no cover - a failing run must not leave them to the next test
            os.kill(pid, 9)
        assert left == [], f"{marker}: ranks still alive after the run ended"

    monkeypatch.setenv("ICAM_TEST_RUN", f"{os.getpid()}-first")
    line = run_benchmark("ddp_scaling.py", "--devices", "2", "--image-size", "16", "--width", "4",
                         "--steps", "4", "--log-every", "2", "--out", str(tmp_path))
    no_survivors(f"ICAM_TEST_RUN={os.getpid()}-first")
    two = line["devices"]["2"]
    assert set(line["devices"]) == {"2"} and two["efficiency"] == 1.0 and two["images_per_s"] > 0
    summary = json.loads((tmp_path / "devices-2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert two["rank_max_abs_weight_difference"] == summary["rank_max_abs_weight_difference"] == 0.0
    again = [*two["command"][:two["command"].index("--name") + 1], "again",
             *two["command"][two["command"].index("--name") + 2:]]
    done = subprocess.run([sys.executable, *again], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "ICAM_TEST_RUN": f"{os.getpid()}-again"},
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    no_survivors(f"ICAM_TEST_RUN={os.getpid()}-again")
    first, second = (load_checkpoint(tmp_path / name, "last") for name in ("devices-2", "again"))
    for net in ("model", "domain_discriminators", "content_discriminator"):
        for key, value in first[net].items():
            assert torch.equal(value, second[net][key]), (net, key)


def test_a_bug_is_said_as_a_bug_not_as_bad_input(monkeypatch, tmp_path):
    import warnings

    import icam.cli

    def broken(*_, **__):
        raise KeyError("resolution")  # what no input explains: icam's own mistake

    formatter = warnings.formatwarning
    monkeypatch.setattr(icam.cli, "load_config", broken)
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 1 and "this is a bug in icam, not in your input" in result.stderr
    assert "KeyError" in result.stderr and "report it" in result.stderr and "Traceback" not in result.output
    assert "Traceback" in runner.invoke(app, ["config", "--debug"]).stderr
    assert warnings.formatwarning is formatter  # a command leaves the process's warnings as it found them
    monkeypatch.undo()
    bad = runner.invoke(app, ["config", "--set", "train.steps=-1"])
    assert bad.exit_code == EXIT_BAD_INPUT and "hint: `icam config --print-defaults`" in bad.stderr

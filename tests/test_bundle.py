"""A trained run shared as a MONAI bundle: its metadata carries every field the specification
requires, and `python -m monai.bundle run` predicts and explains as `icam explain` does."""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import torch
from typer.testing import CliRunner

from icam.bundle import REQUIRED_METADATA, REQUIRED_TENSOR
from icam.cli import EXIT_BAD_INPUT, app

from .test_faults import square_scan

runner = CliRunner()


def test_a_bundle_runs_with_monai_and_gives_icams_predictions_and_maps(run_dir, tmp_path):
    images = [tmp_path / "scans" / f"s{i}.nii.gz" for i in range(2)]
    for i, image in enumerate(images):
        square_scan(image, i)
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["export", str(run_dir), "--monai-bundle", str(bundle), "--which", "last"])
    assert result.exit_code == 0, result.output
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [k for k in REQUIRED_METADATA if k not in meta] == []
    for group in ("inputs", "outputs"):
        for name, tensor in meta["network_data_format"][group].items():
            assert [k for k in REQUIRED_TENSOR if k not in tensor] == [], (group, name)
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    assert (bundle / "models" / "model.pt").is_file()

    reference = tmp_path / "icam"
    explained = runner.invoke(app, ["explain", str(run_dir), "--which", "last", "--out", str(reference),
                                    "--n-samples", "4", "--min-probability", "0.5",
                                    *[a for i in images for a in ("--image", str(i))]])
    assert explained.exit_code == 0, explained.output
    out = tmp_path / "monai"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
         "--images", json.dumps([str(i) for i in images]), "--output_dir", str(out), "--n_samples", "4",
         "--min_probability", "0.5"],
        capture_output=True, text=True, timeout=300,
        # as many threads as this process (one per xdist worker): convolutions sum in the same order
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ours, theirs = (list(csv.DictReader((folder / "predictions.csv").open())) for folder in (reference, out))
    keys = [k for k in ours[0] if k.startswith("p_") or k in ("id", "predicted_class")]
    assert [{k: r[k] for k in keys} for r in ours] == [{k: r[k] for k in keys} for r in theirs]
    # the same numbers to float32 precision
    assert np.allclose([float(r["mean_abs_fa"]) for r in ours], [float(r["mean_abs_fa"]) for r in theirs], rtol=1e-5)
    names = sorted(p.name for p in (reference / "maps").glob("*.nii.gz"))
    assert len(names) == 6 and names == sorted(p.name for p in (out / "maps").glob("*.nii.gz"))
    for name in names:
        assert np.allclose(nib.load(str(reference / "maps" / name)).get_fdata(),
                           nib.load(str(out / "maps" / name)).get_fdata(), rtol=1e-4, atol=1e-6), name


def test_export_writes_only_into_a_new_or_empty_folder(run_dir, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["export", str(run_dir), "--monai-bundle", str(tmp_path), "--which", "last"])
    assert result.exit_code == EXIT_BAD_INPUT and "not empty" in result.stderr
    assert os.listdir(tmp_path) == ["mine.txt"]

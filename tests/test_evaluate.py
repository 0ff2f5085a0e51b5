"""Map and prediction metrics, and `icam evaluate` on what `icam explain` wrote."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from icam.cli import app
from icam.metrics import classification_metrics, map_metrics, regression_metrics, summarise_maps

runner = CliRunner()


def box(shape=(32, 32)):
    gt = np.zeros(shape)
    gt[4:10, 4:10] = 1.0
    return gt


def test_a_map_that_finds_the_change_scores_perfectly_and_noise_does_not():
    gt = box()
    perfect = map_metrics(gt * 3 + 0.01, gt)
    assert perfect["auroc"] == 1 and perfect["ap"] == 1 and perfect["dice_topk"] == 1 and perfect["pointing"] == 1
    assert perfect["ncc"] == pytest.approx(1.0)
    noise = map_metrics(np.random.default_rng(0).normal(size=gt.shape), gt)
    assert 0.35 < noise["auroc"] < 0.65 and abs(noise["ncc"]) < 0.2
    flipped = map_metrics(-gt * 3, gt)  # |FA|: the sign of a change does not matter for these scores
    assert flipped["auroc"] == 1


def test_the_mask_limits_the_voxels():
    gt, fa = box(), box() * 2
    fa[20:, 20:] = 5  # a large response outside the brain
    mask = np.ones_like(gt)
    mask[16:, 16:] = 0
    assert map_metrics(fa, gt)["pointing"] == 0
    assert map_metrics(fa, gt, mask)["pointing"] == 1


def test_no_change_is_undefined_not_nan():
    result = map_metrics(np.ones((8, 8)), np.zeros((8, 8)))
    assert all(v is None for v in result.values())
    summary = summarise_maps([result, map_metrics(box() * 2, box())])
    assert summary["undefined"] == 1 and summary["ncc"]["n"] == 1 and not math.isnan(summary["ncc"]["mean"])


def test_prediction_metrics():
    c = classification_metrics(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]]))
    assert c["accuracy"] == 0.75 and c["balanced_accuracy"] == 0.75 and c["roc_auc"] == 1.0
    r = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 3.0, 5.0]))
    assert r["mae"] == 0.5 and r["rmse"] == pytest.approx(math.sqrt(0.5)) and r["r2"] == pytest.approx(0.6)
    assert r["spearman"] > 0.9


def test_evaluate_scores_explain_outputs_against_own_maps(run_dir, squares, tmp_path):
    rows = []
    for i in range(6):
        nib.save(nib.Nifti1Image(squares.images[i, 0].numpy()[:, :, None], np.eye(4)), str(tmp_path / f"s{i}.nii.gz"))
        gt = squares.gt_maps[i, 0].numpy()[:, :, None]
        if i == 0:
            gt = np.zeros_like(gt)  # no change known for this one: undefined
        elif squares.labels[i] == 0:
            gt = squares.gt_maps[1, 0].numpy()[:, :, None]  # where class-1 boxes would appear
        nib.save(nib.Nifti1Image(gt, np.eye(4)), str(tmp_path / f"g{i}.nii.gz"))
        rows.append([f"s{i}.nii.gz", int(squares.labels[i]), f"g{i}.nii.gz"])
    with (tmp_path / "c.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "label", "gt_map"], *rows])
    out = tmp_path / "ex"
    explained = runner.invoke(app, ["explain", run_dir, "--csv", str(tmp_path / "c.csv"), "--from-label",
                                    "--out", str(out), "--n-samples", "8"])
    assert explained.exit_code == 0, explained.output
    result = runner.invoke(app, ["evaluate", str(out), "--csv", str(tmp_path / "c.csv")])
    assert result.exit_code == 0, result.output
    assert "NCC(+)" in result.stdout and "NCC(−)" in result.stdout
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["maps"]["scored"] == 6 and evaluation["maps"]["all"]["undefined"] == 1
    minus = evaluation["maps"]["minus (class 1 → 0)"]["ncc"]
    assert minus["n"] == 3 and math.isfinite(minus["mean"])
    assert evaluation["classification"]["n"] == 6
    assert len(list(csv.DictReader((out / "per_subject_maps.csv").open()))) == 6
    # a method that translates class 1 → 0 only (VA-GAN): its class-0 maps are counted, not scored
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "method": "vagan"}))
    one_way = runner.invoke(app, ["evaluate", str(out), "--csv", str(tmp_path / "c.csv")])
    assert one_way.exit_code == 0, one_way.output
    assert "NCC(+) not scored" in one_way.stdout and "3 class-0 rows are not scored" in one_way.stdout
    maps = json.loads((out / "evaluation.json").read_text())["maps"]
    assert maps["plus (class 0 → 1)"] is None and maps["not_translated"] == 3 and maps["scored"] == 3
    assert maps["all"]["ncc"]["n"] == maps["minus (class 1 → 0)"]["ncc"]["n"] == 3
    assert {r["label"] for r in csv.DictReader((out / "per_subject_maps.csv").open())} == {"1"}
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nothing"), "--csv", str(tmp_path / "c.csv")])
    assert missing.exit_code == 2 and "no maps to score" in missing.stderr

"""`icam benchmark` produces the paper's tables (tiny settings: the quick preset's own run takes minutes)."""

import csv
import json
import math

from typer.testing import CliRunner

from icam.cli import app

runner = CliRunner()
TINY_BENCHMARK = ["subjects=24", "icam_steps=3", "icam_reg_steps=3", "resnet_steps=3", "cnn_steps=3", "vagan_steps=2",
                  "vagan_warmup_critic_steps=2", "n_samples=4", "width=4", "figure_subjects=2",
                  "baseline_validate_every=2", "translations_per_image=2"]
HEADLINE = {"icam_reg_accuracy", "resnet_accuracy", "icam_reg_mae", "cnn_mae", "ncc_minus", "ncc_plus",
            "table1_real_young", "table1_real_old", "table1_young_to_old", "table1_old_to_young", "auroc",
            "translation_ncc_minus", "translation_ncc_plus", "floor_ncc_minus", "floor_ncc_plus", "floor_l1",
            "content_class_accuracy"}


def finite_or_undefined(cell: str) -> bool:
    if cell == "–":
        return True
    return all(math.isfinite(float(part.split(" ")[0])) for part in cell.split(" ± "))


def test_benchmark_writes_every_table_with_finite_numbers(tmp_path):
    tmp_path = tmp_path / "study #2: a folder YAML would misread"  # the run configs carry paths as they are
    args = ["benchmark", "--preset", "quick", "--out", str(tmp_path)]
    for item in TINY_BENCHMARK:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = tmp_path / "results"
    table2 = list(csv.reader((results / "table2_maps.csv").open()))
    assert table2[0] == ["method", "NCC(−)", "NCC(+)", "AUROC", "AP", "Dice top-k", "pointing",
                         "accuracy of the explained model"]
    assert [row[0] for row in table2[1:]] == ["ICAM", "ICAM-reg", "Grad-CAM", "guided Grad-CAM", "guided backprop",
                                              "integrated gradients", "occlusion", "VA-GAN"]
    for row in table2[1:]:
        assert all(finite_or_undefined(cell) for cell in row[1:]), row
    assert all(row[1] != "–" and row[2] != "–" for row in table2[1:3])  # ICAM's maps are scored both ways
    assert [row[0] for row in list(csv.reader((results / "table1_translation.csv").open()))[1:]] == [
        "real test images", "ICAM translations", "ICAM-reg translations", "VA-GAN translations"]
    regression = list(csv.reader((results / "regression.csv").open()))[1:]
    assert [row[0] for row in regression] == ["ICAM-reg", "baseline CNN"]
    assert all(math.isfinite(float(row[1].split(" ± ")[0])) for row in regression)
    assert (results / "results.md").read_text().count("## ") == 5
    parts = list(csv.reader((results / "map_parts.csv").open()))  # what ICAM-reg's maps are made of
    assert [row[0].split(" (")[0].split(" |")[0] for row in parts[1:]] == [
        "ICAM-reg map", "its translation's own change", "the decoder's error"]
    assert (results / "comparison.png").stat().st_size > 1000
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["seconds"]["train icam"] > 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "cnn-classifier", "cnn-regressor", "icam", "icam-reg", "resnet", "vagan"]
    assert set(result["headline"]) == HEADLINE  # flat: every figure a number
    assert all(isinstance(v, float) and math.isfinite(v) for v in result["headline"].values()), result["headline"]


def test_unknown_preset_or_setting_is_clear(tmp_path):
    bad = runner.invoke(app, ["benchmark", "--preset", "huge", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown preset" in bad.stderr
    typo = runner.invoke(app, ["benchmark", "--out", str(tmp_path), "--set", "icam_stpes=3"])
    assert typo.exit_code == 2 and "icam_stpes" in typo.stderr

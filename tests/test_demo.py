"""`icam demo` end to end at tiny settings (the real one takes ~8 minutes: README and notes)."""

import json

from typer.testing import CliRunner

from icam.cli import app

runner = CliRunner()
TINY_DEMO = ["subjects=24", "pretrain_steps=3", "finetune_steps=3", "resnet_steps=3", "n_samples=4", "width=4",
             "images_per_class=2"]


def demo_args(out, *settings):
    args = ["demo", "--out", str(out), "-q"]
    for item in settings:
        args += ["--set", item]
    return args


def test_demo_trains_explains_scores_and_reports(tmp_path):
    result = runner.invoke(app, demo_args(tmp_path, *TINY_DEMO))
    assert result.exit_code == 0, result.output
    for line in ("ICAM-reg: NCC(−)", "Grad-CAM: NCC(−)", "guided backprop: NCC(−)", "report: "):
        assert line in result.stdout
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert set(summary["test"]) == {"ICAM-reg", "Grad-CAM", "guided backprop"}
    assert "mae" in summary["test"]["ICAM-reg"] and summary["total_minutes"] > 0
    report = (tmp_path / "report.html").read_text()
    for heading in (">Training", ">Predictions", ">Feature-attribution maps", ">Scores against ground truth"):
        assert heading in report
    assert report.count("<figure>") >= 4  # both runs' curves, predictions, the gallery
    assert json.loads((tmp_path / "settings.json").read_text())["pretrain_steps"] == 3
    # the same folder with another cohort is refused rather than silently mixed
    other = runner.invoke(app, demo_args(tmp_path, *TINY_DEMO, "subjects=30"))
    assert other.exit_code == 2 and "another --out" in other.stderr


def test_demo_setting_typo_is_a_clear_error(tmp_path):
    result = runner.invoke(app, demo_args(tmp_path, "pretrain_stpes=3"))
    assert result.exit_code == 2 and "pretrain_stpes" in result.stderr and "Traceback" not in result.output

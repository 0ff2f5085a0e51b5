"""`icam report`: a self-contained HTML file, checked in a real (headless) browser."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icam.cli import app
from icam.data.synth_export import write_brain_synth

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """A report of the shared squares run, explained on a small brain-synth cohort."""
    folder = tmp_path_factory.mktemp("report")
    write_brain_synth(folder / "cohort", dims=2, n=12, seed=4, shape=(64, 64))
    csv_path = folder / "cohort" / "cohort.csv"
    for args in (["explain", run_dir, "--csv", str(csv_path), "--split", "test", "--from-label", "--n-samples", "4",
                  "--out", str(folder / "explained")],
                 ["evaluate", str(folder / "explained"), "--csv", str(csv_path), "--split", "test"],
                 ["report", run_dir, "--explained", str(folder / "explained"), "--csv", str(csv_path),
                  "-o", str(folder / "report.html")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return folder / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    for heading in ("Run:", "Training", "Predictions", "Feature-attribution maps", "Scores against ground truth"):
        assert f">{heading}" in text, heading
    assert "Headline numbers" in text and "figcaption" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_chromium_without_errors(report, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--window-size=1280,4000", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for alt in ("training curves", "prediction results", "feature-attribution gallery"):
        assert f'alt="{alt}"' in dom.stdout, alt
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not console_errors, console_errors
    shot = tmp_path / "report.png"
    screenshot = subprocess.run(flags + [f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True,
                                timeout=120)
    assert screenshot.returncode == 0 and shot.stat().st_size > 50_000
    keep = os.environ.get("ICAM_TEST_ARTIFACTS")  # e.g. CI: keep the screenshot to look at
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_report_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no icam run" in result.stderr

"""`icam report`: a self-contained HTML file, checked in a real (headless) browser."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
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


def test_every_string_from_the_folders_is_escaped_in_the_page():
    """Run names, table cells and captions come from users' folders: none may become markup."""
    from icam.report.html import Details, Figure, Note, Report, Table

    hostile = "<img src=x onerror=alert(1)>"
    report = Report(f"run {hostile}", headline=[hostile], health=[("red", hostile)])
    report.add(f"Run: {hostile}", [Table(["a", hostile], [[hostile, "1"]], note=hostile), Note(hostile),
                                   Details(hostile, hostile), Figure("data:image/png;base64,AA==", hostile, hostile,
                                                                     lead=hostile)])
    page = report.html()
    assert "<img src=x" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") >= 10
    assert page.count("<img ") == 1 and "<script" not in page


def test_a_benchmark_table_keeps_a_cell_that_holds_a_pipe(tmp_path):
    """The map-parts table names the decoder's error |G(z_c, mu) − x|: in the markdown the
    benchmark writes and in the report that reads it back, it stays one cell of its row."""
    from icam.comparison import _write_table
    from icam.report.html import _markdown_table

    header, rows = ["map", "NCC(−)", "NCC(+)"], [["the decoder's error |G(z_c, mu) − x|", "0.325", "0.176"],
                                                 ["ICAM-reg map", "0.438 ± 0.144", "0.317 ± 0.215"]]
    text = _write_table(tmp_path, "parts", header, rows, "A note.")
    assert all(line.count(" | ") == 2 for line in text.splitlines() if line.startswith("| "))
    table = _markdown_table(text)
    assert (table.header, table.rows, table.note) == (header, rows, "A note.")


def test_a_method_that_translates_one_way_shows_no_ncc_plus(tmp_path):
    """VA-GAN translates class 1 → 0 only, so icam evaluate scores no plus direction for it: the
    report, like the benchmark's Table II, gives it no NCC(+) in the headline or the scores table."""
    import json

    from icam.metrics import Direction
    from icam.report.html import Report, Table, scores_section

    def folder(name: str, ncc: float, one_way: bool) -> Path:
        path = tmp_path / name
        path.mkdir()
        score = {"mean": ncc, "sd": 0.1, "ci": [ncc - 0.05, ncc + 0.05], "n": 30}
        maps = {key: dict.fromkeys(("ncc", "auroc", "ap", "dice_topk", "pointing"), score)
                for key in (Direction.MINUS.value, Direction.PLUS.value, "all")}
        if one_way:
            maps[Direction.PLUS.value] = None
        (path / "evaluation.json").write_text(json.dumps({"maps": maps}))
        scored = [("s1", 1)] if one_way else [("s1", 1), ("s0", 0)]  # icam evaluate's per-subject rows
        (path / "per_subject_maps.csv").write_text("id,label,ncc\n" + "".join(f"{i},{k},{ncc}\n" for i, k in scored))
        return path

    report = Report("t")
    facts = scores_section(report, {"ICAM-reg": folder("icam-reg", 0.4, one_way=False),
                                    "VA-GAN": folder("vagan", 0.15, one_way=True)}, None)
    assert facts == {"ICAM-reg": (0.4, 0.4), "VA-GAN": (0.15, None)}
    scores, differences = (b for _, blocks in report.sections for b in blocks if isinstance(b, Table))
    assert [row[2] for row in scores.rows] == ["0.400 [0.350, 0.450], n 30", "–"]
    assert differences.rows[0][0] == "ICAM-reg − VA-GAN" and differences.rows[0][1].startswith("0.250")
    assert differences.rows[0][2] == "–"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_chromium_without_errors(report, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--window-size=1280,4000", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for alt in ("training curves", "prediction results", "feature-attribution gallery"):
        assert f'alt="{alt}"' in dom.stdout, alt
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not console_errors, console_errors
    assert re.search(r"class=\"health (red|amber|green)\"", dom.stdout)  # the banner, whatever it says
    scores = dom.stdout.split("Scores against ground truth</h2>")[1].split("</table>")[0]
    cells = [re.findall(r"<td>(.*?)</td>", row)[1:] for row in re.findall(r"<tr>(.*?)</tr>", scores)]
    cells = [c for row in cells for c in row]
    assert cells and all(re.fullmatch(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\], n \d+|undefined \(n \d+\)"
                                      r"|-?\d\.\d{3}, n 1 \(too few for an interval\)", c)
                         for c in cells), cells  # every score with its interval and n
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


def test_intervals_are_honest_at_small_n():
    from icam.intervals import bootstrap_interval, describe, paired_difference, wilson_interval

    low, high = wilson_interval(6, 12)
    assert round(low, 3) == 0.254 and round(high, 3) == 0.746  # not 0.5 ± 0.52 (an sd of a 0/1 outcome)
    assert wilson_interval(12, 12)[1] == 1.0 and wilson_interval(0, 0) is None
    values = np.random.default_rng(0).normal(0.4, 0.1, 30)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high and high - low < 0.1
    assert bootstrap_interval(values) == bootstrap_interval(values)  # seeded: a report is reproducible
    d = paired_difference(values + 0.2, values)
    assert d["n"] == 30 and d["ci"][0] == pytest.approx(0.2) and describe(d["mean"], d["ci"], 30).endswith("n 30")


def _squares_table(folder, n: int):
    import csv

    import nibabel as nib

    rows = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        image = rng.normal(0, 50, (64, 64, 1))
        image[24:40, 24:40] += 300 * (i % 2)
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(folder / f"s{i:02d}.nii.gz"))
        rows.append([f"s{i:02d}.nii.gz", i % 2])
    with (folder / "t.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], *rows])
    return folder / "t.csv"


def test_health_banner_flags_a_failed_model_and_passes_a_healthy_one(run_dir, tmp_path):
    from .conftest import TINY

    table = _squares_table(tmp_path, 32)
    failed = runner.invoke(app, ["train", "-q", "--out", str(tmp_path / "runs"), "--name", "failed",
                                 *[x for o in TINY + ["train.steps=1"] for x in ("--set", o)]])
    assert failed.exit_code == 0, failed.output
    pages = {}
    for name, run in (("healthy", run_dir), ("failed", tmp_path / "runs" / "failed")):
        out = tmp_path / f"explained-{name}"
        for args in (["explain", str(run), "--csv", str(table), "--out", str(out), "--n-samples", "2",
                      "--min-probability", "0.5", "--which", "last", "--figures", "none"],
                     ["report", str(run), "--explained", str(out), "-o", str(tmp_path / f"{name}.html")]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
        pages[name] = (tmp_path / f"{name}.html").read_text()
    assert 'class="health green">No warning signs: accuracy' in pages["healthy"]
    assert "health red" not in pages["healthy"] and "health amber" not in pages["healthy"]
    assert 'class="health red"' in pages["failed"] and "No warning signs" not in pages["failed"]
    assert re.search(r"no better than always predicting the commonest class|predicted as the same class",
                     pages["failed"])
    assert ">Data<" in pages["failed"] and "No t-SNE" not in pages["healthy"]


def test_figures_turn_any_stored_orientation_to_ras_and_name_each_cut_in_mm():
    """A run may keep its arrays in LPS (data.orientation) and a 2D model sees slices: the
    figures turn each to RAS by its affine, so the letters hold, and give the cut in mm."""
    from icam.data.nifti import slice_affine
    from icam.report.figures import _views, cut_label, plane_aspect, to_ras

    ras = np.zeros((20, 24, 16))
    ras[3, 12, 8] = 1.0  # the subject's left
    ras_affine = np.array([[2.0, 0, 0, -20], [0, 2, 0, -24], [0, 0, 2, -16], [0, 0, 0, 1]])
    lps = ras[::-1, ::-1, :]  # the same scan stored LPS: x and y run the other way
    lps_affine = np.array([[-2.0, 0, 0, 18], [0, -2, 0, 22], [0, 0, 2, -16], [0, 0, 0, 1]])
    (turned,), affine = to_ras([lps], lps_affine)
    assert np.array_equal(turned, ras) and np.allclose(affine, ras_affine)
    assert cut_label("sagittal", affine, (3, 12, 8)) == "sagittal x = -14 mm"
    assert cut_label("axial", affine, (3, 12, 8)) == "axial z = 0 mm"
    assert [view for view, _ in _views(turned, (3, 12, 8))] == ["sagittal", "coronal", "axial"]
    # 2D models: an axial slice is one axial view, a sagittal slice (slice_axis 0) one sagittal view
    (axial,), affine = to_ras([lps[:, :, 8]], slice_affine(lps_affine, 2, 8))
    assert axial.shape == (20, 24, 1) and np.argmax(axial[:, 12, 0]) == 3
    assert [v for v, _ in _views(axial, (3, 12, 0))] == ["axial"] and cut_label("axial", affine, (3, 12, 0)) == \
        "axial z = 0 mm"
    (sagittal,), affine = to_ras([lps[16]], slice_affine(lps_affine, 0, 16))
    assert sagittal.shape == (1, 24, 16) and [v for v, _ in _views(sagittal, (0, 12, 8))] == ["sagittal"]
    assert cut_label("sagittal", affine, (0, 12, 8)) == "sagittal x = -14 mm"
    # anisotropic voxels are drawn at their true proportions: height / width of one voxel
    anisotropic = np.diag([4.8, 4.0, 2.4, 1.0])
    assert plane_aspect("axial", anisotropic) == pytest.approx(4.0 / 4.8)
    assert plane_aspect("sagittal", anisotropic) == pytest.approx(2.4 / 4.0)


def test_every_slice_is_lettered_on_the_side_the_subject_is():
    """A scan with a marker in its left hemisphere (RAS: small first index) must show the marker
    on the side labelled L, in every view of a 3D figure and in the 2D overlays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icam.report.figures import ORIENTATION, _views, overlay

    volume = np.zeros((20, 24, 16))
    volume[3, 12, 8] = 1.0  # left (x small), the middle otherwise
    volume[10, 20, 8] = 0.5  # anterior (y large)
    for view, plane in _views(volume, (3, 12, 8)):
        fig, ax = plt.subplots()
        overlay(ax, plane, None, None, 1.0, view)
        letters = {t.get_text(): t.get_position() for t in ax.texts}
        left, right, bottom, top = ORIENTATION[view]
        assert letters[left][0] < 0.5 < letters[right][0] and letters[bottom][1] < 0.5 < letters[top][1]
        shown = ax.images[0].get_array()  # rows: the vertical axis (origin lower), columns: horizontal
        _, column = np.unravel_index(np.argmax(shown), shown.shape)
        if view in ("axial", "coronal"):  # the marker is in the subject's left: drawn on the L side
            assert column < shown.shape[1] / 2 and left == "L"
        if view == "axial":  # and anterior marker at the top
            rows = np.nonzero(shown == 0.5)[0]
            assert rows.mean() > shown.shape[0] / 2 and top == "A"
        plt.close(fig)


def test_a_folder_that_is_not_an_explanation_is_refused_by_name(run_dir, tmp_path):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", run_dir, "--explained", str(tmp_path / "typo"), "-o", str(out)])
    assert result.exit_code == 2 and "typo" in result.output and "not an icam explain output" in result.output
    assert not out.exists()

"""The scale benchmarks run (tiny shapes, CPU) and print their one JSON line.

They exist to be run on a GPU machine; here they must at least work, so that the figures
they print there come from code that CI exercises. Each runs as its command line would, in this
process (a fresh interpreter per script would add its start-up to every test)."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import torch
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(name: str, *args: str) -> dict:
    """``python benchmarks/<name> <args>``: its last printed line, parsed."""
    argv, threads, printed = sys.argv, torch.get_num_threads(), io.StringIO()
    sys.argv = [str(BENCHMARKS / name), *args]
    try:
        with contextlib.redirect_stdout(printed):
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def test_train_step_benchmark_3d_with_activation_checkpointing():
    line = run_benchmark("train_step.py", "--dims", "3", "--shape", "16", "16", "16", "--width", "4",
                         "--modes", "fp32", "fp32-ckpt", "--warmup", "1", "--iterations", "2",
                         "--set", "model.upsampling=transposed")  # the paper's up-sampling, timed beside icam's
    assert set(line["modes"]) == {"fp32", "fp32-ckpt"} and line["fastest"] in line["modes"]
    assert line["settings"] == ["model.upsampling=transposed"]
    assert all(m["median_s"] > 0 and m["batch"] == 2 for m in line["modes"].values())


def test_data_loading_benchmark_compares_cache_and_decoding():
    line = run_benchmark("data_loading.py", "--shape", "16", "32", "16", "--n", "4", "--workers", "0",
                         "--passes", "1", "--step-seconds", "1.0")
    rates = line["rates"]["workers_0"]
    assert rates["cache_volumes_per_s"] > 0 and rates["nii_gz_volumes_per_s"] > 0
    need = line["training_needs_volumes_per_s"]  # three batches of 2 images per 1.0 s step
    assert line["keeps_up"] == {kind: rate >= need for kind, rate in rates.items()}


def test_quality_bench_trains_variants_and_reuses_the_model_for_map_only_ones(tmp_path):
    tiny = ["cohort=squares", "subjects=24", "icam_steps=3", "icam_reg_steps=3", "resnet_steps=3", "cnn_steps=3",
            "n_samples=4", "width=4", "baseline_validate_every=2", "translations_per_image=2"]
    args = ["--out", str(tmp_path), "--seeds", "0", "--variants", "default", "no-ema", "reference-reconstruction"]
    for item in [*tiny, "icam_set=[train.log_every=1]"]:  # joined with each variant's own run overrides
        args += ["--set", item]
    line = run_benchmark("quality.py", *args)
    assert set(line["means"]) == {"default", "no-ema", "reference-reconstruction", "baselines"}
    for variant in ("default", "no-ema", "reference-reconstruction"):
        figures = line["means"][variant]
        assert 0 <= figures["accuracy"] <= 1 and figures["mae"] >= 0 and -1 <= figures["ncc_minus"] <= 1
    # the map-only variant explained the default model: same predictions, its own maps
    assert line["means"]["reference-reconstruction"]["accuracy"] == line["means"]["default"]["accuracy"]
    runs = sorted(p.name for p in (tmp_path / "seed0" / "runs").iterdir())
    assert runs == ["cnn-classifier", "cnn-regressor", "default-icam", "default-icam-reg", "no-ema-icam",
                    "no-ema-icam-reg", "resnet"]
    assert "| no-ema |" in (tmp_path / "quality.md").read_text()
    trained = yaml.safe_load((tmp_path / "seed0" / "runs" / "no-ema-icam-reg" / "config.yaml").read_text())
    assert trained["train"]["log_every"] == 1 and trained["train"]["ema_decay"] is None


def test_occlusion_benchmark_bounds_the_positions_and_times_both_settings():
    line = run_benchmark("occlusion.py", "--shape", "16", "20", "16", "--width", "4", "--baseline-passes", "4")
    icam, paper = line["icam"], line["paper_scaled_one_per_pass"]
    assert icam["positions"] <= 20_000 and icam["seconds"] > 0 and paper["seconds_extrapolated"] > 0
    assert paper["positions"] >= icam["positions"] and line["cpu"]


def test_explain_benchmark_times_both_precisions():
    line = run_benchmark("explain.py", "--shape", "32", "32", "--width", "4", "--samples", "2", "4", "--repeats", "1",
                         "--precision", "32-true", "bf16-mixed")
    figures = line["results"]["width4"]["by_samples"]
    assert set(figures) == {"2", "4", "2 bf16-mixed", "4 bf16-mixed"}
    assert all(f["seconds_per_scan"] > 0 and 0 < f["acceptance_rate"] <= 1 for f in figures.values())
    assert line["processor"] and line["results"]["width4"]["seconds_per_extra_sample"] is not None


def test_maps_by_effect_compares_each_effects_scans_with_the_population_map(tmp_path):
    import csv

    from icam.data.synth_export import write_brain_synth

    seed = tmp_path / "seed0"
    write_brain_synth(seed / "cohort", dims=2, n=20, seed=3, shape=(32, 32), fractions=(0.5, 0.0, 0.5))
    table = list(csv.DictReader((seed / "cohort" / "cohort.csv").open()))
    test = [r for r in table if r["split"] == "test"]
    scores = seed / "maps" / "default-icam-reg" / "per_subject_maps.csv"
    scores.parent.mkdir(parents=True)
    # a stand-in variant whose map scores 1 on scans with lesions and 0 elsewhere
    with scores.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "ncc"])
        for r in test:
            writer.writerow([Path(r["image"]).name.split(".nii")[0], r["label"], float(float(r["lesions_weight"]) > 0)])
    line = run_benchmark("maps_by_effect.py", "--out", str(tmp_path))
    for direction, label in (("minus", "1"), ("plus", "0")):
        scans = [r for r in test if r["label"] == label]
        figures = line["directions"][direction]
        assert figures["all"]["scans"] == len(scans)
        with_lesions = figures["lesions"]["with"]
        assert with_lesions["scans"] == sum(float(r["lesions_weight"]) > 0 for r in scans)
        assert with_lesions["map"] in (1.0, None) and figures["lesions"]["without"]["map"] in (0.0, None)
        assert figures["all"]["population"] is not None and -1 <= figures["all"]["population"] <= 1
    assert set(line["directions"]["minus"]) == {"ventricles", "cortex", "lesions", "all"}
    assert "| class 1 → 0 | lesions |" in (tmp_path / "maps_by_effect.md").read_text()

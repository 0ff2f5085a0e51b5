"""Explanations on a tiny trained model: the Python API and `icam explain` / `icam predict`."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import icam
from icam.checkpoint import save_checkpoint
from icam.cli import app
from icam.config import load_config
from icam.data import make_squares
from icam.train import train

from .conftest import TINY

runner = CliRunner()


@pytest.fixture(scope="module")
def nifti_inputs(tmp_path_factory, squares):
    folder = tmp_path_factory.mktemp("inputs")
    affine = np.array([[-2.0, 0, 0, 60], [0, 2.0, 0, -70], [0, 0, 3.0, 12], [0, 0, 0, 1]])
    rows = []
    for i in range(6):
        nib.save(nib.Nifti1Image(squares.images[i, 0].numpy()[:, :, None], affine), str(folder / f"sq{i}.nii.gz"))
        rows.append([f"sq{i}.nii.gz", int(squares.labels[i])])
    with (folder / "inputs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], *rows])
    return folder


def test_explanations_have_the_inputs_shape_and_are_seeded(run_dir, squares):
    model = icam.open_run(run_dir)
    x = squares.images[:4]
    explanation = model.explain(x, n_samples=16)
    assert explanation.mean.shape == explanation.var.shape == explanation.translated.shape == x.shape
    assert (explanation.var >= 0).all()
    assert torch.equal(explanation.target_class, 1 - explanation.prediction.predicted_class)
    assert 0 < explanation.acceptance_rate <= 1
    again = model.explain(x, n_samples=16)
    assert torch.equal(again.mean, explanation.mean) and torch.equal(again.var, explanation.var)
    other_seed = model.explain(x, n_samples=16, seed=1)
    assert not torch.equal(other_seed.mean, explanation.mean)
    kept = model.explain(x[:1], n_samples=8, keep_samples=True)
    assert kept.samples.shape == (1, 8, 1, 64, 64)
    assert torch.allclose(kept.samples.mean(1), kept.mean, atol=1e-5)
    assert torch.allclose(kept.samples.var(1), kept.var, atol=1e-5)


@pytest.mark.filterwarnings("ignore:this CPU .*has no bf16 instructions")
def test_bf16_decoding_gives_the_same_maps_up_to_bf16_rounding(run_dir, squares):
    model = icam.open_run(run_dir, device="cpu")
    x = squares.images[:2]
    exact = model.explain(x, n_samples=8)
    model.precision = "bf16-mixed"
    rounded = model.explain(x, n_samples=8)
    assert rounded.mean.dtype == torch.float32 and torch.equal(rounded.target_class, exact.target_class)
    # bf16 rounds the decoded images (~0.4% of their intensity); a residual map is the difference
    # of two decodes, so the rounding is measured against the images' scale, not the map's
    scale = exact.translated.abs().max()
    assert (rounded.mean - exact.mean).abs().max() < 0.02 * scale and not torch.equal(rounded.mean, exact.mean)
    # this 40-step model's change peaks at ~5% of the images' scale, so that rounding is ~1/7 of it
    assert torch.corrcoef(torch.stack([rounded.mean.flatten(), exact.mean.flatten()]))[0, 1] > 0.98
    with pytest.raises(ValueError, match="expected 32-true or bf16-mixed"):
        model.precision = "16-mixed"


def test_maps_against_the_reconstruction_differ_from_the_paper_maps_by_the_reconstruction(run_dir, squares):
    model = icam.open_run(run_dir)
    x = squares.images[:3]
    paper = model.explain(x, n_samples=8)
    against = model.explain(x, n_samples=8, reference="reconstruction")
    reconstruction = model.model.fa_reference(model.as_input(x), "reconstruction")
    assert torch.allclose(against.mean, paper.translated - reconstruction, atol=1e-5)
    assert torch.allclose(paper.mean, paper.translated - x, atol=1e-5)
    assert torch.equal(against.var, paper.var) and against.reference == "reconstruction"
    own = model.explain(x, target=0, n_samples=8, seed=3)
    relative = model.explain(x, n_samples=8, reference="own-class", own_class=0, seed=3)
    assert torch.allclose(relative.mean, relative.translated - own.translated, atol=1e-5)
    with pytest.raises(ValueError, match="reference must be one of"):
        model.explain(x, n_samples=2, reference="mean")


def test_captum_style_attribute(run_dir, squares):
    model = icam.open_run(run_dir)
    x = squares.images[:2]
    attribution = model.attribute(x, target=1, n_samples=8)
    assert attribution.shape == x.shape
    assert torch.equal(attribution, model.explain(x, target=1, n_samples=8).mean)


def test_translating_to_the_own_class_changes_less_than_to_the_other(run_dir, squares):
    model = icam.open_run(run_dir)
    x = squares.images
    prediction = model.predict(x)
    other = model.explain(x, n_samples=16).mean.abs().mean()
    own = model.explain(x, target=prediction.predicted_class, n_samples=16).mean.abs().mean()
    assert own < other


def test_pair_and_interpolation(run_dir, squares):
    model = icam.open_run(run_dir)
    a, b = squares.images[0], squares.images[1]
    pair = model.pair(a, b)
    assert pair.a_as_b.shape == pair.fa_b.shape == (1, 1, 64, 64)
    walk = model.interpolate(a, b, steps=5)
    assert walk.images.shape == (5, 1, 64, 64) and walk.probabilities.shape == (5, 2)
    assert walk.weights[0] == 0 and walk.weights[-1] == 1 and torch.all(walk.fa_maps[0] == 0)


def test_wrong_inputs_are_clear(run_dir, tmp_path):
    model = icam.open_run(run_dir)
    with pytest.raises(ValueError, match="shape"):
        model.explain(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="n_samples"):
        model.explain(torch.zeros(1, 1, 64, 64), n_samples=1)
    not_icam = tmp_path / "baseline.pt"
    save_checkpoint({"weights": {}}, not_icam)
    with pytest.raises(icam.checkpoint.CheckpointError, match="holds no ICAM model"):
        icam.open_run(not_icam)


def test_explain_command_writes_maps_in_the_inputs_space(run_dir, nifti_inputs, tmp_path):
    out = tmp_path / "explained"
    result = runner.invoke(app, ["explain", run_dir, "--csv", str(nifti_inputs / "inputs.csv"), "--out", str(out),
                                 "--n-samples", "8", "--reconstruction"])
    assert result.exit_code == 0, result.output
    for i in range(6):
        source = nib.load(str(nifti_inputs / f"sq{i}.nii.gz"))
        for kind in ("fa_mean", "fa_var", "translated", "reconstruction_fa_mean"):
            written = nib.load(str(out / "maps" / f"sq{i}_{kind}.nii.gz"))
            assert written.shape == source.shape
            assert np.allclose(written.affine, source.affine)
        assert (out / "figures" / f"sq{i}_fa.png").stat().st_size > 1000
    variance = nib.load(str(out / "maps" / "sq0_fa_var.nii.gz")).get_fdata()
    assert (variance >= 0).all()
    records = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(records) == 6 and {"predicted_class", "p_class0", "p_class1", "mean_abs_fa",
                                  "reconstruction_mean_abs_fa"} <= set(records[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["explained"] == 6 and summary["accuracy"] >= 0.8
    assert not (out / "figures" / "tsne.png").exists() and "tsne" not in summary  # 6 points: no t-SNE


def test_pair_and_interpolation_commands_write_the_right_counts(run_dir, nifti_inputs, tmp_path):
    a, b = str(nifti_inputs / "sq0.nii.gz"), str(nifti_inputs / "sq1.nii.gz")
    result = runner.invoke(app, ["explain", run_dir, "--out", str(tmp_path), "--pair", a, b,
                                 "--interpolate", a, b, "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("sq0_with_sq1_*.nii.gz"))) == 2 and len(list(tmp_path.glob("sq1_with_sq0_*"))) == 3
    assert len(list(tmp_path.glob("sq0_to_sq1_step*.nii.gz"))) == 4
    assert len(list(csv.DictReader((tmp_path / "sq0_to_sq1_interpolation.csv").open()))) == 4


def test_predict_command_and_bad_paths(run_dir, nifti_inputs, tmp_path):
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", run_dir, "--image", str(nifti_inputs / "sq1.nii.gz"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(out.open()))) == 1
    missing = runner.invoke(app, ["predict", run_dir, "--image", str(tmp_path / "nope.nii.gz")])
    assert missing.exit_code == 2 and "no such image" in missing.stderr
    no_run = runner.invoke(app, ["explain", str(tmp_path / "no-run"), "--image", str(nifti_inputs / "sq1.nii.gz"),
                                 "--out", str(tmp_path)])
    assert no_run.exit_code == 2 and "no such checkpoint or run folder" in no_run.stderr
    typo = runner.invoke(app, ["explain", run_dir, "--image", str(nifti_inputs / "sq1.nii.gz"),
                               "--out", str(tmp_path / "typo"), "--figures", "al"])
    assert typo.exit_code == 2 and "Invalid value for '--figures'" in typo.stderr
    assert "'al' is not one of" in typo.stderr
    assert not (tmp_path / "typo").exists()  # refused before the folder was claimed


def test_3d_maps_are_resampled_back_to_an_input_of_another_shape(tmp_path):
    config = load_config(None, TINY + ["data.image_size=16", "data.spatial_dims=3", "train.steps=2",
                                       f"out_dir={tmp_path}", "name=r3d"])
    run = train(config, show_progress=False)["run_dir"]
    volume = make_squares(2, 32, spatial_dims=3, effect=300, seed=5).images[1, 0, 6:26, 7:25, 8:24].numpy()
    affine = np.array([[0, 0, 2.0, -10], [0, -2.0, 0, 30], [1.5, 0, 0, -5], [0, 0, 0, 1]])  # not RAS
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "v.nii.gz"))
    result = runner.invoke(app, ["explain", run, "--image", str(tmp_path / "v.nii.gz"), "--out", str(tmp_path / "x"),
                                 "--n-samples", "4", "--min-probability", "0.5"])
    assert result.exit_code == 0, result.output
    written = nib.load(str(tmp_path / "x" / "maps" / "v_fa_mean.nii.gz"))
    assert written.shape == (20, 18, 16) and np.allclose(written.affine, affine)
    assert np.count_nonzero(written.get_fdata()) > 0.5 * volume.size  # the model's crop covers most of it
    assert (tmp_path / "x" / "figures" / "v_fa.png").is_file()


def test_fa_magnitude_is_correlated_with_the_target_pooled_and_as_the_paper_does():
    from icam.inference import _cohort_analyses
    from icam.predictions import PredictionRecord

    names = ["young", "old"]  # records hold class names, as predictions.csv does
    records = [PredictionRecord(f"s{i}", i + 2, f"s{i}.nii.gz", None, names[label], age, names[label],
                                {"young": 0.5, "old": 0.5}, age + 1, names[1 - label], fa)
               for i, (label, age, fa) in enumerate([(0, 50, 0.1), (0, 55, 0.3), (0, 60, 0.2), (1, 70, 0.2),
                                                     (1, 75, 0.3), (1, 80, 0.5), (1, 85, 0.6)])]
    analyses = _cohort_analyses(records, records, regressing=True, names=names)["mean_abs_fa_vs_target"]
    assert analyses["pooled"]["true_target"]["n"] == 7
    down = analyses["upper_class_translated_down"]
    assert down["true_target"]["n"] == 4 and down["predicted_target"]["pearson_r"] > 0.9  # the old scans only


def test_content_refinement_lowers_the_decoders_error_within_its_budget(run_dir, squares):
    """Test-time refinement fits each scan's content code (the networks stay as they are): the
    decoder's error falls, the steps and the time per scan are bounded, and the map says so."""
    from icam.explain import Refinement

    model = icam.open_run(run_dir)
    x = squares.images[:2]
    weights = [p.detach().clone() for p in model.model.parameters()]
    refined = model.explain(x, n_samples=4, refinement=Refinement(steps=20, lr=0.05))
    record = refined.refinement
    assert record.steps == 20 and record.l1_after < record.l1_before and record.seconds > 0
    assert all(torch.equal(a, b) for a, b in zip(weights, model.model.parameters()))
    assert not torch.equal(refined.mean, model.explain(x, n_samples=4).mean)
    assert refined.recipe == "residual vs input, counterfactual, refined 20"  # the run's defaults
    hurried = model.explain(x, n_samples=4, refinement=Refinement(steps=100_000, seconds=0.05))
    assert hurried.refinement.steps < 100_000 and hurried.refinement.seconds < 2  # the time limit stops it
    with pytest.raises(ValueError, match="refinement needs"):
        Refinement(steps=0)


def test_counterfactual_sampling_keeps_what_the_prediction_heads_do_not_read(run_dir, squares):
    """sampling=counterfactual: each attribute is the scan's own mean with only its part in the
    heads' subspace drawn (accepted for the target class), so the translations keep the rest of
    the scan; prior sampling (the paper) draws every element."""
    model = icam.open_run(run_dir)
    x = model.as_input(squares.images[:2])
    mu = model.predict(x).attribute_mean
    subspace = model.model.prediction_subspace(model.regressing)
    assert subspace.shape[0] == 1  # two classes, no regression: one direction
    draw = model.model.sample_attribute(torch.tensor([1, 1, 0, 0]), min_probability=0.9,
                                        generator=torch.Generator().manual_seed(0),
                                        **model.model.sampling_arguments("counterfactual", mu.repeat(2, 1), False))
    assert draw.accepted.all()
    assert torch.allclose(draw.attribute - (draw.attribute @ subspace.T) @ subspace,
                          mu.repeat(2, 1) - (mu.repeat(2, 1) @ subspace.T) @ subspace, atol=1e-5)
    assert (torch.softmax(model.model.classifier(draw.attribute), 1)[[0, 1, 2, 3], [1, 1, 0, 0]] >= 0.9).all()
    counterfactual = model.explain(x, n_samples=8, sampling="counterfactual")
    prior = model.explain(x, n_samples=8, sampling="prior")
    assert counterfactual.sampling == "counterfactual" and not torch.equal(counterfactual.mean, prior.mean)
    with pytest.raises(ValueError, match="sampling must be one of"):
        model.explain(x, n_samples=2, sampling="posterior")


def test_a_checkpoint_saved_before_the_presets_explains_as_the_paper_model_it_was(run_dir, squares, tmp_path):
    """Runs made before model.preset held the paper's image translation and prior sampling; the
    keys that came later are missing from their configs, and must not take today's defaults."""
    from icam.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir, "best")
    for key in ("preset", "translation", "attribute_sampling"):
        state["config"]["model"].pop(key)
    state["model_hparams"].pop("translation")
    old = icam.open_run(save_checkpoint(state, tmp_path / "old.pt"))
    assert (old.model.translation, old.sampling) == ("image", "prior")
    today = icam.open_run(run_dir)
    assert (today.model.translation, today.sampling) == ("residual", "counterfactual")
    x = squares.images[:1]
    assert not torch.equal(old.explain(x, n_samples=4).mean, today.explain(x, n_samples=4).mean)


def test_explain_command_says_what_made_its_maps(run_dir, nifti_inputs, tmp_path):
    """summary.json and each map's descrip name the translation, the reference, the sampling and
    any refinement; the command line reports refinement's share of the seconds per scan."""
    out = tmp_path / "refined"
    result = runner.invoke(app, ["explain", run_dir, "--csv", str(nifti_inputs / "inputs.csv"), "--out", str(out),
                                 "--n-samples", "4", "--figures", "none", "--refine-steps", "3",
                                 "--sampling", "prior"])  # not the run's own: the flag wins
    assert result.exit_code == 0, result.output
    assert "of them refining" in result.output and "decoder error" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["translation"] == "residual" and summary["reference"] == "input"
    assert summary["sampling"] == "prior" and summary["refinement"]["asked"]["steps"] == 3
    assert summary["refinement"]["seconds_per_scan"] < summary["seconds_per_scan"]
    descrip = nib.load(str(out / "maps" / "sq0_fa_mean.nii.gz")).header["descrip"].tobytes().decode()
    assert descrip.startswith("icam FA mean, residual vs input, prior, refined 3")

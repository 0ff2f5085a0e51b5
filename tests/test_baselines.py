"""The baselines: trainable with `icam train --set method=…`, explained and scored like ICAM."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import icam
from icam.baselines.attribution import BaselineModel, occlusion_window
from icam.baselines.networks import ResNetClassifier, UNetMapGenerator, WGANCritic
from icam.checkpoint import CheckpointError
from icam.cli import app
from icam.config import load_config
from icam.methods import POSTHOC
from icam.run import read_metrics
from icam.train import train

from .conftest import TINY

runner = CliRunner()
BASELINE = TINY + ["baseline.steps=6", "baseline.validate_every=3", "baseline.width=4", "baseline.batch_size=8",
                   "baseline.warmup_critic_steps=2", "baseline.critic_steps=1", "train.log_every=2"]


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    runs = {}
    # VA-GAN and the regressor in bf16-mixed: both training loops' mixed-precision paths run
    for method, extra in (("resnet", []), ("vagan", ["runtime.precision=bf16-mixed"]), ("cnn-classifier", []),
                          ("cnn-regressor", ["data.continuous_target=true", "runtime.precision=bf16-mixed"])):
        config = load_config(None, BASELINE + [f"method={method}", f"out_dir={out}", f"name={method}", *extra])
        runs[method] = train(config, show_progress=False)
    return runs


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_baseline_networks_in_2d_and_3d(shape):
    d, x = len(shape), torch.rand(2, 1, *shape)
    assert ResNetClassifier(d, 3, width=4)(x).shape == (2, 3)
    assert UNetMapGenerator(d, width=4)(x).shape == x.shape
    assert WGANCritic(d, shape, width=4)(x).shape == (2,)


def test_every_baseline_trains_and_writes_a_run(baseline_runs):
    for method, summary in baseline_runs.items():
        assert summary["method"] == method and summary["step"] == 6
        state = torch.load(f"{summary['run_dir']}/checkpoints/last.pt", weights_only=True)
        assert state["method"] == method
    assert baseline_runs["cnn-regressor"]["selection"]["metric"] == "mae"
    assert baseline_runs["resnet"]["selection"]["metric"] == "balanced_accuracy"
    assert baseline_runs["vagan"]["selection"]["metric"] == "ncc"
    for method in ("vagan", "cnn-regressor"):  # trained under bf16 autocast; the weights stay float32
        state = torch.load(f"{baseline_runs[method]['run_dir']}/checkpoints/last.pt", weights_only=True)
        assert all(w.dtype == torch.float32 and w.isfinite().all() for w in state["model"].values()
                   if w.is_floating_point())
        losses = [r for r in read_metrics(baseline_runs[method]["run_dir"]) if r["split"] == "train"]
        assert losses and all(math.isfinite(v) for r in losses for k, v in r.items() if k not in ("split", "time"))


@pytest.mark.parametrize("posthoc", POSTHOC)
def test_posthoc_maps_explain_each_input(baseline_runs, posthoc):
    """Each map is shaped like its input, is not all zero, and is a map of that input (two
    scans get different maps)."""
    model = BaselineModel.from_checkpoint(baseline_runs["resnet"]["run_dir"], posthoc=posthoc, device="cpu")
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    attribution = model.attribute(x)  # of the predicted class: the evidence for what the network says
    assert attribution.shape == x.shape and torch.isfinite(attribution).all()
    if posthoc not in ("gradcam", "guided_gradcam"):  # a 6-step ResNet may have no positive evidence at
        assert all(a.abs().max() > 0 for a in attribution)  # all: its Grad-CAM is then rightly 0 (next test)
        assert not torch.allclose(attribution[0], attribution[1])


def test_gradcam_is_the_weighted_activations_of_the_last_block_and_zero_against_the_class():
    """With every channel evidence for class 0 and against class 1, Grad-CAM of class 0 is the
    ReLU of the last block's activations weighted by the mean gradient, up-sampled; of class 1 it
    is zero."""
    import torch.nn.functional as F

    from icam.baselines.attribution import _posthoc

    torch.manual_seed(0)
    network = ResNetClassifier(2, 2, width=4).eval()
    with torch.no_grad():
        network.fc.weight[0] = network.fc.weight[0].abs() + 0.1
        network.fc.weight[1] = -(network.fc.weight[1].abs() + 0.1)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    activations = []
    handle = network.last_block.register_forward_hook(lambda m, i, out: activations.append(out.detach()))
    for_class_0 = _posthoc(network, "gradcam", x, torch.tensor([0]))
    handle.remove()
    against = _posthoc(network, "gradcam", x, torch.tensor([1]))
    block = activations[0]
    weights = network.fc.weight[0].detach() / block[0, 0].numel()  # d logit_0 / d activation, averaged
    expected = F.interpolate(torch.relu((weights.view(1, -1, 1, 1) * block).sum(1, keepdim=True)), size=(64, 64),
                             mode="bilinear", align_corners=False)
    assert for_class_0.max() > 0 and torch.allclose(for_class_0, expected, rtol=1e-4, atol=1e-6)
    assert against.abs().max() == 0


def test_integrated_gradients_are_complete(baseline_runs):
    """The axiom IG satisfies when it is computed right: the attributions sum to the target
    logit at the input minus at the (zero) baseline."""
    model = BaselineModel.from_checkpoint(baseline_runs["resnet"]["run_dir"], posthoc="integrated_gradients",
                                          device="cpu")
    torch.manual_seed(1)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    total = float(model.attribute(x, target=1).sum())
    with torch.no_grad():
        change = float(model.network(x)[0, 1] - model.network(torch.zeros_like(x))[0, 1])
    assert abs(total - change) <= 0.05 * abs(change) + 1e-4, (total, change)


def test_vagan_map_is_its_generator_and_the_regressor_speaks_in_target_units(baseline_runs):
    vagan = BaselineModel.from_checkpoint(baseline_runs["vagan"]["run_dir"], device="cpu")
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(vagan.attribute(x), vagan.network(x)) and vagan.predict(x) is None
    regressor = BaselineModel.from_checkpoint(baseline_runs["cnn-regressor"]["run_dir"], device="cpu")
    state = torch.load(f"{baseline_runs['cnn-regressor']['run_dir']}/checkpoints/best.pt", weights_only=True)
    # the network learns standardised targets; predictions are back in the target's units
    assert state["target_std"] not in (0, 1) and state["target_mean"] != 0
    with torch.no_grad():
        standardised = regressor.network(x)[:, 0]
    expected = standardised * state["target_std"] + state["target_mean"]
    assert torch.allclose(regressor.predict(x).target, expected)
    with pytest.raises(ValueError, match="predictions, not maps"):
        regressor.attribute(x)


def test_wrong_combinations_are_clear(baseline_runs):
    resnet = BaselineModel.from_checkpoint(baseline_runs["resnet"]["run_dir"], device="cpu")  # predicts only
    assert resnet.predict(torch.rand(1, 1, 64, 64)).probabilities.shape == (1, 2) and not resnet.makes_maps
    with pytest.raises(ValueError, match="--posthoc one of"):
        resnet.attribute(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="explain a ResNet run"):
        BaselineModel.from_checkpoint(baseline_runs["vagan"]["run_dir"], device="cpu", posthoc="gradcam")
    with pytest.raises(CheckpointError, match="baseline, not ICAM"):
        icam.Explainer.from_checkpoint(baseline_runs["vagan"]["run_dir"])


def test_any_run_loads_with_the_same_verbs(baseline_runs, run_dir):
    """icam.open_run gives every method's model predict and attribute, whatever its checkpoint holds."""
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    models = {"icam": icam.open_run(run_dir, "last", "cpu"),
              "gradcam": icam.open_run(baseline_runs["resnet"]["run_dir"], device="cpu", posthoc="gradcam"),
              "vagan": icam.open_run(baseline_runs["vagan"]["run_dir"], device="cpu")}
    assert isinstance(models["icam"], icam.Explainer) and isinstance(models["vagan"], BaselineModel)
    for name, model in models.items():
        options = {"n_samples": 4, "min_probability": None} if name == "icam" else {}
        assert model.attribute(x, **options).shape == x.shape, name
    assert models["icam"].predict(x).probabilities.shape == (2, 2)
    assert models["gradcam"].predict(x).probabilities.shape == (2, 2)
    with pytest.raises(ValueError, match="an ICAM run explains itself"):
        icam.open_run(run_dir, "last", "cpu", posthoc="gradcam")


def test_every_method_writes_one_checkpoint_schema_and_selects_its_best_alike(baseline_runs, run_dir):
    from icam.checkpoint import BestCheckpoint, load_checkpoint

    schema = {"method", "model_hparams", "config", "step", "best", "model", "optimizers"}
    for method, run in {"icam": run_dir, **{m: r["run_dir"] for m, r in baseline_runs.items()}}.items():
        state = load_checkpoint(run, "last")
        assert schema <= set(state) and state["method"] == method, (method, set(state))
        assert state["best"] is None or state["best"]["step"] <= state["step"]
    tracker = BestCheckpoint("mae", patience=2)  # lower is better; NaN never selects
    assert [tracker.improved({"mae": v}, step) for step, v in enumerate([3.0, float("nan"), 2.0, 2.5], 1)] == [
        True, False, True, False]
    assert tracker.best == {"metric": "mae", "value": 2.0, "step": 3} and not tracker.flat
    assert not tracker.improved({"mae": 2.0}, 5) and tracker.flat  # a tie is no improvement
    assert BestCheckpoint("balanced_accuracy").improved({"balanced_accuracy": 0.6}, 1)


def test_gradcam_is_the_standard_one_relu_of_the_weighted_activations(baseline_runs):
    model = BaselineModel.from_checkpoint(baseline_runs["resnet"]["run_dir"], posthoc="gradcam", device="cpu")
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    for target in (0, 1):
        assert (model.attribute(x, target=target) >= 0).all()  # relevance, never a negative lobe


def test_a_baseline_stops_when_its_validation_metric_is_flat(tmp_path):
    config = load_config(None, BASELINE + ["method=cnn-classifier", f"out_dir={tmp_path}", "baseline.steps=200",
                                           "baseline.validate_every=2", "baseline.patience=2", "baseline.lr=1e-9"])
    summary = train(config, show_progress=False)  # a learning rate that learns nothing: flat at once
    assert summary["stopped_early"] and summary["step"] == 6 and summary["selection"]["step"] == 2
    assert BaselineModel.from_checkpoint(summary["run_dir"], "best", "cpu").predict(
        torch.rand(1, 1, 64, 64)).probabilities.shape == (1, 2)


def test_occlusion_window_scales_from_the_paper_and_bounds_the_forward_passes():
    from icam.baselines.attribution import OCCLUSION_POSITIONS, occlusion_positions

    assert occlusion_window((128, 160, 128)) == (10, 5)  # the paper's own setting: 17,856 positions
    assert occlusion_window((64, 64)) == (5, 2)
    for shape in ((32, 48, 32), (64, 80, 64), (16, 16, 16)):  # scaled down, these were 45,167 … positions
        window, stride = occlusion_window(shape)
        assert occlusion_positions(shape, window, stride) <= OCCLUSION_POSITIONS and window >= 2 * stride


def test_occlusion_finds_the_only_region_a_3d_network_reads():
    """A network that reads one box of the volume: occlusion (batched positions) must light up
    that box and nothing a block away from it."""
    from icam.baselines.attribution import _posthoc

    class ReadsOneBox(torch.nn.Module):
        def forward(self, x):
            score = x[:, :, 4:8, 6:10, 2:6].sum((1, 2, 3, 4))
            return torch.stack([score, torch.zeros_like(score)], 1)

    x = torch.rand(1, 1, 16, 20, 16) + 0.5
    relevance = _posthoc(ReadsOneBox(), "occlusion", x, torch.zeros(1, dtype=torch.long))[0, 0]
    window, _ = occlusion_window((16, 20, 16))
    assert relevance.shape == x.shape[2:] and (relevance[4:8, 6:10, 2:6] > 0).all()
    far = torch.ones_like(relevance, dtype=torch.bool)
    far[4 - window:8 + window, 6 - window:10 + window, max(0, 2 - window):6 + window] = False
    assert relevance[far].abs().max() == 0


def test_baseline_maps_are_scored_like_icams(baseline_runs, tmp_path):
    from icam.data.synth_export import write_brain_synth

    write_brain_synth(tmp_path / "cohort", dims=2, n=6, seed=2, shape=(64, 64))
    csv_path = str(tmp_path / "cohort" / "cohort.csv")
    out = tmp_path / "gc"
    result = runner.invoke(app, ["explain", baseline_runs["resnet"]["run_dir"], "--posthoc", "gradcam",
                                 "--csv", csv_path, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list((out / "maps").glob("*_fa_mean.nii.gz"))) == len(list((out / "figures").glob("*_fa.png"))) == 6
    scored = runner.invoke(app, ["evaluate", str(out), "--csv", csv_path])
    assert scored.exit_code == 0, scored.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["maps"]["scored"] == 6 and "classification" in evaluation
    no_posthoc = runner.invoke(app, ["explain", baseline_runs["resnet"]["run_dir"], "--csv", csv_path,
                                     "--out", str(tmp_path / "x")])
    assert no_posthoc.exit_code == 2 and "--posthoc" in no_posthoc.stderr
    refined = runner.invoke(app, ["explain", baseline_runs["resnet"]["run_dir"], "--posthoc", "gradcam", "--csv",
                                  csv_path, "--out", str(tmp_path / "y"), "--refine-steps", "5"])
    assert refined.exit_code == 2 and "--refine-steps" in refined.stderr and "no content code" in refined.stderr

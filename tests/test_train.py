"""Training end to end: learning, run folders, checkpoints, resume, fine-tuning."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from icam.checkpoint import CheckpointError, load_checkpoint
from icam.data import build_cohorts
from icam.errors import UserError
from icam.model import ICAM
from icam.nets.blocks import set_activation_checkpointing
from icam.run import read_metrics
from icam.train import train


def test_a_tiny_model_learns_to_classify_squares(run_dir):
    # The shared run (conftest): bright boxes (effect 300, 6 background sd) keep it within a
    # test's budget; the paper's effect of 100 needs a few hundred steps (the benchmark's job).
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    validation = summary["validation"]
    assert validation["accuracy"] >= 0.95
    # A residual translation's map is its own change, with none of the decoder's error in it. At
    # a test's budget that change has not yet learned where the boxes are (40 steps: NCC about
    # -0.1 with either kind of translation; benchmarks/quality.py measures it), and the decoder's
    # error, on the boxes' edges, is what an image translation's map would have scored with.
    assert validation["ncc_minus"] == validation["translation_ncc_minus"] and validation["floor_ncc_minus"] > 0.1
    # what the map is made of, per direction, and how much class the content code carries
    for name in ("ncc", "translation_ncc", "floor_ncc"):  # class 0 squares have no change to score (no _plus)
        assert -1 <= validation[f"{name}_minus"] <= 1 and f"{name}_plus" not in validation
    assert validation["floor_l1"] > 0 and 0 <= validation["content_class_accuracy"] <= 1
    # the decoder and the classifier learn; the total is a game at this budget (the domain
    # discriminator's class head learns faster than the translations change class)
    records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    for term in ("generator/reconstruction_l1", "generator/classification"):
        assert records[-1][term] < 0.5 * records[0][term]


def test_run_folder_holds_what_reproduces_and_explains_the_run(tiny_config):
    summary = train(tiny_config("seed=7"), show_progress=False)
    run = Path(summary["run_dir"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed"] == 7 and config["loss"]["fa_map_l1"] == 10
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["seed"] == 7 and "torch" in provenance["packages"] and "commit" in provenance["git"]
    assert provenance["cpu"] and "gpu" in provenance  # what timings in its summary were measured on
    records = read_metrics(run)
    train_records = [r for r in records if r["split"] == "train"]
    assert {"generator/fa_map_l1", "generator/cycle_l2", "discriminator/content",
            "discriminator/domain_adversarial", "train/attribute_acceptance"} <= set(train_records[0])
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    assert "ncc" in records[-1] and "balanced_accuracy" in records[-1]
    assert list((run / "tensorboard").iterdir())
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}  # no temporary files
    assert json.loads((run / "summary.json").read_text())["step"] == 4


def test_a_gradient_penalty_on_the_judges_is_trained_and_logged_only_when_asked(tiny_config):
    penalised = read_metrics(train(tiny_config("loss.domain_gradient_penalty=1"), show_progress=False)["run_dir"])
    values = [r["discriminator/domain_gradient_penalty"] for r in penalised if r["split"] == "train"]
    assert values and all(math.isfinite(v) and v > 0 for v in values)
    plain = read_metrics(train(tiny_config(), show_progress=False)["run_dir"])
    assert not any("discriminator/domain_gradient_penalty" in r for r in plain)


def test_the_learning_rate_schedule_steps(tiny_config):
    summary = train(tiny_config("train.lr_schedule=linear", "train.lr_decay_start=0.5"), show_progress=False)
    lrs = [r["train/lr"] for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    assert lrs == [1e-4, 0.0]  # constant for the first half, linear to zero by the last step


def test_checkpoint_round_trip_gives_the_same_outputs(tiny_config):
    config = tiny_config()
    summary = train(config, show_progress=False)
    state = load_checkpoint(summary["run_dir"], "last")
    assert state["step"] == 4 and set(state["optimizers"]) == {"generator", "domain_discriminators",
                                                               "content_discriminator"}
    model = ICAM(**state["model_hparams"])
    model.load_state_dict(state["model"])
    model.eval()
    again = ICAM(**state["model_hparams"])
    again.load_state_dict(load_checkpoint(summary["run_dir"], "last")["model"])
    again.eval()
    x = build_cohorts(config.data, config.seed)["val"].images[:4]
    assert torch.equal(model.predict(x).probabilities, again.predict(x).probabilities)
    g1, g2 = (torch.Generator().manual_seed(0) for _ in range(2))
    assert torch.equal(model.translate(x, 1, generator=g1), again.translate(x, 1, generator=g2))


def test_resume_continues_exactly(tiny_config):
    full = train(tiny_config("name=full", "train.steps=6", "train.ema_decay=0.9"), show_progress=False)
    half = train(tiny_config("name=half", "train.steps=6", "train.ema_decay=0.9"), stop_at=3, show_progress=False)
    assert half["step"] == 3 and not half["finished"]
    resumed = train(tiny_config("name=half", "train.steps=6", "train.ema_decay=0.9"), resume=half["run_dir"],
                    show_progress=False)
    assert resumed["step"] == 6 and resumed["finished"]
    a, b = load_checkpoint(full["run_dir"]), load_checkpoint(resumed["run_dir"])
    for net in ("model", "model_ema", "domain_discriminators", "content_discriminator"):
        for name, tensor in a[net].items():
            assert torch.equal(tensor, b[net][name]), f"{net}.{name}"
    moments = [run["optimizers"]["generator"]["state"][0]["exp_avg"] for run in (a, b)]
    assert moments[0].equal(moments[1])
    assert resumed["validation"] == full["validation"]
    assert json.loads((Path(half["run_dir"]) / "provenance.json").read_text())["resumed"][0]["at_step"] == 3


def test_regression_fine_tuning_from_a_classification_run(tiny_config):
    common = ["data.continuous_target=true", "data.effect=300", "data.n_val=64", "data.image_size=32",
              "train.images_per_class=4", "train.lr=2e-3"]
    classification = train(tiny_config(*common, "loss.regression=0", "train.steps=4"), show_progress=False)
    assert not classification["regressing"]
    finetune = tiny_config(*common, "train.steps=40", "train.validate_every=40")
    summary = train(finetune, init_from=classification["run_dir"], show_progress=False)
    assert summary["regressing"] and summary["selection"]["metric"] == "mae"
    state = load_checkpoint(summary["run_dir"], "best")
    targets = build_cohorts(finetune.data, finetune.seed)["train"].targets
    assert state["model"]["target_mean"] == pytest.approx(float(targets.mean()))
    # clearly better than always predicting the training mean
    val_targets = build_cohorts(finetune.data, finetune.seed)["val"].targets
    assert summary["validation"]["mae"] < 0.75 * float((val_targets - targets.mean()).abs().mean())


def test_init_from_a_model_of_another_shape_is_refused(tiny_config):
    small = train(tiny_config(), show_progress=False)
    with pytest.raises(UserError, match=r"does not match this config: model\.width is 4 there, 8 here") as caught:
        train(tiny_config("model.width=8"), init_from=small["run_dir"], show_progress=False)
    assert caught.value.hint == "add --set model.width=4 to continue from it"


@pytest.mark.parametrize("key, there, here", [("discriminator_spectral_norm", "false", "true"),
                                               ("discriminator_real_fake", "shared", "per-class"),
                                               ("discriminator_centred", "false", "true")])
def test_init_from_a_run_with_other_discriminators_names_the_setting(tiny_config, key, there, here):
    """A run from before spectral normalisation became the default holds plain discriminators,
    one with a shared judge other heads, one whose judges saw brightness judges that learnt it:
    continuing from it says which setting to match, and leaves no run folder behind."""
    setting = f"model.{key}={there}"
    other = train(tiny_config(setting), show_progress=False)
    config = tiny_config()
    with pytest.raises(UserError, match=rf"model\.{key} is {there} there, {here} here") as caught:
        train(config, init_from=other["run_dir"], show_progress=False)
    assert caught.value.hint == f"add --set {setting} to continue from it"
    assert sorted(p.name for p in Path(config.out_dir).iterdir()) == [Path(other["run_dir"]).name]
    matched = train(tiny_config(setting), init_from=other["run_dir"], show_progress=False)
    assert Path(matched["run_dir"]).is_dir()


def test_loading_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable icam checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not an icam checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="without checkpoints"):
        load_checkpoint(tmp_path)


def test_three_classes_in_3d_learn_a_tiny_task():
    """K = 3 volumes whose class is their brightness: every batch holds each class, the
    attribute classifier's loss falls well below chance (log 3), and validation translates each
    volume to its next class and scores the maps."""
    from icam.config import load_config
    from icam.data import InMemoryCohort
    from icam.run import build_fabric
    from icam.train import Trainer

    torch.manual_seed(0)
    config = load_config(None, ["model.width=4", "runtime.accelerator=cpu", "train.steps=30", "train.lr=0.001"])
    labels = torch.arange(24) % 3
    images = ((labels.view(-1, 1, 1, 1, 1).float() - 1) * 0.6 + 0.1 * torch.randn(24, 1, 16, 16, 16)).clamp(-1, 1)
    cohort = InMemoryCohort(images, labels, gt_maps=torch.rand(24, 1, 16, 16, 16))
    trainer = Trainer(config, build_fabric(config), ICAM((16, 16, 16), 3, width=4), cohort, cohort, None,
                      show_progress=False)
    batches = trainer.batches()
    losses = []
    for _ in range(30):
        triple = next(batches)
        assert all(sorted(set(b["label"].tolist())) == [0, 1, 2] for b in triple)
        losses.append(float(trainer.train_step(triple)["generator/classification"]))
    assert sum(losses[:3]) / 3 > 1.0 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:3]) / 3, losses
    metrics = trainer.validate()
    assert metrics["ncc_subjects"] == 24 and -1 <= metrics["ncc"] <= 1


def test_activation_checkpointing_keeps_less_for_backward_and_gives_the_same_step():
    from icam.config import load_config
    from icam.data import InMemoryCohort
    from icam.run import build_fabric
    from icam.train import Trainer

    cohort = InMemoryCohort(torch.rand(8, 1, 16, 16, 16) * 2 - 1, torch.arange(8) % 2)
    weights, forward_calls, saved_bytes = [], [], []
    for checkpointing in (False, True):
        config = load_config(None, ["model.width=4", "runtime.accelerator=cpu", "train.steps=2",
                                    f"runtime.activation_checkpointing={checkpointing}"])
        torch.manual_seed(0)
        trainer = Trainer(config, build_fabric(config), ICAM((16, 16, 16), 2, width=4), cohort, None, None,
                          show_progress=False)
        calls, block = [], trainer.raw_model.generator.body[0]
        original = block.forward
        # hooks skip recompute; the batch size of each call is recorded
        block.forward = lambda x, original=original, calls=calls: calls.append(len(x)) or original(x)
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t
        batches = trainer.batches()
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trainer.train_step(next(batches))
        forward_calls.append(calls)
        saved_bytes.append(sum(saved))
        weights.append(torch.cat([p.detach().flatten() for net in trainer.networks().values()
                                  for p in net.parameters()]))
    # the generator ran again during backward, one image at a time (so its recomputed activations
    # peak at one volume's), far less was kept for backward, and the update is the same
    assert len(forward_calls[1]) > len(forward_calls[0]) and max(forward_calls[1]) == 1
    assert sum(forward_calls[1]) == 2 * sum(forward_calls[0])  # every image once forward, once in backward
    assert saved_bytes[1] < 0.35 * saved_bytes[0], saved_bytes
    # the same step: Adam's first update is ±lr wherever a gradient is not zero, so a gradient at
    # round-off level (per-image segments sum in another order) may flip; 99.5% must agree exactly
    assert (weights[0] - weights[1]).abs().le(1e-6).float().mean() > 0.995


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputing the encoders and the generator (one image per segment) must not change what
    backward computes."""
    images = torch.rand(4, 1, 16, 16, 16) * 2 - 1
    partner, random_attribute = torch.tensor([1, 0, 3, 2]), torch.randn(4, 1)
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = ICAM((16, 16, 16), 2, width=4)
        set_activation_checkpointing(model, checkpointing)
        torch.manual_seed(1)
        out = model(images, partner, random_attribute)
        loss = sum((getattr(out, k).float() ** 2).mean() for k in ("translated", "reconstructed", "randomly_translated",
                                                                   "cycle_reconstructed", "class_logits"))
        loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # equal up to float32 round-off (per-image convolutions sum in another order)
    assert len(gradients[0]) == len(gradients[1])
    assert (gradients[0] - gradients[1]).norm() < 1e-4 * gradients[0].norm()


def _tiny_trainer(extra=()):
    from icam.config import load_config
    from icam.data import InMemoryCohort
    from icam.run import build_fabric
    from icam.train import Trainer

    config = load_config(None, ["model.width=4", "runtime.accelerator=cpu", "train.steps=2",
                                "train.images_per_class=2", *extra])
    cohort = InMemoryCohort(torch.rand(12, 1, 32, 32) * 2 - 1, torch.arange(12) % 3)
    return Trainer(config, build_fabric(config), ICAM((32, 32), 3, width=4), cohort, None, None,
                   show_progress=False)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_an_iteration_updates_dc_twice_then_d_then_encoders_and_generator_which_leave_d_alone():
    trainer = _tiny_trainer()
    order, after_own_step = [], {}
    discriminators = {"content_discriminator": trainer.content_discriminator.module,
                      "domain_discriminators": trainer.domain_discriminators.module}

    def snapshot(net):
        return [p.detach().clone() for p in net.parameters()], [
            None if p.grad is None else p.grad.clone() for p in net.parameters()]

    for name, optimizer in trainer.optimizers().items():
        def step(*args, name=name, original=optimizer.step, **kwargs):
            result = original(*args, **kwargs)
            order.append(name)
            if name in discriminators:
                after_own_step[name] = snapshot(discriminators[name])
            return result
        optimizer.step = step
    generator_before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    trainer.train_step(next(trainer.batches()))
    assert order == ["content_discriminator", "content_discriminator", "domain_discriminators", "generator"]
    for name, net in discriminators.items():  # neither weights nor gradients moved after their own update
        weights, grads = snapshot(net)
        assert all(torch.equal(a, b) for a, b in zip(weights, after_own_step[name][0])), name
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, after_own_step[name][1])), name
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, trainer.raw_model.parameters()))


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_the_validity_term_teaches_the_generator_and_not_the_classifier_it_asks():
    """loss.translation_validity: the model's own classifier must read each translation as its
    target class. Only what makes the translations learns from it: the classifier gets the same
    gradients as without the term, the generator other ones."""
    gradients, logged = {}, {}
    for weight in (0, 1):
        torch.manual_seed(0)
        trainer = _tiny_trainer([f"loss.translation_validity={weight}"])
        model, step = trainer.raw_model, trainer.generator_optimizer.step

        def keep(*args, weight=weight, model=model, step=step, **kwargs):
            gradients[weight] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
            return step(*args, **kwargs)
        trainer.generator_optimizer.step = keep
        torch.manual_seed(1)
        logged[weight] = trainer.train_step(next(trainer.batches()))
    assert "generator/translation_validity" not in logged[0]
    assert float(logged[1]["generator/translation_validity"]) > 0
    asked = [n for n in gradients[0] if n.startswith("classifier.")]
    assert asked and all(torch.allclose(gradients[0][n], gradients[1][n], atol=1e-6) for n in asked)
    assert any(not torch.allclose(gradients[0][n], gradients[1][n], atol=1e-6)
               for n in gradients[0] if n.startswith("generator."))


@pytest.mark.filterwarnings("ignore:this CPU .*has no bf16 instructions")
def test_under_bf16_every_forward_pass_sees_the_weights_of_the_latest_step():
    """Autocast keeps its bf16 copy of a weight until its context ends: Dc's second update of an
    iteration must not run on the copy made before its first (each forward is checked against
    the same layer recomputed from the weights as they are at that moment)."""
    import torch.nn.functional as F

    trainer = _tiny_trainer(["runtime.precision=bf16-mixed"])
    classifier = trainer.content_discriminator.module.classifier
    seen = []

    def check(module, inputs, output):
        with torch.autocast("cpu", enabled=False):
            current = F.linear(inputs[0].bfloat16(), module.weight.bfloat16(), module.bias.bfloat16())
        seen.append(torch.equal(output, current))

    classifier.register_forward_hook(check)
    trainer.train_step(next(trainer.batches()))
    assert len(seen) == 3 and all(seen), seen  # Dc's two updates, then the generator's content loss


def test_every_image_is_translated_to_the_next_class_and_the_cycle_can_undo_it():
    from icam.model import next_class, translation_partners

    labels = torch.tensor([1, 0, 2, 0, 2, 1, 1, 0, 2])  # any order within a class-balanced batch
    partner = translation_partners(labels, 3)
    assert torch.equal(labels[partner], next_class(labels, 3))
    assert torch.equal(partner.sort().values, torch.arange(9))  # a permutation
    two = torch.tensor([0, 0, 1, 1])
    assert (two[translation_partners(two, 2)] != two).all()


def test_the_moving_average_is_what_validation_and_explanations_use(tmp_path):
    from icam.explain import open_run

    trainer = _tiny_trainer(["train.ema_decay=0.9"])
    batches = trainer.batches()
    for _ in range(3):
        trainer.train_step(next(batches))
    raw, average = trainer.raw_model, trainer.inference_model
    assert average is not raw
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), average.parameters()))
    trainer.run_dir = tmp_path
    trainer.save("last")
    explainer = open_run(tmp_path, "last", "cpu")
    for a, b in zip(explainer.model.parameters(), average.parameters()):
        assert torch.equal(a.detach(), b.detach())


def test_the_content_probe_reads_the_class_only_where_the_content_carries_it():
    """content_class_accuracy: a probe fitted on training content codes scores near 1 when the code
    carries the class, near chance when it does not (the goal of disentanglement)."""
    from icam.data import InMemoryCohort
    from icam.validation import content_class_accuracy

    class Encoder(torch.nn.Module):
        def __init__(self, leaks: bool):
            super().__init__()
            self.leaks = leaks

        def encode_content(self, x):
            code = torch.randn(len(x), 4, 8, 8, generator=torch.Generator().manual_seed(int(x.sum() * 1000) % 2**31))
            return code + (x.mean((1, 2, 3)).view(-1, 1, 1, 1) * 3 if self.leaks else 0)

    labels = torch.arange(120) % 2
    images = (labels.float().view(-1, 1, 1, 1) * 2 - 1) + 0.01 * torch.randn(120, 1, 16, 16)
    train_set, test_set = InMemoryCohort(images[:80], labels[:80]), InMemoryCohort(images[80:], labels[80:])
    assert content_class_accuracy(Encoder(True), train_set, test_set) > 0.95
    assert content_class_accuracy(Encoder(False), train_set, test_set) < 0.75


def test_counterfactual_random_attributes_keep_what_the_heads_do_not_read():
    """train.random_attributes=counterfactual draws the random translations' attributes as the
    maps do: each scan's own attribute mean, redrawn only in what the prediction heads read."""
    trainer = _tiny_trainer(["train.random_attributes=counterfactual"])
    model, seen = trainer.raw_model, {}
    forward = model.forward

    def recording(images, partner, random_attribute):
        with torch.no_grad():  # the weights the draw saw (the step changes them)
            seen.update(own=model.encode_attribute(images)[0], subspace=model.prediction_subspace(False),
                        random=random_attribute)
        return forward(images, partner, random_attribute)

    model.forward = recording
    trainer.train_step(next(trainer.batches()))
    outside = torch.eye(model.latent_size) - seen["subspace"].T @ seen["subspace"]
    assert torch.allclose(seen["random"] @ outside, seen["own"] @ outside, atol=1e-5)
    assert not torch.allclose(seen["random"], seen["own"], atol=1e-3)  # the part the heads read is drawn

"""Training the baselines: the ResNet classifier (for post-hoc saliency), the attribute-encoder
CNN (ICAM-reg's regression baseline, and the independent classifier that judges
translations), and VA-GAN. Run folders and checkpoints have the same layout as ICAM's; a
checkpoint's ``method`` says which network it holds.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..checkpoint import BestCheckpoint, checkpoint_state, save_checkpoint
from ..config import Config
from ..data import ClassBalancedBatchSampler
from ..data.table import num_classes_of
from ..errors import UserError
from ..metrics import balanced_accuracy, confusion_matrix, ncc
from ..progress import StepProgress
from ..run import MetricsLog, build_fabric, start_run
from .networks import WGANCritic, build_network

DEFAULT_LR = {"resnet": 1e-4, "cnn-regressor": 1e-4, "cnn-classifier": 1e-4, "vagan": 1e-3}


def _batches(dataset, config: Config, per_class: int):
    sampler = ClassBalancedBatchSampler(dataset.labels, per_class, seed=config.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.train.num_workers,
                        persistent_workers=config.train.num_workers > 0)
    return iter(loader)


class _Run:
    """Logging, validation bookkeeping and checkpoints (the schema and best tracking ICAM's
    trainer uses) of one baseline run. The checkpoint's ``model`` is the network that predicts or
    makes maps; ``optimizer`` is its optimiser."""

    def __init__(self, config: Config, run_dir, hparams: dict, selection: str, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, extra: dict | None = None):
        self.config, self.run_dir, self.hparams = config, run_dir, hparams
        self.model, self.optimizer, self.extra = model, optimizer, extra or {}
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        self.best_checkpoint = BestCheckpoint(selection, config.baseline.patience)

    def save(self, name: str, step: int) -> None:
        save_checkpoint(checkpoint_state(self.hparams["method"], self.config, self.hparams, step,
                                         self.best_checkpoint.best, {"model": self.model.state_dict()},
                                         {"model": self.optimizer.state_dict()}, **self.extra),
                        self.run_dir / "checkpoints" / f"{name}.pt")

    def validated(self, step: int, metrics: dict) -> None:
        self.log.write({"step": step, "split": "val", **metrics})
        if self.best_checkpoint.improved(metrics, step):
            self.save("best", step)

    @property
    def flat(self) -> bool:
        """The validation metric stopped improving: ``baseline.patience`` validations without a new best."""
        return self.best_checkpoint.flat

    def finish(self, step: int, metrics: dict, started: float) -> dict:
        self.save("last", step)
        seconds = time.time() - started
        summary = {"run_dir": str(self.run_dir), "method": self.hparams["method"], "step": step,
                   "steps": self.config.baseline.steps, "finished": True, "stopped_early": self.flat,
                   "wall_seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(1, step), 4),
                   "selection": self.best_checkpoint.best, "validation": metrics,
                   "regressing": self.hparams["method"] == "cnn-regressor"}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _mixed_precision(config: Config, fabric):
    """The context each forward pass and loss runs in: bf16 autocast under runtime.precision
    bf16-mixed (optimiser steps stay outside it, see Trainer.train_step). 16-mixed would need a
    loss scale these loops do not keep, so they train in 32-true then, and say so."""
    if config.runtime.precision == "16-mixed":
        warnings.warn(f"method={config.method} trains in 32-true or bf16-mixed; 16-mixed needs loss scaling: "
                      "training in 32-true", stacklevel=3)
    return fabric.autocast if config.runtime.precision.startswith("bf16") else contextlib.nullcontext


def train_baseline(config: Config, show_progress: bool = True) -> dict:
    if config.runtime.devices not in (1, "1") or config.runtime.num_nodes != 1:
        raise UserError(f"baselines train on one device (method={config.method}); set --devices 1")
    fabric = build_fabric(config)
    cohorts, run_dir, val_set = start_run(config, fabric)
    train_set = cohorts["train"]
    hparams = {"method": config.method, "image_shape": list(train_set.image_shape),
               "num_classes": num_classes_of(config.data, train_set.labels.tolist()),
               "in_channels": train_set.in_channels,
               "width": config.baseline.width}
    torch.manual_seed(config.seed)
    with StepProgress(config.method, show_progress, config.baseline.steps) as progress:
        if config.method == "vagan":
            return _train_vagan(config, fabric, train_set, val_set, run_dir, hparams, progress)
        return _train_supervised(config, fabric, train_set, val_set, run_dir, hparams, progress)


def _train_supervised(config, fabric, train_set, val_set, run_dir, hparams, progress) -> dict:
    """The ResNet and attribute-encoder CNNs: class-weighted cross-entropy, or smooth L1 on
    standardised targets for the regressor."""
    method, b = config.method, config.baseline
    regress = method == "cnn-regressor"
    model = build_network(hparams).to(fabric.device)
    lr = b.lr or DEFAULT_LR[method]
    optimizer = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if method == "resnet" else
                 torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999)))
    counts = torch.bincount(train_set.labels, minlength=hparams["num_classes"]).float()
    class_weights = (counts.sum() / (len(counts) * counts)).to(fabric.device)
    extra = {}
    if regress:
        known = train_set.targets[~torch.isnan(train_set.targets)]
        if len(known) < 2:
            raise UserError("method=cnn-regressor needs a continuous target in the training data")
        extra = {"target_mean": float(known.mean()), "target_std": float(known.std()) or 1.0}
    run = _Run(config, run_dir, hparams, "mae" if regress else "balanced_accuracy", model, optimizer, extra)
    batches = _batches(train_set, config, max(1, b.batch_size // hparams["num_classes"]))
    started, metrics, mixed = time.time(), {}, _mixed_precision(config, fabric)
    for step in range(1, b.steps + 1):
        model.train()
        batch = fabric.to_device(next(batches))
        with mixed():
            output = model(batch["image"])
            if regress:
                target = (batch["target"] - extra["target_mean"]) / extra["target_std"]
                known = ~torch.isnan(target)
                loss = F.smooth_l1_loss(output[:, 0][known].float(), target[known])
            else:
                loss = F.cross_entropy(output, batch["label"], weight=class_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.advance()
        if step % config.train.log_every == 0:
            run.log.write({"step": step, "split": "train", "loss": loss.item()})
            progress.describe(f"loss {loss.item():.3f}")
        if val_set is not None and (step % b.validate_every == 0 or step == b.steps):
            metrics = _validate_supervised(model, val_set, regress, extra, fabric.device)
            run.validated(step, metrics)
            if run.flat:
                break
    return run.finish(step, metrics, started)


@torch.no_grad()
def _validate_supervised(model, dataset, regress: bool, extra: dict, device) -> dict:
    model.eval()
    outputs, labels, targets = [], [], []
    for batch in DataLoader(dataset, batch_size=64):
        outputs.append(model(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
        targets.append(batch["target"])
    output, label, target = torch.cat(outputs), torch.cat(labels), torch.cat(targets)
    if regress:
        predicted = output[:, 0] * extra["target_std"] + extra["target_mean"]
        known = ~torch.isnan(target)
        return {"mae": float((predicted[known] - target[known]).abs().mean())}
    k = output.shape[1]
    confusion = confusion_matrix(label, output.argmax(1), k)
    return {"accuracy": float(confusion.diag().sum() / confusion.sum()),
            "balanced_accuracy": balanced_accuracy(confusion)}


def _gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (‖∇C(x̂)‖ − 1)² at random points between real and fake, per sample over all
    voxels (VA-GAN's code took the norm over one axis only)."""
    epsilon = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    mixed = (epsilon * real + (1 - epsilon) * fake).requires_grad_(True)
    gradient, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()


def _train_vagan(config, fabric, train_set, val_set, run_dir, hparams, progress) -> dict:
    """VA-GAN (Baumgartner et al. 2018): y = x + M(x) for class-1 images must pass as class 0
    before a WGAN-GP critic, with an L1 penalty on M. One direction (1 → 0), as in its paper."""
    b = config.baseline
    if hparams["num_classes"] != 2:
        raise UserError("VA-GAN translates between two classes; the data has "
                         f"{hparams['num_classes']}")
    generator = build_network(hparams).to(fabric.device)
    critic = WGANCritic(len(hparams["image_shape"]), tuple(hparams["image_shape"]), hparams["in_channels"],
                        b.width).to(fabric.device)
    lr = b.lr or DEFAULT_LR["vagan"]
    g_opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.0, 0.9))
    c_opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.0, 0.9))
    run = _Run(config, run_dir, hparams, "ncc", generator, g_opt)
    batches = _batches(train_set, config, max(1, b.batch_size // 2))

    def split():
        batch = fabric.to_device(next(batches))
        return batch["image"][batch["label"] == 0], batch["image"][batch["label"] == 1]

    started, metrics, mixed = time.time(), {}, _mixed_precision(config, fabric)
    for step in range(1, b.steps + 1):
        generator.train()
        warm = step <= b.warmup_generator_steps or step % 100 == 0
        for _ in range(b.warmup_critic_steps if warm else b.critic_steps):
            healthy, diseased = split()
            with mixed():
                with torch.no_grad():
                    translated = diseased + generator(diseased)
                loss_c = (critic(healthy).mean() - critic(translated).mean()
                          + b.gradient_penalty * _gradient_penalty(critic, healthy, translated))
            c_opt.zero_grad(set_to_none=True)
            loss_c.backward()
            c_opt.step()
        _, diseased = split()
        with mixed():
            change = generator(diseased)
            loss_g = critic(diseased + change).mean() + b.map_l1 * change.abs().mean()
        g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        g_opt.step()
        progress.advance()
        if step % config.train.log_every == 0:
            run.log.write({"step": step, "split": "train", "critic": loss_c.item(), "generator": loss_g.item(),
                           "map_l1": change.detach().abs().mean().item()})
            progress.describe(f"critic {loss_c.item():.2f}  G {loss_g.item():.2f}")
        if val_set is not None and val_set.has_gt_maps and (step % b.validate_every == 0 or step == b.steps):
            metrics = _validate_vagan(generator, val_set, fabric.device)
            run.validated(step, metrics)
            if run.flat:
                break
    return run.finish(step, metrics, started)


@torch.no_grad()
def _validate_vagan(generator, dataset, device) -> dict:
    """NCC of the maps M(x) of the class-1 validation images (the direction VA-GAN learns)."""
    generator.eval()
    per_batch = []
    for batch in DataLoader(dataset, batch_size=32):
        chosen = batch["label"] == 1
        if not chosen.any():
            continue
        maps = generator(batch["image"][chosen].to(device)).cpu()
        mask = batch["mask"][chosen] if "mask" in batch else None
        per_batch.append(ncc(maps, batch["gt_map"][chosen], mask))
    values = torch.cat(per_batch) if per_batch else torch.empty(0)
    values = values[~torch.isnan(values)]
    return {"ncc": float(values.mean()) if len(values) else float("nan"), "ncc_subjects": len(values)}


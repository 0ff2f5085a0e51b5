"""The training loop: the paper's update order, and nothing else.

Each iteration takes three class-balanced batches (every class in every batch):
  1, 2. the content discriminator Dc learns to read the class off z_c (twice);
  3.    the two domain discriminators learn real vs. translated images (and the class of
        real images); then the encoders and generator take one step on the full objective
        against the updated discriminators.
Randomness is derived from (seed, rank, step) and the data order from the batch number,
so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import faulthandler
import gc
import json
import math
import shutil
import signal
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from lightning_fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from . import losses
from .baselines.train import train_baseline
from .checkpoint import BestCheckpoint, checkpoint_state, load_checkpoint, save_checkpoint
from .config import DISCRIMINATOR_KEYS, Config, ModelConfig, as_saved
from .data import ClassBalancedBatchSampler
from .data.table import class_names, num_classes_of
from .errors import UserError
from .files import write_json
from .model import ICAM, build_model, translation_partners
from .nets import ContentDiscriminator, DomainDiscriminators
from .nets.blocks import compile_networks, init_weights, set_activation_checkpointing
from .progress import StepProgress
from .report.grids import translation_grid
from .run import MetricsLog, build_fabric, check_writable, finished_summary, record_resume, run_lock, start_run
from .validation import content_class_accuracy, selection_metric, summarise, validation_statistics


@contextmanager
def frozen(*modules: nn.Module):
    """No gradients for these modules' parameters: the generator's step must not compute
    (or synchronise) discriminator gradients it throws away."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def step_seed(seed: int, rank: int, step: int) -> int:
    return ((seed * 2**20 + rank) * 2**32 + step) % 2**63


def lr_factor(schedule: str, steps: int, decay_start: float):
    start = int(decay_start * steps)

    def factor(step: int) -> float:
        if schedule == "linear":
            return 1.0 if step < start else max(0.0, (steps - step) / max(1, steps - start))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        return 1.0
    return factor


class StopRequested:
    """SIGTERM (SLURM's time limit) or Ctrl-C: finish the current step, checkpoint, exit."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in self._previous:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(s, handler)


def as_setting(value) -> str:
    """A value as it is written after --set: resize, false, 4, [64, 64]."""
    return value if isinstance(value, str) else json.dumps(value)


class Trainer:
    """Holds the networks, optimisers and schedules of one run and performs its updates."""

    def __init__(self, config: Config, fabric: Fabric, model: ICAM, train_set, val_set=None,
                 run_dir: Path | None = None, show_progress: bool = True):
        self.config, self.fabric = config, fabric
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = run_dir
        self.show_progress = show_progress and fabric.is_global_zero
        self.regressing = config.loss.regression > 0 and bool((~torch.isnan(train_set.targets)).any())
        selection = self._selection()
        domain, content = self._discriminators(model)
        self._set_target_scale(model)
        self.memory_format = self._prepare_for_runtime(model, domain, content)
        optimizers = self._optimizers(model, domain, content)
        self.model, self.generator_optimizer = fabric.setup(model, optimizers[0])
        self.domain_discriminators, self.domain_optimizer = fabric.setup(domain, optimizers[1])
        self.content_discriminator, self.content_optimizer = fabric.setup(content, optimizers[2])
        factor = lr_factor(config.train.lr_schedule, config.train.steps, config.train.lr_decay_start)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(o, factor) for name, o in
                           (("generator", self.generator_optimizer), ("domain_discriminators", self.domain_optimizer),
                            ("content_discriminator", self.content_optimizer))}
        # The moving average of the encoders' and generator's weights: what validation, the best
        # checkpoint and explanations use when train.ema_decay is set (the raw weights keep training).
        self.ema = copy.deepcopy(model).requires_grad_(False) if config.train.ema_decay else None
        self.step = 0
        self.best_checkpoint = BestCheckpoint(selection)
        self._running: dict[str, torch.Tensor] = {}
        self._running_count = 0

    # -- building a run: each step of __init__ ---------------------------------------------

    def _selection(self) -> str:
        """The validation metric that selects the best checkpoint, refused when the data lack it."""
        has_gt = self.val_set is not None and self.val_set.has_gt_maps
        selection = selection_metric(self.config.train.selection, self.regressing, has_gt)
        if selection == "mae" and not self.regressing:
            raise UserError("train.selection=mae needs a regression target in the data and loss.regression > 0")
        if selection == "ncc" and not has_gt:
            raise UserError("train.selection=ncc needs ground-truth maps in the validation data")
        return selection

    def _discriminators(self, model: ICAM) -> tuple[DomainDiscriminators, ContentDiscriminator]:
        m = self.config.model
        domain = DomainDiscriminators(model.spatial_dims, model.image_shape, model.num_classes,
                                      self.train_set.in_channels, m.width, spectral_norm=m.discriminator_spectral_norm,
                                      real_fake=m.discriminator_real_fake, centred=m.discriminator_centred)
        content = ContentDiscriminator(model.spatial_dims, model.content_shape,
                                       model.content_encoder.out_channels, model.num_classes,
                                       norm=m.content_discriminator_norm, reads=m.content_discriminator_reads)
        for net in (domain, content):
            init_weights(net, m.init)
        return domain, content

    def _set_target_scale(self, model: ICAM) -> None:
        """The regressor learns the standardised target: the training targets' mean and sd."""
        if not self.regressing:
            model.regressor.requires_grad_(False)  # unused: DDP must not wait for its gradients
            return
        targets = self.train_set.targets[~torch.isnan(self.train_set.targets)]
        model.target_mean.fill_(float(targets.mean()))
        model.target_std.fill_(float(targets.std()) if len(targets) > 1 and targets.std() > 0 else 1.0)

    def _prepare_for_runtime(self, model: ICAM, domain: DomainDiscriminators, content: ContentDiscriminator):
        """runtime.channels_last, activation_checkpointing and compile; returns the memory format."""
        rt, memory_format = self.config.runtime, None
        if rt.channels_last:
            memory_format = torch.channels_last if model.spatial_dims == 2 else torch.channels_last_3d
            for net in (model, domain, content):
                net.to(memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs lack it
        if rt.activation_checkpointing:
            for net in (model, domain, content):
                set_activation_checkpointing(net, True)
        compile_networks([model.content_encoder, model.attribute_encoder, model.generator, domain.encoded,
                          domain.random, content], rt.compile, rt.compile_mode)
        return memory_format

    def _optimizers(self, model: ICAM, domain: nn.Module, content: nn.Module) -> tuple:
        cfg = self.config.train

        def adam(params, lr):
            # fused: one kernel for all parameters, several times faster than a loop over them
            return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=tuple(cfg.betas),
                                    weight_decay=cfg.weight_decay, fused=True)
        return (adam(model.parameters(), cfg.lr), adam(domain.parameters(), cfg.lr),
                adam(content.parameters(), cfg.content_discriminator_lr))

    # -- the raw networks (for calls that must not go through the DDP wrapper) ------------

    @property
    def raw_model(self) -> ICAM:
        return self.model.module

    @property
    def inference_model(self) -> ICAM:
        """The weights that validation and explanations use: the moving average when kept."""
        return self.ema if self.ema is not None else self.raw_model

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model.module, "domain_discriminators": self.domain_discriminators.module,
                "content_discriminator": self.content_discriminator.module}

    def optimizers(self) -> dict:
        return {"generator": self.generator_optimizer, "domain_discriminators": self.domain_optimizer,
                "content_discriminator": self.content_optimizer}

    # -- the updates -------------------------------------------------------------------------

    def _prepare(self, batch: dict) -> dict:
        batch = self.fabric.to_device(batch)
        if self.memory_format is not None:
            batch["image"] = batch["image"].contiguous(memory_format=self.memory_format)
        return batch

    def update_content_discriminator(self, content: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.fabric.autocast():
            terms = losses.content_discriminator_terms(self.content_discriminator(content), labels)
        self.content_optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(losses.weighted_sum(terms, self.config.loss))
        if self.config.train.content_discriminator_grad_clip:
            # error_if_nonfinite would read the norm back to the host every step
            self.fabric.clip_gradients(self.content_discriminator, self.content_optimizer,
                                       max_norm=self.config.train.content_discriminator_grad_clip,
                                       error_if_nonfinite=False)
        self.content_optimizer.step()
        return terms["content_adversarial"]

    def update_discriminators_and_generator(self, batch: dict) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        partner = translation_partners(labels, self.raw_model.num_classes)
        translated_labels = labels[partner]
        with self.fabric.autocast():
            drawn_like = {}
            if self.config.train.random_attributes == "counterfactual":
                with torch.no_grad():
                    own = self.raw_model.encode_attribute(images)[0].float()
                drawn_like = self.raw_model.sampling_arguments("counterfactual", own, self.regressing)
            sample = self.raw_model.sample_attribute(translated_labels, max_candidates=None,
                                                     candidates_per_row=self.config.train.rejection_candidates,
                                                     **drawn_like)
            out = self.model(images, partner, sample.attribute)
            penalised = self.config.loss.domain_gradient_penalty > 0
            real = images.detach().requires_grad_(penalised)
            real_enc, fake_enc, real_rand, fake_rand = self.domain_discriminators(
                real, labels, out.translated.detach(), out.randomly_translated.detach(), translated_labels)
            encoded_terms = losses.domain_discriminator_terms(real_enc, fake_enc, labels)
            random_terms = losses.domain_discriminator_terms(real_rand, fake_rand, labels)
            d_terms = {name: encoded_terms[name] + random_terms[name] for name in encoded_terms}
            if penalised:
                d_terms["domain_gradient_penalty"] = (losses.gradient_penalty(real_enc[0], real)
                                                      + losses.gradient_penalty(real_rand[0], real))
        self.domain_optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(losses.weighted_sum(d_terms, self.config.loss))
        self.domain_optimizer.step()

        domain = self.domain_discriminators.module
        with frozen(domain, self.content_discriminator.module):
            with self.fabric.autocast():
                validity = None
                if self.config.loss.translation_validity:
                    # the classifier judges the translations but learns nothing from them
                    with frozen(self.raw_model.attribute_encoder, self.raw_model.classifier):
                        validity = self.raw_model.classifier(self.raw_model.encode_attribute(
                            torch.cat([out.translated, out.randomly_translated]))[0])
                g_terms = losses.generator_terms(
                    out, images, labels, translated_labels,
                    self.raw_model.standardise_target(batch["target"]) if self.regressing else None,
                    sample.attribute, domain.encoded(out.translated, translated_labels),
                    domain.random(out.randomly_translated, translated_labels),
                    self.content_discriminator.module(out.content), validity,
                    structure=self.config.loss.reconstruction_ssim > 0)
                total = losses.weighted_sum(g_terms, self.config.loss)
            self.generator_optimizer.zero_grad(set_to_none=True)
            self.fabric.backward(total)
        self.generator_optimizer.step()
        if self.ema is not None:
            self.update_ema()

        logged = {f"generator/{k}": v for k, v in g_terms.items()}
        logged.update({f"discriminator/{k}": v for k, v in d_terms.items()})
        logged["generator/total"] = total
        logged["train/accuracy"] = (out.class_logits.argmax(1) == labels).float().mean()
        logged["train/attribute_acceptance"] = sample.hits / sample.drawn
        logged["train/attribute_fallback"] = (~sample.accepted).float().mean()
        return logged

    @torch.no_grad()
    def update_ema(self) -> None:
        # a shorter memory early on (TensorFlow's num_updates rule), so the average does not keep
        # the random initial weights for the first ~1/(1 − decay) steps
        assert self.ema is not None and self.config.train.ema_decay is not None  # kept only with a decay
        decay = min(self.config.train.ema_decay, (1 + self.step) / (10 + self.step))
        for average, current in zip(self.ema.parameters(), self.raw_model.parameters()):
            average.lerp_(current, 1 - decay)
        for kept, buffer in zip(self.ema.buffers(), self.raw_model.buffers()):
            kept.copy_(buffer)

    def train_step(self, batches: list[dict]) -> dict[str, torch.Tensor]:
        """One iteration: Dc twice, then D, then encoders + generator (three batches).

        Mixed precision covers each forward pass and its loss, never an optimiser step:
        autocast keeps the low-precision copy of a weight until its context ends, so a forward
        in the same context after a step would see the weights from before it."""
        first, second, third = (self._prepare(b) for b in batches)
        # Only Dc changes between its two updates, so both batches' z_c come from one Ec call.
        with torch.no_grad(), self.fabric.autocast():
            contents = self.raw_model.encode_content(torch.cat([first["image"], second["image"]])).chunk(2)
        content_losses = [self.update_content_discriminator(c, b["label"]) for c, b in zip(contents, (first, second))]
        logged = {"discriminator/content": torch.stack(content_losses).mean(),
                  **self.update_discriminators_and_generator(third)}
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        return {k: v.detach() for k, v in logged.items()}

    # -- data ---------------------------------------------------------------------------------

    def batches(self):
        """Class-balanced training batches from the current step on, in threes."""
        sampler = ClassBalancedBatchSampler(
            self.train_set.labels, self.config.train.images_per_class, seed=self.config.seed,
            rank=self.fabric.global_rank, world_size=self.fabric.world_size, start_batch=3 * self.step)
        loader = iter(DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.config.train.num_workers,
                                 persistent_workers=self.config.train.num_workers > 0,
                                 pin_memory=self.fabric.device.type == "cuda"))  # asynchronous copies
        while True:
            yield [next(loader) for _ in range(3)]

    # -- validation, checkpoints --------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        v = self.config.validation
        stats = validation_statistics(self.inference_model, self.val_set, batch_size=v.batch_size,
                                      fa_samples=v.fa_samples, min_probability=v.min_probability,
                                      seed=self.config.seed, reference=v.fa_reference,
                                      rank=self.fabric.global_rank, world_size=self.fabric.world_size,
                                      sampling=self.config.model.attribute_sampling, regressing=self.regressing,
                                      device=self.fabric.device, autocast=self.fabric.autocast)
        if self.fabric.world_size > 1:
            stats = cast(dict[str, torch.Tensor], self.fabric.all_reduce(stats, reduce_op="sum"))
        metrics = summarise(stats, self.regressing)
        if self.fabric.is_global_zero and v.content_probe_images:  # logged, never selects: rank 0 alone
            metrics["content_class_accuracy"] = content_class_accuracy(
                self.inference_model, self.train_set, self.val_set, device=self.fabric.device,
                max_train=v.content_probe_images, seed=self.config.seed)
        return metrics

    def state_dict(self) -> dict:
        weights = {name: net.state_dict() for name, net in self.networks().items()}
        if self.ema is not None:
            weights["model_ema"] = self.ema.state_dict()
        return checkpoint_state("icam", self.config, self.raw_model.hparams, self.step, self.best_checkpoint.best,
                                weights, {name: o.state_dict() for name, o in self.optimizers().items()},
                                schedulers={name: s.state_dict() for name, s in self.schedulers.items()},
                                regressing=self.regressing)

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        """Restore a checkpoint; ``weights_only`` takes the networks alone (``--init-from``)."""
        # what shapes the networks' weights: the model's hyperparameters and the discriminators' settings
        saved = as_saved(state["config"])["model"]
        theirs = {**ICAM.complete_hparams(state["model_hparams"]),
                  **{key: saved[key] for key in DISCRIMINATOR_KEYS if key in saved}}
        ours = {**ICAM.complete_hparams(self.raw_model.hparams),
                **{key: getattr(self.config.model, key) for key in DISCRIMINATOR_KEYS}}
        differing = [key for key in ours if key in theirs and theirs[key] != ours[key]]
        if differing:
            settings = [key for key in differing if key in ModelConfig.model_fields]
            named = {key: f"model.{key}" if key in settings else key for key in differing}
            raise UserError("the checkpoint does not match this config: " + "; ".join(
                f"{named[key]} is {as_setting(theirs[key])} there, {as_setting(ours[key])} here" for key in differing),
                hint=f"add {' '.join(f'--set model.{key}={as_setting(theirs[key])}' for key in settings)} to continue "
                     "from it" if settings else None)
        target_stats = (self.raw_model.target_mean.clone(), self.raw_model.target_std.clone())
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        if weights_only:  # fine-tuning: from the weights the source run explains with (its moving
            # average when it kept one), with this data's target scale and a fresh optimiser state
            self.raw_model.load_state_dict(state.get("model_ema", state["model"]))
            self.raw_model.target_mean.copy_(target_stats[0])
            self.raw_model.target_std.copy_(target_stats[1])
            if self.ema is not None:
                self.ema.load_state_dict(self.raw_model.state_dict())
            return
        if self.ema is not None:
            self.ema.load_state_dict(state.get("model_ema", state["model"]))
        for name, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][name])
        for name, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][name])
        self.step, self.best_checkpoint.best = state["step"], state["best"]

    def save(self, name: str) -> None:
        if self.run_dir is not None and self.fabric.is_global_zero:
            save_checkpoint(self.state_dict(), self.run_dir / "checkpoints" / f"{name}.pt")
        self.fabric.barrier()

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, stop_at: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop after ``stop_at``); returns the final summary."""
        cfg, fabric = self.config.train, self.fabric
        run_dir = self.run_dir if fabric.is_global_zero else None  # only the main process writes
        writer = SummaryWriter(str(run_dir / "tensorboard")) if run_dir is not None else None
        log = MetricsLog(run_dir / "metrics.jsonl") if run_dir is not None else None
        last_stop = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        metrics: dict[str, float] = {}
        started, start_step = time.time(), self.step
        progress = StepProgress("train", self.show_progress, cfg.steps, self.step)
        with StopRequested() as stop, progress:
            for batches in self.batches():
                if self.step >= last_stop:
                    break
                torch.manual_seed(step_seed(self.config.seed, fabric.global_rank, self.step))
                logged = self.train_step(batches)
                self._accumulate(logged)
                progress.advance()
                if self.step % cfg.log_every == 0 or self.step == last_stop:
                    record = {**self._flush(), "train/lr": self.schedulers["generator"].get_last_lr()[0]}
                    progress.describe(f"G {record.get('generator/total', float('nan')):.2f}  "
                                      f"D {record.get('discriminator/domain_adversarial', float('nan')):.2f}  "
                                      f"acc {record.get('train/accuracy', float('nan')):.2f}")
                    if log is not None and writer is not None:
                        log.write({"step": self.step, "split": "train", **record})
                        for k, v in record.items():
                            writer.add_scalar(k, v, self.step)
                    if fabric.world_size > 1:  # every rank must stop at the same step
                        stop.requested = bool(fabric.all_reduce(torch.tensor(float(stop.requested)),
                                                                reduce_op="max"))
                if self.val_set is not None and (self.step % cfg.validate_every == 0 or self.step == last_stop):
                    metrics = self.validate()
                    better = self.best_checkpoint.improved(metrics, self.step)
                    if log is not None and writer is not None:
                        log.write({"step": self.step, "split": "val", **metrics})
                        for k, v in metrics.items():
                            writer.add_scalar(f"val/{k}", v, self.step)
                    if better:
                        self.save("best")
                if (writer is not None and self.val_set is not None
                        and (self.step % cfg.image_every == 0 or self.step == last_stop)):
                    writer.add_image("val/translations", translation_grid(self.inference_model, self.val_set,
                                                                          seed=self.config.seed,
                                                                          device=fabric.device), self.step)
                if self.step % cfg.checkpoint_every == 0 or self.step == last_stop or stop.requested:
                    self.save("last")
                if stop.requested:
                    break
        if writer is not None:
            writer.close()
        summary = {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "step": self.step,
            "steps": cfg.steps,
            "finished": self.step >= cfg.steps,
            "wall_seconds": round(time.time() - started, 2),
            "seconds_per_step": round((time.time() - started) / max(1, self.step - start_step), 4),
            "world_size": fabric.world_size,
            "regressing": self.regressing,
            "classes": class_names(self.config.data, self.raw_model.num_classes),
            "selection": self.best_checkpoint.best,
            "validation": metrics,
        }
        if fabric.world_size > 1:
            summary["rank_max_abs_weight_difference"] = self.rank_weight_difference()
        if run_dir is not None:
            write_json(run_dir / "summary.json", summary)
        return summary

    def rank_weight_difference(self) -> float:
        """Largest |w_rank − w_rank0| over every weight: 0 when DDP kept the ranks in step."""
        flat = torch.cat([p.detach().float().flatten() for net in self.networks().values()
                          for p in net.parameters()])
        with warnings.catch_warnings():  # Fabric's all_gather uses an API torch now calls deprecated
            warnings.simplefilter("ignore", UserWarning)
            gathered = cast(torch.Tensor, self.fabric.all_gather(flat))
        return float((gathered - gathered[0]).abs().max())

    def _accumulate(self, logged: dict[str, torch.Tensor]) -> None:
        for k, v in logged.items():
            self._running[k] = self._running.get(k, 0) + v.float()
        self._running_count += 1

    def _flush(self) -> dict[str, float]:
        """Means since the last flush: one host synchronisation per log interval, not per step."""
        values = torch.stack(list(self._running.values())) / max(1, self._running_count)
        record = dict(zip(self._running, values.tolist()))
        self._running, self._running_count = {}, 0
        return record


def train(config: Config, *, resume: str | Path | None = None, init_from: str | Path | None = None,
          stop_at: int | None = None, show_progress: bool = True) -> dict | None:
    """Train ICAM (or, with ``method``, a baseline) as ``config`` says; returns the summary (also
    in the run folder's summary.json) on the main process, None on the others.

    ``resume``: a run folder to continue from its last checkpoint (its config should be the
    one the run was started with). ``init_from``: a run folder or checkpoint whose network
    weights start this run (ICAM-reg fine-tuning from a classification run).
    """
    if config.method != "icam":
        if resume is not None or init_from is not None or stop_at is not None:
            raise UserError(f"--resume, --init-from and --stop-at are for ICAM runs, not method={config.method}")
        return train_baseline(config, show_progress)
    resumed = load_checkpoint(resume, "last") if resume is not None else None  # a truncated one: one line, first
    if resume is not None:
        done = finished_summary(resume, config.train.steps)
        if done is not None:
            return done
    init_state = load_checkpoint(init_from, "best") if init_from is not None else None  # before any run folder
    check_writable(resume or config.out_dir)  # before the data are read
    fabric = build_fabric(config)
    fabric.launch()
    cohorts, run_dir, val_set = start_run(config, fabric, resume,
                                          {"init_from": str(init_from) if init_from else None})
    train_set = cohorts["train"]
    num_classes = num_classes_of(config.data, train_set.labels.tolist())
    if config.model.num_classes not in (None, num_classes):
        raise UserError(f"model.num_classes is {config.model.num_classes} but the training labels are "
                         f"0..{num_classes - 1}")
    model = build_model(config.model, train_set.image_shape, num_classes, train_set.in_channels)
    trainer = Trainer(config, fabric, model, train_set, val_set, run_dir, show_progress)
    if resumed is not None:
        trainer.load_state_dict(resumed)
        if fabric.is_global_zero:
            record_resume(run_dir, trainer.step)
    elif init_state is not None:
        try:
            trainer.load_state_dict(init_state, weights_only=True)
        except Exception:
            if fabric.is_global_zero:  # a fresh run folder with nothing in it must not block its --name
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    with run_lock(run_dir) if fabric.is_global_zero else contextlib.nullcontext():
        summary = trainer.fit(stop_at=stop_at)
    if fabric.world_size > 1 and torch.distributed.is_initialized():
        del trainer, model  # the process group goes last, below
        leave_process_group(fabric)
    return summary if fabric.is_global_zero else None


TEARDOWN_SECONDS = 120  # leaving the process group takes well under a second; past this a rank is stuck


def leave_process_group(fabric: Fabric) -> None:
    """Every rank leaves the process group together, in an order that cannot deadlock, and
    never outlives its run. Destroying a gloo group joins its worker thread while holding the
    GIL; a worker still releasing a finished collective's tensors waits for the GIL
    (pytorch/pytorch#56297): the rank hangs, holding its GPUs. So: wait for every collective
    (a barrier), let the workers finish with the GIL free, free the DDP wrappers while the group
    is still registered, then destroy it. Last resort: a watchdog outside the interpreter (it
    needs no GIL) prints every thread's stack and ends the process."""
    faulthandler.dump_traceback_later(TEARDOWN_SECONDS, exit=True)
    try:
        fabric.barrier()
        time.sleep(0.2)  # gloo's worker threads drop the barrier's work while this thread holds no GIL
        gc.collect()  # DDP reducers of the freed trainer, while the group is still registered
        torch.distributed.destroy_process_group()
    finally:
        faulthandler.cancel_dump_traceback_later()

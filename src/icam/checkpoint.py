"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of state dicts, numbers and strings only, so ``torch.load(...,
weights_only=True)`` reads it. Every method's checkpoint has one schema (:func:`checkpoint_state`):
the method, its network hyperparameters, the run's config, the step, the best validation so far,
the weights of each network, the optimiser states and what the method adds. It is written to a
temporary file in the same folder and renamed into place: a crash never leaves a half-written
checkpoint behind.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import UserError
from .files import write_atomically

if TYPE_CHECKING:
    from .config import Config

FORMAT = "icam-checkpoint-1"
# The validation metrics that can select the best checkpoint, and whether larger is better.
SELECTION_DIRECTION = {"balanced_accuracy": 1, "ncc": 1, "mae": -1}


class CheckpointError(UserError):
    """A path that is not an icam checkpoint (or run folder), or a checkpoint file that is damaged."""

    def __init__(self, message: str, hint: str = "give a folder that `icam train` wrote (it holds checkpoints/"
                                                 "best.pt), or a .pt file; `icam demo` makes one in minutes"):
        super().__init__(message, hint)


def checkpoint_state(method: str, config: Config, hparams: dict, step: int, best: dict | None,
                     weights: dict[str, dict], optimizers: dict[str, dict], **extra) -> dict:
    """The one checkpoint schema: ``method`` (icam, resnet, vagan, …), ``model_hparams`` (what
    rebuilds the network), ``config``, ``step``, ``best``, each network's weights under its own
    key (``model`` is the one that predicts and explains), ``optimizers`` and method extras."""
    return {"method": method, "model_hparams": hparams, "config": config.model_dump(mode="json"), "step": step,
            "best": best, **weights, "optimizers": optimizers, **extra}


class BestCheckpoint:
    """Which validation has been best so far, by one metric in its direction, and how many
    validations have passed since it (``patience`` of them without a new best: ``flat``)."""

    def __init__(self, metric: str, patience: int | None = None):
        if metric not in SELECTION_DIRECTION:
            raise UserError(f"{metric!r} cannot select a checkpoint; one of {', '.join(SELECTION_DIRECTION)}")
        self.metric, self.patience = metric, patience
        self.best: dict | None = None  # {"metric", "value", "step"}, as checkpoints and summaries record it
        self.validations_since_best = 0

    def improved(self, metrics: dict[str, float], step: int) -> bool:
        """Record one validation; True when it is the best so far (its checkpoint should be saved)."""
        value = metrics.get(self.metric)
        if value is not None and not math.isnan(value) and (
                self.best is None or SELECTION_DIRECTION[self.metric] * (value - self.best["value"]) > 0):
            self.best = {"metric": self.metric, "value": value, "step": step}
            self.validations_since_best = 0
            return True
        self.validations_since_best += 1
        return False

    @property
    def flat(self) -> bool:
        return self.patience is not None and self.validations_since_best >= self.patience


def save_checkpoint(state: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a write that was killed (the run is locked)
        stale.unlink(missing_ok=True)
    def write(temporary: Path) -> None:
        try:
            with temporary.open("wb") as f:
                torch.save({"format": FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())
        except RuntimeError as e:  # torch's writer reports a failed write so ("unexpected pos …")
            raise OSError(errno.EIO, "the checkpoint could not be written (is the disk full?)") from e

    write_atomically(path, write, f".{secrets.token_hex(3)}.tmp")  # a name the stale-file glob above finds
    return path


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file, or ``<run>/checkpoints/<which>.pt`` for a run folder."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file() and which == "best" and (path / "checkpoints" / "last.pt").is_file():
            raise CheckpointError(f"{path} has no checkpoints/best.pt: without a validation split nothing selects "
                                  "a best model; use its last one with --which last")
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/{which}.pt; "
                                  "expected an icam run folder or a checkpoint file")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint or run folder: {path}")
    return path


def run_folder(path: str | Path) -> Path | None:
    """The run folder a run folder or checkpoint path belongs to (it holds config.yaml), if any."""
    path = Path(path)
    for candidate in (path, path.parent.parent) if path.suffix == ".pt" else (path,):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint as read from disk, once: its file, its contents and the SHA-256 of its bytes
    (which weights made an output: manifests, map headers)."""

    path: Path
    state: dict
    sha256: str

    @property
    def run_dir(self) -> Path | None:
        return run_folder(self.path)


def read_checkpoint(path: str | Path, which: str = "last") -> CheckpointFile:
    """``path`` (a run folder's ``which`` checkpoint, or a file) read once: its state, never
    unpickling arbitrary objects, and the hash of the same bytes."""
    path = resolve_checkpoint(path, which)
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable icam checkpoint ({reason})",
                              "the file is damaged (a copy cut short, a full disk?): copy it again, or use the run's "
                              "other checkpoint (--which best or last)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an icam checkpoint (expected format {FORMAT!r})")
    return CheckpointFile(path, state, hashlib.sha256(data).hexdigest())


def load_checkpoint(path: str | Path, which: str = "last") -> dict:
    return read_checkpoint(path, which).state

"""Trained baselines with the two verbs `icam explain` needs: ``predict`` and ``attribute``.

Post-hoc maps of the ResNet come from captum (the paper used it), with the paper's settings:
Grad-CAM as Selvaraju et al. define it (the ReLU of the gradient-weighted activations of the
last block, up-sampled to the input; captum's LayerGradCam leaves the ReLU off unless asked,
and its negative lobes would count as relevance once maps are scored by |map|); guided Grad-CAM; guided backprop;
integrated gradients (zero baseline, 200 steps, in internal batches); occlusion with a zero
block and stride scaled from 10 and 5 voxels at 128×160×128, the stride widened where the
positions would exceed OCCLUSION_POSITIONS, and many positions per forward pass. VA-GAN's map is M(x).
The ReLUs of these networks are not in place: guided backprop hooks them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, CheckpointFile, read_checkpoint
from ..config import build_config
from ..data.table import class_names
from ..errors import UserError
from ..methods import POSTHOC
from ..model import Prediction
from ..progress import StepProgress
from .networks import build_network


class BaselineModel:
    def __init__(self, state: dict, device: str | torch.device = "cpu", posthoc: str | None = None):
        self.device = torch.device(device)
        self.hparams = state["model_hparams"]
        self.method = self.hparams["method"]
        self.network = build_network(self.hparams)
        self.network.load_state_dict(state["model"])
        self.network.to(self.device).eval()
        self.config = build_config(state["config"], "the checkpoint's config")
        self.checkpoint_info = {k: state.get(k) for k in ("step", "best")}
        self.target_scale = (state.get("target_mean", 0.0), state.get("target_std", 1.0))
        self.image_shape = tuple(self.hparams["image_shape"])
        self.num_classes = self.hparams["num_classes"]
        self.run_dir: Path | None = None  # the run folder it was loaded from (its splits.csv)
        self.fingerprint = ""  # its checkpoint's SHA-256, stamped on the maps it writes
        self.checkpoint_path: Path | None = None  # the file it was opened from
        self.class_names = class_names(self.config.data, self.num_classes)
        if posthoc is not None and (self.method != "resnet" or posthoc not in POSTHOC):
            raise UserError(f"--posthoc {posthoc}: post-hoc methods ({', '.join(POSTHOC)}) explain a ResNet run; "
                             f"this is a {self.method} run")
        self.posthoc = posthoc

    @classmethod
    def from_checkpoint(cls, path: str | Path, which: str = "best", device=None, posthoc: str | None = None):
        return cls.from_file(read_checkpoint(path, which), device, posthoc)

    @classmethod
    def from_file(cls, checkpoint: CheckpointFile, device=None, posthoc: str | None = None):
        """The model of a checkpoint read once (``checkpoint.read_checkpoint``)."""
        if checkpoint.state.get("method", "icam") == "icam":
            raise CheckpointError(f"{checkpoint.path} is an ICAM checkpoint; open it with icam.open_run")
        model = cls(checkpoint.state, device or ("cuda" if torch.cuda.is_available() else "cpu"), posthoc)
        model.run_dir, model.checkpoint_path, model.fingerprint = checkpoint.run_dir, checkpoint.path, checkpoint.sha256
        return model

    @property
    def regressing(self) -> bool:
        return self.method == "cnn-regressor"

    @property
    def makes_maps(self) -> bool:
        """VA-GAN, or a ResNet with a post-hoc method to explain it (without one it only predicts)."""
        return self.method == "vagan" or (self.method == "resnet" and self.posthoc is not None)

    def check_makes_maps(self) -> None:
        """A clear error when this model cannot make maps (a CNN, or a ResNet without --posthoc)."""
        if self.method == "resnet" and self.posthoc is None:
            raise UserError(f"a ResNet run is explained by a post-hoc method: --posthoc one of {', '.join(POSTHOC)}")
        if not self.makes_maps:
            raise UserError(f"method {self.method} makes predictions, not maps")

    @property
    def name(self) -> str:
        return self.posthoc or self.method

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images as the model takes them: batched, its shape checked, on its device, float32."""
        x = x[None] if x.dim() == len(self.image_shape) + 1 else x
        if tuple(x.shape[2:]) != self.image_shape:
            raise UserError(f"the model takes images of shape {self.image_shape}, got {tuple(x.shape[2:])}")
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> Prediction | None:
        """Class probabilities (classifiers) or the regressed target (regressor); None for VA-GAN."""
        x = self.as_input(x)
        if self.method == "vagan":
            return None
        output = self.network(x).float()
        if self.regressing:
            return Prediction(None, None, output[:, 0] * self.target_scale[1] + self.target_scale[0])
        probabilities = torch.softmax(output, 1)
        return Prediction(probabilities, probabilities.argmax(1), None)

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor:
        """A map shaped like ``inputs``: the post-hoc method's attribution for ``target`` (default:
        the predicted class), or VA-GAN's M(x) (its one direction, class 1 → 0)."""
        x = self.as_input(inputs)
        if self.method == "vagan":
            with torch.no_grad():
                return self.network(x)
        self.check_makes_maps()
        assert self.posthoc is not None  # a ResNet that makes maps has its post-hoc method
        if target is None:
            prediction = self.predict(x)
            assert prediction is not None  # a classifier predicts
            target = prediction.predicted_class
        target = torch.as_tensor(target, device=self.device).long().expand(len(x))
        with warnings.catch_warnings():  # captum announces the hooks and gradient flags it sets
            warnings.simplefilter("ignore", UserWarning)
            return _posthoc(self.network, self.posthoc, x, target).detach()


# Occlusion costs one forward pass per position of the block. The paper's block 10, stride 5
# at 128×160×128 is 19,375 positions (captum adds a last window at each far edge); scaled down
# to a 32×48×32 volume (block 2, stride 1) it would be 45,167 (over 15 min on a CPU), so the
# stride grows until the positions fit.
OCCLUSION_POSITIONS = 20_000
# input voxels per forward pass (perturbed copies × image size). A GPU wants large batches; a
# CPU is fastest at a few volumes (benchmarks/occlusion.py measures both)
OCCLUSION_BATCH_VOXELS = {"cuda": 2 ** 25, "cpu": 2 ** 20}


def occlusion_positions(shape: tuple[int, ...], window: int, stride: int) -> int:
    """How many block positions (forward passes) occlusion takes, counted as captum slides them."""
    positions = 1
    for size in shape:
        positions *= -(-(size - window) // stride) + 1
    return positions


def occlusion_per_pass(x: torch.Tensor) -> int:
    """How many occluded copies of the batch ``x`` go through the network at once on its device
    (captum stacks that many copies of every image in one forward pass)."""
    budget = OCCLUSION_BATCH_VOXELS["cuda" if x.device.type == "cuda" else "cpu"]
    return max(1, min(256 if x.device.type == "cuda" else 8, budget // x.numel()))


def paper_occlusion_window(shape: tuple[int, ...]) -> tuple[int, int]:
    """The paper's occlusion block 10 and stride 5 at 128×160×128, scaled to this input."""
    scale = min(shape) / 128
    return max(2, round(10 * scale)), max(1, round(5 * scale))


def occlusion_window(shape: tuple[int, ...], max_positions: int = OCCLUSION_POSITIONS) -> tuple[int, int]:
    """The paper's block and stride scaled to this input (paper_occlusion_window); where that
    would take more than ``max_positions`` forward passes the stride grows (the block stays at
    least twice the stride, so every voxel is still occluded)."""
    window, stride = paper_occlusion_window(shape)
    while occlusion_positions(shape, window, stride) > max_positions and window < min(shape):
        stride += 1
        window = max(window, 2 * stride)
    return window, stride


def _posthoc(network, name: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import (
        GuidedBackprop,
        GuidedGradCam,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Occlusion,
    )

    d = x.dim() - 2
    if name == "gradcam":
        coarse = LayerGradCam(network, network.last_block).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(coarse, x.shape[2:], interpolate_mode="bilinear" if d == 2 else "trilinear")
    if name == "guided_gradcam":
        return GuidedGradCam(network, network.last_block).attribute(x, target=target)
    if name == "guided_backprop":
        return GuidedBackprop(network).attribute(x, target=target)
    if name == "integrated_gradients":
        return IntegratedGradients(network).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=200,
                                                      internal_batch_size=50)
    window, stride = occlusion_window(tuple(x.shape[2:]))
    per_pass = occlusion_per_pass(x)
    passes = 1 + -(-occlusion_positions(tuple(x.shape[2:]), window, stride) // per_pass)
    # our own bar: captum's counts voxels, not occlusion positions (3,214 passes announced for 114)
    with StepProgress("occlusion", x[0].numel() > 100_000, passes) as progress:  # volumes take minutes
        def forward(inputs):
            progress.advance()
            return network(inputs)
        return Occlusion(forward).attribute(x, target=target, sliding_window_shapes=(1,) + (window,) * d,
                                            strides=(1,) + (stride,) * d, baselines=0,
                                            perturbations_per_eval=per_pass)


__all__ = ["BaselineModel", "occlusion_window"]

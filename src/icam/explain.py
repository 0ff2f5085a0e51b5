"""Explanations: feature-attribution (FA) maps and the other views the paper shows.

An FA map of a scan x for a target class k is ``G(z_c(x), z_a) − x`` with z_a an attribute
of class k. Sampling many accepted z_a (rejection sampling; minimum class probability 0.9, the
threshold of the authors' test-time code, which the paper does not state) gives a mean and a
variance map for one scan, with no second image. All sampling is seeded: the same seed gives
the same maps.

    model = icam.open_run("runs/my-run")
    explanation = model.explain(x, n_samples=100)   # .mean, .var, .prediction, .acceptance_rate
    fa = model.attribute(x, target=1)                # captum-style: a map shaped like x
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch

from .baselines.attribution import BaselineModel
from .checkpoint import CheckpointError, CheckpointFile, read_checkpoint
from .config import Config, DecodePrecision, Sampling, as_saved, build_config
from .data.table import class_names
from .errors import UserError
from .model import ICAM, AttributePrediction, fa_map
from .outputs import ExplanationFolder, producer_of
from .run import warn_if_slow_bf16
from .scans import Scan, ScanMaps, load_images, write_mask, write_scan_maps


@dataclass(frozen=True)
class Refinement:
    """Test-time content refinement (GAN inversion): before translating, Adam steps on each scan's
    content code z_c until G(z_c, mu) reproduces the scan, at most ``steps`` of them and about
    ``seconds`` per scan. It lowers the decoder's error, which an image translation's map
    carries; a residual translation carries none, but it then decodes its change from a content
    code that fits the scan."""

    steps: int = 50
    seconds: float = 10.0
    lr: float = 0.01

    def __post_init__(self):
        if self.steps < 1 or self.seconds <= 0 or self.lr <= 0:
            raise UserError(f"refinement needs steps ≥ 1, seconds > 0 and lr > 0, got {self}")


@dataclass
class RefinementRecord:
    """What a refinement did to one batch: steps taken, seconds, the decoder's mean absolute
    error in the scans before and after."""

    steps: int
    seconds: float
    l1_before: float
    l1_after: float


@dataclass
class Explanation:
    mean: torch.Tensor  # (B, 1, *spatial): mean FA map (mean translation − reference)
    var: torch.Tensor  # (B, 1, *spatial): unbiased variance of the FA map over the samples
    translated: torch.Tensor  # (B, 1, *spatial): mean translated image
    target_class: torch.Tensor  # (B,)
    prediction: AttributePrediction
    n_samples: int
    acceptance_rate: float  # share of candidate attributes that passed the classifier
    fallback: bool  # True if some samples had to take a candidate that did not pass
    reference: str = "input"  # what translations are compared with: input, reconstruction or own-class
    samples: torch.Tensor | None = None  # (B, N, 1, *spatial) FA maps, when asked for
    translation: str = "image"  # the model's kind of translation (ICAM.translation)
    refinement: RefinementRecord | None = None  # test-time content refinement, when asked for
    sampling: str = "prior"  # how the attributes were drawn (model.SAMPLINGS)

    @property
    def recipe(self) -> str:
        """What made the map, in a few words ("residual vs input, counterfactual, refined 50"): the
        NIfTI descrip says it."""
        refined = f", refined {self.refinement.steps}" if self.refinement else ""
        return f"{self.translation} vs {self.reference}, {self.sampling}{refined}"

    def scan_maps(self, source: str, target: str, index: int = 0) -> ScanMaps:
        """Scan ``index``'s maps as arrays, with what made them: translated from class ``source``
        to ``target`` (their names)."""
        facts = {"SourceClass": source, "TargetClass": target, "Samples": self.n_samples,
                 "Translation": self.translation, "Reference": self.reference, "Sampling": self.sampling,
                 "AcceptanceRate": round(self.acceptance_rate, 4), "Fallback": self.fallback,
                 "RefinementSteps": self.refinement.steps if self.refinement else 0}
        return ScanMaps(self.mean[index, 0].cpu().numpy(), self.var[index, 0].cpu().numpy(),
                        self.translated[index, 0].cpu().numpy(), self.recipe,
                        f"{source}->{target}, {self.n_samples} samples", facts)


@dataclass
class Pair:
    """Scan a with scan b's attribute and the reverse (the paper's subject-to-subject view)."""

    a_as_b: torch.Tensor
    b_as_a: torch.Tensor
    fa_a: torch.Tensor  # a_as_b − a
    fa_b: torch.Tensor  # b_as_a − b


@dataclass
class Interpolation:
    """A walk from scan a's attribute mean to scan b's (paper Fig. 6), applied to a's content."""

    weights: torch.Tensor  # (K,) from 0 (a) to 1 (b)
    images: torch.Tensor  # (K, 1, *spatial)
    fa_maps: torch.Tensor  # (K, 1, *spatial): images − images[0], a's reconstruction (the walk's change)
    probabilities: torch.Tensor  # (K, classes)
    targets: torch.Tensor  # (K,) regressed target, original units


def _chunk_for(shape: tuple[int, ...], device: torch.device) -> int:
    """How many images to decode at once: about 2^20 voxels on a CPU (larger batches run slower
    per image there; `benchmarks/explain.py` measures it), 2^24 on a GPU."""
    return max(1, (2**24 if device.type == "cuda" else 2**20) // math.prod(shape))


class Explainer:
    """A trained ICAM model in eval mode, with the verbs of explanation."""

    def __init__(self, model: ICAM, config: Config | None = None, device: str | torch.device = "cpu",
                 checkpoint: dict | None = None, channels_last: bool = True):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # channels-last: faster decoding on CPUs (the transposed convolutions above all; benchmarks/
        # explain.py); torch.compile was slower than this, and fails on channels-last single-channel inputs
        self.memory_format = None
        if channels_last:
            self.memory_format = torch.channels_last if model.spatial_dims == 2 else torch.channels_last_3d
            self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stubs lack it
        self.config = config
        self.checkpoint_info = {k: checkpoint[k] for k in ("step", "best", "regressing")
                                if checkpoint and k in checkpoint}
        self.run_dir: Path | None = None  # the run folder it was loaded from (its splits.csv, data.json)
        self.fingerprint = ""  # its checkpoint's SHA-256, stamped on the maps it writes
        self.checkpoint_path: Path | None = None  # the file it was loaded from
        self.class_names = class_names(config.data if config is not None else None, model.num_classes)
        self.precision = "32-true"

    @property
    def precision(self) -> DecodePrecision:
        """How the N translations of a map are decoded: 32-true, or bf16-mixed (bf16 autocast:
        faster on a GPU or a CPU with bf16 instructions; the maps differ by bf16 rounding). The
        prediction, the rejection sampling and the sums stay in float32/float64."""
        return self._precision

    @precision.setter
    def precision(self, value: DecodePrecision) -> None:
        if value not in get_args(DecodePrecision):
            raise UserError(f"precision {value!r}: expected {' or '.join(get_args(DecodePrecision))}")
        if value == "bf16-mixed" and self.device.type == "cpu":
            warn_if_slow_bf16()
        self._precision = value

    @classmethod
    def from_checkpoint(cls, path: str | Path, which: str = "best", device: str | torch.device | None = None):
        return cls.from_file(read_checkpoint(path, which), device)

    @classmethod
    def from_file(cls, checkpoint: CheckpointFile, device: str | torch.device | None = None):
        """The explainer of a checkpoint read once (``checkpoint.read_checkpoint``)."""
        path, state = checkpoint.path, checkpoint.state
        if state.get("method", "icam") != "icam":
            raise CheckpointError(f"{path} holds a {state['method']} baseline, not ICAM: open it with icam.open_run, "
                                  "which opens any method's run")
        for key in ("model", "model_hparams", "config"):
            if key not in state:
                raise CheckpointError(f"{path} holds no ICAM model ('{key}' is missing): "
                                      "is it a baseline's checkpoint?")
        model = ICAM(**state["model_hparams"])
        model.load_state_dict(state.get("model_ema", state["model"]))  # the moving average, when the run kept one
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        explainer = cls(model, build_config(as_saved(state["config"]), f"{path} (its saved config)"), device, state)
        explainer.run_dir, explainer.checkpoint_path = checkpoint.run_dir, path
        explainer.fingerprint = checkpoint.sha256
        return explainer

    @property
    def sampling(self) -> Sampling:
        """How this run draws the attributes of its maps unless told otherwise (``model.attribute_sampling``)."""
        return self.config.model.attribute_sampling if self.config is not None else "prior"

    @property
    def regressing(self) -> bool:
        return bool(self.checkpoint_info.get("regressing", False))

    @property
    def name(self) -> str:
        return "icam"

    @property
    def makes_maps(self) -> bool:
        return True

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.model.image_shape

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images as the model takes them: batched, its shape checked, on its device, float32."""
        if x.dim() == len(self.model.image_shape) + 1:  # a single image without the batch axis
            x = x[None]
        if tuple(x.shape[2:]) != self.model.image_shape:
            raise UserError(f"the model takes images of shape {self.model.image_shape}, got {tuple(x.shape[2:])}; "
                             "preprocess them as in training (icam explain does)")
        x = x.to(self.device, torch.float32)
        return x.contiguous(memory_format=self.memory_format) if self.memory_format is not None else x

    def preprocess(self, path: str | Path) -> Scan:
        """A NIfTI file through this run's own preprocessing: a :class:`icam.scans.Scan` with
        ``.image`` (1, 1, *shape), ``.mask`` and ``.write(map, path)``, which puts a map back on the
        file's grid."""
        return Scan(load_images(self, [Path(path)]), self.fingerprint)

    def explain_file(self, path: str | Path, out: str | Path | None = None, **options) -> Explanation:
        """:meth:`explain` of a NIfTI file. With ``out``, its maps are written as `icam explain
        --image` writes them, in an explanation folder of this model (``outputs.ExplanationFolder``:
        ``maps/<name>_fa_mean.nii.gz``, ``_fa_var``, ``_translated`` and the brain mask on the
        file's grid, and the manifest)."""
        scan = self.preprocess(path)
        explanation = self.explain(scan.image, **options)
        if out is not None:
            folder = ExplanationFolder(Path(out))
            maps = explanation.scan_maps(self.class_names[int(explanation.prediction.predicted_class[0])],
                                         self.class_names[int(explanation.target_class[0])])
            with folder.claim(producer_of(self)):
                write_scan_maps(folder, scan.dataset, 0, maps, self.fingerprint)
                write_mask(folder, scan.item, scan.dataset, 0, self.fingerprint)
        return explanation

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AttributePrediction:
        return self.model.predict(self.as_input(x))

    def default_target(self, prediction: AttributePrediction) -> torch.Tensor:
        """The most probable class other than the predicted one (for two classes: the other class)."""
        others = prediction.probabilities.clone()
        others[torch.arange(len(others)), prediction.predicted_class] = -1
        return others.argmax(1)

    @torch.no_grad()
    def explain(self, x: torch.Tensor, target: int | torch.Tensor | None = None, n_samples: int = 100,
                min_probability: float | None = 0.9, seed: int = 0, keep_samples: bool = False,
                reference: str = "input", own_class: int | torch.Tensor | None = None,
                refinement: Refinement | None = None, sampling: str | None = None) -> Explanation:
        """Mean and variance FA maps of each scan in ``x`` towards ``target`` (default: the most
        probable class other than the predicted one; pass the scan's own class for the
        reconstruction maps that show the model's noise floor). ``reference``: translations minus
        the input (the paper), minus the input translated to its own attribute mean
        (``ICAM.fa_reference``; for a residual translation, the input itself), or minus the mean
        of its translations to its own class (``own-class``: ``own_class``, default the predicted
        one; the same number of samples), which cancels what any sampled translation changes.
        ``refinement``: fit each scan's content code first (:class:`Refinement`). ``sampling``:
        ``prior`` (the paper) draws every element of each attribute from N(0, I);
        ``counterfactual`` draws only what the classifier and regressor read of it and keeps the
        rest of the scan's own attribute mean (``ICAM.sample_attribute``'s ``keep``); None: the
        run's own (``model.attribute_sampling``)."""
        sampling = sampling or self.sampling
        if n_samples < 2:
            raise UserError("n_samples must be at least 2 (a variance needs two samples)")
        x = self.as_input(x)
        _warn_if_out_of_range(x)
        prediction = self.model.predict(x)
        b = len(x)
        if target is None:
            classes = self.default_target(prediction)
        else:
            classes = torch.as_tensor(target, device=self.device).long().expand(b).clone()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        sample = self.model.sample_attribute(
            classes.repeat_interleave(n_samples), min_probability=min_probability, generator=generator,
            **self.model.sampling_arguments(sampling, prediction.attribute_mean.repeat_interleave(n_samples, 0),
                                            self.regressing))
        attributes = sample.attribute.view(b, n_samples, -1)
        content, mu = self.model.encode_content(x), prediction.attribute_mean.to(x.dtype)
        record = None
        if refinement is not None:
            content, record = refine_content(self.model, x, content, mu, refinement)
        if reference == "own-class":
            own = prediction.predicted_class if own_class is None else own_class
            compared_with = self.explain(x, own, n_samples, min_probability, seed, refinement=refinement,
                                         sampling=sampling).translated.to(x.dtype)
        else:  # from the (refined) content code the translations use
            compared_with = self.model.fa_reference(x, reference, content)
        chunk = _chunk_for(self.model.image_shape, self.device)
        total = torch.zeros_like(x, dtype=torch.float64)
        squares = torch.zeros_like(x, dtype=torch.float64)
        kept = []
        for i in range(b):
            per_scan = []
            for start in range(0, n_samples, chunk):
                z = attributes[i, start:start + chunk]
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16-mixed"):
                    scan, code = (t[i:i + 1].expand(len(z), *t.shape[1:]) for t in (x, content))
                    translated = self.model.translate_from(scan, code, z, mu[i:i + 1])
                translated = translated.double()
                total[i] += translated.sum(0)
                squares[i] += translated.pow(2).sum(0)
                if keep_samples:
                    per_scan.append(fa_map(translated, compared_with[i]).float())
            if keep_samples:
                kept.append(torch.cat(per_scan))
        mean_translated = total / n_samples
        variance = ((squares - n_samples * mean_translated.pow(2)) / (n_samples - 1)).clamp(min=0)
        return Explanation(mean=fa_map(mean_translated, compared_with).float(), var=variance.float(),
                           translated=mean_translated.float(), target_class=classes, prediction=prediction,
                           n_samples=n_samples, acceptance_rate=sample.acceptance_rate, fallback=sample.fallback,
                           reference=reference, samples=torch.stack(kept) if keep_samples else None,
                           translation=self.model.translation, refinement=record, sampling=sampling)

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None,
                  n_samples: int = 100, **kwargs) -> torch.Tensor:
        """captum's verb: an attribution shaped like ``inputs`` (here the mean FA map towards
        ``target``), so ICAM and captum's methods can be called the same way."""
        return self.explain(inputs, target=target, n_samples=n_samples, **kwargs).mean.to(inputs.device)

    @torch.no_grad()
    def pair(self, a: torch.Tensor, b: torch.Tensor) -> Pair:
        """Translate a with b's attribute mean, and b with a's."""
        a, b = self.as_input(a), self.as_input(b)
        mu_a, mu_b = self.model.encode_attribute(a)[0], self.model.encode_attribute(b)[0]
        a_as_b = self.model.translate_from(a, self.model.encode_content(a), mu_b, mu_a)
        b_as_a = self.model.translate_from(b, self.model.encode_content(b), mu_a, mu_b)
        return Pair(a_as_b, b_as_a, fa_map(a_as_b, a), fa_map(b_as_a, b))

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> Interpolation:
        """``steps`` points from a's attribute mean to b's (both ends included), decoded with a's content."""
        if steps < 2:
            raise UserError("an interpolation needs at least 2 steps")
        a, b = self.as_input(a)[:1], self.as_input(b)[:1]
        mu_a, mu_b = self.model.encode_attribute(a)[0], self.model.encode_attribute(b)[0]
        weights = torch.linspace(0, 1, steps, device=self.device)
        path = mu_a + weights[:, None] * (mu_b - mu_a)
        content = self.model.encode_content(a)
        images = torch.cat([self.model.translate_from(a.expand(len(z), *a.shape[1:]),
                                                      content.expand(len(z), *content.shape[1:]), z, mu_a)
                            for z in path.split(_chunk_for(self.model.image_shape, self.device))])
        probabilities = torch.softmax(self.model.classifier(path).float(), 1)
        return Interpolation(weights, images, fa_map(images, images[:1]), probabilities,
                             self.model.regress(path).float())


def refine_content(model: ICAM, x: torch.Tensor, content: torch.Tensor, attribute: torch.Tensor,
                   refinement: Refinement) -> tuple[torch.Tensor, RefinementRecord]:
    """GAN inversion of the content code: Adam on z_c (the networks stay as they are) to lower each
    scan's mean |G(z_c, mu) − x| (the decoder's error, whatever the kind of translation), for
    ``refinement.steps`` steps or until its time (seconds per scan × scans) is spent. Each scan's
    own loss drives its own code (a sum over scans of their means), so a batch refines as its
    scans would alone."""
    started = time.perf_counter()
    budget = refinement.seconds * len(x)
    attribute = attribute.detach().to(content.dtype)

    def errors(code: torch.Tensor) -> torch.Tensor:
        return (model.decode(code, attribute) - x).abs().flatten(1).mean(1)

    with torch.no_grad():
        before = float(errors(content).mean())
    code = content.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([code], lr=refinement.lr)
    steps = 0
    with torch.enable_grad():
        while steps < refinement.steps and time.perf_counter() - started < budget:
            code.grad, = torch.autograd.grad(errors(code).sum(), code)
            optimizer.step()
            steps += 1
    code = code.detach()
    with torch.no_grad():
        after = float(errors(code).mean())
    return code, RefinementRecord(steps, round(time.perf_counter() - started, 4), before, after)


def _warn_if_out_of_range(x: torch.Tensor, limit: float = 1.5, share: float = 0.01) -> None:
    """The model was trained on intensities scaled to [−1, 1] (its generator ends in a tanh):
    say so when many voxels lie far outside, e.g. a raw scan passed without preprocessing."""
    outside = float((x.abs() > limit).float().mean())
    if outside > share:
        warnings.warn(f"{outside:.0%} of the input's voxels lie outside [-{limit}, {limit}], far from the [-1, 1] "
                      f"range the model was trained on (range {float(x.min()):.3g} to {float(x.max()):.3g}): "
                      "preprocess files as in training (model.preprocess(path), or icam explain)", stacklevel=3)


def open_run(path: str | Path, which: str = "best", device: str | torch.device | None = None,
             posthoc: str | None = None) -> Explainer | BaselineModel:
    """Any trained run, from its folder (its ``best`` or ``last`` checkpoint) or a checkpoint file,
    read once, with the same verbs whatever the method (``loaded_run.LoadedRun``: ``predict(x)``,
    ``attribute(x, target)``, …). ICAM runs give an :class:`Explainer`; baseline runs (their
    checkpoint names the method) a ``BaselineModel``, explained by ``posthoc`` (a ResNet's captum
    method) or by itself (VA-GAN)."""
    checkpoint = read_checkpoint(path, which)
    if checkpoint.state.get("method", "icam") != "icam":
        return BaselineModel.from_file(checkpoint, device, posthoc)
    if posthoc is not None:
        raise UserError("--posthoc is for ResNet baseline runs; an ICAM run explains itself")
    return Explainer.from_file(checkpoint, device)

"""One YAML config holds every hyperparameter; pydantic validates it.

``load_config(path, overrides=["train.steps=500", ...])`` merges a YAML file and
``key=value`` overrides (values parsed as YAML) over the defaults. An unknown or ill-typed
key raises :class:`ConfigError`, naming the key and the valid ones.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .methods import Method

# option values that several modules name, each spelled once
Translation = Literal["image", "residual", "gated"]  # what a translation is (model.translation)
Sampling = Literal["prior", "counterfactual"]  # how a map's attributes are drawn
Reference = Literal["input", "reconstruction", "own-class"]  # what a translation is compared with
Which = Literal["best", "last"]  # a run folder's checkpoints
DecodePrecision = Literal["32-true", "bf16-mixed"]  # how an explainer decodes its translations

RELATIVE_PATH = " (a relative path in a config file is read from the file's folder)"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, values):
        """pydantic reads true as 1: train.steps=true would train one step."""
        for name, value in (values.items() if isinstance(values, dict) else ()):
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None:
                allowed = get_args(field.annotation) or (field.annotation,)
                if bool not in allowed and (int in allowed or float in allowed):
                    raise UserError(f"'{name}' expects a number, got {str(value).lower()}")
        return values


class SquaresData(Section):
    """The squares benchmark of VA-GAN/ICAM: class 1 adds a central box and a second box at
    one of two places (subtypes A and B) to smooth noise; ground truth is the boxes' mask."""

    kind: Literal["squares"] = "squares"
    image_size: int = Field(64, ge=16, description="side in pixels/voxels, a multiple of 16")
    spatial_dims: Literal[2, 3] = 2
    n_train: int = Field(2000, ge=2)
    n_val: int = Field(200, ge=2)
    n_test: int = Field(200, ge=2)
    effect: float = Field(100.0, description="intensity added inside the boxes (background sd is 50)")
    continuous_target: bool = Field(
        False, description="give each image a target in [0, 1] that scales the boxes' intensity; "
                           "the class is then derived from `class_thresholds` (default 0.5)")
    class_thresholds: list[float] | None = Field(
        None, description="derive the class from the target: class k where target ≥ k thresholds")
    seed: int | None = Field(None, description="data seed; the run's seed when null")

    @model_validator(mode="after")
    def _check(self):
        if self.image_size % 16:
            raise UserError(f"image_size must be a multiple of 16, got {self.image_size}")
        return self


def _check_shape(shape: list[int]) -> list[int]:
    if len(shape) not in (2, 3) or any(s <= 0 or s % 16 for s in shape):
        raise UserError(f"shape needs 2 or 3 sides, each a positive multiple of 16; got {shape}")
    return shape


Fractions = tuple[float, float, float]


class BrainSynthData(Section):
    """The built-in synthetic ageing cohort on MNI152 anatomy (see ``icam synth --help``).
    Written once to ``cache_dir`` as NIfTI + CSV and read through the CSV path (2D and 3D)."""

    kind: Literal["brain-synth"] = "brain-synth"
    design: Literal["brain-synth", "brain-deep"] = Field(
        "brain-synth", description="brain-synth: axial slices, age, ventricles + cortex + lesions; brain-deep: coronal "
                                   "slices, a score, deep grey matter + lesions + a diffuse change (`icam synth`)")
    shape: list[int] = Field([128, 128], description="2 sides: slices; 3 sides: volumes")
    n_subjects: int = Field(2000, ge=6)
    slices_per_subject: int = Field(1, ge=1, description="2D: axial slices per subject, 4 mm apart")
    split_fractions: Fractions = (0.8, 0.1, 0.1)
    seed: int | None = Field(None, description="cohort seed; the run's seed when null")
    cache_dir: str = Field(".icam-cache", description="where the cohort is written" + RELATIVE_PATH)

    _shape = field_validator("shape")(_check_shape)


class CsvColumns(Section):
    """Column names of the cohort table."""

    image: str = "image"
    label: str = "label"
    target: str = "target"
    subject: str = "subject"
    split: str = "split"
    mask: str = "mask"
    gt_map: str = "gt_map"


class Augmentation(Section):
    enabled: bool = False
    rotate_degrees: float = Field(5.0, ge=0)
    scale: float = Field(0.05, ge=0, description="relative zoom range, ±")
    translate_voxels: float = Field(4.0, ge=0)
    intensity: float = Field(0.1, ge=0, description="random intensity scale and shift, ±")
    probability: float = Field(0.5, ge=0, le=1)


class FileData(Section):
    """A cohort of NIfTI files on disk, read through a table (CSV) or a BIDS dataset, and how
    every image is preprocessed: what the two kinds share."""
    columns: CsvColumns = CsvColumns()
    classes: list[int | float | str] | None = Field(
        None, description="the label values that are classes, in class order, e.g. [CN, AD]: rows with another "
                          "label (MCI) are left out and listed in excluded.csv; outputs use these names. null: "
                          "labels are class numbers 0, 1, 2, …")
    shape: list[int] = Field(..., description="model input shape: 3 sides for volumes, 2 for slices")
    spacing: list[float] | None = Field(None, description="resample to this voxel size (mm) before fitting the shape")
    orientation: str | None = Field("RAS", description="reorient every image to these axis codes")
    fit: Literal["pad_crop", "resize"] = Field(
        "pad_crop", description="how images reach `shape`: pad_crop keeps the voxel size (the window is centred on "
                                "the brain where the image is larger); resize scales the brain's bounding box "
                                "(plus brain_margin) to fill the shape, the same factor on every axis")
    brain_mask: Literal["auto", "none"] = Field(
        "auto", description="auto: the table's mask column, else a foreground mask (Otsu threshold, largest "
                            "connected component, holes filled); it places the window, masks the maps and their "
                            "scores and is written with them. none: every voxel counts (phantoms with no anatomy)")
    brain_margin: int = Field(4, ge=0, description="voxels kept around the brain's bounding box (after resampling)")
    max_brain_cropped: float = Field(
        0.01, ge=0, le=1, description="refuse an image when fitting the shape would cut off more than this share "
                                      "of its brain (per image in data.json); raise it to accept the loss")
    intensity: Literal["minmax", "minmax01", "cohort", "none"] = Field(
        "minmax", description="minmax: per image to [-1, 1]; minmax01: to [0, 1]; cohort: one range for all "
                              "images (intensity_range, or the training images' clip_percentiles) to [-1, 1]")
    clip_percentiles: tuple[float, float] | None = Field(None, description="clip to these percentiles first")
    intensity_range: tuple[float, float] | None = None
    slice_axis: Literal[0, 1, 2] = Field(2, description="2D models: the axis slices are taken across (2 = axial)")
    slice_range: tuple[float, float] = Field((0.5, 0.5), description="2D: fraction of that axis to take slices from")
    slices_per_subject: int = Field(1, ge=1, description="2D: slices per image, evenly spread in slice_range")
    class_thresholds: list[float] | None = Field(
        None, description="derive the class from the target: class k where target ≥ k thresholds")
    split_fractions: Fractions = (0.8, 0.1, 0.1)
    cache_dir: str | None = Field(None, description="preprocessing cache; default $XDG_CACHE_HOME/icam (else "
                                                    "~/.cache/icam). Nothing is written next to your images"
                                                    + RELATIVE_PATH)
    preprocess_workers: int = Field(0, ge=0, description="processes that fill the cache")
    augment: Augmentation = Augmentation()
    skip_bad: bool = Field(False, description="leave out rows with bad input (listed in excluded.csv) "
                                              "instead of stopping")

    _shape = field_validator("shape")(_check_shape)

    def listed_in(self, source: str | Path) -> CsvData | BidsData:
        """These settings reading another listing of files: a CSV, or a BIDS dataset's folder
        (the dataset's filters kept when these settings are a dataset's)."""
        shared = {k: v for k, v in self.model_dump().items() if k in FileData.model_fields}
        if Path(source).is_dir():
            filters = {k: getattr(self, k) for k in ("suffix", "session", "acquisition", "run") if hasattr(self, k)}
            return BidsData(**shared, **filters, bids_root=str(source))
        return CsvData(**shared, csv=str(source))


class CsvData(FileData):
    """Your own cohort: a CSV with one row per image (paths relative to the CSV) and NIfTI files."""

    kind: Literal["csv"] = "csv"
    csv: str = Field(..., description="path of the cohort table" + RELATIVE_PATH)


class BidsData(FileData):
    """A BIDS dataset: scans found with pybids (sub-*/[ses-*/]anat/*_T1w.nii.gz), labels and
    targets from participants.tsv (a session's own values from its sessions.tsv), columns named
    by data.columns (label, target; the subject is participant_id)."""
    kind: Literal["bids"] = "bids"
    bids_root: str = Field(..., description="the dataset's folder (it holds dataset_description.json)"
                                            + RELATIVE_PATH)
    suffix: str = Field("T1w", description="which scans: the BIDS suffix")
    session: str | int | None = Field(None, description="only this session (e.g. 1 for ses-1); null: every session")
    acquisition: str | None = Field(None, description="only this acquisition (acq-…); null: any")
    run: int | None = Field(None, description="only this run (run-…); null: any (several are several scans)")


# model.preset=paper: the paper's and the authors' network and explanations, where icam's defaults differ
PAPER_MODEL = {"translation": "image", "generator_norm": "instance", "attribute_channels": 1,
               "attribute_injection": "input", "attribute_sampling": "prior", "discriminator_spectral_norm": False,
               "discriminator_real_fake": "shared", "discriminator_centred": False, "upsampling": "transposed"}
# model keys that came after model.preset, with the value every run saved before them had
LATER_MODEL_KEYS = {"discriminator_real_fake": "shared", "discriminator_centred": False}


class ModelConfig(Section):
    preset: Literal["icam", "paper"] = Field(
        "icam", description="icam: icam's defaults; paper: the paper's model where they differ (an image translation, "
                            "instance norms, a one-channel attribute joining at S/4, prior sampling, a shared "
                            "real/fake judge that sees brightness, no spectral norm, transposed-convolution "
                            "up-sampling); keys given beside it still win")
    width: int = Field(16, ge=4, description="base channel width (the paper's 16: ~3 M parameters in 2D)")
    num_classes: int | None = Field(None, ge=2, description="inferred from the data when null")
    init: Literal["kaiming", "normal"] = Field(
        "kaiming", description="weight init: kaiming (PyTorch's default) or normal (N(0, 0.02), the authors' code)")
    attribute_stride: Literal[8, 16] = Field(
        16, description="the attribute latent's side is the input's / this (16: the paper's 8×8 at 128²; 8 gives "
                        "64² inputs the same 8×8)")
    content_noise: float = Field(1.0, ge=0, description="sd of the Gaussian noise added to the content latent in "
                                                       "training (the authors' 1), which pushes class information "
                                                       "into the attribute")
    content_channels: int | None = Field(
        None, ge=1, description="channels of the content code z_c (null: 4 × width, the paper's); fewer make a "
                                "bottleneck (a 1×1 convolution) that leaves z_c less room for the class, so the "
                                "attribute has to carry it")
    content_stride: Literal[2, 4] = Field(
        4, description="the content code z_c's side is the input's / this (4: the paper's S/4); 2 keeps S/2, so G "
                       "can keep and change finer structure: sharper maps for the same steps, at 2.2x the time "
                       "per step in 2D and 8x the code's memory in 3D (at the same time it lost; README Results)")
    content_discriminator_norm: bool = Field(
        True, description="InstanceNorm in the content discriminator's layers (the authors' code asks for it "
                          "but never applies it)")
    discriminator_spectral_norm: bool = Field(
        True, description="spectral normalisation of every convolution of the two domain discriminators: smoother "
                          "judges that a texture cannot fool, so translations carry the change itself (the paper "
                          "has none)")
    discriminator_real_fake: Literal["shared", "per-class"] = Field(
        "per-class", description="the domain discriminators' real/fake judge: per-class (one per class, and a "
                                 "translation is judged against the real scans of its target class, StarGAN v2's "
                                 "multi-task discriminator: what that class never shows gives a translation away, "
                                 "even where the class head does not look) or shared (the paper's: one for every "
                                 "class, blind to the class, so only their class head asks a translation to look "
                                 "like its target class)")
    discriminator_centred: bool = Field(
        True, description="the domain discriminators see each image less its mean over space: blind to overall "
                          "brightness, which a judge per class can otherwise tell the classes apart by, so a "
                          "translation gains nothing by shifting it (the paper's see the image as it is)")
    content_discriminator_reads: Literal["pooled", "whole"] = Field(
        "pooled", description="what the content discriminator classifies: its features averaged over space (the "
                              "paper's: what z_c holds anywhere) or the whole feature map (also where)")
    attribute_channels: int = Field(1, ge=1, description="channels of the attribute map (the paper's 1: 16 numbers "
                                                         "at 64², 64 at 128²); more lets it say more of where a scan "
                                                         "differs")
    attribute_injection: Literal["input", "every-scale", "style"] = Field(
        "input", description="input: the attribute map joins the content code at S/4 (the paper); every-scale: it also "
                             "modulates the generator's features at S/2 and S (SPADE-style), so it can change fine "
                             "structure directly; style: the attribute, read as one vector, scales and shifts the "
                             "features' channels after every block (FiLM, as MUNIT and StarGAN v2), so the scan's "
                             "own features say where a change goes")
    attribute_sampling: Sampling = Field(
        "counterfactual", description="how the attributes of this model's maps (validation, icam explain, Table I) "
                                      "are drawn: prior (every element from N(0, I), the paper) or counterfactual "
                                      "(only what the classifier and regressor read; the rest stays the scan's own "
                                      "attribute mean, so the translation changes what the prediction needs and "
                                      "keeps the rest of the scan)")
    generator_norm: Literal["instance", "channel"] = Field(
        "instance", description="the generator's normalisation: instance (the paper's InstanceNorm/LayerNorm, "
                                "statistics over the whole image, so a change in one place shifts every voxel) or "
                                "channel (over the channels at each voxel: a local change stays local)")
    translation: Translation = Field(
        "residual", description="image: the generator's output is the translated scan (the paper), so maps also hold "
                             "the decoder's failure to reproduce the scan; residual: the scan plus the decoded change "
                             "G(z_c, z_a) − G(z_c, z_a(scan)), so maps hold only what the attribute changes; "
                             "gated: that change where a gate the generator also outputs opens")
    upsampling: Literal["transposed", "transposed-avgpool", "resize"] = Field(
        "resize", description="the generator's ×2 steps: resize (nearest-neighbour ×2 then a 3×3 conv: every voxel "
                              "treated alike, so a map has no checkerboard), transposed (a transposed conv, the "
                              "paper's), or transposed-avgpool (the authors': output padding then a 2×2 average pool "
                              "of stride 1)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values):
        if isinstance(values, dict) and values.get("preset") == "paper":
            return {**PAPER_MODEL, **values}
        return values


# model keys that shape the discriminators (whose weights a checkpoint holds beside the model's)
DISCRIMINATOR_KEYS = ("discriminator_spectral_norm", "discriminator_real_fake", "discriminator_centred",
                      "content_discriminator_norm", "content_discriminator_reads")


class LossWeights(Section):
    """λ of every term (paper eq. 5 and its appendix). Names match ``icam.losses``' terms."""

    content_adversarial: float = Field(1.0, ge=0, description="λDc: content discriminator vs content encoder")
    content_reversal: float = Field(
        0.0, ge=0, description="gradient reversal (Ganin & Lempitsky 2015): the content encoder maximises the "
                               "content discriminator's cross-entropy, so it makes Dc wrong where "
                               "content_adversarial (DRIT's) makes it unsure; 0 leaves it out (on the "
                               "brain cohorts Dc gave up within 100 steps, README Results)")
    domain_adversarial: float = Field(
        1.0, ge=0, description="λD: real/fake GAN loss, both discriminators (×5: sharper brain maps of class 1 → 0, "
                               "re-drawn texture on squares; README Results)")
    domain_classification_discriminator: float = Field(
        1.0, ge=0, description="λD_BCE in D's update: D classifies real images")
    domain_gradient_penalty: float = Field(
        0.0, ge=0, description="γ of R1 in D's update (Mescheder et al. 2018; StarGAN v2's 1): the squared "
                               "gradient of each real/fake judge at real images, so it cannot judge by a small "
                               "texture; 0 (the paper's) leaves it out and costs nothing")
    domain_classification: float = Field(
        5.0, ge=0, description="λD_BCE in G's update: D must see translations as their target class")
    classification: float = Field(10.0, ge=0, description="λBCE: cross-entropy of fC1 on the attribute mean")
    regression: float = Field(
        10.0, ge=0, description="smooth L1 of fC2 on standardised targets; used only when the data has targets")
    kl_attribute: float = Field(0.01, ge=0, description="λKL on KL(z_a ‖ N(0, I)), a per-element mean")
    content_l2: float = Field(0.01, ge=0, description="L2 on z_c (DRIT's / the authors' code)")
    fa_map_l1: float = Field(10.0, ge=0, description="λM on ‖translated − input‖₁")
    latent_regression: float = Field(1.0, ge=0, description="λza on ‖Ea(G(z_c, z_rand)) − z_rand‖₁")
    translation_validity: float = Field(
        0.0, ge=0, description="cross-entropy of the model's own classifier, frozen (fC1 on Ea's mean), on both "
                               "translations against their target class: G must change what the classifier it "
                               "explains reads; 0 (the paper's) leaves it out and costs nothing")
    reconstruction_l1: float = Field(100.0, ge=0)
    reconstruction_l2: float = Field(100.0, ge=0)
    reconstruction_ssim: float = Field(
        0.0, ge=0, description="1 − SSIM of the reconstruction G(z_c, z_a(x)) against x (MONAI's SSIMLoss, an "
                               "11-voxel Gaussian window): local contrast and structure, which L1 and L2 average "
                               "away, so the decoder keeps edges and thin structure; 0 (the paper's) leaves it out "
                               "and costs nothing")
    cycle_l1: float = Field(100.0, ge=0)
    cycle_l2: float = Field(100.0, ge=0)


class TrainConfig(Section):
    steps: int = Field(2000, ge=1, description="iterations, each 2×Dc + D + encoders/generator")
    images_per_class: int = Field(1, ge=1, description="images of each class in every batch")
    lr: float = Field(1e-4, gt=0)
    content_discriminator_lr: float = Field(4e-5, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(1e-4, ge=0, description="L2 penalty in Adam, as the paper's code")
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_decay_start: float = Field(0.5, ge=0, le=1, description="fraction of steps after which `linear` decays to 0")
    content_discriminator_grad_clip: float | None = Field(5.0, gt=0)
    rejection_candidates: int = Field(
        16, ge=1, description="random attributes drawn per image and step; the first of its class is used")
    random_attributes: Sampling = Field(
        "prior", description="how the attributes of the random translations in training are drawn: prior (the "
                             "paper) or counterfactual (the scan's own with only what the heads read redrawn, as "
                             "the maps draw them)")
    log_every: int = Field(25, ge=1)
    validate_every: int = Field(250, ge=1)
    image_every: int = Field(500, ge=1, description="TensorBoard image grids")
    checkpoint_every: int = Field(500, ge=1)
    selection: Literal["auto", "balanced_accuracy", "mae", "ncc"] = Field(
        "auto", description="model selection metric; auto: mae if regressing, else ncc if "
                            "ground-truth maps exist, else balanced_accuracy")
    num_workers: int = Field(0, ge=0)
    ema_decay: float | None = Field(
        0.999, ge=0, lt=1, description="keep an exponential moving average of the encoders' and generator's "
                                       "weights; validation, checkpoints' inference weights and explanations "
                                       "use it (better maps and Table I on brain-synth and squares, README "
                                       "Results). null: off, the raw weights")


class ValidationConfig(Section):
    batch_size: int = Field(32, ge=1)
    fa_samples: int = Field(4, ge=1, description="attributes averaged into each validation FA map")
    min_probability: float | None = Field(0.9, gt=0, lt=1, description="rejection threshold for those attributes")
    fa_reference: Literal["input", "reconstruction"] = Field(
        "input", description="what validation translations are compared with: the input (the paper) or its "
                             "reconstruction from its own latents")
    content_probe_images: int = Field(
        500, ge=0, description="content leakage: a logistic-regression probe fitted on the content codes of this many "
                               "training images reads the class of the validation images (content_class_accuracy; "
                               "chance is the goal); 0: off")


class RuntimeConfig(Section):
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    compile: Literal["off", "networks", "regional"] = Field(
        "off", description="torch.compile: off; networks (each network whole: a slow start, minutes in 3D); "
                           "regional (each repeated block once, reused by every block of its kind)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead captures CUDA graphs (GPU only)")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_as_boolean(cls, value):
        """Configs written before regional compilation said true/false."""
        return {True: "networks", False: "off"}.get(value, value) if isinstance(value, bool) else value
    channels_last: bool = Field(False, description="channels-last memory format (helps bf16 convs)")
    cudnn_benchmark: bool = Field(True, description="GPU: let cuDNN time its convolution algorithms once for the "
                                                    "fixed input shape and keep the fastest")
    activation_checkpointing: bool = Field(False, description="recompute the encoders', generator's and "
                                                              "discriminators' activations in backward: "
                                                              "less GPU memory (larger 3D batches), more time")


class BaselineConfig(Section):
    """Training of the comparison methods (``method`` other than icam; README: Baselines)."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(16, ge=2)
    width: int = Field(16, ge=4)
    lr: float | None = Field(None, gt=0, description="default per method: resnet SGD 1e-4 (momentum 0.9); "
                                                     "cnn-* Adam 1e-4 (0.5, 0.999); vagan Adam 1e-3 (0, 0.9)")
    validate_every: int = Field(250, ge=1)
    patience: int | None = Field(None, ge=1, description="stop once this many validations in a row bring no new "
                                                         "best (the best checkpoint is kept); null: all steps")
    critic_steps: int = Field(5, ge=1, description="VA-GAN: critic updates per generator update")
    warmup_critic_steps: int = Field(100, ge=1, description="VA-GAN: critic updates in the first generator steps "
                                                            "and every 100th")
    warmup_generator_steps: int = Field(25, ge=0)
    gradient_penalty: float = Field(10.0, ge=0, description="VA-GAN: WGAN-GP weight")
    map_l1: float = Field(100.0, ge=0, description="VA-GAN: weight of ‖M(x)‖₁")


class Config(Section):
    method: Method = Field(
        "icam", description="icam (ICAM / ICAM-reg) or a baseline: resnet (for post-hoc saliency), vagan, "
                            "cnn-regressor (ICAM-reg's baseline), cnn-classifier (judges translations)")
    seed: int = 0
    out_dir: str = Field("runs", description="run folders are created inside" + RELATIVE_PATH)
    name: str | None = Field(None, description="run folder name; a timestamp when null")
    data: Annotated[SquaresData | BrainSynthData | CsvData | BidsData, Field(discriminator="kind")] = SquaresData()
    model: ModelConfig = ModelConfig()
    loss: LossWeights = LossWeights()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    baseline: BaselineConfig = BaselineConfig()


class ConfigError(UserError):
    """A config problem, worded for the person who wrote the config."""
    def __init__(self, message: str, hint: str | None = "`icam config --print-defaults` lists every key with its "
                                                          "default"):
        super().__init__(message, hint)


def _fields_at(path: tuple, model: type[BaseModel] = Config) -> list[str]:
    """The valid keys of the section at ``path`` (for error messages). A discriminated section
    (``data``) appears in pydantic's path as ``data.<kind>``."""
    parts = list(path)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        annotation = getattr(field, "annotation", None)
        members = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if members:  # Annotated[Union[...]] or Union[...]
            members = [m for a in members for m in ([a] if "kind" in a.model_fields else [])] or members
            kind = parts.pop(0) if parts else None
            model = next((m for m in members if m.model_fields["kind"].default == kind), members[0])
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


DATA_KINDS = ("squares", "brain-synth", "csv", "bids")


def _explain(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in error.errors():
        # pydantic names the chosen data kind in the path (data.csv.shape); the user wrote data.shape
        loc = [p for i, p in enumerate(e["loc"]) if not (i == 1 and e["loc"][0] == "data" and p in DATA_KINDS)]
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(e["loc"][:-1])
            lines.append(f"unknown key '{key}'; valid keys here: {', '.join(valid)}")

        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"invalid config ({source}):\n  " + "\n  ".join(lines))


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.steps=500)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse the value: {e}") from None
        if isinstance(value, str) and value != raw.strip() and raw.strip()[0] not in "'\"":
            value = raw.strip()  # YAML took ' #2/…' for a comment: on a command line it is a folder's name
        _set(tree, key.strip(), value)
    return tree


Settings = TypeVar("Settings", bound=BaseModel)


def settings_from(model: type[Settings], overrides: list[str], base: dict | None = None,
                  what: str = "settings") -> Settings:
    """A settings model (a command's own, not the run config) from ``base`` and ``key=value``
    overrides; a bad key or value is a ConfigError whose message names it."""
    tree = {**(base or {}), **parse_overrides(overrides)}
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{what}: {e}") from None


def merge_trees(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s values, section by section (a config tree and its overrides)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (merge_trees(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def _other_kind_keys(data: dict, source: str) -> None:
    """One line when a data section mixes kinds (a squares dump with data.kind=csv set)."""
    kinds: dict[str, type[Section]] = {"squares": SquaresData, "brain-synth": BrainSynthData, "csv": CsvData,
                                       "bids": BidsData}
    own = kinds.get(str(data.get("kind")))
    if own is None:
        return
    foreign = [k for k in data if k not in own.model_fields and any(k in m.model_fields for m in kinds.values())]
    if foreign:
        raise ConfigError(f"invalid config ({source}): data.{', data.'.join(foreign)} belong to another data.kind, "
                          f"not {data['kind']}; start from `icam config --print-defaults --kind {data['kind']}`")


def build_config(tree: dict, source: str = "config") -> Config:
    if isinstance(tree.get("data"), dict) and "kind" not in tree["data"]:
        tree = {**tree, "data": {"kind": "squares", **tree["data"]}}
    if isinstance(tree.get("data"), dict):
        _other_kind_keys(tree["data"], source)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise _explain(e, source) from None


def as_saved(tree: dict) -> dict:
    """A run's saved config (its config.yaml, a checkpoint's) as the run was made: one saved
    before ``model.preset`` existed holds no key that came with it, and its run was the paper's
    model where icam's defaults have changed since (an image translation, prior sampling); one
    saved before a later key holds that key's value from then."""
    model = tree.get("model")
    if not isinstance(model, dict):
        return tree
    return {**tree, "model": {**(LATER_MODEL_KEYS if "preset" in model else PAPER_MODEL), **model}}


# a config's keys that name files or folders
PATH_KEYS = (("data", "csv"), ("data", "bids_root"), ("data", "cache_dir"), ("out_dir",))


def paths_relative_to(tree: dict, folder: Path) -> dict:
    """A config file's relative paths (``PATH_KEYS``) read from the file's own folder, made absolute:
    a config means the same wherever it is run from. (A run's saved config.yaml holds absolute
    paths already; those written before this rule are read as they were.)"""
    tree = {**tree, "data": dict(tree["data"])} if isinstance(tree.get("data"), dict) else dict(tree)
    for keys in PATH_KEYS:
        section = tree if len(keys) == 1 else tree.get(keys[0])
        if not isinstance(section, dict):
            continue
        value = section.get(keys[-1])
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            section[keys[-1]] = os.path.abspath(folder / value)
    return tree


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), values: dict[str, Any] | None = None,
                saved: bool = False) -> Config:
    """The config of a YAML file (or the defaults), then ``values`` (dotted keys with typed
    values: a command's own flags, paths as they are), then ``key=value`` overrides, whose
    values are read as YAML and which win. Relative paths written in the file are read from the
    file's folder (:func:`paths_relative_to`); those of flags and overrides from the working
    directory. ``saved``: the file is a run's config.yaml (:func:`as_saved`)."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, train:, …)")
        source = str(path)
        tree = as_saved(tree) if saved else paths_relative_to(tree, path.parent)
    if values:
        typed: dict = {}
        for key, value in values.items():
            _set(typed, key, str(value) if isinstance(value, Path) else value)
        tree = merge_trees(tree, typed)
        source += " + command options"
    if overrides:
        tree = merge_trees(tree, parse_overrides(list(overrides)))
        source += " + --set overrides"
    return build_config(tree, source)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _comment(text: str, pad: str, width: int = 100) -> list[str]:
    return [f"{pad}# {line}" for line in textwrap.wrap(" ".join(text.split()), width - len(pad) - 2)]


def commented_yaml(section: BaseModel, indent: int = 0) -> str:
    """A config as YAML with each key's description above it (``icam config --print-defaults``):
    a starting point to edit, which loads back to the same config."""
    pad, lines = " " * indent, []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip()
            lines += [""] * (indent == 0) + (_comment(doc, pad) if doc else []) + [f"{pad}{name}:"]
            lines.append(commented_yaml(value, indent + 2))
            continue
        if field.description:
            lines += _comment(field.description, pad)
        # a one-element flow list, unwrapped: a scalar or a list on one line, quoted where YAML needs it
        dumped = yaml.safe_dump([section.model_dump(mode="json")[name]], default_flow_style=True, width=1000)
        lines.append(f"{pad}{name}: {dumped.strip()[1:-1]}")
    return "\n".join(lines)


def defaults_for(kind: str) -> Config:
    """The default config for a data kind; for csv and bids, with placeholders for the table (or
    dataset) and the shape."""
    if kind not in DATA_KINDS:
        raise ConfigError(f"unknown data kind {kind!r}; choose one of {', '.join(DATA_KINDS)}")
    placeholders: dict[str, dict[str, Any]] = {"csv": {"csv": "cohort.csv", "shape": [128, 128]},
                    "bids": {"bids_root": "bids", "shape": [128, 128], "columns": {"label": "diagnosis",
                                                                                   "target": "age"}}}
    data = {"kind": kind, **placeholders.get(kind, {})}
    return build_config({"data": data}, "defaults")

"""A trained run as a MONAI bundle (``icam export RUN --monai-bundle DIR``), the ecosystem's way
to share a model: ``configs/metadata.json`` (every field the bundle specification requires,
filled from the run), ``configs/inference.json`` (icam's own classes by ``_target_``: open the
run, read NIfTI files through its preprocessing, write the folder `icam explain --image`
writes) and ``models/model.pt`` (the checkpoint, as the run wrote it), with the run's
config.yaml and data.json beside them so the bundle preprocesses as the run did.

    python -m monai.bundle run --config_file DIR/configs/inference.json \\
        --meta_file DIR/configs/metadata.json --bundle_root DIR \\
        --images "['a.nii.gz', 'b.nii.gz']" --output_dir explained
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy
import torch

from .config import FileData, Reference, Sampling
from .errors import UserError
from .explain import Explainer
from .files import write_json
from .inference import explain_cohort
from .outputs import ExplanationFolder, icam_version, producer_of
from .scans import load_images

BUNDLE_VERSION = "1.0.0"
# what the bundle specification requires of metadata.json, and of each input and output
REQUIRED_METADATA = ("version", "monai_version", "pytorch_version", "numpy_version", "optional_packages_version",
                     "task", "description", "authors", "copyright", "network_data_format")
REQUIRED_TENSOR = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                   "is_patch_data", "channel_def")


def explain_files(model: Explainer, images: list[str], output_dir: str, n_samples: int = 100,
                  min_probability: float = 0.9, seed: int = 0, reference: Reference = "input",
                  sampling: Sampling | None = None) -> dict:
    """What `icam explain RUN --image A --image B --out OUTPUT_DIR` does: the bundle's run."""
    folder = ExplanationFolder(Path(output_dir))
    with folder.claim(producer_of(model)):
        return explain_cohort(model, load_images(model, [Path(i) for i in images]), folder, n_samples=n_samples,
                              min_probability=min_probability, seed=seed, reference=reference, sampling=sampling)


def export_bundle(run: Path, which: str, out: Path) -> Path:
    """Write the bundle of ``run``'s ``which`` checkpoint into the new or empty folder ``out``."""
    model = Explainer.from_checkpoint(run, which, "cpu")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; a bundle is written into a new or empty folder")
    if model.run_dir is None:
        raise UserError(f"{run}: a bundle needs the run folder (its config.yaml and data.json), not a lone checkpoint")
    for folder in ("configs", "models"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    assert model.checkpoint_path is not None  # opened from a file
    shutil.copyfile(model.checkpoint_path, out / "models" / "model.pt")
    for name in ("config.yaml", "data.json"):  # the bundle root reads as the run folder: its preprocessing
        if (model.run_dir / name).is_file():
            shutil.copyfile(model.run_dir / name, out / name)
    write_json(out / "configs" / "metadata.json", bundle_metadata(model))
    write_json(out / "configs" / "inference.json", INFERENCE)
    return out


INFERENCE = {
    "imports": ["$import icam"],
    "bundle_root": ".",
    "device": "cpu",
    "images": [],
    "output_dir": "$@bundle_root + '/eval'",
    "n_samples": 100,
    "min_probability": 0.9,
    "seed": 0,
    "model": {"_target_": "icam.explain.Explainer.from_checkpoint", "path": "$@bundle_root + '/models/model.pt'",
              "device": "@device"},
    "explanations": {"_target_": "icam.bundle.explain_files", "model": "@model", "images": "@images",
                     "output_dir": "@output_dir", "n_samples": "@n_samples", "min_probability": "@min_probability",
                     "seed": "@seed"},
    "run": ["$@explanations"],
}


def bundle_metadata(model: Explainer) -> dict:
    """metadata.json of a run: versions, what the model does, and its inputs and outputs (shape,
    spacing, orientation, intensities, class names, the target)."""
    config = model.config
    assert config is not None  # a checkpoint holds its config
    data = config.data
    run_facts = json.loads((model.run_dir / "data.json").read_text()) if model.run_dir and \
        (model.run_dir / "data.json").is_file() else {}
    preprocessing = {"orientation": data.orientation, "spacing": data.spacing, "fit": data.fit,
                     "intensity": data.intensity, "intensity_range": run_facts.get("intensity_range")} \
        if isinstance(data, FileData) else {"kind": data.kind}
    names = model.class_names
    image = {"type": "image", "format": "magnitude", "modality": "MR",
             "num_channels": model.model.hparams["in_channels"], "spatial_shape": list(model.image_shape),
             "dtype": "float32", "value_range": [-1, 1],
             "is_patch_data": False, "channel_def": {"0": "T1-weighted image, after icam's preprocessing"},
             "preprocessing": preprocessing}
    outputs: dict = {
        "probabilities": {"type": "probabilities", "format": "classes", "modality": "n/a", "num_channels": len(names),
                          "spatial_shape": [], "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                          "channel_def": dict(enumerate(names))},
        "fa_mean": {**image, "format": "magnitude", "num_channels": 1, "value_range": [],
                    "channel_def": {"0": "mean feature-attribution map: the translation to the other class minus "
                                         "the input"}}}
    if model.regressing:
        target = data.columns.target if isinstance(data, FileData) else "target"
        outputs["target"] = {"type": "tuples", "format": "regression", "modality": "n/a", "num_channels": 1,
                             "spatial_shape": [1], "dtype": "float32", "value_range": [], "is_patch_data": False,
                             "channel_def": {"0": f"the regressed {target}, in the units of the training table"}}
    packages = {name: metadata.version(name) for name in ("nibabel", "pybids", "captum", "scipy")}
    return {"version": BUNDLE_VERSION, "changelog": {BUNDLE_VERSION: f"exported from {model.run_dir}"},
            "monai_version": metadata.version("monai"), "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__, "optional_packages_version": {"icam": icam_version(), **packages},
            "name": f"icam {config.name or Path(str(model.run_dir)).name}",
            "task": "explain a classification (and regression) of brain MRI with ICAM feature-attribution maps",
            "description": ("ICAM / ICAM-reg (Bass et al., NeurIPS 2020; IEEE TMI 2023): classifies "
                            f"({', '.join(names)}) from the attribute latent" + (", regresses the target" if
                                                                                   model.regressing else "")
                            + ", and explains each scan by translating it to another class; run it on NIfTI files "
                              "(images) to write the folder `icam explain --image` writes"),
            "authors": "the run's authors (icam)", "copyright": "the run's authors",
            "intended_use": "research; not for diagnostic use",
            "references": ["Bass et al., ICAM: Interpretable Classification via Disentangled Representations and "
                           "Feature Attribution Mapping, NeurIPS 2020",
                           "Bass et al., ICAM-reg: Interpretable Classification and Regression with Feature "
                           "Attribution for Mapping Neurological Phenotypes in Individual Scans, IEEE TMI 2023"],
            "checkpoint_sha256": model.fingerprint,
            "network_data_format": {"inputs": {"image": image}, "outputs": outputs}}


"""What icam writes into an output folder, and whose it is: maps on each input's own grid
(a fresh header, stamped with the checkpoint that made them), CSV tables written atomically,
and the manifest that says which model a folder belongs to.

Every map is written back onto its input's grid (a 2D model's map fills its slice of the
input volume) with a fresh header: the input's affine and qform/sform codes, float32, the
map's own display range and a description of what it is.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .data.nifti import NiftiCohort
from .data.resample import resample_to_grid
from .errors import UserError
from .files import LOCK, folder_lock, write_atomically, write_json

if TYPE_CHECKING:
    from .loaded_run import LoadedRun

MANIFEST = "icam-outputs.json"
MAP_STAMP = 16  # hex digits of the checkpoint's SHA-256 in each map's aux_file


def write_map(array: np.ndarray, dataset: NiftiCohort, i: int, path: Path, description: str, stamp: str,
              display: str = "symmetric", mode: str = "bilinear") -> Path:
    """Write a map of item ``i`` onto the input's own grid, with a fresh header: the input's affine
    and qform/sform codes, float32, ``cal_min/cal_max`` from the map (``display``: symmetric
    ±max|map|, or range: min to max), ``description`` (≤ 80 characters) as descrip and
    ``stamp``, the producing checkpoint's SHA-256, as aux_file (its first MAP_STAMP digits)."""
    import nibabel as nib

    source = dataset.source(i)
    model_affine = np.asarray(dataset.item_affine(i), dtype=np.float64)
    volume = array if array.ndim == 3 else array[:, :, None]
    source_shape = source.source_shape
    grid = source_shape if len(source_shape) == 3 else source_shape + (1,)
    source_affine = source.source_affine
    same = grid == volume.shape and np.allclose(model_affine, source_affine)
    data = volume if same else resample_to_grid(volume, model_affine, source_affine, grid, mode)[0, 0].numpy()
    data = np.ascontiguousarray(data.reshape(source_shape), dtype=np.float32)
    original = nib.load(source.file).header
    image = nib.Nifti1Image(data, source_affine)
    for setter, code in ((image.set_qform, original["qform_code"]), (image.set_sform, original["sform_code"])):
        if int(code) > 0:
            setter(source_affine, code=int(code))
    image.header.set_xyzt_units(*original.get_xyzt_units())
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if display == "symmetric":
        low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
    image.header["cal_min"], image.header["cal_max"] = low, high
    image.header["descrip"] = description.encode("ascii", "replace")[:80]
    # the producing checkpoint's SHA-256 prefix: evaluate refuses a folder of maps from several models
    image.header["aux_file"] = stamp[:MAP_STAMP].encode()
    image.set_data_dtype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends in .nii.gz: nibabel compresses by the name
    return write_atomically(path, lambda temporary: nib.save(image, str(temporary)), ".tmp.nii.gz")


def map_stamp(path: Path) -> str:
    """The hash prefix of the checkpoint that made a map (what write_map puts in aux_file)."""
    import nibabel as nib

    return nib.load(str(path)).header["aux_file"].tobytes().rstrip(b"\0").decode()


MapKind = Literal["fa_mean", "fa_var", "translated", "mask", "reconstruction_fa_mean"]
# each kind's BIDS desc label (letters and digits only); the mask is a BIDS mask (desc-brain_mask)
BIDS_DESC = {"fa_mean": "famean", "fa_var": "favar", "translated": "translation", "mask": "brain",
             "reconstruction_fa_mean": "reconstructionfamean"}
BIDS_VERSION = "1.9.0"


@dataclass(frozen=True)
class ExplanationFolder:
    """An `icam explain` output folder: its layout, in one place for the writer, `icam evaluate`,
    the report and its gallery; and whose it is (the manifest).

    maps/<id>_<kind>.nii.gz      fa_mean, fa_var, translated, mask, reconstruction_fa_mean, on each input's grid
    figures/<id>_fa.png, tsne.png
    predictions.csv, outliers.csv, summary.json; evaluation.json, per_subject_maps.csv (icam evaluate)
    icam-outputs.json            the manifest: producer, command, time, complete, layout
    <a>_with_<b>_*.nii.gz, …     pairs and interpolations, at the top

    ``bids``: a BIDS derivatives dataset instead (``derivatives/icam``): dataset_description.json,
    maps as sub-01/[ses-1/]anat/sub-01_[ses-1_]desc-famean_T1w.nii.gz (desc-favar,
    desc-translation; the mask desc-brain_mask), each with a JSON sidecar saying what made it,
    and the tables as .tsv; figures, summary and manifest as above.
    """

    root: Path
    bids: bool = False

    @classmethod
    def at(cls, root: Path) -> ExplanationFolder:
        """The folder an explain wrote, in the layout its manifest names."""
        return cls(Path(root), cls(Path(root))._manifest_record().get("layout") == "bids")

    @property
    def maps(self) -> Path:
        """Where the maps are (a BIDS derivative's are in its subject folders)."""
        return self.root if self.bids else self.root / "maps"

    def has_maps(self) -> bool:
        return any(self.root.glob("sub-*")) if self.bids else self.maps.is_dir()

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def map(self, ident: str, kind: str = "fa_mean") -> Path:
        """A scan's map of one kind (``MapKind``; `icam evaluate --suffix` may name any)."""
        if not self.bids:
            return self.maps / f"{ident}_{kind}.nii.gz"
        *entities, suffix = ident.split("_")
        if not entities or not entities[0].startswith("sub-") or not all("-" in e for e in entities):
            raise UserError(f"a BIDS derivative names maps by the scan's BIDS entities; {ident!r} is no BIDS name "
                            "(sub-01[_ses-1]_T1w): explain without --bids-derivatives")
        desc = BIDS_DESC.get(kind, "".join(c for c in kind if c.isalnum()))
        folder = self.root / entities[0] / next((e for e in entities if e.startswith("ses-")), "") / "anat"
        name = "_".join([*entities, f"desc-{desc}", "mask" if kind == "mask" else suffix])
        return folder / f"{name}.nii.gz"

    def describe(self, path: Path, fields: dict) -> None:
        """A BIDS derivative's JSON sidecar of one map (what made it); nothing in the plain layout."""
        if self.bids:
            write_json(path.with_name(path.name.removesuffix(".nii.gz") + ".json"), fields)

    def figure(self, ident: str) -> Path:
        return self.figures / f"{ident}_fa.png"

    @property
    def tsne(self) -> Path:
        return self.figures / "tsne.png"

    def _table(self, name: str) -> Path:
        return self.root / f"{name}.{'tsv' if self.bids else 'csv'}"

    @property
    def predictions(self) -> Path:
        return self._table("predictions")

    @property
    def outliers(self) -> Path:
        return self._table("outliers")

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def per_subject(self) -> Path:
        return self._table("per_subject_maps")

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def description(self) -> Path:
        return self.root / "dataset_description.json"

    def create(self) -> None:
        """The folder and its maps/ and figures/, before anything is written into them (a BIDS
        derivative's subject folders come with their maps)."""
        for folder in (self.root, self.maps, self.figures):
            folder.mkdir(parents=True, exist_ok=True)

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def run_dir(self) -> Path | None:
        """The run folder the explained model came from (its column names, classes, splits), from summary.json."""
        run_dir = (self.read_summary().get("run") or {}).get("run_dir")
        return Path(run_dir) if run_dir else None

    def _manifest_record(self) -> dict:
        return json.loads(self.manifest.read_text()) if self.manifest.is_file() else {}

    def producer(self) -> dict | None:
        """The run, checkpoint (and hash) and method that made this folder, from its manifest."""
        return self._manifest_record().get("producer")

    def complete(self) -> bool | None:
        """Whether `icam explain` finished writing it (None: no manifest, not an explain folder).
        A folder written before completeness was recorded counts as complete."""
        return self._manifest_record().get("complete", True) if self.manifest.is_file() else None

    def require_complete(self) -> None:
        """One line, not a misleading error further on, for a folder whose explain was interrupted."""
        if self.complete() is False:
            raise UserError(f"{self.root}: incomplete explain output (interrupted?); rerun icam explain into it")

    @contextlib.contextmanager
    def claim(self, producer: dict, overwrite: bool = False) -> Iterator[None]:
        """Write this folder as the outputs of ``producer`` alone, holding it against a second
        explain meanwhile. A new or empty folder, or one it made before, is cleared of its
        previous outputs; a folder another model made is refused unless ``overwrite``; a
        folder of other files is refused. The manifest says ``complete`` only once the block
        ends without an error."""
        out = self.root
        had_files = out.exists() and any(p.name != LOCK for p in out.iterdir())
        if had_files and not self.manifest.is_file():
            raise FileExistsError(f"{out} holds files that icam explain did not write; give a new or empty folder")
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out, f"another icam explain is writing into {out}; wait for it to finish, or give "
                              "another --out"):
            if had_files:
                previous = self.producer() or {}
                if previous != producer and not overwrite:
                    raise FileExistsError(f"{out} holds the outputs of another model ({previous.get('run')}, "
                                          f"checkpoint {str(previous.get('checkpoint_sha256', ''))[:12]}); give a new "
                                          "folder, or --overwrite to replace them")
                self._clear()
            record = {"producer": producer, "command": sys.argv, "complete": False, "time": _now(),
                      "layout": "bids" if self.bids else "icam"}
            write_json(self.manifest, record)
            if self.bids:
                write_json(self.description, {
                    "Name": "icam feature-attribution maps", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "icam", "Version": icam_version(), "Description": (
                        f"ICAM maps of the run {producer.get('run')}, checkpoint SHA-256 "
                        f"{producer.get('checkpoint_sha256')}")}]})
            yield
            write_json(self.manifest, {**record, "complete": True, "finished": _now()})

    def _clear(self) -> None:
        """Everything an explain (or evaluate) wrote here before, in either layout, the manifest aside."""
        for folder in (self.root / "maps", self.figures, *self.root.glob("sub-*")):
            shutil.rmtree(folder, ignore_errors=True)
        for layout in (ExplanationFolder(self.root), ExplanationFolder(self.root, bids=True)):
            for table in (layout.predictions, layout.outliers, layout.per_subject):
                table.unlink(missing_ok=True)
        for file in (self.summary, self.evaluation, self.description, *self.root.glob("*.nii.gz"),
                     *self.root.glob("*_interpolation.*"), *self.root.glob("*_fa.png")):
            file.unlink(missing_ok=True)


def icam_version() -> str:
    try:
        return metadata.version("icam")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def producer_of(model: LoadedRun) -> dict:
    """Who makes a folder's outputs: the run (its folder, else its checkpoint file), the
    checkpoint and its hash, the method (a baseline's name says its post-hoc method)."""
    checkpoint = str(model.checkpoint_path.resolve()) if model.checkpoint_path else None
    return {"run": str(model.run_dir.resolve()) if model.run_dir else checkpoint, "checkpoint": checkpoint,
            "checkpoint_sha256": model.fingerprint, "method": model.name}


def write_csv(path: Path, records: list[dict]) -> Path:
    """A table with every key any record has (in first-seen order; missing cells empty), written
    to a temporary file and renamed into place: never half a table. A .tsv is tab-separated."""
    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as f:
            writer = csv.DictWriter(f, list(dict.fromkeys(k for r in records for k in r)),
                                    delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(records)
    return write_atomically(path, write)

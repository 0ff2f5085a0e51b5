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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data.nifti import NiftiCohort
from .data.resample import resample_to_grid
from .files import LOCK, folder_lock, write_atomically, write_json

MANIFEST = "icam-outputs.json"
MAP_STAMP = 16  # hex digits of the checkpoint's SHA-256 in each map's aux_file
# what `icam explain` writes into its folder: cleared before it writes again
OUTPUT_ENTRIES = ("maps", "figures", "predictions.csv", "outliers.csv", "summary.json", "evaluation.json",
                  "per_subject_maps.csv")


def write_map(array: np.ndarray, dataset: NiftiCohort, i: int, path: Path, description: str,
              display: str = "symmetric", mode: str = "bilinear") -> Path:
    """Write a map of item ``i`` onto the input's own grid, with a fresh header: the input's affine
    and qform/sform codes, float32, ``cal_min/cal_max`` from the map (``display``: symmetric
    ±max|map|, or range: min to max) and ``description`` (≤ 80 characters) as descrip."""
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
    image.header["aux_file"] = getattr(dataset, "model_fingerprint", "")[:MAP_STAMP].encode()
    image.set_data_dtype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends in .nii.gz: nibabel compresses by the name
    return write_atomically(path, lambda temporary: nib.save(image, str(temporary)), ".tmp.nii.gz")


def map_stamp(path: Path) -> str:
    """The hash prefix of the checkpoint that made a map (what write_map puts in aux_file)."""
    import nibabel as nib

    return nib.load(str(path)).header["aux_file"].tobytes().rstrip(b"\0").decode()


def explanation_complete(out: Path) -> bool | None:
    """Whether `icam explain` finished writing ``out`` (None: no manifest, not its folder).
    A folder written before completeness was recorded counts as complete."""
    manifest = Path(out) / MANIFEST
    return json.loads(manifest.read_text()).get("complete", True) if manifest.is_file() else None


def require_complete(out: Path) -> None:
    """One line, not a misleading error further on, for a folder whose explain was interrupted."""
    if explanation_complete(out) is False:
        raise ValueError(f"{out}: incomplete explain output (interrupted?); rerun icam explain into it")


@contextlib.contextmanager
def claimed_outputs(out: Path, producer: dict, overwrite: bool = False) -> Iterator[None]:
    """Write ``out`` as the outputs of ``producer`` (run, checkpoint and its hash, method) alone,
    holding it against a second explain meanwhile. A new or empty folder, or one it made before,
    is cleared of its previous outputs; a folder another model made is refused unless
    ``overwrite``; a folder of other files is refused. The manifest (producer, command, time),
    which `icam evaluate` and the report read, says ``complete`` only once the block ends
    without an error."""
    import shutil
    import sys
    from datetime import datetime, timezone

    out = Path(out)
    manifest = out / MANIFEST
    had_files = out.exists() and any(p.name != LOCK for p in out.iterdir())
    if had_files and not manifest.is_file():
        raise FileExistsError(f"{out} holds files that icam explain did not write; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, f"another icam explain is writing into {out}; wait for it to finish, or give "
                          "another --out"):
        if had_files:
            previous = json.loads(manifest.read_text()).get("producer", {})
            if previous != producer and not overwrite:
                raise FileExistsError(f"{out} holds the outputs of another model ({previous.get('run')}, checkpoint "
                                      f"{str(previous.get('checkpoint_sha256', ''))[:12]}); give a new folder, or "
                                      "--overwrite to replace them")
            for name in OUTPUT_ENTRIES:
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            for stale in out.glob("*.nii.gz"):  # pair and interpolation outputs
                stale.unlink()
        record = {"producer": producer, "command": sys.argv, "complete": False,
                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(manifest, record)
        yield
        write_json(manifest, {**record, "complete": True,
                              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def producer_of(run_path: Path, which: str, model) -> dict:
    """Who makes a folder's outputs: the run, its checkpoint file and hash, the method."""
    from .checkpoint import resolve_checkpoint

    return {"run": str(Path(getattr(model, "run_dir", None) or run_path).resolve()),
            "checkpoint": str(resolve_checkpoint(run_path, which).resolve()), "checkpoint_sha256": model.fingerprint,
            "method": getattr(model, "name", "icam")}  # a baseline's name says its post-hoc method


def write_csv(path: Path, records: list[dict]) -> Path:
    """A table with every key any record has (in first-seen order; missing cells empty), written
    to a temporary file and renamed into place: never half a table."""
    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as f:
            writer = csv.DictWriter(f, list(dict.fromkeys(k for r in records for k in r)))
            writer.writeheader()
            writer.writerows(records)
    return write_atomically(path, write)

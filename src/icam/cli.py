"""The ``icam`` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer
import yaml
from rich.progress import Progress

from .bundle import export_bundle
from .comparison import run_benchmark, settings_for
from .config import (
    ConfigError,
    DecodePrecision,
    Reference,
    Sampling,
    Which,
    commented_yaml,
    defaults_for,
    load_config,
    to_yaml,
)
from .data import load_file_cohorts
from .data.check import check_cohort
from .data.synth_export import write_brain_synth
from .demo import demo_settings, run_demo
from .errors import UserError
from .evaluate import evaluate_outputs
from .explain import Explainer, Refinement, open_run
from .inference import (
    FigureChoice,
    check_figures,
    explain_cohort,
    explain_interpolation,
    explain_pair,
    predict_or_attribute,
    predict_rows,
)
from .intervals import describe, mean_sd
from .loaded_run import LoadedRun
from .methods import METHOD_LABELS
from .metrics import Direction
from .outputs import ExplanationFolder, producer_of
from .predictions import write_predictions
from .report.health import fallback_finding
from .report.html import build_report
from .run import MachineError
from .scans import load_images, load_inputs

app = typer.Typer(
    help="Explain predictions on medical images with ICAM / ICAM-reg.\n\n"
         "Start here: icam demo --out demo  (about ten minutes on a laptop CPU; then open demo/report.html)\n\n"
         "Example: icam train --set train.steps=500  (a short run on the built-in squares benchmark)",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEBUG = typer.Option(False, "--debug", help="show the full traceback on errors")

USER_ERRORS = (UserError, FileExistsError, FileNotFoundError)  # the input's fault: one line, exit 2

# Exit codes (README: Exit codes)
EXIT_BUG = 1  # an error icam did not expect: a bug (also `icam data check` finding problems)
EXIT_BAD_INPUT = 2  # the user's input: config, data, paths, checkpoints
EXIT_STOPPED = 3  # a training run stopped before its last step (SIGTERM, --stop-at): resume it
EXIT_ENVIRONMENT = 4  # the machine: permissions, a full or read-only disk, no GPU backend


ENVIRONMENT_ERRORS = (OSError, MachineError)  # the machine's: the OS's, and an accelerator it lacks


def _environment_message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or e}: {e.filename}"
    return str(e)


@contextlib.contextmanager
def _warnings_as_lines(debug: bool) -> Iterator[None]:
    """While a command runs, a warning is a line for the user, not a source location (--debug keeps them)."""
    original = warnings.formatwarning
    if not debug:
        warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


def handled(command):
    """Every command's errors, told apart: bad input is one line and a hint (exit 2), the machine's
    trouble one line naming the file (exit 4), anything else a bug in icam (exit 1, how to report
    it); --debug adds the traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = bool(kwargs.get("debug"))
        try:
            with _warnings_as_lines(debug):
                return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except USER_ERRORS as e:
            _say(e, debug, str(e), EXIT_BAD_INPUT, getattr(e, "hint", None) or (
                "run again with --debug for the full traceback" if not debug else None))
        except ENVIRONMENT_ERRORS as e:
            _say(e, debug, _environment_message(e), EXIT_ENVIRONMENT,
                 "check the folder's permissions and free space (or the accelerator), then run again; --debug shows "
                 "the traceback")
        except Exception as e:
            _say(e, debug, f"icam failed unexpectedly ({type(e).__name__}: {e}): this is a bug in icam, not in your "
                           "input", EXIT_BUG,
                 "please report it with the command line and the traceback that --debug prints")
    return wrapper


def _say(error: BaseException, debug: bool, message: str, code: int, hint: str | None) -> None:
    if debug:
        traceback.print_exception(error)
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(code) from None


@app.command("train")
@handled
def train_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (defaults for missing keys)"),
    set_: list[str] = typer.Option([], "--set", help="override a key, e.g. --set loss.fa_map_l1=5 (repeatable)"),
    steps: int | None = typer.Option(None, help="training iterations (train.steps)"),
    out_dir: Path | None = typer.Option(None, "--out", help="folder for run folders (out_dir)"),
    name: str | None = typer.Option(None, help="run folder name (default: a timestamp)"),
    seed: int | None = typer.Option(None, help="random seed"),
    accelerator: str | None = typer.Option(None, help="cpu | gpu | auto"),
    devices: str | None = typer.Option(None, help="devices per node (processes), or auto"),
    num_nodes: int | None = typer.Option(None, "--num-nodes", help="nodes (with torchrun or SLURM)"),
    precision: str | None = typer.Option(None, help="32-true | bf16-mixed | 16-mixed"),
    resume: Path | None = typer.Option(None, help="continue this run folder from its last checkpoint"),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="start from these weights (a run folder's best checkpoint, or a .pt file), "
                                  "e.g. to fine-tune a classification run with the regression loss"),
    stop_at: int | None = typer.Option(
        None, "--stop-at", help="checkpoint and stop after this step (continue later with --resume)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="leave out rows with bad input (listed in the run "
                                                             "folder's excluded.csv) instead of stopping"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    debug: bool = DEBUG,
):
    """Train ICAM (or ICAM-reg, when the data has targets) and write a run folder.

    Example: icam train --steps 2000 --set data.image_size=128 --precision bf16-mixed
    """
    _train(config, set_, steps, out_dir, name, seed, accelerator, devices, num_nodes, precision,
           resume, init_from, stop_at, skip_bad, quiet)


def _train(config, set_, steps, out_dir, name, seed, accelerator, devices, num_nodes, precision, resume,
           init_from, stop_at, skip_bad, quiet):
    if resume is not None:
        if config is not None:
            raise ConfigError("--resume uses the run's own config.yaml; drop --config (use --set to change a key)")
        config = resume / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{resume} is not an icam run folder (no config.yaml)")
    flags = {"train.steps": steps, "out_dir": out_dir, "name": name, "seed": seed,
             "runtime.accelerator": accelerator, "runtime.devices": devices, "runtime.num_nodes": num_nodes,
             "runtime.precision": precision, "data.skip_bad": True if skip_bad else None}
    # the flags' values go in as typed (a path is not YAML); explicit --set entries come last and win
    cfg = load_config(config, set_, {key: value for key, value in flags.items() if value is not None},
                      saved=resume is not None)
    from .train import train  # here: training's imports (Fabric, torch._dynamo) cost every other command a second

    summary = train(cfg, resume=resume, init_from=init_from, stop_at=stop_at, show_progress=not quiet)
    if summary is None:  # a worker rank, done: its run is written by rank 0. Exit now, running no destructors
        sys.stdout.flush()  # (the process group is gone; nothing of this process is left to clean up)
        sys.stderr.flush()
        os._exit(0)
    if summary.get("already_finished"):
        typer.echo(f"{summary['run_dir']} already finished its {summary['step']} steps: nothing to do (to train "
                   "longer: --set train.steps=N with a larger N)")
        return
    val = summary["validation"]
    parts = [f"{k} {val[k]:.3f}" for k in ("accuracy", "balanced_accuracy", "mae", "ncc") if k in val]
    if summary["finished"]:
        typer.echo(f"training finished: {summary['step']} steps, {summary['seconds_per_step']:.3f} s/step")
        typer.echo(f"validation: {', '.join(parts) or 'none (the validation split is empty)'}")
    if summary["selection"]:
        best = summary["selection"]
        typer.echo(f"best {best['metric']} {best['value']:.3f} at step {best['step']} (checkpoints/best.pt)")
    data_facts = Path(summary["run_dir"]) / "data.json"
    identity = json.loads(data_facts.read_text()).get("identity") if data_facts.is_file() else None
    if identity:
        typer.echo(f"data: {identity}")
    typer.echo(f"run folder: {summary['run_dir']}")
    if not summary["finished"]:  # a partial model must not flow on into `&& icam explain`
        typer.secho(f"stopped at step {summary['step']} of {summary['steps']}; resume with: icam train --resume "
                    f"{summary['run_dir']}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(EXIT_STOPPED)


@app.command("synth")
@handled
def synth_command(
    out: Path = typer.Option(..., "--out", "-o", help="folder to write the cohort into"),
    dims: int = typer.Option(2, "--dims", help="2 (axial slices) or 3 (volumes)"),
    n: int = typer.Option(200, "--n", help="number of subjects"),
    seed: int = typer.Option(0, help="random seed: the same seed gives the same cohort"),
    size: str | None = typer.Option(
        None, "--size", help="image shape, e.g. 64x80x64 (default 128x128 in 2D, 64x80x64 in 3D; any sides of "
                                     "16 or more: training fits the files to its data.shape)"),
    slices: int = typer.Option(1, "--slices", help="2D: slices per subject (4 mm apart, split by subject)"),
    cohort: str = typer.Option("brain-synth", "--cohort", help="brain-synth: axial slices, age, ventricles + cortex "
                                                                "+ lesions; brain-deep: coronal slices, a score, "
                                                                "deep grey matter + lesions + diffuse change"),
    debug: bool = DEBUG,
):
    """Write a synthetic brain cohort with exact ground-truth change maps (NIfTI + cohort.csv).

    Real anatomy (the MNI152 template shipped with nilearn), individual shapes, a target tied to a
    latent severity, and per-subject mixes of effects: brain-synth (the default) ages with
    ventricle enlargement, cortical atrophy and white-matter lesions, in axial slices; brain-deep
    loses a score with deep grey-matter shrinkage, white-matter lesions and a diffuse white-matter
    signal loss, away from the high-contrast edges, in coronal slices of another pixel size.

    Example: icam synth --out data/synth2d --dims 2 --n 2000 --seed 0
             icam synth --out data/deep2d --cohort brain-deep --size 64x80 --n 600
    """
    if dims not in (2, 3):
        raise UserError(f"--dims must be 2 or 3, got {dims}")
    if n < 2 or slices < 1:
        raise UserError(f"--n needs 2 subjects or more and --slices 1 or more (got --n {n}, --slices {slices})")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; icam synth writes a new cohort into an empty or new folder "
                              "(it never overwrites a table or images)")
    try:
        shape = tuple(int(side) for side in size.replace(",", "x").split("x")) if size else None
    except ValueError:
        raise UserError(f"--size {size!r}: expected sides joined by x, e.g. 64x80x64") from None
    with Progress(transient=True) as bar:
        task = bar.add_task("rendering", total=n)
        summary = write_brain_synth(out, dims, n, seed, shape, slices,
                                    progress=lambda done, total: bar.update(task, completed=done), design=cohort)
    names = summary["classes"]
    splits = ", ".join(f"{k} {v['subjects']} subjects ({v['class_counts'][0]} {names[0]} / {v['class_counts'][1]} "
                       f"{names[1]})" for k, v in summary["splits"].items())
    typer.echo(f"wrote {summary['rows']} images of {summary['subjects']} subjects, shape "
               f"{'x'.join(map(str, summary['shape']))}, in {summary['seconds']['total_with_writing']:.1f} s "
               f"(rendering {summary['seconds']['render']:.1f} s)")
    typer.echo(f"splits: {splits}")
    target = summary["target"]
    typer.echo(f"{target['name']} {mean_sd(target['mean'], target['sd'], 1)} ({target['min']:.0f}-"
               f"{target['max']:.0f}); {summary['class_rule']}; effects: " + ", ".join(
                   f"{k} in {v['subjects_share']:.0%}" for k, v in summary["effects"].items()))
    if summary["slice_axis"] not in (None, 2):
        typer.echo(f"{summary['plane']} slices: train with data.slice_axis={summary['slice_axis']}")
    typer.echo(f"cohort table: {Path(out) / 'cohort.csv'}")


def _inputs(model: LoadedRun, csv_path: Path | None, bids: Path | None, images: list[Path], split: str | None):
    """The files to predict or explain: a table's, a BIDS dataset's, or single images."""
    if (csv_path is not None) + (bids is not None) + bool(images) != 1:
        raise UserError("give one of --csv CSV, --bids DATASET or --image FILE (repeatable)")
    if images:
        if split is not None:
            raise UserError("--split selects rows of a --csv table or --bids dataset; drop it with --image")
        return load_images(model, images)
    if bids is not None and not bids.is_dir():
        raise UserError(f"--bids {bids}: not a folder (the BIDS dataset's root, with dataset_description.json)")
    source = csv_path or bids
    assert source is not None  # one of them, checked above
    return load_inputs(model, source, split)


@app.command("predict")
@handled
def predict_command(
    run_dir: Path = typer.Argument(..., help="a run folder (or a checkpoint file)"),
    csv_path: Path | None = typer.Option(None, "--csv", help="a cohort table (labels optional)"),
    bids: Path | None = typer.Option(None, "--bids", help="a BIDS dataset's folder (labels from participants.tsv, "
                                                          "optional)"),
    image: list[Path] = typer.Option([], "--image", help="a NIfTI image (repeat for several)"),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="the predictions table to write"),
    split: str | None = typer.Option(None, help="only the table's rows of this split (train/val/test)"),
    which: Which = typer.Option("best", help="best or last checkpoint of the run"),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    debug: bool = DEBUG,
):
    """Predict class probabilities (and the regressed target) for images; write a CSV.

    Example: icam predict runs/my-run --csv data/synth2d/cohort.csv --split test -o test_predictions.csv
    """
    model = open_run(run_dir, which, device)  # any method's run
    records = predict_rows(model, _inputs(model, csv_path, bids, image, split))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, records)
    typer.echo(f"predicted {len(records)} images: {out}")


@app.command("explain")
@handled
def explain_command(
    run_dir: Path = typer.Argument(..., help="a run folder (or a checkpoint file)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for maps, figures and tables"),
    csv_path: Path | None = typer.Option(None, "--csv", help="a cohort table (labels optional)"),
    bids: Path | None = typer.Option(None, "--bids", help="a BIDS dataset's folder (labels from participants.tsv, "
                                                          "optional)"),
    image: list[Path] = typer.Option([], "--image", help="a NIfTI image (repeat for several)"),
    split: str | None = typer.Option(None, help="only the table's rows of this split (e.g. test)"),
    limit: int | None = typer.Option(None, help="explain at most this many images (all are predicted)"),
    target_class: str | None = typer.Option(None, "--target-class", help="translate to this class, by name (AD) "
                                                                           "or number (default: the most probable "
                                                                           "other class)"),
    from_label: bool = typer.Option(False, "--from-label", help="translate each scan from its table label to the "
                                                               "other class (for scoring against ground truth)"),
    n_samples: int = typer.Option(100, "--n-samples", help="attribute samples per scan (mean and variance maps)"),
    min_probability: float = typer.Option(0.9, "--min-probability",
                                          help="rejection-sampling threshold (the authors' code: 0.9)"),
    reference: Reference = typer.Option("input", help="what translations are compared with: input (the paper), "
                                                "reconstruction (the scan decoded from its own latents) or "
                                                "own-class (its mean translation to its own class)"),
    seed: int = typer.Option(0, help="sampling seed: the same seed gives the same maps"),
    native_intensity: bool = typer.Option(False, "--native-intensity", help="write the translations in the input's "
                                                                           "intensity units (default: the model's "
                                                                           "[-1, 1])"),
    reconstruction: bool = typer.Option(False, "--reconstruction", help="also the maps to the scan's own class "
                                                                       "(the model's noise floor)"),
    refine_steps: int = typer.Option(0, "--refine-steps", help="test-time content refinement: at most this many Adam "
                                                              "steps fitting each scan's content code before it is "
                                                              "translated (0: none)"),
    refine_seconds: float = typer.Option(10.0, "--refine-seconds", help="the refinement's time limit per scan"),
    sampling: Sampling | None = typer.Option(None, help="how attributes are drawn: prior (every element, the paper) "
                                                      "or counterfactual (only what the classifier and regressor "
                                                      "read; the rest stays the scan's own); default: the run's "
                                                      "model.attribute_sampling"),
    pair: tuple[Path, Path] | None = typer.Option(None, "--pair", help="two images: each with the other's attribute"),
    interpolate: tuple[Path, Path] | None = typer.Option(
        None, "--interpolate", help="two images: walk from the first's attribute to the second's"),
    steps: int = typer.Option(10, help="steps of --interpolate"),
    figures: FigureChoice = typer.Option("all", help="PNG overlays of each explained scan: all, outliers (the worst-"
                                            "predicted, regression runs) or none (a large cohort's maps sooner)"),
    which: Which = typer.Option("best", help="best or last checkpoint of the run"),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    precision: DecodePrecision = typer.Option(
        "32-true", help="decoding of the translations: 32-true, or bf16-mixed (faster on a GPU or a CPU with bf16 "
                        "instructions; maps differ by bf16 rounding)"),
    bids_derivatives: bool = typer.Option(
        False, "--bids-derivatives", help="write --out as a BIDS derivatives dataset (derivatives/icam: maps named "
                                          "by the scans' BIDS entities, JSON sidecars, TSV tables); the default "
                                          "with --bids"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the outputs another model wrote into --out "
                                                              "(they are cleared first)"),
    posthoc: str | None = typer.Option(None, help="for a ResNet baseline run: gradcam, guided_gradcam, "
                                                     "guided_backprop, integrated_gradients or occlusion"),
    debug: bool = DEBUG,
):
    """Explain predictions: mean and variance FA maps (NIfTI in each input's space, PNG overlays),
    predictions, cohort analyses (outliers, FA magnitude vs target, t-SNE), pairs, interpolations.

    Example: icam explain runs/my-run --csv data/synth2d/cohort.csv --split test --out explained
    """
    check_figures(figures)  # before the output folder is claimed
    refinement = Refinement(refine_steps, refine_seconds) if refine_steps else None
    model = open_run(run_dir, which, device, posthoc)  # any method's run
    if isinstance(model, Explainer):
        model.precision = precision
    elif precision != "32-true" or refinement is not None or sampling is not None or pair or interpolate:
        raise UserError("--precision, --refine-steps, --sampling, --pair and --interpolate are about ICAM's "
                        "translations; a baseline run has no attributes to draw, no translations to decode and no "
                        "content code to refine (leave them out)")
    elif model.method == "resnet":
        model.check_makes_maps()  # a ResNet is explained by a post-hoc method
    folder = ExplanationFolder(out, bids=bids is not None or bids_derivatives)

    def explain_with_icam(explainer: Explainer) -> None:
        if csv_path is not None or bids is not None or image:
            target = _class_index(explainer.class_names, target_class)
            dataset = _inputs(explainer, csv_path, bids, image, split)
            with Progress(transient=True) as bar:
                task = bar.add_task("explaining", total=len(dataset) if limit is None else min(limit, len(dataset)))
                summary = explain_cohort(explainer, dataset, folder, target_class=target, from_label=from_label,
                                         n_samples=n_samples, min_probability=min_probability, seed=seed,
                                         reconstruction=reconstruction, limit=limit, reference=reference,
                                         native_intensity=native_intensity, figures=figures, refinement=refinement,
                                         sampling=sampling,
                                         progress=lambda done, total: bar.update(task, completed=done))
            _say_explained(summary)
        elif not pair and not interpolate:
            raise UserError("nothing to explain: give --csv, --bids, --image, --pair or --interpolate")
        if pair:
            explain_pair(explainer, pair[0], pair[1], folder)
        if interpolate:
            explain_interpolation(explainer, interpolate[0], interpolate[1], steps, folder)

    with folder.claim(producer_of(model), overwrite):
        if isinstance(model, Explainer):
            explain_with_icam(model)
        else:
            dataset = _inputs(model, csv_path, bids, image, split)
            predict_or_attribute(model, dataset, folder, limit=limit, figures=figures)
    typer.echo(f"outputs: {out}")


def _say_explained(summary: dict) -> None:
    """What `icam explain` did, in one line; a warning when most maps fell back to rejected samples."""
    refined = summary["refinement"]
    each = (f"{summary['seconds_per_scan']:.2f} s each" if refined is None else
            f"{summary['seconds_per_scan']:.2f} s each, {refined['seconds_per_scan']:.2f} of them refining: "
            f"{summary['seconds_per_scan'] - refined['seconds_per_scan']:.2f} s without; decoder error "
            f"{refined['reconstruction_l1_before']:.4f} -> {refined['reconstruction_l1_after']:.4f}")
    facts = [f"{summary['explained']} scans explained ({each}, acceptance {summary['mean_acceptance_rate']:.2f})"]
    facts += [f"{k} {summary[k]:.3f}" for k in ("accuracy", "mae") if k in summary]
    typer.echo("; ".join(facts))
    fallback = fallback_finding(summary)
    if fallback:
        typer.secho(f"warning: {fallback} Lower --min-probability, or train longer.", fg=typer.colors.YELLOW,
                    err=True)


def _class_index(names: list[str], value: str | None) -> int | None:
    """--target-class by the run's class name, or by number."""
    if value is None:
        return None
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise UserError(f"--target-class {value!r} is not one of this run's classes: {', '.join(names)}")


@app.command("evaluate")
@handled
def evaluate_command(
    outputs: Path = typer.Argument(..., help="a folder written by `icam explain` (maps/, predictions.csv)"),
    csv_path: Path = typer.Option(..., "--csv", help="the cohort table with gt_map (and mask) columns"),
    split: str | None = typer.Option(None, help="only the table's rows of this split"),
    suffix: str = typer.Option("fa_mean", help="which maps to score: maps/<id>_<suffix>.nii.gz"),
    run_dir: Path | None = typer.Option(None, "--run", help="the run whose column names, classes and splits.csv "
                                                           "read the table (default: the one the outputs name)"),
    debug: bool = DEBUG,
):
    """Score explanation maps against ground-truth change maps, and predictions against labels.

    Per subject against its own map: NCC (as the paper and VA-GAN), AUROC and average precision
    of |FA| for changed voxels, Dice of the top-k voxels, the pointing game; mean ± sd overall,
    for class 0 → 1 (NCC+) and 1 → 0 (NCC−). Writes evaluation.json and per_subject_maps.csv.

    Example: icam explain runs/r --csv cohort.csv --split test --from-label --out ex &&
    icam evaluate ex --csv cohort.csv
    """
    result = evaluate_outputs(outputs, csv_path, split, suffix, run_dir)

    def fmt(m):  # the mean [95% interval], n
        return describe(m["mean"], m.get("ci"), m["n"])
    maps = result["maps"]
    if maps is None:
        typer.echo("maps: not scored (the table has no ground-truth maps, gt_map column)")
    else:
        plus = maps[Direction.PLUS]
        plus_text = "not scored (the method translates class 1 → 0 only)" if plus is None else fmt(plus["ncc"])
        typer.echo(f"NCC(+) {plus_text}; NCC(−) {fmt(maps[Direction.MINUS]['ncc'])}")
        typer.echo("all: " + ", ".join(f"{k} {fmt(maps['all'][k])}" for k in ("auroc", "ap", "dice_topk",
                                                                              "pointing")))
        if maps.get("not_translated"):
            typer.echo(f"{maps['not_translated']} class-0 rows are not scored: the method does not translate them")
        if maps["missing"]:
            typer.echo(f"{maps['missing']} rows have no map in {outputs / 'maps'}")
    for key in ("classification", "regression"):
        if key in result:
            typer.echo(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in result[key].items()
                                              if isinstance(v, float)) + f" (n {result[key]['n']})")
    written = [outputs / "evaluation.json"] + ([outputs / "per_subject_maps.csv"] if maps else [])
    typer.echo(f"written: {', '.join(map(str, written))}")


@app.command("benchmark")
@handled
def benchmark_command(
    out: Path = typer.Option(..., "--out", "-o", help="results folder"),
    preset: str = typer.Option("quick", help="quick: 2D brain-synth 64x64, ~25 min on 2 CPU cores; paper: "
                                             "128x128, paper-length training (a GPU, hours); paper-3d: "
                                             "128x160x128 volumes"),
    set_: list[str] = typer.Option([], "--set", help="change a setting, e.g. --set icam_steps=3000 "
                                                     "(see the settings.json a run writes)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    debug: bool = DEBUG,
):
    """Reproduce the paper's tables: ICAM, ICAM-reg and the baselines (ResNet + Grad-CAM, guided
    Grad-CAM, guided backprop, integrated gradients, occlusion; VA-GAN; a CNN regressor) trained,
    explained and scored on one cohort with ground-truth maps.

    Example: icam benchmark --preset quick --out bench   (results in bench/results/results.md)
    """
    settings = settings_for(preset, set_)
    result = run_benchmark(settings, out, log=lambda m: typer.echo(f"· {m}", err=True), device=device)
    typer.echo(result["tables"]["table2_maps"])
    typer.echo(f"tables: {out / 'results'} (results.md, CSVs, comparison.png); "
               f"total {sum(result['seconds'].values()) / 60:.1f} min")


@app.command("demo")
@handled
def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="folder for the cohort, runs, maps and report"),
    set_: list[str] = typer.Option([], "--set", help="change a setting, e.g. --set subjects=1200 (see the "
                                                     "settings.json a demo writes)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    debug: bool = DEBUG,
):
    """See what icam does, in about ten minutes on a laptop CPU, with nothing to download.

    Makes a synthetic brain cohort with known changes, trains ICAM-reg (classification, then
    age regression), explains the test scans, compares the maps with Grad-CAM and guided
    backprop against the ground truth, and writes an HTML report.

    Example: icam demo --out demo   (then open demo/report.html)
    """
    summary = run_demo(out, demo_settings(set_), log=lambda m: typer.secho(m, bold=True, err=True),
                       progress=not quiet)
    typer.echo(f"done in {summary['total_minutes']:.1f} min")
    for name, test in summary["test"].items():
        # an NCC is undefined (None) when no scan's map varies, e.g. a Grad-CAM that is 0 everywhere
        facts = [f"{label} " + ("undefined" if test[key] is None else f"{test[key]:.3f}")
                 for label, key in (("NCC(−)", "ncc_minus"), ("NCC(+)", "ncc_plus"))]
        facts += [f"{k} {test[k]:.3f}" for k in ("accuracy", "mae") if k in test]
        typer.echo(f"{name}: " + ", ".join(facts))
    typer.echo(f"report: {summary['report']}")


@app.command("report")
@handled
def report_command(
    folder: Path = typer.Argument(..., help="a run folder, a demo folder or a benchmark folder"),
    out: Path | None = typer.Option(None, "--out", "-o", help="the HTML file (default: FOLDER/report.html)"),
    explained: list[Path] = typer.Option([], "--explained", help="`icam explain` output folder(s) to include; "
                                                                 "the first is the ICAM one"),
    csv_path: Path | None = typer.Option(None, "--csv", help="the cohort table (for the map gallery)"),
    debug: bool = DEBUG,
):
    """Write a single self-contained HTML report (figures embedded, opens offline).

    Example: icam report runs/my-run --explained explained --csv cohort.csv
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    run_dir, maps, table, benchmark = _report_parts(folder, explained, csv_path)
    path = build_report(out or folder / "report.html", run_dir, maps, table, benchmark,
                        title=f"icam report: {folder.name}")
    typer.echo(f"report: {path}")


def _report_parts(folder: Path, explained: list[Path], csv_path: Path | None):
    """What a folder holds: a run folder itself, or a demo/benchmark folder with runs and maps."""
    names = METHOD_LABELS
    run_dir: Path | None
    if (folder / "config.yaml").is_file():
        run_dir = folder
    else:
        runs = [folder / "runs" / n for n in ("icam-reg", "icam") if (folder / "runs" / n / "config.yaml").is_file()]
        run_dir = runs[0] if runs else None
    for d in explained:
        ExplanationFolder.at(d).require_complete()
        if not ExplanationFolder.at(d).predictions.is_file():
            raise UserError(f"--explained {d}: not an icam explain output folder (no predictions.csv there)")
    found = explained or [d for n in names for base in ("explained", "maps") for d in [folder / base / n]
                          if ExplanationFolder.at(d).has_maps()]
    for d in found:
        ExplanationFolder.at(d).require_complete()
    maps = {names.get(d.name, d.name): d for d in found}
    table = csv_path or (folder / "cohort" / "cohort.csv" if (folder / "cohort" / "cohort.csv").is_file() else None)
    benchmark = folder if (folder / "results").is_dir() else None
    if run_dir is None and not maps:
        raise UserError(f"{folder} holds no icam run (config.yaml) and no explanations; give a run folder, or "
                         "--explained with icam explain's output")
    return run_dir, maps, table, benchmark


data_app = typer.Typer(help="Look at a cohort before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
@handled
def data_check_command(
    csv_path: Path = typer.Argument(..., metavar="CSV|BIDS", help="the cohort table, or a BIDS dataset's folder"),
    config: Path | None = typer.Option(None, "--config", "-c", help="a config whose data section names columns, "
                                                                          "class thresholds, split fractions"),
    set_: list[str] = typer.Option([], "--set", help="override a key, e.g. --set data.columns.label=diagnosis"),
    workers: int = typer.Option(0, help="processes that decode images"),
    fill_cache: bool = typer.Option(False, "--fill-cache", help="then preprocess every image into the training "
                                                                "cache (needs the run's config: data.shape, …)"),
    debug: bool = DEBUG,
):
    """Check a cohort table (or a BIDS dataset) and every image it lists; print a summary and every problem.

    Finds missing or unreadable files, 4D images, NaN or constant images, bad labels and
    targets, subjects in two splits and classes without training images. Exit status 1 when
    any problem is found. With --fill-cache the preprocessing cache is filled as training
    would fill it, so a many-GPU job does not wait on one process decoding the cohort.

    Example: icam data check cohort.csv --set data.columns.label=diagnosis
    Example: icam data check cohort.csv -c my-3d.yaml --fill-cache --workers 16
    Example: icam data check openneuro/ds000001 --set data.columns.label=group --set data.classes=[HC,AD]
    """
    source = {"data.kind": "bids", "data.bids_root": csv_path} if csv_path.is_dir() else \
        {"data.kind": "csv", "data.csv": csv_path}
    cfg = load_config(config, set_, {**source, **({} if _has_shape(config, set_) else {"data.shape": [16, 16]})})
    summary, problems = check_cohort(cfg.data, cfg.seed, workers)
    problems = sorted(problems, key=lambda p: (p.row is not None, p.row or 0))
    counts = ", ".join(f"{name} {n}" for name, n in zip(summary["classes"], summary["class_counts"]))
    typer.echo(f"{summary['usable_rows']} usable rows of {summary['rows']}, {summary['subjects']} subjects; "
               f"images per class: {counts}; splits {summary['splits']} ({summary['split_source']})")
    typer.echo(summary["identity"])
    if summary["dataset"]:
        found = summary["dataset"]
        typer.echo(f"BIDS: {found['scans']} scans of {found['subjects']} subjects, {found['sessions']} sessions "
                   f"(ses-*) of {found['subjects_with_sessions']}; "
                   + (f"no scan for {len(found['without_scan'])} participant(s): "
                      f"{', '.join(found['without_scan'][:5])}; " if found["without_scan"] else "")
                   + f"{found['target_unknown']} scans without a target")
    for warning in summary["warnings"]:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if summary["excluded"]:
        typer.echo(f"{len(summary['excluded'])} rows left out by data.classes, e.g. {summary['excluded'][0]}")
    if summary["target"]:
        t = summary["target"]
        typer.echo(f"target: {t['known']} known, {mean_sd(t['mean'], t['sd'], 2)} ({t['min']}–{t['max']})")
    typer.echo(f"image shapes: {', '.join('x'.join(map(str, s)) for s in summary['image_shapes'])}")
    if problems:
        typer.secho(f"{len(problems)} problem(s):", fg=typer.colors.RED, err=True)
        for p in problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(1)
    typer.secho("no problems found", fg=typer.colors.GREEN)
    if fill_cache:
        if not _has_shape(config, set_):
            raise UserError("--fill-cache needs data.shape (the run's config, or --set data.shape=[…])")

        cohorts = load_file_cohorts(cfg.data.model_copy(update={"preprocess_workers": workers}), cfg.seed)
        typer.echo(f"preprocessing cache filled: {cohorts.info['cache']}")


def _has_shape(config: Path | None, sets: list[str]) -> bool:
    """Whether the user gave data.shape (the check itself does not need one)."""
    if any(s.startswith("data.shape=") for s in sets):
        return True
    tree = yaml.safe_load(config.read_text()) if config and config.is_file() else {}
    return isinstance(tree, dict) and "shape" in (tree.get("data") or {})


@app.command("export")
@handled
def export_command(
    run_dir: Path = typer.Argument(..., help="an ICAM run folder"),
    monai_bundle: Path = typer.Option(..., "--monai-bundle", help="the folder to write the MONAI bundle into "
                                                                  "(new or empty)"),
    which: Which = typer.Option("best", help="best or last checkpoint of the run"),
    debug: bool = DEBUG,
):
    """Share a trained run as a MONAI bundle: configs/metadata.json, configs/inference.json (icam's
    classes by _target_), models/model.pt; `python -m monai.bundle run` then predicts and explains
    NIfTI files as `icam explain --image` does.

    Example: icam export runs/reg --monai-bundle bundles/icam-reg
    """
    out = export_bundle(run_dir, which, monai_bundle)
    typer.echo(f"MONAI bundle: {out}")
    typer.echo(f"run it: python -m monai.bundle run --config_file {out / 'configs' / 'inference.json'} --meta_file "
               f"{out / 'configs' / 'metadata.json'} --bundle_root {out} --images \"['scan.nii.gz']\" --output_dir "
               "explained")


@app.command("config")
@handled
def config_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config to check and resolve"),
    set_: list[str] = typer.Option([], "--set", help="override a key (repeatable)"),
    print_defaults: bool = typer.Option(False, "--print-defaults", help="print the default config, each key with "
                                                                        "its description"),
    kind: str = typer.Option("squares", "--kind", help="with --print-defaults: the data kind (csv: your own "
                                                       "cohort; squares; brain-synth)"),
    debug: bool = DEBUG,
):
    """Print the full resolved config (or the defaults), after validating it.

    Example: icam config --print-defaults --kind csv > my.yaml; icam config -c my.yaml --set train.steps=100
    """
    if print_defaults:
        typer.echo(commented_yaml(defaults_for(kind)))
        return
    typer.echo(to_yaml(load_config(config, set_)), nl=False)


def main() -> None:  # pragma: no cover - `python -m icam.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

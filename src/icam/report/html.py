"""`icam report`: one self-contained HTML file a researcher would rather look at than read.

Everything is embedded (PNG figures as data URIs, no scripts, no network), so the file opens
from disk anywhere. The report finds what a folder holds: a run folder (config, provenance,
training curves), explanation folders (predictions, maps, t-SNE, interpolation, outliers, map
scores) and benchmark tables, and shows each with a caption saying how to read it.

Sections are lists of blocks (tables, figures, notes); the page is the Jinja2 template
``templates/report.html.j2``, which escapes every value: no string reaches HTML unescaped.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from ..evaluate import prediction_metrics
from ..files import write_atomically
from ..intervals import describe, paired_difference
from ..metrics import Direction, confusion_matrix
from ..outputs import ExplanationFolder
from ..predictions import read_predictions
from ..run import read_json, read_metrics
from .figures import DPI, TSNE_MINIMUM, gallery_figure, pyplot
from .health import GREEN, health_findings, healthy_line


@dataclass
class Table:
    header: list[str] | None  # None: a two-column list of facts
    rows: list[list]
    note: str = ""
    kind: str = "table"


@dataclass
class Figure:
    src: str  # a data URI
    caption: str
    alt: str
    lead: str = ""  # shown in bold before the caption
    kind: str = "figure"


@dataclass
class Note:
    text: str
    kind: str = "note"


@dataclass
class Subheading:
    text: str
    kind: str = "subheading"


@dataclass
class Details:
    summary: str
    text: str  # preformatted, shown when opened
    kind: str = "details"


Block = Table | Figure | Note | Subheading | Details  # what a report section holds


def _png(fig) -> str:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _file_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _markdown_table(text: str) -> Table:
    """The pipe tables `icam benchmark` writes (the note under a table becomes its note)."""
    lines = text.strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    note = " ".join(line for line in lines if line and not line.startswith("|"))
    cells = [[c.strip().replace(r"\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
             for line in table if not set(line) <= set("|-")]
    return Table(cells[0], cells[1:], note)


@dataclass
class Report:
    title: str
    sections: list[tuple[str, list[Block]]] = field(default_factory=list)  # (heading, blocks)
    headline: list[str] = field(default_factory=list)
    health: list[tuple[str, str]] = field(default_factory=list)  # (red | amber | green, sentence), shown first

    def add(self, heading: str, blocks: list[Block]) -> None:
        self.sections.append((heading, blocks))

    def html(self) -> str:
        from jinja2 import Environment, PackageLoader, StrictUndefined

        environment = Environment(loader=PackageLoader("icam.report", "templates"), autoescape=True,
                                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return environment.get_template("report.html.j2").render(
            title=self.title, made=made, health=self.health, headline=self.headline, sections=self.sections)


# what a finished run folder holds, and which part of the report each feeds
RUN_FILES = {"config.yaml": "the config", "provenance.json": "seed, packages, commit",
             "metrics.jsonl": "the training curves", "data.json": "the data section",
             "summary.json": "steps and training time", "checkpoints": "the weights"}


def run_section(report: Report, run_dir: Path) -> None:
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    provenance, summary = read_json(run_dir / "provenance.json"), read_json(run_dir / "summary.json")
    packages = provenance.get("packages", {})
    git = provenance.get("git", {})
    stages = [(run, read_json(run / "summary.json")) for run in training_chain(run_dir)]
    steps = " + ".join(f"{done.get('step', '?')} ({run.name})" for run, done in stages) if len(stages) > 1 \
        else summary.get("step", "")
    minutes = " + ".join(f"{done.get('wall_seconds', 0) / 60:.1f} min ({run.name})" for run, done in stages) \
        if len(stages) > 1 else f"{summary.get('wall_seconds', 0) / 60:.1f} min"
    facts = [["run folder", str(run_dir)], ["seed", provenance.get("seed", "")],
             ["steps", steps], ["training time", minutes],
             ["git commit", (git.get("commit") or "not a git checkout") + (" (modified)" if git.get("dirty") else "")],
             ["packages", ", ".join(f"{k} {v}" for k, v in packages.items())],
             ["started", provenance.get("started", "")]]
    missing = [f"{name} ({what})" for name, what in RUN_FILES.items() if not (run_dir / name).exists()]
    note = [Note(f"This run folder lacks {', '.join(missing)}: what they hold is missing from this report (a run "
                 "still training, stopped before it wrote them, or copied in part).")] if missing else []
    report.add(f"Run: {run_dir.name}", [*note, Table(None, facts), Details("Full resolved config (YAML)", config)])


def health_section(report: Report, predictions: dict, summary: dict, maps: dict | None) -> None:
    """The banner: what would make a reader distrust the results, else one line that all is well."""
    report.health = health_findings(predictions, summary, maps) or (
        [(GREEN, healthy_line(predictions))] if predictions else [])


def data_section(report: Report, run_dir: Path) -> None:
    """The cohort the run was trained on: the table, rows per split and class, the target range,
    rows left out (with reasons), how scans were named and preprocessed."""
    path = run_dir / "data.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text()).get("data", {}) if (
        run_dir / "config.yaml").is_file() else {}
    names = data.get("classes")
    rows = []
    for split, facts in data.get("splits", {}).items():
        counts = facts.get("class_counts", [])
        labels = names or [str(k) for k in range(len(counts))]
        target = facts.get("target")
        rows.append([split, facts.get("images", ""), ", ".join(f"{c} {n}" for c, n in zip(labels, counts)),
                     f"{target['min']:.1f}–{target['max']:.1f} (mean {target['mean']:.1f})" if target else "–"])
    body: list[Block] = [Table(["split", "images", "per class", "target range"], rows)]
    preprocessing = data.get("preprocessing", {})
    voxels = f"resampled to {config['spacing']} mm" if config.get("spacing") else "native voxel size"
    facts = [["cohort table", data.get("csv", "")], ["scans and subjects", data.get("identity", "")],
             ["model input", f"{config.get('shape')} voxels, {config.get('fit')}, {voxels}, "
                             f"orientation {config.get('orientation')}" if config else ""],
             ["source shapes", ", ".join(preprocessing.get("source_shapes", []))],
             ["brain masks", ", ".join(f"{k} {v}" for k, v in preprocessing.get("brain_masks", {}).items() if v)]]
    cropped = preprocessing.get("brain_cropped", [])
    if cropped:
        worst = max(c["brain_cropped"] for c in cropped)
        facts.append(["brain cut by the fit", f"{len(cropped)} images, at most {worst:.1%} of a brain"])
    body.append(Table(None, [f for f in facts if f[1]]))
    excluded_file = run_dir / "excluded.csv"
    excluded = list(csv.DictReader(excluded_file.open())) if excluded_file.is_file() else []
    if excluded:
        body += [Note(f"{len(excluded)} rows left out of the table (the first 20):"),
                 Table(["row", "file", "reason"], [[e["row"], e["file"], e["reason"]] for e in excluded[:20]])]
    report.add("Data", body)


def training_chain(run_dir: Path) -> list[Path]:
    """The run and the runs it was initialised from (``--init-from``), earliest first."""
    chain = [run_dir]
    while len(chain) < 5:
        parent = read_json(chain[0] / "provenance.json").get("init_from")
        parent = Path(parent) if parent else None
        if parent is None or not (parent / "metrics.jsonl").is_file():
            break
        chain.insert(0, parent)
    return chain


def curves_section(report: Report, run_dir: Path) -> None:
    figure = _curves_figure(training_chain(run_dir))
    if figure:
        report.add("Training", [figure])


# (metric, panel title, other series drawn in the same panel: (metric, legend)) of the validation curves
VALIDATION_PANELS = (
    ("accuracy", "accuracy", ()), ("balanced_accuracy", "balanced accuracy", ()),
    ("ncc", "NCC against ground-truth maps", (("translation_ncc", "the translation's own change"),
                                              ("floor_ncc", "the decoder's error (floor)"))),
    ("content_class_accuracy", "content leakage (class read from z_c)", ()),
    ("mae", "MAE (target units)", ()))


def _curves_figure(chain: list[Path]) -> Figure | None:
    """Every stage of a run (pretraining, then fine-tuning) on one step axis, the boundaries
    marked; one panel per quantity, each on its own axis."""
    stages, offset = [], 0
    for run in chain:
        records = read_metrics(run)
        train = [r for r in records if r["split"] == "train"]
        if not train:
            continue
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        stages.append((run, offset, train, [r for r in records if r["split"] == "val"], config.get("loss", {})))
        offset += train[-1]["step"]
    if not stages:
        return None
    validated = [key for key, _, _ in VALIDATION_PANELS if any(v and key in v[0] for _, _, _, v, _ in stages)]
    panel = {key: (title, others) for key, title, others in VALIDATION_PANELS}
    plt = pyplot()
    panels = 2 + len(validated)
    columns = min(panels, 3)
    fig, axes = plt.subplots((panels + columns - 1) // columns, columns, figsize=(5.2 * columns, 3.9 *
                             ((panels + columns - 1) // columns)), squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    for run, start, train, val, weights in stages:
        steps = [start + r["step"] for r in train]
        for k, (key, label) in enumerate((("generator/total", "encoders + generator, total"),
                                          ("discriminator/domain_adversarial", "domain discriminators"),
                                          ("discriminator/content", "content discriminator"))):
            if key in train[0]:
                axes[0].plot(steps, [r[key] for r in train], label=label, color=f"C{k}")
        for k, (key, label) in enumerate((("generator/classification", "classification (CE)"),
                                          ("generator/regression", "regression"), ("generator/fa_map_l1", "FA-map L1"),
                                          ("generator/latent_regression", "latent regression"))):
            if key in train[0] and weights.get(key.split("/")[1], 1) != 0:  # a term switched off is not shown
                axes[1].plot(steps, [r[key] for r in train], label=label, color=f"C{k}")
        for ax, key in zip(axes[2:], validated):
            series = [(key, "the map" if panel[key][1] else None), *panel[key][1]]
            for k, (name, label) in enumerate(series):
                if val and name in val[0]:
                    ax.plot([start + r["step"] for r in val], [r[name] for r in val], marker="o", color=f"C{k}",
                            label=label)
        if start:  # where this stage began
            for ax in axes[:panels]:
                ax.axvline(start, color="grey", linestyle="--", linewidth=1)
            axes[0].text(start, 1.0, f" {run.name} starts", transform=axes[0].get_xaxis_transform(), fontsize=10,
                         va="top", color="grey")
    for ax in axes[:panels]:  # one step axis: validation points line up with the losses
        ax.set_xlim(-0.02 * offset, 1.02 * offset)
    axes[0].set_yscale("log")
    axes[0].set(title="training losses (log scale)", xlabel="step", ylabel="loss")
    axes[1].set(title="selected terms, unweighted", xlabel="step", ylabel="loss")
    for ax in axes[:2]:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=10)
    for ax, key in zip(axes[2:], validated):
        label = panel[key][0]
        ax.set(title=f"validation: {label}", xlabel="step", ylabel=label.split(" (")[0].split(" against")[0])
        if panel[key][1]:
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=9)
    names = " then ".join(run.name for run, *_ in stages)
    return Figure(_png(fig), f", {offset} steps in all"
                   + (" (the dashed line: where the next stage starts, from the previous one's weights)"
                      if len(stages) > 1 else "") + ". Top left: the adversarial losses and the total objective of "
                   "the encoders and generator (log scale). Next: the classification, regression, FA-map and "
                   "latent-regression terms before weighting. Then each validation metric on its own axis; the NCC "
                   "panel also shows what the map is made of: the translation's own change (against the translation to "
                   "the scan's own attribute) and the decoder's error |G(z_c, mu) − x|, which an image translation's "
                   "map carries; content leakage is a probe's accuracy reading the class from the content code "
                   "(chance is the goal).",
                   "training curves", lead=names)


def predictions_section(report: Report, explained: Path, metrics: dict) -> dict:
    """The confusion matrix and predicted-vs-true targets; ``metrics`` (prediction_metrics of the
    same table) gives their figures with intervals."""
    names, records = read_predictions(ExplanationFolder.at(explained).predictions)
    labelled = [r for r in records if r.label in names and r.predicted_class in names]
    regressed = [r for r in records if r.target is not None and r.predicted_target is not None]
    if not labelled and not regressed:
        return {}
    plt = pyplot()
    panels = bool(labelled) + bool(regressed)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), squeeze=False, layout="constrained")
    facts, i = {}, 0
    if labelled:
        labels = np.array([names.index(str(r.label)) for r in labelled])
        predicted = np.array([names.index(str(r.predicted_class)) for r in labelled])
        k = len(names)
        confusion = confusion_matrix(labels, predicted, k).long().numpy()
        ax = axes[0, i]
        ax.imshow(confusion, cmap="Blues")
        for a in range(k):
            for b in range(k):
                ax.text(b, a, str(confusion[a, b]), ha="center", va="center",
                        color="white" if confusion[a, b] > confusion.max() / 2 else "black", fontsize=13)
        ax.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names, xlabel="predicted class",
               ylabel="true class")
        c = metrics["classification"]
        facts["accuracy"], facts["accuracy_text"] = c["accuracy"], describe(c["accuracy"], c["accuracy_ci"], c["n"])
        ax.set_title(f"confusion matrix: accuracy {facts['accuracy_text']}", fontsize=10)
        i += 1
    if regressed:
        true = np.array([r.target for r in regressed], dtype=float)
        predicted = np.array([r.predicted_target for r in regressed], dtype=float)
        r = metrics["regression"]
        facts["mae"], facts["mae_text"] = r["mae"], describe(r["mae"], r["mae_ci"], r["n"], 2)
        facts["r"] = r.get("pearson", float("nan"))  # undefined with two points or a constant prediction
        ax = axes[0, i]
        ax.scatter(true, predicted, s=16, alpha=0.8)
        low, high = min(true.min(), predicted.min()), max(true.max(), predicted.max())
        ax.plot([low, high], [low, high], color="grey", linestyle="--", label="predicted = true")
        ax.set(xlabel="true target (e.g. age, years)", ylabel="predicted target (same units)",
               title=f"MAE {facts['mae_text']}; Pearson r {facts['r']:.2f}")
        ax.legend(fontsize=10)
    parts = (["how often each true class (rows) was predicted as each class (columns)"] if labelled else []) + \
        (["the regressed target against the true one; points on the dashed line are exact"] if regressed else [])
    caption = ". ".join(f"{side}: {text}" for side, text in zip(("Left", "Right"), parts)) if len(parts) == 2 \
        else parts[0][0].upper() + parts[0][1:]
    report.add("Predictions", [Figure(_png(fig), caption + ".", "prediction results")])
    return facts


def gallery_section(report: Report, csv_path: Path, methods: dict[str, Path], subjects: int = 4,
                    run_dir: Path | None = None) -> None:
    """The same test subjects (both classes) under every method, next to the ground truth."""
    fig = gallery_figure(csv_path, methods, subjects, run_dir)
    if fig is None:
        return
    names = list(methods)
    caption = (f"Test subjects of each class (rows), axial slices in neurological convention (the subject's left "
               f"on the left; letters at the edges). Red: brighter after translation; blue: darker; shown above 20% "
               f"of the colour range, inside the brain. The ground truth and {names[0]}'s mean FA maps of every row "
               f"share one symmetric scale in intensity units (the bar under them); the variance, where "
               f"{names[0]}'s samples disagree, has its own.")
    if len(names) > 1:
        caption += (f" {', '.join(names[1:])} are maps in other units, each divided by its own 99.5th percentile: "
                    f"post-hoc maps as relevance without a sign (ReLU'd Grad-CAM; |map| of gradient methods, as "
                    f"the scores take them) in a sequential map from 0; a signed map (VA-GAN's) in red/blue.")
    report.add("Feature-attribution maps", [Figure(_png(fig), caption + " A good map lights up where the ground "
                                                   "truth does.", "feature-attribution gallery")])


def embeddable(path: Path, folder: Path) -> bool:
    """Only PNG files inside the folder the report was given are embedded: a summary.json naming
    ``../../secret`` or an absolute path must not pull another file into a report."""
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
        return inside and path.is_file() and path.open("rb").read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def images_section(report: Report, heading: str, paths: list[Path], caption: str, folder: Path) -> None:
    paths = [p for p in paths if embeddable(p, folder)]
    if len(paths) == 1:
        report.add(heading, [Figure(_file_png(paths[0]), caption, paths[0].stem)])
    elif paths:  # one caption for the whole list, above it
        report.add(heading, [Note(caption), *(Figure(_file_png(p), "", p.stem) for p in paths)])


def scores_section(report: Report, methods: dict[str, Path], benchmark: Path | None,
                   class_names: Sequence[str] = ("0", "1")) -> dict:
    rows, facts, one_way_seen = [], {}, False
    for name, folder in methods.items():
        path = ExplanationFolder.at(folder).evaluation
        if not path.is_file():
            continue
        maps = json.loads(path.read_text())["maps"]
        if maps is None:  # scored without ground-truth maps: predictions only
            continue

        def fmt(m):
            return describe(m["mean"], tuple(m["ci"]) if m.get("ci") else None, m["n"])
        minus, plus = maps[Direction.MINUS]["ncc"], maps[Direction.PLUS]  # plus None: translated one way
        one_way_seen |= plus is None
        facts[name] = (minus["mean"], None if plus is None else plus["ncc"]["mean"])
        rows.append([name, fmt(minus), "–" if plus is None else fmt(plus["ncc"])] +
                    [fmt(maps["all"][m]) for m in ("auroc", "ap", "dice_topk", "pointing")])
    body: list[Block] = []
    made = [f"{name}: {recipe}" for name, folder in methods.items()
            if (recipe := map_recipe(ExplanationFolder.at(folder).read_summary()))]
    if made:
        body.append(Note("How the maps were made. " + "; ".join(made) + "."))
    if rows:
        body.append(Table(["method", "NCC(−)", "NCC(+)", "AUROC", "AP", "Dice top-k", "pointing (share)"], rows,
                          "Each test subject's map against its own ground-truth change inside its brain mask: the "
                          "mean over subjects [95% bootstrap interval, subjects resampled], n subjects. NCC(−) for "
                          f"{class_names[1]} → {class_names[0]} translations, NCC(+) for {class_names[0]} → "
                          f"{class_names[1]}; AUROC and average precision of |map| "
                          "for the changed voxels; Dice of the top-k voxels; the pointing game (the share of "
                          "subjects whose largest |map| is in a changed voxel, with Wilson's interval). Higher is "
                          "better everywhere." + (" A method that translates one way only (VA-GAN: class 1 → 0) "
                                                  "has no NCC(+), and its other scores are over its class-1 "
                                                  "subjects." if one_way_seen else "")))
        body += _differences(methods)
    if benchmark is not None:
        titles = {"table2_maps": "Benchmark: maps against ground truth (paper Table II)",
                  "map_parts": "Benchmark: what ICAM-reg's maps are made of",
                  "table1_translation": "Benchmark: translation success (paper Table I)",
                  "regression": "Benchmark: regression", "correlations": "Benchmark: FA magnitude and the target"}
        for stem, title in titles.items():
            path = benchmark / "results" / f"{stem}.md"
            if path.is_file():
                body += [Subheading(title), _markdown_table(path.read_text())]
    if body:
        report.add("Scores against ground truth", body)
    return facts


def map_recipe(summary: dict) -> str | None:
    """What made an ICAM folder's maps, from its summary.json: the kind of translation, the
    reference, the samples, any test-time refinement (None for a baseline's folder)."""
    if "translation" not in summary and "reference" not in summary:
        return None
    translation = summary.get("translation", "image")
    text = (f"{translation} translation (" + ("the scan plus the decoded change" if translation == "residual" else
                                                "the generator's output is the translated scan") + f"), "
            f"mean of {summary.get('n_samples', '?')} samples drawn from the "
            + ("prior (every element of the attribute)" if summary.get("sampling", "prior") == "prior" else
               "prior only where the prediction heads read the attribute, the rest the scan's own (counterfactual)")
            + f", minus the {summary.get('reference', 'input')}")
    refined = summary.get("refinement")
    if refined:
        text += (f", content code refined (up to {refined['asked']['steps']} steps, "
                 f"{refined['seconds_per_scan']} s per scan; decoder error "
                 f"{refined['reconstruction_l1_before']} → {refined['reconstruction_l1_after']})")
    return text


def _differences(methods: dict[str, Path]) -> list:
    """The first method's NCC minus each other's on the same subjects, with a paired bootstrap
    interval: whether "ICAM beats Grad-CAM" holds beyond the spread of these subjects."""
    def per_subject(folder):
        path = ExplanationFolder.at(folder).per_subject
        return {r["id"]: r for r in csv.DictReader(path.open())} if path.is_file() else {}
    names = list(methods)
    first = per_subject(methods[names[0]])
    rows = []
    for name in names[1:]:
        other = per_subject(methods[name])
        cells = [f"{names[0]} − {name}"]
        for label in ("1", "0"):  # NCC(−): class-1 subjects; NCC(+): class 0
            pairs = [(float(first[i]["ncc"]), float(other[i]["ncc"])) for i in first if i in other
                     and first[i]["label"] == label and first[i]["ncc"] not in ("", "None")
                     and other[i]["ncc"] not in ("", "None")]
            d = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
            # no pairs: the other method scored no subject of this class (VA-GAN: class 0)
            cells.append(describe(d["mean"], d["ci"], d["n"]) if pairs else "–")
        rows.append(cells)
    if not rows:
        return []
    return [Subheading("Differences between methods"),
            Table(["NCC difference", "NCC(−)", "NCC(+)"], rows,
                  "The mean per-subject difference in NCC on the same subjects [95% paired bootstrap interval], "
                  "n pairs: an interval that excludes 0 is a difference these subjects support.")]


def build_report(out: str | Path, run_dir: Path | None = None, explained: dict[str, Path] | None = None,
                 csv_path: Path | None = None, benchmark: Path | None = None, title: str = "icam report",
                 extra_headline: Sequence[str] = ()) -> Path:
    """Write the HTML report of whatever is given: a run, explanation folders (the first is the
    ICAM one), the cohort table (for the gallery), a benchmark folder."""
    report = Report(title)
    explained = explained or {}
    if run_dir is not None:
        run_section(report, run_dir)
        data_section(report, run_dir)
        curves_section(report, run_dir)
    first = next(iter(explained.values()), None)
    facts, summary = {}, {}
    if first is not None:
        folder = ExplanationFolder.at(first)
        metrics = prediction_metrics(folder.predictions)  # once: the banner, the figures, the headline
        summary = folder.read_summary()
        health_section(report, metrics, summary, read_json(folder.evaluation).get("maps"))
        if metrics:
            facts = predictions_section(report, first, metrics)
    if csv_path is not None and first is not None:
        gallery_section(report, csv_path, explained, run_dir=run_dir)
    if first is not None:
        images_section(report, "Interpolation", sorted(first.glob("*_interpolation.png")),
                       "A walk from one scan's attribute to another's, decoded with the first scan's content. Top: "
                       "the images with the predicted probability of the last class and the regressed target; bottom: "
                       "what the walk changed so far (red brighter, blue darker).", first)
        outliers = [first / str(o.get("figure", "")) for o in summary.get("outliers", [])]
        images_section(report, "Largest prediction errors", outliers,
                       "The test scans whose regressed target is furthest from the truth, with their maps (input, "
                       "mean FA, variance, ground truth).", first)
        if folder.tsne.is_file():
            images_section(report, "Attribute space", [folder.tsne],
                           f"t-SNE of the attribute means of the {summary.get('explained', 'explained')} explained "
                           "scans, coloured by class and by target: class-relevant information should separate "
                           "here.", first)
        elif summary.get("explained"):
            report.add("Attribute space", [Note(f"No t-SNE: it is drawn from {TSNE_MINIMUM} explained scans up, and "
                                               f"this folder has {summary['explained']}.")])
    names = summary.get("classes") or ["class 0", "class 1"]
    scores = scores_section(report, explained, benchmark, names)
    if "accuracy" in facts:
        report.headline.append(f"classification: accuracy {facts['accuracy_text']} scans [95% Wilson interval]")
    if "mae" in facts:
        report.headline.append(f"regression: MAE {facts['mae_text']} scans, in the target's units [95% bootstrap "
                               f"interval]; Pearson r {facts['r']:.2f}")
    maps = [f"{name} {minus:.3f}" + (f" / {plus:.3f}" if plus is not None else "")
            for name, (minus, plus) in scores.items() if minus is not None]
    if maps:
        report.headline.append(f"maps against the ground truth, mean NCC per subject, {names[1]} → {names[0]} / "
                               f"{names[0]} → {names[1]} "
                               "(1 = the map matches the true change, 0 = unrelated): " + ", ".join(maps))
    report.headline.extend(extra_headline)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(out, lambda temporary: temporary.write_text(report.html()))

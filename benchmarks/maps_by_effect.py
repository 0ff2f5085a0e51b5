"""ICAM's maps split by the effects each test scan's change holds, beside the population map.

A map can score well because it draws where the cohort changes on average, not where this
scan changed. On a synthetic cohort (brain-synth, brain-deep), whose table says which effects
each subject shows (the ``<effect>_weight`` columns), this reads an ablation folder
(`benchmarks/quality.py --out`) and, for each direction and effect, compares the variant's
per-scan NCC with the population map's (the mean |ground truth| of the training scans of
the scan's class, the same for every scan of it) on the test scans that show the effect and
on those that do not. A map that sees the scan beats the population map where the scan's
own effects (which lesions, which parcels) are what changed. Prints one JSON line; writes
maps_by_effect.md into --out.

  python benchmarks/maps_by_effect.py --out q-brain --variant default
  python benchmarks/maps_by_effect.py --out q-brain --variant width-16 --seeds 2   # where only seed 2 ran it
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from icam.metrics import map_metrics, population_map

WEIGHT = "_weight"


def seed_scores(folder: Path, variant: str) -> tuple[list[str], list[dict]]:
    """(the cohort's effects, one row per explained test scan: label, which effects it shows,
    the variant's NCC and the population map's) for one seed folder of the ablation bench."""
    cohort = folder / "cohort"
    table = list(csv.DictReader((cohort / "cohort.csv").open()))
    effects = [c[: -len(WEIGHT)] for c in table[0] if c.endswith(WEIGHT)]
    if not effects:
        raise SystemExit(f"{cohort / 'cohort.csv'} has no <effect>{WEIGHT} columns: a synthetic brain cohort has")
    scores = folder / "maps" / f"{variant}-icam-reg" / "per_subject_maps.csv"
    if not scores.is_file():
        raise SystemExit(f"{scores} is missing: run quality.py with --variants {variant} on this folder first")

    def image(path: str) -> np.ndarray:
        return np.asarray(nib.load(cohort / path).dataobj, dtype=np.float32)[..., 0]

    by_id = {Path(row["image"]).name.split(".nii")[0]: row for row in table}
    population = {label: population_map(image(r["gt_map"]) for r in table
                                        if r["split"] == "train" and int(r["label"]) == label)
                  for label in (0, 1)}
    rows = []
    for scored in csv.DictReader(scores.open()):
        row = by_id[scored["id"]]
        label = int(row["label"])
        rows.append({"label": label, "ncc": float(scored["ncc"]),
                     "population_ncc": map_metrics(population[label], image(row["gt_map"]),
                                                   image(row["mask"]) if row.get("mask") else None)["ncc"],
                     "shows": {e: float(row[e + WEIGHT]) > 0 for e in effects}})
    return effects, rows


def summarise(effects: list[str], rows: list[dict]) -> dict:
    """Per direction and effect, over the scans that show it and those that do not: how many,
    the mean NCC of the map and of the population map."""
    def mean(values):
        values = [v for v in values if v is not None and not np.isnan(v)]
        return round(float(np.mean(values)), 4) if values else None

    summary: dict[str, dict[str, Any]] = {}
    for label, direction in ((1, "minus"), (0, "plus")):
        scans = [r for r in rows if r["label"] == label]
        summary[direction] = {
            effect: {group: {"scans": len(chosen), "map": mean(r["ncc"] for r in chosen),
                             "population": mean(r["population_ncc"] for r in chosen)}
                     for group, chosen in (("with", [r for r in scans if r["shows"][effect]]),
                                           ("without", [r for r in scans if not r["shows"][effect]]))}
            for effect in effects}
        summary[direction]["all"] = {"scans": len(scans), "map": mean(r["ncc"] for r in scans),
                                     "population": mean(r["population_ncc"] for r in scans)}
    return summary


def markdown(summary: dict, variant: str) -> str:
    lines = [f"| direction | effect | scans with it | {variant} | population map | scans without | {variant} "
             "| population map |", "|---|---|---|---|---|---|---|---|"]
    for direction, label in (("minus", "class 1 → 0"), ("plus", "class 0 → 1")):
        for effect, groups in summary[direction].items():
            if effect == "all":
                continue
            cells = [f"{g['scans']} | {g['map']} | {g['population']}" for g in (groups["with"], groups["without"])]
            lines.append(f"| {label} | {effect} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the ablation bench's folder (its seed<N> folders)")
    p.add_argument("--variant", default="default")
    p.add_argument("--seeds", type=int, nargs="+", help="these seeds' folders only (default: every seed<N> folder)")
    args = p.parse_args()
    folders = (sorted(Path(args.out).glob("seed*")) if args.seeds is None
               else [Path(args.out) / f"seed{seed}" for seed in args.seeds])
    if not folders:
        raise SystemExit(f"{args.out} holds no seed<N> folders: point --out at benchmarks/quality.py's --out")
    effects, rows = [], []
    for folder in folders:
        effects, seed_rows = seed_scores(folder, args.variant)
        rows += seed_rows
    summary = summarise(effects, rows)
    (Path(args.out) / "maps_by_effect.md").write_text(markdown(summary, args.variant))
    print(json.dumps({"benchmark": "maps_by_effect", "variant": args.variant,
                      "seeds": [f.name for f in folders], "directions": summary}))


if __name__ == "__main__":
    main()

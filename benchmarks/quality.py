"""The ablation bench: ICAM-reg variants trained on the same cohorts and seeds, one table.

For every seed: a cohort (brain-synth or squares, seeded; or your table), the dedicated
networks once (the ResNet, the CNN regressor, the independent classifier that judges
translations), then every variant: ICAM pretrained and ICAM-reg fine-tuned as
`icam benchmark` does, its test maps scored against the ground truth, Table I. Variants that
change only how maps are made (``EXPLANATION_ONLY``: the reference, samples, threshold, sampling,
refinement) reuse the model of the variant they otherwise equal.
Prints one JSON line (mean per variant and metric); writes quality.json (every seed) and
quality.md (mean ± standard error over seeds) into --out.

Examples:
  python benchmarks/quality.py --out q --seeds 0 1 2                       # the default variants
  python benchmarks/quality.py --out q --variants default no-ema kl-x16 --set shape=[128,128]
  python benchmarks/quality.py --out q --set cohort=squares --variants default no-ema
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml

from icam.comparison import DIAGNOSTICS, BenchmarkRun, settings_for
from icam.metrics import Direction

# Each variant: `icam benchmark` settings (``icam_set`` holds run-config overrides for both ICAM runs).
VARIANTS = {
    "default": [],
    # the paper's model (an image translation, attributes drawn from the prior): icam's default until issue 23
    "paper": ["icam_set=[model.preset=paper]"],
    "paper+counterfactual": ["icam_set=[model.preset=paper]", "sampling=counterfactual"],
    "paper+refine-50": ["icam_set=[model.preset=paper]", "refine_steps=50"],
    "paper+channel-norm": ["icam_set=[model.preset=paper,model.generator_norm=channel]"],
    "prior": ["sampling=prior"],
    "refine-50": ["refine_steps=50"],
    "gated": ["icam_set=[model.translation=gated]"],
    "channels-4": ["icam_set=[model.attribute_channels=4]"],
    "every-scale": ["icam_set=[model.attribute_injection=every-scale]"],
    "style": ["icam_set=[model.attribute_injection=style]"],
    "validity-5": ["icam_set=[loss.translation_validity=5]"],
    "content-reversal": ["icam_set=[loss.content_adversarial=0,loss.content_reversal=1]"],
    "channel-norm": ["icam_set=[model.generator_norm=channel]"],
    "map-l1-x5": ["icam_set=[loss.fa_map_l1=50]"],
    "no-domain-class": ["icam_set=[loss.domain_classification=0]"],
    "no-latent-regression": ["icam_set=[loss.latent_regression=0]"],
    "content-noise-3": ["icam_set=[model.content_noise=3]"],
    "no-spectral-norm": ["icam_set=[model.discriminator_spectral_norm=false]"],
    "steps-x2": ["icam_steps=2400", "icam_reg_steps=1200"],
    "no-content-adversary": ["icam_set=[loss.content_adversarial=0]"],
    "map-l1-x0.2": ["icam_set=[loss.fa_map_l1=2]"],
    "train-counterfactual": ["icam_set=[train.random_attributes=counterfactual]"],
    "transposed-upsampling": ["icam_set=[model.upsampling=transposed]"],
    "dc-whole": ["icam_set=[model.content_discriminator_reads=whole]"],
    "dc-no-norm": ["icam_set=[model.content_discriminator_norm=false]"],
    "dc-x10": ["icam_set=[loss.content_adversarial=10]"],
    # z_c through a bottleneck: 8 channels, a quarter of the 4 × width = 32 the bench's width 8 gives
    "content-channels-8": ["icam_set=[model.content_channels=8]"],
    # z_c at S/2 (32×32 at 64²): G up-samples it once, so it can keep and change finer structure
    "content-stride-2": ["icam_set=[model.content_stride=2]"],
    # ... which costs 2.2x an iteration at width 8, 64^2, on CPU (benchmarks/train_step.py --set
    # model.content_stride=2): these steps take as long as the quick preset's 1,200 + 600
    "content-stride-2-equal-time": ["icam_set=[model.content_stride=2]", "icam_steps=550", "icam_reg_steps=275"],
    # 1 − SSIM of the reconstruction at the weight of its L1: local structure, not only intensity
    "ssim-100": ["icam_set=[loss.reconstruction_ssim=100]"],
    "paper-upsampling": ["icam_set=[model.upsampling=transposed-avgpool]"],
    "no-ema": ["icam_set=[train.ema_decay=null]"],
    "lr-decay": ["icam_set=[train.lr_schedule=linear]"],
    "kl-x16": ["icam_set=[loss.kl_attribute=0.16]"],
    "prediction-x5": ["icam_set=[loss.classification=50,loss.regression=50]"],
    "latent-regression-x10": ["icam_set=[loss.latent_regression=10]"],
    "attribute-stride-8": ["icam_set=[model.attribute_stride=8]"],
    # the domain discriminators' real/fake judge; each variant names both keys, so it means the
    # same before and after per-class + centred became the default
    "shared-judge": ["icam_set=[model.discriminator_real_fake=shared,model.discriminator_centred=false]"],
    "per-class-judge": ["icam_set=[model.discriminator_real_fake=per-class,model.discriminator_centred=false]"],
    "per-class-judge+prior": ["icam_set=[model.discriminator_real_fake=per-class,model.discriminator_centred=false]",
                              "sampling=prior"],
    "per-class-judge+centred": ["icam_set=[model.discriminator_real_fake=per-class,model.discriminator_centred=true]"],
    "shared-judge+centred": ["icam_set=[model.discriminator_real_fake=shared,model.discriminator_centred=true]"],
    "no-cycle": ["icam_set=[model.discriminator_real_fake=shared,model.discriminator_centred=false,"
                 "loss.cycle_l1=0,loss.cycle_l2=0]"],
    "per-class-judge+no-cycle": ["icam_set=[model.discriminator_real_fake=per-class,model.discriminator_centred=false,"
                                 "loss.cycle_l1=0,loss.cycle_l2=0]"],
    "r1": ["icam_set=[loss.domain_gradient_penalty=1]"],
    # the real/fake judges' weight against the cycle's and reconstruction's (100 + 100 each): how
    # hard a translation is asked to look like a real scan of its target class
    "adversarial-x2": ["icam_set=[loss.domain_adversarial=2]"],
    "adversarial-x5": ["icam_set=[loss.domain_adversarial=5]"],
    "rejection-64": ["icam_set=[train.rejection_candidates=64]"],
    "width-16": ["width=16"],
    # a width-16 iteration costs 1.8x a width-8 one at 64^2 on CPU (benchmarks/train_step.py): the
    # quick preset's 1,200 + 600 steps at width 8 take as long as these at width 16
    "width-16-equal-time": ["width=16", "icam_steps=670", "icam_reg_steps=335"],
    "select-on-validation": ["icam_validations=12"],
    "lr-decay+kl-x16": ["icam_set=[train.lr_schedule=linear,loss.kl_attribute=0.16]"],
    "lr-decay+kl-x16+prediction-x5": ["icam_set=[train.lr_schedule=linear,loss.kl_attribute=0.16,"
                                      "loss.classification=50,loss.regression=50]"],
    "reference-reconstruction": ["reference=reconstruction"],
    "reference-own-class": ["reference=own-class"],
    "samples-25": ["n_samples=25"],
    "samples-100": ["n_samples=100"],
    "samples-200": ["n_samples=200"],
    "threshold-0.5": ["min_probability=0.5"],
    "threshold-0.99": ["min_probability=0.99"],
}
# they change the maps, not the model: a variant made of these and another's settings reuses its model
EXPLANATION_ONLY = ("reference", "n_samples", "min_probability", "sampling", "refine_steps")


def with_variant(settings: list[str], variant: str) -> list[str]:
    """``settings`` then the variant's, where the run-config overrides of both (``icam_set``) are
    joined, the variant's last, rather than the variant's replacing those given with --set."""
    def run_overrides(items: list[str]) -> list[str]:
        return [o for item in items if item.startswith("icam_set=") for o in yaml.safe_load(item.partition("=")[2])]

    joined = run_overrides(settings) + run_overrides(VARIANTS[variant])
    rest = [item for item in settings + VARIANTS[variant] if not item.startswith("icam_set=")]
    return rest + ([f"icam_set=[{','.join(joined)}]"] if joined else [])


def model_source(variant: str) -> str:
    """The first variant whose model this one's is (the same settings but for EXPLANATION_ONLY ones)."""
    def model_settings(name: str) -> list[str]:
        return sorted(o for o in VARIANTS[name] if o.split("=")[0] not in EXPLANATION_ONLY)
    return next(v for v in VARIANTS if model_settings(v) == model_settings(variant))
METRICS = ("accuracy", "balanced_accuracy", "mae", "ncc_minus", "ncc_plus", "auroc", *DIAGNOSTICS,
           "table1_young_to_old", "table1_old_to_young", "acceptance_rate", "train_seconds")


def icam_metrics(bench: BenchmarkRun, run: str, maps: Path) -> dict:
    """The variant's figures: predictions, maps (both directions), what the maps are made of
    (``BenchmarkRun.diagnostics``) and Table I of its ICAM-reg."""
    evaluation = bench.score(maps)
    translation = bench.translation_success({"icam-reg": run})
    diagnostics = bench.diagnostics(run)
    classification, regression = evaluation.get("classification", {}), evaluation.get("regression", {})
    return {
        **{key: diagnostics.get(key) for key in DIAGNOSTICS},
        "accuracy": classification.get("accuracy"), "balanced_accuracy": classification.get("balanced_accuracy"),
        "mae": regression.get("mae"), "ncc_minus": evaluation["maps"][Direction.MINUS]["ncc"]["mean"],
        "ncc_plus": evaluation["maps"][Direction.PLUS]["ncc"]["mean"],
        "auroc": evaluation["maps"]["all"]["auroc"]["mean"],
        "table1_young_to_old": translation["icam-reg class 0"][0],
        "table1_old_to_young": translation["icam-reg class 1"][0],
        "acceptance_rate": json.loads((maps / "summary.json").read_text()).get("mean_acceptance_rate"),
        "table1_real": (translation["real class 0"][0], translation["real class 1"][0]),
    }


def posthoc_points(bench: BenchmarkRun) -> dict:
    """The post-hoc maps of the seed's ResNet (every method of `icam benchmark`) scored on its
    test split: each one's NCC both ways, and the best of them per direction (what ICAM's maps
    are measured against)."""
    points = {}
    for posthoc in bench.settings.posthoc:
        maps = bench.score(bench.explain_baseline("resnet", posthoc))["maps"]
        for direction, key in ((Direction.MINUS, "ncc_minus"), (Direction.PLUS, "ncc_plus")):
            points[f"{posthoc}_{key}"] = maps[direction]["ncc"]["mean"]
    for key in ("ncc_minus", "ncc_plus"):
        points[f"best_posthoc_{key}"] = max(v for k, v in points.items() if k.endswith(key) and v is not None)
    return points


def population_points(bench: BenchmarkRun, run: str) -> dict:
    """What the NCC figures should be read against, on this seed's test split: the population
    map, one map for every scan of a class, the mean |ground truth| of the training scans of that
    class (it never looks at the scan): what a method that knew only where the cohort changes on
    average would score. (The decoder's error, the other reference, is each variant's floor_ncc.)"""
    import numpy as np

    from icam.explain import open_run
    from icam.metrics import map_metrics, population_map
    from icam.scans import load_inputs

    model = open_run(run, "best", bench.device)
    train = load_inputs(model, bench.csv_path, "train")
    train_items = [train[i] for i in range(len(train))]
    population = {k: population_map(t["gt_map"][0].numpy() for t in train_items if int(t["label"]) == k)
                  for k in (0, 1)}
    test = load_inputs(model, bench.csv_path, "test")
    scores: dict[str, list[float]] = {f"population_{d}": [] for d in ("ncc_minus", "ncc_plus")}
    for i in range(len(test)):
        item = test[i]
        label = int(item["label"])
        gt, mask = item["gt_map"][0].numpy(), item["mask"][0].numpy() if "mask" in item else None
        value = map_metrics(population[label], gt, mask)["ncc"]
        if value is not None:
            scores[f"population_{'ncc_minus' if label == 1 else 'ncc_plus'}"].append(value)
    return {k: float(np.mean(v)) if v else None for k, v in scores.items()}


def run_seed(seed: int, variants: list[str], args) -> dict:
    """Every variant on this seed's cohort; results are kept in seed<N>/variants.json after each
    variant, so a stopped bench continues where it stopped and seeds can run in parallel."""
    folder = Path(args.out) / f"seed{seed}"
    saved = folder / "variants.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    if all(v in results for v in variants) and not args.rescore:
        return results
    bench = BenchmarkRun(settings_for(args.preset, args.set + [f"seed={seed}"]), folder,
                         log=lambda m: print(f"  [seed {seed}] {m}", flush=True))
    bench.write_cohort()
    bench.runs.update(results.get("runs", {}))
    for method in ("resnet", "cnn-regressor", "cnn-classifier"):
        if method not in bench.runs:
            bench.train_baseline(method)
    if "baselines" not in results:
        baselines = {method: bench.score(bench.explain_baseline(method)) for method in ("resnet", "cnn-regressor")}
        results["baselines"] = {"resnet_accuracy": baselines["resnet"]["classification"]["accuracy"],
                                "cnn_mae": baselines["cnn-regressor"]["regression"]["mae"]}
        results["runs"] = bench.runs
        saved.write_text(json.dumps(results, indent=2))
    if "best_posthoc_ncc_minus" not in results["baselines"]:
        results["baselines"].update(posthoc_points(bench))
        saved.write_text(json.dumps(results, indent=2))
    # variant → (its ICAM-reg run, seconds both trainings took), saved as soon as it is trained
    trained: dict[str, tuple[str, float]] = {v: tuple(t) for v, t in results.get("trained", {}).items()}
    for variant in variants:
        if variant in results and not args.rescore:
            continue
        bench.settings = settings_for(args.preset, with_variant(args.set + [f"seed={seed}"], variant))
        source = model_source(variant)
        if source not in trained:
            started = time.perf_counter()
            trained[source] = (bench.train_icam(prefix=f"{source}-")[1], time.perf_counter() - started)
            results.update(trained=trained, runs=bench.runs)
            saved.write_text(json.dumps(results, indent=2))
        run, seconds = trained[source]
        maps = bench.out / "maps" / f"{variant}-icam-reg"
        if not (args.rescore and (maps / "summary.json").is_file()):
            maps = bench.explain_icam(f"{source}-icam-reg", folder=f"{variant}-icam-reg")
        results[variant] = icam_metrics(bench, run, maps)
        results[variant]["train_seconds"] = round(seconds)
        real = results[variant].pop("table1_real")
        results["baselines"].update(table1_real_young=real[0], table1_real_old=real[1])
        if variant == "default" and "population_ncc_minus" not in results["baselines"]:
            results["baselines"].update(population_points(bench, run))
        results["runs"] = bench.runs
        saved.write_text(json.dumps(results, indent=2))
        print(json.dumps({"seed": seed, "variant": variant, **results[variant]}), flush=True)
    return results


def mean_and_error(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, sd / math.sqrt(len(values))


def table(per_seed: dict, variants: list[str]) -> tuple[str, dict]:
    def cell(values):
        mean, error = mean_and_error(values)
        return "–" if mean is None else f"{mean:.3f}" + ("" if error is None else f" ± {error:.3f}")
    means = {}
    header = ["variant", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        values = {m: [seed[variant][m] for seed in per_seed.values()] for m in METRICS}
        means[variant] = {m: mean_and_error(v)[0] for m, v in values.items()}
        lines.append("| " + " | ".join([variant] + [cell(values[m]) for m in METRICS]) + " |")
    baseline_keys = list(next(iter(per_seed.values()))["baselines"])
    baselines = {k: [seed["baselines"][k] for seed in per_seed.values()] for k in baseline_keys}
    means["baselines"] = {k: mean_and_error(v)[0] for k, v in baselines.items()}
    lines += ["", "Dedicated networks, the judge on real images and the population map (see population_points): " +
              ", ".join(f"{k} {cell(v)}" for k, v in baselines.items())]
    return "\n".join(lines) + "\n", means


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--preset", default="quick")
    p.add_argument("--set", action="append", default=[], help="an `icam benchmark` setting for every variant")
    p.add_argument("--rescore", action="store_true", help="score the variants already trained again (their models "
                                                          "and maps are kept), e.g. after the scores changed")
    args = p.parse_args()
    variants = args.variants if "default" in args.variants else ["default", *args.variants]
    started = time.perf_counter()
    per_seed = {seed: run_seed(seed, variants, args) for seed in args.seeds}
    text, means = table(per_seed, variants)
    note = (f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), preset {args.preset}"
            f"{' with ' + ' '.join(args.set) if args.set else ''}; mean ± standard error over seeds.\n")
    (args.out / "quality.md").write_text(text + note)
    (args.out / "quality.json").write_text(json.dumps({"seeds": per_seed, "means": means, "settings": args.set,
                                                       "preset": args.preset}, indent=2, default=str))
    print(text + note)
    minutes = round((time.perf_counter() - started) / 60, 1)
    print(json.dumps({"benchmark": "quality", "seeds": args.seeds, "minutes": minutes, "means": means}))


if __name__ == "__main__":
    main()

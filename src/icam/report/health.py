"""The report's health banner: plain sentences, with their numbers, for what would make a reader
distrust the results (a model at chance, a regression no better than the mean, maps built from
rejected samples, undefined maps, too few test scans). A healthy run gets one line saying so."""

from __future__ import annotations

RED, AMBER, GREEN = "red", "amber", "green"
FEW_SCANS = 30  # below this, intervals are wide and t-SNE or outlier figures say little


def health_findings(predictions: dict, summary: dict, maps: dict | None) -> list:
    """[(level, sentence)] from an explanation folder's prediction metrics (evaluate's
    ``classification``/``regression``), its summary.json and its map scores."""
    findings = []
    classification, regression = predictions.get("classification"), predictions.get("regression")
    if classification:
        accuracy, chance, n = classification["accuracy"], classification["chance"], classification["n"]
        if classification["predicted_classes"] == 1 and n > 1:
            findings.append((RED, f"Every one of the {n} scans is predicted as the same class: the classifier has "
                                  "not learned to tell the classes apart."))
        elif accuracy <= chance:
            findings.append((RED, f"Accuracy {accuracy:.3f} on {n} scans is no better than always predicting the "
                                  f"commonest class ({chance:.3f}): the model is at or below chance."))
    if regression:
        mae, baseline = regression["mae"], regression["mae_of_the_mean"]
        if mae >= baseline:
            findings.append((RED, f"The regression's MAE {mae:.2f} is no better than predicting these scans' mean "
                                  f"target for every scan ({baseline:.2f})."))
        if regression["predicted_sd"] < 0.1 * regression["true_sd"]:
            findings.append((AMBER, f"Predicted targets barely vary (sd {regression['predicted_sd']:.2f} against "
                                    f"{regression['true_sd']:.2f} in the truth): the regressor predicts about the "
                                    "same value for everyone."))
    fallback = fallback_finding(summary)
    if fallback:
        findings.append((AMBER, fallback))
    if maps:
        undefined, scored = maps["all"].get("undefined", 0), maps.get("scored", 0)
        if undefined:
            findings.append((AMBER, f"{undefined} of {scored} maps are constant, so their NCC is undefined and "
                                    "left out of the means."))
    n = (classification or regression or {}).get("n")
    if n is not None and n < FEW_SCANS:
        findings.append((AMBER, f"Only {n} test scans: the intervals are wide, and differences smaller than them "
                                "are not findings."))
    return findings


def fallback_finding(summary: dict) -> str | None:
    """A sentence when most of an explanation's maps fell back to rejected samples (``icam explain``
    says it on the command line, the report in its banner)."""
    explained = summary.get("explained") or 0
    fallback = summary.get("scans_with_fallback") or 0
    if not explained or fallback / explained <= 0.5:
        return None
    return (f"{fallback} of {explained} scans' maps used sampled attributes the classifier did not accept (mean "
            f"acceptance {summary.get('mean_acceptance_rate') or 0:.2f}, --min-probability "
            f"{summary.get('min_probability')}): those maps mix in attributes of the wrong class.")


def healthy_line(predictions: dict) -> str:
    facts = []
    if predictions.get("classification"):
        c = predictions["classification"]
        facts.append(f"accuracy {c['accuracy']:.3f} above chance ({c['chance']:.3f})")
    if predictions.get("regression"):
        r = predictions["regression"]
        facts.append(f"MAE {r['mae']:.2f} better than predicting the mean ({r['mae_of_the_mean']:.2f})")
    return "No warning signs" + (": " + "; ".join(facts) if facts else "") + f"; at least {FEW_SCANS} test scans."

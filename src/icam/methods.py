"""Every method icam trains or explains with, by the name its folders and options use, with the
label tables and reports give it: one registry, read by the config, the baselines, the
benchmark, the CLI and the report. Two vocabularies, each spelled here once: what a run trains
(``Method``, the config's ``method``) and what makes a map (a folder under maps/ or explained/:
ICAM's two stages, a ResNet's post-hoc methods, VA-GAN)."""

from __future__ import annotations

from typing import Literal

Method = Literal["icam", "resnet", "vagan", "cnn-regressor", "cnn-classifier"]  # what a run trains

# post-hoc maps of a trained ResNet (captum), by their --posthoc name
POSTHOC_LABELS = {"gradcam": "Grad-CAM", "guided_gradcam": "guided Grad-CAM", "guided_backprop": "guided backprop",
                  "integrated_gradients": "integrated gradients", "occlusion": "occlusion"}
POSTHOC = tuple(POSTHOC_LABELS)
# every map-making method by its folder name under maps/ (or explained/), as tables and reports name it;
# in the order reports show them (ICAM-reg first: its run and predictions lead a report)
METHOD_LABELS = {"icam-reg": "ICAM-reg", "icam": "ICAM", **POSTHOC_LABELS, "vagan": "VA-GAN"}
# methods that translate one way only (class 1 → 0): icam evaluate does not score their maps of
# class-0 scans, so evaluation.json, tables and reports hold no NCC(+) for them
ONE_WAY = frozenset({"vagan"})

"""Every method icam trains or explains with, by the name its folders and options use, with the
label tables and reports give it: one registry, read by the baselines, the benchmark, the CLI
and the report."""

from __future__ import annotations

# post-hoc maps of a trained ResNet (captum), by their --posthoc name
POSTHOC_LABELS = {"gradcam": "Grad-CAM", "guided_gradcam": "guided Grad-CAM", "guided_backprop": "guided backprop",
                  "integrated_gradients": "integrated gradients", "occlusion": "occlusion"}
POSTHOC = tuple(POSTHOC_LABELS)
# every map-making method by its folder name under maps/ (or explained/), as tables and reports name it;
# in the order reports show them (ICAM-reg first: its run and predictions lead a report)
METHOD_LABELS = {"icam-reg": "ICAM-reg", "icam": "ICAM", **POSTHOC_LABELS, "vagan": "VA-GAN"}

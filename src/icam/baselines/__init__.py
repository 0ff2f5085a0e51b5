"""The methods ICAM is compared with in the papers: a ResNet classifier explained by captum's
post-hoc saliency methods, VA-GAN, and the attribute-encoder CNN (regression baseline and
independent classifier). Train them with ``icam train --set method=<name>``."""

"""icam: explain predictions on medical images with ICAM / ICAM-reg (Bass et al., 2020, 2023)."""

from .config import Config, load_config
from .explain import Explainer, Explanation, Refinement, open_run
from .model import ICAM

__version__ = "0.1.0"
__all__ = ["ICAM", "Config", "Explainer", "Explanation", "Refinement", "__version__", "load_config", "open_run"]

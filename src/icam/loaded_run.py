"""What an opened run is, whatever its method: ICAM's `Explainer` and the baselines'
`BaselineModel` both are one (``icam.open_run`` gives either), so predicting, explaining and
stamping outputs are written once, against this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from .config import Config
    from .model import Prediction


class LoadedRun(Protocol):
    """A trained model as `icam predict` and `icam explain` use it (as captum's ``Attribution``
    gives every method ``attribute``)."""

    @property
    def config(self) -> Config | None:
        """The run's config (its data section says how files are preprocessed)."""

    @property
    def class_names(self) -> list[str]: ...

    @property
    def run_dir(self) -> Path | None:
        """The run folder it was opened from (its splits.csv, data.json), if any."""

    @property
    def checkpoint_path(self) -> Path | None: ...

    @property
    def fingerprint(self) -> str:
        """Its checkpoint's SHA-256: stamped on every map it writes."""

    @property
    def checkpoint_info(self) -> dict: ...

    @property
    def image_shape(self) -> tuple[int, ...]: ...

    @property
    def regressing(self) -> bool: ...

    @property
    def name(self) -> str:
        """icam, or the baseline's method (its post-hoc method for a ResNet)."""

    @property
    def makes_maps(self) -> bool: ...

    def predict(self, x: torch.Tensor) -> Prediction | None: ...

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor: ...

import pytest
import torch

from icam.config import load_config

# A tiny configuration: 64×64 squares, width 4, a handful of steps. Tests override what they need.
TINY_TRAINING = ["model.width=4", "train.steps=4", "train.log_every=2", "train.validate_every=2",
                 "train.image_every=4", "train.checkpoint_every=2", "validation.fa_samples=2",
                 "runtime.accelerator=cpu"]
TINY = TINY_TRAINING + ["data.n_train=48", "data.n_val=16", "data.n_test=8"]


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str):
        return load_config(None, TINY + [f"out_dir={tmp_path / 'runs'}", *overrides])
    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

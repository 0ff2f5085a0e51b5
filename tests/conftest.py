import os

import pytest
import torch

from icam.config import load_config
from icam.data import make_squares
from icam.train import train

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


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """Tests run in one process per core (pytest-xdist, `-n auto`): torch's threads would oversubscribe them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory):
    """The preprocessing cache defaults to the user's cache folder: tests keep theirs apart."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A tiny ICAM trained on bright squares, shared by the explanation and evaluation tests:
    long enough for the classifier, and for translations to learn where the boxes go."""
    out = tmp_path_factory.mktemp("runs")
    config = load_config(None, TINY + ["train.steps=40", "train.validate_every=40", "train.images_per_class=4",
                                       "train.lr=1e-3", "train.content_discriminator_lr=4e-4", "data.effect=300",
                                       "data.n_train=200", "data.n_val=32", f"out_dir={out}", "name=squares"])
    return train(config, show_progress=False)["run_dir"]


@pytest.fixture(scope="session")
def squares():
    return make_squares(12, 64, effect=300, seed=99)

"""Fixtures shared by test modules."""

from pathlib import Path

import pytest
import torch

import gddim
from gddim.data import load_images
from gddim.networks import NetworkConfig
from gddim.training import TrainConfig, train


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and a shared CI machine does not oversubscribe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A 2-step CLD run on digits with a micro network: a real checkpoint, trained enough to be a network."""
    run = tmp_path_factory.mktemp("small") / "run"
    micro = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                          norm_groups=8, dropout=0.1, gaussian_skip=0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(gddim.CLD(), load_images("digits")[:256], run, micro, TrainConfig(steps=2, batch_size=8, warmup=1,
          ckpt_every=2, sample_nfe=4), {"source": "digits", "image_size": None}, progress=False)
    torch.set_num_threads(threads)
    return run

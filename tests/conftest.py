"""Fixtures shared by test modules."""

from pathlib import Path

import pytest
import torch

import gddim
from gddim.data import load_images
from gddim.training import train
from tiny_runs import DIGITS, MICRO, quick


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and a shared CI machine does not oversubscribe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_images("digits")[:256]


@pytest.fixture(scope="module")
def cld_run(tmp_path_factory, digits) -> Path:
    """A 2-step CLD run of the micro network on digits, checkpointed at its end."""
    run = tmp_path_factory.mktemp("cld") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(gddim.CLD(), digits, run, MICRO, quick(steps=2, ckpt_every=2), DIGITS, progress=False)
    torch.set_num_threads(threads)
    return run

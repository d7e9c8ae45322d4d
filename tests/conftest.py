"""Fixtures shared by test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and a shared CI machine does not oversubscribe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

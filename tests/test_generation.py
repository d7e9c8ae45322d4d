"""Generation: samples of a trained model, PNG grids and .npz files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gddim.checkpoints import load_checkpoint
from gddim.data import load_images
from gddim.generation import sample_images, save_grid, save_npz, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_and_npz(tmp_path, cld_run):
    ckpt = load_checkpoint(cld_run)
    model = ckpt.network().double()  # float64: the 2-step model's sampler amplifies round-off a lot
    x = sample_images(ckpt.process(), model, n=5, nfe=4, method="gddim", order=1, seed=3)
    again = sample_images(ckpt.process(), model, n=5, nfe=4, method="gddim", order=1, seed=3, batch=2)
    assert x.dtype == torch.float64 and x.shape == (5, 1, 8, 8) and torch.allclose(x, again, rtol=1e-9, atol=1e-9)
    x = x.float()
    grid = save_grid(x, tmp_path / "g.png", nrow=3)
    assert Image.open(grid).size == (6 * (3 * 9 + 1), 6 * (2 * 9 + 1))  # 8x8 tiles + 1px gaps, enlarged 6x
    tiles = np.asarray(Image.open(save_grid(x.repeat(13, 1, 1, 1)[:64], tmp_path / "g64.png")))
    assert tiles.shape == (438, 438)  # 8 rows of 8 digits, each tile 48 px: readable
    expected = np.kron(to_uint8(x[:1])[0, :, :, 0], np.ones((6, 6), np.uint8))  # nearest: every pixel a 6x6 block
    assert np.array_equal(tiles[6:54, 6:54], expected)
    assert Image.open(save_grid(torch.zeros(4, 3, 32, 32), tmp_path / "c.png")).size == (2 * 67, 2 * 67)
    loaded = load_images(str(save_npz(x, tmp_path / "s.npz")))
    assert loaded.shape == x.shape and torch.allclose(loaded, x.clamp(-1, 1), atol=1 / 255 + 1e-6)


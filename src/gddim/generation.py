"""Generating images from a trained model or a checkpoint: samples, PNG grids and .npz files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_file, make_folder
from .checkpoints import Checkpoint, load_checkpoint
from .errors import SettingsError
from .networks import EpsModel
from .processes import LinearProcess
from .sampling import sample


def sample_images(process: LinearProcess, model: EpsModel, n: int, nfe: int, method: str = "gddim",
                  order: int | None = None, lam: float | None = None, parameterization: str = "R", seed: int = 0,
                  batch: int = 500, device=None, progress: bool = False, grid="quadratic", **options) -> torch.Tensor:
    """n samples (n, C, H, W) on the CPU; the same seed gives every sampler the same starting noise.

    grid: any grid of gddim.sample, e.g. "tuned" or the path of a grid file from gddim tune-grid; options: the
    multistep options of gddim.sample (prediction, corrector, ...)."""
    if n < 1 or batch < 1:
        raise SettingsError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    weight = next(model.parameters())
    device = torch.device(device) if device is not None else weight.device
    model = model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            shape = (min(batch, n - start), model.data_channels, model.image_size, model.image_size)
            # a half-precision network still gets a float32 state: the recursion's cancellations need it
            u_T = process.prior_sample(shape, generator=generator, dtype=torch.promote_types(weight.dtype, torch.float32),
                                       device=device)
            out.append(sample(process, model, u_T, nfe, method, order, lam, parameterization, grid=grid,
                              generator=generator, progress=progress, **options).cpu())
    return torch.cat(out)


def sample_from_checkpoint(ckpt: str | Path | Checkpoint, n: int, method: str = "gddim", nfe: int = 50,
                           order: int | None = None, lam: float | None = None, parameterization: str = "R",
                           seed: int = 0, batch: int = 500, device=None, progress: bool = False, grid="quadratic",
                           **options) -> torch.Tensor:
    """Samples of the checkpoint's EMA network with any sampler of gddim.sample."""
    checkpoint = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
    return sample_images(checkpoint.process(), checkpoint.network("ema", device), n, nfe, method, order, lam,
                         parameterization, seed, batch, device, progress, grid, **options)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), clipped."""
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, min_size: int = 48) -> Path:
    """A PNG grid of images (N, C, H, W) in [-1, 1]; small images are enlarged (nearest, whole multiples) to at
    least min_size pixels, so that a grid of 8x8 digits is readable (438 pixels for a row of 8)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise SettingsError(f"save_grid takes (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows, pad = math.ceil(n / nrow), 1
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
    scale = max(1, math.ceil(min_size / max(h, w)))
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    make_folder(path.parent)
    with atomic_file(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def save_npz(images: torch.Tensor, path: str | Path) -> Path:
    """`images`: uint8 (N, H, W[, C]) readable by gddim.data.load_images; `x`: the raw float32 samples."""
    pixels = to_uint8(images)
    path = Path(path)
    make_folder(path.parent)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to the temp name
        np.savez_compressed(f, images=pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                            x=images.detach().cpu().float().numpy())
    return path


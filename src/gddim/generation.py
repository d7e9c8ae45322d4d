"""Generating images from a trained model or a checkpoint: samples, PNG grids and .npz files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .atomic import atomic_file, make_folder
from .distributed import ProcessGroup
from .errors import SettingsError
from .grids import grid_label
from .networks import EpsModel
from .noise import SampleNoise
from .processes import LinearProcess
from .sampling import check_sampler, sample
from .shards import Generation, generate, read_shards, remove_shards, write_npz


def sample_images(process: LinearProcess, model: EpsModel, n: int, nfe: int, method: str = "gddim",
                  order: int | None = None, lam: float | None = None, parameterization: str = "R", seed: int = 0,
                  batch: int = 500, device=None, progress: bool = False, grid=None, first: int = 0,
                  **options) -> torch.Tensor:
    """Samples first .. first+n-1 of the seed, (n, C, H, W) on the CPU. Sample k draws its starting noise and its
    steps' noise from a generator keyed on (seed, k) (gddim.noise): every sampler starts from the same noise, and
    a sample does not depend on the batch, shard or process that makes it.

    grid: any grid of gddim.sample, e.g. "tuned" or the path of a grid file from gddim tune-grid; options: the
    multistep options of gddim.sample (prediction, corrector, ...)."""
    if n < 1 or batch < 1 or first < 0:
        raise SettingsError(f"need n >= 1, batch >= 1 and first >= 0, got n={n}, batch={batch}, first={first}")
    weight = next(model.parameters())
    device = torch.device(device) if device is not None else weight.device
    model = model.to(device).eval()
    # a half-precision network still gets a float32 state: the recursion's cancellations need it
    dtype = torch.promote_types(weight.dtype, torch.float32)
    out = []
    with torch.no_grad():
        for start in range(first, first + n, batch):
            noise = SampleNoise(seed, range(start, min(start + batch, first + n)), device)
            u_T = noise.prior(process, (model.data_channels, model.image_size, model.image_size), dtype)
            out.append(sample(process, model, u_T, nfe, method, order, lam, parameterization, grid=grid,
                              generator=noise, progress=progress, **options).cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), clipped."""
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> (N, C, H, W) in [-1, 1]; to_uint8 gives the same pixels back."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, min_size: int = 48,
              text: dict[str, str] | None = None) -> Path:
    """A PNG grid of images (N, C, H, W) in [-1, 1]; small images are enlarged (nearest, whole multiples) to at
    least min_size pixels, so that a grid of 8x8 digits is readable (438 pixels for a row of 8). text: PNG text
    entries (e.g. the world size that made the images)."""
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
        info = PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        picture.save(tmp, format="PNG", pnginfo=info)
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


def shard_folder(prefix: Path) -> Path:
    """Where write_samples keeps the shards of PREFIX until PREFIX.npz and PREFIX.png hold them."""
    return prefix.with_name(prefix.name + ".shards")


def write_samples(process: LinearProcess, model: EpsModel, prefix: str | Path, n: int, nfe: int, options: dict,
                  env: ProcessGroup, seed: int = 0, batch: int = 500, grid=None, shard_size: int = 1000,
                  source: str = "", progress: bool = True, model_options: dict | None = None) -> tuple[Path, Path]:
    """PREFIX.npz (as save_npz writes it, with the world size) and PREFIX.png (the first 256) of n samples made in
    shards under PREFIX.shards/ (gddim.shards): a rerun after an interruption makes only the missing shards, and
    the folder goes once the .npz is written. options: the sampler's keyword arguments of sample_images (method,
    order, ...); model_options: how gddim.sample runs the network (compile, autocast); source names the model in
    the shards' settings. Under torchrun the ranks split the shards, rank 0 writes."""
    prefix = Path(prefix)
    png, npz = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".npz")
    folder = shard_folder(prefix)
    shape = (model.data_channels, model.image_size, model.image_size)
    check_sampler(process, nfe, **options, grid=grid)  # on every rank: one failing alone would leave the rest waiting

    def make(samples: range) -> dict[str, torch.Tensor]:
        return {"x": sample_images(process, model, len(samples), nfe, **options, seed=seed, batch=batch, grid=grid,
                                   first=samples.start, **(model_options or {})).float()}

    settings = {"source": source, "sampler": options, "nfe": nfe, "seed": seed, "grid": grid_label(grid),
                "model_options": model_options or {}}
    files = generate(Generation(n, shard_size, make, {"x": (shape, torch.float32)}, settings), folder, env, progress)
    if env.is_main:
        c, h, w = shape
        pixels = lambda: (to_uint8(torch.from_numpy(x)).squeeze(-1) if c == 1 else to_uint8(torch.from_numpy(x))
                          for x in read_shards(files, "x"))
        write_npz(npz, {"images": pixels, "x": lambda: read_shards(files, "x")},
                  {"images": (n, h, w) if c == 1 else (n, h, w, c), "x": (n, *shape)}, {"world_size": env.world})
        first = [torch.from_numpy(x) for x in read_shards(files[:math.ceil(256 / shard_size)], "x")]
        save_grid(torch.cat(first)[:256], png, text={"world_size": str(env.world)})
        remove_shards(folder)
    return png, npz

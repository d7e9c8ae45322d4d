"""Sampling trained models, image grids and .npz files, and quality-vs-NFE sweeps (BENCHMARKS.md §2).

Quality is the Fréchet distance between n samples and n real training images in the feature space of
the data set's small classifier (gddim.metrics), printed beside the real-vs-real floor at the same n.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_file, atomic_write_text
from .data import load_images
from .errors import SettingsError
from .metrics import frechet_distance, inception_fid, load_feature_net, real_split
from .networks import EpsModel
from .noise import SampleNoise
from .processes import LinearProcess
from .sampling import SamplerError, check_sampler, sample
from .training import Checkpoint, load_checkpoint

SAMPLER_KEYS = {"q": "order", "lam": "lam", "param": "parameterization", "pred": "prediction", "corr": "corrector",
                "interp": "interpolation", "lof": "lower_order_final", "final": "final_step"}
SPEC_FORM = "method[:q=N][:lam=X][:param=R|L][:pred=data|eps][:corr=0|1][:interp=t|sqrt_t|logsnr][:lof=0|1][:final=data]"
FLAGS = {"0": False, "1": True}


@dataclass(frozen=True)
class Sampler:
    """One sampler setting, written as a spec string (SPEC_FORM), e.g. "gddim" (the default sampler), "gddim:q=2"
    (the paper's q = 2), "gddim:q=3:pred=data:corr=1" or "em"; options left out take gddim.sample's defaults."""

    method: str = "gddim"
    order: int | None = None
    lam: float | None = None
    parameterization: str = "R"
    prediction: str | None = None
    corrector: bool | None = None
    interpolation: str | None = None
    lower_order_final: bool | None = None
    final_step: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Sampler:
        method, *options = spec.strip().split(":")
        values: dict = {}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or key not in SAMPLER_KEYS:
                raise SettingsError(f"bad sampler option {option!r} in {spec!r}; write {SPEC_FORM}, "
                                    "e.g. gddim:q=2 or gddim:lam=0.5")
            values[SAMPLER_KEYS[key]] = value
        try:
            for name, kind in (("order", int), ("lam", float)):
                if name in values:
                    values[name] = kind(values[name])
        except ValueError:
            raise SettingsError(f"bad number in sampler spec {spec!r}") from None
        for name in ("corrector", "lower_order_final"):
            if name in values and values[name] not in FLAGS:
                raise SettingsError(f"{name} in {spec!r} must be 0 or 1, got {values[name]!r}")
            values[name] = FLAGS.get(values.get(name))
        return cls(method, **values)

    @property
    def label(self) -> str:
        """The spec string, keeping only what was set (parse(label) gives the sampler back)."""
        parts = [self.method]
        for key, name in SAMPLER_KEYS.items():
            value = getattr(self, name)
            if value is None or (name == "parameterization" and value == "R"):
                continue
            if isinstance(value, bool):
                value = int(value)  # flags are written 0 / 1
            elif name == "lam":
                value = format(value, "g")
            parts.append(f"{key}={value}")
        return ":".join(parts)

    def options(self) -> dict:
        """Keyword arguments of gddim.sample; unset options are left out so that sample's defaults apply."""
        chosen = {name: getattr(self, name) for name in SAMPLER_KEYS.values()}
        return {"method": self.method, **{k: v for k, v in chosen.items() if v is not None}}


# ---- sampling ----------------------------------------------------------------------------------------------

def sample_images(process: LinearProcess, model: EpsModel, n: int, nfe: int, method: str = "gddim",
                  order: int | None = None, lam: float | None = None, parameterization: str = "R", seed: int = 0,
                  batch: int = 500, device=None, progress: bool = False, grid="quadratic", first: int = 0,
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
        raise ValueError(f"save_grid takes (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def save_npz(images: torch.Tensor, path: str | Path) -> Path:
    """`images`: uint8 (N, H, W[, C]) readable by gddim.data.load_images; `x`: the raw float32 samples."""
    pixels = to_uint8(images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to the temp name
        np.savez_compressed(f, images=pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                            x=images.detach().cpu().float().numpy())
    return path


# ---- evaluation --------------------------------------------------------------------------------------------

def real_reference(checkpoint: Checkpoint, data: str | None = None) -> torch.Tensor:
    """The training images: `data` if given, else the built-in data set the checkpoint names (never a recorded path)."""
    source, image_size = checkpoint.data_source(data)
    return load_images(source, "train", image_size)


def evaluate(ckpt: str | Path | Checkpoint, samplers: list[Sampler | str], nfes: list[int], n: int | None = None,
             seed: int = 0, batch: int = 500, out_dir: str | Path | None = None, real: torch.Tensor | None = None,
             feature_net=None, inception: str | Path | None = None, device=None, progress: bool = False,
             grid_nfes=None, save_metrics: bool = True, data: str | None = None, grid="quadratic") -> dict:
    """Fréchet distance of every sampler at every NFE, with the real-vs-real floor at the same n.

    Default metric: the data set's classifier features, n samples against n real training images.
    With inception (a local weights file of torch-fidelity's Inception) it is standard FID of n samples
    against all real training images (e.g. 50k for CIFAR-10), and the floor is left out.
    data names the training images when the checkpoint was trained on a path (see Checkpoint.data_source).
    Writes (if out_dir is given) metrics.json after every record and quality_vs_nfe.png at the end (unless
    save_metrics is False), and under grids/ a grid of 64 samples per record (only at the NFEs in grid_nfes
    when given). A rerun of the same evaluation keeps the records metrics.json holds and computes the rest.
    grid: the time grid of every sampler ("quadratic", "tuned", a grid file of gddim tune-grid, ...).
    """
    checkpoint = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
    process, model = checkpoint.process(), checkpoint.network("ema", device)
    samplers = [s if isinstance(s, Sampler) else Sampler.parse(s) for s in samplers]
    real = real_reference(checkpoint, data) if real is None else real
    if inception is not None:
        if not Path(inception).expanduser().is_file():  # fail before minutes of sampling, not after
            raise FileNotFoundError(f"Inception weights {inception} do not exist")
        n = len(real) if n is None else n
        reference, floor = real, None
        score = lambda fake: inception_fid(reference, fake, inception, device=device or "cpu")
    else:
        feature_net = feature_net or load_feature_net(checkpoint.meta.get("data", {}).get("source"), model.image_size)
        n = min(1000, len(real) // 2) if n is None else n
        reference, held_out = real_split(real, n, seed)  # the split of metrics.real_floor(real, feature_net, n, seed)
        floor = frechet_distance(reference, held_out, feature_net)
        score = lambda fake: frechet_distance(reference, fake, feature_net)
    for sampler in samplers:  # a typo or an impossible setting fails now, not after minutes of sampling
        for nfe in nfes:
            check_sampler(process, nfe, **sampler.options(), grid=grid)
    result = {"checkpoint": str(checkpoint.path), "step": checkpoint.step, "process": checkpoint.meta["process"],
              "data": checkpoint.meta.get("data"), "metric": "inception" if inception else "classifier", "n": n,
              "seed": seed, "batch": batch, "grid": str(grid), "floor": floor, "records": []}
    metrics = Path(out_dir) / "metrics.json" if out_dir is not None and save_metrics else None
    finished = _finished_records(metrics, result) if metrics is not None else {}
    for sampler in samplers:
        for nfe in nfes:
            key = (sampler.label, int(nfe))
            record = finished.get(key)
            if record is None:
                record, fake = _evaluate_record(process, model, sampler, int(nfe), n, seed, batch, grid, score, floor)
                if fake is not None and out_dir is not None and (grid_nfes is None or nfe in grid_nfes):
                    save_grid(fake[:64], Path(out_dir) / "grids" / f"{sampler.label.replace(':', '_')}_nfe{nfe}.png")
            result["records"].append(record)
            if progress:
                _print_record(record, kept=key in finished)
            if metrics is not None:  # every finished record is on disk: a rerun goes on from here
                metrics.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(metrics, json.dumps(result, indent=2))
    if metrics is not None:
        save_metrics_and_plot(result, metrics.parent)
    return result


def _evaluate_record(process, model, sampler: Sampler, nfe: int, n: int, seed: int, batch: int, grid, score,
                     floor) -> tuple[dict, torch.Tensor | None]:
    """One (sampler, NFE) record and its samples; every record starts from the same seed, whatever runs before it."""
    began = time.perf_counter()
    record = {"process": process.name, **sampler.options(), "label": sampler.label, "nfe": nfe}
    try:
        fake = sample_images(process, model, n, nfe, **sampler.options(), seed=seed, batch=batch, grid=grid)
    except SamplerError as err:  # one diverging sampler (inf/NaN) does not end the sweep
        fake, record["error"] = None, str(err)
    record.update(fd=None if fake is None else score(fake), floor=floor, seconds=time.perf_counter() - began)
    return record, fake


def _finished_records(metrics: Path, result: dict) -> dict[tuple[str, int], dict]:
    """The records of an earlier run of the same evaluation (same checkpoint, data, metric, n, seed, batch and
    floor) that metrics.json holds, by (label, NFE); none when it holds another evaluation or no file."""
    try:
        stored = json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    header = json.loads(json.dumps({k: v for k, v in result.items() if k != "records"}))
    if not isinstance(stored, dict) or {k: v for k, v in stored.items() if k != "records"} != header:
        return {}
    return {(r["label"], r["nfe"]): r for r in stored.get("records", [])}


def _print_record(record: dict, kept: bool) -> None:
    fd, floor = record["fd"], record["floor"]
    print(f"  {record['process']} {record['label']:<22} NFE {record['nfe']:>4}: "
          + (f"diverged ({record['error']})" if fd is None else f"FD {fd:.4g}")
          + ("" if floor is None else f" (floor {floor:.3g})") + (" (kept from the earlier run)" if kept else ""))


def save_metrics_and_plot(result: dict, out_dir: Path) -> None:
    """metrics.json (written atomically) and quality_vs_nfe.png of an evaluate() result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    plot_quality(result, out_dir / "quality_vs_nfe.png")


def plot_quality(result: dict, path: str | Path, title: str | None = None, max_ratio: float = 30.0) -> Path:
    """Fréchet distance vs NFE, one line per sampler (gDDIM solid, baselines dashed), the real floor dotted.

    The y axis stops at max_ratio x the best score so that diverging samplers do not squash the rest.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    records = [r for r in result["records"] if r["fd"] is not None]  # diverged runs have no distance
    fig = Figure(figsize=(7.2, 4.8), layout="constrained")
    ax = fig.add_subplot()
    labels = list(dict.fromkeys(r["label"] for r in records))
    colors = colormaps["tab20"].colors
    for i, label in enumerate(labels):
        rows = sorted((r["nfe"], r["fd"]) for r in records if r["label"] == label)
        ax.plot(*zip(*rows), marker="o", markersize=3, label=label, color=colors[(2 * i) % 20 + (2 * i) // 20],
                linestyle="-" if label.startswith("gddim") else "--")
    if result["floor"] is not None:
        ax.axhline(result["floor"], color="gray", linestyle=":", label="real vs real")
    scores = [r["fd"] for r in records] or [result["floor"] or 1.0]
    best = min(scores)
    bottom = min(best, result["floor"] or best) / 1.5
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylim=(bottom, max(scores) * 1.5),
           ylabel="FID (Inception)" if result.get("metric") == "inception" else "Fréchet distance (classifier features)",
           title=title or f"{result['process']['process'].upper()} on {(result.get('data') or {}).get('source', 'data')}"
                          f", step {result['step']}, n={result['n']}")
    ax.set_ylim(top=min(ax.get_ylim()[1], best * max_ratio))
    ax.set_xticks(sorted({r["nfe"] for r in result["records"]}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, ncols=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ---- the quickstart ----------------------------------------------------------------------------------------

QUICKSTART_SAMPLERS = ("gddim", "gddim:q=2", "em")  # the default, the paper's q = 2, Euler-Maruyama
QUICKSTART_NFES = (10, 20, 50)


def quickstart(out_dir: str | Path, steps: int = 2000, n: int = 500, seed: int = 0, progress: bool = True) -> dict:
    """Train a tiny CLD model on digits, sample it with gDDIM (the default and the paper's q=2) and Euler-Maruyama
    at NFE 10, 20 and 50, and
    write the run, the grids, metrics.json and quality_vs_nfe.png into out_dir (README's main job)."""
    from .networks import preset
    from .processes import CLD
    from .training import TrainConfig, train

    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not (out / "run").is_dir():
        raise FileExistsError(f"{out} exists and is not a quickstart folder; choose a new one")
    images = load_images("digits")
    config = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup=min(100, steps), ema_decay=0.999, seed=seed,
                         ckpt_every=max(1, min(500, steps)), sample_every=0, sample_nfe=20)
    result = train(CLD(), images, out / "run", preset("tiny"), config, {"source": "digits", "image_size": 8},
                   progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt
    return evaluate(out / "run", list(QUICKSTART_SAMPLERS), list(QUICKSTART_NFES), n=n, seed=seed, out_dir=out,
                    progress=progress)

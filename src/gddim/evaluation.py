"""Sampling trained models, image grids and .npz files, and quality-vs-NFE sweeps (BENCHMARKS.md §2).

Quality is the Fréchet distance between n samples and n real training images in the feature space of
the data set's small classifier (gddim.metrics), printed beside the real-vs-real floor at the same n.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_file, atomic_write_text
from .data import load_images
from .errors import SettingsError
from .metrics import (FeatureStats, classifier_features, inception_features, load_feature_net, real_split,
                      stats_distance)
from .networks import EpsModel
from .noise import SampleNoise
from .processes import LinearProcess
from .sampling import SamplerError, check_sampler, sample
from .shards import Generation, generate, process_group, read_shards, write_npz
from .training import Checkpoint, _Dist, _from_rank0, load_checkpoint

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


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> (N, C, H, W) in [-1, 1]; to_uint8 gives the same pixels back."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


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


def write_samples(process: LinearProcess, model: EpsModel, prefix: str | Path, n: int, nfe: int, options: dict,
                  env: _Dist, seed: int = 0, batch: int = 500, grid="quadratic", shard_size: int = 1000,
                  source: str = "", progress: bool = True) -> tuple[Path, Path]:
    """PREFIX.npz (as save_npz writes it, with the world size) and PREFIX.png (the first 256) of n samples made in
    shards under PREFIX.shards/ (gddim.shards): a rerun after an interruption makes only the missing shards, and
    the folder goes once the .npz is written. options: keyword arguments of sample_images (method, order, ...);
    source names the model in the shards' settings. Under torchrun the ranks split the shards, rank 0 writes."""
    prefix = Path(prefix)
    png, npz = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".npz")
    folder = prefix.with_name(prefix.name + ".shards")
    shape = (model.data_channels, model.image_size, model.image_size)
    check_sampler(process, nfe, **options, grid=grid)  # on every rank: one failing alone would leave the rest waiting

    def make(samples: range) -> dict[str, torch.Tensor]:
        return {"x": sample_images(process, model, len(samples), nfe, **options, seed=seed, batch=batch, grid=grid,
                                   first=samples.start).float()}

    settings = {"source": source, "sampler": options, "nfe": nfe, "seed": seed, "grid": str(grid)}
    files = generate(Generation(n, shard_size, make, {"x": (shape, torch.float32)}, settings), folder, env, progress)
    if env.rank == 0:
        c, h, w = shape
        pixels = lambda: (to_uint8(torch.from_numpy(x)).squeeze(-1) if c == 1 else to_uint8(torch.from_numpy(x))
                          for x in read_shards(files, "x"))
        write_npz(npz, {"images": pixels, "x": lambda: read_shards(files, "x")},
                  {"images": (n, h, w) if c == 1 else (n, h, w, c), "x": (n, *shape)}, {"world_size": env.world})
        first = [torch.from_numpy(x) for x, _ in zip(read_shards(files, "x"), range(-(-256 // shard_size)))]
        save_grid(torch.cat(first)[:256], png)
        shutil.rmtree(folder)
    return png, npz


# ---- evaluation --------------------------------------------------------------------------------------------

def real_reference(checkpoint: Checkpoint, data: str | None = None) -> torch.Tensor:
    """The training images: `data` if given, else the built-in data set the checkpoint names (never a recorded path)."""
    source, image_size = checkpoint.data_source(data)
    return load_images(source, "train", image_size)


def evaluate(ckpt: str | Path | Checkpoint, samplers: list[Sampler | str], nfes: list[int], n: int | None = None,
             seed: int = 0, batch: int = 500, out_dir: str | Path | None = None, real: torch.Tensor | None = None,
             feature_net=None, inception: str | Path | None = None, device=None, progress: bool = False,
             grid_nfes=None, save_metrics: bool = True, data: str | None = None, grid="quadratic",
             shard_size: int = 1000) -> dict:
    """Fréchet distance of every sampler at every NFE, with the real-vs-real floor at the same n.

    Default metric: the data set's classifier features, n samples against n real training images.
    With inception (a local weights file of torch-fidelity's Inception) it is standard FID of n samples
    against all real training images (e.g. 50k for CIFAR-10), and the floor is left out.
    data names the training images when the checkpoint was trained on a path (see Checkpoint.data_source).
    Writes (if out_dir is given) metrics.json after every record and quality_vs_nfe.png at the end (unless
    save_metrics is False), under grids/ a grid of 64 samples per record (only at the NFEs in grid_nfes
    when given), and under shards/ each record's samples (uint8) and features, shard by shard as they are made
    (gddim.shards). A rerun of the same evaluation keeps the records metrics.json holds and the shards made.
    grid: the time grid of every sampler ("quadratic", "tuned", a grid file of gddim tune-grid, ...).
    Under torchrun the ranks split every record's samples and rank 0 writes; every rank returns the result.
    """
    with process_group(device) as env:
        checkpoint = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
        process, model = checkpoint.process(), checkpoint.network("ema", env.device)
        samplers = [s if isinstance(s, Sampler) else Sampler.parse(s) for s in samplers]
        for sampler in samplers:  # a typo or an impossible setting fails now, not after minutes of sampling
            for nfe in nfes:
                check_sampler(process, nfe, **sampler.options(), grid=grid)
        real = real_reference(checkpoint, data) if real is None else real
        metric = _metric(checkpoint, model, real, n, seed, feature_net, inception, env)
        result = {"checkpoint": str(checkpoint.path), "step": checkpoint.step, "process": checkpoint.meta["process"],
                  "data": checkpoint.meta.get("data"), "metric": metric.name, "n": metric.n, "seed": seed,
                  "batch": batch, "grid": str(grid), "floor": metric.floor, "world_size": env.world, "records": []}
        sweep = _Sweep(process, model, metric, result, seed, batch, grid, shard_size, env, progress,
                       Path(out_dir) if out_dir is not None else None, save_metrics, grid_nfes)
        return _from_rank0(sweep.run(samplers, nfes), env.world)


@dataclass
class _Metric:
    """The feature map (every rank) and, on rank 0, the real images' statistics and the real-vs-real floor."""

    name: str
    n: int
    features: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    reference: FeatureStats | None
    floor: float | None


def _metric(checkpoint: Checkpoint, model: EpsModel, real: torch.Tensor, n: int | None, seed: int, feature_net,
            inception, env: _Dist) -> _Metric:
    if inception is not None:
        features = inception_features(inception, env.device)  # a missing file fails before minutes of sampling
        reference = FeatureStats.of(real, features, 50) if env.rank == 0 else None
        return _Metric("inception", len(real) if n is None else n, features, 2048, reference, None)
    feature_net = feature_net or load_feature_net(checkpoint.meta.get("data", {}).get("source"), model.image_size)
    n = min(1000, len(real) // 2) if n is None else n
    reference, held_out = real_split(real, n, seed)  # the split of metrics.real_floor(real, feature_net, n, seed)
    features = classifier_features(feature_net)
    if env.rank != 0:
        return _Metric("classifier", n, features, feature_net.num_features, None, None)
    # not torchmetrics' frechet_distance: under torchrun its compute() would wait for the other ranks
    stats = FeatureStats.of(reference, features)
    return _Metric("classifier", n, features, feature_net.num_features, stats,
                   stats_distance(stats, FeatureStats.of(held_out, features)))


@dataclass
class _Sweep:
    """The records of one evaluation, each generated in shards over the ranks and scored on rank 0."""

    process: LinearProcess
    model: EpsModel
    metric: _Metric
    result: dict
    seed: int
    batch: int
    grid: object
    shard_size: int
    env: _Dist
    progress: bool
    out_dir: Path | None
    save_metrics: bool
    grid_nfes: list[int] | None

    def run(self, samplers: list[Sampler], nfes: list[int]) -> dict | None:
        metrics = self.out_dir / "metrics.json" if self.out_dir is not None and self.save_metrics else None
        finished = _from_rank0(_finished_records(metrics, self.result) if metrics and self.env.rank == 0 else {},
                               self.env.world)
        for sampler in samplers:
            for nfe in nfes:
                key = (sampler.label, int(nfe))
                record = finished.get(key) or self.record(sampler, int(nfe))
                if self.env.rank != 0:
                    continue
                self.result["records"].append(record)
                if self.progress:
                    _print_record(record, kept=key in finished)
                if metrics is not None:  # every finished record is on disk: a rerun goes on from here
                    metrics.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(metrics, json.dumps(self.result, indent=2))
        if metrics is not None and self.env.rank == 0:
            save_metrics_and_plot(self.result, metrics.parent)
        return self.result if self.env.rank == 0 else None

    def record(self, sampler: Sampler, nfe: int) -> dict:
        """One (sampler, NFE) record; every record starts from the same noise, whatever runs before it."""
        began = time.perf_counter()
        record = {"process": self.process.name, **sampler.options(), "label": sampler.label, "nfe": nfe}
        name = f"{sampler.label.replace(':', '_')}_nfe{nfe}"
        with tempfile.TemporaryDirectory() as scratch:
            folder = self.out_dir / "shards" / name if self.out_dir is not None else Path(scratch)
            try:
                files = generate(self.generation(sampler, nfe), folder, self.env, self.progress)
            except SamplerError as err:  # one diverging sampler (inf/NaN) does not end the sweep
                return {**record, "error": str(err), "fd": None, "floor": self.metric.floor,
                        "seconds": time.perf_counter() - began}
            if self.env.rank != 0:
                return record
            stats = FeatureStats()
            for features in read_shards(files, "features"):
                stats.add(torch.from_numpy(features))
            if self.out_dir is not None and (self.grid_nfes is None or nfe in self.grid_nfes):
                first = next(read_shards(files[:1], "images"))[:64]
                save_grid(from_uint8(first), self.out_dir / "grids" / f"{name}.png")
        return {**record, "fd": stats_distance(self.metric.reference, stats), "floor": self.metric.floor,
                "seconds": time.perf_counter() - began}

    def generation(self, sampler: Sampler, nfe: int) -> Generation:
        shape = (self.model.data_channels, self.model.image_size, self.model.image_size)

        def make(samples: range) -> dict[str, torch.Tensor]:
            x = sample_images(self.process, self.model, len(samples), nfe, **sampler.options(), seed=self.seed,
                              batch=self.batch, grid=self.grid, first=samples.start)
            with torch.no_grad():
                return {"images": torch.from_numpy(to_uint8(x)), "features": self.metric.features(x)}

        settings = {key: self.result[key] for key in ("checkpoint", "step", "metric", "seed", "grid")}
        fields = {"images": ((shape[1], shape[2], shape[0]), torch.uint8),
                  "features": ((self.metric.dim,), torch.float64)}
        return Generation(self.metric.n, self.shard_size, make, fields, {**settings, "sampler": sampler.label,
                                                                          "nfe": nfe})


def _finished_records(metrics: Path, result: dict) -> dict[tuple[str, int], dict]:
    """The records of an earlier run of the same evaluation (same checkpoint, data, metric, n, seed, batch and
    floor; any world size) that metrics.json holds, by (label, NFE); none when it holds another evaluation or
    no file."""
    try:
        stored = json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    header = lambda record: {k: v for k, v in record.items() if k not in ("records", "world_size")}
    if not isinstance(stored, dict) or header(stored) != header(json.loads(json.dumps(result))):
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

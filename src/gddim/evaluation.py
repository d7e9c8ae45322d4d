"""Quality-vs-NFE sweeps of a checkpoint (BENCHMARKS.md §2): records, metrics.json and plots.

Quality is the Fréchet distance between n samples and n real training images in the feature space of
the data set's small classifier (gddim.metrics), printed beside the real-vs-real floor at the same n.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .atomic import make_folder, write_json
from .checkpoints import Checkpoint, load_checkpoint
from .data import load_images
from .distributed import ProcessGroup, from_rank0, process_group, run_on_rank0
from .generation import from_uint8, sample_images, save_grid, to_uint8
from .grids import grid_label
from .metrics import (FeatureStats, check_split_size, classifier_features, inception_features, load_feature_net,
                      real_split, stats_distance)
from .networks import EpsModel
from .processes import LinearProcess
from .sampling import SamplerError, check_sampler
from .shards import Generation, generate, read_shards
from .spec import SamplerSpec

# ---- evaluation --------------------------------------------------------------------------------------------

def real_reference(checkpoint: Checkpoint, data: str | None = None) -> torch.Tensor:
    """The training images: `data` if given, else the built-in data set the checkpoint names (never a recorded path)."""
    source, image_size = checkpoint.data_source(data)
    return load_images(source, "train", image_size)


def evaluate(ckpt: str | Path | Checkpoint, samplers: list[SamplerSpec | str], nfes: list[int], n: int | None = None,
             seed: int = 0, batch: int = 500, out_dir: str | Path | None = None, real: torch.Tensor | None = None,
             feature_net=None, inception: str | Path | None = None, device=None, progress: bool = False,
             grid_nfes=None, save_metrics: bool = True, data: str | None = None, grid=None,
             shard_size: int = 1000, model_options: dict | None = None) -> dict:
    """Fréchet distance of every sampler at every NFE, with the real-vs-real floor at the same n.

    Default metric: the data set's classifier features, n samples against n real training images.
    With inception (a local weights file of torch-fidelity's Inception) it is standard FID of n samples
    against all real training images (e.g. 50k for CIFAR-10), and the floor is left out.
    data names the training images when the checkpoint was trained on a path (see Checkpoint.data_source).
    Writes (if out_dir is given) metrics.json after every record and quality_vs_nfe.png at the end (unless
    save_metrics is False), under grids/ a grid of 64 samples per record (only at the NFEs in grid_nfes
    when given), and under shards/ each record's samples (uint8) and features, shard by shard as they are made
    (gddim.shards). A rerun of the same evaluation keeps the records metrics.json holds and the shards made.
    grid: the time grid of every sampler (None: each sampler's own, gddim.sampling.sampler_grid; "quadratic",
    "tuned", a grid file of gddim tune-grid, ...).
    model_options: how gddim.sample runs the network (compile, autocast), kept in metrics.json.
    Under torchrun the ranks split every record's samples and rank 0 writes; every rank returns the result.
    """
    with process_group(device) as env:
        checkpoint = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
        process, model = checkpoint.process(), checkpoint.network("ema", env.device)
        samplers = [s if isinstance(s, SamplerSpec) else SamplerSpec.parse(s) for s in samplers]
        for sampler in samplers:  # a typo or an impossible setting fails now, not after minutes of sampling
            for nfe in nfes:
                check_sampler(process, nfe, **sampler.options(), grid=grid)
        real, count = (real, len(real)) if real is not None else _real_on_rank0(env, checkpoint, data)
        metric = _metric(checkpoint, model, real, count, n, seed, feature_net, inception, env)
        result = {"checkpoint": str(checkpoint.path), "step": checkpoint.step, "process": checkpoint.meta["process"],
                  "data": checkpoint.meta.get("data"), "metric": metric.name, "n": metric.n, "seed": seed,
                  "batch": batch, "grid": grid_label(grid), "floor": metric.floor, "world_size": env.world,
                  **({"model_options": model_options} if model_options else {}), "records": []}
        sweep = _Sweep(process, model, metric, result, seed, batch, grid, shard_size, env, progress,
                       Path(out_dir) if out_dir is not None else None, save_metrics, grid_nfes, model_options or {})
        return from_rank0(sweep.run(samplers, nfes), env.world)


@dataclass
class _Metric:
    """The feature map (every rank) and, on rank 0, the real images' statistics and the real-vs-real floor."""

    name: str
    n: int
    features: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    reference: FeatureStats | None
    floor: float | None


def _real_on_rank0(env: ProcessGroup, checkpoint: Checkpoint, data: str | None) -> tuple[torch.Tensor | None, int]:
    """The training images on rank 0, the only rank that scores (None elsewhere), and their count on every rank;
    a data set that cannot be read fails on every rank."""
    loaded = {}

    def load() -> int:
        loaded["real"] = real_reference(checkpoint, data)
        return len(loaded["real"])

    count = run_on_rank0(env, load)
    return loaded.get("real"), count


def _metric(checkpoint: Checkpoint, model: EpsModel, real: torch.Tensor | None, count: int, n: int | None, seed: int,
            feature_net, inception, env: ProcessGroup) -> _Metric:
    """real: the training images (rank 0; None elsewhere), count of them."""
    if inception is not None:
        features = inception_features(inception, env.device)  # a missing file fails before minutes of sampling
        reference = FeatureStats.of(real, features, 50) if env.is_main else None
        return _Metric("inception", count if n is None else n, features, 2048, reference, None)
    feature_net = feature_net or load_feature_net(checkpoint.meta.get("data", {}).get("source"), model.image_size)
    n = min(1000, count // 2) if n is None else n
    check_split_size(count, n)  # on every rank: one failing alone would leave the others waiting
    features = classifier_features(feature_net)
    if not env.is_main:
        return _Metric("classifier", n, features, feature_net.num_features, None, None)
    reference, held_out = real_split(real, n, seed)  # the split of metrics.real_floor(real, feature_net, n, seed)
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
    env: ProcessGroup
    progress: bool
    out_dir: Path | None
    save_metrics: bool
    grid_nfes: list[int] | None
    model_options: dict

    def run(self, samplers: list[SamplerSpec], nfes: list[int]) -> dict | None:
        metrics = self.out_dir / "metrics.json" if self.out_dir is not None and self.save_metrics else None
        finished = from_rank0(_finished_records(metrics, self.result) if metrics and self.env.is_main else {},
                               self.env.world)
        for sampler in samplers:
            for nfe in nfes:
                key = (sampler.label, int(nfe))
                record = finished.get(key) or self.record(sampler, int(nfe))
                if not self.env.is_main:
                    continue
                self.result["records"].append(record)
                if self.progress:
                    _print_record(record, kept=key in finished)
                if metrics is not None:  # every finished record is on disk: a rerun goes on from here
                    write_json(metrics, self.result, indent=2)
        if metrics is not None and self.env.is_main:
            save_metrics_and_plot(self.result, metrics.parent)
        return self.result if self.env.is_main else None

    def record(self, sampler: SamplerSpec, nfe: int) -> dict:
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
            if not self.env.is_main:
                return record
            stats = FeatureStats()
            for features in read_shards(files, "features"):
                stats.add(torch.from_numpy(features))
            if self.out_dir is not None and (self.grid_nfes is None or nfe in self.grid_nfes):
                first = next(read_shards(files[:1], "images"))[:64]
                save_grid(from_uint8(first), self.out_dir / "grids" / f"{name}.png",
                          text={"world_size": str(self.env.world)})
        return {**record, "fd": stats_distance(self.metric.reference, stats), "floor": self.metric.floor,
                "seconds": time.perf_counter() - began}

    def generation(self, sampler: SamplerSpec, nfe: int) -> Generation:
        shape = (self.model.data_channels, self.model.image_size, self.model.image_size)

        def make(samples: range) -> dict[str, torch.Tensor]:
            x = sample_images(self.process, self.model, len(samples), nfe, **sampler.options(), seed=self.seed,
                              batch=self.batch, grid=self.grid, first=samples.start, **self.model_options)
            with torch.no_grad():
                return {"images": torch.from_numpy(to_uint8(x)), "features": self.metric.features(x)}

        settings = {key: self.result[key] for key in ("checkpoint", "step", "metric", "seed", "grid")}
        settings["model_options"] = self.model_options
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
    write_json(out_dir / "metrics.json", result, indent=2)
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
    make_folder(path.parent)
    fig.savefig(path, dpi=120, metadata={"world_size": str(result.get("world_size", 1))})
    return path


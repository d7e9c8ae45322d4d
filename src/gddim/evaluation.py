"""Quality-vs-NFE sweeps of a checkpoint (BENCHMARKS.md §2): records, metrics.json and plots.

Quality is the Fréchet distance between n samples and n real training images in the feature space of
the data set's small classifier (gddim.metrics), printed beside the real-vs-real floor at the same n.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .atomic import make_folder, write_json
from .checkpoints import Checkpoint, load_checkpoint
from .data import load_images
from .errors import MissingFileError, SettingsError
from .generation import sample_images, save_grid
from .metrics import frechet_distance, inception_fid, load_feature_net, real_split
from .sampling import SamplerError, check_sampler
from .spec import SamplerSpec

# ---- evaluation --------------------------------------------------------------------------------------------

def real_reference(checkpoint: Checkpoint, data: str | None = None) -> torch.Tensor:
    """The training images: `data` if given, else the built-in data set the checkpoint names (never a recorded path)."""
    source, image_size = checkpoint.data_source(data)
    return load_images(source, "train", image_size)


def evaluate(ckpt: str | Path | Checkpoint, samplers: list[SamplerSpec | str], nfes: list[int], n: int | None = None,
             seed: int = 0, batch: int = 500, out_dir: str | Path | None = None, real: torch.Tensor | None = None,
             feature_net=None, inception: str | Path | None = None, device=None, progress: bool = False,
             grid_nfes=None, save_metrics: bool = True, data: str | None = None, grid="quadratic",
             model_options: dict | None = None) -> dict:
    """Fréchet distance of every sampler at every NFE, with the real-vs-real floor at the same n.

    Default metric: the data set's classifier features, n samples against n real training images.
    With inception (a local weights file of torch-fidelity's Inception) it is standard FID of n samples
    against all real training images (e.g. 50k for CIFAR-10), and the floor is left out.
    data names the training images when the checkpoint was trained on a path (see Checkpoint.data_source).
    Writes (if out_dir is given) metrics.json after every record and quality_vs_nfe.png at the end (unless
    save_metrics is False), and under grids/ a grid of 64 samples per record (only at the NFEs in grid_nfes
    when given). A rerun of the same evaluation keeps the records metrics.json holds and computes the rest.
    grid: the time grid of every sampler ("quadratic", "tuned", a grid file of gddim tune-grid, ...).
    model_options: how gddim.sample runs the network (compile, autocast), kept in metrics.json.
    """
    checkpoint = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
    process, model = checkpoint.process(), checkpoint.network("ema", device)
    samplers = [s if isinstance(s, SamplerSpec) else SamplerSpec.parse(s) for s in samplers]
    real = real_reference(checkpoint, data) if real is None else real
    if inception is not None:
        if not Path(inception).expanduser().is_file():  # fail before minutes of sampling, not after
            raise MissingFileError(f"Inception weights {inception} do not exist")
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
              "seed": seed, "batch": batch, "grid": str(grid), "floor": floor,
              **({"model_options": model_options} if model_options else {}), "records": []}
    metrics = Path(out_dir) / "metrics.json" if out_dir is not None and save_metrics else None
    finished = _finished_records(metrics, result) if metrics is not None else {}
    for sampler in samplers:
        for nfe in nfes:
            key = (sampler.label, int(nfe))
            record = finished.get(key)
            if record is None:
                record, fake = _evaluate_record(process, model, sampler, int(nfe), n, seed, batch, grid, score, floor,
                                                model_options or {})
                if fake is not None and out_dir is not None and (grid_nfes is None or nfe in grid_nfes):
                    save_grid(fake[:64], Path(out_dir) / "grids" / f"{sampler.label.replace(':', '_')}_nfe{nfe}.png")
            result["records"].append(record)
            if progress:
                _print_record(record, kept=key in finished)
            if metrics is not None:  # every finished record is on disk: a rerun goes on from here
                write_json(metrics, result, indent=2)
    if metrics is not None:
        save_metrics_and_plot(result, metrics.parent)
    return result


def _evaluate_record(process, model, sampler: SamplerSpec, nfe: int, n: int, seed: int, batch: int, grid, score,
                     floor, model_options: dict) -> tuple[dict, torch.Tensor | None]:
    """One (sampler, NFE) record and its samples; every record starts from the same seed, whatever runs before it."""
    began = time.perf_counter()
    record = {"process": process.name, **sampler.options(), "label": sampler.label, "nfe": nfe}
    try:
        fake = sample_images(process, model, n, nfe, **sampler.options(), seed=seed, batch=batch, grid=grid,
                             **model_options)
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
    fig.savefig(path, dpi=120)
    return path


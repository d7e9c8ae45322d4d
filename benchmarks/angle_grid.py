"""The "angle" and "blend" grids, the angle grid's centre, and which grid each process's default sampler should use
(issue 9).

    OMP_NUM_THREADS=1 python benchmarks/angle_grid.py --out benchmarks/angle_grid
    OMP_NUM_THREADS=1 python benchmarks/angle_grid.py --out benchmarks/angle_grid --runs VP_RUN CLD_RUN BDM_RUN

The angle grid is uniform in φ = arctan(e^{-(λ - c)/2}) (gddim.grids.angle_grid): densest at log-SNR λ = c; the
blend grid puts each node's log-SNR halfway between the quadratic grid's and the angle grid's (c = -0.5).
Exact part (exact.json, errors.png): for VP, CLD and BDM on the exact ε of digits (1500 training images, 8x8) and
of fashion-mnist 16x16 (the first 2000), from 256 prior samples of each of seeds 2 and 3 (not the seed 0 of the
peers benchmark, which reports the chosen grid): the path error (RMS gap to the float64 ODE at rtol 1e-8, pooled
over the 512 samples) of the default sampler on the quadratic grid, the blend grid and angle grids of several
centres, each divided by the paper's q = 2 on the quadratic grid at the same NFE; also each run's median
per-sample error.
Trained part (--runs, trained_<data set>.json): Fréchet distance (the data set's classifier features, 500 samples
against 500 training images, seeds 0 and 1) of the same grids on trained models of one built-in data set
(`gddim train --process P --steps 2000 --out RUN`, with `--data fashion-mnist --image-size 16` for fashion-mnist).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import gddim  # noqa: E402
from gddim.atomic import write_json  # noqa: E402
from gddim.bench.records import machine_info  # noqa: E402
from gddim.checkpoints import load_checkpoint  # noqa: E402
from gddim.data import load_images  # noqa: E402
from gddim.evaluation import evaluate, real_reference  # noqa: E402
from gddim.grids import angle_grid, steps_for_nfe  # noqa: E402
from gddim.processes import make_process  # noqa: E402
from gddim.spec import SamplerSpec  # noqa: E402

DATASETS = {"digits": (None, 1500), "fashion-mnist": (16, 2000)}
PROCESSES = ("vp", "cld", "bdm")
CENTRES = (0.0, -0.5, -1.0, -1.5, -2.0)
NFES = (5, 10, 15, 20, 50)
SEEDS = (2, 3)
PAPER, DEFAULT = "gddim:q=2", "gddim"
TRAINED_CENTRES, TRAINED_NFES, TRAINED_SEEDS = (0.0, -0.5, -1.0, -2.0), (5, 10, 20), (0, 1)


def grids(process, nfe: int, centres) -> dict[str, object]:
    """The runs: label -> (sampler spec, grid)."""
    steps = steps_for_nfe(process, nfe)
    runs = {"paper q=2 on quadratic": (PAPER, "quadratic"), "default on quadratic": (DEFAULT, "quadratic"),
            "default on blend": (DEFAULT, "blend")}
    return runs | {f"default on angle c={c:g}": (DEFAULT, angle_grid(process, process.t_start, process.t_end, steps, c))
                   for c in centres}


def exact_part(batch: int, datasets, n_data: int | None) -> list[dict]:
    """Per (data set, process, NFE, run): pooled RMS and median per-sample path error over the seeds, and ratios."""
    rows = []
    for dataset in datasets:
        size, n = DATASETS[dataset]
        data = load_images(dataset, "train", size)[: n_data or n].double()
        for name in PROCESSES:
            process = make_process(name, tuple(data.shape[-2:]))
            eps = gddim.exact_eps(process, data)
            squared: dict[tuple[int, str], list[torch.Tensor]] = {}
            for seed in SEEDS:
                u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64)
                truth = gddim.reference_ode(process, eps, u_T, rtol=1e-8, atol=1e-8)
                for nfe in NFES:
                    for label, (spec, grid) in grids(process, nfe, CENTRES).items():
                        x = gddim.sample(process, eps, u_T, nfe, grid=grid, **SamplerSpec.parse(spec).options())
                        squared.setdefault((nfe, label), []).append(((x - truth) ** 2).flatten(1).mean(1))
            rows += _pooled(dataset, name, squared)
            print(f"{dataset} {name} done", file=sys.stderr)
    return rows


def _pooled(dataset: str, name: str, squared: dict) -> list[dict]:
    rows = []
    for (nfe, label), parts in squared.items():
        per_sample = torch.cat(parts)
        rows.append({"dataset": dataset, "process": name, "nfe": nfe, "run": label, "samples": len(per_sample),
                     "path_error": float(per_sample.mean().sqrt()),
                     "median_sample_path_error": float(per_sample.sqrt().median())})
    for row in rows:
        base = next(r for r in rows if r["nfe"] == row["nfe"] and r["run"] == "paper q=2 on quadratic")
        row["ratio_to_paper_q2"] = row["path_error"] / base["path_error"]
        row["median_ratio_to_paper_q2"] = row["median_sample_path_error"] / base["median_sample_path_error"]
    return rows


def trained_part(runs: list[str], n: int) -> tuple[str, list[dict]]:
    """The runs' data set and the Fréchet distance of each grid on each trained model, mean over TRAINED_SEEDS."""
    checkpoints = [load_checkpoint(path) for path in runs]
    sources = {checkpoint.data_source() for checkpoint in checkpoints}
    if len(sources) != 1:
        raise SystemExit(f"--runs must be trained on one data set, got {sorted(sources)}")
    images = real_reference(checkpoints[0])
    rows = []
    for path, checkpoint in zip(runs, checkpoints):
        process = checkpoint.process()
        name = process.name
        for nfe in TRAINED_NFES:
            for label, (spec, grid) in grids(process, nfe, TRAINED_CENTRES).items():
                fds = [evaluate(checkpoint, [spec], [nfe], n=n, seed=seed, batch=n, real=images,
                                save_metrics=False, grid=grid)["records"][0]["fd"] for seed in TRAINED_SEEDS]
                rows.append({"process": name, "run_folder": path, "step": checkpoint.step, "nfe": nfe, "run": label,
                             "fd_mean": statistics.mean(fds), "fd_per_seed": fds})
                print(f"{name} NFE {nfe} {label}: {statistics.mean(fds):.3f}", file=sys.stderr)
    return sources.pop()[0], rows


def plot(rows: list[dict], path: Path) -> None:
    """Path error / paper's q = 2 against NFE, one panel per (process, data set), a line per grid."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), len(PROCESSES), figsize=(14, 3.5 * len(datasets)), squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, name in enumerate(PROCESSES):
            ax = axes[i, j]
            mine = [r for r in rows if r["dataset"] == dataset and r["process"] == name]
            for label in dict.fromkeys(r["run"] for r in mine):
                line = sorted((r["nfe"], r["ratio_to_paper_q2"]) for r in mine if r["run"] == label)
                style = {"paper q=2 on quadratic": "k:", "default on quadratic": "k--"}.get(label, "-")
                ax.plot(*zip(*line), style, marker="o", ms=3, label=label)
            ax.axhline(0.5, color="r", lw=0.6)
            ax.set(xscale="log", yscale="log", title=f"{name.upper()} {dataset}", xlabel="NFE",
                   ylabel="path error / paper q=2")
            ax.set_xticks(NFES, [str(n) for n in NFES], minor=False)
            ax.set_xticks([], minor=True)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch", type=int, default=256, help="prior samples per seed")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--n-data", type=int, help="fewer data points for a trial")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="trained runs of one data set: measure them instead")
    p.add_argument("--n", type=int, default=500, help="samples (and real images) per Fréchet distance")
    args = p.parse_args(argv)
    command = " ".join(["OMP_NUM_THREADS=1 python benchmarks/angle_grid.py", *(sys.argv[1:] if argv is None else argv)])
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.runs:
        dataset, rows = trained_part(args.runs, args.n)
        name = f"trained_{dataset}.json"
    else:
        rows, name = exact_part(args.batch, args.datasets, args.n_data), "exact.json"
        plot(rows, args.out / "errors.png")
    write_json(args.out / name, {"command": command, "protocol": __doc__, "rows": rows,
                                 "seconds": round(time.perf_counter() - began, 1), "machine": machine_info()})
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every multistep variant of FAST.md on the exact-score benchmark (BENCHMARKS §1), to choose the defaults.

    OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --out benchmarks/fast_variants_digits
    OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --shortlist --batch 256 --out benchmarks/fast_variants_digits/shortlist
    OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --goal --batch 256 --nfes 10 20 --out benchmarks/fast_variants_digits/goal
    OMP_NUM_THREADS=1 python benchmarks/fast_variants.py --goal --batch 256 --nfes 10 20 --dataset fashion-mnist \
        --image-size 16 --n-data 2000 --out benchmarks/fast_variants_fashion-mnist

For VP, CLD and BDM on digits (exact ε of the whole set, batch 64, float64): path error (to the probability-flow
ODE solution) and data error (to the nearest data point) at NFE 5, 10, 15, 20, 50 for today's gDDIM q = 2 on the
quadratic grid (the baseline) and for the variants: ε or data form, corrector, q = 1..3, interpolation
t / sqrt_t / logsnr, grid quadratic / logsnr / uniform, lower_order_final, final data step. Writes results.json
(records with the sampler's spec (gddim.spec) and its grid, ratios to the baseline, the best setting per process)
and one PNG per process.

--goal measures issue 9's CLD/BDM goal (the default at most 0.5x the baseline's path error at NFE 10 and 20) on
GOAL: the default beside what FAST.md offers per process (interpolation, order, lower order at the end, final data
step, tuned and log-SNR grids, stochastic multistep). Every record also counts the samples that end nearest to
another data point than the reference does ("flipped"), and the path error of the others.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import torch

import gddim
from gddim.atomic import write_json
from gddim.bench.records import benchmark_images, data_error, machine_info, reference_solution, rms_error
from gddim.data import load_images
from gddim.errors import SettingsError
from gddim.processes import make_process
from gddim.spec import SamplerSpec

NFES = (5, 10, 15, 20, 50)
BASELINE = dict(order=2, grid="quadratic")


def variants() -> list[dict]:
    """The baseline, a factorial on form x corrector x order x interpolation (quadratic grid), the grids and the
    ends on the data form with corrector."""
    out = [dict(BASELINE)]
    for prediction, corrector, order, interpolation in itertools.product(("eps", "data"), (False, True), (1, 2, 3),
                                                                       ("t", "sqrt_t", "logsnr")):
        out.append(dict(order=order, grid="quadratic", prediction=prediction, corrector=corrector,
                        interpolation=interpolation))
    for order, grid, interpolation, lof, final in itertools.product((1, 2, 3), ("logsnr", "uniform", "quadratic"),
                                                                   ("t", "logsnr"), (False, True),
                                                                   ("integrate", "data")):
        if grid != "quadratic" or lof or final == "data":
            out.append(dict(order=order, grid=grid, prediction="data", corrector=True, interpolation=interpolation,
                            lower_order_final=lof, final_step=final))
    for order, grid in itertools.product((2, 3), ("logsnr", "uniform")):  # the ε form on the other grids too
        out.append(dict(order=order, grid=grid, prediction="eps", corrector=False, interpolation="t"))
    return out


SHORTLIST = [dict(BASELINE)] + [
    dict(order=q, grid=grid, prediction="data", corrector=c, interpolation=i, lower_order_final=lof)
    for q, grid, c, i, lof in [(2, "quadratic", True, "t", False), (3, "quadratic", True, "t", True),
                               (2, "quadratic", True, "logsnr", True), (2, "quadratic", True, "sqrt_t", False),
                               (3, "quadratic", False, "sqrt_t", False), (3, "quadratic", True, "logsnr", False),
                               (2, "logsnr", True, "t", False), (3, "logsnr", True, "logsnr", True)]]


# q = 3: the default when the goal tables were measured; today's default (q = 2) is among its changes
GOAL_BASE = dict(order=3, grid="quadratic", prediction="data", corrector=True, interpolation="t", lower_order_final=True)
GOAL = [dict(BASELINE), dict(GOAL_BASE)] + [
    GOAL_BASE | change for change in [
        dict(interpolation="sqrt_t"), dict(interpolation="logsnr"), dict(order=2), dict(order=2, interpolation="logsnr"),
        dict(order=1), dict(lower_order_final=False), dict(final_step="data"), dict(order=2, final_step="data"),
        dict(grid="tuned"), dict(order=1, grid="tuned"), dict(grid="logsnr"), dict(corrector=False),
        dict(lam=0.5), dict(lam=1.0, order=2)]]


def spec_and_grid(options: dict) -> tuple[SamplerSpec, str]:
    """A variant's keyword arguments of gddim.sample as its sampler spec and its grid."""
    return SamplerSpec(**{k: v for k, v in options.items() if k != "grid"}), options["grid"]


def label(options: dict) -> str:
    """The key of a variant in the ratios and the ranking: its canonical spec on its grid."""
    spec, grid = spec_and_grid(options)
    return f"{spec} on {grid}"


def nearest_index(x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Index of the nearest data point of each sample."""
    return torch.cdist(x.double().flatten(1), data.double().flatten(1)).argmin(1)


def measure_process(name: str, data: torch.Tensor, batch: int, rtol: float, candidates: list[dict],
                    nfes: list[int]) -> tuple[list[dict], dict]:
    process = make_process(name, tuple(data.shape[-2:]))
    eps_fn = gddim.exact_eps(process, data)
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
    x_ref, info = reference_solution(process, eps_fn, u_T, rtol)
    ref_nearest = nearest_index(x_ref, data)
    records = []
    for options, nfe in itertools.product(candidates, nfes):
        start = time.perf_counter()
        try:
            x = gddim.sample(process, eps_fn, u_T, nfe, generator=torch.Generator().manual_seed(1), **options)
        except SettingsError as error:  # too few steps for the order at this NFE
            print(f"{name} NFE {nfe} {label(options)}: {error}", file=sys.stderr)
            continue
        path = rms_error(x, x_ref)
        # a few samples that end on another data point dominate the RMS: the median sample shows the rest
        per_sample = (x - x_ref).double().flatten(1).pow(2).mean(1).sqrt()
        kept = nearest_index(x, data) == ref_nearest
        spec, grid = spec_and_grid(options)
        records.append(dict(process=name, sampler=spec.label, grid=grid, label=label(options), nfe=nfe,
                            path_error=path if math.isfinite(path) else None, data_error=data_error(x, data),
                            median_sample_path_error=float(per_sample.median()), flipped=int((~kept).sum()),
                            unflipped_path_error=float(per_sample[kept].pow(2).mean().sqrt()) if kept.any() else None,
                            seconds=round(time.perf_counter() - start, 3)))
    return records, info


def ratios(records: list[dict], field: str = "path_error") -> dict:
    """{process: {label: {nfe: error / baseline error}}}."""
    base = {(r["process"], r["nfe"]): r[field] for r in records if r["label"] == label(BASELINE)}
    out: dict = {}
    for r in records:
        b = base.get((r["process"], r["nfe"]))
        if b and r[field] is not None:
            out.setdefault(r["process"], {}).setdefault(r["label"], {})[r["nfe"]] = r[field] / b
    return out


def goal_rows(records: list[dict]) -> list[dict]:
    """Per process and variant, at each NFE: path error and its ratio to the baseline's, the flipped samples, the
    unflipped samples' path error and its ratio, the data error (the README's goal tables)."""
    base = {(r["process"], r["nfe"]): r for r in records if r["label"] == label(BASELINE)}
    rows: dict = {}
    for r in records:
        b = base.get((r["process"], r["nfe"]))
        ratio = lambda field: r[field] / b[field] if b and r[field] is not None and b[field] else None
        row = rows.setdefault((r["process"], r["label"]), {"process": r["process"], "label": r["label"], "by_nfe": {}})
        row["by_nfe"][r["nfe"]] = {"path_error": r["path_error"], "ratio": ratio("path_error"),
                                   "flipped": r["flipped"], "unflipped_path_error": r["unflipped_path_error"],
                                   "unflipped_ratio": ratio("unflipped_path_error"), "data_error": r["data_error"]}
    return list(rows.values())


def best(ratio: dict, nfes: list[int]) -> dict:
    """Per process, the variants ranked by the geometric mean over NFE of a ratio (all NFEs present)."""
    out = {}
    for process, by_label in ratio.items():
        scored = [(math.exp(sum(math.log(v) for v in by_nfe.values()) / len(by_nfe)), lab, by_nfe)
                  for lab, by_nfe in by_label.items() if len(by_nfe) == len(nfes)]
        scored.sort()
        out[process] = [dict(label=lab, geometric_mean_ratio=g, ratio_by_nfe=by_nfe) for g, lab, by_nfe in scored[:10]]
    return out


def plot(records: list[dict], ranking: dict, process: str, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [label(BASELINE)] + [r["label"] for r in ranking[process][:6]]
    chosen += [label(dict(order=2, grid="quadratic", prediction=p, corrector=c, interpolation="t"))
               for p, c in [("data", False), ("data", True), ("eps", True)]] + [label(GOAL_BASE)]
    chosen = [lab for lab in chosen if any(r["label"] == lab for r in records)]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, field in zip(axes, ("path_error", "data_error")):
        for lab in dict.fromkeys(chosen):
            rows = sorted((r for r in records if r["process"] == process and r["label"] == lab and r[field] is not None),
                          key=lambda r: r["nfe"])
            style = ":" if lab == label(BASELINE) else "-"
            ax.loglog([r["nfe"] for r in rows], [r[field] for r in rows], style, marker="o", markersize=3, label=lab)
        ax.set_xlabel("NFE")
        ax.set_ylabel(field.replace("_", " ") + " (RMS per dimension)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"{process.upper()} {dataset}: distance to the probability-flow ODE solution")
    axes[1].set_title(f"{process.upper()} {dataset}: distance to the nearest data point")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/fast_variants_digits"))
    parser.add_argument("--processes", nargs="+", default=["vp", "cld", "bdm"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rtol", type=float, default=1e-8, help="reference ODE tolerance (solved at rtol/2)")
    parser.add_argument("--shortlist", action="store_true", help="only the baseline and the leading candidates")
    parser.add_argument("--goal", action="store_true", help="the default beside FAST.md's options per process (GOAL)")
    parser.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--dataset", default="digits", help="digits (train and test) or another data set's train split")
    parser.add_argument("--image-size", type=int, help="resize the data (fashion-mnist: 16)")
    parser.add_argument("--n-data", type=int, help="use the first N images (the exact score costs O(N) per call)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    started = time.perf_counter()
    if args.dataset == "digits":
        data = benchmark_images("digits", image_size=args.image_size).double()
    else:
        data = load_images(args.dataset, "train", args.image_size).double()
    data = data[: args.n_data]
    candidates = GOAL if args.goal else SHORTLIST if args.shortlist else variants()
    records, references = [], {}
    for name in args.processes:
        new, references[name] = measure_process(name, data, args.batch, args.rtol, candidates, args.nfes)
        records += new
        print(f"{name}: {len(new)} runs, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    ratio = ratios(records)
    ranking = best(ratio, args.nfes)
    dataset = args.dataset + (f" {args.image_size}x{args.image_size}" if args.image_size else "")
    result = {
        "benchmark": "multistep variants of FAST.md on the exact score (BENCHMARKS.md §1)",
        "dataset": dataset, "data_points": len(data), "batch": args.batch, "nfes": args.nfes,
        "baseline": label(BASELINE), "goal_base": label(GOAL_BASE),
        "definitions": {
            "path_error": "RMS over batch and dimensions of x - x_ref, x_ref the DOP853 probability-flow ODE solution "
                          "(CLD: then its denoising step); with final_step=data x is the data prediction x̂(u, t_end)",
            "data_error": "mean over the batch of ||x - nearest data point|| / sqrt(dimensions)",
            "ratio": "path error / the baseline's path error at the same NFE",
            "median_sample_path_error": "median over the batch of each sample's RMS distance to x_ref",
            "flipped": "samples whose nearest data point is not x_ref's nearest data point",
            "unflipped_path_error": "path error over the samples that are not flipped",
            "ranking": "geometric mean over the NFEs of the ratio, best first",
            "label": "the sampler's canonical spec (gddim.spec) on its grid",
        },
        "reference": references, "best": ranking, "ratio_path_error": ratio,
        "ratio_data_error": ratios(records, "data_error"),
        "ratio_median_sample_path_error": ratios(records, "median_sample_path_error"),
        "ratio_unflipped_path_error": ratios(records, "unflipped_path_error"), "goal": goal_rows(records),
        "records": records, "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(device="cpu (exact ε in float64)"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/fast_variants.py " + " ".join(argv or sys.argv[1:]),
    }
    write_json(args.out / "results.json", result)
    for name in args.processes:
        plot(records, ranking, name, args.out / f"{name}.png", dataset)
        top = ranking[name][0]
        print(f"{name}: best {top['label']}: ratio {top['ratio_by_nfe']}")


if __name__ == "__main__":
    main()

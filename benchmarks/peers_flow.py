"""gDDIM beside diffusers' flow-matching samplers on the exact velocity of a finite data set (BENCHMARKS §1, peers).

    python benchmarks/peers_flow.py --dataset digits --out benchmarks/peers_flow_digits

FlowMatchEulerDiscreteScheduler, UniPC and DPM-Solver++ in flow mode and the gDDIM variants of
`gddim.bench.diffusers_flow.GDDIM_VARIANTS` run from one batch of x_1 on the same σ levels (FlowMatchEuler's
shapes with shift 1 and 3, landing at σ = 1e-3); gDDIM's default also runs on its own quadratic grid. Writes
results.json (every run with its levels, path error against the reference flow and data error; per NFE and grid
the best peer and the ratios gDDIM / best peer) and errors.png into the output folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gddim.bench import diffusers_flow  # noqa: E402
from gddim.atomic import write_json  # noqa: E402
from gddim.bench.records import machine_info  # noqa: E402
from gddim.data import load_images  # noqa: E402


def plot(result: dict, path: Path, title: str) -> None:
    """Path error against NFE, one panel per grid: every sampler (gDDIM solid, peers dotted)."""
    records = result["records"]
    settings = list(dict.fromkeys(r["setting"] for r in records if r["family"] == "diffusers"))
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.8), squeeze=False)
    names = list(dict.fromkeys(r["sampler"] for r in records))
    colors = dict(zip(names, plt.get_cmap("tab20").colors))
    for ax, setting in zip(axes[0], settings):
        for name in names:
            rows = sorted((r for r in records if r["sampler"] == name and r["setting"] == setting
                           and r["path_error"] is not None), key=lambda r: r["nfe"])
            style = "-" if rows and rows[0]["family"] == "gddim" else ":"
            ax.plot([r["nfe"] for r in rows], [r["path_error"] for r in rows], style, marker="o", markersize=3,
                    color=colors[name], label=name)
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="path error (RMS per dimension)",
               title=f"{title}, σ levels {setting}")
        nfes = result["settings"]["nfes"]
        ax.set_xticks(nfes, [str(n) for n in nfes], minor=False)
        ax.set_xticks([], minor=True)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(result: dict) -> None:
    print("gDDIM default / best peer on the same σ levels (path error):")
    for row in result["same_levels"]:
        print(f"  nfe {row['nfe']:3d} {row['setting']:>8}: best peer {row['best_peer']:>8} "
              f"{row['best_peer_path_error']:.2e}, gDDIM default {row['gddim_default_path_error']:.2e} "
              f"-> {row['ratio_default']:.3g} (best gDDIM {row['gddim_best']}: {row['ratio_best']:.3g})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", help="digits or fashion-mnist (any gddim.data source)")
    p.add_argument("--image-size", type=int, help="resize the data (fashion-mnist: 16)")
    p.add_argument("--n-data", type=int, help="use the first N training images (the exact velocity costs O(N) a call)")
    p.add_argument("--nfe", default="5,10,15,20,50", help="comma-separated NFEs")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-10, help="reference flow tolerance (checked at half of it)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    command = " ".join(["python benchmarks/peers_flow.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"machine: {machine_info(device='cpu')}")
    data = load_images(args.dataset, "train", args.image_size)[: args.n_data]
    start = time.perf_counter()
    result = diffusers_flow.benchmark(data, tuple(int(v) for v in args.nfe.split(",")), args.batch, args.seed,
                                  rtol=args.rtol)
    result["settings"] |= {"dataset": args.dataset, "image_size": args.image_size, "n_data": args.n_data,
                           "seconds": round(time.perf_counter() - start, 1)}
    size = f" {args.image_size}x{args.image_size}" if args.image_size else ""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out, "results.json"), {**result, "command": command})
    plot(result, Path(args.out, "errors.png"), args.dataset + size)
    print_summary(result)
    print(f"wrote results.json and errors.png into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

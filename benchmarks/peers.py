"""gDDIM beside diffusers' samplers on the exact-score VP benchmark (BENCHMARKS §1, peers), and step overhead.

    python benchmarks/peers.py --dataset digits --out benchmarks/peers_digits
    python benchmarks/peers.py --dataset fashion-mnist --image-size 16 --n-data 2000 --out benchmarks/peers_fashion-mnist
    python benchmarks/peers.py --overhead --out benchmarks/peers_overhead.json

Every diffusers peer (gddim.bench.diffusers_vp) runs at each timestep_spacing (and Karras σ where it has them)
beside the gDDIM variants of `gddim.bench.peers.GDDIM_VARIANTS`. Writes results.json (every run with the noise levels it used and its
path error against the reference ODE at its own landing time; per NFE each peer's best setting and the ratios
gDDIM / best peer for gDDIM's default and best variant) and errors.png into the output folder; --overhead
writes one JSON file of per-step medians.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import gddim  # noqa: E402
from gddim.atomic import write_json  # noqa: E402
from gddim.bench import overhead, peers  # noqa: E402
from gddim.bench.diffusers_vp import DiffusersVP  # noqa: E402
from gddim.bench.records import machine_info  # noqa: E402
from gddim.data import load_images  # noqa: E402

QUICK_OVERHEAD = {"shape": (2, 1, 8, 8), "steps": 5, "repeats": 1}


def plot(result: dict, path: Path, title: str) -> None:
    """Each peer at its best setting per NFE (dotted), gDDIM's default and its best variant per NFE (solid)."""
    summary = result["summary"]
    nfes = [row["nfe"] for row in summary]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.get_cmap("tab10").colors
    for ax, metric in zip(axes, ("path_error", "data_error")):
        rows = [row[metric] for row in summary]
        for color, name in zip(colors, rows[0]["per_peer_best"]):
            ax.plot(nfes, [_error(r["per_peer_best"][name]) for r in rows], ":", marker="^", color=color,
                    label=f"{name} (best setting)")
        ax.plot(nfes, [_error(r["gddim_best"]) for r in rows], "-", marker="o", color="k", label="gDDIM best variant")
        if any(r.get("gddim_tuned") for r in rows):
            ax.plot(nfes, [_error(r.get("gddim_tuned")) for r in rows], "-.", marker="D", color="tab:cyan",
                    label="gDDIM default on the grid tuned to the model")
        if any(r["gddim_default"] for r in rows):
            default = result["settings"]["gddim_default"]
            ax.plot(nfes, [_error(r["gddim_default"]) for r in rows], "--", marker="s", color="0.5",
                    label=f"gDDIM default ({default['sampler']} on {default['setting']})")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=metric.replace("_", " "), title=f"{title}: {metric}")
        ax.set_xticks(nfes, [str(n) for n in nfes], minor=False)
        ax.set_xticks([], minor=True)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(result["reference"]["data_error"], color="k", lw=0.8, label="reference ODE at t_end")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _error(entry: dict | None) -> float:
    return float("nan") if entry is None else entry["error"]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_summary(result: dict) -> None:
    print("gDDIM / best peer at t_end (any setting): best variant, default, default on the tuned grid; on the same "
          "levels (trailing):")
    for row in result["summary"]:
        cells = [f"{m[:4]} {(row[m]['best_peer'] or {}).get('sampler')}@{(row[m]['best_peer'] or {}).get('setting')} "
                 f"{_ratio(row[m]['ratio_best'])}, "
                 f"{_ratio(row[m]['ratio_default'])}, {_ratio(row[m].get('ratio_tuned'))}; "
                 f"{_ratio(row[m]['same_levels']['ratio'])}"
                 for m in ("path_error", "data_error")]
        print(f"  nfe {row['nfe']:3d}: " + "   ".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", help="digits or fashion-mnist (any gddim.data source)")
    p.add_argument("--image-size", type=int, help="resize the data (fashion-mnist: 16)")
    p.add_argument("--n-data", type=int, help="use the first N training images (the exact score costs O(N) per call)")
    p.add_argument("--n-data-note", help="why --n-data was chosen (kept in the JSON)")
    p.add_argument("--nfe", default="5,10,15,20,50", help="comma-separated NFEs")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-10, help="reference ODE tolerance (checked at half of it)")
    p.add_argument("--overhead", action="store_true", help="time scheduler steps instead (writes --out as JSON)")
    p.add_argument("--quick", action="store_true", help="with --overhead: smoke-test size (%s)" % QUICK_OVERHEAD)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    command = " ".join(["python benchmarks/peers.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    machine = machine_info(device="cpu")
    print(f"machine: {machine}")
    if args.overhead:
        result = overhead.step_overhead(**(QUICK_OVERHEAD if args.quick else {}))
        write_json(out, {**result, "command": command}, indent=1)
        for name, seconds in result["median_step_seconds"].items():
            print(f"{name:>12}: {seconds * 1e6:8.1f} µs/step ({result['step_ratio_to_ddim'][name]:.2f}x DDIM)")
        return 0
    data = load_images(args.dataset, "train", args.image_size)
    data = data if args.n_data is None else data[: args.n_data]
    nfes = tuple(int(v) for v in args.nfe.split(","))
    start = time.perf_counter()
    result = peers.benchmark(DiffusersVP(gddim.VP()), data, nfes, args.batch, args.seed, rtol=args.rtol)
    result["settings"].update(dataset=args.dataset, image_size=args.image_size, n_data=args.n_data,
                              n_data_note=args.n_data_note, seconds=round(time.perf_counter() - start, 1))
    result["command"] = command
    write_json(out / "results.json", result)
    plot(result, out / "errors.png", args.dataset + (f" {args.image_size}x{args.image_size}" if args.image_size else ""))
    print_summary(result)
    print(f"wrote {out / 'results.json'} and {out / 'errors.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

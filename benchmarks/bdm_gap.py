"""Why deterministic samplers trail stochastic ones on a trained BDM model (issue 9): the exact score with a
controlled error, on VP and BDM, deterministic against stochastic samplers at the same NFE.

    OMP_NUM_THREADS=1 python benchmarks/bdm_gap.py --out benchmarks/bdm_gap

A trained network's ε is the exact ε plus an error. Here the error is made on purpose, on the exact ε of
fashion-mnist 16x16 (the first --n-data training images): "scale" multiplies ε by 1 + δ (a systematic error),
"noise" adds δ times fresh standard normal noise at every call (an unsystematic one). Every sampler starts from the
same prior samples and draws the same noise; `shift` is the RMS distance between its samples with and without the
error (how much of the error reaches the samples), beside the data error (mean RMS distance to the nearest training
image).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import gddim
from gddim.atomic import write_json
from gddim.bench.records import data_error, machine_info, rms_error
from gddim.data import load_images
from gddim.processes import make_process

SAMPLERS = {"gddim q=0 (ODE)": dict(order=0), "gddim default (ODE)": {}, "euler (ODE)": dict(method="euler"),
            "gddim lam=0.5": dict(lam=0.5), "ancestral (lam=1)": dict(method="ancestral")}
ERRORS = {"none": 0.0, "scale": 0.05, "noise": 0.05}


def with_error(eps_fn, kind: str, size: float, seed: int):
    """The exact ε with a made error of the given kind and size."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "scale":
        return lambda u, t: (1 + size) * eps_fn(u, t)
    if kind == "noise":
        return lambda u, t: eps_fn(u, t) + size * torch.randn(u.shape, generator=generator, dtype=u.dtype)
    return eps_fn


def measure(name: str, data: torch.Tensor, args) -> list[dict]:
    process = make_process(name, tuple(data.shape[-2:]))
    exact = gddim.exact_eps(process, data)
    u_T = process.prior_sample((args.batch, *data.shape[1:]), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
    records, clean = [], {}
    for (label, options), (kind, size) in [(s, e) for s in SAMPLERS.items() for e in ERRORS.items()]:
        x = gddim.sample(process, with_error(exact, kind, size, 2), u_T, args.nfe,
                         generator=torch.Generator().manual_seed(1), **options).double()
        clean.setdefault(label, x)  # ERRORS starts with "none"
        records.append({"process": name, "sampler": label, "error": kind, "size": size, "nfe": args.nfe,
                        "data_error": data_error(x, data), "shift": rms_error(x, clean[label])})
        print(f"{name} {label} {kind}: shift {records[-1]['shift']:.4f}", file=sys.stderr)
    return records


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/bdm_gap"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--n-data", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--processes", nargs="+", default=["vp", "bdm"])
    args = p.parse_args(argv)
    began = time.perf_counter()
    data = load_images(args.dataset, "train", args.image_size)[: args.n_data].double()
    records = [r for name in args.processes for r in measure(name, data, args)]
    write_json(args.out / "results.json", {
        "benchmark": "made ε errors through deterministic and stochastic samplers (issue 9, BDM gap)",
        "dataset": f"{args.dataset} {args.image_size}x{args.image_size}", "data_points": len(data),
        "batch": args.batch, "nfe": args.nfe, "errors": ERRORS, "records": records,
        "seconds": round(time.perf_counter() - began, 1), "machine": machine_info(device="cpu"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/bdm_gap.py " + " ".join(argv or sys.argv[1:])})
    for r in records:
        print(f"{r['process']:4s} {r['sampler']:22s} {r['error']:6s} data error {r['data_error']:.4f} "
              f"shift {r['shift']:.4f}")


if __name__ == "__main__":
    main()

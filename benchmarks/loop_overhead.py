"""The sampler's own time per step as a fraction of one forward pass of the network (issue 12; goal: at most 3%).

    OMP_NUM_THREADS=1 python benchmarks/loop_overhead.py --out benchmarks/loop_overhead.json

For the tiny preset (1-channel 8x8 images, as digits) and the small one (1-channel 16x16, as Fashion-MNIST 16x16)
at batch 64, on VP and CLD: the median time of one forward pass of the network (random weights, no gradients),
and for the default sampler, gDDIM q = 2 and the ancestral step (λ = 1, stochastic) the median time of a whole
gddim.sample call with a model that costs nothing (it hands back a fixed tensor) divided by its model calls: the
loop's own work per step (checks, coefficients, history, noise). Their ratio is the fraction. Everything on one
thread of the CPU; the measurements of a setting take turns so that load on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import gddim
from gddim.atomic import write_json
from gddim.bench.records import machine_info
from gddim.networks import EpsModel, preset
from gddim.processes import make_process
from gddim.spec import SamplerSpec

PRESETS = {"tiny": 8, "small": 16}  # preset: image size
SAMPLERS = tuple(SamplerSpec.parse(text) for text in ("gddim", "gddim:q=2", "ancestral"))
QUICK = {"batch": 4, "nfe": 5, "repeats": 2}  # the smoke-test size of --quick


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(preset_name: str, process_name: str, batch: int, nfe: int, repeats: int) -> list[dict]:
    """One record per sampler: forward pass, sampler time per step and their ratio, for one network and process."""
    size = PRESETS[preset_name]
    process = make_process(process_name, size)
    torch.manual_seed(0)
    network = EpsModel(preset(preset_name), 1, size, process.k, process).eval()
    u_T = process.prior_sample((batch, 1, size, size), generator=torch.Generator().manual_seed(1))
    t = torch.full((batch,), 0.5)
    eps = torch.randn(u_T.shape, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(3)
    runs = {"forward": lambda: network(u_T, t)}
    for spec in SAMPLERS:
        runs[str(spec)] = lambda options=spec.options(): gddim.sample(process, lambda u, t: eps, u_T, nfe,
                                                                      generator=generator, **options)
    times = {label: [] for label in runs}
    with torch.no_grad():
        for run in runs.values():  # first calls allocate and build the plans
            run()
        for _ in range(repeats):
            for label, run in runs.items():
                times[label].append(seconds(run))
    forward = statistics.median(times.pop("forward"))
    return [{"preset": preset_name, "image_size": size, "process": process_name, "sampler": label,
             "forward_seconds": forward,
             "sampler_seconds_per_step": statistics.median(values) / nfe,
             "fraction_of_forward": statistics.median(values) / nfe / forward} for label, values in times.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "loop_overhead.json")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--repeats", type=int, default=21, help="timed runs per median")
    p.add_argument("--quick", action="store_true", help=f"smoke-test size ({QUICK})")
    args = p.parse_args(argv)
    settings = {"batch": args.batch, "nfe": args.nfe, "repeats": args.repeats, **(QUICK if args.quick else {})}
    torch.set_num_threads(1)
    began = time.perf_counter()
    records = [record for name in PRESETS for process in ("vp", "cld")
               for record in measure(name, process, settings["batch"], settings["nfe"], settings["repeats"])]
    for r in records:
        print(f"{r['preset']:>5} {r['process']:>3} {r['sampler']:<10}: forward {r['forward_seconds'] * 1e3:7.2f} ms, "
              f"sampler {r['sampler_seconds_per_step'] * 1e6:7.1f} µs/step = {100 * r['fraction_of_forward']:.2f}%")
    command = shlex.join(["python", "benchmarks/loop_overhead.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"settings": settings, "goal_fraction": 0.03, "records": records,
                          "worst_fraction": max(r["fraction_of_forward"] for r in records),
                          "seconds": round(time.perf_counter() - began, 1), "command": "OMP_NUM_THREADS=1 " + command,
                          "machine": machine_info(device="cpu", gddim=gddim.__version__)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

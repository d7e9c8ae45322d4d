"""Sampling throughput (images/s) of `gddim sample`'s sharded generation: 1 process against
`torchrun --nproc_per_node=2` (gloo, one thread per process), side by side in one run on the CPU.

    python benchmarks/sampling_throughput.py --out benchmarks/sampling_throughput

Each setting runs generation.write_samples on a randomly initialized network of the preset (the weights do not
change the work) for CLD on 8x8 digits: shards gathered to rank 0 and written, the .npz assembled. The settings
alternate --repeats times so that the machine's load hits both alike; the medians and their ratio go to
OUT/results.json. The clock starts after a warm-up batch (coefficients built, kernels chosen) and stops when
rank 0 has written the .npz.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gddim.bench.records import machine_info, write_json
from gddim.distributed import process_group
from gddim.generation import sample_images, write_samples
from gddim.networks import EpsModel, preset
from gddim.processes import CLD

SETTINGS = {"1 process, 1 thread": 1, "2 processes (torchrun, gloo), 1 thread each": 2}


def worker(args) -> None:
    """One timed generation; rank 0 writes its images/s to WORKER_OUT/rate.json."""
    with process_group("cpu") as group:
        process = CLD()
        torch.manual_seed(0)
        model = EpsModel(preset(args.preset), 1, 8, process.k, process).eval()
        options = {"method": args.method}
        sample_images(process, model, args.batch, args.nfe, **options, batch=args.batch)  # warm-up
        if group.world > 1:
            dist.barrier()
        began = time.perf_counter()
        write_samples(process, model, Path(args.worker_out) / "samples", args.num_samples, args.nfe, options, group,
                      batch=args.batch, shard_size=args.shard_size, source="random " + args.preset, progress=False)
        seconds = time.perf_counter() - began
        if group.is_main:
            write_json(Path(args.worker_out) / "rate.json", {
                "world_size": group.world, "threads_per_process": torch.get_num_threads(), "seconds": seconds,
                "images_per_second": args.num_samples / seconds})


def measure(args) -> dict:
    script = str(Path(__file__).resolve())
    common = ["--preset", args.preset, "--method", args.method, "--nfe", str(args.nfe), "--num-samples",
              str(args.num_samples), "--batch", str(args.batch), "--shard-size", str(args.shard_size)]
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, processes in SETTINGS.items():
            launcher = [sys.executable] if processes == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([*launcher, script, *common, "--worker-out", tmp], check=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
                rates[name].append(json.loads((Path(tmp) / "rate.json").read_text())["images_per_second"])
            print(f"{name}: {rates[name][-1]:.1f} images/s")
    median = {name: statistics.median(values) for name, values in rates.items()}
    one, two = median.values()
    return {"machine": machine_info(device="cpu"), "process": "cld", "data": "digits 8x8", "network": args.preset,
            "weights": "random (seed 0)", "sampler": args.method, "nfe": args.nfe, "num_samples": args.num_samples,
            "batch": args.batch, "shard_size": args.shard_size, "repeats": args.repeats,
            "images_per_second_median": median, "images_per_second_runs": rates, "ratio_2_over_1": two / one,
            "goal_ratio": 1.7, "command": "python benchmarks/sampling_throughput.py " + " ".join(args.argv)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/sampling_throughput", help="folder for results.json")
    p.add_argument("--preset", default="tiny", help="network preset (default tiny)")
    p.add_argument("--method", default="gddim", help="sampler method (default gddim: the default sampler)")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--num-samples", type=int, default=1024, help="samples per timed generation")
    p.add_argument("--batch", type=int, default=64, help="samples per network call")
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting, alternated")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.worker_out:
        worker(args)
        return 0
    report = measure(args)
    write_json(Path(args.out) / "results.json", report, indent=2)
    print(f"2 processes / 1 process: {report['ratio_2_over_1']:.2f}x -> {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

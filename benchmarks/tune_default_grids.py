"""Make the tuned default grids shipped in src/gddim/tuned/<process>.json (grid="tuned").

For VP, CLD and BDM with default parameters: the exact ε of the 8x8 digits (train and test, 1797 images),
B prior samples drawn with a fixed seed, one gddim.tuning.model_step_costs run, then the best grid for every
step count 1..MAX_STEPS. Deterministic: rerunning it rewrites the same files (up to BLAS round-off).

    python benchmarks/tune_default_grids.py [--batch 256] [--candidates 120] [--max-steps 40] [--out DIR]

--out writes the files elsewhere (the package folder is the default), e.g. a small trial run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import gddim
from gddim.atomic import write_json
from gddim.bench.records import benchmark_images
from gddim.grid_files import TUNED_DIR, TUNED_FORMAT, VERSION
from gddim.processes import make_process
from gddim.tuning import CANDIDATE_GRID, STEP_SAMPLER, model_step_costs

PROCESSES = ("vp", "cld", "bdm")
DATASET = "digits"
SEED = 0
RTOL = 1e-7  # exact float64 scores: the teacher can be solved tighter than a network's


def tuned_record(name: str, batch: int, candidates: int, max_steps: int, command: str) -> dict:
    data = benchmark_images(DATASET)
    process = make_process(name, tuple(data.shape[-2:]))
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(SEED),
                               dtype=torch.float64)
    costs = model_step_costs(process, gddim.exact_eps(process, data), u_T, candidates, rtol=RTOL, progress=True)
    grids = {str(n): costs.grid(n).tolist() for n in range(1, max_steps + 1)}
    tuned_on = {"data": f"{DATASET} (train and test, {len(data)} images), exact ε", "batch": batch, "seed": SEED,
                "candidates": candidates, "candidate_grid": CANDIDATE_GRID, "rtol": RTOL,
                "model_calls": costs.model_calls, "seconds": round(costs.seconds, 1),
                "step_sampler": STEP_SAMPLER.label,
                "cost": "RMS local error of one step of step_sampler, summed over the steps",
                "command": command}
    return {"format": TUNED_FORMAT, "version": VERSION, "process": process.config(), "tuned_on": tuned_on,
            "grids": grids}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="prior samples the teacher ODE starts from")
    parser.add_argument("--candidates", type=int, default=120, help="candidate times K")
    parser.add_argument("--max-steps", type=int, default=40, help="a grid for every step count 1..this")
    parser.add_argument("--processes", nargs="+", choices=PROCESSES, default=list(PROCESSES))
    parser.add_argument("--out", type=Path, default=TUNED_DIR, help="folder of the <process>.json files")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/tune_default_grids.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.processes:
        record = tuned_record(name, args.batch, args.candidates, args.max_steps, command)
        path = args.out / f"{name}.json"
        write_json(path, record, indent=None)
        print(f"{name}: {record['tuned_on']['model_calls']} model calls, {record['tuned_on']['seconds']} s -> {path}")


if __name__ == "__main__":
    main()

"""Tuned grids against the quadratic (and log-SNR) grid on prior samples they were not tuned on -> results.json.

Exact scores of the 8x8 digits (train and test) for VP, CLD and BDM: the shipped grid="tuned" (tuned on
256 prior samples of seed 0 by benchmarks/tune_default_grids.py) and the quadratic and log-SNR grids, each
run with every sampler of SAMPLERS at NFE 5, 10, 15, 20 from BATCH prior samples of seed 1; the path error is
the RMS gap of x to the float64 probability-flow ODE (rtol 1e-9) from the same u_T. Also the CPU time of
gddim.tuning.model_step_costs with B = 64, K = 80, teacher rtol 1e-7 per process.
With --run RUN (a trained checkpoint): the CPU time of tuning on it (B = 64, K = 80, teacher rtol 1e-5) and the
path errors of its tuned grids at NFE 5 and 10, of the shipped tuned grids and of the quadratic grid on 64
held-out prior samples against the ODE at rtol 1e-6 (a float32 network allows no tighter).

    python benchmarks/tuned_grids/measure.py [--run /tmp/tg_run [--trained-only]] [--threads 1]

New sampler options: add an entry to SAMPLERS (keyword arguments of gddim.sample).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import gddim
from gddim.benchmark import benchmark_images, machine_info, rms_error, write_json
from gddim.grids import steps_for_nfe
from gddim.processes import make_process
from gddim.training import load_checkpoint
from gddim.tuning import model_step_costs

OUT = Path(__file__).parent / "results.json"
SAMPLERS = {f"gddim q={q}": {"order": q} for q in range(4)}
GRIDS = ("quadratic", "logsnr", "tuned")
NFES = (5, 10, 15, 20)
BATCH, HELD_OUT_SEED, TUNING_SEED = 128, 1, 0
REFERENCE_RTOL = 1e-9
# a float32 network's round-off stalls DOP853 below ~1e-6 (tune-grid at rtol 1e-7 took 4261 calls): looser for it
TRAINED_TEACHER_RTOL, TRAINED_REFERENCE_RTOL = 1e-5, 1e-6
EXACT_TEACHER_RTOL = 1e-7  # as the shipped grids were tuned


def prior(process, shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return process.prior_sample(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def path_errors(process, eps_fn, u_T, grids: dict, nfes, rtol: float = REFERENCE_RTOL) -> list[dict]:
    """Path error of every sampler on every grid (name -> grid, or name -> {nfe: times}) at every NFE."""
    truth = gddim.reference_ode(process, eps_fn, u_T, rtol=rtol, atol=rtol)
    records = []
    for nfe in nfes:
        for label, options in SAMPLERS.items():
            if steps_for_nfe(process, nfe) < options.get("order", 0) + 1:
                continue
            row = {"nfe": nfe, "sampler": label}
            for name, grid in grids.items():
                x = gddim.sample(process, eps_fn, u_T, nfe, grid=grid[nfe] if isinstance(grid, dict) else grid, **options)
                row[name] = rms_error(x, truth)
            row["tuned / quadratic"] = row["tuned"] / row["quadratic"]
            records.append(row)
            print(f"  {process.name} NFE {nfe:>2} {label}: " + ", ".join(f"{g} {row[g]:.4g}" for g in grids))
    return records


def timed_costs(process, eps_fn, u_T, **options):
    wall, cpu = time.perf_counter(), time.process_time()
    costs = model_step_costs(process, eps_fn, u_T, **options)
    return costs, {"batch": len(u_T), "candidates": len(costs.times), "model_calls": costs.model_calls,
                   "wall_seconds": round(time.perf_counter() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}


def exact_scores() -> dict:
    data = benchmark_images("digits")
    result = {}
    for name in ("vp", "cld", "bdm"):
        process = make_process(name, tuple(data.shape[-2:]))
        eps_fn = gddim.exact_eps(process, data)
        _, cost = timed_costs(process, eps_fn, prior(process, (64, *data.shape[1:]), TUNING_SEED), rtol=EXACT_TEACHER_RTOL)
        print(f"{name}: model_step_costs {cost}")
        held_out = prior(process, (BATCH, *data.shape[1:]), HELD_OUT_SEED)
        result[name] = {"tune_cost": cost, "records": path_errors(process, eps_fn, held_out, {g: g for g in GRIDS}, NFES)}
    return result


def trained(run: str, nfes=(5, 10)) -> dict:
    checkpoint = load_checkpoint(run)
    process, model = checkpoint.process(), checkpoint.network("ema")
    shape = (64, model.data_channels, model.image_size, model.image_size)
    with torch.no_grad():
        costs, cost = timed_costs(process, model, prior(process, shape, TUNING_SEED, torch.float32),
                                  rtol=TRAINED_TEACHER_RTOL)
        print(f"trained {process.name}: model_step_costs {cost}")
        tuned = {nfe: costs.grid(steps_for_nfe(process, nfe)) for nfe in nfes}
        records = path_errors(process, model, prior(process, shape, HELD_OUT_SEED, torch.float32),
                              {"quadratic": "quadratic", "tuned": tuned, "shipped tuned": "tuned"}, nfes,
                              TRAINED_REFERENCE_RTOL)
    return {"checkpoint": str(checkpoint.path), "step": checkpoint.step, "process": checkpoint.meta["process"],
            "tune_cost": {**cost, "rtol": TRAINED_TEACHER_RTOL}, "reference_rtol": TRAINED_REFERENCE_RTOL,
            "tuned_grids": {nfe: ts.tolist() for nfe, ts in tuned.items()}, "records": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="also measure a trained checkpoint (run folder)")
    parser.add_argument("--trained-only", action="store_true", help="keep the exact-score part of results.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.trained_only:
        result = json.loads(OUT.read_text())
    else:
        result = {"machine": machine_info(), "protocol": __doc__, "held_out": {"batch": BATCH, "seed": HELD_OUT_SEED},
                  "reference_rtol": REFERENCE_RTOL, "exact_digits": exact_scores()}
    if args.run:
        result["trained"] = trained(args.run)
    write_json(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

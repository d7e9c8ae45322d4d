"""Grids tuned to a model against the quadratic grid, on prior samples they were not tuned on -> results.json.

Exact scores of the 8x8 digits (train and test) for VP, CLD and BDM: gddim.tuning.tune on TUNE_BATCH prior samples
of seed 0 (the shortest path, its smoothed forms, the quadratic and uniform grids, judged by the default sampler)
at each NFE, the shipped grid="tuned" and the quadratic grid, each run with the default sampler and the paper's
q = 2 at NFE 5, 10, 15, 20 from BATCH prior samples of seed 1; the path error is the RMS gap of x to the float64
probability-flow ODE (rtol 1e-9) from the same u_T. Also the CPU time of the teacher (model_step_costs, B = 64,
K = 80, rtol 1e-7) and of each NFE's judging runs.
With --run RUN (a trained checkpoint): the same at NFE 5 and 10 on its EMA network (teacher rtol 1e-5), measured
on 64 held-out prior samples against the ODE at rtol 1e-6 (a float32 network allows no tighter).

    python benchmarks/tuned_grids/measure.py [--run RUN [--trained-only]] [--threads 1]

--batch, --tune-batch, --candidates, --nfes, --trained-rtol and --processes shrink the protocol for a trial
run; --out writes it elsewhere than results.json.

New sampler options: add a sampler spec (gddim.spec) to SAMPLERS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import gddim
from gddim.atomic import write_json
from gddim.bench.records import benchmark_images, machine_info, rms_error
from gddim.grids import steps_for_nfe
from gddim.processes import make_process
from gddim.checkpoints import load_checkpoint
from gddim.spec import SamplerSpec
from gddim.tuning import CANDIDATES, model_step_costs, select_grid

OUT = Path(__file__).parent / "results.json"
SAMPLERS = [SamplerSpec(), SamplerSpec(order=2)]  # the default (which judges the tuning) and the paper's q = 2
TUNED = "tuned to the model"
NFES = (5, 10, 15, 20)
PROCESSES = ("vp", "cld", "bdm")
BATCH, HELD_OUT_SEED, TUNING_SEED = 128, 1, 0
TUNE_BATCH = 64
TRAINED_MAX_NFE = 10  # the trained model is tuned and measured at NFE 5 and 10 only
REFERENCE_RTOL = 1e-9
# a float32 network's round-off stalls DOP853 below ~1e-6 (tune-grid at rtol 1e-7 took 4261 calls): looser for it
TRAINED_TEACHER_RTOL = 1e-5
REFERENCE_OVER_TEACHER = 0.1  # the reference ODE is solved ten times tighter than the teacher
EXACT_TEACHER_RTOL = 1e-7  # as the shipped grids were tuned


def prior(process, shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return process.prior_sample(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def path_errors(process, eps_fn, u_T, grids: dict, nfes, rtol: float = REFERENCE_RTOL) -> list[dict]:
    """Path error of every sampler on every grid (name -> grid, or name -> {nfe: times}) at every NFE."""
    truth = gddim.reference_ode(process, eps_fn, u_T, rtol=rtol, atol=rtol)
    records = []
    for nfe in nfes:
        for spec in SAMPLERS:
            row = {"nfe": nfe, "sampler": spec.label}
            for name, grid in grids.items():
                x = gddim.sample(process, eps_fn, u_T, nfe, grid=grid[nfe] if isinstance(grid, dict) else grid,
                                 **spec.options())
                row[name] = rms_error(x, truth)
            row["tuned / quadratic"] = row[TUNED] / row["quadratic"]
            records.append(row)
            print(f"  {process.name} NFE {nfe:>2} {spec}: " + ", ".join(f"{g} {row[g]:.4g}" for g in grids))
    return records


def timed_tuning(process, eps_fn, u_T, nfes, **options) -> tuple[dict, dict]:
    """gddim.tuning's grid per NFE from u_T (one teacher, then each NFE's judging runs) and what each part cost."""
    wall, cpu = time.perf_counter(), time.process_time()
    costs = model_step_costs(process, eps_fn, u_T, **options)
    cost = {"batch": len(u_T), "candidates": len(costs.times), "teacher_model_calls": costs.model_calls,
            "teacher_wall_seconds": round(time.perf_counter() - wall, 2),
            "teacher_cpu_seconds": round(time.process_time() - cpu, 2), "per_nfe": {}}
    tuned = {}
    for nfe in nfes:
        wall, cpu = time.perf_counter(), time.process_time()
        tuned[nfe] = select_grid(process, eps_fn, u_T, costs, steps_for_nfe(process, nfe))
        cost["per_nfe"][nfe] = {"chosen": tuned[nfe].chosen, "end_errors": tuned[nfe].end_errors,
                                "judging_model_calls": tuned[nfe].model_calls - costs.model_calls,
                                "judging_cpu_seconds": round(time.process_time() - cpu, 2),
                                "judging_wall_seconds": round(time.perf_counter() - wall, 2)}
    return {nfe: t.times for nfe, t in tuned.items()}, cost


def exact_scores(args: argparse.Namespace) -> dict:
    data = benchmark_images("digits")
    result = {}
    for name in args.processes:
        process = make_process(name, tuple(data.shape[-2:]))
        eps_fn = gddim.exact_eps(process, data)
        tuned, cost = timed_tuning(process, eps_fn, prior(process, (args.tune_batch, *data.shape[1:]), TUNING_SEED),
                                   args.nfes, candidates=args.candidates, rtol=EXACT_TEACHER_RTOL)
        print(f"{name}: tuning {cost}")
        held_out = prior(process, (args.batch, *data.shape[1:]), HELD_OUT_SEED)
        grids = {"quadratic": "quadratic", TUNED: tuned, "shipped tuned": "tuned"}
        result[name] = {"tune_cost": cost, "tuned_grids": {nfe: ts.tolist() for nfe, ts in tuned.items()},
                        "records": path_errors(process, eps_fn, held_out, grids, args.nfes)}
    return result


def trained(run: str, args: argparse.Namespace) -> dict:
    """Tuning on the checkpoint's model and its grids at the NFEs up to 10 (tuning batch = held-out batch)."""
    checkpoint = load_checkpoint(run)
    process, model = checkpoint.process(), checkpoint.network("ema")
    nfes = [nfe for nfe in args.nfes if nfe <= TRAINED_MAX_NFE]
    reference_rtol = args.trained_rtol * REFERENCE_OVER_TEACHER
    shape = (args.tune_batch, model.data_channels, model.image_size, model.image_size)
    with torch.no_grad():
        tuned, cost = timed_tuning(process, model, prior(process, shape, TUNING_SEED, torch.float32), nfes,
                                   candidates=args.candidates, rtol=args.trained_rtol)
        print(f"trained {process.name}: tuning {cost}")
        records = path_errors(process, model, prior(process, shape, HELD_OUT_SEED, torch.float32),
                              {"quadratic": "quadratic", TUNED: tuned, "shipped tuned": "tuned"}, nfes,
                              reference_rtol)
    return {"checkpoint": str(checkpoint.path), "step": checkpoint.step, "process": checkpoint.meta["process"],
            "tune_cost": {**cost, "rtol": args.trained_rtol}, "reference_rtol": reference_rtol,
            "tuned_grids": {nfe: ts.tolist() for nfe, ts in tuned.items()}, "records": records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="also measure a trained checkpoint (run folder)")
    parser.add_argument("--trained-only", action="store_true", help="keep the exact-score part of the --out file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH, help="held-out prior samples of the exact scores")
    parser.add_argument("--tune-batch", type=int, default=TUNE_BATCH,
                        help="prior samples B of each tuning (and the trained model's held-out samples)")
    parser.add_argument("--candidates", type=int, default=CANDIDATES, help="candidate times K of each tuning")
    parser.add_argument("--nfes", type=int, nargs="+", default=list(NFES),
                        help=f"NFEs of the path errors (the trained model's: those up to {TRAINED_MAX_NFE})")
    parser.add_argument("--trained-rtol", type=float, default=TRAINED_TEACHER_RTOL,
                        help="teacher tolerance on the trained model (its reference ODE: a tenth of it)")
    parser.add_argument("--processes", nargs="+", choices=PROCESSES, default=list(PROCESSES))
    parser.add_argument("--out", type=Path, default=OUT, help="the results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.trained_only:
        result = json.loads(args.out.read_text())
    else:
        result = {"machine": machine_info(), "protocol": __doc__,
                  "command": " ".join(["python benchmarks/tuned_grids/measure.py",
                                       *(sys.argv[1:] if argv is None else argv)]),
                  "held_out": {"batch": args.batch, "seed": HELD_OUT_SEED},
                  "reference_rtol": REFERENCE_RTOL, "exact_digits": exact_scores(args)}
    if args.run:
        result["trained"] = trained(args.run, args)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

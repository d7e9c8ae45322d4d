"""`gddim bench exact|coefficients`: the benchmarks of BENCHMARKS.md §1 and §3 (gddim.bench does the work)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..bench import sweeps
from ..errors import OutputExistsError
from .options import BENCH_PROCESSES, PROCESSES, non_empty, non_negative, positive, positive_number


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks that write JSON and plots (BENCHMARKS.md)")
    which = bench.add_subparsers(dest="benchmark", required=True)

    exact = which.add_parser("exact", help="every sampler on the exact ε of a finite data set: path and data errors")
    exact.add_argument("--dataset", default="digits", type=non_empty, help="data source of gddim.data.load_images (default digits)")
    exact.add_argument("--split", default="all", choices=("train", "test", "all"),
                       help="the data split; all (default) joins train and test")
    exact.add_argument("--image-size", type=positive, help="resize images to this square size first")
    exact.add_argument("--data-points", type=positive, help="keep only the first N images (default: all of the split)")
    exact.add_argument("--processes", nargs="+", choices=sorted(PROCESSES), default=list(BENCH_PROCESSES))
    exact.add_argument("--nfes", nargs="+", type=positive, help=f"NFE values (default {' '.join(map(str, sweeps.NFES))})")
    exact.add_argument("--batch", type=positive, help="starting points (default 256)")
    exact.add_argument("--seed", type=non_negative, default=0)
    exact.add_argument("--rtol", type=positive_number,
                       help=f"reference ODE tolerance, checked against half of it (default {sweeps.REFERENCE_RTOL:g})")
    exact.add_argument("--quick", action="store_true",
                       help="smoke-test size: batch {batch}, NFE {nfes}, rtol {rtol}".format(**sweeps.QUICK))
    _add_common(exact)
    exact.set_defaults(run=run_exact)

    coeff = which.add_parser("coefficients", help="coefficient build time for a new grid from a cold start")
    coeff.add_argument("--processes", nargs="+", choices=sorted(PROCESSES), default=list(BENCH_PROCESSES))
    coeff.add_argument("--nfes", nargs="+", type=positive, default=list(sweeps.COEFFICIENT_NFES))
    coeff.add_argument("--repeats", type=positive, default=5, help="builds per configuration; medians are reported")
    coeff.add_argument("--bdm-image-size", type=positive, default=32, help="BDM's image size (number of DCT modes)")
    _add_common(coeff)
    coeff.set_defaults(run=run_coefficients)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=lambda text: Path(non_empty(text)), required=True,
                        help="results folder (refused if it holds files)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.add_argument("--threads", type=positive, help="torch threads (1 is fastest on a busy shared machine)")


def _prepare(args) -> None:
    import torch

    if args.out.exists() and not args.out.is_dir():
        raise OutputExistsError(f"--out {args.out} is a file; name a folder")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise OutputExistsError(f"{args.out} is not empty; pass --overwrite to write into it or choose another --out")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def _command(args, options: dict) -> str:
    """The command line that reproduces this run, with every resolved option spelled out."""
    words = ["gddim", "bench", args.benchmark]
    for key, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return shlex.join(words)


def run_exact(args) -> int:
    from ..bench.exact_score import exact_score_benchmark
    from ..bench.exact_summary import format_summary

    _prepare(args)
    batch = args.batch or (sweeps.QUICK["batch"] if args.quick else 256)
    nfes = tuple(args.nfes or (sweeps.QUICK["nfes"] if args.quick else sweeps.NFES))
    rtol = args.rtol or (sweeps.QUICK["rtol"] if args.quick else sweeps.REFERENCE_RTOL)
    options = {"dataset": args.dataset, "split": args.split, "image_size": args.image_size,
               "data_points": args.data_points, "processes": args.processes, "nfes": nfes, "batch": batch,
               "seed": args.seed, "rtol": rtol, "out": args.out, "threads": args.threads}
    result = exact_score_benchmark(args.dataset, args.out, tuple(args.processes), nfes, batch, args.seed,
                                   args.split, args.image_size, rtol, args.data_points, command=_command(args, options))
    print(f"results: {args.out / 'results.json'}; plots: " + ", ".join(str(args.out / f"{p}.png") for p in args.processes))
    print(f"machine: {result['machine']['cores']} cores, torch {result['machine']['torch']} "
          f"({result['machine']['torch_threads']} threads); {result['seconds']['total']} s")
    print(format_summary(result["summary"]))
    return 0


def run_coefficients(args) -> int:
    from ..bench.coefficient_times import coefficient_build_times
    from ..atomic import write_json

    _prepare(args)
    options = {"processes": args.processes, "nfes": args.nfes, "repeats": args.repeats,
               "bdm_image_size": args.bdm_image_size, "out": args.out, "threads": args.threads}
    result = coefficient_build_times(tuple(args.processes), tuple(args.nfes), repeats=args.repeats,
                                     bdm_image_size=args.bdm_image_size, command=_command(args, options))
    write_json(args.out / "results.json", result)
    print(f"results: {args.out / 'results.json'}")
    for name, worst in result["summary"].items():
        print(f"{name}: slowest median build {worst['slowest_total_cpu_s']:.3g} s CPU ({worst['its_total_s']:.3g} s wall) "
              f"at {worst['at']}; R solve {worst['median_r_solve_cpu_s']:.3g} s CPU")
    return 0

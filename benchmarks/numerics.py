"""float32 against float64 sampling on the exact score of digits: every sampler on VP, CLD and BDM, NFE 5 to 1000.

    OMP_NUM_THREADS=1 python benchmarks/numerics.py --out benchmarks/numerics

Both runs of a (process, sampler, NFE) start from the same u_T (drawn in float64, rounded for the float32 run),
draw the same noise (the samplers draw it in float64 and cast it to the state's dtype) and call the same exact ε,
computed in float64 and rounded to float32 for the float32 run; so the difference of their final x is what the
sampler's float32 arithmetic does. Writes results.json (every record, the worst cases, the machine, the command)
and differences.png (largest absolute difference against NFE, one panel per process).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

import gddim
from gddim.atomic import write_json
from gddim.bench.records import benchmark_images, machine_info
from gddim.errors import SettingsError
from gddim.processes import make_process
from gddim.sampling import SamplerError, check_sampler
from gddim.spec import SamplerSpec

NFES = (5, 10, 20, 50, 100, 200, 500, 1000)
QUICK = {"batch": 4, "nfes": (5, 10), "data_points": 100}  # the smoke-test size of --quick
# (sampler spec, the processes it runs on or None for all): add a sampler with one line
SAMPLERS = [
    *((SamplerSpec(order=q), None) for q in range(4)),
    *((SamplerSpec(order=q, parameterization="L"), None) for q in range(4)),
    (SamplerSpec(lam=0.5), None),
    (SamplerSpec(lam=1.0), None),
    (SamplerSpec("euler"), None),
    (SamplerSpec("em"), None),
    (SamplerSpec("ancestral"), ("vp", "bdm")),  # on CLD it is the gddim:lam=1 record
    (SamplerSpec("sscs"), ("cld",)),
]
PROCESSES = ("vp", "cld", "bdm")
WORST_PER_PROCESS = 5


def compare(x32: torch.Tensor | None, x64: torch.Tensor | None) -> dict:
    """Largest absolute and relative difference of the final x, and the non-finite entries of each run (None: the
    run stopped because ε came back non-finite, which happens once the state is)."""
    nonfinite = lambda x: None if x is None else int((~torch.isfinite(x)).sum())
    record = {"nonfinite_float32": nonfinite(x32), "nonfinite_float64": nonfinite(x64),
              "max_abs_x_float64": None, "max_abs_difference": None, "relative_difference": None}
    if record["nonfinite_float64"] == 0:
        record["max_abs_x_float64"] = float(x64.abs().max())
        if record["nonfinite_float32"] == 0:
            diff = float((x32.double() - x64).abs().max())
            record.update(max_abs_difference=diff, relative_difference=diff / record["max_abs_x_float64"])
    return record


def run_pair(process, eps64, u_T: torch.Tensor, nfe: int, options: dict, seed: int) -> dict:
    """One sampler at one NFE in float64 and in float32 from the same start, noise and exact ε."""
    eps32 = lambda u, t: eps64(u.double(), t.double()).float()
    finals, record = {}, {}
    for dtype, eps_fn in ((torch.float64, eps64), (torch.float32, eps32)):
        key, start = str(dtype).removeprefix("torch."), time.perf_counter()
        try:
            finals[key] = gddim.sample(process, eps_fn, u_T.to(dtype), nfe,
                                       generator=torch.Generator().manual_seed(seed), **options)
        except SamplerError as err:
            finals[key] = None
            record[f"error_{key}"] = str(err)
        record[f"seconds_{key}"] = round(time.perf_counter() - start, 3)
    return {**compare(finals["float32"], finals["float64"]), **record}


def sweep(name: str, data: torch.Tensor, nfes, batch: int, seed: int, progress: bool = True) -> list[dict]:
    process = make_process(name, tuple(data.shape[-2:]))
    eps64 = gddim.exact_eps(process, data.double())
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    records = []
    for spec, only in SAMPLERS:
        if only is not None and name not in only:
            continue
        for nfe in nfes:
            try:
                check_sampler(process, nfe, **spec.options())
            except (SamplerError, SettingsError):  # too few steps for the order: not a numerics case
                continue
            records.append({"process": name, "sampler": spec.label, "nfe": nfe,
                            **run_pair(process, eps64, u_T, nfe, spec.options(), seed + 1)})
            if progress:
                r = records[-1]
                print(f"{name} {spec.label:<18} nfe {nfe:4d}: max |x32 - x64| {r['max_abs_difference']}, "
                      f"non-finite {r['nonfinite_float32']} / {r['nonfinite_float64']}", flush=True)
    return records


def worst_cases(records: list[dict]) -> dict:
    """Per process: the records with the largest difference, and every record with a non-finite value."""
    out = {}
    for name in PROCESSES:
        rows = [r for r in records if r["process"] == name]
        ranked = sorted((r for r in rows if r["max_abs_difference"] is not None),
                        key=lambda r: r["max_abs_difference"], reverse=True)
        keep = ("sampler", "nfe", "max_abs_difference", "relative_difference")
        out[name] = {"largest": [{k: r[k] for k in keep} for r in ranked[:WORST_PER_PROCESS]],
                     "nonfinite": [{k: r[k] for k in ("sampler", "nfe", "nonfinite_float32", "nonfinite_float64")}
                                   for r in rows if r["max_abs_difference"] is None]}
    return out


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PROCESSES if any(r["process"] == n for r in records)]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.8), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, name in zip(axes[0], names):
        for color, (spec, _) in zip(colors, SAMPLERS):
            rows = [r for r in records if r["process"] == name and r["sampler"] == spec.label
                    and r["max_abs_difference"] is not None]
            if rows:
                ax.plot([r["nfe"] for r in rows], [max(r["max_abs_difference"], 1e-17) for r in rows], "o-",
                        color=color, ms=3, label=spec.label)
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="max |x float32 - x float64|", title=name.upper())
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "numerics")
    p.add_argument("--processes", default=",".join(PROCESSES), help="comma-separated, from vp,cld,bdm")
    p.add_argument("--nfes", help=f"comma-separated NFEs (default {','.join(map(str, NFES))})")
    p.add_argument("--batch", type=int, help="starting points (default 64)")
    p.add_argument("--data-points", type=int, help="use the first N digits images (default all 1797)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke-test size: batch {batch}, NFE {nfes}, "
                   "{data_points} images".format(**QUICK))
    args = p.parse_args(argv)
    names = [n for n in args.processes.split(",") if n]
    if not names or set(names) - set(PROCESSES):
        p.error(f"--processes {args.processes!r}: choose from {','.join(PROCESSES)}")
    nfes = tuple(int(v) for v in args.nfes.split(",")) if args.nfes else QUICK["nfes"] if args.quick else NFES
    batch = args.batch or (QUICK["batch"] if args.quick else 64)
    data = benchmark_images("digits")[: args.data_points or (QUICK["data_points"] if args.quick else None)]
    command = shlex.join(["python", "benchmarks/numerics.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info(device="cpu")
    print(f"machine: {machine}\ncommand: {command}")
    began = time.perf_counter()
    records = [r for name in names for r in sweep(name, data, nfes, batch, args.seed)]
    result = {"command": command, "machine": machine, "dataset": "digits", "data_points": len(data),
              "batch": batch, "seed": args.seed, "nfes": list(nfes), "seconds": round(time.perf_counter() - began, 1),
              "samplers": [{"sampler": spec.label, "processes": only} for spec, only in SAMPLERS],
              "worst": worst_cases(records), "records": records}
    write_json(args.out / "results.json", result)
    plot(records, args.out / "differences.png")
    for name, worst in result["worst"].items():
        for r in worst["largest"][:1]:
            print(f"{name}: largest difference {r['max_abs_difference']:.3g} ({r['sampler']}, NFE {r['nfe']}); "
                  f"{len(worst['nonfinite'])} runs with non-finite values")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'differences.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Trained-model benchmark (BENCHMARKS.md §2): VP, CLD and BDM trained alike on one data set, then every
sampler swept over NFE; quality is the Fréchet distance on the data set's classifier features.

    python benchmarks/trained_models.py --dataset digits                 # train (or resume) + sweep + claims
    python benchmarks/trained_models.py --dataset fashion-mnist --image-size 16 --preset small --device cuda
    python benchmarks/trained_models.py --throughput                     # images/s: 1 process vs 2 (gloo)

Writes into benchmarks/trained_<dataset>/: runs/<process>/ (checkpoints), per process <process>/training.json,
metrics.json, quality_vs_nfe.png, grids/ and claims.json, and from those results.json (every record) and
summary.json (the numbers the paper's claims are about). A finished training run is reused and an interrupted
one resumed; an interrupted sweep continues with the samplers it had not finished; claims start over (each
finished seed is saved as it completes).
Each process only writes its own folder, so one invocation per process (--processes cld) may run at the same
time, e.g. on one GPU; `--stages report` then rebuilds results.json and summary.json from what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gddim.atomic import write_json
from gddim.bench.records import machine_info
from gddim.checkpoints import load_checkpoint
from gddim.data import load_images
from gddim.evaluation import evaluate, save_metrics_and_plot
from gddim.networks import preset
from gddim.processes import make_process
from gddim.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
NFES = (5, 10, 20, 50, 100, 200)
LONG_NFES = (500, 1000)


def samplers_for(process: str) -> tuple[list[str], list[str]]:
    """(every sampler, swept over NFES; the baselines, also run at LONG_NFES) for one process."""
    every = [f"gddim:q={q}" for q in range(4)] + ["gddim:lam=0.5", "euler", "em"]
    if process == "cld":  # R and L differ only for CLD (VP and BDM have R = L); SSCS is CLD's own sampler
        every += ["gddim:q=0:param=L", "gddim:q=2:param=L", "gddim:lam=1", "sscs"]
        return every, ["em", "sscs"]
    return every + ["ancestral"], ["em", "ancestral"]  # the ancestral step is stochastic gDDIM at λ = 1


def train_one(process_name: str, images: torch.Tensor, args, out: Path) -> dict:
    run = out / "runs" / process_name
    config = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=100, ema_decay=args.ema,
                         seed=args.seed, ckpt_every=500, sample_every=0)
    began = time.perf_counter()
    result = train(make_process(process_name, tuple(images.shape[-2:])), images, run, preset(args.preset), config,
                   {"source": args.dataset, "image_size": args.image_size}, progress=not args.quiet,
                   device=args.device)
    if result.interrupted:
        raise KeyboardInterrupt
    path = out / process_name / "training.json"
    earlier = json.loads(path.read_text()) if path.exists() else None
    if earlier and not result.losses:  # a finished run was reused: keep the record of its training
        return earlier
    seconds = time.perf_counter() - began + (earlier["seconds"] if earlier else 0.0)  # a run taken further adds up
    record = {"process": process_name, "steps": result.step, "seconds": seconds,
              "images_per_second": result.images_per_second, "final_loss_mean_100": _tail_loss(run),
              "batch": args.batch, "lr": args.lr, "ema_decay": args.ema, "preset": args.preset,
              "machine": machine_info(device=args.device)}
    write_json(path, record, indent=2)
    return record


def _tail_loss(run: Path) -> float:
    rows = (run / "loss.csv").read_text().splitlines()[1:]
    tail = [float(r.split(",")[1]) for r in rows[-100:]]
    return sum(tail) / len(tail)


def sweep(process_name: str, images: torch.Tensor, args, out: Path) -> dict:
    """Every sampler over NFES (baselines also over LONG_NFES); metrics.json and the plot grow sampler by sampler,
    so an interrupted sweep keeps what it measured."""
    began = time.perf_counter()
    every, baselines = samplers_for(process_name)
    checkpoint, folder = load_checkpoint(out / "runs" / process_name), out / process_name
    common = {"n": args.n, "seed": args.seed, "progress": not args.quiet, "device": args.device,
              "batch": args.eval_batch, "real": images, "out_dir": folder, "save_metrics": False}
    nfes, long_nfes = args.nfes or NFES, args.long_nfes or LONG_NFES
    jobs = [(spec, nfes, (10, 50)) for spec in every] + [(spec, long_nfes, (max(long_nfes),)) for spec in baselines]
    merged = _resumable(folder / "metrics.json", checkpoint.step, args)
    done = {(r["label"], r["nfe"]) for r in merged["records"]} if merged else set()
    for spec, job_nfes, grid_nfes in jobs:
        if all((spec, nfe) in done for nfe in job_nfes):  # the specs above are written in canonical form
            continue
        part = evaluate(checkpoint, [spec], list(job_nfes), grid_nfes=grid_nfes, **common)
        records = (merged["records"] if merged else []) + part["records"]
        merged = {**part, "records": records, "seconds": time.perf_counter() - began,
                  "machine": machine_info(device=args.device)}
        save_metrics_and_plot(merged, folder)
    return merged


def _resumable(path: Path, step: int, args) -> dict | None:
    """The metrics of an interrupted sweep of the same checkpoint step, sample count and seed, if any."""
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    return old if (old["step"], old["n"], old["seed"]) == (step, args.n, args.seed) else None


# (sampler, NFEs) behind each claim, re-measured with more samples over several seeds
CLAIMS = {
    "cld": [("gddim:q=2", (10, 20, 50, 100, 200)), ("em", (50, 100, 200, 1000)), ("gddim:q=0", (10, 20, 50)),
            ("gddim:q=0:param=L", (10, 20, 50)), ("gddim:q=2:param=L", (10, 20, 50)), ("gddim:lam=0.5", (10, 20)),
            ("gddim:lam=1", (10, 20))],
    "bdm": [("gddim:q=0", (10, 20, 50, 100)), ("gddim:q=2", (10, 20, 50, 100)), ("gddim:lam=0.5", (10, 20)),
            ("ancestral", (10, 20, 50, 100, 200, 500, 1000))],
    "vp": [("gddim:q=0", (10, 20)), ("gddim:q=2", (10, 20)), ("gddim:lam=0.5", (10, 20)), ("ancestral", (10, 20))],
}
SLACK = 0.05  # "reaches a target" = mean FD within 5% of it


def claims_nfes(process_name: str, max_nfe: int | None) -> list[tuple[str, tuple[int, ...]]]:
    """CLAIMS of one process, without the NFEs above max_nfe (a smoke test's size) when it is given."""
    kept = [(spec, tuple(n for n in nfes if max_nfe is None or n <= max_nfe)) for spec, nfes in CLAIMS[process_name]]
    return [(spec, nfes) for spec, nfes in kept if nfes]


def claims(process_name: str, images: torch.Tensor, args, out: Path) -> dict:
    """Mean and spread over seeds (each seed: other samples and another real reference subset) of CLAIMS;
    claims.json is rewritten after every finished seed."""
    began, runs = time.perf_counter(), []
    checkpoint = load_checkpoint(out / "runs" / process_name)
    for seed in range(args.claims_seeds):
        for spec, nfes in claims_nfes(process_name, args.claims_max_nfe):
            runs += evaluate(checkpoint, [spec], list(nfes), n=args.claims_n, seed=seed, device=args.device,
                             batch=args.eval_batch, real=images)["records"]
        result = {"process": process_name, "n": args.claims_n, "seeds": seed + 1, "rows": _claims_rows(runs),
                  "seconds": time.perf_counter() - began, "machine": machine_info(device=args.device)}
        write_json(out / process_name / "claims.json", result, indent=2)
    return result


def _claims_rows(runs: list[dict]) -> list[dict]:
    table = {}
    for r in runs:  # seeds in order, so that fd_per_seed lists pair up across samplers
        table.setdefault((r["label"], r["nfe"]), []).append((r["fd"], r["floor"]))
    rows = []
    for (label, nfe), values in table.items():
        scores = [v[0] for v in values]
        diverged = None in scores  # a sampler that diverged on any seed has no mean
        rows.append({"label": label, "nfe": nfe, "fd_mean": None if diverged else statistics.mean(scores),
                     "fd_std": statistics.stdev(scores) if len(scores) > 1 and not diverged else None,
                     "floor_mean": statistics.mean(v[1] for v in values), "fd_per_seed": scores})
    return rows


def fd(rows: list[dict], label: str, nfe: int) -> float | None:
    return next((r["fd_mean"] for r in rows if r["label"] == label and r["nfe"] == nfe), None)


def paired(rows: list[dict], a: str, b: str, nfe: int) -> dict | None:
    """FD(a) - FD(b) at one NFE, seed by seed (same starting noise and real subset): mean, std, per seed."""
    fa = next((r["fd_per_seed"] for r in rows if r["label"] == a and r["nfe"] == nfe), None)
    fb = next((r["fd_per_seed"] for r in rows if r["label"] == b and r["nfe"] == nfe), None)
    if fa is None or fb is None or None in fa + fb:
        return None
    diff = [x - y for x, y in zip(fa, fb)]
    return {"mean": statistics.mean(diff), "std": statistics.stdev(diff) if len(diff) > 1 else None, "per_seed": diff}


def nfe_to_reach(rows: list[dict], label: str, target: float) -> int | None:
    """The smallest measured NFE whose mean FD is within SLACK of target."""
    if target is None:
        return None
    hits = sorted(r["nfe"] for r in rows
                  if r["label"] == label and r["fd_mean"] is not None and r["fd_mean"] <= target * (1 + SLACK))
    return hits[0] if hits else None


def summarize(results: dict[str, dict]) -> dict:
    """The paper's claims in miniature, from the claims runs (None where a sampler never reached the target)."""
    out = {"slack": SLACK}
    if "cld" in results:
        r = results["cld"]["rows"]
        target = fd(r, "em", 1000)
        out["cld"] = {"em_1000_fd": target, "gddim_q2_nfe_matching_em_1000": nfe_to_reach(r, "gddim:q=2", target),
                      "em_nfe_matching_em_1000": nfe_to_reach(r, "em", target),
                      "gddim_q2_fd": {nfe: fd(r, "gddim:q=2", nfe) for nfe in (10, 20, 50, 100, 200)},
                      "R_vs_L": {nfe: {"q=0 R": fd(r, "gddim:q=0", nfe), "q=0 L": fd(r, "gddim:q=0:param=L", nfe),
                                       "q=2 R": fd(r, "gddim:q=2", nfe), "q=2 L": fd(r, "gddim:q=2:param=L", nfe),
                                       "q=2 L minus R (paired)": paired(r, "gddim:q=2:param=L", "gddim:q=2", nfe)}
                                 for nfe in (10, 20, 50)}}
    if "bdm" in results:
        r = results["bdm"]["rows"]
        target = fd(r, "ancestral", 1000)
        gddim_nfe = {label: nfe_to_reach(r, label, target) for label in ("gddim:q=0", "gddim:q=2")}
        reached = [n for n in gddim_nfe.values() if n is not None]
        ancestral_nfe = nfe_to_reach(r, "ancestral", target)
        out["bdm"] = {"ancestral_1000_fd": target, "gddim_nfe_matching_ancestral_1000": gddim_nfe,
                      "ancestral_nfe_matching_ancestral_1000": ancestral_nfe,
                      "acceleration_vs_1000": 1000 / min(reached) if reached else None,
                      "acceleration_vs_ancestral_nfe": ancestral_nfe / min(reached) if reached and ancestral_nfe else None}
    lam1 = lambda name: "gddim:lam=1" if name == "cld" else "ancestral"
    out["lambda_at_small_nfe"] = {
        name: {nfe: {"lam=0 (q=0)": fd(res["rows"], "gddim:q=0", nfe), "lam=0.5": fd(res["rows"], "gddim:lam=0.5", nfe),
                     "lam=1": fd(res["rows"], lam1(name), nfe), "lam=0 q=2": fd(res["rows"], "gddim:q=2", nfe),
                     "lam=0.5 minus lam=0 (paired)": paired(res["rows"], "gddim:lam=0.5", "gddim:q=0", nfe),
                     "lam=1 minus lam=0 (paired)": paired(res["rows"], lam1(name), "gddim:q=0", nfe)}
               for nfe in (10, 20)}
        for name, res in results.items()}
    return out


# ---- throughput --------------------------------------------------------------------------------------------

def throughput_worker(args) -> None:
    """One training run of args.steps steps; rank 0 writes steady-state images/s (steps after the 10th)."""
    images = load_images(args.dataset, "train", args.image_size)
    marks = {}

    def clock(step, loss):
        if step in (10, args.steps):
            marks[step] = time.perf_counter()

    out = Path(args.worker_out)
    result = train(make_process("cld", tuple(images.shape[-2:])), images, out / "run", preset(args.preset),
                   TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, ckpt_every=10**9),
                   {"source": args.dataset, "image_size": args.image_size}, callback=clock, progress=False,
                   device="cpu")  # the comparison is CPU threads against gloo processes, also on a GPU machine
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        rate = (args.steps - 10) * args.batch * world / (marks[args.steps] - marks[10])
        write_json(out / "rate.json", {"world_size": world, "threads_per_process": torch.get_num_threads(),
                                        "images_per_second": rate, "global_batch": args.batch * world,
                                        "total_images_per_second": result.images_per_second})


def throughput(args, out: Path) -> dict:
    """1 process (2 threads, 1 thread) and torchrun --nproc_per_node=2 (gloo, 1 thread each), interleaved
    args.repeats times so that the machine's load hits every setting alike; medians and their ratios."""
    import tempfile

    script = str(Path(__file__).resolve())
    common = ["--dataset", args.dataset, "--preset", args.preset, "--batch", str(args.batch), "--steps",
              str(args.steps)] + (["--image-size", str(args.image_size)] if args.image_size else [])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script]
    runs = {"1 process, 2 threads": ([sys.executable, script], "2"),
            "1 process, 1 thread": ([sys.executable, script], "1"),
            "2 processes (torchrun, gloo), 1 thread each": (torchrun, "1")}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (launcher, threads) in runs.items():
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "OMP_NUM_THREADS": threads}
                subprocess.run(launcher + common + ["--worker-out", tmp], check=True, env=env)
                rates[name].append(json.loads((Path(tmp) / "rate.json").read_text())["images_per_second"])
            print(f"{name}: {rates[name][-1]:.0f} images/s")
    median = {name: statistics.median(values) for name, values in rates.items()}
    two = median["2 processes (torchrun, gloo), 1 thread each"]
    report = {"machine": machine_info(device="cpu"), "network": args.preset, "dataset": args.dataset,
              "batch_per_process": args.batch,
              "steps": args.steps, "images_per_second_median": median, "images_per_second_runs": rates,
              "ratio_2proc_over_1proc_1thread": two / median["1 process, 1 thread"],
              "ratio_2proc_over_1proc_2threads": two / median["1 process, 2 threads"],
              "command": "python benchmarks/trained_models.py --throughput"}
    write_json(out / "throughput.json", report, indent=2)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--image-size", type=int)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--processes", default="vp,cld,bdm")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--ema", type=float, default=TrainConfig.ema_decay, help="EMA decay of the weights")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--n", type=int, default=250, help="samples per Fréchet distance in the sweep")
    p.add_argument("--claims-n", type=int, default=500, help="samples per Fréchet distance in the claims runs")
    p.add_argument("--claims-seeds", type=int, default=3)
    p.add_argument("--claims-max-nfe", type=int, help="leave out the claims' NFEs above this (a smoke test's size)")
    p.add_argument("--eval-batch", type=int, default=500, help="samples drawn per batch when evaluating")
    nfe_list = lambda text: tuple(int(v) for v in text.split(","))
    p.add_argument("--nfes", type=nfe_list, help=f"NFEs of the sweep (default {','.join(map(str, NFES))})")
    p.add_argument("--long-nfes", type=nfe_list,
                   help=f"NFEs only the baselines also run at (default {','.join(map(str, LONG_NFES))})")
    p.add_argument("--stages", default="train,sweep,claims", help="which of train,sweep,claims to run (a trained "
                   "run is reused); results.json and summary.json are rebuilt after every invocation, alone with 'report'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="default benchmarks/trained_<dataset>")
    p.add_argument("--throughput", action="store_true", help="measure training images/s, 1 vs 2 processes")
    p.add_argument("--repeats", type=int, default=3, help="with --throughput: interleaved repeats of each setting")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker_out:
        return throughput_worker(args)
    out = Path(args.out) if args.out else HERE / f"trained_{args.dataset}"
    if args.throughput:
        args.steps = min(args.steps, 60)
        if args.steps <= 10:
            p.error("--throughput times the steps after the 10th: give --steps above 10")
        throughput(args, out)
        return
    if args.claims_seeds < 1 or args.n < 2 or args.claims_n < 2:
        p.error("--claims-seeds must be >= 1 and --n, --claims-n >= 2")
    stages = set(args.stages.split(","))
    unknown = stages - {"train", "sweep", "claims", "report"}
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; choose from train,sweep,claims,report")
    out.mkdir(parents=True, exist_ok=True)
    _log_command(out, sys.argv[1:] if argv is None else argv)
    if stages - {"report"}:
        images = load_images(args.dataset, "train", args.image_size)
        for name in args.processes.split(","):
            if "train" in stages:
                train_one(name, images, args, out)
            if "sweep" in stages:
                sweep(name, images, args, out)
            if "claims" in stages:
                claims(name, images, args, out)
    summary = report(out, args.dataset)
    if summary:
        print(json.dumps(summary, indent=2))


def _log_command(out: Path, argv: list[str]) -> None:
    with open(out / "commands.txt", "a") as log:
        log.write(" ".join(["python", "benchmarks/trained_models.py", *argv]) + "\n")


def report(out: Path, dataset: str) -> dict | None:
    """results.json from every process folder's training/metrics/claims files; summary.json from the claims."""
    parts = {"training": "training.json", "sweeps": "metrics.json", "claims": "claims.json"}
    results = {"dataset": dataset, "commands": (out / "commands.txt").read_text().splitlines()}
    for key, file in parts.items():
        results[key] = {name: json.loads((out / name / file).read_text())
                        for name in ("vp", "cld", "bdm") if (out / name / file).exists()}
    results["summary"] = summarize(results["claims"]) if results["claims"] else None
    write_json(out / "results.json", results, indent=2)
    if results["summary"]:
        write_json(out / "summary.json", results["summary"], indent=2)
    return results["summary"]


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # training kept its checkpoint, sweeps and claims their finished parts
        sys.exit("interrupted: run the same command again to resume")

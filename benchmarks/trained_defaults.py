"""The default sampler on trained models (issue 9): its Fréchet distance at NFE 10 against the paper's q = 2 at
NFE 20, for VP, CLD and BDM, beside the candidates that could replace it (lower order, no corrector, log-SNR
interpolation, the final data step), each at NFE 10 and 20 with several seeds.

    OMP_NUM_THREADS=1 python benchmarks/trained_models.py --dataset digits --stages train --quiet   # if runs/ is gone
    OMP_NUM_THREADS=1 python benchmarks/trained_defaults.py --dataset digits

Reads the checkpoints of benchmarks/trained_<dataset>/runs/<process>/ and writes defaults.json beside them: per
process and (sampler, NFE) the mean and spread over seeds of the Fréchet distance (n samples against n training
images, the seed picks both), and the seed-by-seed difference default@10 − q2@20 (the goal: at most 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from gddim.atomic import write_json
from gddim.bench.records import machine_info
from gddim.checkpoints import load_checkpoint
from gddim.data import load_images
from gddim.evaluation import evaluate

HERE = Path(__file__).resolve().parent
DEFAULT, PAPER = "gddim", "gddim:q=2"
CANDIDATES = [DEFAULT, PAPER, "gddim:q=3:pred=data:corr=1:lof=1", "gddim:q=1:pred=data:corr=1:lof=1",
              "gddim:q=3:pred=data:corr=0:lof=1", "gddim:q=3:pred=data:corr=1:lof=1:interp=logsnr",
              "gddim:q=2:pred=data:corr=1:lof=1:interp=logsnr", "gddim:q=3:pred=data:corr=1:lof=1:final=data"]


def rows_of(records: list[dict]) -> list[dict]:
    """Mean, spread and per-seed values of each (sampler, NFE); records come seed by seed."""
    table: dict = {}
    for r in records:
        table.setdefault((r["label"], r["nfe"]), []).append(r["fd"])
    rows = []
    for (label, nfe), scores in table.items():
        finite = None not in scores
        rows.append({"label": label, "nfe": nfe, "fd_mean": statistics.mean(scores) if finite else None,
                     "fd_std": statistics.stdev(scores) if finite and len(scores) > 1 else None,
                     "fd_per_seed": scores})
    return rows


def goal(rows: list[dict]) -> dict:
    """default@10 − q2@20 seed by seed (same noise and real subset per seed)."""
    per_seed = lambda label, nfe: next(r["fd_per_seed"] for r in rows if r["label"] == label and r["nfe"] == nfe)
    a, b = per_seed(DEFAULT, 10), per_seed(PAPER, 20)
    if None in a + b:
        return {"default_10_minus_q2_20": None}
    diff = [x - y for x, y in zip(a, b)]
    return {"default_10_minus_q2_20": {"mean": statistics.mean(diff), "per_seed": diff}, "met": max(diff) <= 0}


def measure(process_name: str, images, args, out: Path) -> dict:
    checkpoint = load_checkpoint(out / "runs" / process_name)
    records = []
    for seed in range(args.seeds):
        for spec in CANDIDATES:
            records += evaluate(checkpoint, [spec], list(args.nfes), n=args.n, seed=seed, batch=args.n, real=images,
                                save_metrics=False)["records"]
        print(f"{process_name}: seed {seed} done", file=sys.stderr)
    rows = rows_of(records)
    return {"rows": rows, "goal": goal(rows)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--image-size", type=int)
    p.add_argument("--processes", default="vp,cld,bdm")
    p.add_argument("--n", type=int, default=500, help="samples (and real images) per Fréchet distance")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--nfes", type=int, nargs="+", default=[10, 20])
    p.add_argument("--out", type=Path, help="default benchmarks/trained_<dataset>")
    args = p.parse_args(argv)
    out = args.out or HERE / f"trained_{args.dataset}"
    began = time.perf_counter()
    images = load_images(args.dataset, "train", args.image_size)
    result = {"benchmark": "default sampler vs the paper's q = 2 on trained models (issue 9)", "n": args.n,
              "seeds": args.seeds, "nfes": args.nfes, "default": DEFAULT, "paper": PAPER,
              "processes": {name: measure(name, images, args, out) for name in args.processes.split(",")}}
    result.update(seconds=round(time.perf_counter() - began, 1), machine=machine_info(device="cpu"),
                  command="OMP_NUM_THREADS=1 python benchmarks/trained_defaults.py " + " ".join(argv or sys.argv[1:]))
    write_json(out / "defaults.json", result)
    for name, res in result["processes"].items():
        for r in sorted(res["rows"], key=lambda r: (r["nfe"], r["label"])):
            print(f"{name} NFE {r['nfe']:3d} {r['label']:50s} {r['fd_mean']}")
        print(f"{name}: goal {res['goal']}")


if __name__ == "__main__":
    main()

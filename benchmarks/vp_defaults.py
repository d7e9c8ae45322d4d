"""Candidates for gDDIM's VP default against the best diffusers peer of a committed peers run (issue 9).

    python benchmarks/vp_defaults.py --peers benchmarks/peers_digits/results.json --out benchmarks/vp_defaults/digits.json
    python benchmarks/vp_defaults.py --peers benchmarks/peers_fashion-mnist/results.json --out benchmarks/vp_defaults/fashion-mnist.json

Every sampler spec (gddim.spec) runs on every grid (a named grid of gddim.grids or "trailing", the peers' own
times) from the peers run's start noise (same data, batch and seed, read from its settings) through the driver of
benchmarks/peers.py (gddim.bench.peers, no peers), and each path error is divided by the best peer's path error at
that NFE in the peers file: below 0.8 meets issue 9's goal. Writes one JSON file and prints the table of ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gddim
from gddim.bench import peers
from gddim.bench.diffusers_vp import DiffusersVP
from gddim.bench.records import write_json
from gddim.data import load_images
from gddim.spec import SamplerSpec

GRIDS = "quadratic,uniform,logsnr,karras,tuned,trailing"
# the default; the default at order 2 and 1; the paper's q = 2; the default with another interpolation, without lof
SAMPLERS = ("gddim,gddim:q=2:pred=data:corr=1:lof=1,gddim:q=1:pred=data:corr=1:lof=1,gddim:q=2,gddim:interp=logsnr,"
            "gddim:interp=sqrt_t,gddim:lof=0")


def best_peers(peers_file: dict) -> dict[int, dict]:
    """The best peer's path-error entry (sampler, setting, error) per NFE of a peers run."""
    return {row["nfe"]: row["path_error"]["best_peer"] for row in peers_file["summary"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", required=True, help="results.json of benchmarks/peers.py (data, batch, seed, best peers)")
    p.add_argument("--grids", default=GRIDS, help="comma-separated grids (named grids of gddim.grids, or trailing)")
    p.add_argument("--samplers", default=SAMPLERS, help="comma-separated sampler specs (gddim.spec)")
    p.add_argument("--nfe", help="comma-separated NFEs (default: the peers run's)")
    p.add_argument("--batch", type=int, help="smaller batch for a trial (ratios then compare unlike batches)")
    p.add_argument("--n-data", type=int, help="fewer data points for a trial (default: the peers run's)")
    p.add_argument("--rtol", type=float, default=1e-10, help="reference ODE tolerance")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    peers_file = json.loads(Path(args.peers).read_text())
    settings = peers_file["settings"]
    data = load_images(settings["dataset"], "train", settings["image_size"])[: args.n_data or settings["n_data"]]
    nfes = tuple(int(v) for v in args.nfe.split(",")) if args.nfe else tuple(settings["nfes"])
    specs = [SamplerSpec.parse(text) for text in args.samplers.split(",")]
    variants = tuple(peers.GddimVariant(spec, grid) for grid in args.grids.split(",") for spec in specs)
    start = time.perf_counter()
    result = peers.benchmark(DiffusersVP(gddim.VP(), peers=()), data, nfes, args.batch or settings["batch"],
                             settings["seed"], variants=variants, default=variants[0], rtol=args.rtol,
                             progress=lambda line: None)
    best = best_peers(peers_file)
    records = [{k: r[k] for k in ("sampler", "setting", "nfe", "path_error", "data_error", "model_calls")}
               | {"ratio_to_best_peer": r["path_error"] / best[r["nfe"]]["error"]} for r in result["records"]]
    table = {f"{v.spec.label} on {v.grid}": [next(r["ratio_to_best_peer"] for r in records
                                                   if (r["sampler"], r["setting"], r["nfe"]) == (*v.key(), nfe))
                                              for nfe in nfes] for v in variants}
    command = " ".join(["python benchmarks/vp_defaults.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "peers_file": args.peers, "nfes": list(nfes),
                          "best_peer": {str(n): best[n] for n in nfes}, "ratio_table": table, "records": records,
                          "reference": result["reference"], "settings": {**result["settings"], **{
                              k: settings[k] for k in ("dataset", "image_size", "n_data")}},
                          "seconds": round(time.perf_counter() - start, 1), "machine": result["machine"]})
    print("path error / best peer's at NFE " + ", ".join(map(str, nfes)))
    for name, ratios in table.items():
        print(f"{name:>45}: " + " ".join(f"{r:8.3g}" for r in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How much rounding a checkpoint's EMA weights to float16 moves the Fréchet distance (digits CLD and BDM runs).

The second Fashion-MNIST evaluation run read its checkpoints with the EMA weights rounded to float16 (to move them
between machines); this measures that rounding on the digits models of trained_models.py, same samples and
reference set for both:

    OMP_NUM_THREADS=1 python benchmarks/fp16_weights.py     # needs benchmarks/trained_digits/runs/ (5 min)

Writes benchmarks/trained_digits/fp16_weights.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gddim.atomic import write_json
from gddim.evaluation import evaluate
from gddim.checkpoints import find_checkpoint

HERE = Path(__file__).resolve().parent
SAMPLERS, NFES, N = ["gddim:q=2", "em"], [20, 50], 500
QUICK = {"nfes": [5], "n": 8}  # the smoke-test size of --quick


def rounded_copy(run: Path, into: Path) -> Path:
    """A run folder holding the latest checkpoint of `run` with only its EMA weights, rounded to float16."""
    source = find_checkpoint(run)
    target = into / "checkpoints" / source.name
    target.mkdir(parents=True)
    shutil.copy(source / "config.json", target / "config.json")
    weights = load_file(str(source / "weights.safetensors"))
    save_file({k: v.half() for k, v in weights.items() if k.startswith("ema.")}, str(target / "weights.safetensors"))
    (target.parent / "LATEST").write_text(source.name + "\n")
    return into


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=HERE / "trained_digits" / "runs", help="folder of the cld and bdm runs")
    p.add_argument("--out", type=Path, default=HERE / "trained_digits" / "fp16_weights.json")
    p.add_argument("--quick", action="store_true", help="smoke-test size: NFE {nfes}, n {n}".format(**QUICK))
    args = p.parse_args(argv)
    nfes, n = (QUICK["nfes"], QUICK["n"]) if args.quick else (NFES, N)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for process in ("cld", "bdm"):
            run = args.runs / process
            for weights, folder in (("float32", run), ("float16", rounded_copy(run, Path(tmp) / process))):
                for r in evaluate(folder, SAMPLERS, nfes, n=n, seed=0)["records"]:
                    rows.append({"process": process, "weights": weights, "label": r["label"], "nfe": r["nfe"],
                                 "fd": r["fd"]})
                    print(rows[-1])
    fd = {(r["process"], r["weights"], r["label"], r["nfe"]): r["fd"] for r in rows}
    diffs = [abs(fd[p, "float16", s, k] - fd[p, "float32", s, k]) for p, w, s, k in fd if w == "float32"]
    out = {"n": n, "seed": 0, "records": rows, "max_abs_difference": max(diffs),
           "command": "OMP_NUM_THREADS=1 python benchmarks/fp16_weights.py"}
    write_json(args.out, out, indent=2)
    print("largest change of the Fréchet distance:", max(diffs))


if __name__ == "__main__":
    main()

"""`gddim quickstart`: train a tiny CLD model on digits and compare gDDIM with Euler-Maruyama on it."""

from __future__ import annotations

import sys
from pathlib import Path

from .options import integer, non_empty, non_negative, positive


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="train a small CLD model on digits, sample it with gDDIM and "
                              "Euler-Maruyama, write grids, metrics and a plot (about 5 minutes on 2 CPU cores)")
    p.add_argument("--out", type=non_empty, required=True, help="output folder (new, or a quickstart folder to finish)")
    p.add_argument("--steps", type=positive, default=2000, help="training steps (default 2000)")
    p.add_argument("--num-samples", type=integer(2, 750), default=500, help="samples per Fréchet distance, 2..750 "
                   "(default 500; the floor takes twice as many of the 1500 training digits)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..quickstart import quickstart

    out = Path(args.out)
    try:
        result = quickstart(out, steps=args.steps, n=args.num_samples, seed=args.seed)
    except KeyboardInterrupt:
        print(f"interrupted; run `gddim quickstart --out {out}` again to resume", file=sys.stderr)
        return 130
    print(f"\nCLD on digits, {result['step']} training steps; Fréchet distance on classifier features, "
          f"n={result['n']} (real vs real floor {result['floor']:.3g}):")
    for r in result["records"]:
        print(f"  {r['label']:<12} NFE {r['nfe']:>3}: " + ("diverged" if r["fd"] is None else f"{r['fd']:.3g}"))
    print(f"metrics: {out / 'metrics.json'}\nplot:    {out / 'quality_vs_nfe.png'}\ngrids:   {out / 'grids'}\n"
          f"run:     {out / 'run'} (checkpoint, loss.csv, samples/)")
    return 0

"""`gddim evaluate`: Fréchet distance against NFE for several samplers on one checkpoint, as JSON and a plot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..spec import SPEC_FORM
from .options import (data_source, device, grid_option, integer, model_call, model_options, non_empty, non_negative,
                      nfe_list, positive, sampler_list, shard_option)


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="Fréchet distance vs NFE for several samplers -> JSON + PNG")
    p.add_argument("checkpoint", type=non_empty, help="run folder or checkpoint folder")
    p.add_argument("--samplers", type=sampler_list, default=["gddim", "em"],
                   help=f'comma-separated specs {SPEC_FORM}, e.g. "gddim,gddim:q=2,em"; '
                        '"gddim" alone is the default sampler (q=2, data form, corrector); q= or lam= name the paper\'s')
    p.add_argument("--nfe", type=nfe_list, default=[10, 20, 50, 100], help="comma-separated NFEs")
    grid_option(p)
    model_options(p)
    p.add_argument("--num-samples", type=integer(2), help="samples per score (default min(1000, real/2))")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--batch", type=positive, default=500, help="samples per network call (default 500)")
    shard_option(p, "OUT/shards/, with each record's uint8 samples and features")
    p.add_argument("--out", type=non_empty, required=True, help="folder for metrics.json, quality_vs_nfe.png, grids/ "
                   "and shards/")
    p.add_argument("--data", type=non_empty, help="the training images, when the run was trained on a path (a path "
                   "recorded in a run folder is not opened unless named again); default: its built-in data set")
    p.add_argument("--inception", type=non_empty, metavar="WEIGHTS", help="standard FID against all training images, with a local "
                   "copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth (needs torch-fidelity)")
    p.add_argument("--device", type=device)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..evaluation import evaluate

    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    try:
        result = evaluate(args.checkpoint, args.samplers, args.nfe, n=args.num_samples, seed=args.seed,
                          batch=args.batch, shard_size=args.shard_size, out_dir=args.out, inception=args.inception,
                          device=args.device, progress=main_process, data=args.data and data_source(args.data),
                          grid=args.grid, model_options=model_call(args))
    except KeyboardInterrupt:
        if main_process:
            print(f"interrupted; the finished records are in {Path(args.out) / 'metrics.json'}. "
                  "Run the same command again to compute the rest", file=sys.stderr)
        return 130
    floor = "" if result["floor"] is None else f" (real floor {result['floor']:.4g})"
    if main_process:
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'quality_vs_nfe.png'}{floor}")
    return 0

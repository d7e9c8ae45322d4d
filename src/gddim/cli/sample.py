"""`gddim sample`: draw samples from a checkpoint or a diffusers UNet2DModel folder into a PNG grid and an .npz."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputExistsError
from ..spec import METHODS
from .options import (device, grid_option, load_model, model_call, model_options, non_empty, non_negative, order,
                      output_prefix, positive, shard_option, unit_interval)


def _sampler_options(p) -> None:
    p.add_argument("--method", default="gddim", choices=METHODS)
    p.add_argument("--order", type=order, help="gDDIM order q (0..3); unset: the default sampler (q=2, data form, "
                   "corrector), set: the paper's gDDIM of that order")
    p.add_argument("--lam", type=unit_interval, help="λ in [0, 1] (gddim: 0 by default, stochastic above; em: 1)")
    p.add_argument("--param", choices=("R", "L"), default="R", help="gDDIM parameterization")
    p.add_argument("--pred", choices=("data", "eps"),
                   help="gDDIM history form: data (DPM-Solver++'s) or eps (the paper's)")


def _form(args) -> dict:
    return {} if args.pred is None else {"prediction": args.pred}


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample a checkpoint: PNG grid and .npz")
    p.add_argument("checkpoint", type=non_empty, help="run folder, checkpoint folder, or a local diffusers UNet2DModel folder")
    _sampler_options(p)
    grid_option(p)
    model_options(p)
    p.add_argument("--nfe", type=positive, default=50)
    p.add_argument("--num-samples", type=positive, default=64, help="number of samples")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--batch", type=positive, default=500, help="samples per network call (default 500)")
    shard_option(p, "PREFIX.shards/, removed once PREFIX.npz is written")
    p.add_argument("--out", type=output_prefix, required=True, help="output prefix: writes PREFIX.png and PREFIX.npz")
    p.add_argument("--overwrite", action="store_true", help="replace PREFIX.png and PREFIX.npz if they exist")
    p.add_argument("--device", type=device)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..distributed import process_group, run_on_rank0
    from ..generation import write_samples

    prefix = Path(args.out)
    options = {"method": args.method, "order": args.order, "lam": args.lam, "parameterization": args.param,
               **_form(args)}
    with process_group(args.device) as group:
        run_on_rank0(group, _check_free, prefix, args.overwrite)
        process, model, source = load_model(args.checkpoint, group.device)
        grid, npz = write_samples(process, model, prefix, args.num_samples, args.nfe, options, group, args.seed,
                                  args.batch, args.grid, args.shard_size, source, model_options=model_call(args))
        if group.is_main:
            print(f"{args.num_samples} samples ({group.world} process{'es' if group.world > 1 else ''}): grid {grid}, "
                  f"arrays {npz}")
    return 0


def _check_free(prefix: Path, overwrite: bool) -> None:
    """Refuse to replace PREFIX.png / PREFIX.npz without --overwrite, before minutes of sampling; outputs beside
    unfinished shards are that run's own (stopped between writing them), which the same command finishes."""
    from ..generation import shard_folder
    from ..shards import MANIFEST

    outputs = (prefix.with_name(prefix.name + ext) for ext in (".png", ".npz"))
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not overwrite and not (shard_folder(prefix) / MANIFEST).is_file():
        raise OutputExistsError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                                "choose another --out, or pass --overwrite to replace what is there")

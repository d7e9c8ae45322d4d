"""`gddim sample`: draw samples from a checkpoint or a diffusers UNet2DModel folder into a PNG grid and an .npz."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputExistsError
from ..spec import METHODS
from .options import (device, grid_option, model_call, model_options, non_empty, non_negative, order, output_prefix,
                      positive, unit_interval)


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
    p.add_argument("--n", type=positive, default=64, help="number of samples")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--batch", type=positive, default=500)
    p.add_argument("--out", type=output_prefix, required=True, help="output prefix: writes PREFIX.png and PREFIX.npz")
    p.add_argument("--overwrite", action="store_true", help="replace PREFIX.png and PREFIX.npz if they exist")
    p.add_argument("--device", type=device)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..diffusers import is_diffusers_folder, load_unet_eps
    from ..generation import sample_from_checkpoint, sample_images, save_grid, save_npz

    prefix = Path(args.out)
    grid, npz = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".npz")
    existing = [str(path) for path in (grid, npz) if path.exists()]
    if existing and not args.overwrite:  # checked before minutes of sampling
        raise OutputExistsError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                                "choose another --out, or pass --overwrite to replace what is there")
    if is_diffusers_folder(args.checkpoint):  # a local diffusers UNet2DModel trained on a discrete VP schedule
        model = load_unet_eps(args.checkpoint, device=args.device)
        images = sample_images(model.process, model, args.n, args.nfe, args.method, args.order, args.lam, args.param,
                               args.seed, args.batch, args.device, grid=args.grid, **_form(args), **model_call(args))
    else:
        images = sample_from_checkpoint(args.checkpoint, args.n, args.method, args.nfe, args.order, args.lam,
                                        args.param, args.seed, args.batch, args.device, grid=args.grid,
                                        **_form(args), **model_call(args))
    save_grid(images[:256], grid)
    save_npz(images, npz)
    print(f"{len(images)} samples: grid {grid}, arrays {npz}")
    return 0

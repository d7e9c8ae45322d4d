"""`gddim invert`: map images to their noise with deterministic gDDIM and back; report the round-trip error."""

from __future__ import annotations

from ..atomic import write_json
from ..errors import SettingsError
from .options import GRID_NAMES, PROCESSES, device, non_empty, non_negative, nfe_list, order, positive


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "invert", help="invert images to noise with deterministic gDDIM and sample them back (round-trip error)",
        description="The ε-model is a gddim checkpoint, a diffusers UNet2DModel folder (--checkpoint) or the exact "
                    "score of a data set (--exact). The images are states at the sampler's last time t_end "
                    "(CLD: with a drawn velocity); CLD's final denoising step is not inverted.")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=non_empty, help="gddim run/checkpoint folder, or a diffusers folder with a UNet2DModel")
    model.add_argument("--exact", type=non_empty, metavar="DATASET", help="use the exact score of this data set's training split")
    p.add_argument("--process", choices=sorted(PROCESSES), default="vp", help="with --exact: the process (default vp)")
    p.add_argument("--image-size", type=positive, help="with --exact: resize the data (e.g. 16 for fashion-mnist)")
    p.add_argument("--n-data", type=positive, help="with --exact: use the first N training images for the score")
    p.add_argument("--images", type=non_empty, help="images to invert (a data source; default: the model's data set "
                   "if it is a built-in one, test split)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="split of --images (default test)")
    p.add_argument("--num-images", type=positive, default=16, help="number of images (default 16)")
    p.add_argument("--nfe", type=nfe_list, default=[10, 20, 50],
                   help="comma-separated NFEs (steps each way; default 10,20,50)")
    p.add_argument("--order", type=order, default=0, help="gDDIM order q (0..3)")
    p.add_argument("--grid", default="quadratic", choices=GRID_NAMES)
    p.add_argument("--seed", type=non_negative, default=0, help="seed of CLD's velocity")
    p.add_argument("--device", type=device, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--out", type=non_empty, help="write the results as JSON to this file")
    p.set_defaults(run=run)


def _model(args):
    """(process, eps_fn, images to invert (--images, else the model's built-in data set), image size, dtype)."""
    import torch

    if args.exact:
        from .. import exact_eps
        from ..data import load_images
        from ..processes import make_process

        data = load_images(args.exact, "train", args.image_size)
        data = data if args.n_data is None else data[: args.n_data]
        process = make_process(args.process, tuple(data.shape[-2:]))
        return process, exact_eps(process, data), args.images or args.exact, args.image_size, torch.float64
    from ..diffusers import is_diffusers_folder, load_unet_eps

    if is_diffusers_folder(args.checkpoint):
        model = load_unet_eps(args.checkpoint, device=args.device)
        if args.images is None:
            raise SettingsError("a diffusers model records no data set: name the images to invert with --images")
        return model.process, model, args.images, None, torch.float32
    from ..checkpoints import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    source, image_size = checkpoint.data_source(args.images, option="--images")
    return checkpoint.process(), checkpoint.network("ema", args.device), source, image_size, torch.float32


def run(args) -> int:
    import torch

    from ..data import load_images
    from ..inversion import image_state, round_trip

    process, eps_fn, source, size, dtype = _model(args)
    x = load_images(source, args.split, size)[: args.num_images].to(device=args.device, dtype=dtype)
    u_end = image_state(process, x, torch.Generator().manual_seed(args.seed))
    records = []
    print(f"{process.name}: {len(x)} images of {source} ({args.split}), order q={args.order}, grid {args.grid}")
    print(f"{'nfe':>5} {'round-trip RMS':>15} {'state RMS':>10} {'noise std':>10}")
    with torch.no_grad():
        for nfe in args.nfe:
            r = round_trip(process, eps_fn, u_end, nfe, args.order, args.grid)
            records.append({"nfe": nfe, "round_trip_error": r.error, "state_error": r.state_error,
                            "noise_std": float(r.noise.double().std())})
            print(f"{nfe:5d} {r.error:15.3e} {r.state_error:10.3e} {records[-1]['noise_std']:10.4f}")
    if args.out:
        result = {"process": process.config(), "images": source, "split": args.split, "n": len(x),
                  "order": args.order, "grid": args.grid, "model": args.checkpoint or f"exact:{args.exact}",
                  "records": records}
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0

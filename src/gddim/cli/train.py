"""`gddim train`, `gddim sample`, `gddim evaluate` and `gddim quickstart`: argument parsing only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import SettingsError
from ..spec import METHODS, SPEC_FORM
from ..training_config import TrainConfig
from .options import (PRESET_NAMES, PROCESSES, device, integer, non_empty, non_negative, nfe_list,
                      number, one_of, order, output_prefix, positive, positive_number, sampler_list, unit_interval)


def register(subparsers) -> None:
    _train_parser(subparsers)
    _sample_parser(subparsers)
    _evaluate_parser(subparsers)
    p = subparsers.add_parser("quickstart", help="train a small CLD model on digits, sample it with gDDIM and "
                              "Euler-Maruyama, write grids, metrics and a plot (about 5 minutes on 2 CPU cores)")
    p.add_argument("--out", type=non_empty, required=True, help="output folder (new, or a quickstart folder to finish)")
    p.add_argument("--steps", type=positive, default=2000, help="training steps (default 2000)")
    p.add_argument("--n", type=integer(2, 750), default=500, help="samples per Fréchet distance, 2..750 (default 500; "
                   "the floor takes twice as many of the 1500 training digits)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.set_defaults(run=_run_quickstart)


# ---- train -------------------------------------------------------------------------------------------------

# option -> the TrainConfig field it sets, whose default it takes
TRAIN_FIELDS = {"steps": "steps", "batch": "batch_size", "lr": "lr", "warmup": "warmup", "ema": "ema_decay",
                "grad_clip": "grad_clip", "flip": "flip", "seed": "seed", "ckpt_every": "ckpt_every",
                "sample_every": "sample_every"}
TRAIN_DEFAULTS = {"process": "cld", "data": "digits", "image_size": None, "preset": "tiny",
                  **{option: getattr(TrainConfig, name) for option, name in TRAIN_FIELDS.items()},
                  "out": None, "resume": False, "device": None, "no_progress": False}
# how each option's value is checked, on the command line and in a --config file alike
TRAIN_TYPES = {"process": one_of(sorted(PROCESSES)), "data": non_empty, "image_size": positive,
               "preset": one_of(PRESET_NAMES), "steps": positive, "batch": positive, "lr": positive_number,
               "warmup": non_negative, "ema": number(0.0, 1.0, high_open=True), "grad_clip": positive_number,
               "seed": non_negative, "ckpt_every": positive, "sample_every": non_negative, "out": non_empty,
               "device": device}
SWITCHES = ("flip", "resume", "no_progress")


def _train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an ε-network for VP, CLD or BDM (torchrun for several processes)",
                              description="Train an ε-network. Under `torchrun --nproc_per_node=N` it runs DDP. "
                              "Rerunning the same command in the same --out folder resumes the run.")
    p.add_argument("--config", help="JSON file whose keys are the option names below (image_size, not "
                   "--image-size); options given on the command line win")
    p.add_argument("--process", choices=sorted(PROCESSES), help="default cld")
    p.add_argument("--data", type=TRAIN_TYPES["data"],
                   help="digits (default), fashion-mnist, cifar10:PATH, a folder of images or an .npz file")
    p.add_argument("--image-size", type=TRAIN_TYPES["image_size"], help="resize the images to this square size")
    p.add_argument("--preset", choices=PRESET_NAMES, help="network size (default tiny)")
    p.add_argument("--steps", type=TRAIN_TYPES["steps"], help=f"default {TRAIN_DEFAULTS['steps']}")
    p.add_argument("--batch", type=TRAIN_TYPES["batch"], help=f"batch size per process (default {TRAIN_DEFAULTS['batch']})")
    p.add_argument("--lr", type=TRAIN_TYPES["lr"], help=f"default {TRAIN_DEFAULTS['lr']:g}, good for the small presets (the paper's "
                   "100M-parameter model uses 2e-4: configs/cifar10_cld_paper.json)")
    p.add_argument("--warmup", type=TRAIN_TYPES["warmup"], help="linear learning-rate warmup steps "
                   f"(default {TRAIN_DEFAULTS['warmup']})")
    p.add_argument("--ema", type=TRAIN_TYPES["ema"], help="EMA decay of the weights, in [0, 1) "
                   f"(default {TRAIN_DEFAULTS['ema']})")
    p.add_argument("--grad-clip", type=TRAIN_TYPES["grad_clip"], help=f"default {TRAIN_DEFAULTS['grad_clip']}")
    p.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    p.add_argument("--seed", type=TRAIN_TYPES["seed"], help=f"default {TRAIN_DEFAULTS['seed']}")
    p.add_argument("--ckpt-every", type=TRAIN_TYPES["ckpt_every"], help=f"default {TRAIN_DEFAULTS['ckpt_every']}")
    p.add_argument("--sample-every", type=TRAIN_TYPES["sample_every"],
                   help="write a sample grid every N steps (default 0: at the end)")
    p.add_argument("--out", type=TRAIN_TYPES["out"],
                   help="run folder: new, or a run of the same configuration to resume (required)")
    p.add_argument("--resume", action="store_true", default=None, help="insist on resuming (error if --out holds no run)")
    p.add_argument("--device", type=TRAIN_TYPES["device"], help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", default=None)
    p.set_defaults(run=_run_train)


def train_options(args: argparse.Namespace) -> dict:
    """Options from the command line, else from --config's JSON, else TRAIN_DEFAULTS."""
    from_file = _config_file(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS and v is not None}
    options = {**TRAIN_DEFAULTS, **from_file, **given}
    if not options["out"]:
        raise SettingsError("gddim train needs an output folder: --out DIR (or \"out\" in the --config file)")
    return options


def _config_file(path: str) -> dict:
    """The options of a --config JSON file, each checked as its command-line flag would be."""
    try:
        options = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SettingsError(f"--config {path} is not a JSON file ({err})") from None
    if not isinstance(options, dict):
        raise SettingsError(f"--config {path} must hold a JSON object of options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(TRAIN_DEFAULTS))
    if unknown:
        raise SettingsError(f"{path}: unknown keys {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    for key, value in options.items():
        if key in SWITCHES:
            fits = isinstance(value, bool)
        else:  # null only where the default is null; never true/false, a list or an object
            fits = TRAIN_DEFAULTS[key] is None if value is None else not isinstance(value, (bool, list, dict))
        if not fits:
            raise SettingsError(f"{path}: {key} cannot be {json.dumps(value)}")
        if key not in SWITCHES and value is not None:
            try:
                options[key] = TRAIN_TYPES[key](str(value))
            except argparse.ArgumentTypeError as err:
                raise SettingsError(f"{path}: {key}: {err}") from None
    return options


def data_source(source: str) -> str:
    """Named data sets as they are; paths made absolute so that a checkpoint finds its data from anywhere."""
    from ..data import BUILT_IN_DATA

    if source in BUILT_IN_DATA:
        return source
    prefix = "cifar10:" if source.startswith("cifar10:") else ""
    return prefix + str(Path(source[len(prefix):]).expanduser().resolve())


def _run_train(args) -> int:
    from ..data import load_images
    from ..networks import preset
    from ..processes import make_process
    from ..training import train

    o = train_options(args)
    source = data_source(o["data"])
    images = load_images(source, "train", o["image_size"])
    config = TrainConfig(**{name: o[option] for option, name in TRAIN_FIELDS.items()})
    result = train(make_process(o["process"], tuple(images.shape[-2:])), images, o["out"], preset(o["preset"]), config,
                   {"source": source, "image_size": o["image_size"]}, resume=True if o["resume"] else None,
                   progress=not o["no_progress"], device=o["device"])
    if result.checkpoint is not None and not result.interrupted:  # an interrupted run has said where it stopped
        print(f"checkpoint: {result.checkpoint} (step {result.step}, {result.images_per_second:.0f} images/s)")
    return 128 + result.stop_signal if result.interrupted else 0  # the shell's code for death by that signal


# ---- sample ------------------------------------------------------------------------------------------------

def _sampler_options(p) -> None:
    p.add_argument("--method", default="gddim", choices=METHODS)
    p.add_argument("--order", type=order, help="gDDIM order q (0..3); unset: the default sampler (q=2, data form, corrector), set: the paper's gDDIM of that order")
    p.add_argument("--lam", type=unit_interval, help="λ in [0, 1] (gddim: 0 by default, stochastic above; em: 1)")
    p.add_argument("--param", choices=("R", "L"), default="R", help="gDDIM parameterization")
    p.add_argument("--pred", choices=("data", "eps"), help="gDDIM history form: data (DPM-Solver++'s) or eps (the paper's)")


def _form(args) -> dict:
    return {} if args.pred is None else {"prediction": args.pred}


def _grid_option(p) -> None:
    p.add_argument("--grid", type=non_empty, default="quadratic", help="time grid: quadratic (default), uniform, logsnr, tuned (shipped, "
                   "tuned on exact scores) or a grid file from `gddim tune-grid` (tuned for this model and NFE)")


def _sample_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample a checkpoint: PNG grid and .npz")
    p.add_argument("checkpoint", type=non_empty, help="run folder, checkpoint folder, or a local diffusers UNet2DModel folder")
    _sampler_options(p)
    _grid_option(p)
    p.add_argument("--nfe", type=positive, default=50)
    p.add_argument("--n", type=positive, default=64, help="number of samples")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--batch", type=positive, default=500)
    p.add_argument("--out", type=output_prefix, required=True, help="output prefix: writes PREFIX.png and PREFIX.npz")
    p.add_argument("--overwrite", action="store_true", help="replace PREFIX.png and PREFIX.npz if they exist")
    p.add_argument("--device", type=device)
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from ..diffusers import is_diffusers_folder, load_unet_eps
    from ..generation import sample_from_checkpoint, sample_images, save_grid, save_npz

    prefix = Path(args.out)
    grid, npz = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".npz")
    existing = [str(path) for path in (grid, npz) if path.exists()]
    if existing and not args.overwrite:  # checked before minutes of sampling
        raise FileExistsError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              "choose another --out, or pass --overwrite to replace what is there")
    if is_diffusers_folder(args.checkpoint):  # a local diffusers UNet2DModel trained on a discrete VP schedule
        model = load_unet_eps(args.checkpoint, device=args.device)
        images = sample_images(model.process, model, args.n, args.nfe, args.method, args.order, args.lam, args.param,
                               args.seed, args.batch, args.device, grid=args.grid, **_form(args))
    else:
        images = sample_from_checkpoint(args.checkpoint, args.n, args.method, args.nfe, args.order, args.lam,
                                        args.param, args.seed, args.batch, args.device, grid=args.grid,
                                        **_form(args))
    save_grid(images[:256], grid)
    save_npz(images, npz)
    print(f"{len(images)} samples: grid {grid}, arrays {npz}")
    return 0


# ---- evaluate ----------------------------------------------------------------------------------------------

def _evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="Fréchet distance vs NFE for several samplers -> JSON + PNG")
    p.add_argument("checkpoint", type=non_empty, help="run folder or checkpoint folder")
    p.add_argument("--samplers", type=sampler_list, default=["gddim", "em"],
                   help=f'comma-separated specs {SPEC_FORM}, e.g. "gddim,gddim:q=2,em"; '
                        '"gddim" alone is the default sampler (q=2, data form, corrector); q= or lam= name the paper\'s')
    p.add_argument("--nfe", type=nfe_list, default=[10, 20, 50, 100], help="comma-separated NFEs")
    _grid_option(p)
    p.add_argument("--n", type=integer(2), help="samples per score (default min(1000, real/2))")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--batch", type=positive, default=500)
    p.add_argument("--out", type=non_empty, required=True, help="folder for metrics.json, quality_vs_nfe.png and grids/")
    p.add_argument("--data", type=non_empty, help="the training images, when the run was trained on a path (a path "
                   "recorded in a run folder is not opened unless named again); default: its built-in data set")
    p.add_argument("--inception", type=non_empty, metavar="WEIGHTS", help="standard FID against all training images, with a local "
                   "copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth (needs torch-fidelity)")
    p.add_argument("--device", type=device)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ..evaluation import evaluate

    try:
        result = evaluate(args.checkpoint, args.samplers, args.nfe, n=args.n, seed=args.seed, batch=args.batch,
                          out_dir=args.out, inception=args.inception, device=args.device, progress=True,
                          data=args.data and data_source(args.data), grid=args.grid)
    except KeyboardInterrupt:
        print(f"interrupted; the finished records are in {Path(args.out) / 'metrics.json'}. "
              "Run the same command again to compute the rest", file=sys.stderr)
        return 130
    floor = "" if result["floor"] is None else f" (real floor {result['floor']:.4g})"
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'quality_vs_nfe.png'}{floor}")
    return 0


# ---- quickstart --------------------------------------------------------------------------------------------

def _run_quickstart(args) -> int:
    from ..quickstart import quickstart

    out = Path(args.out)
    try:
        result = quickstart(out, steps=args.steps, n=args.n, seed=args.seed)
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

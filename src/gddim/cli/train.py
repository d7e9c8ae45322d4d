"""`gddim train`: options from the command line, a --config JSON file and TrainConfig's defaults, checked alike."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MissingFileError, SettingsError, UserFileError
from ..training_config import TrainConfig
from .options import (PRESET_NAMES, PROCESSES, data_source, device, non_empty, non_negative, number, one_of, positive,
                      positive_number)

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


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an ε-network for VP, CLD, BDM or flow matching (torchrun for several processes)",
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
    p.set_defaults(run=run)


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
    except FileNotFoundError:
        raise MissingFileError(f"--config {path} does not exist; name a JSON file of train options") from None
    except OSError as err:
        raise UserFileError(f"--config {path} cannot be read ({err.strerror or err})") from None
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


def run(args) -> int:
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

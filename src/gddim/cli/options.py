"""Argument types and options shared by the `gddim` commands: each type refuses a bad value with a message that
says what is wrong.

Nothing heavy is imported here, so that `gddim --help` answers at once; the few names the parsers offer as
choices are spelled out below (tests check them against the library).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import SettingsError
from ..spec import METHODS, SamplerSpec

PROCESSES = ("vp", "cld", "bdm", "flow")  # the keys of gddim.processes.PROCESSES, in its order
# the exact-score sweeps' default; flow matching is measured by benchmarks/peers_flow.py
BENCH_PROCESSES = ("vp", "cld", "bdm")
PRESET_NAMES = ("cifar10-paper", "small", "tiny")  # sorted(gddim.networks.PRESETS)
GRID_NAMES = ("quadratic", "uniform", "logsnr", "karras", "angle", "blend", "tuned")  # gddim.grids.GRIDS
MAX_ORDER = 3  # gddim.sampling.MAX_ORDER
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def integer(minimum: int, maximum: int | None = None):
    """An argument type: an integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


positive = integer(1)
non_negative = integer(0)
order = integer(0, MAX_ORDER)


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """An argument type: a finite float in the interval from low to high (open at an end when asked)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    return parse


positive_number = number(0.0, low_open=True)
unit_interval = number(0.0, 1.0)


def comma_list(item, example: str):
    """An argument type: a non-empty comma-separated list of values of the type `item`."""

    def parse(text: str) -> list:
        words = [w.strip() for w in text.split(",") if w.strip()]
        if not words:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list such as {example}, got {text!r}")
        values = []
        for word in words:
            try:
                values.append(item(word))
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"{word!r} in {text!r}: {err}") from None
        return values

    return parse


def sampler_spec(text: str) -> SamplerSpec:
    """method[:q=N][:lam=X][:param=R|L][:pred=..]... read by gddim.spec; the values are checked when the command runs."""
    try:
        return SamplerSpec.parse(text)
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


nfe_list = comma_list(positive, "10,20,50")
sampler_list = comma_list(sampler_spec, "gddim:q=2,em")


def device(text: str) -> str:
    """cpu, cuda, cuda:N, mps or xpu; whether it exists here is checked when the command runs."""
    kind, _, index = text.partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()) or text.endswith(":"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N (N = 0, 1, ...), mps or xpu")
    return text


def output_prefix(text: str) -> str:
    """A file name prefix such as out/samples: it needs a name, not only a folder."""
    if not text.strip() or Path(text).name in ("", ".", "..") or text.endswith(("/", "\\")):
        raise argparse.ArgumentTypeError(f"expected a file prefix such as out/samples, got {text!r}")
    return text


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path or a name, got an empty string")
    return text


def check_device(name: str) -> None:
    """Refuse a device this machine lacks before any work (torch is imported here, when a command runs)."""
    import torch

    dev = torch.device(name)
    backend = {"cpu": None, "cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None),
               "xpu": getattr(torch, "xpu", None)}[dev.type]
    if backend is not None and not (hasattr(backend, "is_available") and backend.is_available()):
        raise SettingsError(f"--device {name}: this machine has no {dev.type} device (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SettingsError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0")


def one_of(names):
    """An argument type: one of the given names."""

    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown value {text!r}; choose one of {', '.join(names)}")
        return text

    return parse


def grid_option(parser: argparse.ArgumentParser) -> None:
    """--grid: a named time grid or a grid file (`gddim sample` and `gddim evaluate`)."""
    parser.add_argument("--grid", type=non_empty, help="time grid: quadratic, uniform, logsnr, karras, angle, "
                        "blend, tuned (shipped, tuned on exact scores) or a grid file from `gddim tune-grid` (tuned "
                        "for this model and NFE); default: the default sampler on its process's grid (blend for VP, "
                        "CLD and BDM), a named order or method on the quadratic grid")


def shard_option(parser: argparse.ArgumentParser, where: str) -> None:
    """--shard-size: samples per shard file of `gddim sample` and `gddim evaluate`, written to `where`."""
    parser.add_argument("--shard-size", type=positive, default=1000, help=f"samples per shard file (default 1000), "
                        f"written as they are made to {where}: the same command after an interruption makes only the "
                        "missing shards. Under torchrun each process makes one shard at a time")


def data_source(source: str) -> str:
    """Named data sets as they are; paths made absolute so that a checkpoint finds its data from anywhere."""
    from ..data import BUILT_IN_DATA

    if source in BUILT_IN_DATA:
        return source
    prefix = "cifar10:" if source.startswith("cifar10:") else ""
    return prefix + str(Path(source[len(prefix):]).expanduser().resolve())


def model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true", help="run the network through torch.compile")
    parser.add_argument("--autocast", choices=("bf16", "fp16"),
                        help="run the network in half precision (the state stays float32)")


def model_call(args) -> dict:
    """gddim.sample's compile and autocast, as far as the flags set them."""
    return {**({"compile": True} if args.compile else {}), **({"autocast": args.autocast} if args.autocast else {})}


def load_model(path: str, device=None) -> tuple:
    """(process, ε-model, resolved source) of a run or checkpoint folder (its EMA network) or of a local diffusers
    UNet2DModel folder trained on a discrete VP schedule (the model's own DiscreteVP, as GDDIMScheduler's)."""
    from ..checkpoints import load_checkpoint
    from ..diffusers import is_diffusers_folder, load_unet_eps

    if is_diffusers_folder(path):
        model = load_unet_eps(path, device=device)
        return model.process, model, str(Path(path).expanduser().resolve())
    checkpoint = load_checkpoint(path)
    return checkpoint.process(), checkpoint.network("ema", device), str(checkpoint.path)

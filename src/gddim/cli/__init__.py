"""The `gddim` command: argument parsing only; every command calls the library.

Each command is one module of this package that registers its sub-command through `register(subparsers)`.
Parsing imports nothing heavy (torch, diffusers, scipy load inside a command's run function), so `--help`
answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("quickstart", "train", "sample", "evaluate", "invert", "tune_grid", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gddim", description="gDDIM sampling, training and benchmarks for linear diffusions")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:  # a command module that fails to import stops the command line: never dropped
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Errors that are the user's to fix (a GddimError: bad settings, data, files, checkpoints, a diverging model)
    print one line on stderr and exit with 2, without a traceback; any other exception is a bug and shows its
    traceback."""
    from ..errors import GddimError
    from .options import check_device

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None):
            check_device(args.device)
        return int(args.run(args) or 0)
    except GddimError as err:
        print(f"gddim {args.command}: error: {err}", file=sys.stderr)
        return 2

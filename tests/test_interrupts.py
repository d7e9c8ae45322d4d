"""Interruptions lose nothing and block nothing: SIGTERM, SIGKILL at random moments, runs stopped before their
first checkpoint, evaluations stopped halfway, and sample outputs that already exist."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gddim
from gddim import evaluation, training
from gddim.cli import main
from gddim.checkpoints import load_checkpoint
from gddim.data import load_images
from gddim.training import TrainConfig, TrainingError, diffusion_loss, train
from tiny_runs import DIGITS, MICRO

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny: 12 steps of the tiny preset on 8x8 digits, a checkpoint every 2 steps, one sample grid at the end
COMMAND = ["train", "--process", "vp", "--steps", "12", "--batch", "8", "--warmup", "2", "--ckpt-every", "2",
           "--no-progress"]
STEPS = 12


def run_in_process(run: Path) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run on one thread too: the same kernels, the same bits
    try:
        return main(COMMAND + ["--out", str(run)])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert run_in_process(run) == 0
    return run


def launch(run: Path) -> subprocess.Popen:
    """`python -m gddim train ...` of this gddim, on one thread."""
    source = str(Path(gddim.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([source, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-m", "gddim", *COMMAND, "--out", str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def identity(path: Path):
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def wait_until_training(proc: subprocess.Popen, run: Path, before) -> None:
    """Until the run has (re)written loss.csv, which it does once it set up and is about to take its first step."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and identity(run / "loss.csv") == before:
        assert time.monotonic() < deadline, "the training command did not start within 2 minutes"
        time.sleep(0.01)


def assert_same_run(run: Path, reference: Path) -> None:
    """Weights, EMA weights, optimizer state, loss.csv and the final sample grid, bit for bit."""
    a, b = load_checkpoint(run), load_checkpoint(reference)
    assert a.step == b.step == STEPS and a.tensors.keys() == b.tensors.keys()
    assert any(k.startswith("ema.") for k in a.tensors) and any(k.startswith("model.") for k in a.tensors)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    states = [torch.load(c.path / "state.pt", weights_only=True)["optimizer"]["state"] for c in (a, b)]
    assert all(torch.equal(x, states[1][i][k]) for i, s in states[0].items() for k, x in s.items())
    assert (run / "loss.csv").read_text() == (reference / "loss.csv").read_text()
    grid = f"samples/step_{STEPS:08d}.png"
    assert (run / grid).read_bytes() == (reference / grid).read_bytes()


# ---- signals -------------------------------------------------------------------------------------------------

def test_sigterm_checkpoints_at_the_signal_and_the_same_command_finishes_the_run(tmp_path, reference):
    run = tmp_path / "run"
    proc = launch(run)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (run / "checkpoints" / "LATEST").exists():  # a scheduler ends the job
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and len(out.splitlines()) == 1, (out, err)
    stopped = int(out.split(" at step ")[1].split(";")[0])
    assert out.startswith(f"interrupted (SIGTERM) at step {stopped}; checkpoint ") and "same command" in out
    assert 2 <= stopped < STEPS and load_checkpoint(run).step == stopped  # a checkpoint at the signal itself
    rows = (run / "loss.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, stopped + 1))
    assert run_in_process(run) == 0
    assert_same_run(run, reference)


@pytest.mark.parametrize("kills", [2, pytest.param(10, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_the_same_command_ends_bit_identical(tmp_path, reference, kills):
    """Whenever a kill lands (setting up, mid-step, mid-checkpoint, mid-grid, after the end) the resumed run
    must equal the uninterrupted one; the kill times vary from machine to machine, the assertion does not."""
    run, moments = tmp_path / "run", random.Random(kills)
    for _ in range(kills):
        proc = launch(run)
        wait_until_training(proc, run, identity(run / "loss.csv"))
        time.sleep(moments.uniform(0, 3))  # about the time 12 steps, 6 checkpoints and the grid take
        proc.kill()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err  # killed, or finished before the kill
    assert run_in_process(run) == 0
    assert_same_run(run, reference)


# ---- runs stopped before their first checkpoint --------------------------------------------------------------

def quick() -> TrainConfig:
    return TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup=2, ckpt_every=3, sample_nfe=4)


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    digits = load_images("digits")[:64]
    full = train(gddim.VP(), digits, tmp_path / "full", MICRO, quick(), DIGITS, progress=False)
    run = tmp_path / "run"

    calls = []

    def nan_at_step_2(process, model, x0, generator=None):  # bad input: the loss goes NaN before any checkpoint
        calls.append(1)
        loss = diffusion_loss(process, model, x0, generator)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(training, "diffusion_loss", nan_at_step_2)
    with pytest.raises(TrainingError, match="nan at step 2.*none"):
        train(gddim.VP(), digits, run, MICRO, quick(), DIGITS, progress=False)
    monkeypatch.undo()
    # what a kill in the middle of the first checkpoint would leave, a stale step folder of other settings too
    (run / "checkpoints" / ".step_00000003.tmp-999").mkdir(parents=True)
    (run / "checkpoints" / "step_00000003").mkdir()
    (run / "checkpoints" / "step_00000003" / "config.json").write_text("{}")
    (run / ".loss.csv.tmp-999").write_text("step,loss\n1,0.5")
    (run / "samples").mkdir()
    (run / "samples" / ".step_00000002.png.tmp-999").write_bytes(b"\x89PNG")
    again = train(gddim.VP(), digits, run, MICRO, quick(), DIGITS, progress=False)
    assert again.step == 4 and again.losses == full.losses
    a, b = load_checkpoint(run).tensors, load_checkpoint(tmp_path / "full").tensors
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step_00000004"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "loss.csv", "samples"]


def test_loss_rows_past_the_checkpoint_and_a_row_cut_short_are_dropped_on_resume(tmp_path, monkeypatch):
    """A kill after the rows of steps 3-4 reached loss.csv but before checkpoint 4 did, then one mid-row."""
    digits, config = load_images("digits")[:64], TrainConfig(steps=4, batch_size=8, warmup=2, ckpt_every=2,
                                                              sample_nfe=4)
    train(gddim.VP(), digits, tmp_path / "full", MICRO, config, DIGITS, progress=False)
    run, save = tmp_path / "run", training.save_checkpoint

    def killed_at_step_4(out_dir, meta, *args):
        if meta["step"] == 4:
            raise OSError("killed")
        return save(out_dir, meta, *args)

    monkeypatch.setattr(training, "save_checkpoint", killed_at_step_4)
    with pytest.raises(OSError, match="killed"):
        train(gddim.VP(), digits, run, MICRO, config, DIGITS, progress=False)
    monkeypatch.undo()
    with open(run / "loss.csv", "a") as log:
        log.write("1")  # the start of a row of step 1x: its step alone does not tell it from a whole row
    assert [r.split(",")[0] for r in (run / "loss.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4", "1"]
    train(gddim.VP(), digits, run, MICRO, config, DIGITS, progress=False)
    assert (run / "loss.csv").read_text() == (tmp_path / "full" / "loss.csv").read_text()


@pytest.mark.parametrize("mine", ["samples/notes.txt", "checkpoints/notes.txt", "loss.csv/notes.txt", "notes.txt"])
def test_a_folder_with_files_gddim_did_not_write_is_still_refused(tmp_path, mine):
    run = tmp_path / "run"
    (run / mine).parent.mkdir(parents=True, exist_ok=True)
    (run / mine).write_text("mine")
    with pytest.raises(FileExistsError, match="holds no resumable gddim run"):
        train(gddim.VP(), load_images("digits")[:64], run, MICRO, quick(), DIGITS, progress=False)
    assert (run / mine).read_text() == "mine"


# ---- evaluate ------------------------------------------------------------------------------------------------

EVALUATE = {"samplers": ["gddim:q=1", "ancestral"], "nfes": [4, 6], "n": 8}


def without_seconds(result: dict) -> dict:
    return {**result, "records": [{k: v for k, v in r.items() if k != "seconds"} for r in result["records"]]}


def test_an_interrupted_evaluation_keeps_its_records_and_a_rerun_goes_on(cld_run, tmp_path, monkeypatch, capsys):
    fresh = evaluation.evaluate(cld_run, **EVALUATE, out_dir=tmp_path / "fresh")
    real_sampler, calls = evaluation.sample_images, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and counted.interrupt:
            raise KeyboardInterrupt
        return real_sampler(*args, **kwargs)

    counted.interrupt = True
    monkeypatch.setattr(evaluation, "sample_images", counted)
    assert main(["evaluate", str(cld_run), "--samplers", "gddim:q=1,ancestral", "--nfe", "4,6", "--num-samples", "8",
                 "--out", str(tmp_path / "split")]) == 130  # Ctrl-C during the third record
    assert f"interrupted; the finished records are in {tmp_path / 'split' / 'metrics.json'}" in capsys.readouterr().err
    kept = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert without_seconds(kept)["records"] == without_seconds(fresh)["records"][:2]
    calls.clear()
    counted.interrupt = False
    resumed = evaluation.evaluate(cld_run, **EVALUATE, out_dir=tmp_path / "split")
    assert len(calls) == 2  # only the two unfinished records were sampled
    assert without_seconds(resumed) == without_seconds(fresh)  # records do not depend on what ran before them
    assert without_seconds(json.loads((tmp_path / "split" / "metrics.json").read_text())) == without_seconds(fresh)
    assert (tmp_path / "split" / "quality_vs_nfe.png").is_file()
    calls.clear()
    other = evaluation.evaluate(cld_run, **{**EVALUATE, "n": 10}, out_dir=tmp_path / "split")
    assert len(calls) == 4 and other["n"] == 10  # another evaluation reuses nothing


# ---- sample --------------------------------------------------------------------------------------------------

def test_sample_never_overwrites_earlier_output_silently(cld_run, tmp_path, capsys):
    prefix = tmp_path / "s"
    command = ["sample", str(cld_run), "--nfe", "4", "--num-samples", "3", "--out", str(prefix)]
    assert main(command) == 0
    earlier = {ext: prefix.with_suffix(ext).read_bytes() for ext in (".png", ".npz")}
    capsys.readouterr()
    assert main(command + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{prefix}.png and {prefix}.npz already exist" in err and "another --out" in err and "--overwrite" in err
    assert all(prefix.with_suffix(ext).read_bytes() == data for ext, data in earlier.items())
    prefix.with_suffix(".png").unlink()
    assert main(command) == 2 and f"{prefix}.npz already exists" in capsys.readouterr().err
    assert main(command + ["--seed", "1", "--overwrite"]) == 0
    assert prefix.with_suffix(".npz").read_bytes() != earlier[".npz"] and prefix.with_suffix(".png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]  # no temporary files left


def test_a_sample_run_stopped_after_its_npz_finishes_on_the_same_command(cld_run, tmp_path, monkeypatch):
    from gddim import generation

    prefix = tmp_path / "s"
    command = ["sample", str(cld_run), "--nfe", "4", "--num-samples", "3", "--out", str(prefix)]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(generation, "save_grid", stopped)  # killed between writing PREFIX.npz and PREFIX.png
        with pytest.raises(KeyboardInterrupt):
            main(command)
    assert prefix.with_suffix(".npz").is_file() and not prefix.with_suffix(".png").exists()
    assert main(command) == 0  # not refused as someone else's output: the shards beside it are this run's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]

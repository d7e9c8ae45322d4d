"""Checkpoints: atomic writes, loading and its errors, and the resume policy that never overwrites a folder."""

from __future__ import annotations

import shutil

import pytest
import torch

import gddim
from gddim import checkpoints
from gddim.checkpoints import CheckpointError, load_checkpoint, load_weights
from gddim.networks import EpsModel
from gddim.training import train
from tiny_runs import DIGITS, MICRO, quick, weights

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path, digits, monkeypatch):
    run = tmp_path / "run"
    train(gddim.VP(), digits, run, MICRO, quick(steps=3), DIGITS, progress=False)
    before = weights(run)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)  # dies after the weights file was written
    with pytest.raises(OSError, match="disk full"):
        train(gddim.VP(), digits, run, MICRO, quick(steps=6), DIGITS, progress=False)
    monkeypatch.undo()
    ckpt = load_checkpoint(run)
    assert ckpt.step == 3 and all(torch.equal(before[k], ckpt.tensors[k]) for k in before)
    assert not (run / "checkpoints" / "step_00000006").exists()
    assert [p.name for p in (run / "checkpoints").glob(".step_00000006.tmp-*")]  # the half-written folder
    assert train(gddim.VP(), digits, run, MICRO, quick(steps=6), DIGITS, progress=False).step == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step_00000006"]


def test_checkpoint_errors(tmp_path, cld_run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected a run folder"):
        load_checkpoint(tmp_path)
    ckpt = load_checkpoint(cld_run)
    with pytest.raises(CheckpointError, match=r"trained with process \{'process': 'cld'.*not \{'process': 'vp'"):
        ckpt.process(gddim.VP())
    assert ckpt.process(gddim.CLD()).config() == gddim.CLD().config()
    other_shape = EpsModel(MICRO, data_channels=3, image_size=8, k=2, process=gddim.CLD())
    with pytest.raises(CheckpointError, match=r"conv_in.weight: checkpoint .* has \(16, 2, 3, 3\), the model has "
                                              r"\(16, 6, 3, 3\)"):
        load_weights(other_shape, ckpt)
    broken = tmp_path / "broken"
    shutil.copytree(ckpt.path, broken)
    data = (broken / "weights.safetensors").read_bytes()
    (broken / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="weights.safetensors is corrupt"):
        load_checkpoint(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load_checkpoint(broken)


def test_output_folder_is_never_silently_overwritten(tmp_path, digits, cld_run):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no resumable gddim run"):
        train(gddim.CLD(), digits, stranger, MICRO, quick(), DIGITS, progress=False)
    with pytest.raises(FileExistsError, match=r"process: run has \{'process': 'cld'.*asked for \{'process': 'vp'"):
        train(gddim.VP(), digits, cld_run, MICRO, quick(steps=2, ckpt_every=2), DIGITS, progress=False)
    with pytest.raises(FileExistsError, match="train.lr: run has 0.001, asked for 0.01"):
        train(gddim.CLD(), digits, cld_run, MICRO, quick(steps=2, ckpt_every=2, lr=0.01), DIGITS, progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(gddim.CLD(), digits, cld_run, MICRO, quick(steps=2, ckpt_every=2), DIGITS, resume=False, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(gddim.CLD(), digits, tmp_path / "new", MICRO, quick(), DIGITS, resume=True, progress=False)
    assert (stranger / "notes.txt").read_text() == "mine"

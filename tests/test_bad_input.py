"""Bad input, tried as a new user and a hostile one would: every case names what is wrong, nothing runs code.

Flags are refused by argparse (exit 2, `gddim CMD: error: argument --FLAG: ...`); settings, files and run
folders by the command (exit 2, one line `gddim CMD: error: ...`, no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gddim import errors
from gddim.cli import main
from gddim.data import load_images
from gddim.checkpoints import CheckpointError, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class _RunsCode:
    """Unpickling this object runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _refused_by_argparse(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    return capsys.readouterr().err


def _one_line_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gddim {args[0]}: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("args, message", [
    (["train", "--image-size", "0"], "argument --image-size: must be at least 1, got 0"),
    (["train", "--steps", "-5"], "argument --steps: must be at least 1, got -5"),
    (["train", "--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number in (0, inf], got nan"),
    (["train", "--ema", "1"], "argument --ema: must be a finite number in [0, 1), got 1"),
    (["train", "--device", "gpu"], "argument --device: unknown device 'gpu'; use cpu, cuda, cuda:N"),
    (["train", "--process", "ddpm"], "argument --process: invalid choice: 'ddpm'"),
    (["sample", "run", "--out", "s", "--num-samples", "-3"], "argument --num-samples: must be at least 1, got -3"),
    (["sample", "run", "--out", "s", "--nfe", "ten"], "argument --nfe: expected an integer, got 'ten'"),
    (["sample", "run", "--out", "s", "--order", "5"], "argument --order: must be an integer in 0..3, got 5"),
    (["sample", "run", "--out", "s", "--lam", "2"], "argument --lam: must be a finite number in [0, 1], got 2"),
    (["sample", "run", "--out", ""], "argument --out: expected a file prefix such as out/samples, got ''"),
    (["sample", "run", "--out", "out/"], "argument --out: expected a file prefix such as out/samples, got 'out/'"),
    (["sample", "run", "--out", "s", "--device", "cuda:x"], "argument --device: unknown device 'cuda:x'"),
    (["evaluate", "run", "--out", "e", "--samplers", ","],
     "argument --samplers: expected a comma-separated list such as gddim:q=2,em, got ','"),
    (["evaluate", "run", "--out", "e", "--nfe", ","], "argument --nfe: expected a comma-separated list such as 10,20,50"),
    (["evaluate", "run", "--out", "e", "--nfe", "10,abc"], "argument --nfe: 'abc' in '10,abc': expected an integer"),
    (["evaluate", "run", "--out", "e", "--nfe", "10,0"], "argument --nfe: '0' in '10,0': must be at least 1, got 0"),
    (["evaluate", "run", "--out", "e", "--samplers", "gddim:q2"],
     "argument --samplers: 'gddim:q2' in 'gddim:q2': bad sampler option 'q2' in 'gddim:q2'; write "
     "method[:q=N][:lam=X][:param=R|L]"),
    (["evaluate", "run", "--out", "e", "--samplers", "gddim:q=2:q=3"], "bad sampler option 'q=3' in 'gddim:q=2:q=3'"),
    (["evaluate", "run", "--out", "e", "--samplers", "ddim"],
     "unknown sampler method 'ddim' in 'ddim'; choose one of gddim, euler, em, ancestral, sscs"),
    (["evaluate", "run", "--out", "e", "--num-samples", "1"], "argument --num-samples: must be at least 2, got 1"),
    (["quickstart", "--out", "q", "--num-samples", "5000"],
     "argument --num-samples: must be an integer in 2..750, got 5000"),
    (["invert", "--exact", "digits", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["invert", "--exact", "digits", "--nfe", ""], "argument --nfe: expected a comma-separated list"),
    (["invert", "--exact", "", "--num-images", "2"], "argument --exact: expected a path or a name, got an empty string"),
    (["bench", "exact", "--out", "b", "--nfes", "0"], "argument --nfes: must be at least 1, got 0"),
    (["bench", "exact", "--out", "b", "--rtol=-1e-3"], "argument --rtol: must be a finite number in (0, inf], got -1e-3"),
    (["bench", "coefficients", "--out", "b", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
])
def test_bad_flags_name_the_flag_and_the_value(args, message, capsys):
    assert message in _refused_by_argparse(args, capsys)


def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys):
    err = _one_line_error(["invert", "--exact", "digits", "--device", "cuda:99", "--num-images", "2"], capsys)
    assert "--device cuda:99: this machine has" in err


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not a JSON file"),
    ("[1, 2]", "must hold a JSON object of options, got list"),
    ('{"stepz": 3}', "unknown keys ['stepz']"),
    ('{"steps": 0}', "steps: must be at least 1, got 0"),
    ('{"lr": "fast"}', "lr: expected a number, got 'fast'"),
    ('{"flip": "yes"}', 'flip cannot be "yes"'),
    ('{"batch": null}', "batch cannot be null"),
    ('{"image_size": [8]}', "image_size cannot be [8]"),
    ('{"device": "tpu"}', "device: unknown device 'tpu'"),
])
def test_bad_config_file_names_the_file_and_the_key(tmp_path, content, message, capsys):
    config = tmp_path / "c.json"
    config.write_text(content)
    err = _one_line_error(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert str(config) in err and message in err
    assert not (tmp_path / "run").exists()


def test_sampler_values_are_checked_by_the_sampler_rules(capsys):
    err = _one_line_error(["invert", "--exact", "digits", "--n-data", "50", "--num-images", "2", "--order", "3", "--nfe", "2"],
                          capsys)
    assert "too few for order q=3" in err


@pytest.mark.parametrize("content, message", [
    ("{not json", "config.json is corrupt (not valid JSON"), ("[1, 2]", 'is not a gddim checkpoint (no "format"'),
])
def test_a_folder_whose_config_json_is_not_an_object_is_one_line(tmp_path, content, message, capsys):
    (tmp_path / "config.json").write_text(content)  # neither a diffusers UNet2DModel folder nor a checkpoint
    err = _one_line_error(["sample", str(tmp_path), "--out", str(tmp_path / "s")], capsys)
    assert str(tmp_path) in err and message in err


# ---- run folders -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A one-step VP run on digits, made by the command line (so that the same command resumes it)."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    assert main(RUN_ARGS + ["--out", str(folder)]) == 0
    return folder


RUN_ARGS = ["train", "--process", "vp", "--steps", "1", "--batch", "8", "--warmup", "1", "--ckpt-every", "1",
            "--no-progress"]


@pytest.fixture
def copy(run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize("pointer", ["../../../etc", "/etc", "step_00000001/../../x", "latest", ""])
def test_latest_cannot_lead_out_of_the_run_folder(copy, pointer, capsys):
    (copy / "checkpoints" / "LATEST").write_text(pointer + "\n")
    with pytest.raises(CheckpointError, match="must name a checkpoint folder step_NNNNNNNN beside it"):
        load_checkpoint(copy)
    err = _one_line_error(["sample", str(copy), "--out", str(copy / "s")], capsys)
    assert str(copy / "checkpoints" / "LATEST") in err and repr(pointer) in err


def test_a_checkpoint_linked_from_elsewhere_is_not_followed(copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(copy / "checkpoints" / "step_00000001", elsewhere)
    (copy / "checkpoints" / "step_00000001").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match="is a link out of the run folder"):
        load_checkpoint(copy)


@pytest.mark.parametrize("step", [-1, "1", 1.5, None, True])
def test_step_must_be_a_non_negative_integer(copy, step):
    config = copy / "checkpoints" / "step_00000001" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "step": step}))
    with pytest.raises(CheckpointError, match=r'"step" must be a non-negative integer, got ' + repr(step)):
        load_checkpoint(copy)


def test_step_must_match_the_folder_name(copy):
    config = copy / "checkpoints" / "step_00000001" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "step": 7}))
    with pytest.raises(CheckpointError, match="says step 7, but its folder is step_00000001"):
        load_checkpoint(copy)


@pytest.mark.parametrize("change, message", [
    ({"process": None}, 'lacks its "process" record'),
    ({"process": {"process": "vp", "colour": 1}}, "its process {'process': 'vp', 'colour': 1} cannot be built"),
    ({"network": {"config": {}}}, "its network record cannot be built (KeyError('data_channels'))"),
])
def test_a_config_made_by_hand_is_one_line(copy, change, message, capsys):
    config = copy / "checkpoints" / "step_00000001" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    err = _one_line_error(["sample", str(copy), "--out", str(copy / "s"), "--num-samples", "2", "--nfe", "4"], capsys)
    assert str(copy / "checkpoints" / "step_00000001") in err and message in err


def _record_data(run: Path, source: str) -> None:
    config = run / "checkpoints" / "step_00000001" / "config.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "data": {**meta["data"], "source": source}}))


def test_a_recorded_data_path_is_opened_only_when_named_again(copy, tmp_path, capsys):
    """The issue's attack: a run folder whose data source holds a crafted data_batch_1; evaluate must not read it."""
    crafted, marker = tmp_path / "cifar", tmp_path / "marker"
    crafted.mkdir()
    import pickle

    (crafted / "data_batch_1").write_bytes(pickle.dumps({b"data": _RunsCode(marker)}))
    _record_data(copy, f"cifar10:{crafted}")
    err = _one_line_error(["evaluate", str(copy), "--out", str(tmp_path / "ev")], capsys)
    assert "a path recorded in the run folder" in err and "pass it again with --data PATH" in err
    err = _one_line_error(["invert", "--checkpoint", str(copy), "--num-images", "2"], capsys)
    assert "pass it again with --images PATH" in err
    # named by the user, it is read, and refused as no CIFAR-10 batch
    err = _one_line_error(["evaluate", str(copy), "--data", f"cifar10:{crafted}", "--out", str(tmp_path / "ev")], capsys)
    assert f"{crafted / 'data_batch_1'} is not a CIFAR-10 python batch" in err
    assert not marker.exists()


def test_a_named_data_path_is_used_and_built_in_sets_need_no_naming(copy, tmp_path):
    checkpoint = load_checkpoint(copy)
    assert checkpoint.data_source() == ("digits", None)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=np.zeros((3, 8, 8), np.uint8))
    _record_data(copy, str(npz))
    assert load_checkpoint(copy).data_source(str(npz)) == (str(npz), None)
    with pytest.raises(errors.SettingsError, match="pass it again with --data PATH"):
        load_checkpoint(copy).data_source()


@pytest.mark.parametrize("kind", ["pickle", "truncated", "not-a-dict"])
def test_state_file_that_is_not_plain_weights_is_one_line(copy, tmp_path, kind, capsys):
    state, marker = copy / "checkpoints" / "step_00000001" / "state.pt", tmp_path / "marker"
    if kind == "pickle":
        torch.save({"optimizer": _RunsCode(marker), "step": 1}, state)
        expected = "holds objects other than tensors and plain containers"
    elif kind == "truncated":
        state.write_bytes(state.read_bytes()[:100])
        expected = "is missing or corrupt ("
    else:
        torch.save([1, 2, 3], state)
        expected = 'is not a gddim optimizer state (expected a dict with "optimizer")'
    err = _one_line_error(RUN_ARGS[:4] + ["2"] + RUN_ARGS[5:] + ["--out", str(copy)], capsys)  # resume to step 2
    assert f"{state} {expected}" in err and "weights_only" not in err
    assert not marker.exists()


# ---- one error family -------------------------------------------------------------------------------------

def test_every_user_error_is_a_gddim_error_and_keeps_its_old_base():
    from gddim import checkpoints, data, networks, sampling, training

    assert issubclass(data.DataError, errors.GddimError)
    assert issubclass(checkpoints.CheckpointError, ValueError) and issubclass(checkpoints.CheckpointError, errors.GddimError)
    assert issubclass(training.TrainingError, RuntimeError) and issubclass(sampling.SamplerError, RuntimeError)
    assert issubclass(networks.NetworkConfigError, ValueError)
    assert issubclass(errors.SettingsError, ValueError)
    with pytest.raises(errors.SettingsError, match="n must lie in"):
        from gddim.metrics import real_split

        real_split(load_images("digits")[:10], 6)

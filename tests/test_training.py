"""Networks, training, checkpoints, DDP and the train/sample/evaluate/quickstart commands (tiny sizes, few steps)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gddim
from gddim import evaluation, training
from gddim.cli import main
from gddim.data import load_images
from gddim.evaluation import Sampler, sample_images, save_grid, save_npz, to_uint8
from gddim.sampling import SamplerError
from gddim.networks import EpsModel, NetworkConfig, NetworkConfigError, TIME_SCALE, preset
from gddim.training import CheckpointError, TrainConfig, TrainingError, diffusion_loss, load_checkpoint, train

MICRO = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                      norm_groups=8, dropout=0.1, gaussian_skip=0.5)
PLAIN = NetworkConfig(**{**MICRO.to_dict(), "gaussian_skip": None})
DIGITS = {"source": "digits", "image_size": None}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_images("digits")[:256]


def quick(steps=6, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 8, "lr": 1e-3, "warmup": 2, "ckpt_every": 3, "sample_nfe": 4,
                          **kw})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).tensors


# ---- network -------------------------------------------------------------------------------------------------

def test_network_io_time_scale_and_dtype():
    model = EpsModel(PLAIN, data_channels=1, image_size=8, k=2).eval()
    u, t = torch.randn(3, 2, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        eps = model(u, t)
        direct = model.unet(u, TIME_SCALE * t).sample
        eps64 = model(u.double(), t.double())
    assert eps.shape == u.shape and torch.equal(eps, direct)
    assert eps64.dtype == torch.float64 and torch.allclose(eps64.float(), eps, atol=1e-5)
    assert EpsModel.from_spec(json.loads(json.dumps(model.spec()))).spec() == model.spec()
    with pytest.raises(ValueError, match=r"\(B, 2, 8, 8\)"):
        model(torch.randn(3, 1, 8, 8), t)


@pytest.mark.parametrize("process", [gddim.CLD(), gddim.BDM(image_size=8)], ids=["cld", "bdm"])
def test_gaussian_skip_is_the_exact_gaussian_eps(process):
    """With the UNet's output zeroed the network is E_t u, the exact ε of N(0, s I) data, at per-sample times."""
    model = EpsModel(MICRO, data_channels=2, image_size=8, k=process.k, process=process).eval()
    torch.nn.init.zeros_(model.unet.conv_out.weight)
    torch.nn.init.zeros_(model.unet.conv_out.bias)
    u, t = torch.randn(3, 2 * process.k, 8, 8, dtype=torch.float64), torch.tensor([0.01, 0.5, 0.5], dtype=torch.float64)
    with torch.no_grad():
        eps = model(u, t)
    exact = gddim.gaussian_eps(process, 0.5)
    for i in range(3):
        assert torch.allclose(eps[i:i + 1], exact(u[i:i + 1], t[i:i + 1]), rtol=1e-10, atol=1e-12)
    with pytest.raises(NetworkConfigError, match="needs the process"):
        EpsModel(MICRO, 1, 8, 2)


@pytest.mark.parametrize("config, size, message", [
    (NetworkConfig(channels=(16, 32, 32, 32), attention=(False,) * 4), 12, "multiple of 8"),
    (NetworkConfig(channels=(12, 24), attention=(False, False), norm_groups=8), 8, "divisible by 8"),
    (NetworkConfig(channels=(16, 32), attention=(False,)), 8, "one True/False per level"),
    (NetworkConfig(channels=(16, 32), attention=(False, True), head_dim=12), 8, "head_dim=12"),
])
def test_network_config_errors(config, size, message):
    with pytest.raises(NetworkConfigError, match=message):
        EpsModel(config, 1, size, 1)


def test_presets_build():
    assert EpsModel(preset("tiny"), 1, 8, 2, gddim.CLD()).unet.config.in_channels == 2
    assert EpsModel(preset("small"), 1, 16, 1, gddim.VP()).unet.config.out_channels == 1
    assert EpsModel(preset("cifar10-paper"), 3, 32, 2).config.gaussian_skip is None  # the paper's: no skip
    with pytest.raises(NetworkConfigError, match="unknown network preset"):
        preset("huge")


# ---- the loss ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("process", [gddim.VP(), gddim.CLD(), gddim.BDM(image_size=4)], ids=["vp", "cld", "bdm"])
def test_loss_is_zero_for_the_dirac_oracle(process):
    """On one-point data the exact ε is R_t⁻¹(u_t - mean) = z: the loss vanishes iff perturb's target is z."""
    point = torch.rand(1, 4, 4, dtype=torch.float64) * 2 - 1
    x0 = point[None].repeat(16, 1, 1, 1)

    def oracle_of(p):
        exact = gddim.dirac_eps(process, p)
        return lambda u, t: torch.cat([exact(u[i:i + 1], t[i:i + 1]) for i in range(len(u))])

    g = torch.Generator().manual_seed(0)
    assert diffusion_loss(process, oracle_of(point), x0, g).item() < 1e-18
    assert diffusion_loss(process, oracle_of(-point), x0, g).item() > 1e-2  # a wrong oracle is caught


def test_training_reduces_the_loss(tmp_path, digits):
    process = gddim.VP()
    held_out = load_images("digits", "test")[:128]

    def loss_of(model):
        with torch.no_grad():
            return diffusion_loss(process, model.eval(), held_out, torch.Generator().manual_seed(1)).item()

    torch.manual_seed(0)
    initial = loss_of(EpsModel(MICRO, 1, 8, 1, process))
    result = train(process, digits, tmp_path / "run", MICRO, quick(steps=60, batch_size=32, ckpt_every=60),
                   DIGITS, progress=False)
    assert loss_of(result.model) < 0.6 * initial
    assert result.images_per_second > 0 and len(result.losses) == 60


# ---- resume, interrupt, atomicity, NaN -------------------------------------------------------------------

def test_exact_resume_after_ctrl_c_matches_uninterrupted_run(tmp_path, digits):
    cld = gddim.CLD()
    full = train(cld, digits, tmp_path / "full", MICRO, quick(), DIGITS, progress=False)

    def ctrl_c(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    first = train(cld, digits, tmp_path / "split", MICRO, quick(), DIGITS, callback=ctrl_c, progress=False)
    assert first.interrupted and first.step == 4 and load_checkpoint(tmp_path / "split").step == 4
    rest = train(cld, digits, tmp_path / "split", MICRO, quick(), DIGITS, progress=False)
    assert not rest.interrupted and rest.step == 6
    assert first.losses + rest.losses == full.losses  # bit-identical: t, z, dropout and data all replay
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "split" / "loss.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 7))


def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path, digits, monkeypatch):
    run = tmp_path / "run"
    train(gddim.VP(), digits, run, MICRO, quick(steps=3), DIGITS, progress=False)
    before = weights(run)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(training.torch, "save", disk_full)  # dies after the weights file was written
    with pytest.raises(OSError, match="disk full"):
        train(gddim.VP(), digits, run, MICRO, quick(steps=6), DIGITS, progress=False)
    monkeypatch.undo()
    ckpt = load_checkpoint(run)
    assert ckpt.step == 3 and all(torch.equal(before[k], ckpt.tensors[k]) for k in before)
    assert not (run / "checkpoints" / "step_00000006").exists()
    assert [p.name for p in (run / "checkpoints").glob(".step_00000006.tmp-*")]  # the half-written folder
    assert train(gddim.VP(), digits, run, MICRO, quick(steps=6), DIGITS, progress=False).step == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step_00000006"]


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, digits, monkeypatch):
    calls = []

    def poisoned(process, model, x0, generator=None):
        calls.append(1)
        loss = diffusion_loss(process, model, x0, generator)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(training, "diffusion_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"nan at step 4.*step_00000002"):
        train(gddim.VP(), digits, run, MICRO, quick(ckpt_every=2), DIGITS, progress=False)
    assert load_checkpoint(run).step == 2


# ---- bad input -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cld_run(tmp_path_factory, digits) -> Path:
    run = tmp_path_factory.mktemp("cld") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(gddim.CLD(), digits, run, MICRO, quick(steps=2, ckpt_every=2), DIGITS, progress=False)
    torch.set_num_threads(threads)
    return run


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
        training.load_weights(other_shape, ckpt)
    broken = tmp_path / "broken"
    import shutil
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


# ---- sampling and evaluation helpers ---------------------------------------------------------------------

def test_sampler_specs_round_trip():
    for spec in ("gddim", "gddim:q=2", "gddim:lam=0.5", "gddim:q=1:param=L", "em", "sscs"):
        assert Sampler.parse(spec).label == spec
    assert Sampler.parse("gddim:q=3").order == 3 and Sampler.parse("em:lam=0").lam == 0.0
    with pytest.raises(ValueError, match="bad sampler option"):
        Sampler.parse("gddim:order=2")
    fast = Sampler.parse("gddim:q=3:pred=data:corr=1:interp=sqrt_t:lof=0:final=data")
    assert fast.options() == {"method": "gddim", "order": 3, "parameterization": "R", "prediction": "data",
                              "corrector": True, "interpolation": "sqrt_t", "lower_order_final": False,
                              "final_step": "data"}
    assert Sampler.parse(fast.label) == fast and Sampler.parse("gddim").options() == {"method": "gddim",
                                                                                       "parameterization": "R"}
    with pytest.raises(ValueError, match="corrector in 'gddim:corr=2' must be 0 or 1"):
        Sampler.parse("gddim:corr=2")



def test_grid_and_npz(tmp_path, cld_run):
    ckpt = load_checkpoint(cld_run)
    model = ckpt.network().double()  # float64: the 2-step model's sampler amplifies round-off a lot
    x = sample_images(ckpt.process(), model, n=5, nfe=4, method="gddim", order=1, seed=3)
    again = sample_images(ckpt.process(), model, n=5, nfe=4, method="gddim", order=1, seed=3, batch=2)
    assert x.dtype == torch.float64 and x.shape == (5, 1, 8, 8) and torch.allclose(x, again, rtol=1e-9, atol=1e-9)
    x = x.float()
    grid = save_grid(x, tmp_path / "g.png", nrow=3)
    from PIL import Image
    assert Image.open(grid).size == (6 * (3 * 9 + 1), 6 * (2 * 9 + 1))  # 8x8 tiles + 1px gaps, enlarged 6x
    tiles = np.asarray(Image.open(save_grid(x.repeat(13, 1, 1, 1)[:64], tmp_path / "g64.png")))
    assert tiles.shape == (438, 438)  # 8 rows of 8 digits, each tile 48 px: readable
    expected = np.kron(to_uint8(x[:1])[0, :, :, 0], np.ones((6, 6), np.uint8))  # nearest: every pixel a 6x6 block
    assert np.array_equal(tiles[6:54, 6:54], expected)
    assert Image.open(save_grid(torch.zeros(4, 3, 32, 32), tmp_path / "c.png")).size == (2 * 67, 2 * 67)
    loaded = load_images(str(save_npz(x, tmp_path / "s.npz")))
    assert loaded.shape == x.shape and torch.allclose(loaded, x.clamp(-1, 1), atol=1 / 255 + 1e-6)


# ---- DDP -----------------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import os, sys, torch
from safetensors.torch import save_file
import gddim
from gddim.data import load_images
from gddim.networks import NetworkConfig
from gddim.training import TrainConfig, train
torch.set_num_threads(1)
net = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                    norm_groups=8, dropout=0.1, gaussian_skip=0.5)
out = sys.argv[1]
r = train(gddim.CLD(), load_images("digits")[:256], out + "/run", net,
          TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup=2, ckpt_every=3, sample_nfe=4),
          {"source": "digits", "image_size": None}, progress=False)
rank = os.environ["RANK"]
save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
print("losses", rank, r.losses)
"""


def test_ddp_two_gloo_processes_agree(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step == 3 and ckpt.meta["world_size"] == 2
    assert all(torch.equal(a[k], ckpt.tensors[f"model.{k}"]) for k in a)
    losses = [line.split(" ", 2)[2] for line in proc.stdout.splitlines() if line.startswith("losses")]
    assert len(losses) == 2 and losses[0] == losses[1]  # the all-reduced mean loss, the same on both ranks


def test_train_config_refuses_a_sample_nfe_too_small_for_its_grids():
    with pytest.raises(ValueError, match=r"sample_nfe must be at least 4 \(the sample grids use gDDIM q = 2\), got 3"):
        TrainConfig(sample_nfe=3)


def test_evaluate_refuses_bad_samplers_before_sampling(cld_run, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluation, "sample_images", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"unknown method 'gdim'"):
        evaluation.evaluate(cld_run, ["gddim", "gdim"], [5], n=8, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"nfe=3 gives 2 step\(s\): too few for order q=3"):
        evaluation.evaluate(cld_run, ["gddim:q=3"], [20, 3], n=8, out_dir=tmp_path)
    assert calls == [] and not (tmp_path / "metrics.json").exists()


def test_evaluate_records_a_diverging_sampler_and_goes_on(cld_run, tmp_path, monkeypatch):
    real_sampler = evaluation.sample_images

    def euler_diverges(process, model, n, nfe, method="gddim", **kw):
        if method == "euler":
            raise SamplerError("eps_fn returned NaN or inf at step 2 (t=0.5)")
        return real_sampler(process, model, n, nfe, method, **kw)

    monkeypatch.setattr(evaluation, "sample_images", euler_diverges)
    result = evaluation.evaluate(cld_run, ["euler", "gddim"], [5], n=8, out_dir=tmp_path)
    euler, gddim_q0 = result["records"]
    assert euler["fd"] is None and "NaN or inf at step 2" in euler["error"]
    assert math.isfinite(gddim_q0["fd"]) and "error" not in gddim_q0
    assert json.loads((tmp_path / "metrics.json").read_text())["records"][0]["fd"] is None
    assert (tmp_path / "quality_vs_nfe.png").is_file() and not (tmp_path / "grids" / "euler_nfe5.png").exists()


# ---- CLI -----------------------------------------------------------------------------------------------------

def test_cli_train_sample_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--process", "bdm", "--steps", "2", "--batch", "8", "--ckpt-every", "2", "--out", str(run),
            "--no-progress"]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"preset": "tiny", "lr": 0.001, "warmup": 1}))
    assert main(args + ["--config", str(config)]) == 0
    meta = load_checkpoint(run).meta
    assert meta["process"]["process"] == "bdm" and meta["train"]["lr"] == 0.001 and meta["train"]["steps"] == 2
    assert main(args + ["--lr", "0.01"]) == 2  # another configuration in the same folder
    assert "train.lr" in capsys.readouterr().err
    assert main(["sample", str(run), "--method", "ancestral", "--nfe", "5", "--num-samples", "6", "--out", str(tmp_path / "s")]) == 0
    assert load_images(str(tmp_path / "s.npz")).shape == (6, 1, 8, 8) and (tmp_path / "s.png").is_file()
    assert main(["evaluate", str(run), "--samplers", "gddim:q=1,ancestral", "--nfe", "5,8", "--num-samples", "20",
                 "--out", str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [(r["label"], r["nfe"]) for r in result["records"]] == [("gddim:q=1", 5), ("gddim:q=1", 8),
                                                                   ("ancestral", 5), ("ancestral", 8)]
    assert all(math.isfinite(r["fd"]) and r["floor"] == result["floor"] for r in result["records"])
    assert (tmp_path / "ev" / "quality_vs_nfe.png").is_file()
    assert main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert main(["evaluate", str(run), "--inception", str(tmp_path / "none.pth"), "--out", str(tmp_path / "ev2")]) == 2
    assert "Inception weights" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["bench", "exact", "--dataset", "{missing}", "--out", "{tmp}/b"],
                                     ["train", "--process", "vp", "--data", "{missing}", "--out", "{tmp}/t"]])
def test_cli_bad_data_is_one_line_on_stderr(command, tmp_path, capsys):
    args = [a.format(missing=tmp_path / "no_such_data", tmp=tmp_path) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gddim {args[0]}: error: data source") and "does not exist" in err and "Traceback" not in err


def test_cli_quickstart_reduced(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--steps", "4", "--num-samples", "20"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert {(r["label"], r["nfe"]) for r in result["records"]} == {(label, nfe) for label in ("gddim", "gddim:q=2", "em")
                                                                   for nfe in (10, 20, 50)}
    assert result["process"]["process"] == "cld" and result["step"] == 4
    for name in ("quality_vs_nfe.png", "grids/gddim_q=2_nfe10.png", "grids/em_nfe50.png", "run/loss.csv"):
        assert (out / name).is_file() and str(out / name.split("/")[0]) in printed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    assert main(["quickstart", "--out", str(tmp_path / "other"), "--steps", "4"]) == 2

"""Networks, the loss, training and resume, and the train/sample/evaluate/quickstart commands (tiny sizes, few steps)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gddim
from gddim import training
from gddim.checkpoints import load_checkpoint
from gddim.cli import main
from gddim.data import load_images
from gddim.networks import EpsModel, NetworkConfig, NetworkConfigError, TIME_SCALE, preset
from gddim.training import TrainConfig, TrainingError, diffusion_loss, train
from tiny_runs import DIGITS, MICRO, quick, weights

PLAIN = NetworkConfig(**{**MICRO.to_dict(), "gaussian_skip": None})
pytestmark = pytest.mark.usefixtures("one_thread")


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


# ---- resume, interrupt, NaN -------------------------------------------------------------------------------

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


def test_train_config_refuses_a_sample_nfe_too_small_for_its_grids():
    with pytest.raises(ValueError, match=r"sample_nfe must be at least 2 \(CLD's denoising step takes one of them\), got 1"):
        TrainConfig(sample_nfe=1)
    # the smallest accepted NFE samples every process: the default sampler lowers its order to the steps it has
    for process in (gddim.VP(), gddim.CLD(), gddim.BDM((4, 4))):
        u_T = process.prior_sample((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
        x = gddim.sample(process, gddim.gaussian_eps(process, 0.5), u_T, TrainConfig(sample_nfe=2).sample_nfe)
        assert x.shape == (2, 1, 4, 4) and torch.isfinite(x).all()


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

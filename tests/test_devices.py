"""The same sampling and training on every available device: CPU always, CUDA where there is a GPU.

The CPU cases keep these checks honest in CI; on a GPU machine the CUDA cases test the device paths (coefficients
built in float64 on the host and applied on the GPU, CUDA generators, checkpoints moved between devices).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import gddim
from gddim.checkpoints import load_checkpoint
from gddim.data import load_images
from gddim.exact import dirac_eps
from gddim.generation import sample_images
from gddim.networks import EpsModel, NetworkConfig
from gddim.training import TrainConfig, train

import reference as ref

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DATA_SHAPE = {"vp-linear": (1, 2, 2), "cld": (2, 1, 2), "bdm": (1, 4, 4)}  # (C, H, W)
MICRO = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                      norm_groups=8, gaussian_skip=0.5)
pytestmark = pytest.mark.usefixtures("one_thread")


def dirac(name: str, batch: int = 4):
    process = ref.build(name)
    point = torch.rand(DATA_SHAPE[name], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    u_T = process.prior_sample((batch, *DATA_SHAPE[name]), generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)
    return process, dirac_eps(process, point), u_T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", tuple(DATA_SHAPE))
@pytest.mark.parametrize("method,options", [("gddim", dict(order=2)), ("gddim", dict(order=0, parameterization="L")),
                                            ("euler", {})])
def test_float32_sampling_on_device_follows_float64_on_cpu(device, name, method, options):
    """A float32 state on the device ends within 2e-5 of the float64 CPU run (round-off only, as on the CPU)."""
    process, eps_fn, u_T = dirac(name)
    x64 = gddim.sample(process, eps_fn, u_T, nfe=10, method=method, **options)
    x32 = gddim.sample(process, eps_fn, u_T.float().to(device), nfe=10, method=method, **options)
    assert x32.device.type == device and x32.dtype == torch.float32
    assert (x32.cpu().double() - x64).abs().max() < 2e-5


@pytest.mark.parametrize("device", DEVICES)
def test_stochastic_sampling_on_device_is_reproducible_per_generator(device):
    process, eps_fn, u_T = dirac("cld")
    run = lambda seed: gddim.sample(process, eps_fn, u_T.float().to(device), nfe=20, lam=0.5,
                                    generator=torch.Generator(device).manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert (run(3) - run(4)).abs().max() > 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_network_keeps_a_float32_state(device):
    """A bf16 network gets float32 states and times (sample_images draws u_T in float32) and answers in float32."""
    process = gddim.CLD()
    model = EpsModel(MICRO, data_channels=1, image_size=8, k=2, process=process).to(device, torch.bfloat16).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[1].dtype)))
    x = sample_images(process, model, n=2, nfe=6, order=2)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert seen and set(seen) == {(torch.float32, torch.float32)}


@pytest.mark.parametrize("device", DEVICES)
def test_reference_ode_takes_states_on_the_device(device):
    process, eps_fn, u_T = dirac("cld")
    on_device = gddim.reference_ode(process, lambda u, t: eps_fn(u, t).to(u.device), u_T.to(device), rtol=1e-8,
                                    atol=1e-8)
    assert on_device.device.type == device
    # the ODE runs on the host either way; only CLD's final denoising step runs on the device (float64)
    assert torch.allclose(on_device.cpu(), gddim.reference_ode(process, eps_fn, u_T, rtol=1e-8, atol=1e-8),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_device_resumes_and_loads_anywhere(device, tmp_path, monkeypatch):
    """Train on the device, resume there, then load the checkpoint on the CPU: same weights, same ε."""
    # cuDNN convolutions default to TF32 (10-bit mantissa, ~1e-4 off here): compare full float32 arithmetic
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    images = load_images("digits")[:64]
    config = TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup=1, ckpt_every=2, sample_every=0)
    data = {"source": "digits", "image_size": None}
    first = train(gddim.CLD(), images, tmp_path / "run", MICRO, config, data, progress=False, device=device)
    assert first.step == 4
    resumed = train(gddim.CLD(), images, tmp_path / "run", MICRO, replace(config, steps=6),
                    data, progress=False, device=device)
    assert resumed.step == 6
    checkpoint = load_checkpoint(tmp_path / "run")
    on_device, on_cpu = checkpoint.network("ema", device), checkpoint.network("ema", "cpu")
    u, t = torch.randn(3, 2, 8, 8), torch.tensor([0.05, 0.4, 0.9])
    with torch.no_grad():
        assert torch.allclose(on_device(u.to(device), t.to(device)).cpu(), on_cpu(u, t), atol=1e-5)
    samples = sample_images(checkpoint.process(), on_device, n=5, nfe=8, order=1, seed=7, batch=3)
    again = sample_images(checkpoint.process(), on_device, n=5, nfe=8, order=1, seed=7, batch=3)
    assert samples.device.type == "cpu" and samples.shape == (5, 1, 8, 8) and torch.equal(samples, again)

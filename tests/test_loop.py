"""The sampling loop keeps the accelerator busy (issue 12): no host synchronisation inside it, NaN reported after
it naming the first bad step, coefficients on the device once per plan, compile and autocast options."""

from __future__ import annotations

import json

import pytest
import torch

import gddim
from gddim import evaluation
from gddim.cli import main
from gddim.errors import SettingsError
from gddim.grids import steps_for_nfe, time_grid
from gddim.networks import EpsModel, preset
from gddim.loop import Stepper
from gddim.sampling import SamplerError, standard_normal

import reference as ref

METHODS = [("gddim", {}), ("gddim", dict(order=2)), ("gddim", dict(order=1, parameterization="L")),
           ("gddim", dict(lam=0.5, order=2, prediction="data")), ("gddim", dict(final_step="data")),
           ("euler", {}), ("em", {}), ("ancestral", {}), ("sscs", {})]
# what makes the host wait for the device: reading a tensor's value on the host
SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


def network(name: str) -> tuple[gddim.LinearProcess, EpsModel]:
    """The tiny preset (with its Gaussian skip) for 1-channel 8x8 data, random weights."""
    process = ref.build(name)
    torch.manual_seed(0)
    return process, EpsModel(preset("tiny"), 1, 8, process.k, process).eval()


def prior(process, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return process.prior_sample((batch, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def sync_counter(monkeypatch):
    """Counts host reads of tensor values while `counter.on` is set."""
    counter = type("Counter", (), {"on": False, "count": 0})()
    for name in SYNCS:
        original = getattr(torch.Tensor, name)
        def counted(self, *args, _original=original, **kwargs):
            counter.count += counter.on
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return counter


@pytest.mark.parametrize("name,method,options", [("vp-linear", m, o) for m, o in METHODS if m != "sscs"]
                         + [("cld", m, o) for m, o in METHODS], ids=str)
def test_no_host_sync_inside_the_loop(name, method, options, sync_counter, one_thread):
    """From the first model call to the end of sample(), the only read of a tensor on the host is the one that
    reports non-finite model outputs after the loop; the network's Gaussian skip looks its gains up on the device."""
    process, model = network(name)
    def eps_fn(u, t):
        sync_counter.on = True
        return model(u, t)
    eps_fn.at_times = model.at_times
    with torch.no_grad():
        gddim.sample(process, eps_fn, prior(process), nfe=6, method=method, generator=torch.Generator().manual_seed(0),
                     **options)
    assert sync_counter.on and sync_counter.count == 1


def test_gaussian_skip_table_equals_its_host_computation(one_thread):
    """Inside the loop the skip's gains come from a table made before it; the same samples as computing them per call.
    (A float64 state, so that both see the same float64 times: per call they read float32 times as float64.)"""
    for name in ("vp-linear", "cld"):
        process, model = network(name)
        with torch.no_grad():
            table = gddim.sample(process, model, prior(process).double(), nfe=6)
            host = gddim.sample(process, lambda u, t: model(u, t), prior(process).double(), nfe=6)
        torch.testing.assert_close(table, host, rtol=1e-12, atol=0)
        assert model.gain_table is None


def broken_cld_model():
    """CLD with a Dirac point's exact ε that turns NaN from its 4th call (step 3) on, recording its call times."""
    process = ref.build("cld")
    point = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64).reshape(1, 2, 2)
    exact = gddim.dirac_eps(process, point)
    def broken(u, t):
        broken.times.append(float(t[0]))
        return exact(u, t) * (float("nan") if len(broken.times) >= 4 else 1.0)
    broken.times = []
    u_T = process.prior_sample((2, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return process, broken, u_T


@pytest.mark.parametrize("method,options", METHODS, ids=str)
def test_nan_is_reported_after_the_loop_naming_its_first_step(method, options):
    """The loop runs to its end (no host read stops it) and the error names step 3 and its model time."""
    process, broken, u_T = broken_cld_model()
    with pytest.raises(SamplerError, match=r"NaN or inf at step 3 \(t=(\S+)\)") as raised:
        gddim.sample(process, broken, u_T, nfe=8, method=method, generator=torch.Generator().manual_seed(0), **options)
    assert len(broken.times) == 8
    assert f"(t={broken.times[3]:.6g})" in str(raised.value)


@pytest.mark.parametrize("every,calls", [(1, 4), (2, 4), (3, 6)])
def test_check_every_k_calls_stops_a_bad_run_early(every, calls):
    """With check_every=k the outputs are read after every k-th call: the run stops at the first read after step 3."""
    process, broken, u_T = broken_cld_model()
    with pytest.raises(SamplerError, match=r"NaN or inf at step 3 "):
        gddim.sample(process, broken, u_T, nfe=8, check_every=every)
    assert len(broken.times) == calls


def test_coefficients_reach_the_device_once_per_plan():
    process = ref.build("cld")
    rec = gddim.plan(process, 10)
    like = torch.zeros(2, 2, 1, 1)
    first, second = Stepper(process, rec, like, standard_normal), Stepper(process, rec, like, standard_normal)
    assert first.A is second.A and first.C is second.C and first.Q is second.Q
    assert Stepper(process, rec, like.double(), standard_normal).A.dtype == torch.float64


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_keeps_a_float32_state_close_to_float32(precision, one_thread):
    """The network's convolutions run in half precision, the state and every step stay float32; the samples are
    finite and within 10 unit round-offs of the half format (2⁻⁸ bf16, 2⁻¹¹ fp16; relative to the largest value)
    of the float32 run: measured 0.3 (VP) and 4 (CLD, whose steps multiply ε by up to 4) round-offs."""
    unit = {"bf16": 2.0**-8, "fp16": 2.0**-11}[precision]
    for name in ("vp-linear", "cld"):
        process, model = network(name)
        with torch.no_grad():  # a network near its Gaussian skip, as after training: samples of size ~1, not ~100
            model.unet.conv_out.weight.mul_(0.1)
            model.unet.conv_out.bias.mul_(0.1)
        dtypes, convolved = set(), set()
        model.unet.conv_in.register_forward_hook(lambda module, args, out: convolved.add(out.dtype))
        callback = lambda step, t, state, x_hat: dtypes.update({state.dtype, x_hat.dtype})
        with torch.no_grad():
            full = gddim.sample(process, model, prior(process, 8), nfe=10)
            convolved.clear()
            half = gddim.sample(process, model, prior(process, 8), nfe=10, autocast=precision, callback=callback)
        assert convolved == {torch.bfloat16 if precision == "bf16" else torch.float16}
        assert half.dtype == torch.float32 and dtypes == {torch.float32}
        assert torch.isfinite(half).all()
        error = (half - full).abs().max() / full.abs().max()
        assert 0 < error < 10 * unit, (name, error / unit)


def test_compile_gives_the_same_samples(one_thread):
    """torch.compile's tracing (the eager backend: no C++ build in the test) around the network and its gain table."""
    process, model = network("cld")
    with torch.no_grad():
        plain = gddim.sample(process, model, prior(process), nfe=5)
        compiled = gddim.sample(process, model, prior(process), nfe=5, compile="eager")
    torch.testing.assert_close(compiled, plain, rtol=0, atol=0)  # the eager backend runs the very same kernels


@pytest.mark.slow
def test_compile_with_inductor_gives_the_same_samples(one_thread):
    process, model = network("vp-linear")
    with torch.no_grad():
        plain = gddim.sample(process, model, prior(process), nfe=5)
        compiled = gddim.sample(process, model, prior(process), nfe=5, compile=True)
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)  # inductor fuses and reorders float32 sums


@pytest.mark.parametrize("kwargs,message", [
    (dict(autocast="fp8"), "autocast must be None or one of"), (dict(compile=1), "compile must be True, False"),
    (dict(model_kwargs=[1]), "model_kwargs must be a dict"), (dict(callback=3), "callback must be callable"),
    (dict(check_every=-1), "check_every must be a whole number")])
def test_bad_model_options_are_refused(kwargs, message):
    process = ref.build("vp-linear")
    with pytest.raises(SettingsError, match=message):
        gddim.sample(process, lambda u, t: u, prior(process), nfe=5, **kwargs)


def test_command_line_passes_compile_and_autocast(cld_run, tmp_path, monkeypatch, one_thread):
    """`gddim sample --autocast bf16` samples in half precision; --compile and --autocast reach gddim.sample from
    `gddim evaluate`, whose metrics.json keeps them (a rerun with other options is another evaluation)."""
    assert main(["sample", str(cld_run), "--nfe", "4", "--num-samples", "4", "--autocast", "bf16", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s.npz").is_file()
    seen = []
    real_sampler = evaluation.sample_images
    def recording(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("compile", "autocast")})
        return real_sampler(*args, **{**kwargs, "compile": False})  # the options reached it; no C++ build here
    monkeypatch.setattr(evaluation, "sample_images", recording)
    out = tmp_path / "eval"
    assert main(["evaluate", str(cld_run), "--samplers", "gddim:q=1", "--nfe", "4", "--num-samples", "8", "--compile",
                 "--autocast", "fp16", "--out", str(out)]) == 0
    assert seen == [{"compile": True, "autocast": "fp16"}]
    assert json.loads((out / "metrics.json").read_text())["model_options"] == {"compile": True, "autocast": "fp16"}

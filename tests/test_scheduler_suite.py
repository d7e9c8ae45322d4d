"""GDDIMScheduler under the checks diffusers' scheduler suite makes of every scheduler, written for this project:
one common class over option sets (config round trip, save/load, switching, shapes and dtypes, pinned full-loop
numbers), then each option against diffusers' own scheduler that has it or against a closed form."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from gddim.diffusers import GDDIMScheduler
from gddim.scheduler_options import init_keys

S2 = 0.25  # variance of the stand-in model's data
MULTISTEP_PEERS = [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler,
                   diffusers.DEISMultistepScheduler, diffusers.DPMSolverSinglestepScheduler]
# option set -> (mean |x|, x[0, 0, 0, :2]) of `full_loop` in float64, computed once and pinned
OPTION_SETS = {
    "default": ({}, (0.3147824020266656, -0.7620930963104252, -0.08295367715417348)),
    "ddim": ({"solver_order": 1}, (0.28894135280174105, -0.6943892747377847, -0.07117689382830233)),
    "paper-eps-q2": ({"solver_order": 3, "predict_x0": False, "use_corrector": False, "final_sigmas_type": "sigma_min"},
                     (0.3110717180750701, -0.7536022394479579, -0.08136848854761447)),
    "data-q1-no-corrector": ({"solver_order": 2, "use_corrector": False},
                             (0.311165910994456, -0.7529012209094583, -0.08163677252188757)),
    "karras": ({"use_karras_sigmas": True}, (0.42549632491326933, -0.9891808713511837, -0.11483716680675232)),
    "exponential": ({"use_exponential_sigmas": True}, (0.43643578869748817, -0.9736150532755867, -0.10634085331711848)),
    "beta": ({"use_beta_sigmas": True}, (0.09615619483758009, -0.15550707784517404, 0.007491974228199715)),
    "clip": ({"clip_sample": True, "clip_sample_range": 0.8},
             (0.30947341261470723, -0.7620930963104252, -0.08295367715417348)),
    "threshold": ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2},
                  (0.31420532558781367, -0.7620930963104252, -0.08295367715417348)),
    "v-prediction": ({"prediction_type": "v_prediction"},
                     (0.3147824020266656, -0.7620930963104251, -0.08295367715417343)),
    "sample-prediction": ({"prediction_type": "sample", "timestep_spacing": "linspace"},
                          (0.4278582646629647, -1.0214385534713426, -0.12211863096045758)),
    "zero-snr": ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
                 (0.3142951455842247, -0.7607117672527123, -0.08273220304691899)),
    "learned-range": ({"variance_type": "learned_range"},
                      (0.3147824020266656, -0.7620930963104252, -0.08295367715417348)),
    "stochastic": ({"lam": 0.5, "solver_order": 2}, (0.31538280452417844, -0.1825967990209757, -0.360193244242318)),
    "logsnr-sigma-min": ({"interpolation": "logsnr", "final_sigmas_type": "sigma_min"},
                         (0.3232312866131808, -0.7852960863966247, -0.08672216059599219)),
    "scaled-linear-v-leading": ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                 "prediction_type": "v_prediction", "timestep_spacing": "leading", "steps_offset": 1},
                                (0.42147244505898124, -1.0013962512349932, -0.11482774710570659)),
    "leading-offset": ({"timestep_spacing": "leading", "steps_offset": 1, "solver_order": 3},
                       (0.4384530869730598, -1.0434268912619227, -0.12344373980661003)),
}
SETS = list(OPTION_SETS)


def model_for(scheduler, channels: int = 3):
    """A fixed nonlinear stand-in network in the scheduler's prediction type (twice the channels if learned): the
    exact denoiser of N(0, S2) data plus a tanh of a random per-pixel mixing, defined without dividing by ᾱ."""
    w = torch.randn(channels, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def model(x, t):
        ab = float(scheduler.alphas_cumprod[int(t)])
        a, s = ab**0.5, (1 - ab) ** 0.5
        x0 = a * S2 * x / (ab * S2 + 1 - ab) + 0.1 * torch.tanh(w.to(x) * x + 1e-3 * float(t))
        eps = (x - a * x0) / s
        kind = scheduler.config.prediction_type
        out = eps if kind == "epsilon" else x0 if kind == "sample" else a * eps - s * x0
        if scheduler.config.get("variance_type") == "learned_range":
            out = torch.cat([out, torch.ones_like(out)], dim=1)
        return out

    return model


def full_loop(scheduler, dtype=torch.float64, steps: int = 8) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    model = model_for(scheduler)
    noise = {"generator": torch.Generator().manual_seed(3)} if isinstance(scheduler, GDDIMScheduler) else {}
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, **noise).prev_sample
    return x


def public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", SETS)
class TestCommon:
    def options(self, name: str) -> dict:
        return OPTION_SETS[name][0]

    def test_config_round_trip(self, name):
        sched = GDDIMScheduler(**self.options(name))
        again = GDDIMScheduler.from_config(sched.config)
        assert public(again.config) == public(sched.config)
        torch.testing.assert_close(full_loop(again), full_loop(sched), rtol=0, atol=0)

    def test_save_and_load(self, name, tmp_path):
        sched = GDDIMScheduler(**self.options(name))
        sched.save_config(tmp_path)
        loaded = GDDIMScheduler.from_pretrained(tmp_path)
        assert public(loaded.config) == public(sched.config)
        torch.testing.assert_close(full_loop(loaded), full_loop(sched), rtol=0, atol=0)

    @pytest.mark.parametrize("peer", MULTISTEP_PEERS, ids=lambda c: c.__name__)
    def test_switching_out_and_back(self, name, peer):
        sched = GDDIMScheduler(**self.options(name))
        if peer is diffusers.DEISMultistepScheduler and sched.config.rescale_betas_zero_snr:
            pytest.skip("DEIS has no zero-terminal-SNR schedule")
        theirs = peer.from_config(sched.config)
        if sched.config.variance_type and "variance_type" not in init_keys(peer):
            pytest.skip(f"{peer.__name__} does not split learned variances off the model output")
        assert theirs.config.num_train_timesteps == sched.config.num_train_timesteps
        if sched.config.solver_order != GDDIMScheduler().config.solver_order:  # a chosen order carries over
            assert theirs.config.solver_order == sched.config.solver_order
        assert torch.isfinite(full_loop(theirs, torch.float32)).all()
        back = GDDIMScheduler.from_config(theirs.config)
        torch.testing.assert_close(back.alphas_cumprod, sched.alphas_cumprod, rtol=0, atol=0)
        assert torch.isfinite(full_loop(back)).all()

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_steps_are_float32_steps(self, name, dtype):
        # step() upcasts to float32 and returns the model output's dtype: in lockstep with a float32 scheduler fed
        # the same (upcast) values, every step agrees exactly once rounded
        half, single = GDDIMScheduler(**self.options(name)), GDDIMScheduler(**self.options(name))
        half.set_timesteps(8)
        single.set_timesteps(8)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
        model, seeds = model_for(half), (torch.Generator().manual_seed(3), torch.Generator().manual_seed(3))
        for t in half.timesteps:
            out = model(x, t)
            want = single.step(out.float(), t, x.float(), generator=seeds[0])
            got = half.step(out, t, x, generator=seeds[1])
            assert got.prev_sample.dtype == got.pred_original_sample.dtype == dtype
            assert torch.equal(got.prev_sample, want.prev_sample.to(dtype))
            assert torch.equal(got.pred_original_sample, want.pred_original_sample.to(dtype))
            x = got.prev_sample
        assert x.shape == (2, 3, 4, 4) and torch.isfinite(x).all()

    def test_float32_loop_is_the_float64_loop_to_round_off(self, name):
        if self.options(name).get("lam"):
            pytest.skip("float32 and float64 draw different noise")
        want = full_loop(GDDIMScheduler(**self.options(name)))
        got = full_loop(GDDIMScheduler(**self.options(name)), torch.float32)
        assert got.dtype == torch.float32
        # high-order steps on σ schedules combine outputs with coefficients up to ~6: round-off grows to 1e-5
        torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-5)

    def test_full_loop_regression(self, name):
        pinned = OPTION_SETS[name][1]
        x = full_loop(GDDIMScheduler(**self.options(name)))
        got = (float(x.abs().mean()), *x[0, 0, 0, :2].tolist())
        assert np.all(np.isfinite(got))
        # the pins follow diffusers' float32 ᾱ, which torch's float32 kernels may round an ulp apart on another CPU
        # (zero-snr: 3.7e-8 on an AVX-512 AMD machine); one ulp of ᾱ at t = 124 moves them by 2e-7, float64 round-off
        # by ~1e-15: 1e-6 holds the first and still catches any change of the sampler itself
        np.testing.assert_allclose(got, pinned, rtol=1e-6, atol=1e-12)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["default", "karras", "threshold", "zero-snr", "stochastic"])
def test_steps_stay_on_the_device(device, name):
    # timesteps, states and outputs live on the device; the float32 loop there is the float64 loop on the CPU
    sched = GDDIMScheduler(**OPTION_SETS[name][0])
    sched.set_timesteps(8, device=device)
    assert sched.timesteps.device.type == device
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = full_loop(GDDIMScheduler(**OPTION_SETS[name][0]))
    model, g = model_for(sched), torch.Generator().manual_seed(3)
    x = x.to(device, torch.float32)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=g).prev_sample
        assert x.device.type == device and x.dtype == torch.float32
    if not OPTION_SETS[name][0].get("lam"):  # float32 and float64 draw different noise
        torch.testing.assert_close(x.cpu().double(), want, rtol=0, atol=5e-5)

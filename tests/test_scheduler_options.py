"""Each diffusers option of GDDIMScheduler against the diffusers scheduler that has it, or against an exact answer."""

from __future__ import annotations

import warnings

import diffusers
import numpy as np
import pytest
import torch

import gddim
import gddim.exact
from gddim.diffusers import GDDIMScheduler
from gddim.errors import SettingsError
from gddim.grid_files import grid_record, write_grid_file
from gddim.scheduler_options import NEUTRAL, REPLACED, init_keys
from gddim.tuning import tune_grid

S2 = 0.25


def gaussian_model(scheduler, kind: str = "epsilon", wobble: float = 0.2):
    """The exact denoiser of N(0, S2) data plus a fixed tanh, in the given prediction type, at integer timesteps."""
    w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def model(x, t):
        ab = float(scheduler.alphas_cumprod[int(t)])
        a, s = ab**0.5, (1 - ab) ** 0.5
        x0 = a * S2 * x / (ab * S2 + 1 - ab) + wobble * torch.tanh(w.to(x) * x + 1e-3 * float(t))
        eps = (x - a * x0) / s
        return eps if kind == "epsilon" else x0 if kind == "sample" else a * eps - s * x0

    return model


def loop(scheduler, x, model, **step_kwargs):
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, **step_kwargs).prev_sample
    return x


def start(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("schedule", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_sigma_schedules_are_dpm_solvers(schedule):
    ours, dpm = GDDIMScheduler(**{schedule: True}), diffusers.DPMSolverMultistepScheduler(**{schedule: True})
    ours.set_timesteps(12)
    dpm.set_timesteps(12)
    torch.testing.assert_close(ours.sigmas, dpm.sigmas, rtol=2e-6, atol=0)
    # DPM-Solver rounds Karras timesteps and truncates the others; the model here hears the nearest timestep
    assert (ours.timesteps - dpm.timesteps).abs().max() <= (0 if schedule == "use_karras_sigmas" else 1)
    assert torch.isfinite(loop(ours, start(), gaussian_model(ours))).all()


def test_sigmas_and_timesteps_lists_give_the_same_loop_as_the_step_count():
    karras = GDDIMScheduler(use_karras_sigmas=True)
    karras.set_timesteps(9)
    by_sigmas = GDDIMScheduler()
    by_sigmas.set_timesteps(sigmas=karras.sigmas[:-1].double().tolist())
    assert torch.equal(by_sigmas.timesteps, karras.timesteps)
    # the sigmas attribute is float32, as diffusers': its rounding moves the levels by ~1e-7 relative
    torch.testing.assert_close(loop(by_sigmas, start(), gaussian_model(karras)),
                               loop(karras, start(), gaussian_model(karras)), rtol=0, atol=1e-5)
    spaced, listed = GDDIMScheduler(timestep_spacing="linspace"), GDDIMScheduler()
    spaced.set_timesteps(7)
    listed.set_timesteps(timesteps=spaced.timesteps.tolist())
    assert torch.equal(loop(listed, start(), gaussian_model(listed)), loop(spaced, start(), gaussian_model(spaced)))


def test_a_tuned_grid_file_sets_the_levels(tmp_path):
    # a grid tuned on exact scores of a mixture: the scheduler's loop is gddim.sample's on that grid file when the
    # model hears the grid's own times, and the model's integer timesteps are the times' nearest
    sched = GDDIMScheduler()
    process = sched.process
    data = torch.randn(6, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = gddim.exact.exact_eps(process, data)
    prior = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    times = tune_grid(process, exact, prior, nfe=6, candidates=24)
    path = write_grid_file(tmp_path / "grid.json", grid_record(times, 6, process, {"test": True}))
    sched.set_timesteps(timesteps=path)
    np.testing.assert_array_equal(sched.timesteps.numpy(), np.round(times[:-1] * 1000 - 1))
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = x
    for i, t in enumerate(sched.timesteps):
        got = sched.step(exact(got, torch.full((3,), times[i], dtype=torch.float64)), t, got).prev_sample
    want = gddim.sample(process, exact, x, nfe=6, grid=str(path))
    assert (got - x).abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(SettingsError, match="tuned for the process"):
        GDDIMScheduler(beta_schedule="squaredcos_cap_v2").set_timesteps(timesteps=path)


@pytest.mark.parametrize("final_sigmas_type", ["sigma_min", "zero"])
def test_blend_sigmas_are_gddim_samples_default_vp_grid(final_sigmas_type):
    # use_blend_sigmas: the levels of gddim.sample's blend grid from the first timestep to the landing; with the
    # model hearing those times the loop is gddim.sample's on that grid, and the integer timesteps are the nearest
    sched = GDDIMScheduler(use_blend_sigmas=True, final_sigmas_type=final_sigmas_type)
    sched.set_timesteps(8)
    process = sched.process
    land = 0.0 if final_sigmas_type == "zero" else float(process.time_of_timestep(0))
    times = gddim.grids.blend_grid(process, 1.0, land, 8)
    np.testing.assert_array_equal(sched._times, times)
    np.testing.assert_array_equal(sched.timesteps.numpy(), np.clip(np.round(times[:-1] * 1000 - 1), 0, 999))
    # σ = e^{-λ/2}: each level's log-SNR is the mean of the quadratic and the angle grid's (float32 σ)
    nodes = (gddim.grids.power_grid(1.0, land, 8, 2.0), gddim.grids.angle_grid(process, 1.0, land, 8))
    expected = sum(process.log_snr(ts[:-1]) for ts in nodes) / 2
    np.testing.assert_allclose(-2 * np.log(sched.sigmas[:-1].double().numpy()), expected, rtol=0, atol=1e-5)
    data = torch.randn(6, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = gddim.exact.exact_eps(process, data)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = x
    for i, t in enumerate(sched.timesteps):
        got = sched.step(exact(got, torch.full((3,), times[i], dtype=torch.float64)), t, got).prev_sample
    if final_sigmas_type == "sigma_min":  # gddim.sample lands on t > 0 only
        torch.testing.assert_close(got, gddim.sample(process, exact, x, nfe=8, grid=times), rtol=0, atol=1e-12)
    assert torch.isfinite(got).all() and (got - x).abs().max() > 0.1
    with pytest.raises(SettingsError, match="exclude each other"):
        GDDIMScheduler(use_blend_sigmas=True, use_karras_sigmas=True)


@pytest.mark.parametrize("limit", [{"clip_sample": True, "clip_sample_range": 0.3},
                                   {"thresholding": True, "dynamic_thresholding_ratio": 0.8, "sample_max_value": 1.5}])
@pytest.mark.parametrize("data", [True, False])
def test_limits_on_the_data_prediction_are_ddims(limit, data):
    ours = GDDIMScheduler(solver_order=1, predict_x0=data, **limit)
    ddim = diffusers.DDIMScheduler(timestep_spacing="trailing", **limit)
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    model = gaussian_model(ours, wobble=1.5)
    unlimited = GDDIMScheduler(solver_order=1)
    unlimited.set_timesteps(10)
    want = loop(ddim, start(), model, use_clipped_model_output=True)
    assert (want - loop(unlimited, start(), model)).abs().max() > 0.1  # the limit bites
    torch.testing.assert_close(loop(ours, start(), model), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_zero_terminal_snr_first_order_is_ddims(kind):
    ours = GDDIMScheduler(solver_order=1, rescale_betas_zero_snr=True, prediction_type=kind)
    ddim = diffusers.DDIMScheduler(rescale_betas_zero_snr=True, prediction_type=kind, timestep_spacing="trailing",
                                   clip_sample=False)
    assert float(ours.alphas_cumprod[-1]) == 0.0
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    assert ours.timesteps[0] == 999 and torch.isinf(ours.sigmas[0])
    model = gaussian_model(ours, kind)
    torch.testing.assert_close(loop(ours, start(), model), loop(ddim, start(), model), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("options", [{}, {"solver_order": 2, "use_corrector": False}, {"lam": 0.5},
                                     {"interpolation": "logsnr", "final_sigmas_type": "sigma_min"}])
@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_zero_terminal_snr_is_exact_for_dirac_data(options, kind):
    # one data point: x̂_0 = μ at every level, so every variant lands on μ (ᾱ = 1) or on √ᾱ_0 μ + √(1-ᾱ_0) ε*,
    # with ε* = x (ᾱ = 0 at the start)
    sched = GDDIMScheduler(rescale_betas_zero_snr=True, prediction_type=kind, **options)
    sched.set_timesteps(9)
    mu = torch.linspace(-1, 1, 6, dtype=torch.float64)
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def model(y, t):
        ab = float(sched.alphas_cumprod[int(t)])
        eps = (y - ab**0.5 * mu) / (1 - ab) ** 0.5
        return mu if kind == "sample" else ab**0.5 * eps - (1 - ab) ** 0.5 * mu

    out = loop(sched, x, model, generator=torch.Generator().manual_seed(1))
    a = sched.final_alpha_cumprod
    torch.testing.assert_close(out, a**0.5 * mu + (1 - a) ** 0.5 * x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kwargs,match", [
    ({"rescale_betas_zero_snr": True}, "v_prediction"),
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "predict_x0": False}, "predict_x0=True"),
    ({"rescale_betas_zero_snr": True, "prediction_type": "sample", "use_karras_sigmas": True}, "zero-terminal-SNR"),
    ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "exclude each other"),
    ({"clip_sample": "yes"}, "clip_sample"), ({"variance_type": "learned_sometimes"}, "variance_type"),
])
def test_impossible_options_are_clear_errors(kwargs, match):
    with pytest.raises(SettingsError, match=match):
        GDDIMScheduler(**kwargs)


def test_set_timesteps_refuses_what_it_cannot_do():
    sched = GDDIMScheduler(use_karras_sigmas=True)
    with pytest.raises(SettingsError, match="use_karras_sigmas chooses the levels"):
        sched.set_timesteps(timesteps=[999, 500])
    with pytest.raises(SettingsError, match="exactly one"):
        GDDIMScheduler().set_timesteps(5, sigmas=[10.0, 1.0])
    with pytest.raises(SettingsError, match="within the training schedule"):
        GDDIMScheduler().set_timesteps(sigmas=[1e4, 1.0])
    with pytest.raises(SettingsError, match="integers"):
        GDDIMScheduler().set_timesteps(timesteps=[900.5, 10])


def test_learned_variance_channels_are_split_off():
    plain, learned = GDDIMScheduler(), GDDIMScheduler(variance_type="learned_range")
    plain.set_timesteps(6)
    learned.set_timesteps(6)
    model = gaussian_model(plain)
    with_variance = lambda x, t: torch.cat([model(x, t), torch.full_like(x, 7.0)], dim=1)
    assert torch.equal(loop(learned, start(), with_variance), loop(plain, start(), model))


def test_attributes_are_diffusers():
    sched, ddpm = GDDIMScheduler(beta_schedule="scaled_linear"), diffusers.DDPMScheduler(beta_schedule="scaled_linear")
    # float64 ratios of DDPM's float32 ᾱ: one float32 rounding apart from DDPM's own α
    for name in ("betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(getattr(sched, name).float(), getattr(ddpm, name), rtol=2e-6, atol=2e-7)
    dpm = diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing", final_sigmas_type="sigma_min")
    sched = GDDIMScheduler(final_sigmas_type="sigma_min")
    sched.set_timesteps(7)
    dpm.set_timesteps(7)
    torch.testing.assert_close(sched.sigmas, dpm.sigmas, rtol=1e-6, atol=0)
    assert sched.step_index is None and sched.begin_index is None
    x = start()
    sched.step(gaussian_model(sched)(x, sched.timesteps[0]), sched.timesteps[0], x)
    assert sched.step_index == 1
    sched.set_begin_index(3)
    assert sched.begin_index == 3


PEER_CONFIGS = [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler, diffusers.DDIMScheduler,
                diffusers.DDPMScheduler, diffusers.EulerDiscreteScheduler, diffusers.PNDMScheduler]


@pytest.mark.parametrize("peer", PEER_CONFIGS, ids=lambda c: c.__name__)
def test_every_key_of_a_saved_config_is_used_or_named(peer, tmp_path):
    # on disk a config holds every key: each one is GDDIMScheduler's, neutral, or named in the warning
    peer().save_config(tmp_path)
    config = GDDIMScheduler.load_config(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GDDIMScheduler.from_config(config)
    said = " ".join(str(w.message) for w in caught)
    for key in (k for k in config if not k.startswith("_")):
        assert key in init_keys(GDDIMScheduler) or key in REPLACED or NEUTRAL.get(key, object()) == config[key] \
            or f"{key}=" in said, key


@pytest.mark.parametrize("peer,keys", [
    (diffusers.DPMSolverMultistepScheduler,
     {"euler_at_final": True, "use_lu_lambdas": True, "lambda_min_clipped": -5.1}),
    (diffusers.UniPCMultistepScheduler, {"solver_p": "dummy", "shift_terminal": 0.5}),
    (diffusers.EulerDiscreteScheduler, {"timestep_type": "continuous", "interpolation_type": "log_linear"}),
], ids=["dpm", "unipc", "euler"])
def test_a_foreign_key_that_asks_for_something_is_named(peer, keys):
    config = {**peer().config, **keys, "_use_default_values": []}
    with pytest.warns(UserWarning, match="ignores the config key") as caught:
        GDDIMScheduler.from_config(config)
    said = " ".join(str(w.message) for w in caught)
    assert all(f"{key}=" in said for key in keys)


def test_a_mistyped_keyword_beside_a_config_is_named():
    with pytest.warns(UserWarning, match="solver_ordr=3"):
        sched = GDDIMScheduler.from_config(GDDIMScheduler().config, solver_ordr=3)
    assert sched.config.solver_order == GDDIMScheduler().config.solver_order


def test_a_nan_sigma_and_a_lam_that_is_not_a_number_are_refused():
    with pytest.raises(SettingsError, match="strictly decreasing"):
        GDDIMScheduler().set_timesteps(sigmas=[10.0, float("nan"), 1.0])
    with pytest.raises(SettingsError, match="lam"):
        GDDIMScheduler(lam="0.5")

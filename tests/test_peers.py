"""The peer benchmark's plumbing: shared noise levels, model-call counts, the adapter, the ratios."""

from __future__ import annotations

import numpy as np
import pytest
import diffusers
import torch

import gddim
from gddim import peers
from gddim.diffusers import time_of_alpha_bar


@pytest.fixture(scope="module")
def vp():
    return gddim.VP()


@pytest.fixture(scope="module")
def betas(vp):
    return peers.peer_betas(vp)


def test_peer_schedule_reproduces_the_vp_noise_levels(vp, betas):
    tau = vp.t_end + np.arange(peers.N_TRAIN) * (vp.t_start - vp.t_end) / (peers.N_TRAIN - 1)
    np.testing.assert_allclose(np.cumprod(1 - betas), np.exp(vp.log_alpha_bar(tau)), rtol=1e-12)
    t = np.array([0.001, 0.3, 0.999])
    np.testing.assert_allclose(time_of_alpha_bar(vp, np.exp(vp.log_alpha_bar(t))), t, rtol=1e-12)


def _tau(vp, n):
    """Time of training timestep n of the peers' schedule."""
    return vp.t_end + n * (vp.t_start - vp.t_end) / (peers.N_TRAIN - 1)


@pytest.mark.parametrize("name", peers.PEERS)
def test_every_trailing_peer_spans_the_same_noise_levels_with_nfe_calls(vp, betas, name):
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer(name, betas), vp, eps, u_T, 5)
    shared = peers.gddim_grid(vp, 5, "trailing", betas)
    assert run.calls == 5 and len(run.times) == 6
    # σ-based peers step on float32 σ_k: Δlog ᾱ ≤ 1.2e-7 moves t by ≤ 1.2e-7 / β(1) = 6e-9
    np.testing.assert_allclose(run.times, shared, rtol=0, atol=1e-8)
    # float32 ᾱ: the landing and the first call sit within 1e-6 of t_end = 1e-3 and t_start = 1
    assert abs(run.times[-1] - vp.t_end) < 1e-6 and abs(run.times[0] - vp.t_start) < 1e-6
    np.testing.assert_allclose(vp.log_snr(run.times), vp.log_snr(shared), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,setting", peers.peer_settings())
def test_every_setting_makes_nfe_calls_and_reports_its_levels(vp, betas, name, setting):
    nfe, multistep = 5, name != "ddim"
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer(name, betas, setting), vp, eps, u_T, nfe)
    assert run.calls == nfe and len(run.times) == nfe + 1 and torch.isfinite(run.x).all()
    first = {"trailing": _tau(vp, peers.N_TRAIN - 1), "linspace": _tau(vp, peers.N_TRAIN - 1),
             # diffusers' leading stride: N // NFE for DDIM, N // (NFE + 1) for the multistep schedulers
             "leading": _tau(vp, nfe * (peers.N_TRAIN // (nfe + 1)) if multistep
                             else (nfe - 1) * (peers.N_TRAIN // nfe)),
             "karras": vp.t_start, "karras-zero": vp.t_start}[setting]
    assert run.times[0] == pytest.approx(first, abs=1e-6)
    assert run.times[-1] == (0.0 if setting == "karras-zero" else pytest.approx(vp.t_end, abs=1e-6))
    # the Karras ramp ends on σ_min itself, DDIM's linspace and leading on timestep 0: the last step is σ → σ
    identity = setting == "karras" or (name == "ddim" and setting != "trailing")
    assert (abs(run.times[-2] - run.times[-1]) < 1e-9) == identity
    gaps = peers._gaps(vp, run, peers.gddim_grid(vp, nfe, "trailing", betas))
    assert gaps["last_step_is_identity"] == identity
    # only Karras σ fall between training timesteps (diffusers rounds the timestep a network would get)
    assert (gaps["max_log_snr_gap_level_vs_timestep"] > 1e-4) == setting.startswith("karras")


@pytest.mark.parametrize("kind", [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler])
def test_karras_sigmas_ignore_the_spacing_so_one_karras_run_covers_all(betas, kind):
    sigmas = []
    for spacing in peers.SPACINGS:
        s = kind(num_train_timesteps=len(betas), trained_betas=betas.tolist(), timestep_spacing=spacing,
                 use_karras_sigmas=True)
        s.set_timesteps(7)
        sigmas.append(s.sigmas)
    assert all(torch.equal(sigmas[0], other) for other in sigmas[1:])


def test_make_peer_refuses_unknown_settings(betas):
    with pytest.raises(ValueError, match="Karras settings are for"):
        peers.make_peer("ddim", betas, "karras")
    with pytest.raises(ValueError, match="unknown setting"):
        peers.make_peer("unipc-2", betas, "uniform")


def test_ddim_peer_equals_gddim_order0_on_the_shared_grid(vp, betas):
    # same noise levels and the same ε: diffusers' DDIM (float32 coefficients) and gDDIM q = 0 take the same path
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer("ddim", betas), vp, eps, u_T, 10)
    ours = gddim.sample(vp, eps, u_T, 10, order=0, grid=peers.gddim_grid(vp, 10, "trailing", betas))
    torch.testing.assert_close(run.x, ours, rtol=1e-5, atol=1e-6)


def test_data_error_is_rms_per_dimension_to_the_nearest_point():
    data = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).reshape(2, 1, 2, 2)
    x = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 0.6]]).reshape(2, 1, 2, 2)
    assert peers.data_error(x, data, chunk=1) == pytest.approx((0.1 + 0.2) / 2)


def _rec(sampler, family, setting, path, data, t_final=1e-3):
    return {"sampler": sampler, "family": family, "setting": setting, "nfe": 10, "path_error": path,
            "data_error": data, "t_final": t_final, "lands_at_t_end": t_final == 1e-3,
            "path_error_vs_t_end_reference": path}


def test_summary_ranks_settings_landing_at_t_end_and_lists_t0_landings_apart():
    records = [_rec("dpm++3m", "diffusers", "karras", None, None),  # a run that returned NaN: errors None
               _rec("gddim-q0-trailing", "gddim", "trailing", 0.4, 0.1),
               _rec("gddim-q2-trailing", "gddim", "trailing", 0.2, 0.3),
               _rec("gddim-q2-quadratic", "gddim", "quadratic", 0.1, 0.2),
               _rec("ddim", "diffusers", "trailing", 0.4, 0.1), _rec("ddim", "diffusers", "leading", 0.3, 0.5),
               _rec("unipc-2", "diffusers", "trailing", 0.08, 0.4), _rec("unipc-2", "diffusers", "karras", 0.05, 0.3),
               _rec("unipc-2", "diffusers", "karras-zero", 1e-8, 1e-8, t_final=0.0)]
    (row,) = peers.summarize(records, default="gddim-q2-trailing")
    path, data = row["path_error"], row["data_error"]
    assert path["best_peer"] == {"sampler": "unipc-2", "setting": "karras", "error": 0.05}  # not the t = 0 landing
    assert path["per_peer_best"]["ddim"]["setting"] == "leading" and path["per_peer_best"]["dpm++3m"] is None
    assert path["ratio_best"] == pytest.approx(0.1 / 0.05) and path["ratio_default"] == pytest.approx(0.2 / 0.05)
    assert path["same_levels"]["ratio"] == pytest.approx(0.2 / 0.08)
    assert data["gddim_best"]["sampler"] == "gddim-q0-trailing" and data["ratio_best"] == pytest.approx(1.0)
    assert [r["setting"] for r in row["landing_t0"]] == ["karras-zero"]


def test_references_continue_to_each_landing_and_end_on_a_data_point_at_t0(vp):
    data = torch.tensor([[-0.8, 0.5, 0.1, -0.3], [0.6, -0.4, 0.9, 0.2], [0.0, 0.8, -0.7, 0.5]],
                        dtype=torch.float64).reshape(3, 1, 2, 2)
    eps = gddim.exact_eps(vp, data)
    u_T = vp.prior_sample((4, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    refs = peers.References(vp, eps, u_T, 1e-8)
    t = vp.t_end + 2e-4
    direct = gddim.reference_ode(vp, eps, u_T, t_end=t, rtol=1e-9, atol=1e-9)
    assert peers.rms_error(refs.at(t), direct) < 1e-7
    # at t_end the posterior over 3 separated points is one-hot: the t = 0 end is a data point itself
    dist = torch.cdist(refs.at(0.0).flatten(1), data.flatten(1)).min(1).values
    assert dist.max() < 1e-10 and refs.info["t0_check"]["rms_posterior_mean_t_end_vs_1e-5"] < 1e-10


def test_benchmark_end_to_end_on_a_few_points(vp):
    """The whole peer benchmark on 12 data points: every run makes exactly NFE calls and carries its noise levels,
    DDIM and gDDIM q=0 agree on the shared grid, and the variants are one list with a named default."""
    data = torch.rand(12, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    variants = [{"name": "q0-shared", "order": 0, "grid": "trailing"},
                {"name": "q2-quad", "order": 2, "grid": "quadratic"}]
    result = peers.benchmark(vp, data, nfes=(5,), batch=4, peers=("ddim", "unipc-2"), variants=variants,
                             default="q2-quad", rtol=1e-8, progress=lambda line: None)
    records = result["records"]
    assert len(records) == 2 + 3 + 5 and all(r["model_calls"] == r["nfe"] == 5 for r in records)
    assert all({"t_first_call", "t_last_call", "t_final", "alpha_bar_first_call", "alpha_bar_final"} <= r.keys()
               and r["finite_output"] == (r["path_error"] is not None) for r in records)
    ddim, q0 = (next(r for r in records if r["sampler"] == s and r["setting"] == "trailing")
                for s in ("ddim", "q0-shared"))
    # diffusers keeps ᾱ in float32: the two agree to float32 accuracy, not to float64
    assert abs(ddim["path_error"] - q0["path_error"]) < 1e-5
    zero = next(r for r in records if r["setting"] == "karras-zero")
    assert zero["t_final"] == 0.0 and 0.0 in result["reference"]["landings"]
    (row,) = result["summary"]
    assert row["path_error"]["gddim_default"]["sampler"] == "q2-quad" and row["landing_t0"][0]["sampler"] == "unipc-2"
    assert result["reference"]["rms_difference_rtol_vs_half"] < 1e-6 and result["machine"]["diffusers"]
    with pytest.raises(ValueError, match="not among the variants"):
        peers.benchmark(vp, data, nfes=(5,), batch=4, variants=variants, default="gddim-q2-quadratic")


def test_step_overhead_times_every_scheduler():
    result = peers.step_overhead(shape=(2, 1, 4, 4), steps=3, repeats=1)
    assert result["step_ratio_to_ddim"]["ddim"] == 1.0 and len(result["step_ratio_to_ddim"]) >= 5

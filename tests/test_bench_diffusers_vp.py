"""diffusers' schedulers on VP as the peer family (gddim.bench.diffusers_vp): their noise levels, model calls and
landings, and that the adapter gives DDIM the path of gDDIM q = 0."""

from __future__ import annotations

import numpy as np
import pytest
import diffusers
import torch

import gddim
from gddim.bench import diffusers_vp as peers
from gddim.diffusers import time_of_alpha_bar


@pytest.fixture(scope="module")
def vp():
    return gddim.VP()


@pytest.fixture(scope="module")
def family(vp):
    return peers.DiffusersVP(vp)


@pytest.fixture(scope="module")
def betas(family):
    return family.betas


def test_peer_schedule_reproduces_the_vp_noise_levels(vp, betas):
    np.testing.assert_array_equal(betas, peers.peer_betas(vp))
    tau = vp.t_end + np.arange(peers.N_TRAIN) * (vp.t_start - vp.t_end) / (peers.N_TRAIN - 1)
    np.testing.assert_allclose(np.cumprod(1 - betas), np.exp(vp.log_alpha_bar(tau)), rtol=1e-12)
    t = np.array([0.001, 0.3, 0.999])
    np.testing.assert_allclose(time_of_alpha_bar(vp, np.exp(vp.log_alpha_bar(t))), t, rtol=1e-12)


def _tau(vp, n):
    """Time of training timestep n of the peers' schedule."""
    return vp.t_end + n * (vp.t_start - vp.t_end) / (peers.N_TRAIN - 1)


@pytest.mark.parametrize("name", peers.PEERS)
def test_every_trailing_peer_spans_the_same_noise_levels_with_nfe_calls(vp, family, betas, name):
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer(name, betas), vp, eps, u_T, 5)
    shared = family.shared_times(5)
    assert run.calls == 5 and len(run.times) == 6
    # σ-based peers step on float32 σ_k: Δlog ᾱ ≤ 1.2e-7 moves t by ≤ 1.2e-7 / β(1) = 6e-9
    np.testing.assert_allclose(run.times, shared, rtol=0, atol=1e-8)
    # float32 ᾱ: the landing and the first call sit within 1e-6 of t_end = 1e-3 and t_start = 1
    assert abs(run.times[-1] - vp.t_end) < 1e-6 and abs(run.times[0] - vp.t_start) < 1e-6
    np.testing.assert_allclose(vp.log_snr(run.times), vp.log_snr(shared), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,setting", peers.peer_settings())
def test_every_setting_makes_nfe_calls_and_reports_its_levels(vp, family, betas, name, setting):
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
    gaps = family.gaps(run, family.shared_times(nfe))
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


def test_ddim_peer_equals_gddim_order0_on_the_shared_grid(vp, family, betas):
    # same noise levels and the same ε: diffusers' DDIM (float32 coefficients) and gDDIM q = 0 take the same path
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer("ddim", betas), vp, eps, u_T, 10)
    ours = gddim.sample(vp, eps, u_T, 10, order=0, grid=family.shared_times(10))
    torch.testing.assert_close(run.x, ours, rtol=1e-5, atol=1e-6)


def test_data_prediction_is_the_posterior_mean_of_a_dirac(vp, family):
    """With one data point the exact ε makes E[x_0 | x_t] that point, from any state at any time."""
    point = torch.tensor([[[0.3, -0.7], [0.1, 0.9]]], dtype=torch.float64)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for t in (1e-3, 0.4):
        torch.testing.assert_close(family.data_prediction(gddim.dirac_eps(vp, point), x, t), point.expand(3, -1, -1, -1),
                                   rtol=0, atol=1e-9)

"""The peer benchmark's plumbing: shared noise levels, model-call counts, the adapter, the ratios."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.mark.parametrize("name", peers.PEERS)
def test_every_peer_spans_the_same_noise_levels_with_nfe_calls(vp, betas, name):
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer(name, betas), vp, eps, u_T, 5)
    shared = peers.gddim_grid(vp, 5, "trailing", betas)
    assert run.calls == 5 and len(run.times) == 6
    np.testing.assert_allclose(run.times, shared, rtol=0, atol=1e-9)
    # float32 ᾱ: the landing and the first call sit within 1e-6 of t_end = 1e-3 and t_start = 1
    assert abs(run.times[-1] - vp.t_end) < 1e-6 and abs(run.times[0] - vp.t_start) < 1e-6
    np.testing.assert_allclose(run.peer_log_snr, vp.log_snr(shared), rtol=0, atol=1e-5)


def test_ddim_peer_equals_gddim_order0_on_the_shared_grid(vp, betas):
    # same noise levels and the same ε: diffusers' DDIM (float32 coefficients) and gDDIM q = 0 take the same path
    eps = gddim.gaussian_eps(vp, 0.3)
    u_T = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = peers.run_peer(peers.make_peer("ddim", betas), vp, eps, u_T, 10)
    ours = gddim.sample(vp, eps, u_T, 10, grid=peers.gddim_grid(vp, 10, "trailing", betas))
    torch.testing.assert_close(run.x, ours, rtol=1e-5, atol=1e-6)


def test_data_error_is_rms_per_dimension_to_the_nearest_point():
    data = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).reshape(2, 1, 2, 2)
    x = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 0.6]]).reshape(2, 1, 2, 2)
    assert peers.data_error(x, data, chunk=1) == pytest.approx((0.1 + 0.2) / 2)


def test_best_ratios_compare_gddims_best_with_the_best_peer():
    rec = lambda sampler, family, grid, path, data: {"sampler": sampler, "family": family, "grid": grid, "nfe": 10,
                                                      "path_error": path, "data_error": data}
    records = [rec("gddim-q0", "gddim", "trailing", 0.4, 0.1), rec("gddim-q2", "gddim", "trailing", 0.2, 0.3),
               rec("gddim-q1", "gddim", "quadratic", 0.1, 0.2), rec("ddim", "diffusers", "trailing", 0.4, 0.1),
               rec("unipc-2", "diffusers", "trailing", 0.05, 0.4)]
    (row,) = peers.best_ratios(records)
    assert row["path_error"]["best_peer"] == "unipc-2"
    assert row["path_error"]["ratio_same_grid"] == pytest.approx(4.0)
    assert row["path_error"]["ratio_any_grid"] == pytest.approx(2.0)
    assert row["data_error"]["gddim_any_grid"] == "gddim-q0@trailing" and row["data_error"]["ratio_any_grid"] == 1.0


def test_benchmark_end_to_end_on_a_few_points(vp):
    """The whole peer benchmark on 12 data points: every run makes exactly NFE calls, DDIM and gDDIM q=0 agree on
    the shared grid, and the ratios compare the best of each family."""
    data = torch.rand(12, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    result = peers.benchmark(vp, data, nfes=(5, 10), batch=4, peers=("ddim", "unipc-2"), orders=(0, 2),
                             grids=("trailing",), rtol=1e-8, progress=lambda line: None)
    records = result["records"]
    assert len(records) == 2 * (2 + 2) and all(r["model_calls"] == r["nfe"] for r in records)
    for nfe in (5, 10):
        ddim, q0 = (next(r for r in records if r["sampler"] == s and r["nfe"] == nfe) for s in ("ddim", "gddim-q0"))
        # diffusers keeps ᾱ in float32: the two agree to float32 accuracy, not to float64
        assert abs(ddim["path_error"] - q0["path_error"]) < 1e-5
    assert result["reference"]["rms_difference_rtol_vs_half"] < 1e-6 and result["reference"]["data_error"] >= 0
    assert [row["nfe"] for row in result["ratios"]] == [5, 10]
    assert result["machine"]["diffusers"]


def test_step_overhead_times_every_scheduler():
    result = peers.step_overhead(shape=(2, 1, 4, 4), steps=3, repeats=1)
    assert result["step_ratio_to_ddim"]["ddim"] == 1.0 and len(result["step_ratio_to_ddim"]) >= 5

"""The measurements every benchmark shares (gddim.bench.records)."""

from __future__ import annotations

import math

import pytest
import torch

import gddim
from gddim.bench import records


def test_data_error_is_rms_per_dimension_to_the_nearest_point():
    data = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).reshape(2, 1, 2, 2)
    x = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 0.6]]).reshape(2, 1, 2, 2)
    assert records.data_error(x, data, chunk=1) == pytest.approx((0.1 + 0.2) / 2)
    assert records.rms_error(x, data) == pytest.approx(((0.01 * 4 + 0.16) / 8) ** 0.5)


def test_median_sample_error_ignores_one_sample_on_another_point():
    """Three samples within 0.1 of the reference (per dimension) and one a whole unit away: the RMS is set by the
    one, the median by the three."""
    reference = torch.zeros(4, 1, 2, 2)
    x = torch.full((4, 1, 2, 2), 0.1)
    x[3] = 1.0
    assert records.rms_error(x, reference) == pytest.approx(((3 * 0.01 + 1.0) / 4) ** 0.5)
    assert records.median_sample_error(x, reference) == pytest.approx(0.1)


def test_counting_eps_counts_and_resets():
    counting = records.CountingEps(lambda u, t: -u)
    for _ in range(3):
        assert torch.equal(counting(torch.ones(2), torch.zeros(2)), -torch.ones(2))
    assert counting.reset() == 3 and counting.calls == 0


def test_reference_solution_of_a_dirac_is_the_closed_form():
    """With one data point x0 the VP probability-flow ODE keeps ε = (x_t - √ᾱ_t x0) / σ_t constant."""
    vp = gddim.VP()
    point = torch.tensor([[[0.5, -0.25], [0.0, 0.75]]], dtype=torch.float64)
    u_T = vp.prior_sample((3, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, info = records.reference_solution(vp, gddim.dirac_eps(vp, point), u_T, 1e-9)
    scale = {t: math.exp(vp.log_alpha_bar(t)[0] / 2) for t in (vp.t_start, vp.t_end)}  # √ᾱ_t
    eps = (u_T - scale[vp.t_start] * point) / math.sqrt(1 - scale[vp.t_start] ** 2)
    exact = scale[vp.t_end] * point + math.sqrt(1 - scale[vp.t_end] ** 2) * eps
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-7)
    assert info["rms_difference_rtol_vs_half"] < 1e-7 and info["rtol=1e-09"]["model_calls"] > 0


def test_benchmark_images_joins_the_splits():
    both = records.benchmark_images("digits")
    assert len(both) == len(records.benchmark_images("digits", "train")) + len(records.benchmark_images("digits", "test"))

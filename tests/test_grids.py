"""Time grids and NFE accounting: MATH.md §5.1, §8.5 #14, §9.6 and the Appendix A.6 BDM values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gddim
from gddim.grids import ANGLE_CENTRE, GRIDS, angle_grid, steps_for_nfe, time_grid
from gddim.sampling import sampler_grid

import reference as ref


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
@pytest.mark.parametrize("n_steps", [1, 2, 7, 100])
def test_grid_is_decreasing_with_exact_endpoints(name, grid, n_steps):
    """#14: t_0 = T_s > t_1 > ... > t_N = ε_s, both endpoints bit-exact, N + 1 points."""
    process = ref.build(name)
    ts = time_grid(process, n_steps, grid)
    assert ts.shape == (n_steps + 1,)
    assert ts[0] == process.t_start and ts[-1] == process.t_end
    assert np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("kappa,grid", [(1.0, "uniform"), (2.0, "quadratic")])
def test_power_grid_formula(kappa, grid):
    """MATH §5.1: t_i = (T^{1/κ} + (i/N)(ε^{1/κ} - T^{1/κ}))^κ; κ = 1 is uniform in t, κ = 2 uniform in √t."""
    process = ref.build("cld")
    n = 9
    ts = time_grid(process, n, grid)
    expected = [(1.0 + i / n * (1e-3 ** (1 / kappa) - 1.0)) ** kappa for i in range(n + 1)]
    np.testing.assert_allclose(ts, expected, rtol=1e-14, atol=0)
    np.testing.assert_allclose(np.diff(ts ** (1 / kappa)), (1e-3 ** (1 / kappa) - 1) / n, rtol=1e-12)


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_logsnr_grid_is_uniform_in_log_snr(name):
    """The 'logsnr' grid has equal steps of process.log_snr (bisection to float64 resolution)."""
    process = ref.build(name)
    ts = time_grid(process, 20, "logsnr")
    steps = np.diff(process.log_snr(ts))
    total = process.log_snr(process.t_end)[0] - process.log_snr(process.t_start)[0]
    np.testing.assert_allclose(steps, total / 20, rtol=1e-9)


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_karras_grid_is_uniform_in_a_root_of_sigma(name):
    """The 'karras' grid: σ^{1/7} with σ = exp(-λ/2) (VP: √((1-ᾱ)/ᾱ)) falls in equal steps from t_start to t_end."""
    process = ref.build(name)
    ts = time_grid(process, 12, "karras")
    roots = np.exp(-process.log_snr(ts) / 14)
    a, b = np.exp(-process.log_snr(np.array([process.t_start, process.t_end])) / 14)
    np.testing.assert_allclose(roots, a + np.arange(13) / 12 * (b - a), rtol=1e-9)


@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine"])
def test_vp_time_of_log_snr_closed_form_matches_bisection(name):
    """VP inverts its log-SNR in closed form; the generic bisection of LinearProcess finds the same times, the
    result increases as λ falls, and λ(t) maps back to itself at the end points and in between."""
    process = ref.build(name)
    times = np.concatenate([[process.t_end], np.linspace(process.t_end, process.t_start, 41)[1:-1], [process.t_start]])
    lam = process.log_snr(times)
    closed = process.time_of_log_snr(lam)
    bisected = gddim.LinearProcess.time_of_log_snr(process, lam, 0.5 * process.t_end, process.t_start)
    np.testing.assert_allclose(closed, times, rtol=1e-11)
    np.testing.assert_allclose(bisected, closed, rtol=1e-11)
    assert np.all(np.diff(closed) > 0)
    np.testing.assert_allclose(process.log_snr(closed), lam, rtol=1e-11, atol=1e-11)


def test_karras_grid_of_vp_matches_the_peers_sigma_ramp():
    """On VP the grid's σ = √((1-ᾱ)/ᾱ) is Karras' ramp from σ(t_start) to σ(t_end) with ρ = 7."""
    process = gddim.VP()
    n = 10
    ts = time_grid(process, n, "karras")
    ab = np.exp(process.log_alpha_bar(ts))
    s_max, s_min = (np.sqrt((1 - a) / a) for a in np.exp(process.log_alpha_bar(np.array([1.0, 1e-3]))))
    ramp = (s_max ** (1 / 7) + np.arange(n + 1) / n * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.sqrt((1 - ab) / ab), ramp, rtol=1e-12)


@pytest.mark.parametrize("centre", [0.0, ANGLE_CENTRE, -2.0])
@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_angle_grid_is_uniform_in_the_shifted_angle(name, centre):
    """φ = arctan(e^{-(λ - c)/2}) falls in equal steps, so the log-SNR steps 4Δφ / sin 2φ are shortest at λ = c."""
    process = ref.build(name)
    ts = angle_grid(process, process.t_start, process.t_end, 16, centre)
    log_snr = process.log_snr(ts)
    angles = np.arctan(np.exp(-(log_snr - centre) / 2))
    np.testing.assert_allclose(np.diff(angles), (angles[-1] - angles[0]) / 16, rtol=1e-9)
    steps = np.diff(log_snr)
    assert abs((log_snr[:-1] + log_snr[1:])[np.argmin(steps)] / 2 - centre) < steps.min()
    if centre == ANGLE_CENTRE:
        assert np.array_equal(time_grid(process, 16, "angle"), ts)


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_blend_grid_is_halfway_in_log_snr(name):
    """Each node of 'blend' has the mean log-SNR of the quadratic grid's and the angle grid's node."""
    process = ref.build(name)
    ts, quadratic, angle = (time_grid(process, 11, grid) for grid in ("blend", "quadratic", "angle"))
    expected = (process.log_snr(quadratic) + process.log_snr(angle)) / 2
    np.testing.assert_allclose(process.log_snr(ts), expected, rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(ts) < 0)


def test_angle_grid_starts_at_zero_snr():
    """Flow matching's λ = -inf at t = 1 is the angle π/2: the angle grid needs no t_start below it."""
    process = gddim.FlowMatching()
    ts = time_grid(process, 6, "angle")
    angles = np.arctan(np.exp(-(process.log_snr(ts[1:]) - ANGLE_CENTRE) / 2))
    np.testing.assert_allclose(np.diff(np.concatenate([[np.pi / 2], angles])), (angles[-1] - np.pi / 2) / 6, rtol=1e-9)


@pytest.mark.parametrize("name,expected", [("vp-linear", "blend"), ("vp-cosine", "blend"), ("cld", "blend"),
                                           ("bdm", "blend")])
def test_no_grid_named_is_the_process_default_for_the_default_sampler(name, expected):
    """grid=None: the default sampler runs on the process's default_grid (benchmarks/angle_grid chose it), a named
    order, λ or another method on the paper's quadratic grid."""
    process = ref.build(name)
    assert process.default_grid == expected
    assert sampler_grid(process, None) == sampler_grid(process, None, corrector=False) == expected
    for other in ({"order": 2}, {"lam": 0.5}, {"method": "em"}, {"prediction": "eps"}):
        assert sampler_grid(process, None, **other) == "quadratic"
    assert sampler_grid(process, "uniform") == "uniform"
    eps_fn = lambda u, t: 0.1 * u  # any model: the runs must match bit for bit
    u_T = process.prior_sample((2, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(gddim.sample(process, eps_fn, u_T, 6), gddim.sample(process, eps_fn, u_T, 6, grid=expected))
    assert torch.equal(gddim.sample(process, eps_fn, u_T, 6, order=2),
                       gddim.sample(process, eps_fn, u_T, 6, order=2, grid="quadratic"))


@pytest.mark.parametrize("grid", ["logsnr", "karras"])
def test_log_snr_grids_need_finite_ends(grid):
    """Flow matching has log-SNR -inf at t = 1: the log-SNR grids refuse that start and work from just below it."""
    process = gddim.FlowMatching()
    with pytest.raises(gddim.errors.SettingsError, match="finite log-SNR"):
        time_grid(process, 5, grid)
    ts = time_grid(process, 5, grid, t_start=0.999)
    assert ts[0] == 0.999 and ts[-1] == process.t_end and np.all(np.diff(ts) < 0)


def test_grid_respects_t_start_and_t_end():
    process = ref.build("vp-linear")
    ts = time_grid(process, 5, "quadratic", t_start=0.5, t_end=0.01)
    assert ts[0] == 0.5 and ts[-1] == 0.01 and len(ts) == 6


@pytest.mark.parametrize("name,nfe,points", [
    ("cld", 50, 50),  # the denoising step is the 50th NFE: 49 steps, 50 points (MATH §9.6)
    ("cld", 2, 2),
    ("bdm", 50, 51),  # no denoising: N = NFE
    ("vp-linear", 10, 11),
    ("vp-cosine", 1, 2),
])
def test_points_per_nfe(name, nfe, points):
    """#14: the integrator grid of an NFE budget; the sampler plan makes exactly NFE model calls."""
    process = ref.build(name)
    ts = time_grid(process, steps_for_nfe(process, nfe), process.default_grid)  # the default sampler's
    assert len(ts) == points
    rec = gddim.plan(process, nfe)
    assert rec.steps == nfe
    # a call at every point but the last; CLD's denoising call sits at ε_s and lands on t = 0
    calls, lands = (ts, np.append(ts[1:], 0.0)) if process.denoise else (ts[:-1], ts[1:])
    np.testing.assert_array_equal(rec.times, calls)
    np.testing.assert_array_equal(rec.next_times, lands)


def test_nfe_with_denoising_can_be_turned_off():
    process = ref.build("cld")
    assert steps_for_nfe(process, 10) == 9 and steps_for_nfe(process, 10, denoise=False) == 10
    assert gddim.plan(process, 10, denoise=False).steps == 10


def test_bdm_reference_values():
    """Appendix A.6: T_s = t(σ/α = 80), ᾱ(T_s), and the NFE = 50, κ = 2 grid's first and last points."""
    process = ref.build("bdm")
    t_s = process.t_start
    alpha_bar = process.alpha_bar(t_s)[0]
    assert math.sqrt((1 - alpha_bar) / alpha_bar) == pytest.approx(80.0, rel=1e-12)
    # A.6 prints 0.99597979, whose ρ is 80.0078; the exact inverse of ρ = 80 is 0.995979009 (8e-7 lower)
    assert abs(t_s - 0.99597979) < 1e-6
    ref.assert_printed(alpha_bar, ["1.562e-4"])
    ts = time_grid(process, steps_for_nfe(process, 50), "quadratic")
    ref.assert_printed(ts[:3], ["0.99598", "0.95666", "0.91814"])
    ref.assert_printed(ts[-3:], ["0.0018452", "0.00053171", "1e-5"])


def test_explicit_grid_is_used_as_given():
    process = ref.build("vp-linear")
    seq = [0.9, 0.5, 0.2, 0.01]
    np.testing.assert_array_equal(time_grid(process, 0, seq), seq)
    rec = gddim.plan(process, 3, grid=seq)
    np.testing.assert_array_equal(rec.times, seq[:-1])
    np.testing.assert_array_equal(rec.next_times, seq[1:])


@pytest.mark.parametrize("seq", [[0.5, 0.5, 0.1], [0.1, 0.5], [0.5], [[0.9, 0.1]], [0.9, 0.4, 0.6, 0.1]])
def test_explicit_grid_must_be_strictly_decreasing(seq):
    with pytest.raises(ValueError, match="strictly decreasing 1-D sequence of at least 2 times"):
        time_grid(ref.build("vp-linear"), 1, seq)


@pytest.mark.parametrize("seq", [[1.0, 0.5, 0.0], [1.0, 0.5, -0.1], [1.2, 0.5, 0.1]])
def test_explicit_grid_must_lie_in_the_time_range(seq):
    with pytest.raises(ValueError, match=r"an explicit grid must lie in \(0, 1\]"):
        time_grid(ref.build("vp-linear"), 2, seq)


def test_explicit_grid_refuses_end_points():
    with pytest.raises(ValueError, match="an explicit grid sets its own end points"):
        time_grid(ref.build("vp-linear"), 2, [0.9, 0.5, 0.1], t_end=0.05)


def test_bad_grid_arguments():
    process = ref.build("vp-linear")
    with pytest.raises(ValueError, match="unknown grid 'cubic'"):
        time_grid(process, 5, "cubic")
    with pytest.raises(ValueError, match="need 0 < t_end < t_start"):
        time_grid(process, 5, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="at least one step"):
        time_grid(process, 0)
    with pytest.raises(ValueError, match="nfe=1 leaves no integrator step after the denoising step"):
        steps_for_nfe(ref.build("cld"), 1)
    with pytest.raises(ValueError, match="nfe=0 leaves no integrator step"):
        steps_for_nfe(process, 0)

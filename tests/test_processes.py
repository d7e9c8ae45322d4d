"""Process-level properties of MATH.md §8.2 (#1-#4, #16, #17) and the Appendix A.1-A.3 reference values.

Every check is float64 and compares the engine's closed forms with an independent scipy computation
(tests/reference.py). CLD runs with d = 1: one 2x2 block.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch

import gddim
from gddim import blocks, training
from gddim.processes import DCTBasis

import reference as ref

# ODE references: DOP853 at rtol 1e-12 accumulates a global error of ≤ 5e-12 here (measured; the worst is
# BDM's highest frequency, whose Ψ falls by 5 decades); 1e-10 leaves margin and still catches any wrong term.
ODE_TOL = 1e-10


def modes_of(process) -> list[int]:
    """One mode for shared-mode processes; for BDM the constant, a middle and the highest frequency."""
    return [0] if process.modes == 1 else [0, process.modes // 2 + 1, process.modes - 1]


def process_modes():
    return [(name, m) for name in ref.PROCESS_NAMES for m in modes_of(ref.build(name))]


def diagonal_root(ggt: np.ndarray) -> np.ndarray:
    """G from a diagonal GGᵀ (true for VP, CLD and BDM): the elementwise square root."""
    return np.sqrt(ggt)


# ---- #1 Ψ ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mode", process_modes())
def test_psi_solves_its_ode(name, mode):
    """#1: Ψ(t,s) equals the solution of ∂_tΨ = F_tΨ, Ψ(s,s) = I, forward and backward in time."""
    p = ref.build(name)
    T = p.t_start
    F = ref.mode_fn(p, "F", mode)
    for t, s in [(T, 0.0), (0.9 * T, T), (0.5, 0.3), (1e-3, 0.5), (1e-5, 0.0)]:
        assert ref.rel_err(p.psi(t, s)[0, mode], ref.transition(F, t, s)) < ODE_TOL, (t, s)


@pytest.mark.parametrize("beta_1", [0.0, 2.0])
def test_cld_psi_is_matrix_exponential(beta_1):
    """#1: CLD's F_t = β(t) F0, so Ψ(t,s) = expm(F0 (B(t) − B(s))) exactly; also a time-varying β."""
    p = gddim.CLD(beta_1=beta_1)
    f0 = p.F(0.0)[0, 0] / p.beta(0.0)[0]
    t = np.array([1.0, 0.9, 0.5, 1e-3, 0.3])
    s = np.array([0.0, 1.0, 0.3, 0.5, 0.3])
    expected = np.stack([scipy.linalg.expm(f0 * (p.B(a)[0] - p.B(b)[0])) for a, b in zip(t, s)])
    # entries reach 8e2 for Ψ(1e-3, 0.5) with β_1 = 2: compare relative to the largest entry
    assert ref.rel_err(p.psi(t, s)[:, 0], expected) < 1e-13


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_psi_semigroup_and_inverse(name):
    """#1: Ψ(a,b)Ψ(b,c) = Ψ(a,c) and Ψ(a,b)Ψ(b,a) = I, per mode."""
    p = ref.build(name)
    a, b, c = np.array([p.t_start, 0.2, 1e-3]), np.array([0.4, 0.7, 0.5]), np.array([1e-3, 0.05, p.t_start])
    for x, y in [(p.psi(a, b) @ p.psi(b, c), p.psi(a, c)), (p.psi(a, b) @ p.psi(b, a), blocks.eye(p.modes, p.k)[None])]:
        # k = 1: per-scalar relative error; CLD blocks: relative to the block (Ψ(1e-3, 1) has entries ~2e4)
        scale = np.abs(y).max(axis=(-2, -1), keepdims=True)
        assert np.max(np.abs(x - y) / scale) < 1e-12


# ---- #2 Σ ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mode", process_modes())
def test_sigma_solves_lyapunov(name, mode):
    """#2: Σ_t equals the Lyapunov ODE started from the process's own Σ_0
    (0 for VP, R_0R_0ᵀ for CLD, σ(0)² for BDM)."""
    p = ref.build(name)
    times = [1e-3, 0.1, 0.5, p.t_start]
    solved = ref.lyapunov(ref.mode_fn(p, "F", mode), ref.mode_fn(p, "GGT", mode), p.sigma(0.0)[0, mode], 0.0, times)
    for got, want in zip(p.sigma(np.array(times))[:, mode], solved):
        assert ref.rel_err(got, want) < ODE_TOL


def test_cld_sigma_reaches_stationary_covariance():
    """#2: for large B(t), Σ_t → diag(1, M), which solves FΣ + ΣFᵀ + GGᵀ = 0."""
    p = gddim.CLD(beta_0=20.0)  # B(1) = 20: the transient is e^{-2B}·O(B²) ≈ 2e-15
    stationary = np.diag([1.0, 1.0 / p.m_inv])
    np.testing.assert_allclose(p.sigma(1.0)[0, 0], stationary, rtol=0, atol=1e-13)
    F, GGT = p.F(0.3)[0, 0], p.GGT(0.3)[0, 0]
    np.testing.assert_allclose(F @ stationary + stationary @ F.T + GGT, 0.0, atol=1e-13)
    np.testing.assert_allclose(p.prior_cov()[0], stationary, rtol=0, atol=0)


def test_cld_sigma_appendix_a1():
    """A.1: Σ_t for Σ_0 = diag(0, 0.01), i.e. without ε_num."""
    p = gddim.CLD(eps_num=0.0)
    table = {1e-3: ["3.19389e-06", "2.19185e-04", "1.75576e-02"], 0.1: ["0.221810", "0.129860", "0.215758"],
             0.5: ["0.986461", "0.00528689", "0.247934"], 1.0: ["0.999984", "7.07621e-06", "0.249997"]}
    for t, printed in table.items():
        s = p.sigma(t)[0, 0]
        ref.assert_printed([s[0, 0], s[0, 1], s[1, 1]], printed)


# ---- #3 R_t (CLD) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_root_squares_to_sigma(name):
    """#3a: R_t R_tᵀ = Σ_t on a dense grid, Σ_t from the closed form with Σ_0 = R_0R_0ᵀ."""
    p = ref.build(name)
    t = np.concatenate([np.geomspace(1e-5, 1e-2, 30), np.linspace(1e-2, p.t_start, 100)])
    R = p.R(t)
    assert np.max(np.abs(R @ blocks.transpose(R) - p.sigma(t))) < 1e-10


def test_cld_root_starts_at_r0():
    """#3b: R_0 = diag(√ε_num, √(γM + ε_num)) and the R table starts there."""
    p = ref.build("cld")
    r0 = np.diag([math.sqrt(1e-6), math.sqrt(0.04 / 4 + 1e-6)])
    np.testing.assert_array_equal(p.R0(), r0)
    np.testing.assert_allclose(p.R(0.0)[0, 0], r0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r0 @ r0.T, p.sigma(0.0)[0, 0], rtol=1e-15, atol=0)


def test_cld_rotation_is_orthogonal_appendix_a3():
    """#3c, A.3: Q_t = L_t⁻¹R_t is a rotation, by the tabulated angles."""
    p = ref.build("cld")
    t = np.array([1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5, 1.0])
    Q = np.linalg.solve(p.L(t), p.R(t))[:, 0]
    np.testing.assert_allclose(Q @ blocks.transpose(Q), blocks.eye(len(t), 2), rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.linalg.det(Q), 1.0, rtol=0, atol=1e-11)
    angles = np.degrees(np.arctan2(Q[:, 1, 0], Q[:, 0, 0]))
    table = [-0.9, -9.3, -65.5, -155.0, 121.3, 76.2, 16.3, -126.0, 4.7]
    # half a unit (0.05°) plus 0.01°: the table prints 76.1486° as 76.2, a double rounding through 76.15
    np.testing.assert_allclose(angles, table, rtol=0, atol=0.06)


def test_cld_root_appendix_a2():
    """#3d, A.2: R_t and L_t values, and R_1 for ε_num = 1e-9."""
    p = ref.build("cld")
    table = {1e-3: ["0.00084875", "0.00186379", "-0.02673631", "0.12978354"],
             1e-2: ["-0.02603203", "0.01213516", "-0.2728957", "-0.03262133"],
             0.1: ["0.11275192", "-0.45727261", "0.4289476", "-0.17821993"],
             0.5: ["-0.58415205", "0.80326032", "-0.40580997", "-0.28853392"],
             1.0: ["0.9966196", "-0.08205698", "0.04103561", "0.4983101"]}
    for t, printed in table.items():
        ref.assert_printed(p.R(t)[0, 0], printed)
    ref.assert_printed(p.L(1e-3)[0, 0], ["0.00204795", "0", "0.10703238", "0.07811957"])
    ref.assert_printed(p.L(1.0)[0, 0], ["0.999992", "0", "7.07625e-06", "0.499997"])
    ref.assert_printed(gddim.CLD(eps_num=1e-9).R(1.0)[0, 0], ["0.70135", "0.71281", "-0.3564", "0.35068"])


def _cld_root_rhs(p):
    """dR/dt of CLD on the tuple (R11, R12, R21, R22), with R⁻ᵀ written out (2x2)."""
    f = p.F(0.0)[0, 0] / p.beta(0.0)[0]
    g = 0.5 * p.GGT(0.0)[0, 0, 1, 1] / p.beta(0.0)[0]

    def rhs(t, r):
        a, b, c, d = r
        beta, det = p.beta_0 + p.beta_1 * t, a * d - b * c
        # F R + ½GGᵀR⁻ᵀ: GGᵀ has only a vv entry, so only the second row gets g·(−b, a)/det
        return (beta * (f[0, 0] * a + f[0, 1] * c), beta * (f[0, 0] * b + f[0, 1] * d),
                beta * (f[1, 0] * a + f[1, 1] * c - g * b / det), beta * (f[1, 0] * b + f[1, 1] * d + g * a / det))

    return rhs


def test_cld_root_converges_like_the_official_rk4():
    """#3e: the official recipe (RK4, dt = 1e-5, from R_0) agrees with the engine's DOP853 table at t = 1.

    MATH says "about 1e-5" (the official float32 run); in float64 RK4 at this step is far better:
    measured 1.6e-11, so 1e-9 is the bound. At dt = 1e-4 it must be ~10⁴ times worse (4th order; measured
    1.4e-7): this shows the engine's table is the limit the RK4 recipe converges to."""
    p = ref.build("cld")
    rhs = _cld_root_rhs(p)
    fine = ref.rk4(rhs, tuple(p.R0().ravel()), 0.0, 1.0, 100_000)
    coarse = ref.rk4(rhs, tuple(p.R0().ravel()), 0.0, 1.0, 10_000)
    exact = p.R(1.0)[0, 0].ravel()
    fine_err, coarse_err = np.max(np.abs(np.array(fine) - exact)), np.max(np.abs(np.array(coarse) - exact))
    assert fine_err < 1e-9
    assert coarse_err > 1000 * fine_err


@pytest.mark.slow
def test_cld_root_matches_radau():
    """#3e (slow: Radau takes ~3 s): the engine's explicit DOP853 table agrees with an implicit Radau solve,
    the safe choice for the stiff start."""
    p = ref.build("cld")
    times = [1e-5, 1e-3, 1e-2, 0.1, 0.5, 1.0]
    radau = ref.gddim_root(ref.mode_fn(p, "F"), ref.mode_fn(p, "GGT"), p.R0(), 0.0, times)
    np.testing.assert_allclose(p.R(np.array(times))[:, 0], radau, rtol=0, atol=1e-12)


# ---- #4 VP/BDM degeneracy --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "bdm"])
def test_scalar_processes_have_root_sigma_identity(name):
    """#4: R_t = L_t = σ_t I with σ_t = √(1 − ᾱ_t), for every mode."""
    p = ref.build(name)
    t = np.linspace(1e-5, p.t_start, 200)
    sigma_t = np.sqrt(ref.noise_var(name, t))
    np.testing.assert_allclose(p.R(t)[..., 0, 0], np.broadcast_to(sigma_t[:, None], (len(t), p.modes)), rtol=1e-12)
    np.testing.assert_array_equal(p.L(t), p.R(t))


@pytest.mark.parametrize("sigma_blur_max", [1.0, 10.0, 20.0])
def test_bdm_noise_rate_is_positive(sigma_blur_max):
    """#4: G_t² = −ᾱ'/ᾱ − 2(1 − ᾱ) d'/d > 0 for all 32x32 frequencies and t in (0, 1)."""
    p = gddim.BDM(image_size=32, sigma_blur_max=sigma_blur_max)
    t = np.linspace(1e-4, 1 - 1e-4, 500)
    ggt = p.GGT(t)[..., 0, 0]
    # the −ᾱ'/ᾱ part alone is ≥ π/1.008·tan(0.004π/2/1.008) ≈ 0.0195, and d'/d ≤ 0 only adds to it
    assert ggt.min() > 0.019


@pytest.mark.parametrize("name", ["vp-cosine", "bdm"])
def test_drift_and_noise_match_the_marginals(name):
    """F_t = d/dt log a_t (a the mean coefficient) and GGᵀ_t = dσ²/dt − 2F_tσ² (MATH §4.3), differentiating the
    independent ᾱ_t and (BDM) d_t formulas by complex step: f'(t) = Im f(t + ih)/h, exact to round-off."""
    p = ref.build(name)
    t = np.linspace(0.02, 0.95, 40)

    def log_mean_coef(x):
        if name == "bdm":
            return ref.bdm_log_mean_coef(p.freqs, x)
        return 0.5 * np.log(ref.alpha_bar(name, x))[:, None]

    h = 1e-30
    d_log_a = np.imag(log_mean_coef(t + 1j * h)) / h
    d_var = np.imag(ref.noise_var(name, t + 1j * h))[:, None] / h
    var = ref.noise_var(name, t)[:, None]
    np.testing.assert_allclose(p.F(t)[..., 0, 0], d_log_a, rtol=1e-12)
    np.testing.assert_allclose(p.GGT(t)[..., 0, 0], d_var - 2 * d_log_a * var, rtol=1e-12)


# ---- the general linear SDE ------------------------------------------------------------------------

def _as_linear_sde(p, **options) -> gddim.LinearSDE:
    """p rebuilt from its F and G on p's own sampling range (the cosine VP's β is unbounded after t_start)."""
    return gddim.LinearSDE(lambda t: p.F(t)[0], lambda t: diagonal_root(p.GGT(t)[0]), p.sigma(0.0)[0], p.k,
                           mode_shape=p.mode_shape, basis=p.basis.name, t_start=p.t_start, t_end=p.t_end,
                           **options)


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_linear_sde_matches_closed_forms(name):
    """A LinearSDE built from the F and G of VP, CLD, BDM (4x4, DCT) reproduces their Ψ, Σ and R."""
    p = ref.build(name)
    general = _as_linear_sde(p)
    t = np.linspace(0.0, p.t_start, 41)
    s = t[::-1]
    # Ψ per entry in relative error: BDM's entries span 1e-6..1e6; DOP853 at rtol 1e-12 over [0, 1]
    # reaches ~1e-10 there (measured 8.2e-11), the other processes ≤ 4e-12
    psi, closed = general.psi(t, s), p.psi(t, s)
    scale = np.abs(closed).max(axis=(-2, -1), keepdims=True)
    assert np.max(np.abs(psi - closed) / scale) < 3e-10
    assert ref.rel_err(general.sigma(t), p.sigma(t)) < 1e-10
    assert ref.rel_err(general.R(t), p.R(t)) < 1e-10
    assert general.basis.name == p.basis.name and general.mode_shape == p.mode_shape


def _scalar_sde(G, **options) -> gddim.LinearSDE:
    return gddim.LinearSDE(lambda t: -0.5, G, 0.0, 1, **options)


def test_linear_sde_is_solved_and_queried_on_its_own_range():
    """The ODE runs over [0, t_max] (t_max = t_start unless given); no method answers outside it by extrapolating."""
    p = ref.build("vp-cosine")
    general = _as_linear_sde(p)
    assert general.t_max == p.t_start and general.config()["t_max"] == p.t_start
    for query in (lambda t: general.sigma(t), lambda t: general.R(t), lambda t: general.psi(t, 0.5),
                  lambda t: general.F(t), lambda t: general.GGT(t), lambda t: general.sigma([0.5, -1e-9])):
        with pytest.raises(ValueError, match=r"defined on t in \[0, 0\.99\d*\] \(its t_max\).*larger t_max"):
            query(1.0)
    longer = _scalar_sde(lambda t: 1.0, t_start=0.5, t_max=0.8)
    assert longer.sigma(0.8)[0, 0, 0, 0] == pytest.approx(1 - math.exp(-0.8), rel=1e-12)  # Σ' = -Σ + 1


def test_linear_sde_training_times_stay_in_its_range():
    """Training draws t in [t_train_min, t_max]: a LinearSDE on [0, 0.5] is never asked for a later time."""
    process = _scalar_sde(lambda t: 1.0, t_start=0.5)
    seen = []

    def model(u, t):
        seen.append(t)
        return torch.zeros_like(u)

    x0 = torch.zeros(4000, 1, 1, 1, dtype=torch.float64)
    training.diffusion_loss(process, model, x0, generator=torch.Generator().manual_seed(0))
    t = seen[0]
    assert process.t_train_min <= t.min() and t.max() <= 0.5 and t.max() > 0.49


def test_linear_sde_refuses_a_singular_drift():
    """The cosine VP's β ~ 2/(1 - t) asked for up to t = 1: the end point or the approach to it is caught
    (which one depends on the solver's steps, never on the BLAS kernel: both are refused)."""
    message = (r"^[FG]\(t\) is singular at t = (1|0\.99999\d*): \|(F|GGᵀ)\| = .* there, beyond what the process ODE "
               r"can follow .*; end the time range before it \(lower t_start/t_max\) or fix [FG]$")
    with pytest.raises(ValueError, match=message):
        _as_linear_sde(ref.build("vp-cosine"), t_max=1.0)


@pytest.mark.parametrize("G,message", [
    (lambda t: np.sqrt(0.5 - t) if t <= 0.5 else np.nan, r"^G\(t\) is not finite at t = 0\.5\d*; a LinearSDE needs finite F "
     r"and G on its time range \[0, t_max = 0\.9\]: fix G or lower t_start/t_max$"),
    (lambda t: 1 / (t - 0.5), r"^G\(t\) is singular at t = 0\.49\d*: \|GGᵀ\| = 1\.\d+e\+08 there"),
], ids=["nan", "pole"])
def test_linear_sde_refuses_a_singular_or_non_finite_noise(G, message):
    with pytest.raises(ValueError, match=message):
        _scalar_sde(G, t_start=0.9)


@pytest.mark.parametrize("options,message", [
    (dict(t_start=0.9, t_max=0.8), r"0 < t_end < t_start <= t_max; got t_end=0\.001, t_start=0\.9, t_max=0\.8"),
    (dict(t_end=0.0), r"0 < t_end < t_start <= t_max; got t_end=0\.0, t_start=1\.0, t_max=1\.0"),
    (dict(t_end=0.5, t_start=0.4), r"got t_end=0\.5, t_start=0\.4"),
], ids=["start-after-max", "end-at-zero", "end-after-start"])
def test_linear_sde_time_range_is_checked(options, message):
    with pytest.raises(ValueError, match=message):
        _scalar_sde(lambda t: 1.0, **options)


# ---- log-SNR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*ref.PROCESS_NAMES, "linear-sde-cld"])
def test_log_snr_strictly_decreasing(name):
    """log-SNR falls strictly on [t_train_min, t_start] for every process, a user-built one included."""
    p = _as_linear_sde(ref.build("cld")) if name == "linear-sde-cld" else ref.build(name)
    t = np.linspace(p.t_train_min, p.t_start, 3000)
    snr = p.log_snr(t)
    assert snr.shape == t.shape and np.all(np.isfinite(snr))
    assert np.all(np.diff(snr) < 0)


# ---- #16 DCT ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 4), (4, 6), (32, 32)])
def test_dct_matches_scipy_and_is_orthonormal(shape):
    """#16: DCT = scipy dctn(type 2, ortho) on the last two axes, IDCT(DCT x) = x, and norms are kept."""
    x = torch.randn(3, 2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    basis = DCTBasis()
    y = basis.forward(x)
    expected = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(basis.inverse(y).numpy(), x.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(torch.linalg.vector_norm(y, dim=(-2, -1)), torch.linalg.vector_norm(x, dim=(-2, -1)),
                               rtol=1e-14)


def test_bdm_state_basis_is_dct():
    """BDM's to_basis/from_basis are the per-channel 2-D DCT and its inverse; frequencies follow MATH §4.3."""
    p = gddim.BDM(image_size=(4, 6))
    u = torch.randn(2, 3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = p.to_basis(u)
    np.testing.assert_allclose(y[:, 0].numpy(), scipy.fft.dctn(u.numpy(), norm="ortho", axes=(-2, -1)), atol=1e-13)
    np.testing.assert_allclose(p.from_basis(y).numpy(), u.numpy(), atol=1e-13)
    i, j = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    np.testing.assert_allclose(p.freqs, ((np.pi * i / 4) ** 2 + (np.pi * j / 6) ** 2).ravel(), rtol=1e-15)


# ---- #17 perturbation ------------------------------------------------------------------------------

def _data(process, n, seed=0):
    size = (4, 4) if process.modes > 1 else (2, 3)
    return torch.rand(n, 1, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_perturb_mean_is_the_forward_mean(name):
    """With z = 0, perturb returns the independent forward mean:
    √ᾱ x (VP), Ψ(t,0)(x, 0) (CLD), IDCT(a_t DCT x) (BDM)."""
    p = ref.build(name)
    x = _data(p, 3)
    t = torch.tensor([1e-5, 0.3, p.t_start], dtype=torch.float64)
    u, _ = p.perturb(x, t, z=torch.zeros_like(p.data_to_state(x)))
    tn, xn = t.numpy(), x.numpy()
    if name == "cld":  # Ψ(t,0) checked by #1; here its first column carries x into (x, v)
        psi = p.psi(tn, 0.0)[:, 0]
        want = np.concatenate([psi[:, 0, 0, None, None, None] * xn, psi[:, 1, 0, None, None, None] * xn], axis=1)
    elif name == "bdm":
        a = np.exp(ref.bdm_log_mean_coef(p.freqs, tn)).reshape(3, 1, 4, 4)
        want = scipy.fft.idctn(a * scipy.fft.dctn(xn, norm="ortho", axes=(-2, -1)), norm="ortho", axes=(-2, -1))
    else:
        want = np.sqrt(ref.alpha_bar(name, tn))[:, None, None, None] * xn
    np.testing.assert_allclose(u.numpy(), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_perturb_oracle_loss_is_zero(name):
    """#17: for Dirac data the oracle ε(u,t) = R_t⁻¹(u − m_t) recovers the training target z: zero loss."""
    p = ref.build(name)
    point = _data(p, 1)[0]
    times = [p.t_train_min, 1e-3, 0.1, 0.5, p.t_start]
    t = torch.tensor(times, dtype=torch.float64).repeat_interleave(4)
    u, z = p.perturb(point.expand(len(t), *point.shape), t, generator=torch.Generator().manual_seed(2))
    oracle = gddim.dirac_eps(p, point)
    for i, ti in enumerate(times):
        rows = slice(4 * i, 4 * i + 4)
        eps = oracle(u[rows], t[rows])
        # round-off only: the whitening K_t⁻¹ amplifies float64 error by cond(R_t) ≤ 1e3 (CLD at t = 1e-5)
        assert torch.max(torch.abs(eps - z[rows])) < 1e-11, ti


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
@pytest.mark.parametrize("t", [1e-3, 0.5])
def test_perturb_covariance_is_sigma(name, t):
    """#17: Monte Carlo covariance of u_t − m_t per mode equals Σ_t within 5 standard errors of a sample covariance."""
    p = ref.build(name)
    n_images = 20_000
    x = _data(p, n_images, seed=3)
    tt = torch.full((n_images,), t, dtype=torch.float64)
    u, _ = p.perturb(x, tt, generator=torch.Generator().manual_seed(4))
    mean, _ = p.perturb(x, tt, z=torch.zeros_like(u))
    y = p.to_basis(u - mean)  # (N, k, C, H, W)
    if p.modes == 1:  # every pixel is an independent draw of the one k x k system
        samples = y.permute(0, 2, 3, 4, 1).reshape(-1, 1, p.k)
    else:  # per frequency, one draw per image
        samples = y.permute(0, 2, 1, 3, 4).reshape(n_images, p.k, p.modes).permute(0, 2, 1)
    samples = samples.numpy()
    cov = np.einsum("nma,nmb->mab", samples, samples) / len(samples)  # the mean is known to be 0
    sigma = p.sigma(t)[0]
    assert np.all(np.abs(cov - sigma) < ref.cov_tolerance(sigma, len(samples)))
    # different frequencies of BDM are independent: the pixel covariance is σ_t² I
    if p.modes > 1:
        pixels = (u - mean).reshape(n_images, -1).numpy()
        pixel_cov = pixels.T @ pixels / n_images
        expected = np.eye(pixels.shape[1]) * sigma[0, 0, 0]
        assert np.all(np.abs(pixel_cov - expected) < ref.cov_tolerance(expected, n_images))


@pytest.mark.parametrize("process", [gddim.VP(), gddim.VP(schedule="cosine", t_end=2e-3), gddim.CLD(beta_0=2.0),
                                     gddim.BDM(image_size=(4, 8)), gddim.BDM(image_size=np.int64(4)),
                                     gddim.DiscreteVP(np.cumprod(1 - np.linspace(1e-4, 0.02, 50)))],
                         ids=lambda p: p.name)
def test_config_rebuilds_the_same_process(process):
    """What a checkpoint stores (config()) rebuilds a process with the same recipe and the same Ψ and Σ."""
    rebuilt = gddim.process_from_config(process.config())
    assert type(rebuilt) is type(process) and rebuilt.config() == process.config()
    t = np.array([0.05, 0.3, 0.9])
    assert np.array_equal(rebuilt.psi(t, t / 2), process.psi(t, t / 2))
    assert np.array_equal(rebuilt.sigma(t), process.sigma(t))


def test_unknown_process_in_config_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown process 'ddpm' in config; known: \['bdm', 'cld', 'flow', 'vp', 'vp-discrete'\]"):
        gddim.process_from_config({"process": "ddpm"})


@pytest.mark.parametrize("build,message", [
    (lambda: gddim.VP(beta_min=-1.0), r"^VP needs 0 <= beta_min < beta_max \(β\(t\) >= 0\); got beta_min=-1\.0$"),
    (lambda: gddim.VP(beta_max=math.inf), r"^VP needs 0 <= beta_min < beta_max \(beta_min=0\.1\); got beta_max=inf$"),
    (lambda: gddim.VP(schedule="cosine", cosine_s=-0.01), r"^VP needs cosine_s >= 0 .*; got cosine_s=-0\.01$"),
    (lambda: gddim.CLD(m_inv=0.0), r"^CLD needs m_inv > 0 \(M⁻¹, the inverse mass\); got m_inv=0\.0$"),
    (lambda: gddim.CLD(m_inv=math.nan), r"^CLD needs m_inv > 0 .*; got m_inv=nan$"),
    (lambda: gddim.CLD(gamma=-0.1), r"^CLD needs gamma >= 0 .*; got gamma=-0\.1$"),
    (lambda: gddim.CLD(eps_num=-1e-6), r"^CLD needs eps_num >= 0; got eps_num=-1e-06$"),
    (lambda: gddim.CLD(beta_0=-4.0), r"^CLD needs β\(0\) = beta_0 > 0; got beta_0=-4\.0$"),
    (lambda: gddim.CLD(beta_1=-4.0), r"^CLD needs β\(1\) = beta_0 \+ beta_1 > 0 \(beta_0=4\.0\); got beta_1=-4\.0$"),
    (lambda: gddim.BDM(image_size=0), r"^BDM needs image_size a positive integer or a pair \(H, W\) of them; got 0$"),
    (lambda: gddim.BDM(image_size=(4, 4, 4)), r"pair \(H, W\) of them; got \(4, 4, 4\)$"),
    (lambda: gddim.BDM(image_size=8.0), r"pair \(H, W\) of them; got 8\.0$"),
    (lambda: gddim.BDM(sigma_blur_max=-1.0), r"^BDM needs sigma_blur_max >= 0; got sigma_blur_max=-1\.0$"),
    (lambda: gddim.BDM(min_scale=0.0), r"^BDM needs 0 < min_scale <= 1; got min_scale=0\.0$"),
    (lambda: gddim.BDM(offset=-0.004), r"^BDM needs offset >= 0 .*; got offset=-0\.004$"),
], ids=["vp-beta-min", "vp-beta-max", "vp-cosine-s", "cld-m-inv", "cld-m-inv-nan", "cld-gamma", "cld-eps-num",
        "cld-beta-0", "cld-beta-1", "bdm-size-0", "bdm-size-3d", "bdm-size-float", "bdm-sigma-blur", "bdm-min-scale",
        "bdm-offset"])
def test_nonsense_process_parameters_are_refused(build, message):
    """A parameter outside its valid range is a ValueError naming it, its value and the rule."""
    with pytest.raises(ValueError, match=message):
        build()

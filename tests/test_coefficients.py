"""Coefficient checks of MATH.md §8.3-8.4 (#5, #6, #8a, #8c, #9, #12, #13), Appendix A.4 and Recursion.then.

Each engine coefficient is compared with an independent float64 computation (tests/reference.py): adaptive
quadrature of the defining integral, an ODE solve, or a closed form from the DDPM/BDM papers.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.linalg
import torch

import gddim
from gddim import blocks, coefficients
from gddim.coefficients import Recursion
from gddim.errors import SettingsError
from gddim.sampling import _sscs_half_step, run_recursion

import reference as ref

vp_alpha_bar = functools.partial(ref.alpha_bar, "vp-linear")

# (t, s) steps: a big early step, a middle one, and the stiff end where CLD's Σ_xx ~ 1e-6
STEPS = [(1.0, 0.9), (0.5, 0.3), (0.01, 0.001)]


def eps_integrand(p, s: float, parameterization: str = "R"):
    """τ (n,) -> Ψ(s,τ) ½GGᵀK_τ⁻ᵀ stacked (n, M, k, k): the ε-integrand of MATH §2.1."""
    def f(tau):
        tau = np.atleast_1d(tau)
        root = p.K(tau, parameterization)
        return p.psi(np.full_like(tau, s), tau) @ (0.5 * p.GGT(tau) @ blocks.transpose(np.linalg.inv(root)))
    return f


def grid(p, n=6):
    """A κ = 2 grid on the process's sampling range: steps from large to very small near t_end."""
    return gddim.time_grid(p, n, "quadratic")


def history(ts, i, order):
    """The Lagrange nodes of step i: t_i, t_{i-1}, ..., t_{i-r} with r = min(i, q)."""
    return [ts[i - j] for j in range(min(i, order) + 1)]


# ---- #5 q = 0 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_order0_coefficient_is_the_integral(name):
    """#5: C = R_s − Ψ(s,t)R_t equals adaptive quadrature of ∫_t^s Ψ(s,τ)½GGᵀR⁻ᵀdτ to 1e-9 (relative)."""
    p = ref.build(name)
    for t, s in STEPS:
        t = min(t, p.t_start)
        C = coefficients.exponential_integrator(p, np.array([t, s])).C[0, 0]
        integral = ref.integrate(lambda x: eps_integrand(p, s)(x)[0], t, s)
        assert ref.rel_err(C, integral) < 1e-9, (t, s)


def test_order0_left_riemann_is_only_first_order():
    """#5: the official 10k-point left Riemann sum misses C by its Euler-Maclaurin term (h/2)(f(t) − f(s)),
    ~1e-4 on CLD's first step: it agrees with the closed form only to ~1e-4..1e-5 (MATH §9.3)."""
    p = ref.build("cld")
    for t, s in STEPS:
        n = 10_000
        f = eps_integrand(p, s)
        C = coefficients.exponential_integrator(p, np.array([t, s])).C[0, 0]
        error = ref.left_riemann(f, t, s, n) - C
        leading = (s - t) / n / 2 * (f(t) - f(s))[0]
        assert 1e-6 < np.max(np.abs(error)) < 2e-3
        # the next Euler-Maclaurin term is O(h²): the leading term explains the error to < 1e-4 of itself
        assert np.max(np.abs(error - leading)) < 1e-4 * np.max(np.abs(leading))


# ---- #6 multistep ----------------------------------------------------------------------------------

MULTISTEP = [(name, q) for name in ("vp-linear", "cld", "bdm") for q in (1, 2, 3)]


@pytest.mark.parametrize("name,order", MULTISTEP)
def test_multistep_sum_rule(name, order):
    """#6a: Σ_j C_ij = R_{t_{i+1}} − Ψ(t_{i+1}, t_i)R_{t_i}, the q = 0 coefficient, at every step."""
    p = ref.build(name)
    ts = grid(p)
    multi = coefficients.exponential_integrator(p, ts, order)
    single = coefficients.exponential_integrator(p, ts, 0)
    assert multi.C.shape[1] == order + 1
    np.testing.assert_allclose(multi.C.sum(axis=1), single.C[:, 0], rtol=0, atol=1e-12 * np.abs(single.C).max())
    np.testing.assert_array_equal(multi.A, single.A)


@pytest.mark.parametrize("name,order", MULTISTEP)
def test_multistep_equals_direct_quadrature(name, order):
    """#6b: the engine's integration-by-parts + Gauss-Legendre C_ij equal adaptive quadrature of the direct
    integrand Ψ(s,τ)½GGᵀR⁻ᵀℓ_ij(τ); warm-up steps (i < q) use order i and leave zeros in the unused slots."""
    p = ref.build(name)
    ts = grid(p)
    C = coefficients.exponential_integrator(p, ts, order).C
    for i in range(len(ts) - 1):
        nodes, s = history(ts, i, order), ts[i + 1]
        f = eps_integrand(p, s)
        direct = ref.lagrange_integrals(lambda x: f(x)[0], nodes, ts[i], s)
        # Gauss-Legendre on ≥ 64 geometric panels per grid: measured ≤ 4e-12 relative to the step's C
        assert ref.rel_err(C[i, : len(nodes)], direct) < 1e-10, i
        assert np.all(C[i, len(nodes):] == 0)


@pytest.mark.parametrize("name,order", MULTISTEP)
def test_multistep_is_exact_for_polynomial_eps(name, order):
    """#6c: if ε(τ) is a polynomial of degree ≤ r, the order-r step reproduces the ODE
    du/dτ = F u + ½GGᵀR⁻ᵀ ε(τ) exactly (up to quadrature and ODE tolerances)."""
    p = ref.build(name)
    ts = grid(p)
    rec = coefficients.exponential_integrator(p, ts, order)
    rng = np.random.default_rng(0)
    for i in range(len(ts) - 1):
        nodes, t, s = history(ts, i, order), ts[i], ts[i + 1]
        coef = rng.standard_normal((len(nodes), p.modes, p.k, 1))  # degree r = len(nodes) − 1, per mode
        eps = lambda x: sum(c * x**d for d, c in enumerate(coef))
        drift = lambda x: 0.5 * p.GGT(x)[0] @ blocks.transpose(np.linalg.inv(p.R(x)[0]))
        u0 = rng.standard_normal((p.modes, p.k, 1))
        exact = ref.solve_matrix_ode(lambda x, u: p.F(x)[0] @ u + drift(x) @ eps(x), u0, t, s)
        step = rec.A[i] @ u0 + sum(rec.C[i, j] @ eps(nodes[j]) for j in range(len(nodes)))
        assert ref.rel_err(step, exact) < 1e-9, i


@pytest.mark.parametrize("order", [0, 1, 2])
def test_L_coefficients_equal_direct_quadrature(order):
    """The K = L ablation: C_ij = ∫ Ψ(s,τ)½GGᵀL⁻ᵀℓ_ij dτ has no antiderivative; the engine uses 16 geometric
    panels of 8-point Gauss-Legendre. Against adaptive quadrature (quad_vec, epsrel 1e-13) it agrees to 1e-12
    of the step's largest entry (measured 5e-15): L⁻ᵀ varies on the scale of τ itself near 0, which geometric
    panels resolve, and is smooth elsewhere."""
    p = ref.build("cld")
    ts = grid(p)
    rec = coefficients.exponential_integrator(p, ts, order, parameterization="L")
    for i in range(len(ts) - 1):
        nodes, s = history(ts, i, order), ts[i + 1]
        f = eps_integrand(p, s, "L")
        assert ref.rel_err(rec.C[i, : len(nodes)], ref.lagrange_integrals(lambda x: f(x)[0], nodes, ts[i], s)) < 1e-12, i
    np.testing.assert_array_equal(rec.A, p.psi(ts[1:], ts[:-1]))


def test_L_eps_map_preserves_the_score():
    """ε_L = L_tᵀR_t⁻ᵀ ε_R (MATH §1.3): the score −K⁻ᵀε is the same in both coordinates."""
    p = ref.build("cld")
    ts = grid(p)
    rec = coefficients.exponential_integrator(p, ts, 0, parameterization="L")
    t = ts[:-1]
    inv_t = lambda a: blocks.transpose(np.linalg.inv(a))
    score_map = inv_t(p.R(t))
    np.testing.assert_allclose(inv_t(p.L(t)) @ rec.eps_map, score_map, rtol=0, atol=1e-11 * np.abs(score_map).max())



def test_an_unknown_parameterization_is_a_settings_error():
    p = ref.build("vp-linear")
    with pytest.raises(SettingsError, match="parameterization must be 'R' or 'L', got 'Q'"):
        coefficients.exponential_integrator(p, grid(p), 0, parameterization="Q")

# ---- #8 stochastic coefficients --------------------------------------------------------------------

def noise_cov(rec: Recursion) -> np.ndarray:
    return rec.S @ blocks.transpose(rec.S)


@pytest.mark.parametrize("lam", [0.3, 1.0])  # Ψ̂ from the engine's ODE (0 < λ < 1) and from the closed form
@pytest.mark.parametrize("name,method", [("cld", "DOP853"), ("bdm", "DOP853"),
                                         pytest.param("cld", "Radau", marks=pytest.mark.slow)])
def test_stochastic_cov_solves_its_ode(name, method, lam):
    """#8a: P^λ = Σ_s − Ψ̂Σ_tΨ̂ᵀ equals the downward ODE dP/dτ = F̂P + PF̂ᵀ − λ²GGᵀ, P(t) = 0;
    P is symmetric PSD."""
    p = ref.build(name)
    for t, s in STEPS:
        t = min(t, p.t_start)
        rec = coefficients.stochastic(p, np.array([t, s]), lam)
        P = noise_cov(rec)[0]
        h = coefficients.hat_psi(p, np.array([t]), np.array([s]), lam)[0]
        closed = p.sigma(s)[0] - h @ p.sigma(t)[0] @ blocks.transpose(h)
        for mode in sorted({0, p.modes - 1}):
            fns = [ref.mode_fn(p, m, mode) for m in ("F", "GGT", "sigma")]
            ode = ref.reverse_cov(*fns, lam, t, s, method=method)
            # the reference at rtol 1e-12 through Σ_τ⁻¹ ~ 1e4 (CLD near 0): measured ≤ 1e-11 of the largest entry
            assert ref.rel_err(P[mode], ode) < 1e-10, (t, s, mode)
            assert ref.rel_err(closed[mode], ode) < 1e-10, (t, s, mode)
        assert np.max(np.abs(closed - blocks.transpose(closed))) < 1e-14
        assert np.linalg.eigvalsh(blocks.sym(closed)).min() > -1e-12


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_stochastic_at_lambda0_is_deterministic(name):
    """#8c: λ = 0 gives the q = 0 coefficients, no noise term, and P = Σ_s − R_sR_sᵀ = 0."""
    p = ref.build(name)
    ts = grid(p)
    stoch, det = coefficients.stochastic(p, ts, 0.0), coefficients.exponential_integrator(p, ts, 0)
    assert stoch.S is None
    np.testing.assert_array_equal(stoch.A, det.A)
    np.testing.assert_allclose(stoch.C, det.C, rtol=0, atol=1e-13 * np.abs(det.C).max())
    h = coefficients.hat_psi(p, ts[:-1], ts[1:], 0.0)
    P = p.sigma(ts[1:]) - h @ p.sigma(ts[:-1]) @ blocks.transpose(h)
    assert np.max(np.abs(P)) < 1e-13


# ---- #9 λ = 1 is the posterior step; Ψ̂ closed forms vs ODEs -----------------------------------------

@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "bdm"])
def test_lambda1_is_the_posterior_step(name):
    """#9: for VP the λ = 1 step is DDPM's posterior q(x_s | x_t, x̂_0) (mean and β̃ variance); for BDM the
    per-frequency posterior q(y_s | y_t, y_0). Both with x̂_0 = (x_t − σ_t ε)/a_t."""
    p = ref.build(name)
    ts = grid(p, 8)
    t, s = ts[:-1], ts[1:]
    a_t, a_s = p.mean_coef(t)[..., 0, 0], p.mean_coef(s)[..., 0, 0]
    var_t, var_s = p.sigma(t)[..., 0, 0], p.sigma(s)[..., 0, 0]
    coef_u, coef_eps, var = ref.scalar_posterior(a_s, var_s, a_t, var_t)
    rec = coefficients.stochastic(p, ts, 1.0)
    np.testing.assert_allclose(rec.A[..., 0, 0], coef_u, rtol=1e-12)
    np.testing.assert_allclose(rec.C[:, 0, ..., 0, 0], coef_eps, rtol=1e-11)
    np.testing.assert_allclose(noise_cov(rec)[..., 0, 0], var, rtol=1e-11)
    ancestral = gddim.plan(p, len(ts) - 1 + p.denoise, method="ancestral", grid=ts)
    np.testing.assert_array_equal(ancestral.C, rec.C)


def test_vp_lambda1_matches_ddpm_betas():
    """#9: DDPM's own notation: mean = (√ᾱ_s β_ts x̂_0 + √α_ts (1−ᾱ_s) x_t)/(1−ᾱ_t),
    β̃ = β_ts (1−ᾱ_s)/(1−ᾱ_t)."""
    p = ref.build("vp-linear")
    for t, s in [(0.6, 0.4), (0.05, 0.04)]:
        ab_t, ab_s = vp_alpha_bar(t), vp_alpha_bar(s)
        beta_ts = 1 - ab_t / ab_s
        c0 = np.sqrt(ab_s) * beta_ts / (1 - ab_t)  # multiplies x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
        ct = np.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)
        rec = coefficients.stochastic(p, np.array([t, s]), 1.0)
        np.testing.assert_allclose(rec.A[0, 0, 0, 0], ct + c0 / np.sqrt(ab_t), rtol=1e-12)
        np.testing.assert_allclose(rec.C[0, 0, 0, 0, 0], -c0 * np.sqrt((1 - ab_t) / ab_t), rtol=1e-11)
        np.testing.assert_allclose(noise_cov(rec)[0, 0, 0, 0], beta_ts * (1 - ab_s) / (1 - ab_t), rtol=1e-11)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_vp_closed_forms_of_section_3_3(lam):
    """§3.3: Ψ̂^λ(s,t) = √(ᾱ_s/ᾱ_t) ρ^{(1+λ²)/2} and P^λ = (1−ᾱ_s)(1−ρ^{λ²}) agree with the ODEs of Ψ̂ and P,
    and with the engine's Ψ̂ and noise covariance."""
    p = ref.build("vp-linear")
    fns = [ref.mode_fn(p, m) for m in ("F", "GGT", "sigma")]
    for t, s in STEPS:
        rho = (1 - vp_alpha_bar(s)) * vp_alpha_bar(t) / ((1 - vp_alpha_bar(t)) * vp_alpha_bar(s))
        hat = np.sqrt(vp_alpha_bar(s) / vp_alpha_bar(t)) * rho ** ((1 + lam**2) / 2)
        P = (1 - vp_alpha_bar(s)) * (1 - rho**lam**2)
        assert abs(ref.hat_transition(*fns, lam, t, s)[0, 0] / hat - 1) < 1e-10
        assert abs(ref.reverse_cov(*fns, lam, t, s)[0, 0] - P) < 1e-10 * (1 - vp_alpha_bar(s))
        assert abs(coefficients.hat_psi(p, np.array([t]), np.array([s]), lam)[0, 0, 0, 0] / hat - 1) < 1e-12
        if lam > 0:
            assert abs(noise_cov(coefficients.stochastic(p, np.array([t, s]), lam))[0, 0, 0, 0] / P - 1) < 1e-11


def test_vp_lambda_is_not_ddim_eta():
    """§3.3 example: λ = 0.3 on the big step 0.6 → 0.4 gives P = 0.145, while DDIM(η = 0.3) injects 0.064."""
    p = ref.build("vp-linear")
    P = noise_cov(coefficients.stochastic(p, np.array([0.6, 0.4]), 0.3))[0, 0, 0, 0]
    ab_t, ab_s = p.mean_coef(0.6)[0, 0, 0, 0] ** 2, p.mean_coef(0.4)[0, 0, 0, 0] ** 2
    rho = (1 - ab_s) * ab_t / ((1 - ab_t) * ab_s)
    ref.assert_printed([P, 0.3**2 * (1 - ab_s) * (1 - rho)], ["0.145", "0.064"])


@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("name", ["cld", "bdm"])
def test_hat_psi_ode_path_equals_closed_forms(name, lam):
    """#9: the engine's ODE for Ψ̂ reproduces the closed forms Ψ̂⁰(s,t) = R_sR_t⁻¹ and
    Ψ̂¹(s,t) = Σ_sΨ(t,s)ᵀΣ_t⁻¹ (MATH §3.2)."""
    p = ref.build(name)
    t, s = np.array([min(a, p.t_start) for a, _ in STEPS]), np.array([b for _, b in STEPS])
    closed = coefficients.hat_psi(p, t, s, lam)
    if lam == 0:
        expected = blocks.solve_right(p.R(s), p.R(t))
    else:
        expected = blocks.solve_right(p.sigma(s) @ blocks.transpose(p.psi(t, s)), p.sigma(t))
    np.testing.assert_allclose(closed, expected, rtol=1e-13, atol=0)
    # DOP853 at rtol 1e-11 on each step: measured ≤ 7.5e-12 of the block
    scale = np.abs(closed).max(axis=(-2, -1), keepdims=True)
    assert np.max(np.abs(coefficients._hat_psi_ode(p, t, s, lam) - closed) / scale) < 1e-10


@pytest.mark.parametrize("lam", [0.3, 0.7])
@pytest.mark.parametrize("name,method", [("cld", "Radau"), ("bdm", "DOP853"), ("vp-cosine", "DOP853")])
def test_hat_psi_intermediate_lambda_matches_ode(name, method, lam):
    """Ψ̂^λ for 0 < λ < 1 (CLD: the engine's per-step DOP853 ODE; k = 1: the power formula) vs a per-step
    solve of X' = F̂^λX: implicit Radau for CLD, whose F̂ carries Σ⁻¹ ~ 1e4 at the stiff end."""
    p = ref.build(name)
    t, s = np.array([min(a, p.t_start) for a, _ in STEPS]), np.array([b for _, b in STEPS])
    got = coefficients.hat_psi(p, t, s, lam)
    for mode in sorted({0, p.modes - 1}):
        fns = [ref.mode_fn(p, m, mode) for m in ("F", "GGT", "sigma")]
        for i in range(len(t)):
            # engine DOP853 at rtol 1e-11, reference at 1e-12: measured ≤ 1.4e-11 relative to the block
            want = ref.hat_transition(*fns, lam, t[i], s[i], method=method)
            assert ref.rel_err(got[i, mode], want) < 1e-10, (i, mode)


# ---- #12 SSCS half step ----------------------------------------------------------------------------

@pytest.mark.parametrize("m_inv", [4.0, 2.0])
@pytest.mark.parametrize("b", [0.01, 0.4, 2.0])
def test_sscs_linear_half_step(m_inv, b):
    """#12: SSCS's exact linear part over ∫β = b (generative time, critical damping): mean map = expm(bA),
    covariance = the Lyapunov ODE with noise diag(0, 2Γ), A = [[0, −M⁻¹], [1, −ΓM⁻¹]]."""
    p = gddim.CLD(m_inv=m_inv)
    A = np.array([[0.0, -m_inv], [1.0, -p.Gamma * m_inv]])
    noise = np.diag([0.0, 2 * p.Gamma])
    mean, cov = _sscs_half_step(p, b)
    np.testing.assert_allclose(mean, scipy.linalg.expm(b * A), rtol=0, atol=1e-13)
    lyap = ref.lyapunov(lambda _: A, lambda _: noise, np.zeros((2, 2)), 0.0, b)
    np.testing.assert_allclose(cov, lyap, rtol=0, atol=1e-12 * np.abs(lyap).max())


# ---- #13 VP reduction to DDIM and DEIS -------------------------------------------------------------

def test_vp_order0_is_ddim():
    """#13: gDDIM q = 0 on VP is DDIM: x_s = √(ᾱ_s/ᾱ_t)(x_t − √(1−ᾱ_t) ε) + √(1−ᾱ_s) ε, step by step
    through the sampler loop with the same ε-model. Agreement to a few ulps (the loop multiplies by the
    precomputed Ψ and R_s − ΨR_t instead of re-associating)."""
    p = ref.build("vp-linear")
    ts = grid(p, 10)
    eps_fn = lambda u, t: torch.tanh(u) + t[:, None, None, None]
    u_T = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = run_recursion(p, eps_fn, u_T, coefficients.exponential_integrator(p, ts, 0))
    x = u_T
    for t, s in zip(ts[:-1], ts[1:]):
        eps = eps_fn(x, torch.full((4,), t, dtype=torch.float64))
        ab_t, ab_s = float(vp_alpha_bar(t)), float(vp_alpha_bar(s))
        x = np.sqrt(ab_s / ab_t) * (x - np.sqrt(1 - ab_t) * eps) + np.sqrt(1 - ab_s) * eps
    np.testing.assert_allclose(got.numpy(), x.numpy(), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_vp_multistep_is_deis(order):
    """#13: the q > 0 VP coefficients are DEIS tAB: ∫_t^s √(ᾱ_s/ᾱ_τ) ½β_τ/σ_τ ℓ_j(τ) dτ,
    with ᾱ, β written out."""
    p = ref.build("vp-linear")
    ts = grid(p, 8)
    C = coefficients.exponential_integrator(p, ts, order).C[..., 0, 0, 0]
    beta = lambda x: 0.1 + 19.9 * x
    integrand = lambda x, s: np.sqrt(vp_alpha_bar(s) / vp_alpha_bar(x)) * 0.5 * beta(x) / np.sqrt(ref.noise_var("vp-linear", x))
    for i in range(len(ts) - 1):
        nodes, s = history(ts, i, order), ts[i + 1]
        deis = ref.lagrange_integrals(lambda x: integrand(x, s), nodes, ts[i], s)
        np.testing.assert_allclose(C[i, : len(nodes)], deis, rtol=1e-9, atol=1e-12)


# ---- Appendix A.4 ----------------------------------------------------------------------------------

def test_cld_one_step_appendix_a4():
    """A.4: CLD one-step coefficients (row-major [11, 12, 21, 22]) and the true P of MATH §3.5."""
    p = ref.build("cld")
    big, small, middle = np.array([1.0, 0.9]), np.array([0.01, 0.001]), np.array([0.5, 0.3])
    order0 = lambda ts: coefficients.exponential_integrator(p, ts).C[0, 0, 0]
    lambda1 = lambda ts: coefficients.stochastic(p, ts, 1.0)
    ref.assert_printed(p.psi(0.9, 1.0)[0, 0], ["0.445108", "-3.560865", "0.890216", "4.005974"])
    ref.assert_printed(order0(big), ["0.337988", "1.038856", "-0.665532", "-1.605453"])
    ref.assert_printed(coefficients.hat_psi(p, big[:1], big[1:], 1.0)[0, 0],
                       ["0.808778", "-0.718901", "0.179748", "0.089837"])
    ref.assert_printed(noise_cov(lambda1(big))[0, 0], ["0.216629", "-0.129199", "-0.129199", "0.215661"])
    ref.assert_printed(lambda1(big).C[0, 0, 0], ["0.479062", "1.386338", "-0.868768", "-1.893152"])
    ref.assert_printed(order0(small), ["-0.015421", "-0.015287", "0.288655", "0.166895"])
    ref.assert_printed(noise_cov(lambda1(small))[0, 0], ["2.495e-06", "9.164e-05", "9.164e-05", "7.965e-03"])
    ref.assert_printed(noise_cov(lambda1(middle))[0, 0], ["0.537", "-0.061", "-0.061", "0.197"])


# ---- Recursion.then --------------------------------------------------------------------------------

@pytest.mark.parametrize("first,second", [("order2", "denoise"), ("order0", "order2"), ("L", "denoise"),
                                          ("stochastic", "denoise")])
def test_recursion_then_concatenates(first, second):
    """then() stacks the steps, pads the shorter ε history with zero coefficients, fills a missing noise
    root with zeros and a missing eps_map with the identity, and runs like the two recursions in a row."""
    p = ref.build("cld")
    ts = grid(p, 4)
    build = {
        "order0": lambda: coefficients.exponential_integrator(p, ts, 0),
        "order2": lambda: coefficients.exponential_integrator(p, ts[-3:] / 2, 2),
        "L": lambda: coefficients.exponential_integrator(p, ts, 1, parameterization="L"),
        "stochastic": lambda: coefficients.stochastic(p, ts, 0.5),
        "denoise": lambda: coefficients.denoising_step(p, ts[-1]),
    }
    a, b = build[first](), build[second]()
    both = a.then(b)
    n, q1 = a.steps + b.steps, max(a.C.shape[1], b.C.shape[1])
    assert both.steps == n and both.C.shape == (n, q1, 1, 2, 2)
    np.testing.assert_array_equal(both.times, np.concatenate([a.times, b.times]))
    np.testing.assert_array_equal(both.next_times, np.concatenate([a.next_times, b.next_times]))
    np.testing.assert_array_equal(both.A, np.concatenate([a.A, b.A]))
    for part, rows in ((a, slice(0, a.steps)), (b, slice(a.steps, n))):
        width = part.C.shape[1]
        np.testing.assert_array_equal(both.C[rows, :width], part.C)
        assert np.all(both.C[rows, width:] == 0)
        if part.S is not None:
            np.testing.assert_array_equal(both.S[rows], part.S)
        elif both.S is not None:
            assert np.all(both.S[rows] == 0)
        if part.eps_map is not None:
            np.testing.assert_array_equal(both.eps_map[rows], part.eps_map)
        elif both.eps_map is not None:
            np.testing.assert_array_equal(both.eps_map[rows], np.broadcast_to(np.eye(2), (part.steps, 1, 2, 2)))
    assert (both.S is None) == (a.S is None and b.S is None)
    assert (both.eps_map is None) == (a.eps_map is None and b.eps_map is None)
    # the history handed across the junction meets zero coefficients and the zero noise root adds 0·z:
    # the same result as two separate runs (same seed: only the first part draws noise)
    eps_fn = lambda u, t: torch.sin(u) * (1 + t[:, None, None, None])
    u = torch.randn(2, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    run = lambda rec, v: run_recursion(p, eps_fn, v, rec, generator=torch.Generator().manual_seed(6))
    np.testing.assert_allclose(run(both, u).numpy(), run(b, run(a, u)).numpy(), rtol=1e-14, atol=1e-14)

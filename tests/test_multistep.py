"""Multistep gDDIM beyond the paper (FAST.md §1-4, §6) against exact answers: Dirac data, independent quadrature
of the defining integrals, the exact Gaussian-data flow, and the q = 0 samplers it must reproduce."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

import gddim
from gddim import blocks, coefficients, multistep
from gddim.exact import dirac_eps, gaussian_eps
from gddim.sampling import run_recursion

import reference as ref

PROCESSES = ("vp-linear", "cld", "bdm")
DATA_SHAPE = {"vp-linear": (1, 2, 2), "cld": (2, 1, 2), "bdm": (1, 4, 4)}


def dirac_setup(name: str, batch: int = 3, seed: int = 1):
    process = ref.build(name)
    point = torch.rand(DATA_SHAPE[name], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    u_T = process.prior_sample((batch, *DATA_SHAPE[name]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    return process, point, dirac_eps(process, point), u_T


def unfolded(rec, process, ts, corrector: bool = False) -> np.ndarray:
    """The data-form coefficients D on x̂ (the engine folds M_{i-j}⁻¹ into them; this multiplies it back)."""
    C = rec.corrector if corrector else rec.C
    idx = np.arange(rec.steps)[:, None] + int(corrector) - np.arange(C.shape[1])[None, :]
    return C @ process.mean_coef(ts)[idx % len(ts)]


# ---- Dirac exactness of every deterministic variant --------------------------------------------------------

@pytest.mark.parametrize("name", PROCESSES)
def test_every_deterministic_variant_is_exact_for_dirac_data(name):
    """ε and data form, with and without corrector, q = 0..3, every interpolation, lower order at the end: the
    probability-flow ODE solution for Dirac data to 1e-9. The ε-form corrector on CLD and BDM only to 1e-5: the
    next step starts from the corrected state but uses ε taken at the predicted one, and the ε-form A = Ψ(s,t)
    amplifies their round-off difference by up to 4e4 on BDM's blurred modes (measured 5e-6; the data form's
    A = R_s R_t⁻¹ contracts it)."""
    process, _, eps_fn, u_T = dirac_setup(name)
    reference = gddim.reference_ode(process, eps_fn, u_T, rtol=1e-12, atol=1e-12, denoise=False, return_state=True)
    for prediction, corrector, order in itertools.product(("eps", "data"), (False, True), range(4)):
        # each order meets another interpolation and step count; the shortest runs also drop order at the end
        interpolation, nfe, lof = [("t", order + 2, False), ("sqrt_t", 8, True), ("logsnr", 5, True)][order % 3]
        out = gddim.sample(process, eps_fn, u_T, nfe, order=order, denoise=False, return_state=True,
                           prediction=prediction, corrector=corrector, interpolation=interpolation,
                           lower_order_final=lof)
        tol = 1e-5 if corrector and prediction == "eps" and name != "vp-linear" else 1e-9
        assert (out - reference).abs().max() <= tol, (prediction, corrector, order, interpolation)


@pytest.mark.parametrize("name", PROCESSES)
def test_final_data_step_returns_the_dirac_point(name):
    """final_step='data': x̂(u, t_end) is the data point itself for every form, also after a stochastic run, and
    costs exactly one model call more than the integrator (for CLD it takes the denoising step's NFE)."""
    process, point, eps_fn, u_T = dirac_setup(name)
    for prediction, corrector, lam in [("eps", False, 0.0), ("eps", True, 0.0), ("data", True, 0.0), ("data", True, 0.6)]:
        calls = []
        counted = lambda u, t: calls.append(1) or eps_fn(u, t)
        out = gddim.sample(process, counted, u_T, 6, order=2, lam=lam, prediction=prediction, corrector=corrector,
                           final_step="data", generator=torch.Generator().manual_seed(2))
        assert len(calls) == 6
        assert (out - point).abs().max() <= 1e-9, (prediction, corrector, lam)


# ---- the data form at q = 0 is DDIM, and the ε form through the new builder is today's ----------------------

@pytest.mark.parametrize("name", PROCESSES)
def test_data_form_order0_equals_ddim(name):
    """FAST §1: u_s = R_s R_t⁻¹ u_t + [M_s - R_s R_t⁻¹ M_t] x̂_t is algebraically the q = 0 step: the same numbers
    to round-off on a smooth non-Dirac ε (Gaussian data); at λ > 0 the same as stochastic q = 0 with the same noise."""
    process, _, _, u_T = dirac_setup(name)
    eps_fn = gaussian_eps(process, 0.3)
    for lam in (0.0, 0.5, 1.0):
        run = lambda **kw: gddim.sample(process, eps_fn, u_T, 7, lam=lam, denoise=False, return_state=True,
                                        generator=torch.Generator().manual_seed(3), **kw)
        ddim, data = run(), run(prediction="data")
        # CLD at 0 < λ < 1: Ψ̂ from the one-solve ODE (rtol 1e-9) against the per-step solve (rtol 1e-11)
        tol = 1e-8 if name == "cld" and lam == 0.5 else 1e-12
        assert (data - ddim).abs().max() <= tol * ddim.abs().max(), lam


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_eps_form_builder_equals_the_paper_builder(name, order):
    """multistep(prediction='eps') with the paper's options rebuilds exponential_integrator's coefficients."""
    process = ref.build(name)
    ts = gddim.time_grid(process, 7)
    new, old = multistep.multistep(process, ts, order), coefficients.exponential_integrator(process, ts, order)
    np.testing.assert_allclose(new.C, old.C, rtol=0, atol=1e-12 * np.abs(old.C).max())
    np.testing.assert_array_equal(new.A, old.A)


# ---- polynomial exactness: the coefficients are the defining integrals ---------------------------------------

def direct_integrals(process, lam, mode, nodes, rho, t, s):
    """∫_t^s ∂_τ[Ψ̂^λ(s,τ) M_τ] ℓ_j(ρ(τ)) dτ by adaptive quadrature, with ∂_τ[Ψ̂ M] = -((1+λ²)/2) Ψ̂ GGᵀΣ⁻¹ M and
    Ψ̂^λ(s,τ) from its own ODE (tests/reference.py) at λ > 0: one mode, (r+1, k, k)."""
    fn = lambda what: ref.mode_fn(process, what, mode)
    weight = (1 + lam**2) / 2

    def integrand(tau):
        if lam == 0:  # Ψ̂⁰(s,τ) = R_s R_τ⁻¹ (MATH §3.1)
            hat = process.R(s)[0, mode] @ np.linalg.inv(process.R(tau)[0, mode])
        else:
            hat = ref.hat_transition(fn("F"), fn("GGT"), fn("sigma"), lam, tau, s)
        slope = -weight * hat @ fn("GGT")(tau) @ np.linalg.solve(fn("sigma")(tau), process.mean_coef(tau)[0, mode])
        basis = [ref.lagrange(rho(np.array(nodes)), j, rho(np.array(tau))) for j in range(len(nodes))]
        return np.stack([b * slope for b in basis])

    return ref.integrate(integrand, t, s)


@pytest.mark.parametrize("name,lam,interpolation", [
    ("vp-linear", 0.0, "logsnr"), ("cld", 0.0, "sqrt_t"), ("bdm", 0.0, "logsnr"),
    pytest.param("cld", 0.5, "t", marks=pytest.mark.slow)])  # 25 s: an ODE for Ψ̂ at every quadrature point
def test_data_coefficients_equal_direct_quadrature(name, lam, interpolation):
    """Data-form predictor (nodes t_i..t_{i-2}) and corrector (t_{i+1}..t_{i-2}) coefficients equal adaptive
    quadrature of the direct integrand with ℓ_j polynomials in ρ: so a polynomial x̂ of degree ≤ q in ρ is
    integrated exactly. Measured ≤ 1e-10 relative (BDM: its most blurred mode)."""
    process = ref.build(name)
    ts = gddim.time_grid(process, 5)
    rho, _ = multistep.interpolation_variable(process, interpolation)
    rec = multistep.multistep(process, ts, 2, lam, "data", corrector=True, interpolation=interpolation)
    compare_with_quadrature(process, rec, ts, rho, (2, 3), lam)


@pytest.mark.parametrize("name,interpolation", [("vp-linear", "t"), ("cld", "logsnr"), ("bdm", "sqrt_t")])
def test_long_grid_coefficients_equal_direct_quadrature(name, interpolation):
    """Long grids have fewer Gauss points per step (coefficients.step_quadrature: 6 above 128 steps, 4 above 800):
    on 200- and 900-step grids the data-form predictor and corrector still equal adaptive quadrature to 1e-9
    relative, at the first multistep step, mid-grid and near the end (BDM: its most blurred mode)."""
    process = ref.build(name)
    for steps in (200, 900):
        ts = gddim.time_grid(process, steps)
        rho, _ = multistep.interpolation_variable(process, interpolation)
        rec = multistep.multistep(process, ts, 2, 0.0, "data", corrector=True, interpolation=interpolation)
        compare_with_quadrature(process, rec, ts, rho, (2, steps // 2, steps - 2))


def compare_with_quadrature(process, rec, ts, rho, steps, lam=0.0):
    """Predictor (nodes t_i..t_{i-2}) and corrector (t_{i+1}..t_{i-2}) of q = 2 at the given steps against
    direct_integrals, to 1e-9 relative, on the last (for BDM the most blurred) mode."""
    D, Dc = unfolded(rec, process, ts), unfolded(rec, process, ts, corrector=True)
    mode = process.modes - 1
    for i in steps:
        pred = direct_integrals(process, lam, mode, ts[i - 2: i + 1][::-1], rho, ts[i], ts[i + 1])
        corr = direct_integrals(process, lam, mode, ts[i - 2: i + 2][::-1], rho, ts[i], ts[i + 1])
        assert ref.rel_err(D[i, :, mode], pred) < 1e-9, (len(ts), i)
        assert ref.rel_err(Dc[i, :, mode], corr) < 1e-9, (len(ts), i)


@pytest.mark.parametrize("name", PROCESSES)
def test_chunked_build_equals_one_chunk(name, monkeypatch):
    """The kernel is built in chunks of steps (coefficients.KERNEL_CHUNK_ENTRIES): one step per chunk and the whole
    grid in one chunk give the same coefficients, for every degree group, predictor and corrector, ε and data form."""
    process = ref.build(name)
    ts = gddim.time_grid(process, 12)
    build = lambda prediction, lam: multistep.multistep(process, ts, 3, lam, prediction, corrector=True,
                                                        lower_order_final=True)
    for prediction, lam in [("eps", 0.0), ("data", 0.0), ("data", 0.5)]:
        monkeypatch.setattr(coefficients, "KERNEL_CHUNK_ENTRIES", 1 << 30)
        whole = build(prediction, lam)
        monkeypatch.setattr(coefficients, "KERNEL_CHUNK_ENTRIES", 1)
        steps = build(prediction, lam)
        np.testing.assert_allclose(steps.C, whole.C, rtol=1e-13, atol=1e-13 * np.abs(whole.C).max())
        np.testing.assert_allclose(steps.corrector, whole.corrector, rtol=1e-13,
                                   atol=1e-13 * np.abs(whole.corrector).max())


@pytest.mark.parametrize("name", PROCESSES)
def test_sum_rules(name):
    """Σ_j D_ij = M_s - Ψ̂^λ(s,t) M_t for predictor and corrector (the q = 0 coefficient), at every step."""
    process = ref.build(name)
    ts = gddim.time_grid(process, 6)
    for lam in (0.0, 0.5):
        rec = multistep.multistep(process, ts, 3, lam, "data", corrector=True, interpolation="logsnr")
        boundary = process.mean_coef(ts[1:]) - rec.A @ process.mean_coef(ts[:-1])
        scale = np.abs(boundary).max()
        np.testing.assert_allclose(unfolded(rec, process, ts).sum(1), boundary, rtol=0, atol=1e-11 * scale)
        corrected = unfolded(rec, process, ts, corrector=True).sum(1)[:-1]  # the last step is not corrected
        np.testing.assert_allclose(corrected, boundary[:-1], rtol=0, atol=1e-11 * scale)


# ---- stochastic multistep: exact in distribution on Dirac data -----------------------------------------------

@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_stochastic_multistep_is_exact_in_distribution_for_dirac_data(name, lam):
    """With Dirac data the history item u - Rε = M_τ x_0 is deterministic, so from u_t ~ N(M_t x_0, Σ_t) the step
    (predictor or corrector, same noise) gives mean A M_t x_0 + Σ_j C_ij M_{i-j} x_0 and covariance A Σ_t Aᵀ + S Sᵀ:
    both must be the exact marginal N(M_s x_0, Σ_s), and S Sᵀ the P ODE of MATH §3.2."""
    process = ref.build(name)
    ts = gddim.time_grid(process, 6)
    rec = multistep.multistep(process, ts, 3, lam, "data", corrector=True)
    point = np.linspace(-0.8, 0.7, process.k * process.modes).reshape(process.modes, process.k, 1)
    point[:, 1:] = 0.0
    h = process.mean_coef(ts) @ point  # the history items at every grid time
    t, s = ts[:-1], ts[1:]
    for i in range(rec.steps):
        m_s = process.mean_coef(s[i:i + 1])[0] @ point
        for C, first in [(rec.C[i], i), (rec.corrector[i], i + 1)]:
            if C is rec.corrector[i] and i == rec.steps - 1:
                continue
            items = [h[first - j] if first - j >= 0 else 0 * h[0] for j in range(C.shape[0])]
            mean = rec.A[i] @ h[i] + sum(c @ item for c, item in zip(C, items))
            assert np.abs(mean - m_s).max() <= 1e-11 * np.abs(m_s).max() + 1e-14, i
        cov = rec.A[i] @ process.sigma(t[i:i + 1])[0] @ blocks.transpose(rec.A[i]) + rec.S[i] @ blocks.transpose(rec.S[i])
        sigma_s = process.sigma(s[i:i + 1])[0]
        assert np.abs(cov - sigma_s).max() <= 1e-11 * np.abs(sigma_s).max(), i
    mode, i = process.modes - 1, 2
    fn = lambda what: ref.mode_fn(process, what, mode)
    P = ref.reverse_cov(fn("F"), fn("GGT"), fn("sigma"), lam, t[i], s[i])
    assert np.abs((rec.S @ blocks.transpose(rec.S))[i, mode] - P).max() <= 1e-8 * np.abs(P).max()


# ---- the corrector raises the order by one ---------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def gaussian_flow(name: str):
    """Process, exact ε for data N(0, 0.3), prior states and their probability-flow ODE solution (DOP853, rtol 1e-13)."""
    process = ref.build(name)
    eps_fn = gaussian_eps(process, 0.3)
    u_T = process.prior_sample((4, 1, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = gddim.reference_ode(process, eps_fn, u_T, rtol=1e-13, atol=1e-14, denoise=False, return_state=True)
    return process, eps_fn, u_T, truth


@pytest.mark.parametrize("name,prediction,order", [("vp-linear", "data", 0), ("vp-linear", "data", 1),
                                                   ("vp-linear", "eps", 0), ("vp-linear", "eps", 1),
                                                   ("cld", "data", 0), ("cld", "data", 1), ("cld", "eps", 1)])
def test_corrector_raises_the_convergence_order(name, prediction, order):
    """Gaussian data x_0 ~ N(0, 0.3) on the log-SNR grid, against the DOP853 flow at rtol 1e-13: the error slope in
    N between N = 80 and 160 is ≤ q + 1.4 without corrector and ≥ q + 1.75 with it (measured: plain 0.93-2.2,
    corrected = plain + 0.9 .. 1.3)."""
    process, eps_fn, u_T, truth = gaussian_flow(name)

    def slope(corrector):
        errors = [(gddim.sample(process, eps_fn, u_T, n, order=order, prediction=prediction, corrector=corrector,
                                grid="logsnr", denoise=False, return_state=True) - truth).abs().max().item()
                  for n in (80, 160)]
        return np.log2(errors[0] / errors[1])

    assert slope(False) <= order + 1.4
    assert slope(True) >= order + 1.75


# ---- precision, ends and options -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROCESSES)
def test_float32_follows_float64(name):
    """The data form (with corrector, with the final data step) in float32 strays from float64 no more than the
    paper's q = 2 does: the loop never divides by M's small entries (BDM 1e-5), the float64 coefficients hold M⁻¹.
    Either form's float32 error is rounding noise (BDM 5e-5 to 1.4e-4 by seed and CPU kernel, VP 2e-7 to 9e-7), so
    the worst of three prior batches is compared with 3x the paper's worst; a division by M would give 1e4x more
    (the ε-form corrector gives 2.1 on BDM, see the Dirac test)."""
    runs = [dirac_setup(name, seed=seed) for seed in range(3)]
    eps_fn = gaussian_eps(runs[0][0], 0.3)

    def float32_error(**options):
        errors = []
        for process, _, _, u_T in runs:
            rec = gddim.plan(process, 10, order=2, denoise=False, **options)
            wide, narrow = run_recursion(process, eps_fn, u_T, rec), run_recursion(process, eps_fn, u_T.float(), rec)
            errors.append(float((narrow.double() - wide).abs().max() / wide.abs().max()))
        return max(errors)

    paper = float32_error()
    assert paper < 2e-4
    for options in [dict(prediction="data"), dict(prediction="data", corrector=True, interpolation="logsnr"),
                    dict(prediction="data", corrector=True, final_step="data")]:
        assert float32_error(**options) <= 3 * paper + 1e-6, options


def test_lower_order_final_degrees():
    """diffusers' rule: below 15 steps the last step is first order and the one before second order."""
    assert multistep.step_degrees(6, 3, True).tolist() == [0, 1, 2, 2, 1, 0]
    assert multistep.step_degrees(6, 3, False).tolist() == [0, 1, 2, 3, 3, 3]
    assert multistep.step_degrees(15, 2, True).tolist() == [0] + [1] + [2] * 13


def test_logsnr_derivative():
    """ρ' of the 'logsnr' interpolation against VP's closed form d/dt log(ᾱ/(1-ᾱ)) = (log ᾱ)'/(1-ᾱ)."""
    process = ref.build("vp-linear")
    _, drho = multistep.interpolation_variable(process, "logsnr")
    t = np.array([1e-3, 0.1, 0.9])
    dlog_alpha = -(20.0 - 0.1) * t - 0.1
    np.testing.assert_allclose(drho(t), dlog_alpha / ref.noise_var("vp-linear", t), rtol=1e-10)


@pytest.mark.parametrize("options,message", [
    (dict(prediction="x0"), "prediction must be one of"),
    (dict(interpolation="lambda"), "interpolation must be one of"),
    (dict(final_step="denoise"), "final_step must be one of"),
    (dict(corrector="yes"), "corrector must be True or False"),
    (dict(order=2, lam=0.5), "pass prediction='data'"),
    (dict(lam=0.5, corrector=True), "pass prediction='data'"),
    (dict(method="euler", prediction="data"), "belong to method='gddim'"),
    (dict(parameterization="L", corrector=True), "paper's ablation"),
    (dict(final_step="data", denoise=True), "replaces the denoising step"),
    (dict(predictor="data"), "unknown sampler option"),
])
def test_bad_options_are_refused(options, message):
    process, _, eps_fn, u_T = dirac_setup("cld")
    with pytest.raises((ValueError, TypeError), match=message):
        gddim.sample(process, eps_fn, u_T, 6, **options)

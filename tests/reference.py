"""Independent float64 reference computations for the gddim tests (numpy/scipy only).

Nothing here calls the engine's coefficient code: each helper solves the defining ODE or integral of
MATH.md directly, so a test compares two independent computations. Matrix helpers work on ONE mode:
F, GGT, sigma are callables τ -> (k, k) array (use `mode_fn` to get them from a process). Oriented
intervals are allowed everywhere (t1 < t0 integrates downward, as the samplers do).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy.integrate import quad_vec, solve_ivp

import gddim

Matrix = Callable[[float], np.ndarray]
RTOL, ATOL = 1e-12, 1e-16  # tight rtol; atol far below the smallest entries here (CLD Σ_xx ~ 1e-6 near 0)

PROCESS_NAMES = ("vp-linear", "vp-cosine", "cld", "bdm")


@lru_cache(maxsize=None)
def build(name: str) -> gddim.LinearProcess:
    """A shared process per name (R_t of CLD is solved once per test session); BDM is 4x4 to stay fast."""
    return {
        "vp-linear": lambda: gddim.VP(),
        "vp-cosine": lambda: gddim.VP(schedule="cosine"),
        "cld": lambda: gddim.CLD(),
        "bdm": lambda: gddim.BDM(image_size=4),
    }[name]()


def alpha_bar(name: str, t):
    """ᾱ_t of build(name) written straight from MATH §4.1/§4.3 (iDDPM's normalized cosine for vp-cosine),
    independent of the engine; works for complex t (complex-step derivatives)."""
    if name == "vp-linear":
        return np.exp(-0.5 * t**2 * (20.0 - 0.1) - 0.1 * t)
    if name == "vp-cosine":
        return np.cos(_cosine_phase(t, 0.008)) ** 2 / np.cos(_cosine_phase(0.0, 0.008)) ** 2
    if name == "bdm":
        return np.cos(_cosine_phase(t, 0.004)) ** 2
    raise ValueError(f"no closed-form ᾱ for {name!r}")


def noise_var(name: str, t):
    """σ_t² = 1 − ᾱ_t of build(name), written without the cancellation of 1 − ᾱ near t = 0."""
    if name == "vp-linear":
        return -np.expm1(-0.5 * t**2 * (20.0 - 0.1) - 0.1 * t)
    if name == "vp-cosine":  # (cos²φ_0 − cos²φ_t)/cos²φ_0 = sin(φ_t − φ_0) sin(φ_t + φ_0)/cos²φ_0
        p0, pt = _cosine_phase(0.0, 0.008), _cosine_phase(t, 0.008)
        return np.sin(pt - p0) * np.sin(pt + p0) / np.cos(p0) ** 2
    if name == "bdm":
        return np.sin(_cosine_phase(t, 0.004)) ** 2
    raise ValueError(f"no closed-form σ² for {name!r}")


def _cosine_phase(t, offset):
    """The cosine schedules' angle: iDDPM's (t + 0.008)/1.008 and BDM's (t + 0.004)/1.008, times π/2."""
    return (t + offset) / 1.008 * np.pi / 2


def bdm_log_mean_coef(freqs: np.ndarray, t):
    """log a_t = ½ log ᾱ_t + log d_t per frequency (MATH §4.3 with σ_B,max = 10, d_min = 1e-3); shape (n, M)."""
    tau = (10.0 * np.sin(np.pi * t / 2) ** 2) ** 2 / 2
    return 0.5 * np.log(alpha_bar("bdm", t))[:, None] + np.log((1 - 1e-3) * np.exp(-freqs * tau[:, None]) + 1e-3)


def rel_err(a, b) -> float:
    """max |a − b| relative to max |b|."""
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def mode_fn(process, method: str, mode: int = 0) -> Matrix:
    """τ -> the (k, k) block of process.<method>(τ) for one mode."""
    return lambda tau: getattr(process, method)(tau)[0, mode]


def solve_matrix_ode(rhs: Callable[[float, np.ndarray], np.ndarray], x0: np.ndarray, t0: float, t1,
                     method: str = "DOP853", rtol: float = RTOL, atol: float = ATOL) -> np.ndarray:
    """X(t1) for X' = rhs(τ, X), X(t0) = x0, with X a (k, k) matrix; t1 may be a monotone sequence of times
    (then the result is stacked along axis 0). DOP853 by default: at rtol 1e-12 it agrees with Radau to ~1e-12
    on every ODE here, 20-40x faster; Radau (method="Radau") is the independent implicit check for the ODEs
    with Σ⁻¹ or R⁻ᵀ, which are mildly stiff near t = 0."""
    shape, times = x0.shape, np.atleast_1d(np.asarray(t1, dtype=np.float64))
    sol = solve_ivp(lambda tau, x: rhs(tau, x.reshape(shape)).ravel(), (t0, times[-1]), x0.ravel(), method=method,
                    t_eval=times, rtol=rtol, atol=atol)
    assert sol.success, sol.message
    out = sol.y.T.reshape(-1, *shape)
    return out if np.ndim(t1) else out[0]


def transition(F: Matrix, t: float, s: float, **kw) -> np.ndarray:
    """Ψ(t, s): solve ∂_τ X = F_τ X from τ = s to τ = t with X(s) = I (MATH §0)."""
    k = F(s).shape[-1]
    return solve_matrix_ode(lambda tau, x: F(tau) @ x, np.eye(k), s, t, **kw)


def lyapunov(F: Matrix, GGT: Matrix, sigma0: np.ndarray, t0: float, t1, **kw) -> np.ndarray:
    """Σ(t1) from Σ(t0) = sigma0 by dΣ/dτ = FΣ + ΣFᵀ + GGᵀ (MATH §1.1); t1 may be a sequence of times."""
    return solve_matrix_ode(lambda tau, x: F(tau) @ x + x @ F(tau).T + GGT(tau), sigma0, t0, t1, **kw)


def gddim_root(F: Matrix, GGT: Matrix, R0: np.ndarray, t0: float, t1, **kw) -> np.ndarray:
    """R(t1) from R(t0) = R0 by dR/dτ = F R + ½ GGᵀ R⁻ᵀ (MATH §1.4); t1 may be a sequence of times."""
    rhs = lambda tau, r: F(tau) @ r + 0.5 * GGT(tau) @ np.linalg.inv(r).T
    return solve_matrix_ode(rhs, R0, t0, t1, **kw)


def hat_drift(F: Matrix, GGT: Matrix, sigma: Matrix, lam: float) -> Matrix:
    """F̂^λ_τ = F_τ + ((1+λ²)/2) GGᵀ_τ Σ_τ⁻¹ (MATH §3.1)."""
    return lambda tau: F(tau) + 0.5 * (1 + lam**2) * GGT(tau) @ np.linalg.inv(sigma(tau))


def hat_transition(F: Matrix, GGT: Matrix, sigma: Matrix, lam: float, t: float, s: float, **kw) -> np.ndarray:
    """Ψ̂^λ(s, t): the transition of F̂^λ from t to s (MATH §3.2)."""
    return transition(hat_drift(F, GGT, sigma, lam), s, t, **kw)


def reverse_cov(F: Matrix, GGT: Matrix, sigma: Matrix, lam: float, t: float, s: float, **kw) -> np.ndarray:
    """P^λ(s, t) by its ODE: P(t) = 0, dP/dτ = F̂P + PF̂ᵀ − λ²GGᵀ integrated downward to s (MATH §3.2)."""
    f_hat = hat_drift(F, GGT, sigma, lam)

    def rhs(tau, p):
        f = f_hat(tau)
        return f @ p + p @ f.T - lam**2 * GGT(tau)

    return solve_matrix_ode(rhs, np.zeros_like(F(t)), t, s, **kw)


def integrate(f: Callable[[float], np.ndarray], a: float, b: float, epsabs: float = 1e-14,
              epsrel: float = 1e-13) -> np.ndarray:
    """∫_a^b f(τ) dτ (oriented) by adaptive Gauss-Kronrod (scipy quad_vec); asserts it met its tolerance."""
    value, error = quad_vec(f, a, b, epsabs=epsabs, epsrel=epsrel, limit=2000)
    assert error <= max(epsabs, epsrel * np.linalg.norm(value)) * 10, f"quad_vec error estimate {error:.3g} too large"
    return value


def lagrange_integrals(f: Callable[[float], np.ndarray], nodes, a: float, b: float) -> np.ndarray:
    """∫_a^b f(τ) ℓ_j(τ) dτ for every Lagrange basis polynomial ℓ_j of the nodes, stacked on axis 0 (MATH §2.3)."""
    return integrate(lambda tau: np.stack([f(tau) * lagrange(nodes, j, tau) for j in range(len(nodes))]), a, b)


def left_riemann(f: Callable[[np.ndarray], np.ndarray], a: float, b: float, n: int) -> np.ndarray:
    """The official code's quadrature: an n-point left Riemann sum of ∫_a^b f (MATH §9.3); f is vectorized,
    taking the (n,) nodes and returning values stacked on axis 0."""
    h = (b - a) / n
    return h * f(a + h * np.arange(n)).sum(axis=0)


def lagrange(nodes, j: int, tau: float) -> float:
    """ℓ_j(τ) = Π_{k≠j} (τ − t_k)/(t_j − t_k) for the nodes t_0, t_1, ... (MATH §2.3)."""
    return math.prod((tau - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j)


def rk4(rhs: Callable[[float, tuple], tuple], y0: tuple, t0: float, t1: float, n: int) -> tuple:
    """Classic fixed-step RK4 on a tuple of Python floats (fast enough for 10⁵ steps of a 2x2 state)."""
    h = (t1 - t0) / n
    y = tuple(y0)
    step = lambda y_, k_, c: tuple(a + c * b for a, b in zip(y_, k_))
    for i in range(n):
        t = t0 + i * h
        k1 = rhs(t, y)
        k2 = rhs(t + h / 2, step(y, k1, h / 2))
        k3 = rhs(t + h / 2, step(y, k2, h / 2))
        k4 = rhs(t + h, step(y, k3, h))
        y = tuple(a + h / 6 * (b + 2 * c + 2 * d + e) for a, b, c, d, e in zip(y, k1, k2, k3, k4))
    return y


def scalar_posterior(a_s, var_s, a_t, var_t):
    """Posterior q(y_s | y_t, y_0) of a scalar linear process with y_τ | y_0 ~ N(a_τ y_0, var_τ), written in
    the sampler's inputs (y_t, ε) with ŷ_0 = (y_t − √var_t ε)/a_t: returns (coef of y_t, coef of ε, variance)."""
    alpha = a_t / a_s  # transition s -> t
    beta = var_t - alpha**2 * var_s  # its noise variance
    c_data, c_t = a_s * beta / var_t, alpha * var_s / var_t  # mean = c_data y_0 + c_t y_t
    return c_t + c_data / a_t, -c_data * np.sqrt(var_t) / a_t, var_s * beta / var_t


def dirac_step_law(process, rec, point: np.ndarray):
    """What each step of a q = 0 recursion makes of u_t ~ N(m_t, Σ_t) for Dirac data with the oracle
    ε = R_t⁻¹(u − m_t), and the exact law N(m_s, Σ_s) it must give (MATH §3.2): returns ((mean, cov), (m_s, Σ_s)).
    The mean is A m_t (the oracle's ε has mean 0), the covariance M Σ_t Mᵀ + S Sᵀ with M = A + C R_t⁻¹.
    point: the clean state (x, 0) per mode, shape (M, k, 1)."""
    t, s = rec.times, rec.next_times
    T = lambda a: np.swapaxes(a, -1, -2)
    M = rec.A + rec.C[:, 0] @ np.linalg.inv(process.R(t))
    noise = 0.0 if rec.S is None else rec.S @ T(rec.S)
    law = (rec.A @ process.mean_coef(t) @ point, M @ process.sigma(t) @ T(M) + noise)
    return law, (process.mean_coef(s) @ point, process.sigma(s))


def cov_tolerance(cov: np.ndarray, n: int, z: float = 5.0) -> np.ndarray:
    """z standard errors of each entry of the sample covariance of n zero-mean Gaussian draws:
    sd(S_ij) = √((Σ_ij² + Σ_iiΣ_jj)/n)."""
    d = np.diagonal(cov, axis1=-2, axis2=-1)
    return z * np.sqrt((cov**2 + d[..., :, None] * d[..., None, :]) / n)


def assert_printed(actual, printed: list[str]) -> None:
    """actual equals numbers printed in MATH.md to within half a unit of each one's last printed digit."""
    actual = np.ravel(actual)
    assert len(actual) == len(printed)
    for value, text in zip(actual, printed):
        mantissa, _, exponent = text.lower().partition("e")
        decimals = len(mantissa.partition(".")[2])
        half_unit = 0.5 * 10.0 ** (-decimals + int(exponent or 0))
        assert abs(value - float(text)) <= half_unit * (1 + 1e-9), f"{value!r} does not print as {text}"

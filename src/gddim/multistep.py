"""Multistep gDDIM beyond the paper (FAST §1-4, §6): data prediction, a free corrector, the interpolation
variable, lower order at the end, a final data-prediction step and stochastic multistep.

Every variant is one exponential integrator u_s = A u_t + ∫_t^s ∂_τK(τ) h(τ) dτ with h interpolated by
Lagrange polynomials in ρ(τ) and the integral taken by parts (coefficients.by_parts):
- ε form:    h = ε,  K(τ) = Ψ(s,τ) R_τ,             A = Ψ(s,t)
- data form: h = x̂ = M_t⁻¹(u - R_t ε),  K(τ) = Ψ̂^λ(s,τ) M_τ,  A = Ψ̂^λ(s,t)   (λ = 0: Ψ̂ = R_s R_τ⁻¹)
with M_t = mean_coef(t) (= Ψ(t,0) up to the data's scale at time 0). λ > 0 adds the noise of P^λ (MATH §3.2).
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from . import blocks
from .coefficients import (Recursion, by_parts_all_steps, grid_quadrature, hat_psi, noise_root, repeat_predictor,
                           warmup_degrees)
from .errors import SettingsError
from .processes import LinearProcess

PREDICTIONS = ("eps", "data")
OUTPUTS = ("eps", "data", "velocity")  # what the model returns: ε_R, the data prediction x̂, or dx_t/dt (flow)
INTERPOLATIONS = ("t", "sqrt_t", "logsnr")
FINAL_STEPS = ("integrate", "data")
LOWER_ORDER_FINAL_BELOW = 15  # steps; diffusers' multistep schedulers use the same threshold
LOG_SNR_DIFFERENCE_STEP = 1e-3  # relative to τ: truncation and round-off of the log-SNR derivative both < 1e-11


def interpolation_variable(process: LinearProcess, name: str):
    """ρ(τ) and ρ'(τ) (vectorized over float64 arrays of any shape) for the Lagrange interpolation (FAST §3).

    "logsnr" is the process's log-SNR: for BDM the DC mode's, which is the slowest mode (blur leaves it alone).
    Its derivative is a 4th-order central difference at h = 1e-3 τ (one-sided within 2h of t = 1): truncation
    and round-off both below 1e-11.
    """
    if name == "t":
        return (lambda x: x), np.ones_like
    if name == "sqrt_t":
        return np.sqrt, lambda x: 0.5 / np.sqrt(x)
    if name == "logsnr":
        rho = lambda x: process.log_snr(np.ravel(x)).reshape(np.shape(x))

        def drho(x):
            h = LOG_SNR_DIFFERENCE_STEP * x
            inside = x + 2 * h <= 1  # processes live on t in [0, 1]: near t = 1 the stencil looks back only
            f = [rho(np.where(inside, x, x - 2 * h) + j * h) for j in (-2, -1, 0, 1, 2)]
            central = (8 * (f[3] - f[1]) - (f[4] - f[0])) / (12 * h)
            backward = (3 * f[0] - 16 * f[1] + 36 * f[2] - 48 * f[3] + 25 * f[4]) / (12 * h)
            return np.where(inside, central, backward)

        return rho, drho
    raise SettingsError(f"unknown interpolation {name!r}; choose one of {INTERPOLATIONS}")


def check_start(process: LinearProcess, ts: np.ndarray, output: str, interpolation: str) -> None:
    """Refuse grids no step can start on: Ψ(t,0) = 0 for an ε-model (flow matching at t = 1), and an infinite
    log-SNR for the "logsnr" interpolation."""
    if output == "eps" and not np.any(process.mean_coef(ts[:1])):
        raise SettingsError(f"{process.name} has Ψ(t,0) = 0 at t = {ts[0]:g}: the state there is pure noise and an "
                            "ε-model says nothing about the data, so no step can start from it. Pass a model that "
                            "predicts the velocity or the data with output='velocity' or output='data', or start "
                            "below it (t_start < 1)")
    if interpolation == "logsnr" and not np.all(np.isfinite(process.log_snr(ts))):
        raise SettingsError(f"interpolation='logsnr' needs a finite log-SNR on the grid; {process.name}'s is infinite "
                            f"at t = {ts[0]:g} or {ts[-1]:g}: use interpolation='t' or 'sqrt_t'")


def step_degrees(steps: int, order: int, lower_order_final: bool) -> np.ndarray:
    """Polynomial degree of each step: min(i, q), and with lower_order_final on short runs (< 15 steps) at most
    N-1-i, so the last step is first order and the one before second order, as in diffusers (FAST §4)."""
    degrees = warmup_degrees(steps, order)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        degrees = np.minimum(degrees, steps - 1 - np.arange(steps))
    return degrees


def hat_psi_pairs(process: LinearProcess, lam: float, span: tuple[float, float]):
    """A function (τ, s) -> Ψ̂^λ(s,τ) for many pairs (n,): closed forms where they exist, else ONE solve over the
    grid's span, done here, which every later call reuses.

    With Φ = R Y, Φ' = F̂^λ Φ becomes Y' = (λ²/2) R⁻¹GGᵀR⁻ᵀ Y (R' = FR + ½GGᵀR⁻ᵀ takes the rest), a gentler ODE
    than Φ's, and Ψ̂^λ(s,τ) = R_s Y_s Y_τ⁻¹ R_τ⁻¹ (λ = 0: Y = I).
    """
    if lam in (0, 1) or process.k == 1:
        return lambda tau, s: hat_psi(process, tau, s, lam)
    m, k = process.modes, process.k

    def rhs(log_time, y):  # in log τ: the rate grows like 1/τ near τ = 0, so steps stay even
        time = np.exp(log_time)
        # (λ²/2) R⁻¹GGᵀR⁻ᵀ, times τ for the log-time variable
        rate = lam**2 * time * np.linalg.solve(process.R(time)[0], process.eps_drift(time)[0])
        return (rate @ y.reshape(m, k, k)).ravel()

    sol = solve_ivp(rhs, np.log(span), blocks.eye(m, k).ravel(), method="DOP853", rtol=1e-9, atol=1e-12,
                    dense_output=True)
    if not sol.success:
        raise RuntimeError(f"the Ψ̂^λ ODE failed: {sol.message}")
    phi = lambda x: process.R(x) @ sol.sol(np.log(x)).T.reshape(-1, m, k, k)
    return lambda tau, s: blocks.solve_right(phi(s), phi(tau))


def _scalar_hat_psi_mean(process: LinearProcess, lam: float, middle: np.ndarray):
    """Ψ̂^λ(r,τ) M_τ for scalar blocks as (a constant of r, a function of τ): with Ψ(r,τ) = M_r/M_τ, hat_psi's
    power form is R_r^(1+λ²) M_r^(-λ²) · (M_τ/R_τ)^(1+λ²), so each node costs one M_τ and one power, not two."""
    power = 1 + lam**2
    constant = process.R(middle) ** power * process.mean_coef(middle) ** (-(lam**2))
    return constant, lambda nodes: (process.mean_coef(nodes) / process.R(nodes)) ** power


def _ends_and_kernel(process: LinearProcess, prediction: str, lam: float, ts: np.ndarray, tau: np.ndarray):
    """(A, K(t), K(s), kernel) of the exponential integrator; kernel(rows) is K on the quadrature nodes of the
    steps rows, (len, p, M, k, k), built on demand so that large grids never hold all of it."""
    t, s = ts[:-1], ts[1:]
    p = tau.shape[1]
    if prediction == "eps":
        transition, weight = process.psi, process.R  # transition(to, start)
    else:
        hat = hat_psi_pairs(process, lam, (ts[0], ts[-1]))
        transition, weight = (lambda to, start: hat(start, to)), process.mean_coef
    A = transition(s, t)
    at_t, at_s = blocks.matmul(A, weight(t)), weight(s)
    # scalar transitions compose exactly, K(τ) = Ψ(s,r)·Ψ(r,τ)W_τ: each node's factor once, not with each s; r is
    # inside the grid, where M and R are nonzero (flow matching has M = 0 at t = 1 and R = 0 at t = 0)
    middle = np.array([(ts[0] + ts[-1]) / 2])  # one time: Ψ(r, τ) broadcasts over the nodes
    left = node_factor = None
    if process.k == 1 and prediction == "data":
        constant, node_factor = _scalar_hat_psi_mean(process, lam, middle)
        left = transition(s, middle) * constant
    elif process.k == 1:
        left, node_factor = transition(s, middle), lambda nodes: transition(middle, nodes) * weight(nodes)

    def kernel(rows):
        nodes = tau[rows].ravel()
        if left is not None:
            return left[rows, None] * node_factor(nodes).reshape(-1, p, *A.shape[1:])
        return blocks.matmul(transition(np.repeat(s[rows], p), nodes), weight(nodes)).reshape(-1, p, *A.shape[1:])

    return A, at_t, at_s, kernel


def multistep(process: LinearProcess, ts: np.ndarray, order: int = 0, lam: float = 0.0, prediction: str = "eps",
              corrector: bool = False, interpolation: str = "t", lower_order_final: bool = False,
              output: str = "eps") -> Recursion:
    """Multistep gDDIM of order q in the ε or data form, with an optional corrector (no extra model call).

    The data form with an ε-model keeps h_i = u_i - R_i ε_i = M_i x̂_i (the denoised state) and folds M_{i-j}⁻¹
    into the float64 coefficients, so the float32 loop never divides by BDM's 1e-5 entries of M. A model of
    another output (OUTPUTS) gives x̂ itself, or through x̂ = P u + Q v (velocity): nothing to fold, which is
    what lets flow matching start at t = 1, where M = 0.
    λ > 0 is the data form only: ε along a stochastic path is noise, x̂ is not.
    """
    if prediction not in PREDICTIONS:
        raise SettingsError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if lam > 0 and prediction != "data":
        raise SettingsError("stochastic multistep (lam > 0) extrapolates the data prediction: use prediction='data'")
    if output not in OUTPUTS or (output != "eps" and prediction != "data"):
        raise SettingsError(f"output must be one of {OUTPUTS}, and anything but 'eps' needs prediction='data' "
                            f"(a history of x̂); got output={output!r}, prediction={prediction!r}")
    t, s = ts[:-1], ts[1:]
    n = len(t)
    rho, drho = interpolation_variable(process, interpolation)
    tau, w = grid_quadrature(t, s)
    A, at_t, at_s, kernel = _ends_and_kernel(process, prediction, lam, ts, tau)
    fold = prediction == "data" and output == "eps"  # an ε-model's h = M x̂: M⁻¹ goes into the coefficients
    built = by_parts_all_steps(ts, step_degrees(n, order, lower_order_final), (0, 1) if corrector else (0,),
                               at_t, at_s, tau, w, kernel, rho, drho,
                               fold=blocks.inv(process.mean_coef(ts)) if fold else None)
    # the last step has no later model call to correct it with: its corrector row repeats the predictor (in place:
    # corrector_off would copy an array of up to 40 MB)
    C, redo = built[0], repeat_predictor(built[1], built[0], [n - 1]) if corrector else None
    P = Q = None
    if output == "velocity":
        P, Q = process.data_from_velocity(t)
    elif fold:
        P, Q = blocks.eye(process.modes, process.k)[None].repeat(n, 0), -process.R(t)
    S = noise_root(process, t, s, A) if lam > 0 else None
    return Recursion(times=t, next_times=s, A=A, C=C, S=S, P=P, Q=Q, corrector=redo)


def final_data_step(process: LinearProcess, t_end: float, output: str = "eps") -> Recursion:
    """The last NFE spent on the data prediction x̂(u, t_end) = M⁻¹(u - R ε) (FAST §4); for CLD the posterior
    mean of (x_0, 0) given (x, v), in place of the Euler-Maruyama denoising step."""
    t = np.array([t_end])
    if output != "eps":
        P, Q = process.data_from_velocity(t) if output == "velocity" else (None, None)
        eye = blocks.eye(process.modes, process.k)[None]
        return Recursion(times=t, next_times=np.array([0.0]), A=np.zeros_like(eye), C=eye[:, None], P=P, Q=Q)
    m_inv = np.linalg.inv(process.mean_coef(t))
    zero = np.zeros_like(m_inv)
    return Recursion(times=t, next_times=np.array([0.0]), A=zero, C=m_inv[:, None],
                     P=blocks.eye(process.modes, process.k)[None], Q=-process.R(t))

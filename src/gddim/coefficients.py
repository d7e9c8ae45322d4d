"""Coefficients of every sampler as one linear recursion (DESIGN "every sampler is a linear recursion").

    u_{i+1} = A_i u_i + Σ_j C_{ij} ε_{i-j} + S_i z_i,      z_i ~ N(0, I)

All builders work in float64 numpy on a decreasing grid ts (t_0 > ... > t_N), step i going from
t = ts[i] to s = ts[i+1], with blocks of shape (M, k, k) per step (see processes.base).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from . import blocks
from .processes import LinearProcess

GAUSS_NODES, GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)


@dataclass(frozen=True)
class Recursion:
    times: np.ndarray  # (n,) time of each step's model call
    next_times: np.ndarray  # (n,) time each step lands on
    A: np.ndarray  # (n, M, k, k)
    C: np.ndarray  # (n, q+1, M, k, k); C[i, j] multiplies the ε of step i - j
    S: np.ndarray | None = None  # (n, M, k, k), S Sᵀ = P: the step's noise covariance
    eps_map: np.ndarray | None = None  # (n, M, k, k): turns the network's ε_R into the ε the C expect

    @property
    def steps(self) -> int:
        return len(self.times)

    def then(self, other: Recursion) -> Recursion:
        """This recursion followed by another (e.g. CLD's denoising step); ε history carries over."""
        q = max(self.C.shape[1], other.C.shape[1])
        pad = lambda c: np.concatenate([c, np.zeros((c.shape[0], q - c.shape[1], *c.shape[2:]))], axis=1)
        m, n = self.A.shape[1:], (self.steps, other.steps)
        fill = lambda a, b, default: None if a is None and b is None else np.concatenate(
            [default(n[0]) if a is None else a, default(n[1]) if b is None else b])
        return Recursion(
            times=np.concatenate([self.times, other.times]),
            next_times=np.concatenate([self.next_times, other.next_times]),
            A=np.concatenate([self.A, other.A]),
            C=np.concatenate([pad(self.C), pad(other.C)]),
            S=fill(self.S, other.S, lambda n_: np.zeros((n_, *m))),
            eps_map=fill(self.eps_map, other.eps_map, lambda n_: blocks.eye(m[0], m[1])[None].repeat(n_, 0)),
        )


def lagrange_basis(nodes: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ℓ_j(τ) and ℓ'_j(τ) for Lagrange nodes (n, r+1) at points τ (n, p); both (n, r+1, p)."""
    n, r1 = nodes.shape
    diff = tau[:, None, :] - nodes[:, :, None]  # τ - t_k
    gap = nodes[:, :, None] - nodes[:, None, :]  # t_j - t_k
    value = np.ones((n, r1, tau.shape[1]))
    slope = np.zeros_like(value)
    for j in range(r1):
        others = [k for k in range(r1) if k != j]
        for k in others:
            value[:, j] *= diff[:, k] / gap[:, j, k, None]
        for m in others:
            term = 1.0 / gap[:, j, m, None]
            for k in others:
                if k != m:
                    term = term * diff[:, k] / gap[:, j, k, None]
            slope[:, j] += term
    return value, slope


def _history_nodes(ts: np.ndarray, order: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Steps grouped by their effective order r = min(i, q): (step indices, nodes t_i, t_{i-1}, .., t_{i-r})."""
    steps = np.arange(len(ts) - 1)
    groups = []
    for r in range(order + 1):
        idx = steps[steps >= order] if r == order else steps[steps == r]
        if len(idx):
            groups.append((idx, ts[idx[:, None] - np.arange(r + 1)[None, :]]))
    return groups


def gauss_legendre(t: np.ndarray, s: np.ndarray, panels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and signed weights (n, 8*panels) of ∫_t^s; panels are geometric since integrands vary on the scale of τ.

    The rule is Gauss-Legendre in w = √τ (τ = w², dτ = 2w dw): R_τ ~ √τ near τ = 0 (VP, BDM) is smooth in w,
    so steps that end at or near τ = 0 keep full accuracy (in τ they lose 3-4 digits).
    """
    edges = np.sqrt(t[:, None] * (s / t)[:, None] ** (np.arange(panels + 1) / panels))
    a, b = edges[:, :-1, None], edges[:, 1:, None]
    nodes = a + (b - a) * (GAUSS_NODES + 1) / 2
    weights = (b - a) / 2 * GAUSS_WEIGHTS * 2 * nodes
    return (nodes**2).reshape(len(t), -1), weights.reshape(len(t), -1)


def exponential_integrator(process: LinearProcess, ts: np.ndarray, order: int = 0, parameterization: str = "R") -> Recursion:
    """Deterministic gDDIM of order q (MATH §2.2-2.3): A = Ψ(s,t), C_ij = ∫_t^s Ψ(s,τ) ½GGᵀK⁻ᵀ ℓ_ij(τ) dτ.

    With K = R the integral is taken by parts (MATH §2.3), leaving the smooth integrand ℓ'Ψ(s,τ)R_τ for
    8-point Gauss-Legendre; q = 0 is then the closed form R_s - Ψ(s,t)R_t. With K = L (the ablation) the
    integrand has no such antiderivative and is integrated directly on geometric panels.
    """
    t, s = ts[:-1], ts[1:]
    n = len(t)
    A = process.psi(s, t)
    C = np.zeros((n, order + 1, *A.shape[1:]))
    eps_map = None
    if parameterization == "R":
        Rt = process.R(ts)
        boundary = Rt[1:] - A @ Rt[:-1]  # ∫ Ψ(s,τ)½GGᵀR⁻ᵀ dτ in closed form
        if order == 0:
            C[:, 0] = boundary
        else:
            # ≥ 64 panels per grid: one 8-point panel per step misses BDM's blur transition by 2e-3 at NFE 5
            tau, w = gauss_legendre(t, s, panels=-(-64 // n))
            m = tau.shape[1]
            psi_r = (process.psi(np.repeat(s, m), tau.ravel()) @ process.R(tau.ravel())).reshape(n, m, *A.shape[1:])
            for idx, nodes in _history_nodes(ts, order):
                at_s, _ = lagrange_basis(nodes, s[idx, None])
                _, slope = lagrange_basis(nodes, tau[idx])
                integral = np.einsum("ijp,ip,ipmab->ijmab", slope, w[idx], psi_r[idx])
                C[idx, : nodes.shape[1]] = at_s[..., 0, None, None, None] * Rt[idx + 1, None] - integral
                C[idx, 0] -= (A @ Rt[:-1])[idx]
            assert np.allclose(C.sum(1), boundary, rtol=1e-8, atol=1e-10), "sum rule Σ_j C_ij = R_s - ΨR_t violated"
    elif parameterization == "L":
        panels = 16
        tau, w = gauss_legendre(t, s, panels)
        p = tau.shape[1]
        flat = tau.ravel()
        integrand = process.psi(np.repeat(s, p), flat) @ (0.5 * process.GGT(flat) @ blocks.transpose(np.linalg.inv(process.L(flat))))
        integrand = integrand.reshape(n, p, *A.shape[1:])
        for idx, nodes in _history_nodes(ts, order):
            value, _ = lagrange_basis(nodes, tau[idx])
            C[idx, : nodes.shape[1]] = np.einsum("ijp,ip,ipmab->ijmab", value, w[idx], integrand[idx])
        # ε_L = Lᵀ R⁻ᵀ ε_R (MATH §1.3): the same network drives the L-coefficients
        eps_map = blocks.transpose(np.linalg.solve(process.R(t), process.L(t)))
    else:
        raise ValueError(f"parameterization must be 'R' or 'L', got {parameterization!r}")
    return Recursion(times=t, next_times=s, A=A, C=C, eps_map=eps_map)


def hat_psi(process: LinearProcess, t: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """Ψ̂^λ(s,t), the transition of F̂^λ = F + ((1+λ²)/2) GGᵀΣ⁻¹ (MATH §3.1-3.2)."""
    if lam == 0:
        return blocks.solve_right(process.R(s), process.R(t))
    if lam == 1:
        return blocks.solve_right(process.sigma(s) @ blocks.transpose(process.psi(t, s)), process.sigma(t))
    if process.k == 1:  # scalars commute: log Ψ̂^λ = ∫F + (1+λ²)∫½G²/Σ, and Ψ̂⁰ = R_s/R_t gives the second integral
        psi = process.psi(s, t)
        return psi * (process.R(s) / process.R(t) / psi) ** (1 + lam**2)
    return _hat_psi_ode(process, t, s, lam)


def _hat_psi_ode(process: LinearProcess, t: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """All steps at once: X' = (s-t) F̂(t + θ(s-t)) X on θ ∈ [0, 1], X(0) = I."""
    n, m, k = len(t), process.modes, process.k
    weight = (1 + lam**2) / 2

    def rhs(theta, x):
        tau = t + theta * (s - t)
        f_hat = process.F(tau) + weight * blocks.transpose(np.linalg.solve(process.sigma(tau), process.GGT(tau)))
        return ((s - t)[:, None, None, None] * f_hat @ x.reshape(n, m, k, k)).ravel()

    x0 = np.broadcast_to(np.eye(k), (n, m, k, k)).ravel()
    sol = solve_ivp(rhs, (0.0, 1.0), x0, method="DOP853", rtol=1e-11, atol=1e-13)
    if not sol.success:
        raise RuntimeError(f"the Ψ̂^λ ODE failed: {sol.message}")
    return sol.y[:, -1].reshape(n, m, k, k)


def stochastic(process: LinearProcess, ts: np.ndarray, lam: float) -> Recursion:
    """Stochastic gDDIM, q = 0 (MATH §3.2): u_s ~ N(Ψ u_t + (Ψ̂^λ - Ψ) K_t ε, P^λ), P^λ = Σ_s - Ψ̂ Σ_t Ψ̂ᵀ.

    Exact for Dirac data at any λ and step; λ = 1 is the posterior (ancestral) step. K_t ε_K = R_t ε_R for
    every square root K, so this step is the same in the R and L parameterizations.
    """
    t, s = ts[:-1], ts[1:]
    A = process.psi(s, t)
    h = hat_psi(process, t, s, lam)
    C = ((h - A) @ process.R(t))[:, None]
    P = process.sigma(s) - h @ process.sigma(t) @ blocks.transpose(h)
    S = blocks.psd_sqrt(P) if lam > 0 else None
    return Recursion(times=t, next_times=s, A=A, C=C, S=S)


def euler_maruyama(process: LinearProcess, ts: np.ndarray, lam: float) -> Recursion:
    """One Euler(-Maruyama) step of the λ-family du = [Fu + ((1+λ²)/2) GGᵀR⁻ᵀε] dt + λ G dw̄ (MATH §1.2).

    λ = 0 is probability-flow Euler; the weight is (1+λ²)/2, not the official code's (1+λ)/2.
    """
    t, s = ts[:-1], ts[1:]
    h = (s - t)[:, None, None, None]
    eye = blocks.eye(process.modes, process.k)
    ggt = process.GGT(t)
    A = eye + h * process.F(t)
    C = ((1 + lam**2) / 2 * h * ggt @ blocks.transpose(np.linalg.inv(process.R(t))))[:, None]
    S = lam * np.sqrt(np.abs(h)) * blocks.psd_sqrt(ggt) if lam > 0 else None
    return Recursion(times=t, next_times=s, A=A, C=C, S=S)


def denoising_step(process: LinearProcess, t_end: float) -> Recursion:
    """CLD's final step (MATH §4.2): a noise-free Euler step of the reverse SDE (λ = 1) from t_end to 0."""
    step = euler_maruyama(process, np.array([t_end, 0.0]), 1.0)
    return Recursion(times=step.times, next_times=step.next_times, A=step.A, C=step.C)

"""Coefficients of every sampler as one linear recursion (DESIGN "every sampler is a linear recursion").

    u_{i+1} = A_i u_i + Σ_j C_{ij} h_{i-j} + S_i z_i,      z_i ~ N(0, I),   h_i = P_i u_i + Q_i ε_i

h is the history item: ε itself (P, Q unset) or the data prediction (FAST §1). A corrector (FAST §2) redoes
step i, once the model has been called at its end, with a second coefficient set that includes h_{i+1}.

All builders work in float64 numpy on a decreasing grid ts (t_0 > ... > t_N), step i going from
t = ts[i] to s = ts[i+1], with blocks of shape (M, k, k) per step (see processes.base).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.integrate import solve_ivp

from . import blocks
from .errors import SettingsError
from .processes import LinearProcess

GAUSS_POINTS = 8  # per panel of the Gauss-Legendre rule (fewer on long grids: grid_quadrature)
# panels over a whole grid: one 8-point panel per step misses BDM's blur transition by 2e-3 at NFE 5
MIN_PANELS_PER_GRID = 64
L_PANELS_PER_STEP = 16  # the L integrand has no antiderivative to integrate by parts: finer panels
KERNEL_CHUNK_ENTRIES = 1 << 18  # 2 MB of float64 per kernel chunk: small temporaries are reused, large ones page-fault


@dataclass(frozen=True)
class Recursion:
    times: np.ndarray  # (n,) time of each step's model call
    next_times: np.ndarray  # (n,) time each step lands on
    A: np.ndarray  # (n, M, k, k)
    C: np.ndarray  # (n, q+1, M, k, k); C[i, j] multiplies the ε of step i - j
    S: np.ndarray | None = None  # (n, M, k, k), S Sᵀ = P: the step's noise covariance
    eps_map: np.ndarray | None = None  # (n, M, k, k): turns the network's ε_R into the ε the C expect
    P: np.ndarray | None = None  # (n, M, k, k): h_i = P_i u_i + Q_i ε_i; both unset means h_i = ε_i
    Q: np.ndarray | None = None
    # (n, q+2, M, k, k): step i redone once h_{i+1} is known; [i, 0] multiplies h_{i+1}, [i, j+1] multiplies h_{i-j}
    corrector: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return len(self.times)

    def corrector_off(self, steps) -> Recursion:
        """The same recursion with the given steps never redone: their corrector row is their predictor's."""
        steps = list(steps)
        if self.corrector is None or not steps:
            return self
        return replace(self, corrector=repeat_predictor(self.corrector.copy(), self.C, steps))

    def then(self, other: Recursion) -> Recursion:
        """This recursion followed by another (e.g. CLD's denoising step); the history carries over.

        A step without a corrector gets its own C as corrector (zero on h_{i+1}): redoing it changes nothing.
        """
        q = max(self.C.shape[1], other.C.shape[1])
        pad = lambda c, width: np.concatenate([c, np.zeros((c.shape[0], width - c.shape[1], *c.shape[2:]))], axis=1)
        m, n = self.A.shape[1:], (self.steps, other.steps)
        eye = lambda n_: blocks.eye(m[0], m[1])[None].repeat(n_, 0)
        zero = lambda n_: np.zeros((n_, *m))
        fill = lambda a, b, default: None if a is None and b is None else np.concatenate(
            [default(n[0]) if a is None else a, default(n[1]) if b is None else b])
        both = (self, other)
        width = max(r.C.shape[1] + 1 if r.corrector is None else r.corrector.shape[1] for r in both)
        redo = lambda r: pad(np.concatenate([np.zeros((r.steps, 1, *m)), r.C], axis=1) if r.corrector is None
                             else r.corrector, width)
        return Recursion(
            times=np.concatenate([self.times, other.times]),
            next_times=np.concatenate([self.next_times, other.next_times]),
            A=np.concatenate([self.A, other.A]),
            C=np.concatenate([pad(self.C, q), pad(other.C, q)]),
            S=fill(self.S, other.S, zero),
            eps_map=fill(self.eps_map, other.eps_map, eye),
            P=fill(self.P, other.P, zero),
            Q=fill(self.Q, other.Q, eye),
            corrector=None if self.corrector is None and other.corrector is None else np.concatenate([redo(r) for r in both]),
        )


def repeat_predictor(redo: np.ndarray, C: np.ndarray, steps) -> np.ndarray:
    """Overwrite the corrector rows of the given steps with their predictor (zero on h_{i+1}); returns redo."""
    redo[steps] = 0.0
    redo[steps, 1 : C.shape[1] + 1] = C[steps]
    return redo


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


def _history_nodes(ts: np.ndarray, degrees: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Steps grouped by their degree r: (step indices, nodes t_i, t_{i-1}, .., t_{i-r}); degrees[i] = min(i, q)."""
    groups = []
    for r in np.unique(degrees):
        idx = np.flatnonzero(degrees == r)
        groups.append((idx, ts[idx[:, None] - np.arange(r + 1)[None, :]]))
    return groups


def by_parts_all_steps(ts: np.ndarray, degrees: np.ndarray, aheads: tuple[int, ...], at_t: np.ndarray,
                       at_s: np.ndarray, tau: np.ndarray, w: np.ndarray, kernel, rho=lambda x: x,
                       drho=np.ones_like, fold: np.ndarray | None = None) -> list[np.ndarray]:
    """by_parts for every step of the grid, once per `ahead` (0: the predictor, 1: the corrector's extra node).

    kernel(rows) returns K on the quadrature nodes of the steps rows (index array), (len, p, M, k, k); it is
    called on chunks of KERNEL_CHUNK_ENTRIES numbers, so that no array holds K for every node and mode at once
    (BDM 32x32 at NFE 1000 would make 64 MB temporaries, and fresh memory of that size costs more than the
    arithmetic). fold (N+1, M, k, k), if given, multiplies each coefficient on the right by its node's block.
    Returns one (n, max degree + 1 + ahead, M, k, k) array per ahead, zeros in unused slots.
    """
    t, s, n = ts[:-1], ts[1:], len(ts) - 1
    out = [np.zeros((n, degrees.max() + 1 + ahead, *at_t.shape[1:])) for ahead in aheads]
    size = max(1, KERNEL_CHUNK_ENTRIES // (tau.shape[1] * at_t[0].size))
    for r in np.unique(degrees):
        steps = np.flatnonzero(degrees == r)
        for i in np.array_split(steps, -(-len(steps) // size)):
            values = np.concatenate([kernel(i), at_s[i, None], at_t[i, None]], axis=1)
            for C, ahead in zip(out, aheads):
                slots = i[:, None] + ahead - np.arange(r + 1 + ahead)[None, :]  # node index of each coefficient
                block = by_parts(ts[slots], t[i], s[i], tau[i], w[i], values, rho, drho)
                C[i, : r + 1 + ahead] = block if fold is None else blocks.matmul(block, fold[slots])
    return out


def warmup_degrees(steps: int, order: int) -> np.ndarray:
    """min(i, q): the first steps have fewer past model outputs."""
    return np.minimum(np.arange(steps), order)


def by_parts(nodes: np.ndarray, t: np.ndarray, s: np.ndarray, tau: np.ndarray, w: np.ndarray, values: np.ndarray,
             rho=lambda x: x, drho=np.ones_like) -> np.ndarray:
    """∫_t^s ∂_τK(τ) ℓ_j(τ) dτ = ℓ_j(s)K(s) - ℓ_j(t)K(t) - ∫ K(τ) ℓ_j'(τ) dτ for steps (n,) with Lagrange nodes (n, r+1).

    ℓ_j are polynomials in ρ(τ) (FAST §3), so ℓ_j' = dℓ_j/dρ · ρ'(τ). values holds K at the quadrature nodes tau
    (n, p) (weights w (n, p)), then K(s), then K(t): (n, p+2, M, k, k). Returns (n, r+1, M, k, k).
    """
    ends = lambda x: lagrange_basis(rho(nodes), rho(x)[:, None])[0]
    _, slope = lagrange_basis(rho(nodes), rho(tau))
    # one batched product over the quadrature nodes and the two ends: weights (n, r+1, p+2) @ values (n, p+2, ·)
    weights = np.concatenate([-slope * (drho(tau) * w)[:, None], ends(s), -ends(t)], axis=2)
    C = (weights @ values.reshape(*values.shape[:2], -1)).reshape(*weights.shape[:2], *values.shape[2:])
    size = np.abs(values[:, -2] - values[:, -1])
    assert np.all(np.abs(C.sum(1) - (values[:, -2] - values[:, -1])) <= 1e-8 * size + 1e-10 * size.max()), \
        "sum rule Σ_j C_ij = K(s) - K(t) violated"
    return C


def grid_quadrature(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The by-parts rule of a grid: ≥ MIN_PANELS_PER_GRID panels of GAUSS_POINTS points in all; fewer points per
    step on long grids, whose steps are short: 6 above 128 steps, 4 above 800. Against 16 points per step (VP, CLD,
    BDM, ε and data form, 129 to 1000 steps) that moves the coefficients by at most 5.6e-10 relative (BDM, 801
    steps), most by < 3e-11."""
    n = len(t)
    points = GAUSS_POINTS if n <= 128 else 6 if n <= 800 else 4
    return gauss_legendre(t, s, panels=-(-MIN_PANELS_PER_GRID // n), points=points)


def gauss_legendre(t: np.ndarray, s: np.ndarray, panels: int = 1,
                   points: int = GAUSS_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and signed weights (n, points*panels) of ∫_t^s; panels are geometric since integrands vary on the
    scale of τ.

    The rule is Gauss-Legendre in w = √τ (τ = w², dτ = 2w dw): R_τ ~ √τ near τ = 0 (VP, BDM) is smooth in w,
    so steps that end at or near τ = 0 keep full accuracy (in τ they lose 3-4 digits).
    """
    frac = np.arange(panels + 1) / panels
    # a step that ends at τ = 0 (a scheduler landing on ᾱ = 1) has no geometric split: even panels in √τ
    edges = np.where((s > 0)[:, None], np.sqrt(t[:, None] * (s / t)[:, None] ** frac), np.sqrt(t)[:, None] * (1 - frac))
    a, b = edges[:, :-1, None], edges[:, 1:, None]
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(points)
    nodes = a + (b - a) * (unit_nodes + 1) / 2
    weights = (b - a) / 2 * unit_weights * 2 * nodes
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
            tau, w = grid_quadrature(t, s)
            m = tau.shape[1]

            def psi_r(rows):
                nodes = tau[rows].ravel()
                kernel = blocks.matmul(process.psi(np.repeat(s[rows], m), nodes), process.R(nodes))
                return kernel.reshape(-1, m, *A.shape[1:])

            built = by_parts_all_steps(ts, warmup_degrees(n, order), (0,), A @ Rt[:-1], Rt[1:], tau, w, psi_r)[0]
            C[:, : built.shape[1]] = built  # runs shorter than q + 1 steps leave the top orders at zero
    elif parameterization == "L":
        tau, w = gauss_legendre(t, s, L_PANELS_PER_STEP)
        p = tau.shape[1]
        flat = tau.ravel()
        integrand = process.psi(np.repeat(s, p), flat) @ process.eps_drift(flat, "L")
        integrand = integrand.reshape(n, p, *A.shape[1:])
        for idx, nodes in _history_nodes(ts, warmup_degrees(n, order)):
            value, _ = lagrange_basis(nodes, tau[idx])
            C[idx, : nodes.shape[1]] = np.einsum("ijp,ip,ipmab->ijmab", value, w[idx], integrand[idx])
        # ε_L = Lᵀ R⁻ᵀ ε_R (MATH §1.3): the same network drives the L-coefficients
        eps_map = blocks.transpose(np.linalg.solve(process.R(t), process.L(t)))
    else:
        raise SettingsError(f"parameterization must be 'R' or 'L', got {parameterization!r}")
    return Recursion(times=t, next_times=s, A=A, C=C, eps_map=eps_map)


def hat_psi(process: LinearProcess, t: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """Ψ̂^λ(s,t), the transition of F̂^λ = F + ((1+λ²)/2) GGᵀΣ⁻¹ (MATH §3.1-3.2)."""
    if lam == 0:
        return blocks.solve_right(process.R(s), process.R(t))
    if lam == 1:
        return blocks.solve_right(process.sigma(s) @ blocks.transpose(process.psi(t, s)), process.sigma(t))
    if process.k == 1:  # scalars commute: log Ψ̂^λ = ∫F + (1+λ²)∫½G²/Σ, and Ψ̂⁰ = R_s/R_t gives the second integral
        # Ψ (R_s/(R_t Ψ))^(1+λ²) written so that Ψ(s,t) = inf (flow matching from t = 1) gives its limit 0
        return (process.R(s) / process.R(t)) ** (1 + lam**2) * process.psi(s, t) ** (-lam**2)
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
    return Recursion(times=t, next_times=s, A=A, C=C, S=noise_root(process, t, s, h) if lam > 0 else None)


def noise_root(process: LinearProcess, t: np.ndarray, s: np.ndarray, hat: np.ndarray) -> np.ndarray:
    """S with S Sᵀ = P^λ = Σ_s - Ψ̂ Σ_t Ψ̂ᵀ, the noise that keeps the λ-family step exact on Dirac data."""
    carried = blocks.matmul(blocks.matmul(hat, process.sigma(t)), blocks.transpose(hat))  # Ψ̂ Σ_t Ψ̂ᵀ
    return blocks.psd_sqrt(process.sigma(s) - carried)


def euler_maruyama(process: LinearProcess, ts: np.ndarray, lam: float) -> Recursion:
    """One Euler(-Maruyama) step of the λ-family du = [Fu + ((1+λ²)/2) GGᵀR⁻ᵀε] dt + λ G dw̄ (MATH §1.2).

    λ = 0 is probability-flow Euler; the weight is (1+λ²)/2, not the official code's (1+λ)/2.
    """
    t, s = ts[:-1], ts[1:]
    h = (s - t)[:, None, None, None]
    A = blocks.eye(process.modes, process.k) + h * process.F(t)
    C = ((1 + lam**2) * h * process.eps_drift(t))[:, None]
    S = lam * np.sqrt(np.abs(h)) * blocks.psd_sqrt(process.GGT(t)) if lam > 0 else None
    return Recursion(times=t, next_times=s, A=A, C=C, S=S)


def denoising_step(process: LinearProcess, t_end: float) -> Recursion:
    """CLD's final step (MATH §4.2): a noise-free Euler step of the reverse SDE (λ = 1) from t_end to 0."""
    step = euler_maruyama(process, np.array([t_end, 0.0]), 1.0)
    return Recursion(times=step.times, next_times=step.next_times, A=step.A, C=step.C)

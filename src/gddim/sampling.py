"""The sampler loop, `sample()` and the float64 reference solution of the probability-flow ODE.

An ε-model is any callable eps_fn(u, t) -> ε with u a state (B, k*C, H, W) in pixel layout and t a
tensor of shape (B,); ε is in R-coordinates (MATH §1.3-1.4) and has the shape of u.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from . import blocks, coefficients
from .coefficients import Recursion
from .errors import SamplerError, SettingsError
from .grids import steps_for_nfe, time_grid
from .processes import CLD, LinearProcess

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("gddim", "euler", "em", "ancestral", "sscs")
MAX_ORDER = 3


def check_order_and_lam(order: int, lam: float, order_name: str = "order q") -> None:
    """gDDIM's order q and stochasticity λ: q in 0..3, λ in [0, 1], and λ > 0 only at q = 0 (MATH §3.2)."""
    if not (isinstance(order, (int, np.integer)) and 0 <= order <= MAX_ORDER):
        raise SettingsError(f"{order_name} must be an integer in 0..{MAX_ORDER}, got {order!r}")
    if not 0.0 <= lam <= 1.0:
        raise SettingsError(f"λ (lam) must lie in [0, 1], got {lam}")
    if lam > 0 and order > 0:
        raise SettingsError(f"stochastic gDDIM (lam > 0) is the q = 0 step of MATH §3.2; use {order_name.split()[0]}=0")


def _check_options(process: LinearProcess, method: str, order: int, lam: float, parameterization: str) -> None:
    if method not in METHODS:
        raise SettingsError(f"unknown method {method!r}; choose one of {METHODS}")
    check_order_and_lam(order, lam)
    if parameterization not in ("R", "L"):
        raise SettingsError(f"parameterization must be 'R' or 'L', got {parameterization!r}")
    if method != "gddim" and (order != 0 or parameterization != "R"):
        raise SettingsError(f"order and parameterization belong to method='gddim'; {method!r} is first order in R")
    if method == "sscs" and not isinstance(process, CLD):
        raise SettingsError("SSCS splits CLD's reverse SDE; it needs process=CLD()")


def plan(process: LinearProcess, nfe: int, method: str = "gddim", order: int = 0, lam: float | None = None,
         parameterization: str = "R", grid="quadratic", t_start: float | None = None, t_end: float | None = None,
         denoise: bool | None = None) -> Recursion:
    """The coefficients of one sampler on one grid, built once in float64 and kept in memory on the process."""
    lam, denoise, n_steps = check_sampler(process, nfe, method, order, lam, parameterization, grid, denoise)
    if method == "sscs":
        raise SettingsError("SSCS has its own splitting step; use sample(..., method='sscs')")
    ts = time_grid(process, n_steps, grid, t_start, t_end)
    key = (method, order, lam, parameterization, ts.tobytes(), denoise)
    cache = process.__dict__.setdefault("_plans", {})
    if key not in cache:
        if method == "gddim" and lam == 0:
            rec = coefficients.exponential_integrator(process, ts, order, parameterization)
        elif method in ("gddim", "ancestral"):
            rec = coefficients.stochastic(process, ts, lam)
        else:
            rec = coefficients.euler_maruyama(process, ts, lam)
        if denoise:
            rec = rec.then(coefficients.denoising_step(process, ts[-1]))
        cache[key] = rec
    return cache[key]


def check_sampler(process: LinearProcess, nfe: int, method: str = "gddim", order: int = 0, lam: float | None = None,
                  parameterization: str = "R", grid="quadratic", denoise: bool | None = None) -> tuple[float, bool, int]:
    """Refuse impossible sampler settings before any work; returns (λ, denoise, integrator steps)."""
    lam = _default_lam(method, lam)
    _check_options(process, method, order, lam, parameterization)
    if method == "sscs" and lam != 1.0:
        raise SettingsError("SSCS integrates the reverse SDE (λ = 1); lam must be 1")
    if method == "sscs" and denoise is not None and denoise != process.denoise:
        raise SettingsError("SSCS always ends with CLD's denoising step; leave denoise unset")
    denoise = process.denoise if denoise is None else denoise
    n_steps = _steps(process, nfe, grid, denoise)
    if method == "gddim" and n_steps < order + 1:
        raise SettingsError(f"nfe={nfe} gives {n_steps} step(s): too few for order q={order}, which needs {order + 1}")
    return lam, denoise, n_steps


def _steps(process: LinearProcess, nfe: int, grid, denoise: bool) -> int:
    """Integrator steps for an NFE budget; an explicit grid must spend exactly that budget."""
    n_steps = steps_for_nfe(process, nfe, denoise)
    if not isinstance(grid, str) and len(grid) - 1 != n_steps:
        raise SettingsError(f"the explicit grid has {len(grid) - 1} steps but nfe={nfe} asks for {n_steps}"
                         + (" (plus the denoising step)" if denoise else ""))
    return n_steps


def _default_lam(method: str, lam: float | None) -> float:
    if method == "ancestral":
        if lam not in (None, 1, 1.0):
            raise SettingsError("the ancestral step is stochastic gDDIM at λ = 1; use method='gddim' for other λ")
        return 1.0
    if lam is None:
        return 1.0 if method in ("em", "sscs") else 0.0
    return float(lam)


class _Model:
    """Calls eps_fn on basis states, checking what comes back."""

    def __init__(self, process: LinearProcess, eps_fn: EpsFn):
        self.process, self.eps_fn = process, eps_fn
        self.calls = 0

    def __call__(self, y: torch.Tensor, t: float, step: int) -> torch.Tensor:
        u = self.process.from_basis(y)
        # times stay float32 or wider even when the state is half precision (a bf16 time is ~2 labels off)
        tt = torch.full((u.shape[0],), t, dtype=torch.promote_types(u.dtype, torch.float32), device=u.device)
        eps = self.eps_fn(u, tt)
        self.calls += 1
        if not isinstance(eps, torch.Tensor) or eps.shape != u.shape:
            got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise SamplerError(f"eps_fn returned {got} at step {step} (t={t:.6g}); expected {tuple(u.shape)}")
        if not torch.isfinite(eps).all():
            raise SamplerError(f"eps_fn returned NaN or inf at step {step} (t={t:.6g}); "
                               "check the model and its time input")
        return self.process.to_basis(eps.to(u.dtype))


def standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise shaped like `like`, drawn in float64 and cast to its dtype: one seed gives the same draws whatever the
    state's precision (torch draws float32 and float64 from different streams), as prior_sample does."""
    return torch.randn(like.shape, generator=generator, dtype=torch.float64, device=like.device).to(like.dtype)


def run_recursion(process: LinearProcess, eps_fn: EpsFn, u: torch.Tensor, rec: Recursion,
                  generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Apply a recursion to the state u (pixel layout) in u's dtype; returns the final state."""
    process.check_state(u, "u_T")
    model = _Model(process, eps_fn)
    cast = lambda a: None if a is None else process.blocks(a, u)
    A, C, S, E = cast(rec.A), cast(rec.C), cast(rec.S), cast(rec.eps_map)
    y = process.to_basis(u)
    history: list[torch.Tensor] = []
    for i in tqdm(range(rec.steps), disable=not progress, desc="sampling", leave=False):
        eps = model(y, float(rec.times[i]), i)
        if E is not None:
            eps = blocks.apply(E[i], eps)
        history = [eps] + history[: C.shape[1] - 1]
        y_next = blocks.apply(A[i], y)
        for j, past in enumerate(history):
            y_next = y_next + blocks.apply(C[i, j], past)
        if S is not None:
            y_next = y_next + blocks.apply(S[i], standard_normal(y, generator))
        y = y_next
    return process.from_basis(y)


def sample(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, method: str = "gddim",
           order: int = 0, lam: float | None = None, parameterization: str = "R", grid="quadratic",
           t_start: float | None = None, t_end: float | None = None, denoise: bool | None = None,
           generator: torch.Generator | None = None, progress: bool = False, return_state: bool = False) -> torch.Tensor:
    """Sample from u_T with `nfe` network calls; returns data x (B, C, H, W), or the whole state.

    method: "gddim" (order q in 0..3, lam λ in [0, 1] with λ > 0 at q = 0, parameterization "R" or "L"),
    "euler" (probability-flow Euler), "em" (Euler-Maruyama on the λ-family, λ = 1 by default),
    "ancestral" (the posterior step, = gddim at λ = 1), "sscs" (CLD only).
    grid: "quadratic" (κ = 2, the paper's), "uniform", "logsnr" or an explicit decreasing sequence of times.
    """
    if method == "sscs":
        check_sampler(process, nfe, method, order, lam, parameterization, grid, denoise)
        u = sscs(process, eps_fn, u_T, nfe, grid, t_start, t_end, generator, progress)
    else:
        rec = plan(process, nfe, method, order, lam, parameterization, grid, t_start, t_end, denoise)
        u = run_recursion(process, eps_fn, u_T, rec, generator, progress)
    return u if return_state else process.state_to_data(u)


def _sscs_half_step(process: CLD, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean map and covariance of SSCS's linear part over ∫β = b (MATH §5.2, critical damping)."""
    G = process.Gamma
    e = np.exp(-2 * b / G)
    mean = e * np.array([[1 + 2 * b / G, -4 * b / G**2], [b, 1 - 2 * b / G]])
    c = b / G
    cov = np.exp(-4 * c) * np.array([
        [np.expm1(4 * c) - 4 * c - 8 * c**2, -4 * b**2 / G],
        [-4 * b**2 / G, G**2 / 4 * np.expm1(4 * c) + b * G - 2 * b**2],
    ])
    return mean, cov


def sscs(process: CLD, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, grid="quadratic", t_start=None, t_end=None,
         generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Symmetric splitting CLD sampler (MATH §5.2): A(h/2) S(h) A(h/2) per step, then the denoising step."""
    process.check_state(u_T, "u_T")
    n_steps = _steps(process, nfe, grid, process.denoise)
    ts = time_grid(process, n_steps, grid, t_start, t_end)
    model = _Model(process, eps_fn)
    y = process.to_basis(u_T)
    for i in tqdm(range(n_steps), disable=not progress, desc="sampling", leave=False):
        t, s = ts[i], ts[i + 1]
        mid = 0.5 * (t + s)
        y = _sscs_linear(process, y, t, mid, generator)
        # score part: dv = 2Γβ [s_v + M⁻¹ v] dτ' with s = -R⁻ᵀ ε, over the whole step
        eps = model(y, mid, i)
        score_v = -blocks.apply(process.blocks(blocks.transpose(np.linalg.inv(process.R(mid)[0])), y), eps)[:, 1]
        dv = 2 * process.Gamma * process.beta(mid)[0] * (t - s) * (score_v + process.m_inv * y[:, 1])
        y = torch.stack([y[:, 0], y[:, 1] + dv], dim=1)
        y = _sscs_linear(process, y, mid, s, generator)
    u = process.from_basis(y)
    return run_recursion(process, eps_fn, u, coefficients.denoising_step(process, ts[-1]))


def _sscs_linear(process: CLD, y: torch.Tensor, t: float, s: float, generator) -> torch.Tensor:
    mean, cov = _sscs_half_step(process, float(process.B(t)[0] - process.B(s)[0]))
    y = blocks.apply(process.blocks(mean[None], y), y)
    return y + blocks.apply(process.blocks(blocks.psd_sqrt(cov[None]), y), standard_normal(y, generator))


def reference_ode(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, t_start: float | None = None,
                  t_end: float | None = None, denoise: bool | None = None, rtol: float = 1e-10, atol: float = 1e-10,
                  return_state: bool = False) -> torch.Tensor:
    """The probability-flow ODE du/dt = F u + ½GGᵀR⁻ᵀ ε(u,t) solved in float64 by DOP853 (then CLD's denoising step).

    The yardstick for path errors: halve rtol to see how far it is from the exact solution.
    """
    process.check_state(u_T, "u_T")
    t_start = process.t_start if t_start is None else t_start
    t_end = process.t_end if t_end is None else t_end
    denoise = process.denoise if denoise is None else denoise
    # scipy integrates on the host: the state lives on the CPU, the model sees it on u_T's device
    device = u_T.device
    y0 = process.to_basis(u_T.detach().to("cpu", torch.float64))
    model = _Model(process, lambda u, t: eps_fn(u.to(device), t.to(device)).to("cpu", torch.float64))

    def rhs(t, flat):
        y = torch.from_numpy(flat).reshape(y0.shape)
        f = process.blocks(process.F(t)[0], y)
        drift = process.blocks(0.5 * process.GGT(t)[0] @ np.linalg.inv(process.R(t)[0]).transpose(0, 2, 1), y)
        return (blocks.apply(f, y) + blocks.apply(drift, model(y, t, model.calls))).ravel().numpy()

    sol = solve_ivp(rhs, (t_start, t_end), y0.ravel().numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE failed: {sol.message}")
    u = process.from_basis(torch.from_numpy(sol.y[:, -1]).reshape(y0.shape)).to(device)
    if denoise:
        u = run_recursion(process, lambda v, t: eps_fn(v, t).to(torch.float64), u, coefficients.denoising_step(process, t_end))
    u = u.to(u_T.dtype)
    return u if return_state else process.state_to_data(u)

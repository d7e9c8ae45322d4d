"""The sampler loop, `sample()` and the float64 reference solution of the probability-flow ODE.

An ε-model is any callable eps_fn(u, t) -> ε with u a state (B, k*C, H, W) in pixel layout and t a
tensor of shape (B,); ε is in R-coordinates (MATH §1.3-1.4) and has the shape of u.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from . import blocks, coefficients, multistep
from .coefficients import Recursion
from .errors import SamplerError, SettingsError
from .grids import resolve_grid, steps_for_nfe, time_grid
from .processes import CLD, LinearProcess
from .spec import METHODS

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MAX_ORDER = 3


def _check_order_and_lam(order: int, lam: float, prediction: str) -> None:
    """gDDIM's order q and stochasticity λ: q in 0..3, λ in [0, 1]; λ > 0 with q > 0 only in the data form (FAST §6)."""
    if not (isinstance(order, (int, np.integer)) and 0 <= order <= MAX_ORDER):
        raise SettingsError(f"order q must be an integer in 0..{MAX_ORDER}, got {order!r}")
    if not 0.0 <= lam <= 1.0:
        raise SettingsError(f"λ (lam) must lie in [0, 1], got {lam}")
    if lam > 0 and order > 0 and prediction != "data":
        raise SettingsError("stochastic gDDIM (lam > 0) with order > 0 extrapolates the data prediction (FAST §6): "
                            "pass prediction='data', or use order=0")


@dataclass(frozen=True)
class Multistep:
    """The options of multistep gDDIM beyond the paper (FAST §1-4); the field defaults are the paper's sampler,
    FAST_DEFAULTS those that gddim.sample uses for gDDIM in the data form unless told otherwise.

    prediction: "eps" (history of ε, the paper's) or "data" (history of the data prediction x̂, DPM-Solver++'s form).
    corrector: redo each step with the model output at its end (UniPC's corrector; no extra model call).
        Use it with prediction="data" on CLD and BDM: in the ε form the next step's A = Ψ(s,t) amplifies the
        correction (up to 4e4 on BDM's blurred modes); measured path errors 10-1e4x worse than without.
    interpolation: the variable the history is a polynomial in: "t", "sqrt_t" or "logsnr".
    lower_order_final: on runs of fewer than 15 steps the last step is first order, the one before second order.
    final_step: "integrate" (end at t_end; CLD then takes its denoising step) or "data" (one more model call
        returns the data prediction x̂(u, t_end); it replaces CLD's denoising step and counts in the NFE).
    """

    prediction: str = "eps"
    corrector: bool = False
    interpolation: str = "t"
    lower_order_final: bool = False
    final_step: str = "integrate"

    def check(self, method: str, parameterization: str) -> None:
        for name, allowed in [("prediction", multistep.PREDICTIONS), ("interpolation", multistep.INTERPOLATIONS),
                              ("final_step", multistep.FINAL_STEPS)]:
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("corrector", "lower_order_final"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise SettingsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.is_paper:
            return
        if method != "gddim":
            raise SettingsError(f"prediction, corrector, interpolation, lower_order_final and final_step belong to "
                             f"method='gddim'; {method!r} takes none of them")
        if parameterization != "R":
            raise SettingsError("parameterization='L' is the paper's ablation: it takes none of prediction, corrector, "
                             "interpolation, lower_order_final, final_step")

    @property
    def is_paper(self) -> bool:
        return self == Multistep()

    @property
    def is_integrator_paper(self) -> bool:
        """Everything but the final step is the paper's."""
        return replace(self, final_step="integrate").is_paper


# the general-purpose default: on exact scores q = 2 and 3 tie (benchmarks/fast_variants_*/goal), on trained models
# q = 3 amplifies the network's error at NFE 10 (CLD digits FD 12.3 against 4.5; benchmarks/trained_digits/defaults.json)
DEFAULT_ORDER = 2
FAST_DEFAULTS = Multistep(prediction="data", corrector=True, lower_order_final=True)


def _check_options(process: LinearProcess, method: str, order: int, lam: float, parameterization: str,
                   options: Multistep) -> None:
    if method not in METHODS:
        raise SettingsError(f"unknown method {method!r}; choose one of {METHODS}")
    options.check(method, parameterization)
    _check_order_and_lam(order, lam, options.prediction)
    if lam > 0 and options.corrector and options.prediction != "data":
        raise SettingsError("the corrector of stochastic gDDIM (lam > 0) works on the data prediction: "
                         "pass prediction='data'")
    if parameterization not in ("R", "L"):
        raise SettingsError(f"parameterization must be 'R' or 'L', got {parameterization!r}")
    if method != "gddim" and (order != 0 or parameterization != "R"):
        raise SettingsError(f"order and parameterization belong to method='gddim'; {method!r} is first order in R")
    if method == "sscs" and not isinstance(process, CLD):
        raise SettingsError("SSCS splits CLD's reverse SDE; it needs process=CLD()")


def plan(process: LinearProcess, nfe: int, method: str = "gddim", order: int | None = None, lam: float | None = None,
         parameterization: str = "R", grid="quadratic", t_start: float | None = None, t_end: float | None = None,
         denoise: bool | None = None, **options) -> Recursion:
    """The coefficients of one sampler on one grid, built once in float64 and kept in memory on the process.

    options: the Multistep fields (prediction, corrector, interpolation, lower_order_final, final_step); unset
    ones and order=None take the defaults of `sample`.
    """
    grid = resolve_grid(process, grid, nfe)
    fast = _multistep_options(method, order, lam, parameterization, options)
    order, lam, denoise, n_steps = check_sampler(process, nfe, method, order, lam, parameterization, grid, denoise,
                                                 **options)
    if method == "sscs":
        raise SettingsError("SSCS has its own splitting step; use sample(..., method='sscs')")
    ts = time_grid(process, n_steps, grid, t_start, t_end)
    key = (method, order, lam, parameterization, ts.tobytes(), denoise, fast)
    cache = process.__dict__.setdefault("_plans", {})
    if key not in cache:
        rec = integrator(process, ts, method, order, lam, parameterization, fast)
        if fast.final_step == "data":
            rec = rec.then(multistep.final_data_step(process, ts[-1]))
        elif denoise:
            rec = rec.then(coefficients.denoising_step(process, ts[-1]))
        cache[key] = rec
    return cache[key]


def integrator(process: LinearProcess, ts: np.ndarray, method: str = "gddim", order: int = 0, lam: float = 0.0,
               parameterization: str = "R", options: Multistep = Multistep()) -> Recursion:
    """The integrator steps of one (checked) sampler on the grid ts, without the final denoising or data step."""
    if method == "gddim" and not options.is_integrator_paper:
        return multistep.multistep(process, ts, order, lam, options.prediction, options.corrector,
                                   options.interpolation, options.lower_order_final)
    if method == "gddim" and lam == 0:
        return coefficients.exponential_integrator(process, ts, order, parameterization)
    if method in ("gddim", "ancestral"):
        return coefficients.stochastic(process, ts, lam)
    return coefficients.euler_maruyama(process, ts, lam)


def _multistep_options(method: str, order: int | None, lam: float | None, parameterization: str,
                       options: dict) -> Multistep:
    """Unset options: FAST_DEFAULTS for the default sampler (gDDIM in R with no order and no λ named, unless the ε
    form is asked for); naming an order or λ means the paper's gDDIM, which the options given extend."""
    unknown = set(options) - set(Multistep.__dataclass_fields__)
    if unknown:
        raise SettingsError(f"unknown sampler option(s) {sorted(unknown)}; the multistep options are "
                        f"{list(Multistep.__dataclass_fields__)}")
    default = _is_default_sampler(method, order, lam, parameterization, options)
    return replace(FAST_DEFAULTS if default else Multistep(), **options)


def _is_default_sampler(method: str, order: int | None, lam: float | None, parameterization: str,
                        options: dict) -> bool:
    return (method == "gddim" and parameterization == "R" and order is None and not lam
            and options.get("prediction", "data") == "data")


def _default_order(default_sampler: bool, order: int | None, n_steps: int) -> int:
    """order=None: DEFAULT_ORDER for the default sampler (lower when the run has too few steps), else the paper's 0."""
    if order is not None:
        return order
    return min(DEFAULT_ORDER, n_steps - 1) if default_sampler else 0


def check_sampler(process: LinearProcess, nfe: int, method: str = "gddim", order: int | None = None,
                  lam: float | None = None, parameterization: str = "R", grid="quadratic", denoise: bool | None = None,
                  **options) -> tuple[int, float, bool, int]:
    """Refuse impossible sampler settings before any work; returns (order, λ, denoise, integrator steps)."""
    grid = resolve_grid(process, grid, nfe)
    fast = _multistep_options(method, order, lam, parameterization, options)
    lam = _default_lam(method, lam)
    if order is not None:  # checked before the NFE, so that a bad order is named as such
        _check_options(process, method, order, lam, parameterization, fast)
    if method == "sscs" and lam != 1.0:
        raise SettingsError("SSCS integrates the reverse SDE (λ = 1); lam must be 1")
    if method == "sscs" and denoise is not None and denoise != process.denoise:
        raise SettingsError("SSCS always ends with CLD's denoising step; leave denoise unset")
    if fast.final_step == "data" and denoise:
        raise SettingsError("final_step='data' replaces the denoising step: leave denoise unset or False")
    denoise = (process.denoise if denoise is None else denoise) and fast.final_step != "data"
    final_data = fast.final_step == "data"
    n_steps = _steps(process, nfe, grid, denoise or final_data, "final data" if final_data else "denoising")
    order = _default_order(_is_default_sampler(method, order, lam, parameterization, options), order, n_steps)
    _check_options(process, method, order, lam, parameterization, fast)
    if method == "gddim" and n_steps < order + 1:
        raise SettingsError(f"nfe={nfe} gives {n_steps} step(s): too few for order q={order}, which needs {order + 1}")
    return order, lam, denoise, n_steps


def _steps(process: LinearProcess, nfe: int, grid, denoise: bool, last: str = "denoising") -> int:
    """Integrator steps for an NFE budget; an explicit grid must spend exactly that budget."""
    n_steps = steps_for_nfe(process, nfe, denoise)
    if not isinstance(grid, str) and len(grid) - 1 != n_steps:
        raise SettingsError(f"the explicit grid has {len(grid) - 1} steps but nfe={nfe} asks for {n_steps}"
                         + (f" (plus the {last} step)" if denoise else ""))
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


def host_model(process: LinearProcess, eps_fn: EpsFn, device: torch.device) -> _Model:
    """The checked model for float64 states on the CPU (scipy's side), evaluated on the model's device."""
    return _Model(process, lambda u, t: eps_fn(u.to(device), t.to(device)).to("cpu", torch.float64))


def standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise shaped like `like`, drawn in float64 and cast to its dtype: one seed gives the same draws whatever the
    state's precision (torch draws float32 and float64 from different streams), as prior_sample does."""
    return torch.randn(like.shape, generator=generator, dtype=torch.float64, device=like.device).to(like.dtype)


def run_recursion(process: LinearProcess, eps_fn: EpsFn, u: torch.Tensor, rec: Recursion,
                  generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Apply a recursion to the state u (pixel layout) in u's dtype; returns the final state."""
    process.check_state(u, "u_T")
    model = _Model(process, eps_fn)
    stepper = Stepper(process, rec, u)
    y = process.to_basis(u)
    for i in tqdm(range(rec.steps), disable=not progress, desc="sampling", leave=False):
        y = stepper.step(y, model(y, float(rec.times[i]), i), generator)
    return process.from_basis(y)


class Stepper:
    """A recursion applied one model output at a time: the sampling loop and GDDIMScheduler.step both use it.

    It holds the coefficients cast to the state's dtype and device and the history h. The corrector redoes
    step i-1 once the model output at its predicted end is known; the redone step differs from the predicted
    one (same start, same noise z) only in its history terms, y_i ← y_i + Σ_j D_ij h_j with
    D_i = corrector_i - C_i shifted by one, and step i then applies A_i to it: the two fold into step i's
    history coefficients, C_ij + A_i D_(i-1)j, built once in float64. The history keeps the output at the
    predicted state. States and outputs are in the basis layout (B, k, C, H, W).
    """

    def __init__(self, process: LinearProcess, rec: Recursion, like: torch.Tensor,
                 normal: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = standard_normal):
        cast = lambda a: None if a is None else process.blocks(a, like)
        self.A, self.S, self.E, self.Q = (cast(a) for a in (rec.A, rec.S, rec.eps_map, rec.Q))
        # h = u + Q ε when P is the identity (the data form): one multiply-add
        self.P = None if rec.P is None or np.array_equal(rec.P, np.broadcast_to(np.eye(rec.P.shape[-1]), rec.P.shape)) \
            else cast(rec.P)
        self.C = cast(rec.C if rec.corrector is None else _fold_corrector(rec))
        self.normal = normal
        self.steps, self.index = rec.steps, 0
        self.history: list[torch.Tensor] = []

    def step(self, y: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The state after step `index`, given the state y the step starts from and the model output there."""
        i = self.index
        if i >= self.steps:
            raise IndexError(f"all {self.steps} steps of this recursion are done")
        if self.E is not None:
            eps = blocks.apply(self.E[i], eps)
        if self.Q is not None:
            eps = blocks.add_applied(y if self.P is None else blocks.apply(self.P[i], y), self.Q[i], eps)
        self.history = [eps] + self.history[: self.C.shape[1] - 1]
        noise = None if self.S is None else blocks.apply(self.S[i], self.normal(y, generator))
        self.index = i + 1
        return _step(self.A[i], self.C[i], y, self.history, noise)


def _fold_corrector(rec: Recursion) -> np.ndarray:
    """Each step's history coefficients with the previous step's correction folded in (see Stepper)."""
    assert rec.corrector.shape[1] >= rec.C.shape[1] + 1, "a corrector row holds the new output and every predictor term"
    predictor = np.zeros_like(rec.corrector)
    predictor[:, 1 : rec.C.shape[1] + 1] = rec.C
    merged = np.zeros_like(rec.corrector)
    merged[:, : rec.C.shape[1]] = rec.C
    merged[1:] += rec.A[1:, None] @ (rec.corrector - predictor)[:-1]
    return merged


def _step(A: torch.Tensor, C: torch.Tensor, y: torch.Tensor, history: list[torch.Tensor], noise) -> torch.Tensor:
    """A y + Σ_j C_j h_j (+ the step's noise)."""
    out = blocks.apply(A, y)
    for c, past in zip(C, history):
        out = blocks.add_applied(out, c, past)
    return out if noise is None else out + noise


def sample(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, method: str = "gddim",
           order: int | None = None, lam: float | None = None, parameterization: str = "R", grid="quadratic",
           t_start: float | None = None, t_end: float | None = None, denoise: bool | None = None,
           generator: torch.Generator | None = None, progress: bool = False, return_state: bool = False,
           **options) -> torch.Tensor:
    """Sample from u_T with `nfe` network calls; returns data x (B, C, H, W), or the whole state.

    method: "gddim" (order q in 0..3, lam λ in [0, 1] (λ > 0 with q > 0 needs prediction="data"),
    parameterization "R" or "L"), "euler" (probability-flow Euler), "em" (Euler-Maruyama on the λ-family,
    λ = 1 by default), "ancestral" (the posterior step, = gddim at λ = 1), "sscs" (CLD only).
    grid: "quadratic" (κ = 2, the paper's), "uniform", "logsnr", "tuned" (tuned on exact scores, shipped with
    gddim), the path of a grid file tuned to this model (gddim tune-grid) or an explicit decreasing sequence of times.
    options (method="gddim", FAST.md): prediction "eps" | "data", corrector True | False, interpolation
    "t" | "sqrt_t" | "logsnr", lower_order_final True | False, final_step "integrate" | "data"; see `Multistep`.
    The default (no order, no λ): gDDIM of order DEFAULT_ORDER (2; lower when nfe leaves too few steps) with
    FAST_DEFAULTS (data prediction, the corrector, lower order at the end), chosen by measurement. Naming an
    order or λ gives the paper's gDDIM of that order or λ, which the options extend (e.g. order=2,
    prediction="data", corrector=True, lower_order_final=True is the default spelled out).
    """
    grid = resolve_grid(process, grid, nfe)
    if method == "sscs":
        check_sampler(process, nfe, method, order, lam, parameterization, grid, denoise, **options)
        u = sscs(process, eps_fn, u_T, nfe, grid, t_start, t_end, generator, progress)
    else:
        rec = plan(process, nfe, method, order, lam, parameterization, grid, t_start, t_end, denoise, **options)
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
    t_start = process.t_start if t_start is None else t_start
    t_end = process.t_end if t_end is None else t_end
    denoise = process.denoise if denoise is None else denoise
    u = probability_flow(process, eps_fn, u_T, t_start, t_end, rtol=rtol, atol=atol)[-1].to(u_T.device)
    if denoise:
        u = run_recursion(process, lambda v, t: eps_fn(v, t).to(torch.float64), u, coefficients.denoising_step(process, t_end))
    u = u.to(u_T.dtype)
    return u if return_state else process.state_to_data(u)


def probability_flow(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, t_start: float, t_end: float,
                     t_eval: np.ndarray | None = None, rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """States (n, B, k*C, H, W), float64 on the CPU, of the probability-flow ODE from u_T at t_start, solved by DOP853.

    n = len(t_eval) states at the times t_eval (DOP853's 7th-order dense output), or without t_eval the one at t_end.
    """
    process.check_state(u_T, "u_T")
    y0 = process.to_basis(u_T.detach().to("cpu", torch.float64))
    model = host_model(process, eps_fn, u_T.device)

    def rhs(t, flat):
        y = torch.from_numpy(flat).reshape(y0.shape)
        f = process.blocks(process.F(t)[0], y)
        drift = process.blocks(0.5 * process.GGT(t)[0] @ np.linalg.inv(process.R(t)[0]).transpose(0, 2, 1), y)
        return (blocks.apply(f, y) + blocks.apply(drift, model(y, t, model.calls))).ravel().numpy()

    sol = solve_ivp(rhs, (t_start, t_end), y0.ravel().numpy(), method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE failed: {sol.message}")
    states = torch.from_numpy(sol.y.T if t_eval is not None else sol.y[:, -1:].T)
    return process.from_basis(states.reshape(-1, *y0.shape[1:])).reshape(len(states), *u_T.shape)

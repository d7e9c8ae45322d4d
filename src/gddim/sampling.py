"""`sample()`, its settings and plans, SSCS, and the float64 reference solution of the probability-flow ODE.

An ε-model is any callable eps_fn(u, t, **model_kwargs) -> ε with u a state (B, k*C, H, W) in pixel layout and
t a tensor of shape (B,); ε is in R-coordinates (MATH §1.3-1.4) and has the shape of u (gddim.loop: how the
loop calls it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from . import blocks, coefficients, multistep
from .coefficients import Recursion
from .errors import SamplerError, SettingsError
from .grids import resolve_grid, steps_for_nfe, time_grid
from .loop import Callback, CheckedModel, EpsFn, ModelCall, Stepper, host_model, run_steps
from .noise import SampleNoise
from .processes import CLD, LinearProcess
from .spec import METHODS

MAX_ORDER = 3
# plans kept in memory, shared by equal processes: a sweep over samplers and NFEs reuses tens of them, and a
# BDM plan at NFE 1000 holds tens of MB
PLAN_CACHE_SIZE = 32


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
    output: what the model returns: "eps" (ε_R), "data" (x̂, the posterior mean of the data) or "velocity"
        (flow matching's dx_t/dt); anything but ε keeps the history in the data form (prediction="data"), so that
        flow matching can start at t = 1, where Ψ(t,0) = 0 and an ε-model says nothing about the data.
    """

    prediction: str = "eps"
    corrector: bool = False
    interpolation: str = "t"
    lower_order_final: bool = False
    final_step: str = "integrate"
    output: str = "eps"

    def check(self, method: str, parameterization: str) -> None:
        for name, allowed in [("prediction", multistep.PREDICTIONS), ("interpolation", multistep.INTERPOLATIONS),
                              ("final_step", multistep.FINAL_STEPS),
                              ("output", multistep.OUTPUTS)]:
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("corrector", "lower_order_final"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise SettingsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.is_paper:
            return
        if self.output != "eps" and self.prediction != "data":
            raise SettingsError(f"a model with output={self.output!r} gives x̂, so its history is the data form: "
                                "pass prediction='data' (or leave prediction unset)")
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
         parameterization: str = "R", grid=None, t_start: float | None = None, t_end: float | None = None,
         denoise: bool | None = None, **options) -> Recursion:
    """The coefficients of one sampler on one grid, built once in float64 and kept in memory (cached_plan).

    options: the Multistep fields (prediction, corrector, interpolation, lower_order_final, final_step); unset
    ones and order=None take the defaults of `sample`.
    """
    grid = resolve_grid(process, sampler_grid(process, grid, method, order, lam, parameterization, **options), nfe)
    fast = _multistep_options(method, order, lam, parameterization, options)
    order, lam, denoise, n_steps = check_sampler(process, nfe, method, order, lam, parameterization, grid, denoise,
                                                 **options)
    if method == "sscs":
        raise SettingsError("SSCS has its own splitting step; use sample(..., method='sscs')")
    ts = time_grid(process, n_steps, grid, t_start, t_end)
    multistep.check_start(process, ts, fast.output, fast.interpolation)
    times = tuple(ts.tolist())
    return cached_plan(process, times, method, order, lam, parameterization, denoise, fast)


@lru_cache(maxsize=PLAN_CACHE_SIZE)
def cached_plan(process: LinearProcess, times: tuple[float, ...], method: str, order: int, lam: float,
                parameterization: str, denoise: bool, options: Multistep) -> Recursion:
    """The plan of checked settings, kept for the PLAN_CACHE_SIZE latest keys; equal processes (equal configs)
    share entries, and a process with other parameters is another key (processes are immutable)."""
    ts = np.array(times)
    rec = integrator(process, ts, method, order, lam, parameterization, options)
    if options.final_step == "data":
        rec = rec.then(multistep.final_data_step(process, ts[-1], options.output))
    elif denoise:
        rec = rec.then(coefficients.denoising_step(process, ts[-1]))
    for array in vars(rec).values():  # a shared entry: no caller may change it for the others
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return rec


def integrator(process: LinearProcess, ts: np.ndarray, method: str = "gddim", order: int = 0, lam: float = 0.0,
               parameterization: str = "R", options: Multistep = Multistep()) -> Recursion:
    """The integrator steps of one (checked) sampler on the grid ts, without the final denoising or data step."""
    if method == "gddim" and not options.is_integrator_paper:
        return multistep.multistep(process, ts, order, lam, options.prediction, options.corrector,
                                   options.interpolation, options.lower_order_final, options.output)
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
    if options.get("output", "eps") != "eps":
        options = {"prediction": "data", **options}
    return replace(FAST_DEFAULTS if default else Multistep(), **options)


def _is_default_sampler(method: str, order: int | None, lam: float | None, parameterization: str,
                        options: dict) -> bool:
    return (method == "gddim" and parameterization == "R" and order is None and not lam
            and options.get("prediction", "data") == "data")


def sampler_grid(process: LinearProcess, grid, method: str = "gddim", order: int | None = None,
                 lam: float | None = None, parameterization: str = "R", **options):
    """The grid a sampler runs on: `grid`, or with none named the process's default_grid for the default sampler and
    the paper's quadratic grid for any other (so order=2 is the paper's q = 2 on the paper's grid)."""
    if grid is not None:
        return grid
    return process.default_grid if _is_default_sampler(method, order, lam, parameterization, options) else "quadratic"


def _default_order(default_sampler: bool, order: int | None, n_steps: int) -> int:
    """order=None: DEFAULT_ORDER for the default sampler (lower when the run has too few steps), else the paper's 0."""
    if order is not None:
        return order
    return min(DEFAULT_ORDER, n_steps - 1) if default_sampler else 0


def check_sampler(process: LinearProcess, nfe: int, method: str = "gddim", order: int | None = None,
                  lam: float | None = None, parameterization: str = "R", grid=None, denoise: bool | None = None,
                  **options) -> tuple[int, float, bool, int]:
    """Refuse impossible sampler settings before any work; returns (order, λ, denoise, integrator steps)."""
    grid = resolve_grid(process, sampler_grid(process, grid, method, order, lam, parameterization, **options), nfe)
    fast = _multistep_options(method, order, lam, parameterization, options)
    lam = _default_lam(method, lam)
    if order is not None:  # checked before the NFE, so that a bad order is named as such
        _check_options(process, method, order, lam, parameterization, fast)
    if method == "sscs" and lam != 1.0:
        raise SettingsError("SSCS integrates the reverse SDE (λ = 1); lam must be 1")
    if method == "sscs" and denoise is not None and denoise != process.denoise:
        raise SettingsError("SSCS always ends with CLD's denoising step; leave denoise unset")
    if fast.output != "eps" and denoise:
        raise SettingsError(f"the denoising step takes an ε-model; a model with output={fast.output!r} ends with "
                            "final_step='data' or at t_end: leave denoise unset or False")
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
    if not (grid is None or isinstance(grid, str)) and len(grid) - 1 != n_steps:
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


def standard_normal(like: torch.Tensor, generator: torch.Generator | SampleNoise | None) -> torch.Tensor:
    """Noise shaped like `like`, drawn in float64 and cast to its dtype: one seed gives the same draws whatever the
    state's precision (torch draws float32 and float64 from different streams), as prior_sample does.
    A SampleNoise draws each sample's row from that sample's own generator."""
    if isinstance(generator, SampleNoise):
        return generator.normal(like)
    return torch.randn(like.shape, generator=generator, dtype=torch.float64, device=like.device).to(like.dtype)


def run_recursion(process: LinearProcess, eps_fn: EpsFn, u: torch.Tensor, rec: Recursion,
                  generator: torch.Generator | None = None, progress: bool = False,
                  call: ModelCall = ModelCall()) -> torch.Tensor:
    """Apply a recursion to the state u (pixel layout) in u's dtype; returns the final state.

    The loop never waits for the device: a NaN or inf from the model is found there and reported after the loop,
    or every call.check_every calls (SamplerError naming the first bad step)."""
    process.check_state(u, "u_T")
    model = CheckedModel(process, eps_fn, call)
    with model.at_times(rec.times, u):
        y = run_steps(process.to_basis(u), model, Stepper(process, rec, u, standard_normal), generator, progress)
    model.report()
    return process.from_basis(y)


def sample(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, method: str = "gddim",
           order: int | None = None, lam: float | None = None, parameterization: str = "R", grid=None,
           t_start: float | None = None, t_end: float | None = None, denoise: bool | None = None,
           generator: torch.Generator | SampleNoise | None = None, progress: bool = False, return_state: bool = False,
           model_kwargs: dict | None = None, callback: Callback | None = None, compile: bool | str = False,
           autocast: str | None = None, check_every: int = 0, **options) -> torch.Tensor:
    """Sample from u_T with `nfe` network calls; returns data x (B, C, H, W), or the whole state.

    method: "gddim" (order q in 0..3, lam λ in [0, 1] (λ > 0 with q > 0 needs prediction="data"),
    parameterization "R" or "L"), "euler" (probability-flow Euler), "em" (Euler-Maruyama on the λ-family,
    λ = 1 by default), "ancestral" (the posterior step, = gddim at λ = 1), "sscs" (CLD only).
    grid: None (the default sampler: the process's default_grid, "angle" for VP, "blend" for CLD and BDM; any
    other sampler: "quadratic"), "quadratic" (κ = 2, the paper's), "uniform", "logsnr", "karras" (uniform in
    σ^{1/7}, σ = e^{-λ/2}), "angle" (uniform in arctan(e^{-(λ - c)/2}), densest at λ = c = -0.5), "blend" (each
    log-SNR halfway between the quadratic and the angle grid's), "tuned" (tuned on exact scores, shipped with gddim), the path of a grid file tuned to this model (gddim tune-grid) or an
    explicit decreasing sequence of times.
    generator: the stochastic samplers' noise; a gddim.noise.SampleNoise draws each sample's from its own stream.
    options (method="gddim", FAST.md): prediction "eps" | "data", corrector True | False, interpolation
    "t" | "sqrt_t" | "logsnr", lower_order_final True | False, final_step "integrate" | "data"; see `Multistep`.
    The default (no order, no λ): gDDIM of order DEFAULT_ORDER (2; lower when nfe leaves too few steps) with
    FAST_DEFAULTS (data prediction, the corrector, lower order at the end) on the process's default_grid, chosen by
    measurement. Naming an order or λ gives the paper's gDDIM of that order or λ on the quadratic grid, which the
    options extend (e.g. order=2,
    prediction="data", corrector=True, lower_order_final=True, grid=process.default_grid is the default
    spelled out).
    The model: model_kwargs (conditioning) go to every call as eps_fn(u, t, **model_kwargs); callback(step, t,
    state, data_prediction) follows every call; compile and autocast ("bf16", "fp16") run the model compiled or
    in half precision while the state keeps u_T's dtype; NaN or inf from the model is reported after the loop, or
    every check_every calls (see gddim.loop.ModelCall).
    """
    grid = resolve_grid(process, sampler_grid(process, grid, method, order, lam, parameterization, **options), nfe)
    call = ModelCall(model_kwargs or {}, callback, compile, autocast, check_every)
    if method == "sscs":
        check_sampler(process, nfe, method, order, lam, parameterization, grid, denoise, **options)
        u = sscs(process, eps_fn, u_T, nfe, grid, t_start, t_end, generator, progress, call)
    else:
        rec = plan(process, nfe, method, order, lam, parameterization, grid, t_start, t_end, denoise, **options)
        u = run_recursion(process, eps_fn, u_T, rec, generator, progress, call)
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


def sscs(process: CLD, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, grid=None, t_start=None, t_end=None,
         generator: torch.Generator | None = None, progress: bool = False, call: ModelCall = ModelCall()) -> torch.Tensor:
    """Symmetric splitting CLD sampler (MATH §5.2): A(h/2) S(h) A(h/2) per step, then the denoising step."""
    process.check_state(u_T, "u_T")
    grid = sampler_grid(process, grid, "sscs")
    n_steps = _steps(process, nfe, grid, process.denoise)
    ts = time_grid(process, n_steps, grid, t_start, t_end)
    mids, split = 0.5 * (ts[:-1] + ts[1:]), _SplitCoefficients(process, ts, u_T)
    denoise = Stepper(process, coefficients.denoising_step(process, ts[-1]), u_T, standard_normal)
    model = CheckedModel(process, eps_fn, call)
    y = process.to_basis(u_T)
    with model.at_times(np.append(mids, denoise.times), u_T):
        for i in tqdm(range(n_steps), disable=not progress, desc="sampling", leave=False):
            y = split.linear(y, 2 * i, generator)
            # score part: dv = 2Γβ [s_v + M⁻¹ v] dτ' with s = -R⁻ᵀ ε, over the whole step
            score_v = -blocks.apply(split.score[i], model(y, float(mids[i]), i))[:, 1]
            y = torch.stack([y[:, 0], y[:, 1] + split.kick[i] * (score_v + process.m_inv * y[:, 1])], dim=1)
            y = split.linear(y, 2 * i + 1, generator)
        y = run_steps(y, model, denoise, generator, first_step=n_steps)
    model.report()
    return process.from_basis(y)


class _SplitCoefficients:
    """SSCS's per-step maps on the state's device, made before the loop: the half steps' mean maps and noise roots
    (half step 2i before step i's model call, 2i+1 after it), the score map -R⁻ᵀ and the kick 2Γβ(t - s)."""

    def __init__(self, process: CLD, ts: np.ndarray, like: torch.Tensor):
        mids = 0.5 * (ts[:-1] + ts[1:])
        ends = np.stack([ts[:-1], mids, mids, ts[1:]], axis=1).reshape(-1, 2)  # (2n, 2): each half step's (t, s)
        halves = [_sscs_half_step(process, float(process.B(t)[0] - process.B(s)[0])) for t, s in ends]
        self.mean = process.blocks(np.stack([mean[None] for mean, _ in halves]), like)
        self.root = process.blocks(np.stack([blocks.psd_sqrt(cov[None]) for _, cov in halves]), like)
        self.score = process.blocks(blocks.transpose(np.linalg.inv(process.R(mids))), like)
        self.kick = (2 * process.Gamma * process.beta(mids) * (ts[:-1] - ts[1:])).tolist()

    def linear(self, y: torch.Tensor, half: int, generator) -> torch.Tensor:
        y = blocks.apply(self.mean[half], y)
        return y + blocks.apply(self.root[half], standard_normal(y, generator))


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
        drift = process.blocks(process.eps_drift(t)[0], y)
        return (blocks.apply(f, y) + blocks.apply(drift, model(y, t, model.calls))).ravel().numpy()

    sol = solve_ivp(rhs, (t_start, t_end), y0.ravel().numpy(), method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE failed: {sol.message}")
    states = torch.from_numpy(sol.y.T if t_eval is not None else sol.y[:, -1:].T)
    return process.from_basis(states.reshape(-1, *y0.shape[1:])).reshape(len(states), *u_T.shape)

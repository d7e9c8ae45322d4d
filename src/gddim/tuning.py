"""Grids tuned to a model (FAST §5): a shortest path through the model's own accurate trajectories. No data needed.

From B prior samples u_T the probability-flow ODE is solved in float64 (DOP853 at rtol, TEACHER_RTOL by default)
and its states are kept at K candidate times, dense near t_end; the model is then called once per candidate on
those states. The cost of the edge a → b (t_a > t_b) is the RMS over the batch and every state dimension of

    one deterministic gDDIM q = 0 step   Ψ(t_b, t_a) u_a + (R_b - Ψ(t_b, t_a) R_a) ε(u_a, t_a)   minus   u_b,

closed-form coefficients for all K(K-1)/2 pairs at once. The shortest path of N steps is the path of exactly N
edges from the first to the last candidate with the least summed cost, found by dynamic programming in O(N K²).
Cost: the ODE solve's model calls (a few hundred, each on the batch of B) plus K calls; StepCosts records both.

The one-step cost prices each step alone, but multistep samplers also pay for uneven neighbouring steps: the
path's steps jump between one and two candidate spacings, and at NFE ≥ 15 that jitter can cost a multistep
sampler 10-1000x its error on the quadratic grid. So `tune` also smooths the path (each log-SNR step replaced by
the geometric mean of its neighbours') and runs the sampler itself on the same u_T through the path, its
smoothed forms and the quadratic, uniform, angle and blend grids, and keeps the grid whose end state is nearest the teacher's:
N model calls per candidate grid, and never worse than those named grids on the tuning batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import blocks
from .errors import SettingsError
from .grids import steps_for_nfe, time_grid
from .metrics import rms_error
from .processes import LinearProcess
from .sampling import EpsFn, host_model, probability_flow, sample
from .spec import SamplerSpec

STEP_SAMPLER = SamplerSpec(order=0)  # the sampler whose one-step error prices a step (step_costs_of_path)
CANDIDATES = 80
CANDIDATE_GRID = "logsnr"
# far below the local errors of any grid worth tuning (≥ 1e-3 at NFE ≤ 50); a float32 network's round-off makes
# DOP853 crawl below ~1e-6 (a tiny digits CLD model: 4261 calls at 1e-7)
TEACHER_RTOL = 1e-5
CHUNK_ELEMENTS = 2**24  # bounds the memory of one batch of candidate steps to ~128 MB of float64
SMOOTHING_WINDOWS = (3, 5)  # steps averaged (geometrically, in log-SNR) by the smoothed shortest paths
SELECTION_GRIDS = ("quadratic", "uniform", "angle", "blend")  # named grids that also compete, so tuning never loses to them
SHORTEST_PATH = "shortest path"


@dataclass(frozen=True)
class StepCosts:
    """The candidate times, the cost of every step between them, the teacher's end state and what they cost."""

    times: np.ndarray  # (K,) decreasing candidate times
    costs: np.ndarray  # (K, K): costs[a, b] for the step times[a] -> times[b], inf unless a < b
    teacher_end: torch.Tensor  # the accurate ODE's state at times[-1] from the prior samples, float64
    batch: int  # prior samples B
    model_calls: int  # calls of the model, each on the whole batch
    seconds: float

    def grid(self, n_steps: int) -> np.ndarray:
        """The best grid of n_steps steps from times[0] to times[-1] (decreasing times)."""
        return self.times[shortest_path(self.costs, n_steps)]

    def path_cost(self, n_steps: int) -> float:
        """The summed step cost of grid(n_steps)."""
        path = shortest_path(self.costs, n_steps)
        return float(self.costs[path[:-1], path[1:]].sum())


def shortest_path(costs: np.ndarray, n_edges: int) -> np.ndarray:
    """Node indices 0 = i_0 < ... < i_n = K-1 of the path of exactly n_edges edges with the least summed cost."""
    k = len(costs)
    if not 1 <= n_edges <= k - 1:
        raise SettingsError(f"a path of {n_edges} steps through {k} candidate times needs 1 <= steps <= {k - 1}; "
                         f"use at least {n_edges + 1} candidates")
    best = np.full(k, np.inf)
    best[0] = 0.0
    parents = np.empty((n_edges, k), dtype=np.int64)
    for n in range(n_edges):
        total = best[:, None] + costs  # total[a, b]: best n-edge cost to a, then the edge a -> b
        parents[n] = np.argmin(total, axis=0)
        best = total[parents[n], np.arange(k)]
    path = [k - 1]
    for n in reversed(range(n_edges)):
        path.append(parents[n][path[-1]])
    return np.array(path[::-1])


def candidate_times(process: LinearProcess, count: int = CANDIDATES, t_start: float | None = None,
                    t_end: float | None = None, grid: str = CANDIDATE_GRID) -> np.ndarray:
    """`count` decreasing times from t_start to t_end: a fine grid (uniform in log-SNR: dense near t_end)."""
    if count < 2:
        raise SettingsError(f"need at least 2 candidate times, got {count}")
    return time_grid(process, count - 1, grid, t_start, t_end)


def _basis_stack(process: LinearProcess, states: torch.Tensor) -> torch.Tensor:
    """(K, B, k*C, H, W) states -> (K, k, B*C, H, W) in the basis: the batch folded into the channels."""
    n, b = states.shape[:2]
    y = process.to_basis(states.flatten(0, 1))
    return y.reshape(n, b, *y.shape[1:]).transpose(1, 2).flatten(2, 3)


def step_costs_of_path(process: LinearProcess, times: np.ndarray, states: torch.Tensor, eps: torch.Tensor) -> np.ndarray:
    """costs[a, b] = RMS of (one gDDIM q = 0 step from states[a] at times[a] to times[b]) - states[b]; inf unless a < b.

    states and eps: (K, B, k*C, H, W) float64, eps in R-coordinates (the network's output).
    """
    k_count = len(times)
    y, e = _basis_stack(process, states), _basis_stack(process, eps)
    rt = process.R(times)
    costs = np.full((k_count, k_count), np.inf)
    per_target = process.k * y[0].numel()
    chunk = max(1, CHUNK_ELEMENTS // per_target)
    for a in range(k_count - 1):
        for start in range(a + 1, k_count, chunk):
            b = np.arange(start, min(start + chunk, k_count))
            psi = process.psi(times[b], np.full(len(b), times[a]))
            step = blocks.apply(process.blocks(psi, y), y[a][None]) \
                + blocks.apply(process.blocks(rt[b] - psi @ rt[a], y), e[a][None])
            costs[a, b] = torch.sqrt(torch.mean((step - y[b]) ** 2, dim=tuple(range(1, y.ndim)))).numpy()
    return costs


def model_step_costs(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, candidates: int = CANDIDATES,
                     t_start: float | None = None, t_end: float | None = None, rtol: float = TEACHER_RTOL,
                     progress: bool = False) -> StepCosts:
    """Solve the ODE from the prior samples u_T, call the model at every candidate time, price every step."""
    began = time.perf_counter()
    times = candidate_times(process, candidates, t_start, t_end)
    span = times[0] - times[-1]
    calls = 0
    with tqdm(total=100, disable=not progress, desc="teacher ODE (% of time)", leave=False) as bar:
        def counting(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            bar.update(max(0, int(100 * (times[0] - float(t[0])) / span) - bar.n))
            return eps_fn(u, t)

        states = probability_flow(process, counting, u_T, times[0], times[-1], t_eval=times, rtol=rtol, atol=rtol)
    model = host_model(process, eps_fn, u_T.device)
    eps = torch.stack([process.from_basis(model(process.to_basis(states[i]), float(times[i]), i))
                       for i in tqdm(range(len(times)), disable=not progress, desc="model at candidates", leave=False)])
    costs = step_costs_of_path(process, times, states, eps)
    return StepCosts(times, costs, states[-1], len(u_T), calls + model.calls, time.perf_counter() - began)


def tuned_steps(process: LinearProcess, nfe: int, candidates: int, denoise: bool | None = None) -> int:
    """The integrator steps of `nfe`, refused before any work when the candidates cannot hold them."""
    n_steps = steps_for_nfe(process, nfe, denoise)
    if n_steps > candidates - 1:
        raise SettingsError(f"nfe={nfe} needs {n_steps} steps, more than {candidates} candidate times allow; "
                         f"use candidates >= {n_steps + 1}")
    return n_steps


def smooth_grid(process: LinearProcess, times: np.ndarray, window: int) -> np.ndarray:
    """times with each log-SNR step replaced by the geometric mean of the `window` steps around it (ends kept).

    The steps are rescaled to span the same log-SNR, so a grid uniform in log-SNR is left as it is.
    """
    if not (isinstance(window, int) and window >= 1 and window % 2 == 1):
        raise SettingsError(f"window must be an odd number of steps, 1 or more (e.g. 3), got {window!r}")
    log_snr = process.log_snr(np.asarray(times, dtype=np.float64))
    log_steps = np.log(np.diff(log_snr))
    padded = np.pad(log_steps, window // 2, mode="edge")
    steps = np.exp(np.convolve(padded, np.full(window, 1.0 / window), mode="valid"))
    targets = log_snr[0] + np.concatenate([[0.0], np.cumsum(steps * (log_snr[-1] - log_snr[0]) / steps.sum())])
    smoothed = process.time_of_log_snr(targets, times[-1], times[0])
    smoothed[0], smoothed[-1] = times[0], times[-1]  # exact endpoints despite the inverse's round-off
    return smoothed


def candidate_grids(process: LinearProcess, costs: StepCosts, n_steps: int) -> dict[str, np.ndarray]:
    """The grids `tune` chooses among: the shortest path, its smoothed forms and SELECTION_GRIDS, all of n_steps."""
    path = costs.grid(n_steps)
    grids = {SHORTEST_PATH: path}
    grids |= {f"{SHORTEST_PATH} smoothed over {w} steps": smooth_grid(process, path, w)
              for w in SMOOTHING_WINDOWS if w <= n_steps}
    grids |= {name: time_grid(process, n_steps, name, costs.times[0], costs.times[-1]) for name in SELECTION_GRIDS}
    return grids


@dataclass(frozen=True)
class TunedGrid:
    """The chosen grid, its name among the candidates and each candidate's end error on the tuning batch."""

    times: np.ndarray
    chosen: str
    end_errors: dict[str, float]  # RMS gap of the sampler's end state to the teacher's, per candidate grid
    sampler: str  # the label of the sampler that judged the candidates
    model_calls: int  # the teacher's, the candidates' and the judging runs'
    seconds: float


def select_grid(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, costs: StepCosts, n_steps: int,
                sampler: SamplerSpec = SamplerSpec()) -> TunedGrid:
    """The candidate grid on which `sampler` ends nearest the teacher from the same prior samples u_T."""
    began = time.perf_counter()
    grids = candidate_grids(process, costs, n_steps)
    errors = {}
    for name, times in grids.items():
        with torch.no_grad():
            end = sample(process, eps_fn, u_T, n_steps, grid=times, denoise=False, return_state=True,
                         **sampler.options())
        errors[name] = rms_error(end, costs.teacher_end)
    chosen = min(errors, key=errors.get)
    return TunedGrid(grids[chosen], chosen, errors, sampler.label, costs.model_calls + len(grids) * n_steps,
                     costs.seconds + time.perf_counter() - began)


def tune(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, candidates: int = CANDIDATES,
         denoise: bool | None = None, t_start: float | None = None, t_end: float | None = None,
         rtol: float = TEACHER_RTOL, sampler: SamplerSpec | str = SamplerSpec(), progress: bool = False) -> TunedGrid:
    """The grid (decreasing times, t_start .. t_end) of the steps that `nfe` buys, tuned to eps_fn from prior samples
    u_T for `sampler` (the default sampler unless given), with how it was chosen (module doc).

    Pass its times as sample(..., nfe, grid=times), or store them with gddim.grid_files (gddim tune-grid does both).
    """
    sampler = SamplerSpec.parse(sampler) if isinstance(sampler, str) else sampler
    if not isinstance(sampler, SamplerSpec):
        raise SettingsError(f"sampler must be a gddim.spec.SamplerSpec or its text (e.g. 'gddim:q=2'), got {sampler!r}")
    n_steps = tuned_steps(process, nfe, candidates, denoise)
    costs = model_step_costs(process, eps_fn, u_T, candidates, t_start, t_end, rtol, progress)
    return select_grid(process, eps_fn, u_T, costs, n_steps, sampler)


def tune_grid(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, **options) -> np.ndarray:
    """tune(...).times: the tuned grid alone."""
    return tune(process, eps_fn, u_T, nfe, **options).times

"""gDDIM beside another library's samplers on the exact-score benchmark (BENCHMARKS §1, "peers").

A peer family (e.g. gddim.bench.diffusers_vp.DiffusersVP: diffusers' schedulers on VP) is any object with the
members of `PeerFamily`: its process, its (peer, setting) pairs, how it runs one of them with the exact ε and
which noise levels that run assumed. `benchmark` runs the family's peers and the gDDIM variants from one batch of
start noise and measures each run against the same reference:

Reference (path error): the probability-flow ODE from u_T at t_start to the run's own landing time. A setting whose
first call sits below t_start still starts from u_T, as a user's does, so its start mismatch counts in its error.
The landing differs from t_end by rounding (a continuation of the t_end solve reaches it) or is t = 0, where the
ODE ends on the posterior mean at t_end (with an exact score of separated points the posterior is one-hot there;
`reference.t0_check` measures it). Records also carry the error against the reference at t_end. The summary ranks
only runs landing at t_end (as gDDIM does): a run landing at t = 0 ends on a training point, so its path error only
says whether it is the reference's point.

gDDIM runs the `GddimVariant`s of GDDIM_VARIANTS: a sampler spec (gddim.spec) on a grid, where grid "trailing"
means the family's own trailing call and landing times and grid "tuned to the model" the grid gddim.tuning finds
for the same exact ε from TUNING_BATCH other prior samples (seed + 1), as `gddim tune-grid` does for a network.
A record names its sampler in "sampler" (gDDIM: the canonical spec; peers: the peer's name) and its grid or
spacing in "setting"; (sampler, setting) is its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from ..errors import SettingsError
from ..exact import exact_eps
from ..grids import steps_for_nfe, time_grid
from ..processes import VP, LinearProcess
from ..sampling import EpsFn, reference_ode, sample
from ..spec import SamplerSpec
from ..tuning import StepCosts, model_step_costs, select_grid
from .records import CountingEps, data_error, machine_info, median_sample_error, reference_solution, rms_error

NFES = (5, 10, 15, 20, 50)
ERRORS = ("path_error", "path_error_vs_t_end_reference", "median_sample_path_error", "data_error")
SUMMARY_METRICS = ("path_error", "median_sample_path_error", "data_error")
SAME_END = 1e-6  # a landing within this of t_end counts as t_end (float32 ᾱ_0 lands 2.2e-7 above it)
SHARED_GRID = "trailing"  # gDDIM on the peers' own trailing times
TUNED_GRID = "tuned to the model"  # gDDIM on the grid gddim.tuning finds for the benchmark's exact ε
TUNING_BATCH, TUNING_CANDIDATES, TUNING_RTOL = 128, 120, 1e-7  # exact float64 scores allow a tight teacher


@dataclass(frozen=True)
class GddimVariant:
    """One gDDIM run of the benchmark: a sampler spec on a grid (SHARED_GRID: the peers' trailing times)."""

    spec: SamplerSpec
    grid: str = "quadratic"

    def key(self) -> tuple[str, str]:
        return self.spec.label, self.grid


# the default sampler (no order named: q = 2, data form, corrector) and the paper's gDDIM of each order, on each grid
GDDIM_VARIANTS = tuple(GddimVariant(SamplerSpec(), grid)
                       for grid in (SHARED_GRID, "quadratic", "angle", "blend", TUNED_GRID)) + tuple(
    GddimVariant(SamplerSpec(order=q), grid) for grid in (SHARED_GRID, "quadratic", "logsnr") for q in range(4))
GDDIM_DEFAULT = GddimVariant(SamplerSpec(), VP.default_grid)  # what gddim.sample does on VP with no option


@dataclass
class PeerRun:
    x: torch.Tensor  # final state
    times: np.ndarray  # time of the level each model call assumes, then of the landing
    timestep_times: np.ndarray  # time of the level at each call's integer timestep (what a network would be told)
    calls: int


class PeerFamily(Protocol):
    """What `benchmark` needs of a family of peers on one process."""

    library: str  # the "family" field of the peers' records, e.g. "diffusers"
    process: LinearProcess

    def settings(self) -> list[tuple[str, str]]: ...  # (peer, setting) pairs to run

    def run(self, peer: str, setting: str, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int) -> PeerRun: ...

    def shared_times(self, nfe: int) -> np.ndarray: ...  # the trailing peers' call and landing times

    def levels(self, times: np.ndarray) -> dict: ...  # the noise levels of a run's times, for its record

    def gaps(self, run: PeerRun, shared: np.ndarray) -> dict: ...  # a peer's levels against the shared grid

    def data_prediction(self, eps_fn: EpsFn, x: torch.Tensor, t: float) -> torch.Tensor: ...  # E[x_0 | x_t]

    def description(self) -> dict: ...  # the family's settings, stored with the results


class References:
    """The probability-flow ODE from u_T at t_start to any landing time, continued from one checked solve to t_end."""

    def __init__(self, family: PeerFamily, eps_fn: EpsFn, u_T: torch.Tensor, rtol: float):
        self.family, self.process, self.eps_fn, self.rtol = family, family.process, eps_fn, rtol
        self.x_end, self.info = reference_solution(self.process, eps_fn, u_T, rtol)
        self.cache = {float(self.process.t_end): self.x_end}
        self.info["t0_check"] = {"rms_posterior_mean_t_end_vs_1e-5": rms_error(self.at(0.0), self._x0_hat(1e-5))}

    def at(self, t: float) -> torch.Tensor:
        t = float(t)
        if t not in self.cache:
            self.cache[t] = self._x0_hat(self.process.t_end) if t == 0.0 else self._continue(t)
        return self.cache[t]

    def _continue(self, t: float) -> torch.Tensor:
        return reference_ode(self.process, self.eps_fn, self.x_end, t_start=self.process.t_end, t_end=t,
                             rtol=self.rtol, atol=self.rtol)

    def _x0_hat(self, t: float) -> torch.Tensor:
        """Posterior mean E[x_0 | x_t] at the reference state at t: where the ODE ends at t = 0 (module doc)."""
        x = self.x_end if t == self.process.t_end else self._continue(t)
        return self.family.data_prediction(self.eps_fn, x, t)


def landing(process: LinearProcess, times: np.ndarray) -> dict:
    """Where a run's calls start and end and where it lands, against the process's t_end."""
    return {"t_first_call": float(times[0]), "t_last_call": float(times[-2]), "t_final": float(times[-1]),
            "t_final_minus_t_end": float(times[-1] - process.t_end),
            "lands_at_t_end": bool(abs(times[-1] - process.t_end) <= SAME_END)}


def run_gddim(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, nfe: int, variant: GddimVariant,
              own: dict[str, np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
    """One gDDIM variant; returns x and the times it used. own: the times of this NFE's SHARED_GRID (and TUNED_GRID)."""
    if variant.grid in own:
        grid, times = own[variant.grid], own[variant.grid]
    else:
        grid, times = variant.grid, time_grid(process, steps_for_nfe(process, nfe), variant.grid)
    return sample(process, eps_fn, u_T, nfe, grid=grid, **variant.spec.options()), times


@dataclass
class _Measure:
    """Measures runs against the references and keeps their records."""

    family: PeerFamily
    refs: References
    data: torch.Tensor
    eps_fn: CountingEps
    progress: Callable[[str], None]

    def __post_init__(self):
        self.records: list[dict] = []

    def record(self, sampler: str, family: str, setting: str, nfe: int, x: torch.Tensor, times: np.ndarray,
               extra: dict) -> None:
        finite = bool(torch.isfinite(x).all())  # a failed run keeps its record, with errors None
        reference = self.refs.at(times[-1])
        errors = {"path_error": rms_error(x, reference),
                  "path_error_vs_t_end_reference": rms_error(x, self.refs.x_end),
                  "median_sample_path_error": median_sample_error(x, reference),
                  "data_error": data_error(x, self.data)} if finite else dict.fromkeys(ERRORS)
        self.records.append({"sampler": sampler, "family": family, "setting": setting, "nfe": nfe,
                             "model_calls": self.eps_fn.reset(), "finite_output": finite, **errors,
                             **landing(self.family.process, times), **self.family.levels(times), **extra})
        shown = {k: "non-finite" if v is None else f"{v:.3e}" for k, v in errors.items()}
        self.progress(f"{sampler:>18} {setting:>11} nfe {nfe:3d}: path {shown['path_error']}  data {shown['data_error']}")


def benchmark(family: PeerFamily, data: torch.Tensor, nfes=NFES, batch: int = 256, seed: int = 0,
              variants=GDDIM_VARIANTS, default: GddimVariant = GDDIM_DEFAULT, rtol: float = 1e-10,
              progress=print) -> dict:
    """Path and data errors of the gDDIM variants and every peer setting from one batch of start noise (JSON-ready)."""
    if default not in variants:
        raise SettingsError(f"default {default.key()} is not among the variants {[v.key() for v in variants]}")
    process = family.process
    exact = exact_eps(process, data.double())
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    refs = References(family, exact, u_T, rtol)
    refs.info["data_error"] = data_error(refs.x_end, data)
    progress(f"reference ODE: {refs.info[f'rtol={rtol:g}']['model_calls']} calls, halving the tolerance moves it by "
             f"{refs.info['rms_difference_rtol_vs_half']:.2e}")
    measure = _Measure(family, refs, data, CountingEps(exact), progress)
    teacher = _tuning_teacher(process, exact, u_T, seed) if any(v.grid == TUNED_GRID for v in variants) else None
    for nfe in nfes:
        own = {SHARED_GRID: family.shared_times(nfe)}
        if teacher is not None:
            tuned = select_grid(process, exact, teacher[0], teacher[1], steps_for_nfe(process, nfe))
            own[TUNED_GRID] = tuned.times
            progress(f"tuned grid for nfe {nfe}: {tuned.chosen}")
        for variant in variants:
            x, times = run_gddim(process, measure.eps_fn, u_T, nfe, variant, own)
            extra = {"tuned_grid_chosen": tuned.chosen} if variant.grid == TUNED_GRID else {}
            measure.record(variant.spec.label, "gddim", variant.grid, nfe, x, times, extra)
        for name, setting in family.settings():
            run = family.run(name, setting, measure.eps_fn, u_T, nfe)
            measure.record(name, family.library, setting, nfe, run.x, run.times, family.gaps(run, own[SHARED_GRID]))
    refs.info["landings"] = sorted(refs.cache)
    default_entry = {"sampler": default.spec.label, "setting": default.grid}
    return {"reference": refs.info, "records": measure.records, "summary": summarize(measure.records, default),
            "settings": {"batch": batch, "seed": seed, "nfes": list(nfes), "gddim_default": default_entry,
                         "process": process.config(), "data_points": len(data), "data_shape": list(data.shape[1:]),
                         **family.description()},
            "machine": machine_info(device="cpu", **family.description().get("versions", {}))}


def _tuning_teacher(process: LinearProcess, exact: EpsFn, u_T: torch.Tensor, seed: int) -> tuple[torch.Tensor, StepCosts]:
    """The prior samples the tuned grids are found from (seed + 1: none of the measured ones) and their step costs."""
    u_tune = process.prior_sample((TUNING_BATCH, *u_T.shape[1:]), generator=torch.Generator().manual_seed(seed + 1),
                                  dtype=torch.float64)
    return u_tune, model_step_costs(process, exact, u_tune, TUNING_CANDIDATES, rtol=TUNING_RTOL)


def _best(rows: list[dict], metric: str) -> dict | None:
    """The row with the smallest error among runs that returned finite samples."""
    rows = [r for r in rows if r[metric] is not None]
    return min(rows, key=lambda r: r[metric]) if rows else None


def _entry(record: dict | None, metric: str) -> dict | None:
    if record is None:
        return None
    return {"sampler": record["sampler"], "setting": record["setting"], "error": record[metric]}


def _ratio(ours: dict | None, peer: dict | None, metric: str) -> float | None:
    return None if ours is None or peer is None else ours[metric] / peer[metric]


def _compare(pool: list[dict], metric: str, default: GddimVariant) -> dict:
    """Among runs landing at t_end: each peer's best, the best peer against gDDIM's default and best variant, and
    where the runs hold them, gDDIM on the grid tuned to the model and the same-levels comparison (trailing
    peers, gDDIM on the trailing grid)."""
    peers = [r for r in pool if r["family"] != "gddim"]
    ours = [r for r in pool if r["family"] == "gddim"]
    best_peer, best_ours = _best(peers, metric), _best(ours, metric)
    mine = next((r for r in ours if (r["sampler"], r["setting"]) == default.key() and r[metric] is not None), None)
    out = {"per_peer_best": {p: _entry(_best([r for r in peers if r["sampler"] == p], metric), metric)
                             for p in dict.fromkeys(r["sampler"] for r in peers)},
           "best_peer": _entry(best_peer, metric), "gddim_best": _entry(best_ours, metric),
           "ratio_best": _ratio(best_ours, best_peer, metric),
           "gddim_default": _entry(mine, metric), "ratio_default": _ratio(mine, best_peer, metric)}
    if any(r["setting"] == TUNED_GRID for r in ours):
        tuned = _best([r for r in ours if r["setting"] == TUNED_GRID], metric)
        out |= {"gddim_tuned": _entry(tuned, metric), "ratio_tuned": _ratio(tuned, best_peer, metric)}
    if any(r["setting"] == SHARED_GRID for r in pool):  # a family whose peers have no trailing levels has none
        same_peer = _best([r for r in peers if r["setting"] == SHARED_GRID], metric)
        same_ours = _best([r for r in ours if r["setting"] == SHARED_GRID], metric)
        out["same_levels"] = {"best_peer": _entry(same_peer, metric), "gddim_best": _entry(same_ours, metric),
                              "ratio": _ratio(same_ours, same_peer, metric)}
    return out


def summarize(records: list[dict], default: GddimVariant = GDDIM_DEFAULT) -> list[dict]:
    """Per NFE and metric, `_compare` of the runs landing at t_end; runs with non-finite output rank nowhere.

    Runs landing at t = 0 are listed apart: with an exact score of finite data they end on a training point, so
    their path error only says whether it is the reference's point.
    """
    out = []
    for nfe in sorted({r["nfe"] for r in records}):
        at = [r for r in records if r["nfe"] == nfe]
        row = {"nfe": nfe, "landing_t0": [{k: r[k] for k in ("sampler", "setting", "path_error",
                                                              "path_error_vs_t_end_reference", "data_error")}
                                          for r in at if r["t_final"] == 0.0]}
        for metric in (m for m in SUMMARY_METRICS if any(m in r for r in at)):  # older records lack the median
            row[metric] = _compare([r for r in at if r["lands_at_t_end"]], metric, default)
        out.append(row)
    return out

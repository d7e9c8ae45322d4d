"""diffusers' samplers beside gDDIM on the exact-score VP benchmark (BENCHMARKS §1, "peers").

Every peer is a diffusers scheduler driven through an ε-model adapter on the same VP process:

- the peers get `trained_betas` of N_TRAIN steps whose ᾱ_n equals the VP's ᾱ(τ_n) at times τ_n uniform from
  t_end (n = 0) to t_start (n = N_TRAIN - 1); N_TRAIN is a multiple of every NFE, so trailing timesteps are an
  exact stride;
- each peer runs at every `timestep_spacing` and, for DPM-Solver++ and UniPC, with Karras σ (diffusers builds
  the Karras ramp from the training σ_max to σ_min whatever the spacing, so it runs once per landing);
- every run lands on ᾱ_0 (t_end, like gDDIM): DDIM with set_alpha_to_one=False, DPM-Solver and UniPC with
  final_sigmas_type="sigma_min", DEIS by default; Karras runs also land on σ = 0 (t = 0, "karras-zero"), since
  their ramp already ends at σ_min and the σ_min landing makes their last step an identity;
- the adapter evaluates the exact ε at the time whose float64 ᾱ equals the noise level the peer's update
  assumes: its float32 σ_k (DPM-Solver, UniPC, DEIS) or its float32 ᾱ at the timestep (DDIM). diffusers would
  hand a network the rounded integer timestep instead; the gap between the two is recorded (Karras only).

Reference (path error): the probability-flow ODE from the same u_T at t_start = 1 to the sampler's own landing
time. A setting whose first call sits below t_start (leading spacing) still starts from u_T, as a user's does, so
its start mismatch counts in its error. The landing differs from t_end by float32 rounding (a continuation of the
t_end solve reaches it) or is t = 0, where the ODE ends on the posterior mean at t_end (with an exact score of
separated points the posterior is one-hot there; `reference.t0_check` measures it). Records also carry the error
against the reference at t_end. The summary ranks only runs landing at t_end (as gDDIM does): a run landing at
t = 0 ends on a training point, so its path error only says whether it is the reference's point.

gDDIM runs a list of variants (`GDDIM_VARIANTS`: dicts of `sampling.sample` keyword arguments with a "name";
grid "trailing" means the trailing peers' own call and landing times), one of them named as the default.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass

import diffusers
import numpy as np
import torch

from . import sampling
from .benchmark import CountingEps, data_error, machine_info, reference_solution, rms_error
from .diffusers import GDDIMScheduler, time_of_alpha_bar
from .exact import exact_eps
from .grids import time_grid
from .processes import VP

N_TRAIN = 3000  # divisible by 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000
T_MAX = 1.01  # float32 rounding puts the peers' first ᾱ a hair beyond t_start = 1
NFES = (5, 10, 15, 20, 50)
PEERS = ("ddim", "deis-2", "deis-3", "dpm++2m", "dpm++3m", "unipc-2", "unipc-3")
SPACINGS = ("trailing", "linspace", "leading")
KARRAS_PEERS = ("dpm++2m", "dpm++3m", "unipc-2", "unipc-3")
KARRAS_LANDINGS = {"karras": "sigma_min", "karras-zero": "zero"}  # setting -> final_sigmas_type
# the default sampler (no order named: q = 3, data form, corrector) and the paper's gDDIM of each order, on each grid
GDDIM_VARIANTS = tuple({"name": f"gddim-default-{grid}", "grid": grid} for grid in ("trailing", "quadratic")) + tuple(
    {"name": f"gddim-q{q}-{grid}", "order": q, "grid": grid} for grid in ("trailing", "quadratic", "logsnr") for q in range(4))
GDDIM_DEFAULT = "gddim-default-quadratic"
ERRORS = ("path_error", "path_error_vs_t_end_reference", "data_error")
SAME_END = 1e-6  # a landing within this of t_end counts as t_end (float32 ᾱ_0 lands 2.2e-7 above it)


def peer_betas(process: VP, n_train: int = N_TRAIN) -> np.ndarray:
    """β_n with Π_{i<=n}(1-β_i) = ᾱ(τ_n), τ_n uniform from t_end (n = 0) to t_start (n = n_train - 1)."""
    tau = process.t_end + np.arange(n_train) * (process.t_start - process.t_end) / (n_train - 1)
    log_ab = process.log_alpha_bar(tau)
    return -np.expm1(np.diff(log_ab, prepend=0.0))


def peer_settings(peers=PEERS) -> list[tuple[str, str]]:
    """(peer, setting) pairs: every spacing for every peer, and the Karras landings where a peer has Karras σ."""
    return [(name, s) for name in peers for s in SPACINGS + (tuple(KARRAS_LANDINGS) if name in KARRAS_PEERS else ())]


def make_peer(name: str, betas: np.ndarray, setting: str = "trailing"):
    """A diffusers scheduler by benchmark name and setting (a spacing, "karras" or "karras-zero"; module doc)."""
    if setting not in SPACINGS and setting not in KARRAS_LANDINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SPACINGS + tuple(KARRAS_LANDINGS)}")
    karras = setting in KARRAS_LANDINGS
    if karras and name not in KARRAS_PEERS:
        raise ValueError(f"{name} runs without Karras σ here; Karras settings are for {KARRAS_PEERS}")
    c = {"num_train_timesteps": len(betas), "trained_betas": betas.tolist(),
         "timestep_spacing": "trailing" if karras else setting}
    sigmas = {"use_karras_sigmas": karras, "final_sigmas_type": KARRAS_LANDINGS.get(setting, "sigma_min")}
    if name == "ddim":
        return diffusers.DDIMScheduler(**c, clip_sample=False, set_alpha_to_one=False)
    if name.startswith("deis-"):
        return diffusers.DEISMultistepScheduler(**c, solver_order=int(name[-1]))
    if name.startswith("dpm++"):
        return diffusers.DPMSolverMultistepScheduler(**c, **sigmas, algorithm_type="dpmsolver++",
                                                     solver_order=int(name[-2]))
    if name.startswith("unipc-"):
        return diffusers.UniPCMultistepScheduler(**c, **sigmas, solver_order=int(name[-1]))
    raise ValueError(f"unknown peer {name!r}; choose one of {PEERS}")


def peer_times(scheduler, process: VP) -> np.ndarray:
    """Time of the noise level each step's update assumes, then of the landing (after set_timesteps)."""
    if hasattr(scheduler, "sigmas"):  # DPM-Solver, UniPC, DEIS: σ_k in float32, σ = 0 is ᾱ = 1 (t = 0)
        alpha_bar = 1.0 / (1.0 + scheduler.sigmas.double().numpy() ** 2)
    else:  # DDIM: ᾱ at the timestep, then the final ᾱ
        ab = scheduler.alphas_cumprod.double().numpy()
        alpha_bar = np.append(ab[scheduler.timesteps.numpy()], float(scheduler.final_alpha_cumprod))
    # ᾱ = 1 is t = 0 exactly (bisection would stop a hair above it)
    return np.where(alpha_bar == 1.0, 0.0, time_of_alpha_bar(process, alpha_bar, T_MAX))


@dataclass
class PeerRun:
    x: torch.Tensor  # final state
    times: np.ndarray  # time of the level each model call assumes, then of the landing
    timestep_times: np.ndarray  # time of ᾱ at each call's integer timestep (what a network would be told)
    calls: int


def run_peer(scheduler, process: VP, eps_fn, u_T: torch.Tensor, nfe: int) -> PeerRun:
    """Sample with a diffusers scheduler; call k gets the exact ε at the time of the peer's own level k."""
    scheduler.set_timesteps(nfe)
    times = peer_times(scheduler, process)
    if len(times) != len(scheduler.timesteps) + 1:
        raise RuntimeError(f"{type(scheduler).__name__} has {len(times)} levels for {len(scheduler.timesteps)} steps")
    calls = []

    def model(x):
        t = float(times[len(calls)])
        calls.append(t)
        return eps_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))

    x = u_T * scheduler.init_noise_sigma
    for step in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, step)), step, x).prev_sample
    ab = scheduler.alphas_cumprod.double().numpy()[scheduler.timesteps.numpy()]
    return PeerRun(x, times, time_of_alpha_bar(process, ab, T_MAX), len(calls))


def gddim_grid(process: VP, nfe: int, grid: str, betas: np.ndarray) -> np.ndarray:
    """gDDIM's times: the trailing peers' call and landing times, or one of the engine's grids."""
    if grid != "trailing":
        return time_grid(process, nfe, grid)
    ddim = make_peer("ddim", betas)
    ddim.set_timesteps(nfe)
    return peer_times(ddim, process)


def _log_snr(process: VP, t) -> np.ndarray:
    return process.log_snr(np.asarray(t, dtype=np.float64))


def _levels(process: VP, times: np.ndarray) -> dict:
    ab = np.exp(process.log_alpha_bar(np.asarray(times, dtype=np.float64)))
    return {"t_first_call": float(times[0]), "t_last_call": float(times[-2]), "t_final": float(times[-1]),
            "alpha_bar_first_call": float(ab[0]), "alpha_bar_last_call": float(ab[-2]),
            "alpha_bar_final": float(ab[-1]), "t_final_minus_t_end": float(times[-1] - process.t_end),
            "lands_at_t_end": bool(abs(times[-1] - process.t_end) <= SAME_END)}


class References:
    """The probability-flow ODE from u_T at t_start to any landing time, continued from one checked solve to t_end."""

    def __init__(self, process: VP, eps_fn, u_T: torch.Tensor, rtol: float):
        self.process, self.eps_fn, self.rtol = process, eps_fn, rtol
        self.x_end, self.info = reference_solution(process, eps_fn, u_T, rtol)
        self.cache = {float(process.t_end): self.x_end}
        self.info["t0_check"] = {"rms_posterior_mean_t_end_vs_1e-5": rms_error(self.at(0.0), self._x0_hat(1e-5))}

    def at(self, t: float) -> torch.Tensor:
        t = float(t)
        if t not in self.cache:
            self.cache[t] = self._x0_hat(self.process.t_end) if t == 0.0 else self._continue(t)
        return self.cache[t]

    def _continue(self, t: float) -> torch.Tensor:
        return sampling.reference_ode(self.process, self.eps_fn, self.x_end, t_start=self.process.t_end, t_end=t,
                                      rtol=self.rtol, atol=self.rtol)

    def _x0_hat(self, t: float) -> torch.Tensor:
        """Posterior mean E[x_0 | x_t] at the reference state at t: where the ODE ends at t = 0 (module doc)."""
        x = self.x_end if t == self.process.t_end else self._continue(t)
        ab = float(np.exp(self.process.log_alpha_bar(t)[0]))
        eps = self.eps_fn(x, torch.full((len(x),), t, dtype=x.dtype))
        return (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)


def run_gddim(process: VP, eps_fn, u_T: torch.Tensor, nfe: int, variant: dict, shared: np.ndarray):
    """One gDDIM variant (sample() kwargs, grid "trailing" = the peers' times); returns x and the times it used."""
    kwargs = {k: v for k, v in variant.items() if k != "name"}
    grid = kwargs.get("grid", "quadratic")
    if isinstance(grid, str) and grid == "trailing":
        kwargs["grid"] = shared
    times = time_grid(process, nfe, kwargs.get("grid", "quadratic"), kwargs.get("t_start"), kwargs.get("t_end"))
    return sampling.sample(process, eps_fn, u_T, nfe, **kwargs), times


def benchmark(process: VP, data: torch.Tensor, nfes=NFES, batch: int = 256, seed: int = 0, peers=PEERS,
              variants=GDDIM_VARIANTS, default: str = GDDIM_DEFAULT, rtol: float = 1e-10, progress=print) -> dict:
    """Path and data errors of the gDDIM variants and every peer setting from one batch of start noise (JSON-ready)."""
    if default not in {v["name"] for v in variants}:
        raise ValueError(f"default {default!r} is not among the variants {[v['name'] for v in variants]}")
    exact = exact_eps(process, data.double())
    eps_fn = CountingEps(exact)
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    refs = References(process, exact, u_T, rtol)
    refs.info["data_error"] = data_error(refs.x_end, data)
    progress(f"reference ODE: {refs.info[f'rtol={rtol:g}']['model_calls']} calls, halving the tolerance moves it by "
             f"{refs.info['rms_difference_rtol_vs_half']:.2e}")
    betas = peer_betas(process)
    records = []

    def record(sampler: str, family: str, setting: str, nfe: int, x, times, extra: dict):
        finite = bool(torch.isfinite(x).all())  # a failed run keeps its record, with errors None
        errors = {"path_error": rms_error(x, refs.at(times[-1])),
                  "path_error_vs_t_end_reference": rms_error(x, refs.x_end),
                  "data_error": data_error(x, data)} if finite else dict.fromkeys(ERRORS)
        records.append({"sampler": sampler, "family": family, "setting": setting, "nfe": nfe,
                        "model_calls": eps_fn.reset(), "finite_output": finite, **errors, **_levels(process, times),
                        **extra})
        shown = {k: "non-finite" if v is None else f"{v:.3e}" for k, v in errors.items()}
        progress(f"{sampler:>18} {setting:>11} nfe {nfe:3d}: path {shown['path_error']}  data {shown['data_error']}")

    for nfe in nfes:
        shared = gddim_grid(process, nfe, "trailing", betas)
        for variant in variants:
            x, times = run_gddim(process, eps_fn, u_T, nfe, variant, shared)
            record(variant["name"], "gddim", str(variant.get("grid", "quadratic")), nfe, x, times,
                   {"kwargs": {k: v for k, v in variant.items() if k != "name"}})
        for name, setting in peer_settings(peers):
            run = run_peer(make_peer(name, betas, setting), process, eps_fn, u_T, nfe)
            record(name, "diffusers", setting, nfe, run.x, run.times, _gaps(process, run, shared))
    refs.info["landings"] = sorted(refs.cache)
    return {"reference": refs.info, "records": records, "summary": summarize(records, default),
            "settings": {"batch": batch, "seed": seed, "n_train_peers": N_TRAIN, "nfes": list(nfes),
                         "gddim_default": default, "process": process.config(), "data_points": len(data),
                         "data_shape": list(data.shape[1:]),
                         "peer_precision": "diffusers keeps ᾱ and σ in float32 and DPM-Solver steps in float32; "
                                           "gDDIM and the reference run in float64"},
            "machine": machine_info(device="cpu", diffusers=diffusers.__version__)}


def _gaps(process: VP, run: PeerRun, shared: np.ndarray) -> dict:
    """A peer's levels against gDDIM's trailing grid (calls only), and its σ_k against its integer timesteps."""
    calls = _log_snr(process, run.times[:-1])
    return {"max_log_snr_gap_calls_to_trailing_grid": float(np.abs(calls - _log_snr(process, shared[:-1])).max()),
            "max_time_gap_calls_to_trailing_grid": float(np.abs(run.times[:-1] - shared[:-1]).max()),
            "max_log_snr_gap_level_vs_timestep": float(np.abs(calls - _log_snr(process, run.timestep_times)).max()),
            "last_step_is_identity": bool(abs(run.times[-1] - run.times[-2]) <= 1e-12)}


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


def summarize(records: list[dict], default: str = GDDIM_DEFAULT) -> list[dict]:
    """Per NFE and metric, among runs landing at t_end: each peer's best setting; the best peer against gDDIM's
    default and best variant; the same-levels comparison (trailing peers, gDDIM on the trailing grid).

    Runs with non-finite output rank nowhere. Runs landing at t = 0 are listed apart: with an exact score of finite
    data they end on a training point, so their path error only says whether it is the reference's point.
    """
    out = []
    for nfe in sorted({r["nfe"] for r in records}):
        at = [r for r in records if r["nfe"] == nfe]
        row = {"nfe": nfe, "landing_t0": [{k: r[k] for k in ("sampler", "setting", "path_error",
                                                              "path_error_vs_t_end_reference", "data_error")}
                                          for r in at if r["t_final"] == 0.0]}
        for metric in ("path_error", "data_error"):
            pool = [r for r in at if r["lands_at_t_end"]]
            peers = [r for r in pool if r["family"] == "diffusers"]
            ours = [r for r in pool if r["family"] == "gddim"]
            best_peer, best_ours = _best(peers, metric), _best(ours, metric)
            mine = next((r for r in ours if r["sampler"] == default and r[metric] is not None), None)
            same_peer = _best([r for r in peers if r["setting"] == "trailing"], metric)
            same_ours = _best([r for r in ours if r["setting"] == "trailing"], metric)
            row[metric] = {
                "per_peer_best": {p: _entry(_best([r for r in peers if r["sampler"] == p], metric), metric)
                                  for p in dict.fromkeys(r["sampler"] for r in peers)},
                "best_peer": _entry(best_peer, metric), "gddim_best": _entry(best_ours, metric),
                "ratio_best": _ratio(best_ours, best_peer, metric),
                "gddim_default": _entry(mine, metric), "ratio_default": _ratio(mine, best_peer, metric),
                "same_levels": {"best_peer": _entry(same_peer, metric), "gddim_best": _entry(same_ours, metric),
                                "ratio": _ratio(same_ours, same_peer, metric)}}
        out.append(row)
    return out


def step_overhead(shape=(64, 3, 32, 32), steps: int = 50, repeats: int = 10, seed: int = 0) -> dict:
    """Median seconds per step() of GDDIMScheduler's variants beside DDIM, DDPM (it draws noise, as λ > 0 does),
    DPM-Solver++ and UniPC.

    The model output is a fixed random tensor, so only the scheduler's own work is timed; the schedulers take
    turns within each repeat so that load on the machine hits them alike.
    """
    g = torch.Generator().manual_seed(seed)
    x0, out = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    paper = {"predict_x0": False, "use_corrector": False, "lower_order_final": False}  # the paper's gDDIM, ε form
    makers = {
        "gddim default": lambda: GDDIMScheduler(),
        "gddim order 1": lambda: GDDIMScheduler(solver_order=1, **paper),
        "gddim order 3": lambda: GDDIMScheduler(solver_order=3, **paper),
        "gddim order 4": lambda: GDDIMScheduler(solver_order=4, **paper),
        "gddim data order 3": lambda: GDDIMScheduler(solver_order=3, **{**paper, "predict_x0": True}),
        "gddim data order 3 corrector": lambda: GDDIMScheduler(solver_order=3, predict_x0=True, use_corrector=True,
                                                               lower_order_final=False),
        "gddim data order 3 logsnr lower_order_final": lambda: GDDIMScheduler(
            solver_order=3, predict_x0=True, use_corrector=False, interpolation="logsnr", lower_order_final=True,
            final_sigmas_type="sigma_min"),
        "gddim data order 2 lam=0.5": lambda: GDDIMScheduler(solver_order=2, **{**paper, "predict_x0": True}, lam=0.5),
        "gddim lam=1": lambda: GDDIMScheduler(solver_order=1, **paper, lam=1.0),
        "ddim": lambda: diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False),
        "ddpm": lambda: diffusers.DDPMScheduler(timestep_spacing="trailing", clip_sample=False),
        "dpm++2m": lambda: diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing"),
        "unipc2": lambda: diffusers.UniPCMultistepScheduler(timestep_spacing="trailing"),
    }
    times = {name: [] for name in makers}
    setup = {name: [] for name in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            scheduler = make()
            draws = {"generator": g} if "generator" in inspect.signature(scheduler.step).parameters else {}
            t0 = time.perf_counter()
            scheduler.set_timesteps(steps)
            setup[name].append(time.perf_counter() - t0)
            x = x0
            for step in scheduler.timesteps:
                t0 = time.perf_counter()
                x = scheduler.step(out, step, x, **draws).prev_sample
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"shape": list(shape), "steps": steps, "repeats": repeats, "dtype": "float32",
            "median_step_seconds": med, "median_set_timesteps_seconds": {n: statistics.median(v) for n, v in setup.items()},
            "step_ratio_to_ddim": {name: m / med["ddim"] for name, m in med.items()}, "machine": machine_info(device="cpu", diffusers=diffusers.__version__)}

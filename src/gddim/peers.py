"""diffusers' samplers beside gDDIM on the exact-score VP benchmark (BENCHMARKS §1, "peers").

Every peer is a diffusers scheduler driven through an ε-model adapter on the same VP noise levels:

- the peers get `trained_betas` of N_TRAIN steps whose ᾱ_n equals the VP's ᾱ(τ_n) at times τ_n uniform from
  t_end (n = 0) to t_start (n = N_TRAIN - 1); diffusers stores them in float32, so the adapter calls the exact
  ε at the time whose float64 ᾱ equals the peer's own float32 ᾱ_n;
- `timestep_spacing="trailing"` makes the first model call at n = N_TRAIN - 1 (t_start), and the peers land on
  ᾱ_0 (t_end): DDIM with set_alpha_to_one=False, DPM-Solver and UniPC with final_sigmas_type="sigma_min",
  DEIS by default. N_TRAIN is a multiple of every NFE, so the trailing timesteps are an exact stride;
- gDDIM runs on the very times of the peers' model calls and landing (grid "trailing"), and also on its own
  grids from t_start to t_end.

Every record carries the noise levels it used (first and last model call, landing) and the largest log-SNR
gap between a peer's own levels and gDDIM's grid, so no mismatch is hidden.
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
from .exact import exact_eps
from .grids import time_grid
from .diffusers import GDDIMScheduler, time_of_alpha_bar
from .processes import VP

N_TRAIN = 3000  # divisible by 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000
T_MAX = 1.01  # float32 rounding puts the peers' first ᾱ a hair beyond t_start = 1
NFES = (5, 10, 15, 20, 50)
GDDIM_GRIDS = ("trailing", "quadratic", "logsnr")


def peer_betas(process: VP, n_train: int = N_TRAIN) -> np.ndarray:
    """β_n with Π_{i<=n}(1-β_i) = ᾱ(τ_n), τ_n uniform from t_end (n = 0) to t_start (n = n_train - 1)."""
    tau = process.t_end + np.arange(n_train) * (process.t_start - process.t_end) / (n_train - 1)
    log_ab = process.log_alpha_bar(tau)
    return -np.expm1(np.diff(log_ab, prepend=0.0))


def _common(betas: np.ndarray) -> dict:
    return {"num_train_timesteps": len(betas), "trained_betas": betas.tolist(), "timestep_spacing": "trailing"}


def make_peer(name: str, betas: np.ndarray):
    """A diffusers scheduler by benchmark name, configured to the shared noise levels (module doc)."""
    c = _common(betas)
    if name == "ddim":
        return diffusers.DDIMScheduler(**c, clip_sample=False, set_alpha_to_one=False)
    if name.startswith("deis-"):
        return diffusers.DEISMultistepScheduler(**c, solver_order=int(name[-1]))
    if name.startswith("dpm++"):
        return diffusers.DPMSolverMultistepScheduler(**c, algorithm_type="dpmsolver++", solver_order=int(name[-2]),
                                                     final_sigmas_type="sigma_min")
    if name.startswith("unipc-"):
        return diffusers.UniPCMultistepScheduler(**c, solver_order=int(name[-1]), final_sigmas_type="sigma_min")
    raise ValueError(f"unknown peer {name!r}; choose one of {PEERS}")


PEERS = ("ddim", "deis-2", "deis-3", "dpm++2m", "dpm++3m", "unipc-2", "unipc-3")


def landing_alpha_bar(scheduler) -> float:
    """The ᾱ a diffusers scheduler's last step lands on."""
    if hasattr(scheduler, "final_alpha_cumprod"):
        return float(scheduler.final_alpha_cumprod)
    sigma = float(scheduler.sigmas[-1])
    return 1.0 / (1.0 + sigma**2)


def _peer_levels(scheduler) -> np.ndarray:
    """log-SNR of each model call as the peer itself computes it (float32 ᾱ or float32 σ), then the landing."""
    if hasattr(scheduler, "sigmas") and len(scheduler.sigmas) == len(scheduler.timesteps) + 1:
        return -2 * np.log(scheduler.sigmas.double().numpy())
    ab = scheduler.alphas_cumprod.double().numpy()[scheduler.timesteps.numpy()]
    ab = np.append(ab, landing_alpha_bar(scheduler))
    return np.log(ab / (1 - ab))


@dataclass
class PeerRun:
    x: torch.Tensor  # final state
    times: np.ndarray  # continuous time of each model call, then of the landing
    peer_log_snr: np.ndarray  # the peer's own log-SNR at each call and at the landing
    calls: int


def run_peer(scheduler, process: VP, eps_fn, u_T: torch.Tensor, nfe: int) -> PeerRun:
    """Sample with a diffusers scheduler; the adapter maps its integer timestep n to the time of its ᾱ_n."""
    scheduler.set_timesteps(nfe)
    t_of_step = time_of_alpha_bar(process, scheduler.alphas_cumprod.double().numpy(), T_MAX)
    calls = []

    def model(x, step):
        t = float(t_of_step[int(step)])
        calls.append(t)
        return eps_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))

    x = u_T * scheduler.init_noise_sigma
    for step in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, step), step), step, x).prev_sample
    times = np.append(calls, time_of_alpha_bar(process, landing_alpha_bar(scheduler), T_MAX))
    return PeerRun(x, times, _peer_levels(scheduler), len(calls))


def gddim_grid(process: VP, nfe: int, grid: str, betas: np.ndarray) -> np.ndarray:
    """gDDIM's times: the trailing peers' call and landing times, or one of the engine's grids."""
    if grid != "trailing":
        return time_grid(process, nfe, grid)
    ddim = make_peer("ddim", betas)
    ddim.set_timesteps(nfe)
    ab = ddim.alphas_cumprod.double().numpy()
    return time_of_alpha_bar(process, np.append(ab[ddim.timesteps.numpy()], landing_alpha_bar(ddim)), T_MAX)


def _log_snr(process: VP, t: np.ndarray) -> np.ndarray:
    return process.log_snr(np.asarray(t, dtype=np.float64))


def _levels(process: VP, times: np.ndarray) -> dict:
    return {"t_first_call": float(times[0]), "t_last_call": float(times[-2]), "t_final": float(times[-1]),
            "alpha_bar_first_call": float(np.exp(process.log_alpha_bar(times[0])[0])),
            "alpha_bar_last_call": float(np.exp(process.log_alpha_bar(times[-2])[0])),
            "alpha_bar_final": float(np.exp(process.log_alpha_bar(times[-1])[0]))}


def benchmark(process: VP, data: torch.Tensor, nfes=NFES, batch: int = 256, seed: int = 0, peers=PEERS,
              orders=(0, 1, 2, 3), grids=GDDIM_GRIDS, rtol: float = 1e-10, progress=print) -> dict:
    """Path and data errors of gDDIM and the peers from one batch of start noise; returns the JSON-ready result."""
    eps_fn = CountingEps(exact_eps(process, data.double()))
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    ref, reference = reference_solution(process, eps_fn, u_T, rtol)
    reference.update(data_error=data_error(ref, data), drift_rms_at_t_end=_drift_rms(process, eps_fn, ref))
    eps_fn.reset()
    progress(f"reference ODE: {reference[f'rtol={rtol:g}']['model_calls']} calls, halving the tolerance moves it by "
             f"{reference['rms_difference_rtol_vs_half']:.2e}")
    betas = peer_betas(process)
    records = []

    def record(sampler: str, family: str, order, grid: str, nfe: int, x, times, extra: dict):
        gap = float(times[-1] - process.t_end)
        records.append({"sampler": sampler, "family": family, "order": order, "grid": grid, "nfe": nfe,
                        "model_calls": eps_fn.reset(), "path_error": rms_error(x, ref), "data_error": data_error(x, data),
                        **_levels(process, times), "t_final_minus_reference_t_end": gap,
                        "end_mismatch_effect": reference["drift_rms_at_t_end"] * abs(gap), **extra})
        progress(f"{sampler:>12} {grid:>9} nfe {nfe:3d}: path {records[-1]['path_error']:.3e}  "
                 f"data {records[-1]['data_error']:.3e}")

    for nfe in nfes:
        shared = gddim_grid(process, nfe, "trailing", betas)
        for grid in grids:
            ts = shared if grid == "trailing" else gddim_grid(process, nfe, grid, betas)
            for q in orders:
                record(f"gddim-q{q}", "gddim", q, grid, nfe, sampling.sample(process, eps_fn, u_T, nfe, order=q, grid=ts),
                       ts, {})
        for name in peers:
            run = run_peer(make_peer(name, betas), process, eps_fn, u_T, nfe)
            record(name, "diffusers", None, "trailing", nfe, run.x, run.times, _gaps(process, run, shared))
    return {"reference": reference, "records": records, "ratios": best_ratios(records),
            "settings": {"batch": batch, "seed": seed, "n_train_peers": N_TRAIN, "nfes": list(nfes),
                         "process": process.config(), "data_points": len(data), "data_shape": list(data.shape[1:]),
                         "peer_precision": "diffusers keeps ᾱ and σ in float32 and DPM-Solver steps in float32; "
                                           "gDDIM and the reference run in float64"},
            "machine": machine_info(device="cpu", diffusers=diffusers.__version__)}


def _gaps(process: VP, run: PeerRun, shared: np.ndarray) -> dict:
    """How far a peer's own noise levels and call times are from gDDIM's grid (None: different lengths)."""
    if len(run.times) != len(shared):
        return {"max_log_snr_gap_to_gddim_grid": None, "max_time_gap_to_gddim_grid": None}
    return {"max_log_snr_gap_to_gddim_grid": float(np.abs(run.peer_log_snr - _log_snr(process, shared)).max()),
            "max_time_gap_to_gddim_grid": float(np.abs(run.times - shared).max())}


def _drift_rms(process: VP, eps_fn, x: torch.Tensor) -> float:
    """RMS of the probability-flow drift -½β x + ½β ε/σ at t_end: times a landing-time gap, the path error it makes."""
    t = process.t_end
    beta, sigma = float(process.beta(t)[0]), float(process.R(t)[0, 0, 0, 0])
    eps = eps_fn(x, torch.full((len(x),), t, dtype=x.dtype))
    return float((0.5 * beta * (eps / sigma - x)).double().pow(2).mean().sqrt())


def best_ratios(records: list[dict]) -> list[dict]:
    """Per NFE: gDDIM's best error over q (on the peers' grid, and over all its grids) / the best peer's."""
    out = []
    for nfe in sorted({r["nfe"] for r in records}):
        at = [r for r in records if r["nfe"] == nfe]
        row = {"nfe": nfe}
        for metric in ("path_error", "data_error"):
            peer = min((r for r in at if r["family"] == "diffusers"), key=lambda r: r[metric])
            shared = min((r for r in at if r["family"] == "gddim" and r["grid"] == "trailing"), key=lambda r: r[metric])
            best = min((r for r in at if r["family"] == "gddim"), key=lambda r: r[metric])
            row[metric] = {"best_peer": peer["sampler"], "best_peer_error": peer[metric],
                           "gddim_same_grid": shared["sampler"], "ratio_same_grid": shared[metric] / peer[metric],
                           "gddim_any_grid": f"{best['sampler']}@{best['grid']}", "ratio_any_grid": best[metric] / peer[metric]}
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
    makers = {
        "gddim order 1": lambda: GDDIMScheduler(solver_order=1),
        "gddim order 3": lambda: GDDIMScheduler(solver_order=3),
        "gddim order 4": lambda: GDDIMScheduler(solver_order=4),
        "gddim data order 3": lambda: GDDIMScheduler(solver_order=3, predict_x0=True),
        "gddim data order 3 corrector": lambda: GDDIMScheduler(solver_order=3, predict_x0=True, use_corrector=True),
        "gddim data order 3 logsnr lower_order_final": lambda: GDDIMScheduler(
            solver_order=3, predict_x0=True, interpolation="logsnr", lower_order_final=True, final_sigmas_type="sigma_min"),
        "gddim data order 2 lam=0.5": lambda: GDDIMScheduler(solver_order=2, predict_x0=True, lam=0.5),
        "gddim lam=1": lambda: GDDIMScheduler(lam=1.0),
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

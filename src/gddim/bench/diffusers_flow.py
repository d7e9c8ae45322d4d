"""diffusers' flow-matching samplers beside gDDIM on the exact velocity of a finite data set (BENCHMARKS §1, peers).

The process is flow matching, x_σ = (1-σ) x_0 + σ ε, on the empirical distribution of the data: its exact data
prediction x̂(x, σ) (exact.exact_data) gives the velocity v = (x - x̂)/σ that a flow-matching network learns.

- Peers: FlowMatchEulerDiscreteScheduler, UniPC (orders 2, 3) and DPM-Solver++ (2M, 3M) in flow mode
  (use_flow_sigmas, prediction_type="flow_prediction"), each fed the exact velocity at its own float32 σ_k.
- Same noise levels: every sampler runs on one σ grid per NFE: n model calls at σ_0 = 1 > ... > σ_(n-1) and a
  landing at SIGMA_END = 1e-3 (a landing at σ = 0 would end every run on a training point, where path errors
  only say whether it is the reference's point). The grid is FlowMatchEuler's shape, u uniform from 1 and
  shifted, σ = s u/(1 + (s-1) u), for the shifts SHIFTS (1: uniform in σ; 3: SD3's). The benchmark writes the
  grid's float32 σ (and timesteps 1000 σ) into each peer after its set_timesteps: diffusers' own schedules
  land at σ = 0 and DPM-Solver has no set_timesteps(sigmas=...). UniPC and DPM-Solver++ take
  final_sigmas_type="sigma_min", which only keeps their last step at full order (with "zero" DPM-Solver++ makes
  it first order because σ = 0 has an infinite log-SNR; the landing here is σ = 1e-3). Everything else is
  their default (lower_order_final, UniPC's bh2 corrector). UniPC keeps its own first σ, 1 - 1e-6 (at σ = 1
  its step divides by log 0); the model is called there, a start mismatch of 1e-6.
- gDDIM runs in the engine (gddim.sample with output="data", the same recursion GDDIMFlowScheduler applies) on
  the same grid, and the default (GDDIMFlowScheduler's) also on the quadratic grid from 1 to 1e-3. Records name
  gDDIM by its sampler spec (gddim.spec); "setting" is the grid.
- Reference: the velocity ODE dx/dσ = v from the same x_1 at σ = 1 to SIGMA_END, float64 DOP853 at rtol,
  checked against rtol/2.
"""

from __future__ import annotations

import time

import diffusers
import numpy as np
import torch
from scipy.integrate import solve_ivp

from .. import sampling
from ..errors import SettingsError
from ..exact import exact_data
from ..grids import time_grid
from ..processes import FlowMatching
from ..spec import SamplerSpec
from .peers import GddimVariant, summarize
from .records import CountingEps, data_error, machine_info, rms_error

NFES = (5, 10, 15, 20, 50)
SIGMA_END = 1e-3
SHIFTS = (1.0, 3.0)
N_TRAIN = 1000  # diffusers' num_train_timesteps: timestep = 1000 σ
PEERS = ("euler", "unipc-2", "unipc-3", "dpm++2m", "dpm++3m")
# GDDIMFlowScheduler's default (solver_order 2 = q 1, corrector, lower order at the end), gddim.sample's default
# (q = 2, data form, corrector, lower order at the end), the paper's orders in the data form (q = 0 is flow
# matching's Euler step) and q = 1 / q = 2 with DPM-Solver++'s and UniPC's extras; every one runs on every grid
GDDIM_DEFAULT = SamplerSpec(order=1, prediction="data", corrector=True, lower_order_final=True)
GDDIM_VARIANTS = (GDDIM_DEFAULT, SamplerSpec()) + tuple(SamplerSpec(order=q, prediction="data") for q in range(4)) + (
    SamplerSpec(order=1, prediction="data", lower_order_final=True),
    SamplerSpec(order=2, prediction="data", corrector=True, lower_order_final=True))
OWN_GRID = "quadratic"  # gDDIM's default grid, run beside the shared ones


def shared_levels(nfe: int, shift: float, sigma_end: float = SIGMA_END) -> np.ndarray:
    """nfe + 1 float32-exact levels: FlowMatchEuler's shifted shape from σ = 1 down to sigma_end."""
    shifted = lambda u: shift * u / (1 + (shift - 1) * u)
    u_end = sigma_end / (shift - (shift - 1) * sigma_end)  # the u that the shift maps to sigma_end
    levels = shifted(np.linspace(1.0, u_end, nfe + 1)).astype(np.float32).astype(np.float64)
    levels[-1] = np.float32(sigma_end)
    return levels


def make_peer(name: str):
    """A diffusers flow-matching scheduler by benchmark name (module doc for the settings)."""
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"}
    if name == "euler":
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=N_TRAIN)
    if name.startswith("unipc-"):
        return diffusers.UniPCMultistepScheduler(num_train_timesteps=N_TRAIN, solver_order=int(name[-1]), **flow)
    if name.startswith("dpm++"):
        return diffusers.DPMSolverMultistepScheduler(num_train_timesteps=N_TRAIN, solver_order=int(name[-2]),
                                                     algorithm_type="dpmsolver++", **flow)
    raise SettingsError(f"unknown peer {name!r}; choose one of {PEERS}")


def velocity_of(data_fn):
    """The flow-matching velocity v = (x - x̂)/σ of a data predictor, at one float σ > 0."""
    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x - data_fn(x, torch.full((len(x),), sigma, dtype=x.dtype))) / sigma
    return velocity


def run_peer(scheduler, velocity, x_1: torch.Tensor, levels: np.ndarray) -> torch.Tensor:
    """The peer's loop on the shared levels; call k gets the exact velocity at the peer's float32 σ_k."""
    n = len(levels) - 1
    scheduler.set_timesteps(n)
    own_first = float(scheduler.sigmas[0])
    levels = levels.copy()
    if abs(own_first - levels[0]) < 1e-5:  # UniPC starts at 1 - 1e-6: at σ = 1 its log-SNR step is 0/0
        levels[0] = own_first
    scheduler.sigmas = torch.from_numpy(levels.astype(np.float32))
    scheduler.timesteps = scheduler.sigmas[:-1] * N_TRAIN
    x = x_1
    for k, t in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, float(scheduler.sigmas[k])), t, x).prev_sample
    return x


def run_gddim(data_fn, x_1: torch.Tensor, nfe: int, spec: SamplerSpec, levels: np.ndarray | str) -> torch.Tensor:
    process = FlowMatching(t_end=SIGMA_END)
    return sampling.sample(process, data_fn, x_1, nfe, output="data", grid=levels, **spec.options())


def reference_flow(velocity, x_1: torch.Tensor, sigma_end: float, rtol: float) -> torch.Tensor:
    """The velocity ODE from σ = 1 to sigma_end in float64 (DOP853)."""
    shape = x_1.shape
    rhs = lambda sigma, flat: velocity(torch.from_numpy(flat).reshape(shape), sigma).ravel().numpy()
    sol = solve_ivp(rhs, (1.0, sigma_end), x_1.double().ravel().numpy(), method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"reference flow failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def reference(velocity, x_1: torch.Tensor, rtol: float) -> tuple[torch.Tensor, dict]:
    """The reference at tolerance rtol/2, and how far the solve at rtol is from it."""
    solutions, info = [], {}
    for tol in (rtol, rtol / 2):
        counting = CountingEps(velocity)
        start = time.perf_counter()
        solutions.append(reference_flow(counting, x_1, SIGMA_END, tol))
        info[f"rtol={tol:g}"] = {"model_calls": counting.calls, "seconds": round(time.perf_counter() - start, 2)}
    info["rms_difference_rtol_vs_half"] = rms_error(solutions[0], solutions[1])
    return solutions[1], info


def benchmark(data: torch.Tensor, nfes=NFES, batch: int = 256, seed: int = 0, shifts=SHIFTS, peers=PEERS,
              variants=GDDIM_VARIANTS, default: SamplerSpec = GDDIM_DEFAULT, rtol: float = 1e-10,
              progress=print) -> dict:
    """Path and data errors of gDDIM and the flow-matching peers from one batch of x_1 (JSON-ready)."""
    data = data.double()
    data_fn = CountingEps(exact_data(FlowMatching(), data))
    velocity = velocity_of(data_fn)
    x_1 = torch.randn((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_ref, info = reference(velocity, x_1, rtol)
    info["data_error"] = data_error(x_ref, data)
    data_fn.reset()
    progress(f"reference flow: halving the tolerance moves it by {info['rms_difference_rtol_vs_half']:.2e}")
    records = []

    def record(sampler: str, family: str, setting: str, nfe: int, x: torch.Tensor, levels) -> None:
        finite = bool(torch.isfinite(x).all())
        errors = {"path_error": rms_error(x, x_ref) if finite else None,
                  "data_error": data_error(x, data) if finite else None}
        calls = data_fn.reset()
        if calls != nfe:
            raise RuntimeError(f"{sampler} made {calls} model calls at nfe {nfe}")
        records.append({"sampler": sampler, "family": family, "setting": setting, "nfe": nfe, "model_calls": calls,
                        "finite_output": finite, **errors, "levels": [float(s) for s in levels],
                        "t_final": float(levels[-1]), "lands_at_t_end": True})
        progress(f"{sampler:>32} {setting:>10} nfe {nfe:3d}: path {errors['path_error']:.3e}  "
                 f"data {errors['data_error']:.3e}" if finite else f"{sampler} {setting} nfe {nfe}: non-finite")

    for nfe in nfes:
        for shift in shifts:
            levels, setting = shared_levels(nfe, shift), f"shift={shift:g}"
            for spec in variants:
                record(spec.label, "gddim", setting, nfe, run_gddim(data_fn, x_1, nfe, spec, levels), levels)
            for name in peers:
                record(name, "diffusers", setting, nfe, run_peer(make_peer(name), velocity, x_1, levels), levels)
        record(default.label, "gddim", OWN_GRID, nfe, run_gddim(data_fn, x_1, nfe, default, OWN_GRID),
               time_grid(FlowMatching(t_end=SIGMA_END), nfe, OWN_GRID))
    on_uniform = GddimVariant(default, f"shift={shifts[0]:g}")
    return {"reference": info, "records": records, "summary": summarize(records, on_uniform),
            "same_levels": same_levels(records, default.label),
            "settings": {"batch": batch, "seed": seed, "nfes": list(nfes), "shifts": list(shifts),
                         "sigma_end": SIGMA_END,
                         "gddim_default": {"sampler": default.label, "setting": on_uniform.grid},
                         "data_points": len(data),
                         "data_shape": list(data.shape[1:]), "process": FlowMatching(t_end=SIGMA_END).config(),
                         "peer_precision": "FlowMatchEuler steps in float32; the other peers keep σ in float32; "
                                           "gDDIM and the reference run in float64"},
            "machine": machine_info(device="cpu", diffusers=diffusers.__version__)}


def same_levels(records: list[dict], default: str = GDDIM_DEFAULT.label) -> list[dict]:
    """Per NFE and shared grid: the best peer, gDDIM's default and best variant on that grid, and the ratios."""
    out = []
    for nfe in sorted({r["nfe"] for r in records}):
        for setting in dict.fromkeys(r["setting"] for r in records if r["family"] == "diffusers"):
            rows = [r for r in records if r["nfe"] == nfe and r["setting"] == setting and r["path_error"] is not None]
            peer = min((r for r in rows if r["family"] == "diffusers"), key=lambda r: r["path_error"])
            ours = min((r for r in rows if r["family"] == "gddim"), key=lambda r: r["path_error"])
            mine = next(r for r in rows if r["sampler"] == default)
            out.append({"nfe": nfe, "setting": setting, "best_peer": peer["sampler"],
                        "best_peer_path_error": peer["path_error"], "gddim_default_path_error": mine["path_error"],
                        "ratio_default": mine["path_error"] / peer["path_error"], "gddim_best": ours["sampler"],
                        "ratio_best": ours["path_error"] / peer["path_error"]})
    return out

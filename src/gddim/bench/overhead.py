"""The cost of one scheduler step: GDDIMScheduler's variants beside diffusers' own schedulers (`peers_overhead.json`)."""

from __future__ import annotations

import inspect
import statistics
import time

import diffusers
import torch

from ..diffusers import GDDIMScheduler
from .records import machine_info


def schedulers() -> dict:
    """Makers of the timed schedulers by name: GDDIMScheduler's variants, then diffusers' own."""
    paper = {"predict_x0": False, "use_corrector": False, "lower_order_final": False}  # the paper's gDDIM, ε form
    return {
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


def step_overhead(shape=(64, 3, 32, 32), steps: int = 50, repeats: int = 10, seed: int = 0) -> dict:
    """Median seconds per step() of GDDIMScheduler's variants beside DDIM, DDPM (it draws noise, as λ > 0 does),
    DPM-Solver++ and UniPC.

    The model output is a fixed random tensor, so only the scheduler's own work is timed; the schedulers take
    turns within each repeat so that load on the machine hits them alike.
    """
    g = torch.Generator().manual_seed(seed)
    x0, out = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    makers = schedulers()
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
            "step_ratio_to_ddim": {name: m / med["ddim"] for name, m in med.items()},
            "machine": machine_info(device="cpu", diffusers=diffusers.__version__)}

"""Time discretizations (MATH §5.1) and NFE accounting (MATH §9.6)."""

from __future__ import annotations

import numpy as np

from .errors import SettingsError
from .processes import LinearProcess

GRIDS = ("quadratic", "uniform", "logsnr")


def power_grid(t_start: float, t_end: float, n_steps: int, kappa: float) -> np.ndarray:
    """t_i = (T^{1/κ} + (i/N)(ε^{1/κ} - T^{1/κ}))^κ, i = 0..N."""
    a, b = t_start ** (1 / kappa), t_end ** (1 / kappa)
    ts = (a + np.arange(n_steps + 1) / n_steps * (b - a)) ** kappa
    ts[0], ts[-1] = t_start, t_end  # exact endpoints despite the power's round-off
    return ts


def logsnr_grid(process: LinearProcess, t_start: float, t_end: float, n_steps: int) -> np.ndarray:
    """Uniform in the process's log-SNR, inverted by vectorized bisection in float64."""
    targets = np.linspace(process.log_snr(t_start)[0], process.log_snr(t_end)[0], n_steps + 1)
    lo, hi = np.full_like(targets, t_end), np.full_like(targets, t_start)
    for _ in range(60):  # log-SNR decreases in t; 60 halvings reach float64 resolution
        mid = 0.5 * (lo + hi)
        above = process.log_snr(mid) > targets
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    ts = 0.5 * (lo + hi)
    ts[0], ts[-1] = t_start, t_end
    return ts


def time_grid(process: LinearProcess, n_steps: int, grid="quadratic", t_start: float | None = None,
              t_end: float | None = None) -> np.ndarray:
    """Decreasing times t_0 = t_start > ... > t_N = t_end; `grid` may also be an explicit sequence."""
    if not isinstance(grid, str):
        if t_start is not None or t_end is not None:
            raise SettingsError("an explicit grid sets its own end points: leave t_start and t_end unset")
        ts = np.asarray(grid, dtype=np.float64)
        if ts.ndim != 1 or len(ts) < 2 or np.any(np.diff(ts) >= 0):
            raise SettingsError("an explicit grid must be a strictly decreasing 1-D sequence of at least 2 times")
        if not (0 < ts[-1] and ts[0] <= 1 + 1e-6):  # times found by inverting ᾱ (peers) land up to 3e-8 above 1
            raise SettingsError(f"an explicit grid must lie in (0, 1], the processes' time range; got times from "
                             f"{ts[0]:.6g} down to {ts[-1]:.6g}")
        return ts
    t_start = process.t_start if t_start is None else float(t_start)
    t_end = process.t_end if t_end is None else float(t_end)
    if not 0 < t_end < t_start:
        raise SettingsError(f"need 0 < t_end < t_start, got t_start={t_start}, t_end={t_end}")
    if n_steps < 1:
        raise SettingsError(f"a grid needs at least one step, got {n_steps}")
    if grid == "quadratic":
        return power_grid(t_start, t_end, n_steps, 2.0)
    if grid == "uniform":
        return power_grid(t_start, t_end, n_steps, 1.0)
    if grid == "logsnr":
        return logsnr_grid(process, t_start, t_end, n_steps)
    raise SettingsError(f"unknown grid {grid!r}; choose one of {GRIDS} or pass a sequence of times")


def steps_for_nfe(process: LinearProcess, nfe: int, denoise: bool | None = None) -> int:
    """Integrator steps in an NFE budget: CLD's final denoising step costs one NFE (MATH §9.6)."""
    denoise = process.denoise if denoise is None else denoise
    steps = int(nfe) - int(denoise)
    if steps < 1:
        raise SettingsError(f"nfe={nfe} leaves no integrator step" + (" after the denoising step" if denoise else ""))
    return steps

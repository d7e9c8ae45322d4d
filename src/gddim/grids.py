"""Time discretizations (MATH §5.1) and NFE accounting (MATH §9.6)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import SettingsError
from .grid_files import grid_file_times, tuned_grid
from .processes import LinearProcess

GRIDS = ("quadratic", "uniform", "logsnr", "karras", "angle", "blend", "tuned")
KARRAS_RHO = 7.0  # the ρ of Karras et al. (EDM) and of diffusers' use_karras_sigmas
# how far above t = 1 an explicit grid may start: times found by inverting ᾱ (peers) land up to 3e-8 above 1
GRID_END_SLACK = 1e-6
# the log-SNR the "angle" grid is densest at; measured (benchmarks/angle_grid): -0.5 is within 10% of the best
# centre for VP on exact digits and fashion-mnist scores at NFE 5-20 and beats the quadratic grid on a trained VP model
ANGLE_CENTRE = -0.5


def power_grid(t_start: float, t_end: float, n_steps: int, kappa: float) -> np.ndarray:
    """t_i = (T^{1/κ} + (i/N)(ε^{1/κ} - T^{1/κ}))^κ, i = 0..N."""
    a, b = t_start ** (1 / kappa), t_end ** (1 / kappa)
    ts = (a + np.arange(n_steps + 1) / n_steps * (b - a)) ** kappa
    ts[0], ts[-1] = t_start, t_end  # exact endpoints despite the power's round-off
    return ts


def logsnr_grid(process: LinearProcess, t_start: float, t_end: float, n_steps: int) -> np.ndarray:
    """Uniform in the process's log-SNR."""
    first, last = _log_snr_ends(process, "logsnr", t_start, t_end)
    return _times_of_log_snr(process, np.linspace(first, last, n_steps + 1), t_start, t_end)


def karras_grid(process: LinearProcess, t_start: float, t_end: float, n_steps: int,
                rho: float = KARRAS_RHO) -> np.ndarray:
    """Uniform in σ^{1/ρ} with σ = exp(-λ/2) the noise-to-signal ratio (VP: √((1-ᾱ)/ᾱ)), Karras et al.'s ramp."""
    a, b = np.exp(-_log_snr_ends(process, "karras", t_start, t_end) / (2 * rho))
    roots = a + np.arange(n_steps + 1) / n_steps * (b - a)  # σ^{1/ρ}, and λ = -2ρ log σ^{1/ρ}
    return _times_of_log_snr(process, -2 * rho * np.log(roots), t_start, t_end)


def angle_grid(process: LinearProcess, t_start: float, t_end: float, n_steps: int,
               centre: float = ANGLE_CENTRE) -> np.ndarray:
    """Uniform in the angle φ = arctan(e^{-(λ - centre)/2}) of the (signal, noise) pair at log-SNR shifted by centre.

    Its log-SNR steps, 4Δφ / sin 2φ, are shortest at λ = centre and grow towards both ends, where a data
    prediction changes slowly; for centre 0 it is the cosine schedule's uniform grid. φ stays finite at zero SNR.
    """
    with np.errstate(divide="ignore", over="ignore"):
        ends = np.arctan(np.exp(-(process.log_snr(np.array([t_start, t_end])) - centre) / 2))
    angles = ends[0] + np.arange(n_steps + 1) / n_steps * (ends[1] - ends[0])
    with np.errstate(divide="ignore"):
        return _times_of_log_snr(process, centre - 2 * np.log(np.tan(angles)), t_start, t_end)


def blend_grid(process: LinearProcess, t_start: float, t_end: float, n_steps: int) -> np.ndarray:
    """Each node's log-SNR halfway between the quadratic grid's and the angle grid's: the angle grid's dense middle
    with shorter first and last steps, which trained models need (benchmarks/angle_grid)."""
    nodes = (power_grid(t_start, t_end, n_steps, 2.0), angle_grid(process, t_start, t_end, n_steps))
    with np.errstate(divide="ignore", invalid="ignore"):  # infinite log-SNR at zero SNR or t = 0: exact ends replace it
        return _times_of_log_snr(process, sum(process.log_snr(ts) for ts in nodes) / 2, t_start, t_end)


def _log_snr_ends(process: LinearProcess, grid: str, t_start: float, t_end: float) -> np.ndarray:
    """The log-SNR at t_start and t_end, which the log-SNR grids need finite (flow matching has -inf at t = 1)."""
    ends = process.log_snr(np.array([t_start, t_end]))
    if not np.all(np.isfinite(ends)):
        raise SettingsError(f"grid {grid!r} needs a finite log-SNR at both ends, got {ends[0]:.3g} at t_start={t_start} "
                            f"and {ends[1]:.3g} at t_end={t_end}: pass t_start below the zero-SNR time, e.g. 0.999")
    return ends


def _times_of_log_snr(process: LinearProcess, targets: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    ts = process.time_of_log_snr(targets, t_end, t_start)
    ts[0], ts[-1] = t_start, t_end  # exact endpoints despite the inverse's round-off
    return ts


def time_grid(process: LinearProcess, n_steps: int, grid="quadratic", t_start: float | None = None,
              t_end: float | None = None) -> np.ndarray:
    """Decreasing times t_0 = t_start > ... > t_N = t_end; `grid` is one of GRIDS or an explicit sequence of times
    (gddim.sampling.sampler_grid says which one a sampler runs on when none is named).

    "tuned" is the shipped grid tuned on exact scores (gddim.grid_files); grid files are read by resolve_grid.
    """
    if not isinstance(grid, str):
        if t_start is not None or t_end is not None:
            raise SettingsError("an explicit grid sets its own end points: leave t_start and t_end unset")
        ts = np.asarray(grid, dtype=np.float64)
        if ts.ndim != 1 or len(ts) < 2 or np.any(np.diff(ts) >= 0):
            raise SettingsError("an explicit grid must be a strictly decreasing 1-D sequence of at least 2 times")
        if not (0 < ts[-1] and ts[0] <= 1 + GRID_END_SLACK):
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
    if grid == "karras":
        return karras_grid(process, t_start, t_end, n_steps)
    if grid == "angle":
        return angle_grid(process, t_start, t_end, n_steps)
    if grid == "blend":
        return blend_grid(process, t_start, t_end, n_steps)
    if grid == "tuned":
        return tuned_grid(process, n_steps, t_start, t_end)
    raise SettingsError(f"unknown grid {grid!r}; choose one of {GRIDS}, a grid file or a sequence of times")


def grid_label(grid) -> str:
    """How result files name a grid; None is each sampler's own (gddim.sampling.sampler_grid)."""
    return "sampler's default" if grid is None else str(grid)


def is_grid_file(grid) -> bool:
    """Whether `grid` names a file rather than a grid (a named grid or an explicit sequence of times)."""
    return isinstance(grid, os.PathLike) or (isinstance(grid, str) and grid not in GRIDS)


def resolve_grid(process: LinearProcess, grid, nfe: int):
    """The times of a grid file (checked against the process and the NFE); any other grid as it is."""
    if not is_grid_file(grid):
        return grid
    path = Path(grid).expanduser()
    if not path.is_file():
        raise SettingsError(f"unknown grid {str(grid)!r}: neither one of {GRIDS} nor an existing grid file")
    return grid_file_times(path, process, nfe)


def steps_for_nfe(process: LinearProcess, nfe: int, denoise: bool | None = None) -> int:
    """Integrator steps in an NFE budget: CLD's final denoising step costs one NFE (MATH §9.6)."""
    denoise = process.denoise if denoise is None else denoise
    steps = int(nfe) - int(denoise)
    if steps < 1:
        raise SettingsError(f"nfe={nfe} leaves no integrator step" + (" after the denoising step" if denoise else ""))
    return steps

"""The noise levels of a diffusers-style sampling loop: training schedules, timestep spacings, σ schedules, grid files.

A loop visits N model-call levels and lands on one more. Each level is a continuous time t of the schedule's
DiscreteVP (timestep n sits at t = (n + 1)/N_train, gddim.diffusers explains why); the model is called at the
integer timestep nearest to it, as diffusers' Karras-σ loops do. σ = √((1 - ᾱ)/ᾱ) is diffusers' noise level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import scipy.stats

from .blocks import invert_decreasing
from .errors import SettingsError
from .grid_files import grid_file_times, read_grid_file
from .grids import KARRAS_RHO, blend_grid
from .processes import DiscreteVP, VP

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
DIFFUSERS_SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")  # sigma_schedule's
SIGMA_SCHEDULES = DIFFUSERS_SIGMA_SCHEDULES + ("use_blend_sigmas",)
# the terminal ᾱ the coefficients see on a zero-terminal-SNR schedule: its log-SNR must be finite; the steps
# themselves use ᾱ = 0, and the data form's first coefficient differs from the limit by √ᾱ = 1e-10
ZERO_SNR_STAND_IN = 1e-20
BETA_SIGMAS_SHAPE = 0.6  # the Beta(0.6, 0.6) quantiles of "Beta Sampling is All You Need", as in diffusers


def train_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                         beta_schedule: str = "linear", trained_betas=None,
                         rescale_betas_zero_snr: bool = False) -> np.ndarray:
    """ᾱ_n of a diffusers training schedule, as the model saw them (diffusers' float32 values) in float64."""
    if trained_betas is None and beta_schedule not in BETA_SCHEDULES:
        raise SettingsError(f"unknown beta_schedule {beta_schedule!r}; choose one of {BETA_SCHEDULES} or pass "
                            "trained_betas")
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                   beta_end=beta_end, beta_schedule=beta_schedule, trained_betas=trained_betas,
                                   rescale_betas_zero_snr=rescale_betas_zero_snr)
    return ddpm.alphas_cumprod.double().numpy()


def schedule_process(alphas_cumprod: np.ndarray) -> DiscreteVP:
    """The DiscreteVP of a training schedule; a terminal ᾱ of 0 is replaced by ZERO_SNR_STAND_IN."""
    stand_in = alphas_cumprod.copy()
    stand_in[-1] = max(stand_in[-1], ZERO_SNR_STAND_IN)
    return DiscreteVP(stand_in)


@dataclass(frozen=True)
class Levels:
    """timesteps (N,) int64 for the model; times (N + 1,) and alpha_bars (N + 1,) float64 of the levels, the last one
    the landing (ᾱ exactly the training ᾱ at integer timesteps, 0 at a zero-SNR start)."""

    timesteps: np.ndarray
    times: np.ndarray
    alpha_bars: np.ndarray

    @property
    def sigmas(self) -> np.ndarray:
        """diffusers' σ of every level and of the landing (0 at ᾱ = 1, inf at a zero-SNR start)."""
        with np.errstate(divide="ignore"):
            return np.sqrt((1 - self.alpha_bars) / self.alpha_bars)


def check_step_count(n, n_train: int) -> None:
    if not (isinstance(n, (int, np.integer)) and 1 <= n <= n_train):
        raise SettingsError(f"num_inference_steps must be an integer in 1..{n_train} (num_train_timesteps), got {n!r}")


def spaced_timesteps(config, n: int) -> np.ndarray:
    """diffusers' spacings ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2)."""
    n_train = config.num_train_timesteps
    check_step_count(n, n_train)
    if config.timestep_spacing == "linspace":
        return np.linspace(0, n_train - 1, n).round()[::-1].astype(np.int64)
    if config.timestep_spacing == "leading":
        return (np.arange(n) * (n_train // n))[::-1].astype(np.int64) + config.steps_offset
    return np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1


def sigma_schedule(config, high: float, low: float, n: int) -> np.ndarray:
    """n decreasing σ from high to low: Karras (ρ = 7), exponential or Beta quantiles, by the config's flag (the
    blend schedule is a grid down to the landing instead: levels)."""
    ramp = np.linspace(0, 1, n)
    if config.use_karras_sigmas:
        return (high ** (1 / KARRAS_RHO) + ramp * (low ** (1 / KARRAS_RHO) - high ** (1 / KARRAS_RHO))) ** KARRAS_RHO
    if config.use_exponential_sigmas:
        return np.exp(np.log(high) + ramp * (np.log(low) - np.log(high)))
    return low + scipy.stats.beta.ppf(1 - ramp, BETA_SIGMAS_SHAPE, BETA_SIGMAS_SHAPE) * (high - low)


def check_sigma_schedule(config) -> None:
    chosen = [name for name in SIGMA_SCHEDULES if config[name]]
    if len(chosen) > 1:
        raise SettingsError(f"{' and '.join(chosen)} exclude each other: choose at most one σ schedule")
    if chosen and config["rescale_betas_zero_snr"]:
        raise SettingsError(f"{chosen[0]} spaces σ up to the schedule's largest, which a zero-terminal-SNR schedule "
                            "(rescale_betas_zero_snr) does not have: pass timesteps or a timestep_spacing instead")


def levels(config, process: DiscreteVP, alphas_cumprod: np.ndarray, num_inference_steps: int | None = None,
           timesteps=None, sigmas=None) -> Levels:
    """The loop's levels from exactly one of: a step count (by σ schedule or spacing), timesteps (a decreasing list,
    or the path of a grid file tuned for this schedule), or sigmas (a decreasing list of σ within the schedule)."""
    given = [name for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                  ("sigmas", sigmas)) if v is not None]
    if len(given) != 1:
        raise SettingsError(f"pass exactly one of num_inference_steps, timesteps or sigmas; got {given or 'none'}")
    chosen = [name for name in SIGMA_SCHEDULES if config[name]]
    if chosen and num_inference_steps is None:
        raise SettingsError(f"{chosen[0]} chooses the levels itself: pass num_inference_steps, not {given[0]}")
    land = 0.0 if config.set_alpha_to_one else float(process.time_of_timestep(0))
    if isinstance(timesteps, (str, Path)):
        return _on_times(process, alphas_cumprod, _grid_file(Path(timesteps), process))
    if config.use_blend_sigmas:  # gddim.sample's blend grid down to the landing: its calls are the first N levels
        check_step_count(num_inference_steps, config.num_train_timesteps)
        return _on_times(process, alphas_cumprod, blend_grid(process, 1.0, land, num_inference_steps))
    if timesteps is not None:
        return _on_timesteps(process, alphas_cumprod, _checked_timesteps(config, timesteps), land)
    if sigmas is not None or chosen:
        with np.errstate(divide="ignore"):  # σ = inf at a zero-SNR schedule's last timestep
            train_sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
        if sigmas is None:
            sigmas = sigma_schedule(config, float(train_sigmas[-1]), float(train_sigmas[0]), num_inference_steps)
        return _on_times(process, alphas_cumprod, np.append(_time_of_sigmas(process, sigmas, train_sigmas), land))
    return _on_timesteps(process, alphas_cumprod, spaced_timesteps(config, num_inference_steps), land)


def _checked_timesteps(config, timesteps) -> np.ndarray:
    n_train = config.num_train_timesteps
    steps = np.asarray(timesteps)
    if steps.dtype.kind not in "iu" and not (steps.dtype.kind == "f" and np.all(steps == np.round(steps))):
        raise SettingsError(f"timesteps must be integers (training timesteps); got {steps.tolist()}")
    steps = steps.astype(np.int64)
    if steps.ndim != 1 or len(steps) == 0 or np.any(np.diff(steps) >= 0) or steps[-1] < 0 or steps[0] >= n_train:
        raise SettingsError(f"timesteps must be strictly decreasing integers in 0..{n_train - 1}; got {steps.tolist()}"
                            + (" (steps_offset pushes them past the schedule)" if config.steps_offset else ""))
    return steps


def _on_timesteps(process: DiscreteVP, alphas_cumprod: np.ndarray, steps: np.ndarray, land: float) -> Levels:
    times = np.append(process.time_of_timestep(steps), land)
    landing = 1.0 if land == 0 else alphas_cumprod[0]
    return Levels(timesteps=steps.copy(), times=times, alpha_bars=np.append(alphas_cumprod[steps], landing))


def _on_times(process: DiscreteVP, alphas_cumprod: np.ndarray, times: np.ndarray) -> Levels:
    """Levels at arbitrary times; the model hears the nearest timestep, the steps use the exact ᾱ(t)."""
    n_train = process.num_train_timesteps
    steps = np.clip(np.round(times[:-1] * n_train - 1), 0, n_train - 1).astype(np.int64)
    alpha_bars = np.exp(process.log_alpha_bar(times))
    alpha_bars[times == 1.0] = alphas_cumprod[-1]  # the training schedule's own terminal ᾱ (0 at zero SNR)
    return Levels(timesteps=steps, times=times, alpha_bars=alpha_bars)


def _time_of_sigmas(process: DiscreteVP, sigmas, train_sigmas: np.ndarray) -> np.ndarray:
    sigmas = np.asarray(sigmas, dtype=np.float64)
    low, high = train_sigmas[0], train_sigmas[-1]
    if sigmas.ndim != 1 or len(sigmas) == 0 or not np.all(np.isfinite(sigmas)) or not np.all(np.diff(sigmas) < 0):
        raise SettingsError(f"sigmas must be a strictly decreasing list of noise levels; got {sigmas.tolist()}")
    if sigmas[-1] < low * (1 - 1e-6) or sigmas[0] > high * (1 + 1e-6):
        raise SettingsError(f"sigmas must lie within the training schedule's [{low:.6g}, {high:.6g}] (timesteps 0.."
                            f"{len(train_sigmas) - 1}); got [{sigmas[-1]:.6g}, {sigmas[0]:.6g}]")
    times = time_of_alpha_bar(process, 1 / (1 + np.clip(sigmas, low, high) ** 2))
    return np.clip(times, process.time_of_timestep(0), 1.0)


def _grid_file(path: Path, process: DiscreteVP) -> np.ndarray:
    """A grid file's times: its model calls and its last time, where the loop lands."""
    return grid_file_times(path, process, read_grid_file(path)["nfe"])


def time_of_alpha_bar(process: VP, alpha_bar, t_max: float = 1.0) -> np.ndarray:
    """The time in [0, t_max] at which a VP process has the given ᾱ, by vectorized bisection (ᾱ decreases in t)."""
    target = np.log(np.asarray(alpha_bar, dtype=np.float64))
    lowest = float(process.log_alpha_bar(t_max)[0])
    if np.any(target > 0) or np.any(target < lowest):
        raise SettingsError(f"ᾱ outside {process.name}'s range [{np.exp(lowest):.6g}, 1] on t in [0, {t_max}]: "
                            "ask only for noise levels it reaches (a model's process must stay within the ᾱ of "
                            "its training schedule)")
    return invert_decreasing(lambda t: process.log_alpha_bar(t.ravel()).reshape(t.shape), target, 0.0, t_max)

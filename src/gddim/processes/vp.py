"""VP / DDPM (MATH §4.1): F = -½β I, G = √β I, Ψ(t,s) = √(ᾱ_t/ᾱ_s), Σ_t = (1-ᾱ_t) I, R_t = L_t = √(1-ᾱ_t) I."""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

from ..errors import SettingsError
from .base import START_ALPHA_BAR, LinearProcess, as_times, check_parameter, frozen_array


def _block(x: np.ndarray) -> np.ndarray:
    return x[:, None, None, None]


class VP(LinearProcess):
    """Variance-preserving diffusion with a linear β schedule (score-SDE) or the iDDPM cosine schedule."""

    name = "vp"
    k = 1
    default_grid = "blend"  # beats the quadratic grid on exact and trained VP models (benchmarks/angle_grid); "angle"
    # wins on exact scores and digits but loses 1.7x at NFE 5 on a trained fashion-mnist model

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008, t_end: float = 1e-3, t_start: float | None = None):
        if schedule not in ("linear", "cosine"):
            raise SettingsError(f"VP schedule must be 'linear' or 'cosine', got {schedule!r}")
        self.schedule = schedule
        self.beta_min = check_parameter("VP", "beta_min", beta_min, lambda b: b >= 0,
                                        "0 <= beta_min < beta_max (β(t) >= 0)")
        self.beta_max = check_parameter("VP", "beta_max", beta_max, lambda b: b > beta_min,
                                        f"0 <= beta_min < beta_max (beta_min={beta_min})")
        self.cosine_s = check_parameter("VP", "cosine_s", cosine_s, lambda s: s >= 0,
                                        "cosine_s >= 0 (a negative offset makes β(0) < 0)")
        self.t_end = float(t_end)
        if t_start is None:
            # the cosine ᾱ reaches 0 at t = 1, so start where σ/α = 80 as BDM does (MATH §4.3)
            t_start = 1.0 if schedule == "linear" else self._time_of_alpha_bar(START_ALPHA_BAR)
        self.t_start = float(t_start)

    def _phase(self, t):
        return (t + self.cosine_s) / (1 + self.cosine_s) * math.pi / 2

    def log_alpha_bar(self, t) -> np.ndarray:
        t = as_times(t)
        if self.schedule == "linear":
            return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min
        # log(cos φ_t/cos φ_0), with cos φ_t − cos φ_0 = −2 sin((φ_t+φ_0)/2) sin((φ_t−φ_0)/2): exact near t = 0
        p0 = self._phase(0.0)
        half_gap = t / (1 + self.cosine_s) * math.pi / 4
        return 2 * np.log1p(-2 * np.sin(self._phase(t) / 2 + p0 / 2) * np.sin(half_gap) / math.cos(p0))

    def beta(self, t) -> np.ndarray:
        """β(t) = -d log ᾱ / dt."""
        t = as_times(t)
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        return np.tan(self._phase(t)) * math.pi / (1 + self.cosine_s)

    def _time_of_alpha_bar(self, alpha_bar):
        c = np.sqrt(alpha_bar) * math.cos(self._phase(0.0))
        return np.arccos(c) * 2 / math.pi * (1 + self.cosine_s) - self.cosine_s

    def time_of_log_snr(self, log_snr, t_low: float = 0.0, t_high: float = 1.0) -> np.ndarray:
        """Closed form: -log ᾱ = softplus(-λ), then the schedule's inverse (the bounds are not needed)."""
        minus_log_ab = np.logaddexp(0.0, -np.asarray(log_snr, dtype=np.float64))
        if self.schedule == "cosine":
            return self._time_of_alpha_bar(np.exp(-minus_log_ab))
        # the root of ½(β_max - β_min)t² + β_min t = -log ᾱ, written without cancellation
        slope = self.beta_max - self.beta_min
        return 2 * minus_log_ab / (self.beta_min + np.sqrt(self.beta_min**2 + 2 * slope * minus_log_ab))

    def F(self, t):
        return _block(-0.5 * self.beta(t))

    def GGT(self, t):
        return _block(self.beta(t))

    def psi(self, t, s):
        return _block(np.exp(0.5 * (self.log_alpha_bar(t) - self.log_alpha_bar(s))))

    def sigma(self, t):
        return _block(-np.expm1(self.log_alpha_bar(t)))

    def R(self, t):
        return np.sqrt(self.sigma(t))

    L = R

    def prior_cov(self):
        return np.ones((1, 1, 1))

    def log_snr(self, t):
        la = self.log_alpha_bar(t)
        return la - np.log(-np.expm1(la))

    def config(self):
        return {"process": "vp", "schedule": self.schedule, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "cosine_s": self.cosine_s, "t_start": self.t_start, "t_end": self.t_end}


class DiscreteVP(VP):
    """A VP process whose ᾱ(t) interpolates a discrete (diffusers) schedule: timestep n sits at t = (n+1)/N,
    ᾱ(0) = 1, and log ᾱ is a monotone PCHIP interpolation between timesteps (gddim.diffusers explains why).

    Sampling defaults run from t = 1 (timestep N-1) to t = 1/N (timestep 0, the least noisy trained level).
    """

    name = "vp-discrete"

    def __init__(self, alphas_cumprod, t_start: float = 1.0, t_end: float | None = None):
        # every VP attribute the methods read is set here; VP's own constructor builds continuous schedules only
        ac = frozen_array(alphas_cumprod)
        if ac.ndim != 1 or len(ac) < 2 or not np.all((ac > 0) & (ac < 1)) or np.any(np.diff(ac) > 0):
            raise SettingsError("alphas_cumprod must be a non-increasing 1-D array of at least 2 values in (0, 1) "
                                "(zero-terminal-SNR schedules have no finite start)")
        self.alphas_cumprod = ac
        self.num_train_timesteps = n = len(ac)
        self._log_ab = PchipInterpolator(np.arange(n + 1) / n, np.concatenate([[0.0], np.log(ac)]), extrapolate=False)
        self._d_log_ab = self._log_ab.derivative()
        self.t_start = float(t_start)
        self.t_end = 1.0 / n if t_end is None else float(t_end)

    def _inside(self, t) -> np.ndarray:
        t = as_times(t)
        if np.any(t < 0) or np.any(t > 1):
            raise SettingsError(f"DiscreteVP is defined on t in [0, 1]; got times in [{t.min():.6g}, {t.max():.6g}]")
        return t

    def log_alpha_bar(self, t) -> np.ndarray:
        return self._log_ab(self._inside(t))

    def beta(self, t) -> np.ndarray:
        return -self._d_log_ab(self._inside(t))

    time_of_log_snr = LinearProcess.time_of_log_snr  # VP's closed form does not hold for an interpolated schedule

    def time_of_timestep(self, timestep) -> np.ndarray:
        return (np.asarray(timestep, dtype=np.float64) + 1) / self.num_train_timesteps

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.num_train_timesteps}, t_start={self.t_start}, t_end={self.t_end})"

    def config(self):
        return {"process": "vp-discrete", "alphas_cumprod": self.alphas_cumprod.tolist(),
                "t_start": self.t_start, "t_end": self.t_end}

"""A linear process from user-supplied F_t and G_t (the paper's "any linear diffusion").

Ψ(t,0), Σ_t and R_t come from one vectorized float64 ODE solve over all modes:
Φ' = F Φ,  Σ' = F Σ + Σ Fᵀ + G Gᵀ,  R' = F R + ½ G Gᵀ R⁻ᵀ (MATH §1.1, §1.4).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.integrate import solve_ivp

from .. import blocks
from ..errors import SettingsError
from .base import PROCESS_ODE, LinearProcess, as_times, frozen_array
from .basis import DCTBasis, IdentityBasis

# rate x time range beyond which F or GGᵀ counts as singular: 1e8 e-folds no float64 ODE can follow
SINGULAR_RATE = 1e8


class LinearSDE(LinearProcess):
    """du = F_t u dt + G_t dw with F(t), G(t) callables returning (k, k) or (M, k, k) arrays.

    sigma0 is Cov(u_0 | x_0); for k > 1 it must be positive definite, because R_0 = chol(Σ_0) fixes R_t.
    For k = 1 any Σ_0 >= 0 works: then R_t = √Σ_t.

    The process lives on [0, t_max]: its ODE is solved there and nothing later is ever evaluated (a time
    outside is a ValueError). t_max defaults to t_start, where sampling begins, so F and G may be singular
    after it (e.g. the cosine β as t -> 1); training draws t in [t_train_min, t_max]. F or G that is not
    finite, or that grows beyond what the ODE can follow (|F|·t_max or |GGᵀ|·t_max > 1e8), is refused with
    the time where it happens.
    """

    def __init__(self, F: Callable, G: Callable, sigma0, k: int, mode_shape: tuple[int, int] = (1, 1),
                 basis: str = "identity", t_start: float = 1.0, t_end: float = 1e-3, denoise: bool = False,
                 prior_cov=None, name: str = "linear", t_max: float | None = None):
        if basis not in ("identity", "dct"):
            raise SettingsError(f"basis must be 'identity' or 'dct', got {basis!r}")
        t_max = t_start if t_max is None else t_max
        if not 0 < t_end < t_start <= t_max:
            raise SettingsError(f"LinearSDE needs 0 < t_end < t_start <= t_max; got t_end={t_end}, "
                                f"t_start={t_start}, t_max={t_max}")
        self.k, self.mode_shape, self.name = int(k), tuple(int(size) for size in mode_shape), name
        self.basis = DCTBasis() if basis == "dct" else IdentityBasis()
        self.t_start, self.t_end, self.t_max, self.denoise = float(t_start), float(t_end), float(t_max), bool(denoise)
        self.drift_fn, self.noise_fn = F, G
        self.sigma0 = frozen_array(sigma0, (self.modes, k, k))
        self._prior_cov = None if prior_cov is None else frozen_array(prior_cov, (self.modes, k, k))
        state0 = [blocks.eye(self.modes, k), self.sigma0]
        if k > 1:
            try:
                state0.append(np.linalg.cholesky(self.sigma0))
            except np.linalg.LinAlgError:
                raise SettingsError("sigma0 must be positive definite for k > 1 (R_0 = chol(Σ_0)); "
                                    "add a small floor as CLD's eps_num does") from None
        self._n_parts = len(state0)
        self._solution = self._solve(np.stack(state0))

    def _F(self, t: float) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.drift_fn(t), dtype=np.float64), (self.modes, self.k, self.k))

    def _G(self, t: float) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.noise_fn(t), dtype=np.float64), (self.modes, self.k, self.k))

    def identity(self) -> tuple:
        """The config, and what it cannot hold: F and G (code, equal only to themselves) and the numbers Σ_0,
        the prior covariance and denoise."""
        prior = None if self._prior_cov is None else self._prior_cov.tobytes()
        return (*super().identity(), self.drift_fn, self.noise_fn, self.sigma0.tobytes(), prior, self.denoise)

    def _checked_F_and_GGT(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """F_t and G_tG_tᵀ, refusing a value that is not finite or beyond what the ODE can follow."""
        f, g = self._F(t), self._G(t)
        ggt = g @ blocks.transpose(g)
        for name, value, size in (("F", f, f), ("G", g, ggt)):
            if not np.all(np.isfinite(value)):
                raise SettingsError(f"{name}(t) is not finite at t = {t:.10g}; a LinearSDE needs finite F and G on its "
                                    f"time range [0, t_max = {self.t_max:.10g}]: fix {name} or lower t_start/t_max")
            if np.max(np.abs(size)) * self.t_max > SINGULAR_RATE:
                what = "|F|" if name == "F" else "|GGᵀ|"
                raise SettingsError(f"{name}(t) is singular at t = {t:.10g}: {what} = {np.max(np.abs(size)):.3g} there, "
                                    f"beyond what the process ODE can follow ({what}·t_max <= {SINGULAR_RATE:.0e}); "
                                    f"end the time range before it (lower t_start/t_max) or fix {name}")
        return f, ggt

    def _solve(self, y0: np.ndarray):
        shape = y0.shape

        def rhs(t, y):
            y = y.reshape(shape)
            f, ggt = self._checked_F_and_GGT(t)
            out = [f @ y[0], f @ y[1] + y[1] @ blocks.transpose(f) + ggt]
            if self._n_parts == 3:
                out.append(f @ y[2] + blocks.eps_drift(ggt, y[2]))
            return np.stack(out).ravel()

        sol = solve_ivp(rhs, (0.0, self.t_max), y0.ravel(), dense_output=True, **PROCESS_ODE)
        if not sol.success:
            raise SettingsError(f"the process ODE stopped at t = {sol.t[-1]:.10g} ({sol.message}); F or G is close to "
                                f"singular there: end the time range before it (lower t_start/t_max) or fix F and G")
        return lambda t: sol.sol(self._inside(t)).T.reshape(-1, *shape)

    def _inside(self, t) -> np.ndarray:
        """The times t, refused when outside [0, t_max], where the ODE was solved (no extrapolation)."""
        t = as_times(t)
        if np.any(t < 0) or np.any(t > self.t_max):
            raise SettingsError(f"this LinearSDE is defined on t in [0, {self.t_max:.10g}] (its t_max); got times in "
                                f"[{t.min():.10g}, {t.max():.10g}]: build it with a larger t_max to use later times")
        return t

    def F(self, t):
        return np.stack([self._F(ti) for ti in self._inside(t)])

    def GGT(self, t):
        g = np.stack([self._G(ti) for ti in self._inside(t)])
        return g @ blocks.transpose(g)

    def psi(self, t, s):
        t, s = np.broadcast_arrays(as_times(t), as_times(s))
        return blocks.solve_right(self._solution(t)[:, 0], self._solution(s)[:, 0])

    def sigma(self, t):
        return blocks.sym(self._solution(t)[:, 1])

    def R(self, t):
        if self._n_parts == 3:
            return self._solution(t)[:, 2]
        return np.sqrt(np.clip(self.sigma(t), 0.0, None))

    def prior_cov(self):
        return super().prior_cov() if self._prior_cov is None else self._prior_cov

    def config(self):
        # F and G are code, not numbers: a checkpoint of this process must be rebuilt by the user's script
        return {"process": "linear", "name": self.name, "k": self.k, "mode_shape": list(self.mode_shape),
                "basis": self.basis.name, "t_start": self.t_start, "t_end": self.t_end, "t_max": self.t_max}

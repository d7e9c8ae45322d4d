"""Flow matching / rectified flow: x_t = (1 - t) x_0 + t ε, the linear SDE with these marginals.

Ψ(t,s) = (1-t)/(1-s), Σ_t = t², R_t = L_t = t, F_t = -1/(1-t), G_t² = dΣ/dt - 2FΣ = 2t/(1-t).
F and G² blow up at t = 1, where Ψ(1,0) = 0: the state there is pure noise, so an ε-model says nothing about
the data and no step can start from t = 1 in the ε form. A model that predicts the data x̂ or the velocity
v = dx_t/dt = ε - x_0 (x̂ = u - t v) can: the data-form step u_s = (s/t) u + (1 - s/t) x̂ is finite there,
and with x̂ = u - t v it is exactly the Euler step u + (s - t) v of flow matching.
"""

from __future__ import annotations

import numpy as np

from .base import LinearProcess, as_times, check_parameter

# where an ε-network (gddim train) starts: σ/α = 99; at t = 1 its ε would be the state itself
EPS_MODEL_T_START = 0.99


def _block(x: np.ndarray) -> np.ndarray:
    return x[:, None, None, None]


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top/bottom with x/0 = inf for x > 0: the rates at t = 1 are infinite, not errors."""
    with np.errstate(divide="ignore"):
        return top / bottom


class FlowMatching(LinearProcess):
    """The rectified-flow process on t in [0, 1]; sampling runs from t_start (default 1) to t_end."""

    name = "flow"
    k = 1
    t_max = 1.0

    def __init__(self, t_start: float = 1.0, t_end: float = 1e-3):
        self.t_start = check_parameter("FlowMatching", "t_start", t_start, lambda t: 0 < t <= 1, "0 < t_start <= 1")
        self.t_end = check_parameter("FlowMatching", "t_end", t_end, lambda t: 0 < t < self.t_start,
                                     f"0 < t_end < t_start (t_start={self.t_start})")

    def F(self, t):
        t = as_times(t)
        return _block(-_ratio(np.ones_like(t), 1 - t))

    def GGT(self, t):
        t = as_times(t)
        return _block(_ratio(2 * t, 1 - t))

    def psi(self, t, s):
        t, s = np.broadcast_arrays(as_times(t), as_times(s))
        return _block(_ratio(1 - t, 1 - s))

    def mean_coef(self, t):
        return _block(1 - as_times(t))

    def sigma(self, t):
        return _block(as_times(t) ** 2)

    def R(self, t):
        return _block(as_times(t).copy())

    L = R

    def data_from_velocity(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(P, Q) with x̂ = P u + Q v: u = (1-t) x_0 + t ε and v = ε - x_0 give x_0 = u - t v."""
        t = as_times(t)
        return _block(np.ones_like(t)), _block(-t)

    def prior_cov(self):
        return np.ones((1, 1, 1))

    def log_snr(self, t):
        t = as_times(t)
        with np.errstate(divide="ignore"):
            return 2 * (np.log1p(-t) - np.log(t))

    def config(self):
        return {"process": "flow", "t_start": self.t_start, "t_end": self.t_end}

"""The shape every linear forward process shares (MATH §1, DESIGN "one shape for every process").

A process is an orthonormal basis plus, in that basis, a per-mode linear SDE du = F_t u dt + G_t dw with
k x k blocks. Every matrix method takes a float64 time array t of shape (n,) and returns an array of
shape (n, M, k, k); M = 1 when all pixels share one system.
"""

from __future__ import annotations

import json
import math
import numbers
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from .. import blocks
from ..errors import ImmutableError, SettingsError
from .basis import IdentityBasis

# the noise-to-signal ratio σ/α at which the cosine schedules (VP cosine, BDM) start sampling (MATH §4.3)
START_NOISE_TO_SIGNAL = 80.0
START_ALPHA_BAR = 1.0 / (1.0 + START_NOISE_TO_SIGNAL**2)
# how a process solves its own float64 ODEs (CLD's R_t, a LinearSDE's Ψ, Σ, R): an explicit 8th-order solver
# with a tight tolerance matches Radau to 1e-12 on CLD's R_t, 15x faster
PROCESS_ODE = {"method": "DOP853", "rtol": 1e-12, "atol": 1e-14}


def as_times(t) -> np.ndarray:
    return np.atleast_1d(np.asarray(t, dtype=np.float64))


def check_parameter(owner: str, name: str, value, valid: Callable[[float], bool], rule: str) -> float:
    """A constructor's number, which must be finite and satisfy `valid` (else a SettingsError naming it and the
    rule), as a float: equal parameters then give equal configs whether they came as ints or numpy scalars."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number and valid(value)):
        raise SettingsError(f"{owner} needs {rule}; got {name}={value!r}")
    return float(value)


def frozen_array(values, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A read-only float64 copy of values (broadcast to shape): the caller's array can no longer change the process."""
    array = np.array(values, dtype=np.float64)
    if shape is not None:
        array = np.broadcast_to(array, shape).copy()
    array.setflags(write=False)
    return array


class _BuiltOnce(type):
    """Marks an instance as built once its whole constructor chain has returned; from then on it is read-only."""

    def __call__(cls, *args, **kwargs):
        instance = super().__call__(*args, **kwargs)
        object.__setattr__(instance, "_built", True)
        return instance


class LinearProcess(metaclass=_BuiltOnce):
    """Base class: subclasses fill in F, GGᵀ, Ψ, Σ, R (closed forms where they exist).

    A process is immutable, and its config is its identity. A subclass follows this pattern:
    - __init__ checks every parameter (check_parameter returns it as a float; frozen_array copies arrays
      read-only) and stores it, with whatever it derives from them (e.g. CLD's Γ);
    - once __init__ returns, assigning or deleting an attribute raises ImmutableError (build a new process);
      this base class does it for every subclass, so a subclass writes a plain __init__ (no frozen dataclass);
    - something costly derived on first use (CLD's R_t solution) is a functools.cached_property, which is
      computed once from the fixed parameters;
    - config() returns every parameter as JSON values under the "process" name that processes/__init__.py
      maps to the class, so that process_from_config(p.config()) == p;
    - equality and hash come from identity(): the class and the config (LinearSDE adds its F and G, which
      are code). Equal processes share the coefficients that sampling.plan keeps in memory.
    """

    name = "linear"
    k = 1
    basis = IdentityBasis()
    mode_shape: tuple[int, int] = (1, 1)
    t_start = 1.0  # default first time of sampling
    t_end = 1e-3  # default last time of sampling
    denoise = False  # one final noise-free reverse-SDE Euler step to t = 0 (CLD, MATH §4.2)
    default_grid = "quadratic"  # the default sampler's grid when none is named (gddim.sampling.sampler_grid); measured
    t_train_min = 1e-5
    t_max = 1.0  # the last time the process is defined at; training draws t in [t_train_min, t_max]

    @property
    def modes(self) -> int:
        return self.mode_shape[0] * self.mode_shape[1]

    # ---- matrices (float64 numpy, (n, M, k, k)) -------------------------------------------------
    def F(self, t) -> np.ndarray:
        raise NotImplementedError

    def GGT(self, t) -> np.ndarray:
        raise NotImplementedError

    def psi(self, t, s) -> np.ndarray:
        """Ψ(t, s): maps a state at time s to time t."""
        raise NotImplementedError

    def sigma(self, t) -> np.ndarray:
        """Σ_t = Cov(u_t | x_0)."""
        raise NotImplementedError

    def R(self, t) -> np.ndarray:
        """The gDDIM square root of Σ_t: dR/dt = F R + ½ G Gᵀ R⁻ᵀ (MATH §1.4)."""
        raise NotImplementedError

    def L(self, t) -> np.ndarray:
        """The Cholesky square root of Σ_t (the paper's ablation)."""
        return np.linalg.cholesky(self.sigma(t))

    def K(self, t, parameterization: str = "R") -> np.ndarray:
        if parameterization == "R":
            return self.R(t)
        if parameterization == "L":
            return self.L(t)
        raise SettingsError(f"parameterization must be 'R' or 'L', got {parameterization!r}")

    def eps_drift(self, t, parameterization: str = "R") -> np.ndarray:
        """½ G_tG_tᵀ K_t⁻ᵀ, the matrix that multiplies ε in the probability-flow drift (MATH §1.2)."""
        return blocks.eps_drift(self.GGT(t), self.K(t, parameterization))

    def mean_coef(self, t) -> np.ndarray:
        """The matrix taking clean data (as a state, velocity 0) to the mean of u_t."""
        return self.psi(t, 0.0)

    def data_from_velocity(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(P, Q) with x̂ = P u + Q v for a model predicting the velocity v = du_t/dt of the forward path."""
        raise SettingsError(f"a velocity-predicting model is defined for flow matching; {self.name} models predict ε "
                            "or the data (output='eps' or 'data')")

    def prior_cov(self) -> np.ndarray:
        """Covariance (M, k, k) of the state drawn at the start of sampling."""
        return self.sigma(self.t_start)[0]

    def log_snr(self, t) -> np.ndarray:
        """log(signal² / noise²), decreasing in t; the 'logsnr' grid is uniform in it."""
        m = self.mean_coef(t)
        signal = np.einsum("nmij,nmij->nm", m, m)
        noise = np.trace(self.sigma(t), axis1=-2, axis2=-1)
        return np.log(signal / noise).mean(axis=-1)

    def time_of_log_snr(self, log_snr, t_low: float, t_high: float) -> np.ndarray:
        """The times in [t_low, t_high] where log_snr(t) takes the given values, by vectorized bisection in float64."""
        return blocks.invert_decreasing(lambda t: self.log_snr(t.ravel()).reshape(t.shape), log_snr, t_low, t_high)

    def config(self) -> dict:
        raise NotImplementedError

    # ---- identity ------------------------------------------------------------------------------
    def identity(self) -> tuple:
        """What makes two processes equal: their class and their config."""
        return type(self), self._config_json

    @cached_property
    def _config_json(self) -> str:
        return json.dumps(self.config(), sort_keys=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, LinearProcess) and self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.identity())

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_built", False):
            raise ImmutableError(f"cannot set {type(self).__name__}.{name}: a process is immutable once built (its "
                                 f"coefficients derive from its parameters); build a new {type(self).__name__} "
                                 f"with {name}={value!r} instead")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise ImmutableError(f"cannot delete {type(self).__name__}.{name}: a process is immutable; build a new one")

    # ---- states (torch) -------------------------------------------------------------------------
    def check_state(self, u: torch.Tensor, what: str = "state") -> None:
        """A state is (B, k*C, H, W); per-frequency processes also fix (H, W)."""
        if u.ndim != 4:
            raise SettingsError(f"{what} must have shape (B, {self.k}*C, H, W); got {tuple(u.shape)}")
        if u.shape[1] % self.k:
            raise SettingsError(
                f"{what} has {u.shape[1]} channels; a {self.name} state has {self.k}*C channels "
                f"(data channels first{', then velocity' if self.k == 2 else ''})"
            )
        if self.modes > 1 and tuple(u.shape[-2:]) != self.mode_shape:
            raise SettingsError(f"{what} has spatial size {tuple(u.shape[-2:])}; this {self.name} was built for "
                                f"{self.mode_shape}")

    def to_basis(self, u: torch.Tensor) -> torch.Tensor:
        """(B, k*C, H, W) pixel layout -> (B, k, C, H, W) in the basis."""
        b, kc, h, w = u.shape
        return self.basis.forward(u.reshape(b, self.k, kc // self.k, h, w))

    def from_basis(self, y: torch.Tensor) -> torch.Tensor:
        b, k, c, h, w = y.shape
        return self.basis.inverse(y).reshape(b, k * c, h, w)

    def data_to_state(self, x: torch.Tensor) -> torch.Tensor:
        """Clean data (B, C, H, W) as a state at time 0 (zero velocity for CLD)."""
        return torch.cat([x] + [torch.zeros_like(x)] * (self.k - 1), dim=1)

    def state_to_data(self, u: torch.Tensor) -> torch.Tensor:
        return u[:, : u.shape[1] // self.k]

    def blocks(self, a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return blocks.to_torch(a, self.mode_shape, dtype=like.dtype, device=like.device)

    def prior_sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
        """A state u_T for data of shape (B, C, H, W), drawn from the prior."""
        b, c, h, w = shape
        z = torch.randn((b, self.k * c, h, w), generator=generator, dtype=torch.float64, device=device)
        self.check_state(z, "prior shape")
        root = self.blocks(blocks.psd_sqrt(self.prior_cov()), z)
        return self.from_basis(blocks.apply(root, self.to_basis(z))).to(dtype)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None, generator=None):
        """u_t = mean_coef(t) u_0 + R_t z for per-sample times t (B,); returns (u_t, z) in pixel layout."""
        u0 = self.data_to_state(x0)
        if z is None:
            z = torch.randn(u0.shape, generator=generator, dtype=u0.dtype, device=u0.device)
        tt = t.detach().double().cpu().numpy()
        mean = blocks.to_torch(self.mean_coef(tt), self.mode_shape, u0.dtype, u0.device)
        root = blocks.to_torch(self.R(tt), self.mode_shape, u0.dtype, u0.device)
        ut = blocks.apply(mean, self.to_basis(u0)) + blocks.apply(root, self.to_basis(z))
        return self.from_basis(ut), z

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "process")
        return f"{type(self).__name__}({args})"

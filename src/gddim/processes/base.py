"""The shape every linear forward process shares (MATH §1, DESIGN "one shape for every process").

A process is an orthonormal basis plus, in that basis, a per-mode linear SDE du = F_t u dt + G_t dw with
k x k blocks. Every matrix method takes a float64 time array t of shape (n,) and returns an array of
shape (n, M, k, k); M = 1 when all pixels share one system.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np
import torch

from .. import blocks
from ..errors import SettingsError
from .basis import IdentityBasis


def as_times(t) -> np.ndarray:
    return np.atleast_1d(np.asarray(t, dtype=np.float64))


def check_parameter(owner: str, name: str, value, valid: Callable[[float], bool], rule: str) -> None:
    """A constructor's number must be finite and satisfy `valid`; otherwise a ValueError naming it and the rule."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number and valid(value)):
        raise ValueError(f"{owner} needs {rule}; got {name}={value!r}")


class LinearProcess:
    """Base class: subclasses fill in F, GGᵀ, Ψ, Σ, R (closed forms where they exist)."""

    name = "linear"
    k = 1
    basis = IdentityBasis()
    mode_shape: tuple[int, int] = (1, 1)
    t_start = 1.0  # default first time of sampling
    t_end = 1e-3  # default last time of sampling
    denoise = False  # one final noise-free reverse-SDE Euler step to t = 0 (CLD, MATH §4.2)
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
        raise ValueError(f"parameterization must be 'R' or 'L', got {parameterization!r}")

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

    def config(self) -> dict:
        raise NotImplementedError

    # ---- states (torch) -------------------------------------------------------------------------
    def check_state(self, u: torch.Tensor, what: str = "state") -> None:
        """A state is (B, k*C, H, W); per-frequency processes also fix (H, W)."""
        if u.ndim != 4:
            raise ValueError(f"{what} must have shape (B, {self.k}*C, H, W); got {tuple(u.shape)}")
        if u.shape[1] % self.k:
            raise ValueError(
                f"{what} has {u.shape[1]} channels; a {self.name} state has {self.k}*C channels "
                f"(data channels first{', then velocity' if self.k == 2 else ''})"
            )
        if self.modes > 1 and tuple(u.shape[-2:]) != self.mode_shape:
            raise ValueError(f"{what} has spatial size {tuple(u.shape[-2:])}; this {self.name} was built for {self.mode_shape}")

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

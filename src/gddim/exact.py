"""Exact ε-models: finite data sets (BENCHMARKS §1), a single point (Dirac), Gaussian data, and one of them per class.

For data {x_i}, p_t(u) = (1/N) Σ_i N(u; m_i(t), Σ_t) with m_i(t) = mean_coef(t) u0_i. In whitened
coordinates w = K_t⁻¹ u and μ_i = K_t⁻¹ m_i the posterior weights are softmax_i(w·μ_i - ½|μ_i|²) and
ε = w - Σ_i softmax_i μ_i. Everything is float64; the data axis is processed in chunks with a running
log-sum-exp so that memory stays bounded for large N.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import blocks
from .errors import SettingsError
from .processes import LinearProcess
from .loop import EpsFn


def _single_time(t: torch.Tensor) -> float:
    values = torch.unique(t.detach())
    if len(values) != 1:
        raise SettingsError("exact ε-models take one time per call (every sampler passes a constant t)")
    return float(values[0])


def exact_eps(process: LinearProcess, data: torch.Tensor, parameterization: str = "R", chunk: int = 8192) -> EpsFn:
    """The exact ε of the empirical distribution of `data` (N, C, H, W) under `process`."""
    posterior = _posterior(process, data, parameterization, chunk)

    def eps_fn(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w, a, mean_x = posterior(u, t)
        return process.from_basis(w - a * mean_x).to(dtype=u.dtype, device=u.device)

    return eps_fn


def exact_data(process: LinearProcess, data: torch.Tensor, chunk: int = 8192) -> EpsFn:
    """The exact data prediction x̂(u, t) = E[(x_0, 0) | u_t = u] of the empirical distribution of `data`, as a
    state: a model for gddim.sample(..., output="data"). It stays finite where Ψ(t,0) = 0 (flow matching at t = 1:
    the data mean), where the exact ε carries no information about the data."""
    posterior = _posterior(process, data, "R", chunk)

    def data_fn(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, _, mean_x = posterior(u, t)
        state = torch.cat([mean_x] + [torch.zeros_like(mean_x)] * (process.k - 1), dim=1)
        return process.from_basis(state).to(dtype=u.dtype, device=u.device)

    return data_fn


def _posterior(process: LinearProcess, data: torch.Tensor, parameterization: str, chunk: int):
    """posterior(u, t) -> (w = K⁻¹u, a, E[x_0 | u]) in the basis layout; see the module doc."""
    if data.ndim != 4 or len(data) == 0:
        raise SettingsError(f"data must be a non-empty (N, C, H, W) tensor; got shape {tuple(data.shape)}")
    y0 = process.to_basis(process.data_to_state(data.detach().cpu().to(torch.float64)))  # (N, k, C, H, W)
    if y0[:, 1:].any():
        raise ValueError(f"{process.name}.data_to_state must leave every component but the first at zero")
    # clean states are (x, 0), so μ_i = a ⊙ x_i with a the first column of K⁻¹ mean_coef: sums run over x alone
    x0 = y0[:, :1]
    x_flat = x0.flatten(1)  # (N, D)
    x_sq = x_flat**2

    def posterior(u: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        process.check_state(u)
        if u.shape[1:] != (process.k * x0.shape[2], *x0.shape[3:]):
            raise SettingsError(f"state shape {tuple(u.shape[1:])} does not match the data's state shape")
        tt = _single_time(t)
        K = process.K(tt, parameterization)
        w = blocks.apply(process.blocks(np.linalg.inv(K), x0), process.to_basis(u.detach().cpu().to(torch.float64)))
        a = process.blocks(np.linalg.solve(K, process.mean_coef(tt)), x0)[0, :, :1]  # (k, 1, H, W)
        w_x = (a * w).sum(1).flatten(1)  # w·μ_i = w_x·x_i, (B, D)
        half_sq = 0.5 * x_sq @ (a * a).sum(0).expand(x0.shape[2:]).reshape(-1)  # ½|μ_i|², (N,)
        # streaming softmax: a running maximum keeps exp in range with one exp per logit
        run_max = torch.full((len(w_x),), -torch.inf, dtype=torch.float64)
        total = torch.zeros(len(w_x), dtype=torch.float64)
        weighted = torch.zeros_like(w_x)
        for start in range(0, len(x_flat), chunk):
            xs = x_flat[start:start + chunk]
            logits = w_x @ xs.T - half_sq[start:start + chunk]
            new_max = torch.maximum(run_max, logits.amax(1))  # not max(1): its indices are slow with threads
            decay = torch.exp(run_max - new_max)
            p = torch.exp(logits - new_max[:, None])
            total = total * decay + p.sum(1)
            weighted = weighted * decay[:, None] + p @ xs
            run_max = new_max
        return w, a, (weighted / total[:, None]).reshape(len(w), 1, *x0.shape[2:])

    return posterior


def dirac_eps(process: LinearProcess, point: torch.Tensor, parameterization: str = "R") -> EpsFn:
    """The exact ε when the data is one point (C, H, W): ε = K_t⁻¹(u - m_t) (MATH §1.5)."""
    return exact_eps(process, point[None], parameterization)


def gaussian_eps(process: LinearProcess, variance: float, parameterization: str = "R") -> EpsFn:
    """The exact ε for data x_0 ~ N(0, variance I): ε = Kᵀ C_t⁻¹ u (MATH §8.4 #10)."""
    data_cov = isotropic_data_cov(process, variance)

    def eps_fn(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        process.check_state(u)
        tt = _single_time(t)
        gain = gaussian_gain(process, tt, data_cov, parameterization)
        y = process.to_basis(u.to(torch.float64))
        return process.from_basis(blocks.apply(process.blocks(gain, y), y)).to(u.dtype)

    return eps_fn


def isotropic_data_cov(process: LinearProcess, variance: float) -> np.ndarray:
    """C_0 (M, k, k) of clean states for data x_0 ~ N(0, variance I): the variance on x, zero on the velocity."""
    data_cov = np.zeros((process.modes, process.k, process.k))
    data_cov[:, 0, 0] = variance
    return data_cov


def class_conditional_eps(per_class: Sequence[EpsFn], null: EpsFn | None = None) -> EpsFn:
    """eps_fn(u, t, cond): sample b gets the ε of class cond[b] (per_class[cond[b]]), and the label len(per_class),
    the null condition, gets `null` (e.g. the exact ε of all classes' data together). Chosen per sample on the
    device: every class's ε is computed for the whole batch."""
    models = list(per_class) + ([] if null is None else [null])

    def eps_fn(u: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        outputs = torch.stack([model(u, t) for model in models])
        labels = torch.as_tensor(cond, device=u.device)
        return outputs[labels, torch.arange(len(u), device=u.device)]

    return eps_fn


def marginal_cov(process: LinearProcess, t, data_cov: np.ndarray) -> np.ndarray:
    """C_t = M_t C_0 M_tᵀ + Σ_t for data of covariance C_0 (per mode, state coordinates)."""
    m = process.mean_coef(t)
    return m @ data_cov @ blocks.transpose(m) + process.sigma(t)


def gaussian_gain(process: LinearProcess, t, data_cov: np.ndarray, parameterization: str = "R") -> np.ndarray:
    """The matrix E_t with ε*(u, t) = E_t u for zero-mean Gaussian data: E_t = K_tᵀ C_t⁻¹."""
    K = process.K(t, parameterization)
    return blocks.transpose(np.linalg.solve(marginal_cov(process, t, data_cov), K))

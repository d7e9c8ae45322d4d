"""Deterministic inversion: a state at the end of sampling mapped to its noise, and back.

The probability-flow ODE is a bijection between states at t_end and at t_start. gDDIM of order q integrates
it in either direction with the same coefficient builder: on the increasing grid t_end = t_0 < ... < t_N =
t_start, step i maps u_{t_i} to u_{t_{i+1}} with ε evaluated at the lower-noise end and extrapolated from
the past (lower-noise) evaluations, so inversion costs N model calls, like sampling on the reversed grid.

What is inverted is the ODE part of the sampler: a full state at t_end (VP, BDM: the image itself;
CLD: the image with a velocity, see `image_state`). CLD's final denoising step (t_end -> 0) is not part of
it; it has no inverse. For Dirac data the round trip is exact at any NFE and order (ε is constant along
the ODE, MATH §1.5); otherwise its error measures the integrator's error in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import blocks, coefficients
from .grids import time_grid
from .processes import LinearProcess
from .sampling import EpsFn, check_sampler, run_recursion


def inversion_grid(process: LinearProcess, nfe: int, grid="quadratic", t_start: float | None = None,
                   t_end: float | None = None) -> np.ndarray:
    """The sampling grid of `nfe` steps (no denoising step), increasing: t_end -> t_start."""
    return time_grid(process, nfe, grid, t_start, t_end)[::-1].copy()


def invert(process: LinearProcess, eps_fn: EpsFn, u_end: torch.Tensor, nfe: int, order: int = 0, grid="quadratic",
           t_start: float | None = None, t_end: float | None = None) -> torch.Tensor:
    """The state at t_start whose probability-flow ODE solution passes through u_end at t_end."""
    check_sampler(process, nfe, order=order, grid=grid, denoise=False)  # the ODE part only: no denoising step
    ts = inversion_grid(process, nfe, grid, t_start, t_end)
    return run_recursion(process, eps_fn, u_end, coefficients.exponential_integrator(process, ts, order))


def reconstruct(process: LinearProcess, eps_fn: EpsFn, u_start: torch.Tensor, nfe: int, order: int = 0,
                grid="quadratic", t_start: float | None = None, t_end: float | None = None) -> torch.Tensor:
    """Deterministic gDDIM from u_start at t_start to the state at t_end on the same grid (no denoising step)."""
    check_sampler(process, nfe, order=order, grid=grid, denoise=False)  # the ODE part only: no denoising step
    ts = inversion_grid(process, nfe, grid, t_start, t_end)[::-1].copy()
    return run_recursion(process, eps_fn, u_start, coefficients.exponential_integrator(process, ts, order))


@dataclass(frozen=True)
class RoundTrip:
    noise: torch.Tensor  # the inverted state at t_start
    reconstruction: torch.Tensor  # the state at t_end sampled back from it
    error: float  # RMS per dimension over the data channels (CLD: x only)
    state_error: float  # RMS per dimension over the whole state


def round_trip(process: LinearProcess, eps_fn: EpsFn, u_end: torch.Tensor, nfe: int, order: int = 0,
               grid="quadratic", t_start: float | None = None, t_end: float | None = None) -> RoundTrip:
    """Invert u_end, sample back with the same grid and order, and measure how far it lands from u_end."""
    noise = invert(process, eps_fn, u_end, nfe, order, grid, t_start, t_end)
    back = reconstruct(process, eps_fn, noise, nfe, order, grid, t_start, t_end)
    rms = lambda a, b: float((a.double() - b.double()).pow(2).mean().sqrt())
    data = process.state_to_data
    return RoundTrip(noise, back, rms(data(back), data(u_end)), rms(back, u_end))


def image_state(process: LinearProcess, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A state at t_end for images x (B, C, H, W) to invert.

    VP, BDM: x itself. CLD: x with a velocity drawn from N(0, Σ_vv(t_end)), the velocity law of the forward
    process at t_end (its x-v correlation there is negligible), so that the state looks like one the
    sampler produces. Invert and compare whole states: the velocity is part of what is inverted.
    """
    if process.k == 1:
        return x
    state = process.data_to_state(x)
    z = torch.randn(state.shape, generator=generator, dtype=torch.float64).to(state.device)
    sigma = process.sigma(process.t_end)[0]  # (M, k, k)
    root = np.zeros_like(sigma)
    root[:, 1:, 1:] = blocks.psd_sqrt(sigma[:, 1:, 1:])  # the velocity block only
    noise = process.from_basis(blocks.apply(process.blocks(root, z), process.to_basis(z)))
    return state + noise.to(state.dtype)

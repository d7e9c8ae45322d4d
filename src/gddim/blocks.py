"""Per-mode k x k blocks: the one shape every time-dependent matrix of a process takes.

In float64 numpy a block array has shape (..., M, k, k), M being the number of modes (1 when all
pixels share one system, H*W for per-frequency processes). Applied to torch states it becomes a
tensor of shape (k, k, h, w) acting on a state viewed as (B, k, C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch

BISECTION_HALVINGS = 64  # from a unit interval, 64 halvings reach float64 resolution


def eye(m: int, k: int) -> np.ndarray:
    return np.broadcast_to(np.eye(k), (m, k, k)).copy()


def transpose(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + transpose(a))


def psd_sqrt(p: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD block after symmetrizing and clipping round-off negatives."""
    if p.shape[-1] == 1:  # scalar blocks: a square root, not millions of 1x1 eigen-decompositions
        return np.sqrt(np.clip(p, 0.0, None))
    w, v = np.linalg.eigh(sym(p))
    return (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ transpose(v)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b blockwise; scalar blocks multiply (numpy's matmul loops over millions of 1x1 products slowly)."""
    return a * b if a.shape[-1] == 1 else a @ b


def inv(a: np.ndarray) -> np.ndarray:
    return 1.0 / a if a.shape[-1] == 1 else np.linalg.inv(a)


def solve_right(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ inv(b) without forming the inverse."""
    if a.shape[-1] == 1:  # scalar blocks (BDM's 1024 modes x thousands of times): a division, not LAPACK calls
        return a / b
    return transpose(np.linalg.solve(transpose(b), transpose(a)))


def eps_drift(ggt: np.ndarray, root: np.ndarray) -> np.ndarray:
    """½ GGᵀ K⁻ᵀ for blocks GGᵀ and a square root K of Σ: ε's term in the probability-flow drift and in R's ODE."""
    return 0.5 * ggt @ transpose(np.linalg.inv(root))


def to_torch(a: np.ndarray, mode_shape: tuple[int, int], dtype=torch.float64, device=None) -> torch.Tensor:
    """(..., M, k, k) float64 numpy -> (..., k, k, h, w) torch in the model's dtype."""
    *lead, m, k, _ = a.shape
    h, w = mode_shape
    if m != h * w:
        raise ValueError(f"block array has {m} modes but the mode shape is {mode_shape}")
    t = torch.tensor(np.moveaxis(a, -3, -1))  # (..., k, k, M), a copy: plans kept in memory are read-only
    return t.reshape(*lead, k, k, h, w).to(dtype=dtype, device=device)


def apply(block: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Apply a block (k, k, h, w), or one per sample (B, k, k, h, w), to a state y of shape (B, k, C, H, W)."""
    if block.ndim == 4:
        block = block[None]
    if block.shape[1] == 1:  # scalar per mode: a broadcast multiply is all it takes
        return block * y
    return (block[:, :, :, None] * y[:, None]).sum(dim=2)


def add_applied(out: torch.Tensor, block: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """out + apply(block, y); for scalar blocks one fused multiply-add (the loop's per-step cost)."""
    if block.shape[-3] == 1:
        return torch.addcmul(out, block[None] if block.ndim == 4 else block, y)
    return out + apply(block, y)


def invert_decreasing(f, targets, lo: float, hi: float) -> np.ndarray:
    """The times t in [lo, hi] with f(t) = targets for a function f decreasing in t, by vectorized bisection.

    f takes and returns float64 arrays of the targets' shape; a target outside f's range ends at lo or hi.
    """
    targets = np.asarray(targets, dtype=np.float64)
    lo, hi = np.full_like(targets, lo), np.full_like(targets, hi)
    for _ in range(BISECTION_HALVINGS):
        mid = 0.5 * (lo + hi)
        above = f(mid) > targets
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return 0.5 * (lo + hi)

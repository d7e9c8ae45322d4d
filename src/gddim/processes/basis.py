"""Orthonormal bases in which a process's matrices are block-diagonal per mode."""

from __future__ import annotations

import math

import torch


class IdentityBasis:
    """Pixels are the modes' coordinates; every pixel shares one k x k system."""

    name = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y


def dct_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (rows are frequencies): D @ x is scipy's dct(x, type=2, norm='ortho')."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


class DCTBasis:
    """2-D orthonormal DCT-II over the last two axes (MATH §4.3): y = D_H x D_Wᵀ."""

    name = "dct"

    def __init__(self):
        self._matrices: dict = {}

    def _pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.shape[-2], x.shape[-1], x.dtype, x.device)
        if key not in self._matrices:
            self._matrices[key] = (dct_matrix(key[0], x.dtype, x.device), dct_matrix(key[1], x.dtype, x.device))
        return self._matrices[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = self._pair(x)
        return dh @ x @ dw.T

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        dh, dw = self._pair(y)
        return dh.T @ y @ dw

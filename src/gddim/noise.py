"""Noise keyed on the sample's index: sample k of a generation draws its starting state and every step's noise
from its own generator, seeded from (seed, k).

So a sample does not depend on which batch, shard or process makes it: the same seed gives the same images
whatever the batch size or the number of processes (up to the network's own rounding, which batched kernels
may change with the batch size).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import SettingsError


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s generator: a hash of (seed, index), so that neighbouring samples' streams
    share nothing (manual_seed(seed + index) would give sample k of seed s the stream of sample k-1 of seed s+1)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


class SampleNoise:
    """One generator per sample of a batch; gddim.sample takes it as its `generator`."""

    def __init__(self, seed: int, indices: range | list[int], device=None):
        self.device = torch.device(device if device is not None else "cpu")
        self.generators = [torch.Generator(device=self.device).manual_seed(sample_seed(seed, int(k))) for k in indices]

    def __len__(self) -> int:
        return len(self.generators)

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (batch first), row k from generator k; drawn in float64 and
        cast, as gddim.sampling.standard_normal does."""
        if like.shape[0] != len(self):
            raise SettingsError(f"this noise source has {len(self)} generators, one per sample; the state has "
                                f"{like.shape[0]} samples: build SampleNoise(seed, indices) with one index per sample")
        rows = [torch.randn(like.shape[1:], generator=g, dtype=torch.float64, device=like.device)
                for g in self.generators]
        return torch.stack(rows).to(like.dtype)

    def prior(self, process, shape: tuple[int, int, int], dtype=torch.float32) -> torch.Tensor:
        """Starting states u_T (one per generator) for data of shape (C, H, W), on this noise's device."""
        return torch.cat([process.prior_sample((1, *shape), generator=g, dtype=dtype, device=self.device)
                          for g in self.generators])

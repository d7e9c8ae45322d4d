"""Classifier-free guidance for an ε-model that takes a condition and a null condition."""

from __future__ import annotations

import numpy as np
import torch

from .errors import SettingsError
from .loop import EpsFn, at_times


class ClassifierFreeGuidance:
    """ε_w(u, t, c) = ε(u, t, null) + w (ε(u, t, c) − ε(u, t, null)), both halves in one batched model call.

    model(u, t, **{key: condition}) is the conditional ε-model; `null` is its null condition (a label such as
    the number of classes, or an unconditional embedding), shaped like one sample's condition or like the batch's.
    Pass it to gddim.sample with model_kwargs={key: condition}. Keyword arguments other than the condition go to
    the model too: tensors with one row per sample are doubled along with the batch, anything else as it is.
    w = 1 is the conditional model, w = 0 the unconditional one (exactly: the halves are blended by torch.lerp).
    """

    def __init__(self, model: EpsFn, scale: float, null, key: str = "cond"):
        if not np.isfinite(scale):
            raise SettingsError(f"the guidance scale must be a finite number, got {scale!r}")
        self.model, self.scale, self.null, self.key = model, float(scale), null, key

    def __call__(self, u: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.key not in kwargs:
            raise SettingsError(f"classifier-free guidance needs the condition: pass model_kwargs={{{self.key!r}: ...}}")
        condition = torch.as_tensor(kwargs.pop(self.key), device=u.device)
        null = torch.as_tensor(self.null, dtype=condition.dtype, device=u.device).expand_as(condition)
        both = lambda v: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim and len(v) == len(u) else v
        eps = self.model(both(u), both(t), **{key: both(v) for key, v in kwargs.items()},
                         **{self.key: torch.cat([condition, null])})
        conditional, unconditional = eps.chunk(2)
        return torch.lerp(unconditional, conditional, self.scale)

    def at_times(self, times: np.ndarray, like: torch.Tensor):
        """The wrapped model's preparation for the sampler's call times (gddim.loop)."""
        return at_times(self.model, times, like)

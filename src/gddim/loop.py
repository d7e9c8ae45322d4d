"""How the sampling loop calls the ε-model: conditioning, a per-step callback, compile, autocast, and checks
that never make the host wait for the device.

An ε-model is any callable eps_fn(u, t, **model_kwargs) -> ε with u a state (B, k*C, H, W) in pixel layout and
t a tensor of shape (B,); ε is in R-coordinates (MATH §1.3-1.4) and has the shape of u. Its shape is checked at
each call (host metadata); whether it is finite is recorded on the device and read once, after the loop, by
`CheckedModel.report`, which names the first bad step. A model may offer `at_times(times, like)`, a context
manager told the times the loop will call it at before the loop starts (EpsModel's Gaussian skip uses it to
look its gains up on the device instead of computing them on the host).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import blocks
from .errors import SamplerError, SettingsError
from .processes import LinearProcess

EpsFn = Callable[..., torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelCall:
    """What the loop adds to each model call.

    model_kwargs: keyword arguments passed unchanged to every call (conditioning: class labels, embeddings).
    callback: callback(step, t, state, data_prediction) after every model call, with the state (B, k*C, H, W)
        the model saw at time t and the data prediction x̂ (B, C, H, W) its ε implies (FAST §1: the position
        part of Ψ(t,0)⁻¹(u − R_t ε), for CLD the posterior mean of x_0).
    compile: torch.compile the model (True: torch's default backend; a string: that backend).
    autocast: None, "bf16" or "fp16": the model runs under torch.autocast, the sampler's state keeps its dtype.
    """

    model_kwargs: dict = field(default_factory=dict)
    callback: Callback | None = None
    compile: bool | str = False
    autocast: str | None = None

    def __post_init__(self):
        if not isinstance(self.model_kwargs, dict):
            raise SettingsError(f"model_kwargs must be a dict of keyword arguments, got {type(self.model_kwargs).__name__}")
        if self.callback is not None and not callable(self.callback):
            raise SettingsError("callback must be callable as callback(step, t, state, data_prediction)")
        if not isinstance(self.compile, (bool, str)):
            raise SettingsError(f"compile must be True, False or a torch.compile backend name, got {self.compile!r}")
        if self.autocast is not None and self.autocast not in AUTOCAST:
            raise SettingsError(f"autocast must be None or one of {sorted(AUTOCAST)}, got {self.autocast!r}")


class CheckedModel:
    """Calls eps_fn on basis states (B, k, C, H, W) and returns ε in the basis, in the state's dtype.

    deferred: record finiteness on the device and raise in report() (the loop); else check at every call
    (the float64 host side of scipy's solver, where a NaN must stop the solver at once).
    """

    def __init__(self, process: LinearProcess, eps_fn: EpsFn, call: ModelCall = ModelCall(), deferred: bool = True):
        self.process, self.call, self.deferred = process, call, deferred
        self.model = eps_fn
        self.eps_fn = eps_fn if call.compile is False else \
            torch.compile(eps_fn, **({} if call.compile is True else {"backend": call.compile}))
        self.calls = 0
        self.pending: list[tuple[torch.Tensor, int, float]] = []  # (finite flag on the device, step, t)

    def __call__(self, y: torch.Tensor, t: float, step: int) -> torch.Tensor:
        u = self.process.from_basis(y)
        # times stay float32 or wider even when the state is half precision (a bf16 time is ~2 labels off)
        tt = torch.full((u.shape[0],), t, dtype=torch.promote_types(u.dtype, torch.float32), device=u.device)
        with torch.autocast(u.device.type, AUTOCAST[self.call.autocast]) if self.call.autocast else nullcontext():
            eps = self.eps_fn(u, tt, **self.call.model_kwargs)
        self.calls += 1
        if not isinstance(eps, torch.Tensor) or eps.shape != u.shape:
            got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise SamplerError(f"eps_fn returned {got} at step {step} (t={t:.6g}); expected {tuple(u.shape)}")
        eps = eps.to(u.dtype)
        self.pending.append((torch.isfinite(eps).all(), step, t))
        if not self.deferred:
            self.report()
        eps = self.process.to_basis(eps)
        if self.call.callback is not None:
            self.call.callback(step, t, u, data_prediction(self.process, y, eps, t))
        return eps

    def at_times(self, times: np.ndarray, like: torch.Tensor):
        return at_times(self.model, times, like)

    def report(self) -> None:
        """Raise SamplerError for the first call whose ε was not finite; the one host sync of a loop."""
        if not self.pending:
            return
        finite = torch.stack([flag for flag, _, _ in self.pending]).tolist()
        pending, self.pending = self.pending, []
        if not all(finite):
            _, step, t = pending[finite.index(False)]
            raise SamplerError(f"eps_fn returned NaN or inf at step {step} (t={t:.6g}); "
                               "check the model and its time input")


def at_times(model: EpsFn, times: np.ndarray, like: torch.Tensor):
    """The model's own preparation for the loop's call times (a context manager), if it has one."""
    prepare = getattr(model, "at_times", None)
    return nullcontext() if prepare is None else prepare(np.asarray(times, dtype=np.float64), like)


def host_model(process: LinearProcess, eps_fn: EpsFn, device: torch.device) -> CheckedModel:
    """The checked model for float64 states on the CPU (scipy's side), evaluated on the model's device."""
    return CheckedModel(process, lambda u, t: eps_fn(u.to(device), t.to(device)).to("cpu", torch.float64),
                        deferred=False)


def data_prediction(process: LinearProcess, y: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
    """x̂ (B, C, H, W): the data part of Ψ(t,0)⁻¹(y − R_t ε) for a basis state y and its ε at time t (FAST §1)."""
    denoised = y - blocks.apply(process.blocks(process.R(t)[0], y), eps)
    x_hat = blocks.apply(process.blocks(np.linalg.inv(process.mean_coef(t)[0]), y), denoised)
    return process.state_to_data(process.from_basis(x_hat))

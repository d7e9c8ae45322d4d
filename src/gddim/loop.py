"""The sampling loop: how it calls the ε-model (conditioning, a per-step callback, compile, autocast, checks that
never make the host wait for the device) and how it applies a recursion one model output at a time (Stepper).

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
from tqdm.auto import tqdm

from . import blocks
from .coefficients import Recursion
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
    check_every: read the model outputs' finiteness every this many calls, stopping a run that went bad early
        (one host sync each time); 0: once, after the loop.
    """

    model_kwargs: dict = field(default_factory=dict)
    callback: Callback | None = None
    compile: bool | str = False
    autocast: str | None = None
    check_every: int = 0

    def __post_init__(self):
        if not isinstance(self.model_kwargs, dict):
            raise SettingsError(f"model_kwargs must be a dict of keyword arguments, got {type(self.model_kwargs).__name__}")
        if self.callback is not None and not callable(self.callback):
            raise SettingsError("callback must be callable as callback(step, t, state, data_prediction)")
        if not isinstance(self.compile, (bool, str)):
            raise SettingsError(f"compile must be True, False or a torch.compile backend name, got {self.compile!r}")
        if self.autocast is not None and self.autocast not in AUTOCAST:
            raise SettingsError(f"autocast must be None or one of {sorted(AUTOCAST)}, got {self.autocast!r}")
        if not (isinstance(self.check_every, int) and self.check_every >= 0):
            raise SettingsError(f"check_every must be a whole number of model calls >= 0, got {self.check_every!r}")


class CheckedModel:
    """Calls eps_fn on basis states (B, k, C, H, W) and returns ε in the basis, in the state's dtype; finiteness is
    recorded on the device and raised by report(), which the loop calls at its end (and every call.check_every)."""

    def __init__(self, process: LinearProcess, eps_fn: EpsFn, call: ModelCall = ModelCall()):
        self.process, self.call = process, call
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
        if self.call.check_every and len(self.pending) >= self.call.check_every:
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
    # checked at every call: a NaN must stop scipy's solver at once
    return CheckedModel(process, lambda u, t: eps_fn(u.to(device), t.to(device)).to("cpu", torch.float64),
                        ModelCall(check_every=1))


def data_prediction(process: LinearProcess, y: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
    """x̂ (B, C, H, W): the data part of Ψ(t,0)⁻¹(y − R_t ε) for a basis state y and its ε at time t (FAST §1)."""
    denoised = y - blocks.apply(process.blocks(process.R(t)[0], y), eps)
    x_hat = blocks.apply(process.blocks(np.linalg.inv(process.mean_coef(t)[0]), y), denoised)
    return process.state_to_data(process.from_basis(x_hat))


def run_steps(y: torch.Tensor, model: CheckedModel, stepper: Stepper, generator: torch.Generator | None = None,
              progress: bool = False, first_step: int = 0) -> torch.Tensor:
    """The stepper's remaining steps from the basis state y, the model's steps numbered from first_step."""
    for i in tqdm(range(stepper.index, stepper.steps), disable=not progress, desc="sampling", leave=False):
        y = stepper.step(y, model(y, float(stepper.times[i]), first_step + i), generator)
    return y


class Stepper:
    """A recursion applied one model output at a time: the sampling loop and GDDIMScheduler.step both use it.

    It holds the coefficients cast to the state's dtype and device and the history h. The corrector redoes
    step i-1 once the model output at its predicted end is known; the redone step differs from the predicted
    one (same start, same noise z) only in its history terms, y_i ← y_i + Σ_j D_ij h_j with
    D_i = corrector_i - C_i shifted by one, and step i then applies A_i to it: the two fold into step i's
    history coefficients, C_ij + A_i D_(i-1)j, built once in float64. The history keeps the output at the
    predicted state. States and outputs are in the basis layout (B, k, C, H, W). normal(like, generator) draws
    the noise of the stochastic steps.
    """

    def __init__(self, process: LinearProcess, rec: Recursion, like: torch.Tensor,
                 normal: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]):
        self.A, self.S, self.E, self.Q, self.P, self.C = _on_device(process, rec, like)
        self.times = rec.times
        self.normal = normal
        self.steps, self.index = rec.steps, 0
        self.history: list[torch.Tensor] = []

    def step(self, y: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The state after step `index`, given the state y the step starts from and the model output there."""
        i = self.index
        if i >= self.steps:
            raise IndexError(f"all {self.steps} steps of this recursion are done")
        if self.E is not None:
            eps = blocks.apply(self.E[i], eps)
        if self.Q is not None:
            p = None if self.P is None else self.P[i]
            eps = blocks.add_applied(y if p is None else blocks.apply(p, y), self.Q[i], eps)
        self.history = [eps] + self.history[: self.C.shape[1] - 1]
        noise = None if self.S is None else blocks.apply(self.S[i], self.normal(y, generator))
        self.index = i + 1
        return _step(self.A[i], self.C[i], y, self.history, noise)


def _on_device(process: LinearProcess, rec: Recursion, like: torch.Tensor) -> tuple:
    """(A, S, eps_map, Q, P, C with the corrector folded in) in like's dtype and on its device, made once per plan
    and kept on it: a run of many batches copies its coefficients to the accelerator once, not per batch or step."""
    cache = rec.__dict__.setdefault("_on_device", {})
    key = (like.dtype, like.device)
    if key not in cache:
        cast = lambda a: None if a is None else process.blocks(a, like)
        cache[key] = (*(cast(a) for a in (rec.A, rec.S, rec.eps_map, rec.Q)), _history_maps(rec.P, cast),
                      cast(rec.C if rec.corrector is None else _fold_corrector(rec)))
    return cache[key]


def _history_maps(P: np.ndarray | None, cast) -> list | None:
    """Per step, P on the device, or None where P is the identity (the data form: h = u + Q ε, one multiply-add);
    step by step, since a denoising step appended to a data-form plan has P = 0 while the others keep the identity."""
    if P is None:
        return None
    identity = np.eye(P.shape[-1])
    kept = [not np.array_equal(p, np.broadcast_to(identity, p.shape)) for p in P]
    if not any(kept):
        return None
    on_device = cast(P)
    return [p if keep else None for p, keep in zip(on_device, kept)]


def _fold_corrector(rec: Recursion) -> np.ndarray:
    """Each step's history coefficients with the previous step's correction folded in (see Stepper)."""
    assert rec.corrector.shape[1] >= rec.C.shape[1] + 1, "a corrector row holds the new output and every predictor term"
    predictor = np.zeros_like(rec.corrector)
    predictor[:, 1 : rec.C.shape[1] + 1] = rec.C
    merged = np.zeros_like(rec.corrector)
    merged[:, : rec.C.shape[1]] = rec.C
    merged[1:] += rec.A[1:, None] @ (rec.corrector - predictor)[:-1]
    return merged


def _step(A: torch.Tensor, C: torch.Tensor, y: torch.Tensor, history: list[torch.Tensor], noise) -> torch.Tensor:
    """A y + Σ_j C_j h_j (+ the step's noise)."""
    out = blocks.apply(A, y)
    for c, past in zip(C, history):
        out = blocks.add_applied(out, c, past)
    return out if noise is None else out + noise

"""gDDIM for flow-matching models in diffusers (SD3- and Flux-style pipelines): `GDDIMFlowScheduler`.

It drops in for `FlowMatchEulerDiscreteScheduler`: the same config keys mean the same (num_train_timesteps,
shift, use_dynamic_shifting with mu, base_shift, max_shift, base/max_image_seq_len, shift_terminal,
time_shift_type, Karras / exponential / beta sigmas), the same σ table, timesteps σ·N, set_timesteps(
num_inference_steps, device, sigmas, mu, timesteps), scale_noise, set_begin_index. A step is a step of the
process `FlowMatching` (x_σ = (1-σ) x_0 + σ ε) in the data form, with the model's velocity v turned into
x̂ = x - σ v inside the recursion (multistep.multistep, output="velocity"): solver_order 1 is exactly the Euler
step x + (σ_next - σ) v, higher orders interpolate x̂ as DPM-Solver++ and UniPC do, applied by the same
`sampling.Stepper` as `gddim.sample` and `GDDIMScheduler`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .coefficients import Recursion
from .diffusers import GDDIMScheduler, GDDIMSchedulerOutput, _diffusers_normal
from .errors import SettingsError
from .processes import FlowMatching
from .multistep import check_start
from .noise_levels import DIFFUSERS_SIGMA_SCHEDULES, check_step_count, sigma_schedule
from .sampling import Stepper, integrator
from .scheduler_options import sampler_options

PREDICTION_TYPES = {"flow_prediction": "velocity", "sample": "data"}  # diffusers' name -> the engine's output
TIME_SHIFT_TYPES = ("exponential", "linear")
# keys another scheduler needs to read this config as a flow-matching one (diffusers' from_config drops defaults)
ALWAYS_SHARED = ("shift", "flow_shift", "use_flow_sigmas", "prediction_type")


class GDDIMFlowScheduler(SchedulerMixin, ConfigMixin):
    """gDDIM for flow-matching (rectified-flow) models that predict the velocity, prediction_type="flow_prediction"
    (or the data, "sample").

    solver_order: model outputs combined per step, 1..4 (1 is flow matching's Euler step); the first steps warm
        up with fewer. The default, 2 with the corrector and lower_order_final (UniPC-2's shape), was the most
        robust gDDIM setting on exact velocities (benchmarks/peers_flow_digits): higher orders extrapolate x̂ too
        far over the large last steps of shifted schedules (shift 3) and diverge there.
    use_corrector: redo each step with the model output at its end (UniPC's corrector, no extra model call).
    lower_order_final: on runs of fewer than 15 steps the last step is first order.
    interpolation: the variable x̂ is a polynomial in: "t" (σ) or "sqrt_t" ("logsnr" is infinite at σ = 0, 1).
    lam: gDDIM's stochastic step λ in [0, 1] (MATH §3); 0 is deterministic.
    flow_shift and use_flow_sigmas are UniPC's and DPM-Solver's names: flow_shift is shift (shift decides when
    both are set and differ); use_flow_sigmas must be True. The last step lands on σ = 0, as Euler's does.
    stochastic_sampling (FlowMatchEuler's re-noising) is not supported: a warning names it, and lam is the
    stochastic sampler here. invert_sigmas is refused.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "UniPCMultistepScheduler",
                    "DPMSolverMultistepScheduler"]
    order = 1  # one model call per step(); the history lives inside the scheduler

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float | None = 0.5, max_shift: float | None = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, invert_sigmas: bool = False, shift_terminal: float | None = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 time_shift_type: str = "exponential", stochastic_sampling: bool = False,
                 prediction_type: str = "flow_prediction", solver_order: int = 2, use_corrector: bool = True,
                 lower_order_final: bool = True, interpolation: str = "t", lam: float = 0.0,
                 flow_shift: float | None = None, use_flow_sigmas: bool = True):
        _check_config(self.config)
        resolved = _resolve_shift(shift, flow_shift)
        self.register_to_config(shift=resolved, flow_shift=resolved, use_flow_sigmas=True)
        defaults = set(self.config.get("_use_default_values", []))
        self.register_to_config(_use_default_values=sorted(defaults - set(ALWAYS_SHARED)))
        # the data form (x̂ history) of GDDIMScheduler's options, fed with the model's own output kind
        order, lam, options = sampler_options(solver_order, data=True, use_corrector=use_corrector,
                                              lower_order_final=lower_order_final, interpolation=interpolation,
                                              lam=lam, to_one=False)
        self._options = order, lam, replace(options, output=PREDICTION_TYPES[prediction_type])
        self._shift = resolved
        self.process = FlowMatching()
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1] / num_train_timesteps
        self.sigmas = torch.from_numpy(train if use_dynamic_shifting else self._shifted(train).astype(np.float32))
        self.timesteps = self.sigmas * num_train_timesteps
        self.sigma_min, self.sigma_max = self.sigmas[-1].item(), self.sigmas[0].item()
        self._recursion = self._stepper = None
        self._step_index = self._begin_index = None

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    # the loop's position and the pass-through input scaling are GDDIMScheduler's (the same attributes)
    step_index, begin_index, set_begin_index = (GDDIMScheduler.step_index, GDDIMScheduler.begin_index,
                                                 GDDIMScheduler.set_begin_index)
    __len__, scale_model_input = GDDIMScheduler.__len__, GDDIMScheduler.scale_model_input
    _index_of, _first_index = GDDIMScheduler._index_of, GDDIMScheduler._first_index

    def _shifted(self, sigmas: np.ndarray) -> np.ndarray:
        return self._shift * sigmas / (1 + (self._shift - 1) * sigmas)

    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        """Resolution-dependent shifting: e^μ/(e^μ + (1/t - 1)^σ), or μ/(μ + (1/t - 1)^σ) when linear."""
        scale = math.exp(mu) if self.config.time_shift_type == "exponential" else mu
        return scale / (scale + (1 / t - 1) ** sigma)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None, mu: float | None = None,
                      timesteps: list[float] | None = None) -> None:
        """The σ of each step as FlowMatchEulerDiscreteScheduler computes them, then their coefficients."""
        if self.config.use_dynamic_shifting and mu is None:
            raise SettingsError("use_dynamic_shifting=True needs mu: pass set_timesteps(..., mu=...)")
        levels = self._levels(num_inference_steps, sigmas, mu, timesteps)
        self.num_inference_steps = len(levels)
        self.timesteps = (torch.from_numpy(np.asarray(timesteps, dtype=np.float32)) if timesteps is not None
                          else torch.from_numpy(levels) * self.config.num_train_timesteps).to(device)
        self.sigmas = torch.cat([torch.from_numpy(levels), torch.zeros(1, dtype=torch.float32)])
        self._times = self.sigmas.double().numpy()
        if not np.all(np.isfinite(self._times)) or not np.all(np.diff(self._times) < 0) or self._times[0] > 1 \
                or self._times[-1] < 0:  # written so that a NaN fails it
            raise SettingsError(f"the sigmas must decrease strictly within [0, 1]; got {self._times.tolist()}")
        self._recursion = self._build(0)
        self._stepper = None
        self._step_index = self._begin_index = None

    def _levels(self, num_inference_steps, sigmas, mu, timesteps) -> np.ndarray:
        """The float32 σ of the model calls (FlowMatchEulerDiscreteScheduler's recipe, step by step)."""
        given = [len(x) for x in (sigmas, timesteps) if x is not None]
        if len(set(given + ([num_inference_steps] if num_inference_steps is not None else []))) != 1:
            raise SettingsError("pass num_inference_steps, sigmas or timesteps; when several are given, of one length")
        n_train = self.config.num_train_timesteps
        n = given[0] if given else num_inference_steps
        check_step_count(n, n_train)
        if sigmas is not None:
            levels = np.array(sigmas).astype(np.float32)
            if levels.ndim != 1:
                raise SettingsError(f"sigmas must be a 1-D list of noise levels, got shape {levels.shape}")
        elif timesteps is not None:
            levels = np.array(timesteps).astype(np.float32) / n_train
        else:  # float64 until the end, as diffusers computes them
            levels = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, n) / n_train
        levels = self.time_shift(mu, 1.0, levels) if self.config.use_dynamic_shifting else self._shifted(levels)
        if self.config.shift_terminal:
            one_minus = 1 - levels
            levels = 1 - one_minus / (one_minus[-1] / (1 - self.config.shift_terminal))
        return _spaced(self.config, levels, n).astype(np.float32)

    def _build(self, begin: int) -> Recursion:
        """The recursion of steps begin.. (a loop that starts mid-schedule warms up from there)."""
        order, lam, options = self._options
        check_start(self.process, self._times[begin:], options.output, options.interpolation)
        return integrator(self.process, self._times[begin:], "gddim", order, lam, "R", options)

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = (schedule == torch.as_tensor(timestep, device=schedule.device)).nonzero()
        if len(matches) == 0:
            raise SettingsError(f"timestep {float(timestep)} is not in this scheduler's timesteps {schedule.tolist()}")
        return int(matches[0, 0])

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> GDDIMSchedulerOutput | tuple:
        """One gDDIM step from σ_i to σ_(i+1) given the model's velocity (or data prediction) at σ_i."""
        i = self._index_of(timestep)
        work = torch.promote_types(sample.dtype, torch.float32)  # never step in half precision
        x, out = sample.to(work), model_output.to(work)
        layout = lambda v: v.reshape(1, 1, -1, 1, 1)  # the stepper's (B, k, C, H, W) for one scalar mode
        if self._stepper is None:
            rec = self._recursion if i == 0 else self._build(i)
            self._stepper = Stepper(self.process, rec, x, _diffusers_normal)
        prev = self._stepper.step(layout(x), layout(out), generator).reshape(sample.shape)
        sigma = float(self._times[i])
        x0 = out if self.config.prediction_type == "sample" else torch.add(x, out, alpha=-sigma)
        self._step_index = i + 1
        prev, x0 = prev.to(model_output.dtype), x0.to(model_output.dtype)
        if not return_dict:
            return prev, x0
        return GDDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward process x_σ = σ ε + (1 - σ) x_0 at the σ of `timestep` (image-to-image pipelines)."""
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t, self.timesteps.to(sample.device)) for t in timestep]
        else:
            indices = [self._begin_index if self._step_index is None else self._step_index] * len(timestep)
        sigma = sigmas[indices].reshape(-1, *[1] * (sample.ndim - 1))
        return sigma * noise + (1.0 - sigma) * sample


def _spaced(config, levels: np.ndarray, n: int) -> np.ndarray:
    """Karras, exponential or beta σ between the shifted schedule's end points, as diffusers spaces them."""
    if any(config[name] for name in DIFFUSERS_SIGMA_SCHEDULES):
        return sigma_schedule(config, float(levels[0]), float(levels[-1]), n)
    return levels


def _resolve_shift(shift: float, flow_shift: float | None) -> float:
    """shift, or UniPC's and DPM-Solver's flow_shift when shift is left at 1."""
    if flow_shift is None or flow_shift == shift:
        return float(shift)
    if shift != 1.0:
        warnings.warn(f"shift={shift} decides; flow_shift={flow_shift} is ignored", stacklevel=4)
        return float(shift)
    return float(flow_shift)


def _check_config(config) -> None:
    """Refuse what cannot work, warn about what is ignored, each by its key."""
    if config.prediction_type not in PREDICTION_TYPES:
        raise SettingsError(f"prediction_type {config.prediction_type!r} cannot start at σ = 1, where x_σ is pure "
                            f"noise and ε says nothing about the data; a flow-matching model predicts one of "
                            f"{sorted(PREDICTION_TYPES)}")
    if not config.use_flow_sigmas:
        raise SettingsError("use_flow_sigmas=False asks for a VP schedule; GDDIMFlowScheduler is for flow-matching "
                            "models (gddim.diffusers.GDDIMScheduler is for VP ones)")
    if config.invert_sigmas:
        raise SettingsError("invert_sigmas=True runs σ from 0 to 1 (a reversed convention); GDDIMFlowScheduler needs "
                            "the flow-matching σ from 1 to 0")
    if config.time_shift_type not in TIME_SHIFT_TYPES:
        raise SettingsError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got {config.time_shift_type!r}")
    if sum(bool(config[k]) for k in DIFFUSERS_SIGMA_SCHEDULES) > 1:
        raise SettingsError(f"use at most one of {', '.join(DIFFUSERS_SIGMA_SCHEDULES)}")
    if config.stochastic_sampling:
        warnings.warn("stochastic_sampling (FlowMatchEuler's re-noising) is not supported and is ignored; "
                      "gDDIM's stochastic sampler is lam in (0, 1]", stacklevel=4)

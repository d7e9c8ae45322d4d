"""gDDIM inside diffusers, and diffusers models inside gddim.

- `GDDIMScheduler`: a diffusers scheduler (SchedulerMixin, ConfigMixin) for models trained with diffusers'
  discrete DDPM schedules; multistep order q in 0..3 and stochastic λ in [0, 1].
- `load_unet_eps`: a local `UNet2DModel` folder as a gddim ε-model eps_fn(u, t).

Time convention (both directions). A discrete schedule of N training steps has ᾱ_n = Π_{i<=n} (1 - β_i) at
timestep n = 0..N-1. `DiscreteVP` places timestep n at continuous time t = (n + 1)/N, sets ᾱ(0) = 1, and
defines log ᾱ(t) between these knots by monotone cubic (PCHIP) interpolation: continuously differentiable,
decreasing like the schedule, and exact at every timestep. Single-step coefficients (q = 0, any λ) read ᾱ
at the grid only, so they are exactly DDIM's (λ = 0) and DDPM's posterior step (λ = 1); multistep
coefficients (q > 0) integrate over the interpolant. The network's ε is the process's ε_R, since R_t = √(1-ᾱ_t).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from . import coefficients
from .errors import CheckpointError
from .processes import VP, DiscreteVP
from .processes.base import as_times
from .sampling import MAX_ORDER, check_order_and_lam

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")


def train_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                         beta_schedule: str = "linear", trained_betas=None) -> np.ndarray:
    """ᾱ_n of a diffusers training schedule, as the model saw them (diffusers' float32 values) in float64."""
    if trained_betas is None and beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {BETA_SCHEDULES} or pass trained_betas")
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                   beta_end=beta_end, beta_schedule=beta_schedule, trained_betas=trained_betas)
    return ddpm.alphas_cumprod.double().numpy()


def time_of_alpha_bar(process: VP, alpha_bar, t_max: float = 1.0) -> np.ndarray:
    """The time in [0, t_max] at which a VP process has the given ᾱ, by vectorized bisection (ᾱ decreases in t)."""
    target = np.log(np.asarray(alpha_bar, dtype=np.float64))
    lowest = float(process.log_alpha_bar(t_max)[0])
    if np.any(target > 0) or np.any(target < lowest):
        raise ValueError(f"ᾱ outside the process's range [{np.exp(lowest):.6g}, 1] on t in [0, {t_max}]")
    lo, hi = np.zeros_like(target), np.full_like(target, t_max)
    for _ in range(64):  # 64 halvings reach float64 resolution
        mid = 0.5 * (lo + hi)
        above = process.log_alpha_bar(mid.ravel()).reshape(mid.shape) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return 0.5 * (lo + hi)


@dataclass
class GDDIMSchedulerOutput(BaseOutput):
    """prev_sample: the state at the next (less noisy) timestep; pred_original_sample: x̂_0 from this step's ε."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


@dataclass(frozen=True)
class _Plan:
    """Float64 coefficients of steps begin.. of the current timesteps, as Python floats (cheap to apply)."""

    begin: int
    A: list[float]
    C: list[list[float]]
    S: list[float]


class GDDIMScheduler(SchedulerMixin, ConfigMixin):
    """gDDIM for VP models trained with a diffusers DDPM schedule (MATH §2-§4.1).

    solver_order q in 0..3: exponential Adams-Bashforth on ε (q = 0 is DDIM, q > 0 is DEIS tAB-q); the first
    q steps warm up with orders 0..q-1. lam λ in [0, 1] (with q = 0): the stochastic step of MATH §3.3,
    λ = 1 being DDPM's posterior step. timestep_spacing as in diffusers ("trailing" starts at the last
    training timestep); the final step lands on ᾱ = 1 (set_alpha_to_one) or on ᾱ_0. There is no clipping
    or thresholding of x̂_0: every step is the linear update u_s = A u_t + Σ_j C_j ε_j (+ S z).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # one model call per step(); the multistep history lives inside the scheduler

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: np.ndarray | list[float] | None = None,
                 prediction_type: str = "epsilon", solver_order: int = 0, lam: float = 0.0,
                 timestep_spacing: str = "trailing", steps_offset: int = 0, set_alpha_to_one: bool = True):
        _check_options(prediction_type, solver_order, lam, timestep_spacing)
        self.process = DiscreteVP(train_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                                       trained_betas))
        self.alphas_cumprod = torch.from_numpy(self.process.alphas_cumprod)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.process.alphas_cumprod[0])
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._plan = None
        self._step_index = None
        self._begin_index = None
        self._history: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at timesteps[begin_index] (image-to-image pipelines); the warm-up restarts there."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None) -> None:
        """Choose the timesteps (by spacing, or an explicit decreasing list) and build their coefficients."""
        steps = _timesteps(self.config, num_inference_steps, timesteps)
        self.num_inference_steps = len(steps)
        self.timesteps = torch.from_numpy(steps).to(device)
        t_final = 0.0 if self.config.set_alpha_to_one else self.process.time_of_timestep(0)
        self._times = np.append(self.process.time_of_timestep(steps), t_final)
        ab = self.process.alphas_cumprod[steps]
        self._sqrt_ab, self._sqrt_1mab = np.sqrt(ab).tolist(), np.sqrt(1 - ab).tolist()
        self._plan = self._build_plan(0)
        self._step_index = None
        self._begin_index = None
        self._history = []

    def _build_plan(self, begin: int) -> _Plan:
        ts = self._times[begin:]
        if self.config.lam > 0:
            rec = coefficients.stochastic(self.process, ts, self.config.lam)
        else:
            rec = coefficients.exponential_integrator(self.process, ts, self.config.solver_order)
        S = np.zeros(rec.steps) if rec.S is None else rec.S[:, 0, 0, 0]
        return _Plan(begin=begin, A=rec.A[:, 0, 0, 0].tolist(), C=rec.C[:, :, 0, 0, 0].tolist(), S=S.tolist())

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {int(timestep)} is not in this scheduler's timesteps {self.timesteps.tolist()}")
        self._step_index = int(matches[0, 0])

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> GDDIMSchedulerOutput | tuple:
        """One gDDIM step from `timestep` to the next timestep (or to the final ᾱ after the last one)."""
        if self._plan is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(f"all {self.num_inference_steps} steps are done; call set_timesteps again for a new loop")
        if int(timestep) != int(self.timesteps[i]):
            raise ValueError(f"step() got timestep {int(timestep)} but step {i} of the schedule is at "
                             f"{int(self.timesteps[i])}; call the steps in order of scheduler.timesteps")
        if i != self._plan.begin and not self._history:
            self._plan = self._build_plan(i)  # a loop that starts mid-schedule warms up from there
        plan, j = self._plan, i - self._plan.begin
        eps = self._epsilon(model_output, sample, i)
        self._history = [eps] + self._history[: len(plan.C[j]) - 1]
        prev = plan.A[j] * sample
        for c, past in zip(plan.C[j], self._history):
            prev = prev + c * past
        if plan.S[j] > 0:
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            prev = prev + plan.S[j] * z
        x0 = (sample - self._sqrt_1mab[i] * eps) / self._sqrt_ab[i]
        self._step_index = i + 1
        if not return_dict:
            return prev, x0
        return GDDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        a, s = self._sqrt_ab[i], self._sqrt_1mab[i]
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        if kind == "v_prediction":  # v = a ε - s x_0 and x_t = a x_0 + s ε give ε = a v + s x_t
            return a * model_output + s * sample
        return (sample - a * model_output) / s

    def _per_sample(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index the float64 table on the host: some devices (MPS) hold no float64
        ab = self.alphas_cumprod[timesteps.cpu()].to(device=like.device, dtype=like.dtype)
        ab = ab.reshape(-1, *[1] * (like.ndim - 1))
        return ab.sqrt(), (1 - ab).sqrt()

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε at integer timesteps (one per sample)."""
        a, s = self._per_sample(timesteps, original_samples)
        return a * original_samples + s * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t ε - √(1-ᾱ_t) x_0."""
        a, s = self._per_sample(timesteps, sample)
        return a * noise - s * sample


def _check_options(prediction_type: str, solver_order: int, lam: float, timestep_spacing: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    check_order_and_lam(solver_order, lam, order_name="solver_order (q)")
    if timestep_spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; choose one of {SPACINGS}")


def _timesteps(config, num_inference_steps: int | None, timesteps) -> np.ndarray:
    """diffusers' spacings ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2)."""
    n_train = config.num_train_timesteps
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError("pass exactly one of num_inference_steps or timesteps")
    if timesteps is not None:
        steps = np.asarray(timesteps, dtype=np.int64)
    else:
        n = int(num_inference_steps)
        if not 1 <= n <= n_train:
            raise ValueError(f"num_inference_steps must lie in 1..{n_train} (num_train_timesteps), got {n}")
        if config.timestep_spacing == "linspace":
            steps = np.linspace(0, n_train - 1, n).round()[::-1].astype(np.int64)
        elif config.timestep_spacing == "leading":
            steps = (np.arange(n) * (n_train // n))[::-1].astype(np.int64) + config.steps_offset
        else:
            steps = np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1
    if steps.ndim != 1 or len(steps) == 0 or np.any(np.diff(steps) >= 0) or steps[-1] < 0 or steps[0] >= n_train:
        raise ValueError(f"timesteps must be strictly decreasing integers in 0..{n_train - 1}; got {steps.tolist()}"
                         + (" (steps_offset pushes them past the schedule)" if config.steps_offset else ""))
    return steps.copy()


class UNetEps(torch.nn.Module):
    """A diffusers UNet2DModel as a gddim ε-model for a VP process (module doc for the time convention).

    A call at continuous time t of `process` finds the training timestep with the same ᾱ: exactly
    n = N t - 1 when `process` is the model's own DiscreteVP (the default), otherwise the fractional n
    whose interpolated ᾱ equals the process's ᾱ(t). The UNet takes fractional timesteps through its
    sinusoidal embedding; noise levels below ᾱ_0 map to n in (-1, 0), outside the trained range.
    """

    def __init__(self, unet, schedule: DiscreteVP, prediction_type: str = "epsilon", process: VP | None = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
        process = schedule if process is None else process
        if not isinstance(process, VP):
            raise ValueError(f"a DDPM UNet2DModel predicts the ε of a VP process; got {type(process).__name__} "
                             "(CLD and BDM models are gddim checkpoints)")
        self.unet, self.schedule, self.prediction_type, self.process = unet, schedule, prediction_type, process
        size = unet.config.sample_size
        self.data_channels = unet.config.in_channels
        self.image_size = size if isinstance(size, int) else tuple(size)

    def timesteps(self, t: torch.Tensor) -> torch.Tensor:
        tt = t.detach().double().cpu().numpy()
        if self.process is not self.schedule:
            tt = time_of_alpha_bar(self.schedule, np.exp(self.process.log_alpha_bar(tt)))
        return torch.from_numpy(tt * self.schedule.num_train_timesteps - 1)

    @torch.no_grad()
    def forward(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        # fractional timesteps in float32 (fp16 has a spacing of 0.5 around 600)
        out = unet(u.to(unet.dtype), self.timesteps(t).to(device=u.device, dtype=torch.float32)).sample.to(u.dtype)
        out = out[:, : u.shape[1]]  # learned-variance models append the variance channels
        ab = torch.from_numpy(np.exp(self.process.log_alpha_bar(t.detach().double().cpu().numpy())))
        ab = ab.to(device=u.device, dtype=u.dtype).reshape(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            return a * out + s * u
        return (u - a * out) / s


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether path holds a diffusers UNet2DModel (a pipeline folder with unet/, or the model folder itself)."""
    found = _find(Path(path), "unet", "config.json")
    return found is not None and json.loads(found.read_text()).get("_class_name") == "UNet2DModel"


def _find(folder: Path, sub: str, name: str) -> Path | None:
    for candidate in (folder / sub / name, folder / name):
        if candidate.is_file():
            return candidate
    return None


def load_unet_eps(path: str | Path, process: VP | None = None, schedule: dict | None = None,
                  device: str | torch.device | None = None) -> UNetEps:
    """Load a local diffusers folder (a pipeline with unet/ and scheduler/, or a bare UNet2DModel) as eps_fn.

    The training schedule comes from the folder's scheduler_config.json, or from `schedule` (a scheduler
    config dict); `process` defaults to the model's own DiscreteVP (returned as `.process`).
    """
    folder = Path(path)
    unet_config = _find(folder, "unet", "config.json")
    if unet_config is None:
        raise FileNotFoundError(f"no UNet2DModel config.json in {folder} or {folder / 'unet'}")
    if schedule is None:
        found = _find(folder, "scheduler", "scheduler_config.json")
        if found is None:
            raise FileNotFoundError(f"no scheduler_config.json in {folder} or {folder / 'scheduler'}: pass "
                                    "schedule=<the training scheduler's config dict> to say which ᾱ the model learned")
    try:  # a folder made elsewhere: whatever fails to load is named with the folder
        schedule = json.loads(found.read_text()) if schedule is None else schedule
        known = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        model_schedule = DiscreteVP(train_alphas_cumprod(**{k: schedule[k] for k in known if k in schedule}))
        # safetensors only: diffusion_pytorch_model.bin is a pickle, never loaded
        unet = diffusers.UNet2DModel.from_pretrained(unet_config.parent, use_safetensors=True)
    except (ValueError, TypeError, KeyError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load the diffusers model in {folder}: {reason}") from None
    return UNetEps(unet, model_schedule, schedule.get("prediction_type", "epsilon"), process).to(device).eval()

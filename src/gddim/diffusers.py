"""gDDIM inside diffusers, and diffusers models inside gddim.

- `GDDIMScheduler`: a diffusers scheduler (SchedulerMixin, ConfigMixin) for models trained with diffusers'
  discrete DDPM schedules; every multistep variant of `gddim.sample` (solver_order 1..4, ε or data form,
  corrector, interpolation, lower order at the end) and stochastic λ in [0, 1].
- `load_unet_eps`: a local `UNet2DModel` folder as a gddim ε-model eps_fn(u, t).

Time convention (both directions). A discrete schedule of N training steps has ᾱ_n = Π_{i<=n} (1 - β_i) at
timestep n = 0..N-1. `DiscreteVP` places timestep n at continuous time t = (n + 1)/N, sets ᾱ(0) = 1, and
defines log ᾱ(t) between these knots by monotone cubic (PCHIP) interpolation: continuously differentiable,
decreasing like the schedule, and exact at every timestep. Single-step coefficients (q = 0, any λ) read ᾱ
at the grid only, so they are exactly DDIM's (λ = 0) and DDPM's posterior step (λ = 1); multistep
coefficients (solver_order > 1) integrate over the interpolant. The network's ε is the process's ε_R, since R_t = √(1-ᾱ_t).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .coefficients import Recursion
from .errors import CheckpointError
from .grids import invert_decreasing
from .multistep import INTERPOLATIONS
from .processes import VP, DiscreteVP
from .sampling import MAX_ORDER, Multistep, Stepper, integrator

# GDDIMScheduler()'s sampler when no option is passed (the paper's DDIM-like setting, until measured otherwise)
DEFAULTS = dict(solver_order=1, predict_x0=False, use_corrector=False, lower_order_final=False,
                interpolation="t", lam=0.0)
ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "deis")  # DPM-Solver's and DEIS's names for the data and ε forms
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
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
    return invert_decreasing(lambda t: process.log_alpha_bar(t.ravel()).reshape(t.shape), target, 0.0, t_max)


@dataclass
class GDDIMSchedulerOutput(BaseOutput):
    """prev_sample: the state at the next (less noisy) timestep; pred_original_sample: x̂_0 from this step's ε."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class GDDIMScheduler(SchedulerMixin, ConfigMixin):
    """gDDIM for VP models trained with a diffusers DDPM schedule (MATH §2-§4.1, FAST §1-§4, §6).

    Options named as in diffusers' multistep schedulers mean what they mean there:
    solver_order: model outputs combined per step, 1..4 (1 is DDIM; order q = solver_order - 1 of the
        exponential Adams-Bashforth); the first steps warm up with fewer.
    predict_x0: interpolate the data prediction x̂_0 (DPM-Solver++'s and UniPC's form) instead of ε. A
        DPM-Solver config's algorithm_type says the same ("dpmsolver++": data, "dpmsolver"/"deis": ε);
        when both are passed, predict_x0 decides and a warning names the ignored algorithm_type.
    use_corrector: redo each step with the model output at its end (UniPC's corrector, no extra model call);
        disable_corrector: step indices whose result is not corrected (UniPC's list).
    lower_order_final: on runs of fewer than 15 steps the last step is first order, the one before second.
    final_sigmas_type: "zero" lands on ᾱ = 1, "sigma_min" on ᾱ_0; DDIM's set_alpha_to_one says the same
        and is read when final_sigmas_type is unset (final_sigmas_type decides when both are passed).
    gddim's own: lam λ in [0, 1], the stochastic step of MATH §3.3 (λ = 1 is DDPM's posterior step; with
    solver_order > 1 it needs predict_x0); interpolation "t", "sqrt_t" or "logsnr" (FAST §3).
    timestep_spacing as in diffusers ("trailing" starts at the last training timestep). There is no clipping
    or thresholding of x̂_0: every step is the linear recursion of `gddim.sample`, applied by the same Stepper.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # one model call per step(); the multistep history lives inside the scheduler

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: np.ndarray | list[float] | None = None,
                 prediction_type: str = "epsilon", solver_order: int = DEFAULTS["solver_order"],
                 predict_x0: bool | None = None, algorithm_type: str | None = None,
                 use_corrector: bool = DEFAULTS["use_corrector"], disable_corrector: list[int] | None = None,
                 lower_order_final: bool = DEFAULTS["lower_order_final"],
                 interpolation: str = DEFAULTS["interpolation"], lam: float = DEFAULTS["lam"],
                 timestep_spacing: str = "trailing", steps_offset: int = 0,
                 final_sigmas_type: str | None = None, set_alpha_to_one: bool | None = None):
        data, to_one = _data_form(predict_x0, algorithm_type), _lands_on_one(final_sigmas_type, set_alpha_to_one)
        _check_options(prediction_type, timestep_spacing)
        self._options = _sampler_options(solver_order, data, use_corrector, lower_order_final, interpolation, lam,
                                        to_one)
        self._disabled = _corrector_list(disable_corrector)
        # the resolved values, so that the config means the same to every scheduler that reads it
        self.register_to_config(predict_x0=data, algorithm_type="dpmsolver++" if data else "dpmsolver",
                                final_sigmas_type="zero" if to_one else "sigma_min", set_alpha_to_one=to_one,
                                disable_corrector=self._disabled)
        self._mark_chosen(("predict_x0", "algorithm_type"), ("final_sigmas_type", "set_alpha_to_one"))
        self.process = DiscreteVP(train_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                                       trained_betas))
        self.alphas_cumprod = torch.tensor(self.process.alphas_cumprod)  # a copy: the process's array is read-only
        self.final_alpha_cumprod = 1.0 if to_one else float(self.process.alphas_cumprod[0])
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._recursion = self._stepper = None
        self._step_index = self._begin_index = None

    def _mark_chosen(self, *synonyms: tuple[str, ...]) -> None:
        """A choice made under either name of a pair is a choice of both: X.from_config then reads both.

        (from_config drops the keys the source left at their defaults, so that the target's defaults apply.)
        """
        defaults = set(self.config.get("_use_default_values", []))
        chosen = {name for pair in synonyms if not defaults.issuperset(pair) for name in pair}
        self.register_to_config(_use_default_values=sorted(defaults - chosen))

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
        self._recursion = self._build(0)
        self._stepper = None
        self._step_index = self._begin_index = None

    def _build(self, begin: int) -> Recursion:
        """The recursion of steps begin.. (a loop that starts mid-schedule warms up from there)."""
        order, lam, options = self._options
        rec = integrator(self.process, self._times[begin:], "gddim", order, lam, "R", options)
        return rec.corrector_off([i - begin for i in self._disabled if begin <= i < self.num_inference_steps])

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
        if self._recursion is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(f"all {self.num_inference_steps} steps are done; call set_timesteps again for a new loop")
        if int(timestep) != int(self.timesteps[i]):
            raise ValueError(f"step() got timestep {int(timestep)} but step {i} of the schedule is at "
                             f"{int(self.timesteps[i])}; call the steps in order of scheduler.timesteps")
        work = torch.promote_types(sample.dtype, torch.float32)  # never step in half precision
        x = sample.to(work)
        eps = epsilon_of(self.config.prediction_type, model_output.to(work), x, self._sqrt_ab[i], self._sqrt_1mab[i])
        layout = lambda v: v.reshape(1, 1, -1, 1, 1)  # the stepper's (B, k, C, H, W) for one scalar mode
        if self._stepper is None:
            rec = self._recursion if i == 0 else self._build(i)
            self._stepper = Stepper(self.process, rec, x, _diffusers_normal)
        prev = self._stepper.step(layout(x), layout(eps), generator).reshape(sample.shape)
        x0 = torch.add(x, eps, alpha=-self._sqrt_1mab[i]).div_(self._sqrt_ab[i])
        self._step_index = i + 1
        prev, x0 = prev.to(model_output.dtype), x0.to(model_output.dtype)
        if not return_dict:
            return prev, x0
        return GDDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

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


def _diffusers_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # diffusers' draw: a CPU generator also serves a GPU sample, as in DDPMScheduler
    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def epsilon_of(prediction_type: str, output: torch.Tensor, sample: torch.Tensor, a, s) -> torch.Tensor:
    """ε from a model output of the given kind at x_t = a x_0 + s ε (a = √ᾱ, s = √(1-ᾱ), floats or tensors)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # v = a ε - s x_0 and x_t = a x_0 + s ε give ε = a v + s x_t
        return a * output + s * sample
    return (sample - a * output) / s


def _data_form(predict_x0: bool | None, algorithm_type: str | None) -> bool:
    """predict_x0, else DPM-Solver's algorithm_type, else the default."""
    if algorithm_type is not None and algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type {algorithm_type!r} has no gDDIM counterpart; choose one of {ALGORITHM_TYPES} "
                         "('dpmsolver++' is the data form, the others the ε form), or pass predict_x0 "
                         "(stochastic sampling is lam)")
    if predict_x0 is not None and not isinstance(predict_x0, (bool, np.bool_)):
        raise ValueError(f"predict_x0 must be True or False, got {predict_x0!r}")
    from_algorithm = None if algorithm_type is None else algorithm_type == "dpmsolver++"
    if predict_x0 is None:
        return DEFAULTS["predict_x0"] if from_algorithm is None else from_algorithm
    if from_algorithm is not None and from_algorithm != predict_x0:
        warnings.warn(f"predict_x0={predict_x0} decides the form; algorithm_type={algorithm_type!r} is ignored",
                      stacklevel=3)
    return bool(predict_x0)


def _lands_on_one(final_sigmas_type: str | None, set_alpha_to_one: bool | None) -> bool:
    """final_sigmas_type, else DDIM's set_alpha_to_one, else ᾱ = 1."""
    if final_sigmas_type is not None and final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise ValueError(f"unknown final_sigmas_type {final_sigmas_type!r}; choose one of {FINAL_SIGMAS_TYPES}")
    if set_alpha_to_one is not None and not isinstance(set_alpha_to_one, (bool, np.bool_)):
        raise ValueError(f"set_alpha_to_one must be True or False, got {set_alpha_to_one!r}")
    if final_sigmas_type is None:
        return True if set_alpha_to_one is None else bool(set_alpha_to_one)
    to_one = final_sigmas_type == "zero"
    if set_alpha_to_one is not None and set_alpha_to_one != to_one:
        warnings.warn(f"final_sigmas_type={final_sigmas_type!r} decides the final ᾱ; set_alpha_to_one="
                      f"{set_alpha_to_one} is ignored", stacklevel=3)
    return to_one


def _sampler_options(solver_order: int, data: bool, use_corrector: bool, lower_order_final: bool,
                     interpolation: str, lam: float, to_one: bool) -> tuple[int, float, Multistep]:
    """(q, λ, Multistep options) checked, with the errors in the scheduler's option names."""
    if not (isinstance(solver_order, (int, np.integer)) and 1 <= solver_order <= MAX_ORDER + 1):
        raise ValueError(f"solver_order must be an integer in 1..{MAX_ORDER + 1} (model outputs combined per step; "
                         f"1 is DDIM), got {solver_order!r}")
    for name, value in (("use_corrector", use_corrector), ("lower_order_final", lower_order_final)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {INTERPOLATIONS}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (λ) must lie in [0, 1], got {lam}")
    if lam > 0 and not data and (solver_order > 1 or use_corrector):
        raise ValueError("stochastic gDDIM (lam > 0) with solver_order > 1 or use_corrector extrapolates the data "
                         "prediction: pass predict_x0=True, or solver_order=1 and use_corrector=False")
    if to_one and interpolation == "logsnr" and (solver_order > 1 or use_corrector):
        raise ValueError("interpolation='logsnr' cannot reach ᾱ = 1 (its log-SNR is infinite) with solver_order > 1 "
                         "or the corrector: pass final_sigmas_type='sigma_min', or another interpolation")
    options = Multistep(prediction="data" if data else "eps", corrector=bool(use_corrector),
                        interpolation=interpolation, lower_order_final=bool(lower_order_final))
    return int(solver_order) - 1, float(lam), options


def _corrector_list(disable_corrector) -> list[int]:
    steps = [] if disable_corrector is None else disable_corrector
    if not isinstance(steps, (list, tuple)) or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in steps):
        raise ValueError(f"disable_corrector must be a list of step indices (integers >= 0), got {disable_corrector!r}")
    return sorted(int(i) for i in steps)


def _check_options(prediction_type: str, timestep_spacing: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
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
        return epsilon_of(self.prediction_type, out, u, ab.sqrt(), (1 - ab).sqrt())


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

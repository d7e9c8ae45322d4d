"""gDDIM inside diffusers, and diffusers models inside gddim.

- `GDDIMScheduler`: a diffusers scheduler (SchedulerMixin, ConfigMixin) for models trained with diffusers'
  discrete DDPM schedules; every multistep variant of `gddim.sample` (solver_order 1..4, ε or data form,
  corrector, interpolation, lower order at the end) and stochastic λ in [0, 1], `gddim.sample`'s default when
  no option is passed. Its levels come from gddim.noise_levels, its options are checked in gddim.scheduler_options.
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
from dataclasses import dataclass, replace
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .coefficients import Recursion
from .errors import CheckpointError, MissingFileError, SettingsError
from .noise_levels import check_sigma_schedule, levels, schedule_process, time_of_alpha_bar, train_alphas_cumprod
from .processes import VP, DiscreteVP
from .sampling import Stepper, integrator
from .scheduler_options import (DEFAULTS, PREDICTION_TYPES, check_model_options, corrector_list, data_form, init_keys,
                                lands_on_one, peer_method, sampler_options, warn_unsupported)


@dataclass
class GDDIMSchedulerOutput(BaseOutput):
    """prev_sample: the state at the next (less noisy) timestep; pred_original_sample: this step's x̂_0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class GDDIMScheduler(SchedulerMixin, ConfigMixin):
    """gDDIM for VP models trained with a diffusers DDPM schedule (MATH §2-§4.1, FAST §1-§4, §6).

    With no option it is gddim.sample's default: 2nd-order multistep gDDIM in the data form with the corrector and
    lower order at the end of short runs (solver_order=3, predict_x0=True, use_corrector=True,
    lower_order_final=True); solver_order=1 is DDIM. Options named as in diffusers' schedulers mean what they mean
    there:
    solver_order: model outputs combined per step, 1..4 (order q = solver_order - 1 of the exponential
        Adams-Bashforth); the first steps warm up with fewer.
    predict_x0: interpolate the data prediction x̂_0 (DPM-Solver++'s and UniPC's form) instead of ε. A
        DPM-Solver config's algorithm_type says the same ("dpmsolver++": data, "dpmsolver"/"deis": ε);
        when both are passed, predict_x0 decides and a warning names the ignored algorithm_type.
    use_corrector: redo each step with the model output at its end (UniPC's corrector, no extra model call); unset,
        on unless solver_order=1 (DDIM); disable_corrector: step indices whose result is not corrected (UniPC's list).
    lower_order_final: on runs of fewer than 15 steps the last step is first order, the one before second.
    final_sigmas_type: "zero" lands on ᾱ = 1, "sigma_min" on ᾱ_0; DDIM's set_alpha_to_one says the same
        and is read when final_sigmas_type is unset (final_sigmas_type decides when both are passed).
    timestep_spacing (DDIMScheduler's spacings; DPM-Solver's "linspace" and "leading" differ from them by a step),
        steps_offset; use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas (σ schedules: the
        model hears the nearest timestep, the step uses the exact ᾱ); set_timesteps(timesteps=..., sigmas=...).
        gddim's own use_blend_sigmas: the levels of gddim.sample's default VP grid ("blend", gddim.grids), N calls
        from the first timestep and the landing, the model hearing the nearest timestep as with Karras σ.
    clip_sample / clip_sample_range, thresholding / dynamic_thresholding_ratio / sample_max_value: limits on x̂_0,
        applied as DPM-Solver++ does (DDIM with use_clipped_model_output=True: ε recomputed from the limited x̂_0).
    rescale_betas_zero_snr: ᾱ = 0 at the last training timestep; needs the data form and a v- or sample-predicting
        model (the first step then never divides by ᾱ).
    variance_type: "learned" or "learned_range" models' extra output channels are split off, as DDPM does.
    gddim's own: lam λ in [0, 1], the stochastic step of MATH §3.3 (λ = 1 is DDPM's posterior step; with
    solver_order > 1 it needs predict_x0); interpolation "t", "sqrt_t" or "logsnr" (FAST §3).
    A config of a diffusers multistep scheduler keeps that method's order and form; another scheduler's config key
    that gDDIM does not take gives a warning naming it (gddim.scheduler_options).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # one model call per step(); the multistep history lives inside the scheduler

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: np.ndarray | list[float] | None = None,
                 prediction_type: str = "epsilon", solver_order: int = DEFAULTS["solver_order"],
                 predict_x0: bool | None = None, algorithm_type: str | None = None,
                 use_corrector: bool | None = None, disable_corrector: list[int] | None = None,
                 lower_order_final: bool = DEFAULTS["lower_order_final"],
                 interpolation: str = DEFAULTS["interpolation"], lam: float = DEFAULTS["lam"],
                 timestep_spacing: str = "trailing", steps_offset: int = 0,
                 final_sigmas_type: str | None = None, set_alpha_to_one: bool | None = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 use_blend_sigmas: bool = False, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 rescale_betas_zero_snr: bool = False, variance_type: str | None = None):
        data, to_one = data_form(predict_x0, algorithm_type), lands_on_one(final_sigmas_type, set_alpha_to_one)
        check_model_options(prediction_type, timestep_spacing, variance_type, data, rescale_betas_zero_snr,
                            clip_sample=clip_sample, thresholding=thresholding, use_karras_sigmas=use_karras_sigmas,
                            use_exponential_sigmas=use_exponential_sigmas, use_beta_sigmas=use_beta_sigmas,
                            use_blend_sigmas=use_blend_sigmas)
        check_sigma_schedule(self.config)
        use_corrector = DEFAULTS["use_corrector"] and solver_order != 1 if use_corrector is None else use_corrector
        self._options = sampler_options(solver_order, data, use_corrector, lower_order_final, interpolation, lam,
                                        to_one)
        self._disabled = corrector_list(disable_corrector)
        # the resolved values, so that the config means the same to every scheduler that reads it
        self.register_to_config(predict_x0=data, algorithm_type="dpmsolver++" if data else "dpmsolver",
                                final_sigmas_type="zero" if to_one else "sigma_min", set_alpha_to_one=to_one,
                                use_corrector=use_corrector, disable_corrector=self._disabled)
        self._mark_chosen(("predict_x0", "algorithm_type"), ("final_sigmas_type", "set_alpha_to_one"))
        self._set_schedule(train_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                                trained_betas, rescale_betas_zero_snr))
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._recursion = self._stepper = None
        self._step_index = self._begin_index = None

    def _set_schedule(self, alphas_cumprod: np.ndarray) -> None:
        """The training schedule's tables (float64) and the process whose coefficients the steps use."""
        self.process = schedule_process(alphas_cumprod)
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod)
        self.alphas = self.alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.betas = 1 - self.alphas
        # the training σ until set_timesteps, as in DPM-Solver
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt().float()
        self.final_alpha_cumprod = 1.0 if self.config.set_alpha_to_one else float(alphas_cumprod[0])

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' reading of a config, plus the order and form of a multistep peer's config that left them at
        its defaults, and a warning naming the keys gDDIM does not take (from_config drops them silently)."""
        passed = dict(kwargs)
        init_dict, unused, hidden = super().extract_init_dict(config_dict, **kwargs)
        warn_unsupported(dict(config_dict), init_keys(cls), passed)
        for key, value in peer_method(dict(config_dict), init_dict).items():
            init_dict.setdefault(key, value)
        return init_dict, unused, hidden

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
                      timesteps: list[int] | str | Path | None = None, sigmas: list[float] | None = None) -> None:
        """Choose the levels and build their coefficients; pass exactly one of num_inference_steps (spaced by
        timestep_spacing or the σ schedule), timesteps (decreasing integers, or the path of a grid file tuned for
        this schedule by gddim tune-grid: its times are the model calls and its last time the landing) or sigmas
        (decreasing σ = √((1-ᾱ)/ᾱ) within the schedule's range)."""
        lv = levels(self.config, self.process, self.alphas_cumprod.numpy(), num_inference_steps, timesteps, sigmas)
        self.num_inference_steps = len(lv.timesteps)
        self.timesteps = torch.from_numpy(lv.timesteps).to(device)
        self.sigmas = torch.from_numpy(lv.sigmas).float()
        self._times, self.final_alpha_cumprod = lv.times, float(lv.alpha_bars[-1])
        self._sqrt_ab, self._sqrt_1mab = np.sqrt(lv.alpha_bars[:-1]).tolist(), np.sqrt(1 - lv.alpha_bars[:-1]).tolist()
        self._recursion = self._build(0)
        self._stepper = None
        self._step_index = self._begin_index = None

    def _build(self, begin: int) -> Recursion:
        """The recursion of steps begin.. (a loop that starts mid-schedule warms up from there)."""
        order, lam, options = self._options
        times = self._times[begin:]
        rec = integrator(self.process, times, "gddim", order, lam, "R", options)
        rec = rec.corrector_off([i - begin for i in self._disabled if begin <= i < self.num_inference_steps])
        return _data_history(rec, self.process.mean_coef(times)) if options.prediction == "data" else rec

    def _index_of(self, timestep) -> int:
        """The index of this step, checked against the order of scheduler.timesteps."""
        if self._recursion is None:
            raise SettingsError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self._first_index(timestep)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise SettingsError(f"all {self.num_inference_steps} steps are done; call set_timesteps again for a new loop")
        if float(timestep) != float(self.timesteps[i]):  # float: the flow scheduler's timesteps are σ·1000
            raise SettingsError(f"step() got timestep {float(timestep):g} but step {i} of the schedule is at "
                                f"{float(self.timesteps[i]):g}; call the steps in order of scheduler.timesteps")
        return i

    def _first_index(self, timestep) -> int:
        matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(matches) == 0:
            raise SettingsError(f"timestep {float(timestep):g} is not in this scheduler's timesteps "
                                f"{self.timesteps.tolist()}")
        return int(matches[0, 0])

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> GDDIMSchedulerOutput | tuple:
        """One gDDIM step from `timestep` to the next level (or to the landing after the last one).

        It computes in float32 or wider and returns the model output's dtype."""
        i = self._index_of(timestep)
        work = torch.promote_types(sample.dtype, torch.float32)  # never step in half precision
        x = sample.to(work)
        x0, eps = self._predictions(self._own_channels(model_output, sample).to(work), x, i)
        layout = lambda v: v.reshape(1, 1, -1, 1, 1)  # the stepper's (B, k, C, H, W) for one scalar mode
        if self._stepper is None:
            rec = self._recursion if i == 0 else self._build(i)
            self._stepper = Stepper(self.process, rec, x, _diffusers_normal)
        history = x0 if self._options[2].prediction == "data" else eps
        prev = self._stepper.step(layout(x), layout(history), generator).reshape(sample.shape)
        self._step_index = i + 1
        prev, x0 = prev.to(model_output.dtype), x0.to(model_output.dtype)
        if not return_dict:
            return prev, x0
        return GDDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _own_channels(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """A learned-variance model's output without its variance channels (DDPM's split)."""
        if self.config.variance_type in ("learned", "learned_range") and model_output.shape[1] == 2 * sample.shape[1]:
            return model_output[:, : sample.shape[1]]
        return model_output

    def _predictions(self, output: torch.Tensor, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε) of step i, x̂_0 clipped or thresholded and ε recomputed from it; never divides by
        ᾱ unless the model predicts ε (a zero-SNR schedule refuses that)."""
        a, s = self._sqrt_ab[i], self._sqrt_1mab[i]
        kind = self.config.prediction_type
        if kind == "epsilon":
            eps, x0 = output, torch.add(x, output, alpha=-s).div_(a)
        elif kind == "v_prediction":  # v = a ε - s x_0 and x_t = a x_0 + s ε
            eps, x0 = a * output + s * x, a * x - s * output
        else:
            eps, x0 = (x - a * output) / s, output
        limited = self._limit(x0)
        return (x0, eps) if limited is x0 else (limited, (x - a * limited) / s)

    def _limit(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Imagen: per sample, the ratio-quantile of |x̂_0| clamped to [1, sample_max_value]
        bounds and rescales it), else clipping to ±clip_sample_range, else x0 itself."""
        if self.config.thresholding:
            flat = x0.reshape(len(x0), -1).abs()
            bound = torch.quantile(flat, self.config.dynamic_thresholding_ratio, dim=1)
            bound = bound.clamp(1, self.config.sample_max_value).reshape(-1, *[1] * (x0.ndim - 1))
            return torch.maximum(torch.minimum(x0, bound), -bound) / bound
        if self.config.clip_sample:
            return x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0

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


def _data_history(rec: Recursion, mean_coefs: np.ndarray) -> Recursion:
    """The data form's recursion with x̂_0 itself as history item (the model gives it without dividing by ᾱ):
    gddim.sample keeps M_i x̂_i and folds M⁻¹ into C; here M is folded back, in float64."""
    n, width = rec.C.shape[:2]
    back = np.arange(n)[:, None] - np.arange(width)[None, :]  # C[i, j] multiplies the item of step i - j
    C = rec.C @ mean_coefs[back]
    redo = None if rec.corrector is None else \
        rec.corrector @ mean_coefs[np.arange(n)[:, None] + 1 - np.arange(rec.corrector.shape[1])[None, :]]
    return replace(rec, C=C, corrector=redo, P=None, Q=None)


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
            raise SettingsError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
        process = schedule if process is None else process
        if not isinstance(process, VP):
            raise SettingsError(f"a DDPM UNet2DModel predicts the ε of a VP process; got {type(process).__name__}: "
                                "pass a VP (or no process, for the model's own schedule); CLD and BDM models are "
                                "gddim checkpoints")
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
    if found is None:
        return False
    try:  # an unreadable config.json is left to the checkpoint loader, which names the file and the fault
        config = json.loads(found.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "UNet2DModel"


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
        raise MissingFileError(f"no UNet2DModel config.json in {folder} or {folder / 'unet'}: name a diffusers "
                               "pipeline folder (with unet/) or a UNet2DModel folder saved by save_pretrained")
    if schedule is None:
        found = _find(folder, "scheduler", "scheduler_config.json")
        if found is None:
            raise MissingFileError(f"no scheduler_config.json in {folder} or {folder / 'scheduler'}, so the ᾱ "
                                   "schedule the model learned is unknown: save its training scheduler there "
                                   "(scheduler.save_pretrained), or from Python pass load_unet_eps(..., "
                                   "schedule=<its config dict>)")
    try:  # a folder made elsewhere: whatever fails to load is named with the folder
        schedule = json.loads(found.read_text()) if schedule is None else schedule
        known = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr")
        # the scheduler's own process, so that a grid tuned here fits GDDIMScheduler.set_timesteps
        model_schedule = schedule_process(train_alphas_cumprod(**{k: schedule[k] for k in known if k in schedule}))
        # safetensors only: diffusion_pytorch_model.bin is a pickle, never loaded
        unet = diffusers.UNet2DModel.from_pretrained(unet_config.parent, use_safetensors=True)
    except (ValueError, TypeError, KeyError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load the diffusers model in {folder}: {reason}") from None
    return UNetEps(unet, model_schedule, schedule.get("prediction_type", "epsilon"), process).to(device).eval()

"""GDDIMScheduler's options: checking them, resolving synonyms, and reading other schedulers' configs.

Switching a pipeline's scheduler goes through from_config, which drops the keys another scheduler left at their
defaults and, silently, every key GDDIMScheduler does not take. Here both are made explicit: a config of a
diffusers multistep scheduler keeps that method's order and form, and a key gDDIM has no use for is named in a
warning unless its value asks for what gDDIM does anyway (NEUTRAL).
"""

from __future__ import annotations

import inspect
import math
import warnings

import diffusers
import numpy as np
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

from .errors import SettingsError
from .multistep import INTERPOLATIONS
from .noise_levels import SPACINGS
from .sampling import DEFAULT_ORDER, FAST_DEFAULTS, MAX_ORDER, Multistep

# GDDIMScheduler()'s sampler when no option is passed: gddim.sample's default (q = DEFAULT_ORDER, data form,
# corrector, lower order at the end), in diffusers' names
DEFAULTS = dict(solver_order=DEFAULT_ORDER + 1, predict_x0=FAST_DEFAULTS.prediction == "data",
                use_corrector=FAST_DEFAULTS.corrector, lower_order_final=FAST_DEFAULTS.lower_order_final,
                interpolation=FAST_DEFAULTS.interpolation, lam=0.0)
ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "deis")  # DPM-Solver's and DEIS's names for the data and ε forms
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# DDPM's variances for its stochastic step; gDDIM's λ = 1 step has the posterior variance, DDPM's "fixed_small"
VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
OWN_VARIANCE = (None, "fixed_small", "learned", "learned_range")  # learned variances: split off and not used
# keys of other schedulers that gDDIM does not take, at the values that ask for nothing gDDIM does not do
NEUTRAL = {"euler_at_final": False, "use_lu_lambdas": False, "use_flow_sigmas": False, "flow_shift": 1.0,
           "lambda_min_clipped": -math.inf, "use_dynamic_shifting": False, "solver_p": None, "sigma_min": None,
           "sigma_max": None, "shift_terminal": None, "interpolation_type": "linear", "timestep_type": "discrete",
           "skip_prk_steps": True}
# keys whose every value names a peer's own approximation of the integral that gDDIM computes exactly, or a detail
# of a mode gDDIM does not have (time shifting without dynamic shifting)
REPLACED = ("solver_type", "time_shift_type")


def data_form(predict_x0: bool | None, algorithm_type: str | None) -> bool:
    """predict_x0, else DPM-Solver's algorithm_type, else the default."""
    if algorithm_type is not None and algorithm_type not in ALGORITHM_TYPES:
        raise SettingsError(f"algorithm_type {algorithm_type!r} has no gDDIM counterpart; choose one of "
                            f"{ALGORITHM_TYPES} ('dpmsolver++' is the data form, the others the ε form), or pass "
                            "predict_x0 (stochastic sampling is lam)")
    if predict_x0 is not None and not isinstance(predict_x0, (bool, np.bool_)):
        raise SettingsError(f"predict_x0 must be True or False, got {predict_x0!r}")
    from_algorithm = None if algorithm_type is None else algorithm_type == "dpmsolver++"
    if predict_x0 is None:
        return DEFAULTS["predict_x0"] if from_algorithm is None else from_algorithm
    if from_algorithm is not None and from_algorithm != predict_x0:
        warnings.warn(f"predict_x0={predict_x0} decides the form; algorithm_type={algorithm_type!r} is ignored",
                      stacklevel=4)
    return bool(predict_x0)


def lands_on_one(final_sigmas_type: str | None, set_alpha_to_one: bool | None) -> bool:
    """final_sigmas_type, else DDIM's set_alpha_to_one, else ᾱ = 1."""
    if final_sigmas_type is not None and final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise SettingsError(f"unknown final_sigmas_type {final_sigmas_type!r}; choose one of {FINAL_SIGMAS_TYPES}")
    if set_alpha_to_one is not None and not isinstance(set_alpha_to_one, (bool, np.bool_)):
        raise SettingsError(f"set_alpha_to_one must be True or False, got {set_alpha_to_one!r}")
    if final_sigmas_type is None:
        return True if set_alpha_to_one is None else bool(set_alpha_to_one)
    to_one = final_sigmas_type == "zero"
    if set_alpha_to_one is not None and set_alpha_to_one != to_one:
        warnings.warn(f"final_sigmas_type={final_sigmas_type!r} decides the final ᾱ; set_alpha_to_one="
                      f"{set_alpha_to_one} is ignored", stacklevel=4)
    return to_one


def sampler_options(solver_order: int, data: bool, use_corrector: bool, lower_order_final: bool,
                    interpolation: str, lam: float, to_one: bool) -> tuple[int, float, Multistep]:
    """(q, λ, Multistep options) checked, with the errors in the scheduler's option names."""
    if not (isinstance(solver_order, (int, np.integer)) and 1 <= solver_order <= MAX_ORDER + 1):
        raise SettingsError(f"solver_order must be an integer in 1..{MAX_ORDER + 1} (model outputs combined per "
                            f"step; 1 is DDIM), got {solver_order!r}")
    _check_flags(use_corrector=use_corrector, lower_order_final=lower_order_final)
    if interpolation not in INTERPOLATIONS:
        raise SettingsError(f"unknown interpolation {interpolation!r}; choose one of {INTERPOLATIONS}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)) or not 0.0 <= lam <= 1.0:
        raise SettingsError(f"lam (λ) must be a number in [0, 1], got {lam!r}")
    if lam > 0 and not data and (solver_order > 1 or use_corrector):
        raise SettingsError("stochastic gDDIM (lam > 0) with solver_order > 1 or use_corrector extrapolates the data "
                            "prediction: pass predict_x0=True, or solver_order=1 and use_corrector=False")
    if to_one and interpolation == "logsnr" and (solver_order > 1 or use_corrector):
        raise SettingsError("interpolation='logsnr' cannot reach ᾱ = 1 (its log-SNR is infinite) with solver_order > 1"
                            " or the corrector: pass final_sigmas_type='sigma_min', or another interpolation")
    options = Multistep(prediction="data" if data else "eps", corrector=bool(use_corrector),
                        interpolation=interpolation, lower_order_final=bool(lower_order_final))
    return int(solver_order) - 1, float(lam), options


def _check_flags(**flags) -> None:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise SettingsError(f"{name} must be True or False, got {value!r}")


def corrector_list(disable_corrector) -> list[int]:
    steps = [] if disable_corrector is None else disable_corrector
    if not isinstance(steps, (list, tuple)) or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in steps):
        raise SettingsError(f"disable_corrector must be a list of step indices (integers >= 0), got "
                            f"{disable_corrector!r}")
    return sorted(int(i) for i in steps)


def check_model_options(prediction_type: str, timestep_spacing: str, variance_type: str | None, data: bool,
                        zero_snr: bool, **flags) -> None:
    """The model's output, the spacing, the data-prediction limits and a zero-terminal-SNR schedule."""
    if prediction_type not in PREDICTION_TYPES:
        raise SettingsError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    if timestep_spacing not in SPACINGS:
        raise SettingsError(f"unknown timestep_spacing {timestep_spacing!r}; choose one of {SPACINGS}")
    if variance_type not in VARIANCE_TYPES:
        raise SettingsError(f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}")
    if variance_type not in OWN_VARIANCE:
        warnings.warn(f"GDDIMScheduler ignores variance_type={variance_type!r}: its stochastic step (lam) has the "
                      "posterior variance ('fixed_small')", stacklevel=4)
    _check_flags(rescale_betas_zero_snr=zero_snr, **flags)
    if zero_snr and prediction_type == "epsilon":
        raise SettingsError("a zero-terminal-SNR schedule (rescale_betas_zero_snr) has ᾱ = 0 at its first step, "
                            "where ε says nothing about the data: it needs prediction_type 'v_prediction' or 'sample'")
    if zero_snr and not data:
        raise SettingsError("the ε form divides by ᾱ, which is 0 at the first step of a zero-terminal-SNR schedule "
                            "(rescale_betas_zero_snr): pass predict_x0=True (the data form)")


def init_keys(scheduler_class) -> set[str]:
    return set(inspect.signature(scheduler_class.__init__).parameters) - {"self", "kwargs"}


def peer_method(config: dict, init: dict) -> dict:
    """The order, form and corrector of the diffusers multistep scheduler a config comes from, where the config
    left them at that scheduler's defaults (and from_config therefore dropped them)."""
    source = _source_class(config)
    if source is None or "solver_order" not in init_keys(source):
        return {}
    defaults = {k: p.default for k, p in inspect.signature(source.__init__).parameters.items()}
    method = {"solver_order": defaults["solver_order"], "use_corrector": "disable_corrector" in defaults}
    if "predict_x0" not in init and "algorithm_type" not in init:
        method["predict_x0"] = defaults.get("predict_x0", defaults.get("algorithm_type") == "dpmsolver++")
    return method


def _source_class(config: dict):
    """The diffusers scheduler a config comes from: named in a saved config, recognised by its keys in memory."""
    if "_class_name" in config:
        return getattr(diffusers, str(config["_class_name"]), None)
    public = {k for k in config if not k.startswith("_")}
    peers = (getattr(diffusers, e.name) for e in KarrasDiffusionSchedulers)
    return next((peer for peer in peers if init_keys(peer) == public), None)


def warn_unsupported(config: dict, ours: set[str], passed: dict) -> None:
    """A warning that names every key of `config` that gDDIM does not take and whose value is not neutral, and every
    keyword passed beside the config that is not an option (diffusers would drop both silently)."""
    chosen = set(config) - set(config.get("_use_default_values", [])) - set(passed)
    ignored = {k: config[k] for k in chosen if not k.startswith("_") and k not in ours and k not in REPLACED
               and not (k in NEUTRAL and config[k] == NEUTRAL[k])}
    ignored.update({k: v for k, v in passed.items() if k not in ours})
    if ignored:
        named = ", ".join(f"{k}={ignored[k]!r}" for k in sorted(ignored))
        warnings.warn(f"GDDIMScheduler ignores the config key(s) {named}: gDDIM has no such option; the sampler runs "
                      "without them", stacklevel=4)

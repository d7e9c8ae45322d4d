"""gddim: gDDIM samplers for diffusion models on any linear forward process (VP, CLD, BDM, flow matching, your own).

The names below load their modules (and torch) on first use, so that the `gddim` command parses its
arguments, and answers --help, without importing torch.
"""

from __future__ import annotations

import importlib

from .errors import GddimError, SamplerError

__version__ = "0.1.0"

_LAZY = {"dirac_eps": "exact", "exact_data": "exact", "exact_eps": "exact", "gaussian_eps": "exact",
         "time_grid": "grids",
         **{name: "processes" for name in ("BDM", "CLD", "FlowMatching", "VP", "DiscreteVP", "LinearProcess",
                                           "LinearSDE", "process_from_config")},
         **{name: "sampling" for name in ("plan", "reference_ode", "sample")},
         "GDDIMScheduler": "diffusers"}  # diffusers finds a saved pipeline's scheduler as gddim.GDDIMScheduler

__all__ = ["VP", "DiscreteVP", "CLD", "BDM", "FlowMatching", "LinearSDE", "LinearProcess", "process_from_config",
           "sample", "plan", "reference_ode", "time_grid", "exact_eps", "exact_data", "dirac_eps", "gaussian_eps",
           "SamplerError", "GddimError"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'gddim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

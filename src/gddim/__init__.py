"""gddim: gDDIM samplers for diffusion models on any linear forward process (VP, CLD, BDM, your own)."""

from .exact import dirac_eps, exact_eps, gaussian_eps
from .grids import time_grid
from .processes import BDM, CLD, VP, DiscreteVP, LinearProcess, LinearSDE, process_from_config
from .sampling import SamplerError, plan, reference_ode, sample

__version__ = "0.1.0"

__all__ = ["VP", "DiscreteVP", "CLD", "BDM", "LinearSDE", "LinearProcess", "process_from_config", "sample", "plan",
           "reference_ode", "time_grid", "exact_eps", "dirac_eps", "gaussian_eps", "SamplerError"]

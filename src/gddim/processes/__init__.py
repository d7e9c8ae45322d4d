"""Linear forward processes: VP, CLD, BDM and user-defined ones, all of one shape."""

from .base import LinearProcess
from .basis import DCTBasis, IdentityBasis, dct_matrix
from .bdm import BDM
from .cld import CLD
from .general import LinearSDE
from .vp import VP, DiscreteVP

PROCESSES = {"vp": VP, "cld": CLD, "bdm": BDM}
# config() names of every process class; a DiscreteVP needs its schedule, so it is not built by name alone
_BY_CONFIG_NAME = {**PROCESSES, DiscreteVP.name: DiscreteVP}


def process_from_config(config: dict) -> LinearProcess:
    """Rebuild a process from the dict its config() wrote (e.g. into a checkpoint)."""
    config = dict(config)
    name = config.pop("process", None)
    if name not in _BY_CONFIG_NAME:
        raise ValueError(f"unknown process {name!r} in config; known: {sorted(_BY_CONFIG_NAME)}")
    return _BY_CONFIG_NAME[name](**config)


__all__ = ["LinearProcess", "VP", "DiscreteVP", "CLD", "BDM", "LinearSDE", "IdentityBasis", "DCTBasis", "dct_matrix",
           "PROCESSES", "process_from_config"]

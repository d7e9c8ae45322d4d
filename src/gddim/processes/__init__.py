"""Linear forward processes: VP, CLD, BDM and user-defined ones, all of one shape."""

from .base import LinearProcess
from .basis import DCTBasis, IdentityBasis, dct_matrix
from .bdm import BDM
from .cld import CLD
from .general import LinearSDE
from .vp import VP

PROCESSES = {"vp": VP, "cld": CLD, "bdm": BDM}


def process_from_config(config: dict) -> LinearProcess:
    """Rebuild a process from the dict its config() wrote (e.g. into a checkpoint)."""
    config = dict(config)
    name = config.pop("process", None)
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r} in config; known: {sorted(PROCESSES)}")
    return PROCESSES[name](**config)


__all__ = ["LinearProcess", "VP", "CLD", "BDM", "LinearSDE", "IdentityBasis", "DCTBasis", "dct_matrix",
           "PROCESSES", "process_from_config"]

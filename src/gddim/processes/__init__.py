"""Linear forward processes: VP, CLD, BDM and user-defined ones, all of one shape."""

from ..errors import SettingsError
from .base import LinearProcess
from .basis import DCTBasis, IdentityBasis, dct_matrix
from .bdm import BDM
from .cld import CLD
from .flow import EPS_MODEL_T_START, FlowMatching
from .general import LinearSDE
from .vp import VP, DiscreteVP

PROCESSES = {"vp": VP, "cld": CLD, "bdm": BDM, "flow": FlowMatching}
# config() names of every process class; a DiscreteVP needs its schedule, so it is not built by name alone
_BY_CONFIG_NAME = {**PROCESSES, DiscreteVP.name: DiscreteVP}


def make_process(name: str, image_size: int | tuple[int, int]) -> LinearProcess:
    """The process `name` (a key of PROCESSES) for an ε-network, with its default parameters; BDM's DCT basis fits
    the images, and flow matching starts where an ε-model still sees the data (flow.EPS_MODEL_T_START)."""
    if name not in PROCESSES:
        raise SettingsError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    if name == "flow":
        return FlowMatching(t_start=EPS_MODEL_T_START)
    return BDM(image_size=image_size) if name == "bdm" else PROCESSES[name]()


def process_from_config(config: dict) -> LinearProcess:
    """Rebuild a process from the dict its config() wrote (e.g. into a checkpoint)."""
    config = dict(config)
    name = config.pop("process", None)
    if name not in _BY_CONFIG_NAME:
        raise SettingsError(f"unknown process {name!r} in config; known: {sorted(_BY_CONFIG_NAME)}")
    return _BY_CONFIG_NAME[name](**config)


__all__ = ["LinearProcess", "VP", "DiscreteVP", "CLD", "BDM", "LinearSDE", "FlowMatching", "IdentityBasis", "DCTBasis", "dct_matrix",
           "PROCESSES", "make_process", "process_from_config"]

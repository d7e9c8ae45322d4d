"""Grid files (times tuned to one model, one process and one NFE) and the tuned default grids shipped as data.

A grid file is JSON (never pickle):
    {"format": "gddim-grid", "version": 1, "times": [t_0 > ... > t_N], "nfe": NFE, "steps": N,
     "process": process.config(), "tuned_on": {how the grid was found}}
The shipped defaults (gddim/tuned/<process>.json) hold one tuned grid per step count 1..N_max for the process's
default end times; grid="tuned" maps them to any t_start, t_end through the normalized √t coordinate
(in which the quadratic grid is uniform) and, for more steps than stored, interpolates the warp of the
N_max grid linearly in i/N, which keeps every grid strictly decreasing.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from .atomic import read_json_record, write_json
from .errors import SettingsError
from .processes import LinearProcess

FORMAT, VERSION = "gddim-grid", 1
TUNED_FORMAT = "gddim-tuned-grids"
TUNED_DIR = Path(__file__).parent / "tuned"


def _json_ready(obj):
    """What JSON turns obj into (tuples -> lists), so that stored and live configs compare."""
    return json.loads(json.dumps(obj))


def grid_record(times: np.ndarray, nfe: int, process: LinearProcess, tuned_on: dict) -> dict:
    times = np.asarray(times, dtype=np.float64)
    return {"format": FORMAT, "version": VERSION, "times": times.tolist(), "nfe": int(nfe), "steps": len(times) - 1,
            "process": _json_ready(process.config()), "tuned_on": _json_ready(tuned_on)}


def write_grid_file(path: str | Path, record: dict) -> Path:
    """Write a grid_record atomically (a temporary file renamed into place)."""
    return write_json(path, record)


def read_grid_file(path: str | Path) -> dict:
    """A grid file's record, every field checked; a clear SettingsError names what is wrong."""
    path = Path(path).expanduser()
    record = read_json_record(path, "grid file", FORMAT, VERSION, SettingsError, "; make one with gddim tune-grid")
    missing = [key for key in ("times", "nfe", "steps", "process") if key not in record]
    if missing:
        raise SettingsError(f"grid file {path} lacks the field(s) {missing}")
    times = record["times"]
    if not (isinstance(times, list) and len(times) >= 2 and all(isinstance(t, (int, float)) for t in times)):
        raise SettingsError(f"grid file {path}: \"times\" must be a list of at least 2 numbers")
    times = np.asarray(times, dtype=np.float64)
    if not (np.all(np.isfinite(times)) and np.all(np.diff(times) < 0) and times[-1] > 0):
        raise SettingsError(f"grid file {path}: \"times\" must be positive and strictly decreasing")
    if not isinstance(record["nfe"], int) or record["steps"] != len(times) - 1:
        raise SettingsError(f"grid file {path}: \"nfe\" must be an integer and \"steps\" the number of intervals of "
                         f"\"times\" ({len(times) - 1}), got nfe={record['nfe']!r}, steps={record['steps']!r}")
    if not isinstance(record["process"], dict):
        raise SettingsError(f"grid file {path}: \"process\" must be the process's config (a JSON object)")
    return {**record, "times": times}


def grid_file_times(path: Path, process: LinearProcess, nfe: int) -> np.ndarray:
    """The times of a grid file, refused unless it was tuned for this process's config and this NFE."""
    record = read_grid_file(path)
    if record["process"] != _json_ready(process.config()):
        raise SettingsError(f"grid file {path} was tuned for the process {record['process']}, not for "
                         f"{process.config()}; tune a grid for this process with gddim tune-grid")
    if record["nfe"] != nfe:
        raise SettingsError(f"grid file {path} was tuned for nfe={record['nfe']}, not nfe={nfe}; sample with "
                         f"nfe={record['nfe']} or tune a grid for nfe={nfe}")
    return record["times"]


@lru_cache(maxsize=None)
def _tuned_defaults(name: str) -> tuple[dict, dict[int, np.ndarray]]:
    path = TUNED_DIR / f"{name}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in TUNED_DIR.glob("*.json"))
        raise SettingsError(f"no tuned grid ships for process {name!r} (only for {shipped}); tune one for your model "
                         "with gddim.tuning.tune_grid or gddim tune-grid")
    record = read_json_record(path, "tuned grids", TUNED_FORMAT, VERSION, SettingsError)  # a package file, checked too
    return record, {int(n): np.asarray(ts, dtype=np.float64) for n, ts in record["grids"].items()}


def to_unit(times: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    """The normalized √t coordinate: 1 at t_start, 0 at t_end."""
    return (np.sqrt(times) - np.sqrt(t_end)) / (np.sqrt(t_start) - np.sqrt(t_end))


def from_unit(w: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    times = (np.sqrt(t_end) + w * (np.sqrt(t_start) - np.sqrt(t_end))) ** 2
    times[0], times[-1] = t_start, t_end  # exact endpoints despite the square's round-off
    return times


def tuned_grid(process: LinearProcess, n_steps: int, t_start: float, t_end: float) -> np.ndarray:
    """The shipped tuned grid of `process`'s kind with n_steps steps, mapped to [t_end, t_start]."""
    record, grids = _tuned_defaults(process.config()["process"])  # a LinearSDE's own name may be any word
    own_start, own_end = record["process"]["t_start"], record["process"]["t_end"]
    if n_steps in grids:
        w = to_unit(grids[n_steps], own_start, own_end)
    else:  # more steps than stored: the finest stored grid's warp, read at i/N
        finest = max(grids)
        w = np.interp(np.arange(n_steps + 1) / n_steps, np.arange(finest + 1) / finest,
                      to_unit(grids[finest], own_start, own_end))
    return from_unit(w, t_start, t_end)

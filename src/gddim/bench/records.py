"""What every benchmark measures and stores: errors against a reference, counted model calls, the float64 reference
solution of the probability-flow ODE, the data set, the machine, and the JSON result file."""

from __future__ import annotations

import math
import os
import platform
import time

import numpy as np
import torch

from ..data import load_images
from ..errors import DataError
from ..metrics import rms_error  # noqa: F401 (the benchmarks read every error measure from here)
from ..processes import LinearProcess
from ..sampling import EpsFn, reference_ode


def benchmark_images(dataset: str, split: str = "all", image_size: int | None = None) -> torch.Tensor:
    """The data set whose empirical distribution is the exact model; split "all" joins train and test."""
    if split != "all":
        return load_images(dataset, split, image_size)
    parts = [load_images(dataset, "train", image_size)]
    try:
        parts.append(load_images(dataset, "test", image_size))
    except DataError:  # folders and .npz files hold a single split
        pass
    return torch.cat(parts)


def median_sample_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """The median over samples of each sample's RMS gap: unlike rms_error, not set by a few samples that end on
    another training image than the reference's (with an exact score of finite data, one of 256 gives 0.03)."""
    per_sample = torch.sqrt(torch.mean((x.double() - reference.double()).flatten(1) ** 2, dim=1))
    return float(torch.median(per_sample))


def data_error(x: torch.Tensor, data: torch.Tensor, chunk: int = 8192) -> float:
    """Mean over samples of the RMS-per-dimension distance to the nearest data point."""
    flat, points = x.double().flatten(1), data.double().flatten(1)
    nearest = torch.full((len(flat),), torch.inf, dtype=torch.float64)
    for start in range(0, len(points), chunk):
        dist = torch.cdist(flat, points[start:start + chunk], compute_mode="donot_use_mm_for_euclid_dist")
        nearest = torch.minimum(nearest, dist.min(1).values)
    return float((nearest / math.sqrt(flat.shape[1])).mean())


class CountingEps:
    """An ε-model that counts its calls; reset() returns the count so far and starts again."""

    def __init__(self, eps_fn: EpsFn):
        self.eps_fn, self.calls = eps_fn, 0

    def __call__(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.eps_fn(u, t)

    def reset(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def reference_solution(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, rtol: float) -> tuple[torch.Tensor, dict]:
    """x of the probability-flow ODE at tolerance rtol/2, and how far the solve at rtol is from it."""
    solutions, info = [], {}
    for tol in (rtol, rtol / 2):
        counting = CountingEps(eps_fn)
        start = time.perf_counter()
        solutions.append(reference_ode(process, counting, u_T, rtol=tol, atol=tol))
        info[f"rtol={tol:g}"] = {"model_calls": counting.calls, "seconds": round(time.perf_counter() - start, 2)}
    info["rms_difference_rtol_vs_half"] = rms_error(solutions[0], solutions[1])
    return solutions[1], info


def machine_info(**extra) -> dict:
    """What a benchmark ran on (plus the caller's extra fields), stored beside its numbers."""
    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "load_average_1min": os.getloadavg()[0], **extra}

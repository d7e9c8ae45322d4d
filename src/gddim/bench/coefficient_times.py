"""Coefficient build time for a new grid from a cold start (BENCHMARKS.md §3); `gddim bench coefficients`."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..errors import SettingsError
from ..processes import PROCESSES, make_process
from ..sampling import cached_plan, plan
from ..spec import SamplerSpec
from .sweeps import COEFFICIENT_NFES, COEFFICIENT_VARIANTS
from .records import machine_info

COEFFICIENT_ORDERS = (0, 1, 2, 3)
CLOCKS = (("s", time.perf_counter), ("cpu_s", time.process_time))  # wall-clock, and CPU time of this process


def timed_specs(orders: tuple[int, ...], lam: float, variants: tuple[str, ...] = ()) -> list[SamplerSpec]:
    """gddim of each order (deterministic, R), stochastic gddim at λ = lam (q = 0), then the variants' specs."""
    return [SamplerSpec("gddim", q) for q in orders] + [SamplerSpec("gddim", lam=lam)] + [
        SamplerSpec.parse(v) for v in variants]


def coefficient_build_times(processes: tuple[str, ...] = tuple(PROCESSES), nfes: tuple[int, ...] = COEFFICIENT_NFES,
                            orders: tuple[int, ...] = COEFFICIENT_ORDERS, lam: float = 0.5, repeats: int = 5,
                            bdm_image_size: int = 32, command: str | None = None, progress: bool = True,
                            variants: tuple[str, ...] = COEFFICIENT_VARIANTS) -> dict:
    """Seconds to build one sampler's coefficients for a new grid from a cold start, medians over repeats.

    Every repeat builds a fresh process, so CLD's R_t solve is inside `total`; it is also timed alone
    (`r_solve`, the fresh process and its first R call) and `coefficients` is the rest (sampling.plan).
    Wall-clock (`*_s`) and CPU time of this process (`*_cpu_s`, less disturbed by other jobs on a shared
    machine) are both reported, for the samplers of `timed_specs`.
    """
    if repeats < 1:
        raise SettingsError(f"repeats must be >= 1, got {repeats}")
    jobs = [(name, nfe, spec) for name in processes for nfe in nfes for spec in timed_specs(orders, lam, variants)]
    records = []
    for name, nfe, spec in tqdm(jobs, disable=not progress, desc="coefficient build"):
        times = np.array([_cold_build(name, nfe, spec, bdm_image_size) for _ in range(repeats)])  # (repeats, 2, 2)
        record = {"process": name, "nfe": nfe, "sampler": spec.label, "repeats": repeats}
        for clock, (suffix, _) in enumerate(CLOCKS):
            record[f"total_{suffix}"] = float(np.median(times[:, clock].sum(1)))
            record[f"r_solve_{suffix}"] = float(np.median(times[:, clock, 0]))
            record[f"coefficients_{suffix}"] = float(np.median(times[:, clock, 1]))
        records.append(record)
    return {"benchmark": "coefficient build time from a cold start (BENCHMARKS.md §3)",
            "bdm_image_size": bdm_image_size, "records": records, "summary": _slowest(records, processes),
            "machine": machine_info(device="cpu"), "command": command}


def _slowest(records: list[dict], processes: tuple[str, ...]) -> dict:
    """Per process: the slowest median build (CPU time), where it was, and the median R solve."""
    summary = {}
    for name in processes:
        mine = [r for r in records if r["process"] == name]
        worst = max(mine, key=lambda r: r["total_cpu_s"])
        summary[name] = {"slowest_total_cpu_s": worst["total_cpu_s"], "its_total_s": worst["total_s"],
                         "at": {k: worst[k] for k in ("nfe", "sampler")},
                         "median_r_solve_cpu_s": float(np.median([r["r_solve_cpu_s"] for r in mine]))}
    return summary


def _cold_build(name: str, nfe: int, spec: SamplerSpec, bdm_image_size: int) -> list[list[float]]:
    """[[wall, cpu] seconds for a fresh process and its first R call, [wall, cpu] for sampling.plan after it]."""
    cached_plan.cache_clear()  # equal processes share plans: a cold start keeps none from the last repeat
    start = [clock() for _, clock in CLOCKS]
    process = make_process(name, (bdm_image_size, bdm_image_size))
    process.R(process.t_end)
    solved = [clock() for _, clock in CLOCKS]
    plan(process, nfe, **spec.options())
    done = [clock() for _, clock in CLOCKS]
    return [[solved[i] - start[i], done[i] - solved[i]] for i in range(len(CLOCKS))]

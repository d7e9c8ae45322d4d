"""Benchmarks as library functions: the exact-score sampler sweep (BENCHMARKS.md §1) and coefficient build times (§3).

The exact-score benchmark drives every sampler with the exact ε of a finite data set, so its errors belong
to the sampler alone:

- path error (deterministic samplers): RMS over batch and data dimensions between the sampler's x and a float64
  reference solution of the probability-flow ODE from the same u_T (CLD's velocity dropped);
- data error (every sampler): the RMS-per-dimension distance from each sample to its nearest data point,
  averaged over the batch;
- acceleration factor: for a baseline's data error at the largest NFE (the target), that NFE divided by the
  smallest NFE of the sweep at which a sampler's data error is at or below the target.

`gddim bench exact|coefficients` (gddim.cli.bench) writes what these functions return.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .coefficients import denoising_step
from .data import DataError, load_images
from .errors import SettingsError
from .exact import exact_eps
from .grids import steps_for_nfe
from .processes import PROCESSES, LinearProcess, make_process
from .sampling import DEFAULT_ORDER, EpsFn, SamplerError, plan, reference_ode, run_recursion, sample
from .sweeps import COEFFICIENT_NFES, COEFFICIENT_VARIANTS, NFES, REFERENCE_RTOL

COEFFICIENT_ORDERS = (0, 1, 2, 3)
L_VS_R_NFES = (10, 20, 50)
SMALL_NFES = (5, 10, 20)
BASELINES = ("em", "euler", "sscs", "ancestral")  # whose data error at the largest NFE is a target
ANCESTRAL_PROCESSES = ("vp", "bdm")  # DDPM's and BDM's own sampler; the posterior step = gddim at λ = 1
RECORD_FIELDS = ("process", "method", "order", "lam", "parameterization", "nfe", "path_error", "data_error")


@dataclass(frozen=True)
class Variant:
    """One sampler configuration of the sweep: the paper's samplers, and gddim.sample's default (paper=False)."""

    method: str
    order: int = 0
    lam: float = 0.0
    parameterization: str = "R"
    paper: bool = True

    @property
    def deterministic(self) -> bool:
        return self.lam == 0

    @property
    def label(self) -> str:
        if self.method != "gddim":
            return self.method
        if not self.paper:
            return "gddim default"
        if self.lam > 0:
            return f"gddim λ={self.lam:g}"
        return f"gddim q={self.order} {self.parameterization}"

    def fits(self, process: LinearProcess, nfe: int) -> bool:
        """Whether `nfe` leaves the q + 1 integrator steps that order q needs."""
        needed = self.order + 1 if self.paper else 1  # the default lowers its order to fit
        return nfe > int(process.denoise) and steps_for_nfe(process, nfe) >= needed

    @classmethod
    def of_record(cls, record: dict) -> Variant:
        return cls(record["method"], record["order"], record["lam"], record["parameterization"],
                   record.get("paper", True))

    def options(self) -> dict:
        """Keyword arguments of gddim.sample: the default sampler takes none, a paper's sampler its order and λ."""
        if not self.paper:
            return {"method": self.method}
        return {"method": self.method, "order": self.order, "lam": self.lam, "parameterization": self.parameterization}


def sweep_variants(process_name: str) -> list[Variant]:
    """Every sampler the exact-score benchmark runs on a process (ancestral is added as an alias, not run)."""
    variants = [Variant("gddim", DEFAULT_ORDER, paper=False)] + [Variant("gddim", q) for q in range(4)]
    variants += [Variant("gddim", q, parameterization="L") for q in (0, 2)]
    variants += [Variant("gddim", lam=lam) for lam in (0.5, 1.0)]
    variants += [Variant("euler"), Variant("em", lam=1.0)]
    if process_name == "cld":
        variants.append(Variant("sscs", lam=1.0))
    return variants


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


def rms_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean((x.double() - reference.double()) ** 2)))


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


def run_variant(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, variant: Variant, nfe: int,
                seed: int) -> torch.Tensor:
    """One sampler run; every stochastic run draws the same noise stream (seed) so that runs are paired."""
    generator = torch.Generator().manual_seed(seed)
    return sample(process, eps_fn, u_T, nfe, generator=generator, **variant.options())


def _record(process_name: str, variant: Variant, nfe: int, path_err: float | None, data_err: float | None) -> dict:
    return {"process": process_name, **asdict(variant), "nfe": nfe, "path_error": path_err, "data_error": data_err}


def exact_score_benchmark(dataset: str = "digits", out_dir: str | Path | None = None,
                          processes: tuple[str, ...] = tuple(PROCESSES), nfes: tuple[int, ...] = NFES,
                          batch: int = 256, seed: int = 0, split: str = "all", image_size: int | None = None,
                          rtol: float = REFERENCE_RTOL, data_points: int | None = None, command: str | None = None,
                          progress: bool = True) -> dict:
    """Run every sampler of `sweep_variants` at every NFE on the exact ε of `dataset` (BENCHMARKS.md §1).

    data_points keeps the first N images only. Returns the results dict; with out_dir, also writes
    results.json and one PNG per process there.
    """
    if batch < 1 or not nfes or min(nfes) < 1 or (data_points is not None and data_points < 1):
        raise SettingsError(f"need batch >= 1, positive NFEs and data_points >= 1; got {batch=}, {nfes=}, {data_points=}")
    started = time.perf_counter()
    data = benchmark_images(dataset, split, image_size)[:data_points].double()
    processes, nfes = tuple(processes), tuple(sorted(set(int(n) for n in nfes)))
    built = {name: make_process(name, tuple(data.shape[-2:])) for name in processes}
    runs = [(name, v, n) for name in processes for v in sweep_variants(name) for n in nfes if v.fits(built[name], n)]
    bar = tqdm(total=sum(n for *_, n in runs), unit="NFE", disable=not progress, desc="exact-score sweep")
    records, references, seconds = [], {}, {}
    for name, process in built.items():
        process_start = time.perf_counter()
        process_runs = [(v, n) for p, v, n in runs if p == name]
        new_records, references[name] = _sweep_process(name, process, data, process_runs, batch, seed, rtol, bar)
        records += new_records
        seconds[name] = round(time.perf_counter() - process_start, 1)
    bar.close()
    result = {
        "benchmark": "exact-score (BENCHMARKS.md §1)",
        "dataset": dataset, "split": split, "data_points": len(data), "image_shape": list(data.shape[1:]),
        "batch": batch, "seed": seed, "nfes": list(nfes),
        "processes": {name: process.config() for name, process in built.items()},
        "reference": {"ode": f"DOP853 (scipy) in float64 at rtol = atol = {rtol / 2:g}, checked against {rtol:g}",
                      **references},
        "definitions": {
            "path_error": "sqrt(mean over batch and data dimensions of (x - x_ref)^2); deterministic samplers only",
            "data_error": "mean over the batch of ||x - nearest data point|| / sqrt(dimensions)",
            "acceleration": "target = a baseline's data error at the largest NFE; nfe = smallest swept NFE with "
                            "data error <= target; factor = largest NFE / nfe",
            "ancestral": "records copied from method='gddim', lam=1 (the same posterior step: sampling.plan builds "
                         "both with coefficients.stochastic at λ = 1), not recomputed",
            "data_error_of_exact_marginal": "data error of data points perturbed to t_end by the process (and "
                                            "denoised for CLD): the floor a perfect sampler reaches",
            "stochastic_noise": f"every stochastic run uses torch.Generator seed {seed + 1}; u_T uses seed {seed}",
        },
        "records": records,
        "summary": summarize(records, {name: info["data_error_of_reference"] for name, info in references.items()}),
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "machine": machine_info(device="cpu (the exact ε runs in float64 on the CPU)"),
        "command": command,
    }
    if out_dir is not None:
        write_exact_results(result, Path(out_dir))
    return result


def _sweep_process(name: str, process: LinearProcess, data: torch.Tensor, runs: list[tuple[Variant, int]], batch: int,
                   seed: int, rtol: float, bar) -> tuple[list[dict], dict]:
    """The records of one process and what its reference is: the ODE solve and the data-error floors."""
    eps_fn = exact_eps(process, data)
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    bar.set_postfix_str(f"{name} reference ODE")
    x_ref, info = reference_solution(process, eps_fn, u_T, rtol)
    info["data_error_of_reference"] = data_error(x_ref, data)
    info["data_error_of_exact_marginal"] = marginal_data_error(process, eps_fn, data, batch, seed)
    records = []
    for variant, nfe in runs:
        bar.set_postfix_str(f"{name} {variant.label} NFE {nfe}")
        records.append(_measure(name, process, eps_fn, u_T, variant, nfe, seed + 1, x_ref, data))
        bar.update(nfe)
    if name in ANCESTRAL_PROCESSES:
        records += ancestral_aliases(records, name)
    return records, info


def marginal_data_error(process: LinearProcess, eps_fn: EpsFn, data: torch.Tensor, batch: int, seed: int) -> float:
    """The data error of a perfect sampler: data points perturbed to t_end (then CLD's denoising step)."""
    generator = torch.Generator().manual_seed(seed)
    x0 = data[torch.randint(len(data), (batch,), generator=generator)]
    u, _ = process.perturb(x0, torch.full((batch,), process.t_end, dtype=torch.float64), generator=generator)
    if process.denoise:
        u = run_recursion(process, eps_fn, u, denoising_step(process, process.t_end))
    return data_error(process.state_to_data(u), data)


def _measure(name: str, process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, variant: Variant, nfe: int,
             seed: int, x_ref: torch.Tensor, data: torch.Tensor) -> dict:
    try:
        x = run_variant(process, eps_fn, u_T, variant, nfe, seed)
    except SamplerError:  # the sampler left the region where ε is finite: it diverged at this NFE
        return _record(name, variant, nfe, None, None) | {"diverged": True}
    path_err = rms_error(x, x_ref) if variant.deterministic else None
    return _record(name, variant, nfe, path_err, data_error(x, data))


def ancestral_aliases(records: list[dict], process_name: str) -> list[dict]:
    """The gddim λ = 1 records of a process, named method='ancestral'."""
    posterior = Variant("gddim", lam=1.0)
    return [r | {"method": "ancestral"} for r in records
            if r["process"] == process_name and Variant.of_record(r) == posterior]


# ---- summary --------------------------------------------------------------------------------------


def _by_label(records: list[dict], process_name: str, field: str) -> dict[str, dict[int, float]]:
    """{sampler label: {nfe: value}} for one process, leaving out missing values."""
    table: dict[str, dict[int, float]] = {}
    for r in records:
        if r["process"] == process_name and r[field] is not None:
            table.setdefault(Variant.of_record(r).label, {})[r["nfe"]] = r[field]
    return table


def acceleration_factors(records: list[dict], floors: dict[str, float] | None = None) -> dict:
    """Per process and baseline: the target data error and, per sampler, the NFE reaching it and the factor.

    floors (per process, the reference ODE solution's own data error) flag targets below it: deterministic
    samplers converge to that floor, so they cannot reach such a target at any NFE.
    """
    out = {}
    for name in dict.fromkeys(r["process"] for r in records):
        errors = _by_label(records, name, "data_error")
        for baseline in (b for b in BASELINES if b in errors):
            ref_nfe = max(errors[baseline])
            target = errors[baseline][ref_nfe]
            samplers = {}
            for label, by_nfe in errors.items():
                if label == baseline:
                    continue
                reached = [n for n in sorted(by_nfe) if by_nfe[n] <= target]
                nfe = reached[0] if reached else None
                samplers[label] = {"nfe": nfe, "factor": ref_nfe / nfe if nfe else None}
            entry = {"target_data_error": target, "samplers": samplers}
            if floors and name in floors:
                entry |= {"reference_data_error": floors[name], "below_reference": target < floors[name]}
            out.setdefault(name, {})[f"{baseline}@{ref_nfe}"] = entry
    return out


def l_vs_r(records: list[dict], nfes: tuple[int, ...] = L_VS_R_NFES) -> dict:
    """Path errors of the R and L parameterizations at the same order and NFE, and their ratio L/R."""
    out = {}
    for name in dict.fromkeys(r["process"] for r in records):
        paths = _by_label(records, name, "path_error")
        for q in (0, 2):
            r_err, l_err = paths.get(f"gddim q={q} R", {}), paths.get(f"gddim q={q} L", {})
            for n in (n for n in nfes if n in r_err and n in l_err):
                out.setdefault(name, {}).setdefault(str(n), {})[f"q={q}"] = {
                    "R": r_err[n], "L": l_err[n], "L/R": l_err[n] / r_err[n] if r_err[n] else None}
    return out


def deterministic_vs_stochastic(records: list[dict], nfes: tuple[int, ...] = SMALL_NFES) -> dict:
    """Data errors of gddim at λ = 0 (q = 0 and 2), 0.5 and 1 at small NFE."""
    labels = ("gddim q=0 R", "gddim q=2 R", "gddim λ=0.5", "gddim λ=1")
    out = {}
    for name in dict.fromkeys(r["process"] for r in records):
        errors = _by_label(records, name, "data_error")
        for n in nfes:
            row = {label: errors[label][n] for label in labels if n in errors.get(label, {})}
            if row:
                out.setdefault(name, {})[str(n)] = row
    return out


def summarize(records: list[dict], floors: dict[str, float] | None = None) -> dict:
    return {"acceleration": acceleration_factors(records, floors), "l_vs_r_path_error": l_vs_r(records),
            "deterministic_vs_stochastic_data_error": deterministic_vs_stochastic(records)}


def format_summary(summary: dict) -> str:
    """The acceleration factors and L-vs-R path errors as plain text, one line per entry."""
    lines = []
    for name, targets in summary["acceleration"].items():
        for target, entry in targets.items():
            note = (f"; below the reference ODE's own {entry['reference_data_error']:.4g}: out of reach of "
                    "deterministic samplers" if entry.get("below_reference") else "")
            lines.append(f"{name}: target {target} (data error {entry['target_data_error']:.4g}{note})")
            for label, hit in entry["samplers"].items():
                if label.startswith("gddim"):
                    reach = f"NFE {hit['nfe']} ({hit['factor']:.3g}x)" if hit["nfe"] else "not reached"
                    lines.append(f"    {label:<14} {reach}")
    for name, by_nfe in summary["l_vs_r_path_error"].items():
        for nfe, by_order in by_nfe.items():
            text = ", ".join(f"{q}: R {e['R']:.3g} L {e['L']:.3g}" for q, e in by_order.items())
            lines.append(f"{name}: path error at NFE {nfe}: {text}")
    for name, by_nfe in summary["deterministic_vs_stochastic_data_error"].items():
        for nfe, row in by_nfe.items():
            lines.append(f"{name}: data error at NFE {nfe}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return "\n".join(lines)


# ---- output -----------------------------------------------------------------------------------------


def machine_info(**extra) -> dict:
    """What a benchmark ran on (plus the caller's extra fields), stored beside its numbers."""
    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "load_average_1min": os.getloadavg()[0], **extra}


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_exact_results(result: dict, out_dir: Path) -> None:
    write_json(out_dir / "results.json", result)
    for name in result["processes"]:
        floor = result["reference"][name]["data_error_of_exact_marginal"]
        plot_process(result["records"], name, out_dir / f"{name}.png", result["dataset"], floor)


def plot_process(records: list[dict], process_name: str, path: Path, dataset: str, floor: float | None = None) -> None:
    """Path error and data error against NFE (log-log), one line (and one colour) per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(_by_label(records, process_name, "data_error"))
    colours = dict(zip(labels, plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, field in zip(axes, ("path_error", "data_error")):
        for label, by_nfe in _by_label(records, process_name, field).items():
            nfe = sorted(by_nfe)
            style = "-" if label.startswith("gddim") else "--"
            ax.loglog(nfe, [by_nfe[n] for n in nfe], style, marker="o", markersize=3, label=label, color=colours[label])
        ax.set_xlabel("NFE")
        ax.set_ylabel(field.replace("_", " ") + " (RMS per dimension)")
        ax.grid(True, which="both", alpha=0.3)
    if floor is not None:
        axes[1].axhline(floor, color="black", linestyle=":", label="exact samples of p(t_end)")
    axes[0].set_title(f"{process_name.upper()}: distance to the probability-flow ODE solution")
    axes[1].set_title(f"{process_name.upper()}: distance to the nearest {dataset} point")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- coefficient build time (BENCHMARKS.md §3) --------------------------------------------------------


def coefficient_build_times(processes: tuple[str, ...] = tuple(PROCESSES), nfes: tuple[int, ...] = COEFFICIENT_NFES,
                            orders: tuple[int, ...] = COEFFICIENT_ORDERS, lam: float = 0.5, repeats: int = 5,
                            bdm_image_size: int = 32, command: str | None = None, progress: bool = True,
                            variants: tuple = COEFFICIENT_VARIANTS) -> dict:
    """Seconds to build one sampler's coefficients for a new grid from a cold start, medians over repeats.

    Every repeat builds a fresh process, so CLD's R_t solve is inside `total`; it is also timed alone
    (`r_solve`, the fresh process and its first R call) and `coefficients` is the rest (sampling.plan).
    Wall-clock (`*_s`) and CPU time of this process (`*_cpu_s`, less disturbed by other jobs on a shared
    machine) are both reported. Configurations: gddim of each order (deterministic, R), stochastic gddim at
    λ = `lam` (q = 0), then each (order, λ, multistep options) of `variants` (records with "options").
    """
    if repeats < 1:
        raise SettingsError(f"repeats must be >= 1, got {repeats}")
    configs = [(q, 0.0, {}) for q in orders] + [(0, lam, {})] + [(q, l, dict(o)) for q, l, o in variants]
    jobs = [(name, nfe, *config) for name in processes for nfe in nfes for config in configs]
    records = []
    for name, nfe, q, l, options in tqdm(jobs, disable=not progress, desc="coefficient build"):
        times = np.array([_cold_build(name, nfe, q, l, bdm_image_size, options) for _ in range(repeats)])
        record = {"process": name, "nfe": nfe, "order": q, "lam": l, "repeats": repeats} | (
            {"options": options} if options else {})
        for clock, suffix in ((0, "s"), (1, "cpu_s")):
            record[f"total_{suffix}"] = float(np.median(times[:, clock].sum(1)))
            record[f"r_solve_{suffix}"] = float(np.median(times[:, clock, 0]))
            record[f"coefficients_{suffix}"] = float(np.median(times[:, clock, 1]))
        records.append(record)
    summary = {}
    for name in processes:
        worst = max((r for r in records if r["process"] == name), key=lambda r: r["total_cpu_s"])
        summary[name] = {"slowest_total_cpu_s": worst["total_cpu_s"], "its_total_s": worst["total_s"],
                         "at": {k: worst[k] for k in ("nfe", "order", "lam", "options") if k in worst},
                         "median_r_solve_cpu_s": float(np.median([r["r_solve_cpu_s"] for r in records if r["process"] == name]))}
    return {"benchmark": "coefficient build time from a cold start (BENCHMARKS.md §3)",
            "bdm_image_size": bdm_image_size, "records": records, "summary": summary,
            "machine": machine_info(device="cpu"), "command": command}


def _cold_build(name: str, nfe: int, order: int, lam: float, bdm_image_size: int,
                options: dict) -> list[list[float]]:
    """[[wall, cpu] seconds for a fresh process and its first R call, [wall, cpu] for sampling.plan after it]."""
    clocks = (time.perf_counter, time.process_time)
    start = [c() for c in clocks]
    process = make_process(name, (bdm_image_size, bdm_image_size))
    process.R(process.t_end)
    solved = [c() for c in clocks]
    plan(process, nfe, "gddim", order, lam, **options)
    done = [c() for c in clocks]
    return [[solved[i] - start[i], done[i] - solved[i]] for i in range(2)]

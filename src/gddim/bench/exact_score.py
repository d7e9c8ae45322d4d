"""The exact-score sampler sweep (BENCHMARKS.md §1): every sampler driven by the exact ε of a finite data set, so
that its errors belong to the sampler alone.

- path error (deterministic samplers): RMS over batch and data dimensions between the sampler's x and a float64
  reference solution of the probability-flow ODE from the same u_T (CLD's velocity dropped);
- data error (every sampler): the RMS-per-dimension distance from each sample to its nearest data point,
  averaged over the batch;
- acceleration factors and the other summaries: gddim.bench.exact_summary.

Each record names its sampler by its canonical spec (gddim.spec) in the field "sampler".
`gddim bench exact` (gddim.cli.bench) writes what `exact_score_benchmark` returns.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import write_json
from ..coefficients import denoising_step
from ..errors import SamplerError, SettingsError
from ..exact import exact_eps
from ..processes import PROCESSES, LinearProcess, make_process
from ..sampling import EpsFn, check_sampler, run_recursion, sample
from ..spec import SamplerSpec
from .sweeps import NFES, REFERENCE_RTOL
from .exact_summary import plot_process, summarize
from .records import benchmark_images, data_error, machine_info, reference_solution, rms_error

ANCESTRAL_PROCESSES = ("vp", "bdm")  # DDPM's and BDM's own sampler; the posterior step = gddim at λ = 1
POSTERIOR_STEP = SamplerSpec("gddim", lam=1.0)  # what the ancestral records are copied from
RECORD_FIELDS = ("process", "sampler", "nfe", "path_error", "data_error")


def sweep_specs(process_name: str) -> list[SamplerSpec]:
    """Every sampler the benchmark runs on a process: gddim.sample's default, the paper's gDDIM (q = 0..3, L at q = 0
    and 2, λ = 0.5 and 1), Euler, Euler-Maruyama, and SSCS on CLD (ancestral is added as an alias, not run)."""
    texts = ["gddim", *(f"gddim:q={q}" for q in range(4)), "gddim:q=0:param=L", "gddim:q=2:param=L",
             "gddim:lam=0.5", "gddim:lam=1", "euler", "em"] + (["sscs"] if process_name == "cld" else [])
    return [SamplerSpec.parse(text) for text in texts]


def fits(spec: SamplerSpec, process: LinearProcess, nfe: int) -> bool:
    """Whether the sampler can run at `nfe` (e.g. order q needs q + 1 integrator steps): gddim.sample's own rule."""
    try:
        check_sampler(process, nfe, **spec.options())
    except SettingsError:
        return False
    return True


def run_spec(process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, spec: SamplerSpec, nfe: int,
             seed: int) -> torch.Tensor:
    """One sampler run; every stochastic run draws the same noise stream (seed) so that runs are paired."""
    return sample(process, eps_fn, u_T, nfe, generator=torch.Generator().manual_seed(seed), **spec.options())


def exact_score_benchmark(dataset: str = "digits", out_dir: str | Path | None = None,
                          processes: tuple[str, ...] = tuple(PROCESSES), nfes: tuple[int, ...] = NFES,
                          batch: int = 256, seed: int = 0, split: str = "all", image_size: int | None = None,
                          rtol: float = REFERENCE_RTOL, data_points: int | None = None, command: str | None = None,
                          progress: bool = True) -> dict:
    """Run every sampler of `sweep_specs` at every NFE on the exact ε of `dataset`.

    data_points keeps the first N images only. Returns the results dict; with out_dir, also writes
    results.json and one PNG per process there.
    """
    if batch < 1 or not nfes or min(nfes) < 1 or (data_points is not None and data_points < 1):
        raise SettingsError(f"need batch >= 1, positive NFEs and data_points >= 1; got {batch=}, {nfes=}, {data_points=}")
    started = time.perf_counter()
    data = benchmark_images(dataset, split, image_size)[:data_points].double()
    processes, nfes = tuple(processes), tuple(sorted(set(int(n) for n in nfes)))
    built = {name: make_process(name, tuple(data.shape[-2:])) for name in processes}
    runs = [(name, s, n) for name in processes for s in sweep_specs(name) for n in nfes if fits(s, built[name], n)]
    bar = tqdm(total=sum(n for *_, n in runs), unit="NFE", disable=not progress, desc="exact-score sweep")
    records, references, seconds = [], {}, {}
    for name, process in built.items():
        process_start = time.perf_counter()
        process_runs = [(s, n) for p, s, n in runs if p == name]
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
        "definitions": definitions(seed), "records": records,
        "summary": summarize(records, {name: info["data_error_of_reference"] for name, info in references.items()}),
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "machine": machine_info(device="cpu (the exact ε runs in float64 on the CPU)"),
        "command": command,
    }
    if out_dir is not None:
        write_exact_results(result, Path(out_dir))
    return result


def definitions(seed: int) -> dict:
    """What the fields of the result mean, stored beside them."""
    return {
        "sampler": "the sampler's spec in gddim.spec's canonical spelling (SamplerSpec.parse gives it back)",
        "path_error": "sqrt(mean over batch and data dimensions of (x - x_ref)^2); deterministic samplers only",
        "data_error": "mean over the batch of ||x - nearest data point|| / sqrt(dimensions)",
        "acceleration": "target = a baseline's data error at the largest NFE; nfe = smallest swept NFE with "
                        "data error <= target; factor = largest NFE / nfe",
        "ancestral": f"records copied from {POSTERIOR_STEP} (the same posterior step: sampling.plan builds "
                     "both with coefficients.stochastic at λ = 1), not recomputed",
        "data_error_of_exact_marginal": "data error of data points perturbed to t_end by the process (and "
                                        "denoised for CLD): the floor a perfect sampler reaches",
        "stochastic_noise": f"every stochastic run uses torch.Generator seed {seed + 1}; u_T uses seed {seed}",
    }


def _sweep_process(name: str, process: LinearProcess, data: torch.Tensor, runs: list[tuple[SamplerSpec, int]],
                   batch: int, seed: int, rtol: float, bar) -> tuple[list[dict], dict]:
    """The records of one process and what its reference is: the ODE solve and the data-error floors."""
    eps_fn = exact_eps(process, data)
    u_T = process.prior_sample((batch, *data.shape[1:]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
    bar.set_postfix_str(f"{name} reference ODE")
    x_ref, info = reference_solution(process, eps_fn, u_T, rtol)
    info["data_error_of_reference"] = data_error(x_ref, data)
    info["data_error_of_exact_marginal"] = marginal_data_error(process, eps_fn, data, batch, seed)
    records = []
    for spec, nfe in runs:
        bar.set_postfix_str(f"{name} {spec} NFE {nfe}")
        records.append(_measure(name, process, eps_fn, u_T, spec, nfe, seed + 1, x_ref, data))
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


def _measure(name: str, process: LinearProcess, eps_fn: EpsFn, u_T: torch.Tensor, spec: SamplerSpec, nfe: int,
             seed: int, x_ref: torch.Tensor, data: torch.Tensor) -> dict:
    record = {"process": name, "sampler": spec.label, "nfe": nfe}
    try:
        x = run_spec(process, eps_fn, u_T, spec, nfe, seed)
    except SamplerError:  # the sampler left the region where ε is finite: it diverged at this NFE
        return record | {"path_error": None, "data_error": None, "diverged": True}
    path_err = None if spec.stochastic else rms_error(x, x_ref)
    return record | {"path_error": path_err, "data_error": data_error(x, data)}


def ancestral_aliases(records: list[dict], process_name: str) -> list[dict]:
    """The gddim λ = 1 records of a process, named "ancestral"."""
    return [r | {"sampler": "ancestral"} for r in records
            if r["process"] == process_name and r["sampler"] == POSTERIOR_STEP.label]


def write_exact_results(result: dict, out_dir: Path) -> None:
    write_json(out_dir / "results.json", result)
    for name in result["processes"]:
        floor = result["reference"][name]["data_error_of_exact_marginal"]
        plot_process(result["records"], name, out_dir / f"{name}.png", result["dataset"], floor)

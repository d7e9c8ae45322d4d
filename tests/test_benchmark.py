"""The exact-score benchmark and the coefficient build-time benchmark (gddim.benchmark, `gddim bench`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gddim
from gddim import benchmark, sweeps
from gddim.benchmark import Variant
from gddim.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`gddim bench exact --quick` on every process and the first 300 digits, as a user would run it."""
    out = tmp_path_factory.mktemp("exact") / "results"
    threads = torch.get_num_threads()
    try:  # one thread: the small matrices of the quick run gain nothing from more, and a busy machine loses
        assert main(["bench", "exact", "--quick", "--data-points", "300", "--out", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "results.json").read_text())


def _records(result, process, label):
    return {r["nfe"]: r for r in result["records"] if r["process"] == process and Variant.of_record(r).label == label}


def test_quick_run_writes_results_plots_and_machine(quick_run):
    out, result = quick_run
    assert {p.name for p in out.iterdir()} == {"results.json", "vp.png", "cld.png", "bdm.png"}
    assert result["batch"] == sweeps.QUICK["batch"] and result["nfes"] == list(sweeps.QUICK["nfes"])
    assert result["data_points"] == 300 and result["image_shape"] == [1, 8, 8]
    assert {"cores", "torch", "device", "torch_threads"} <= set(result["machine"])
    assert result["command"].startswith("gddim bench exact --dataset digits")
    for record in result["records"]:
        assert set(benchmark.RECORD_FIELDS) <= set(record)
        assert (record["path_error"] is None) == (record["lam"] > 0)  # path errors for deterministic samplers only
        assert record["data_error"] > 0
    methods = {(r["process"], r["method"]) for r in result["records"]}
    assert ("cld", "sscs") in methods and ("vp", "sscs") not in methods
    assert ("vp", "ancestral") in methods and ("bdm", "ancestral") in methods and ("cld", "ancestral") not in methods


def test_reference_solution_is_far_more_accurate_than_the_errors_it_measures(quick_run):
    _, result = quick_run
    for name in ("vp", "cld", "bdm"):
        smallest = min(r["path_error"] for r in result["records"] if r["process"] == name and r["path_error"] is not None)
        assert result["reference"][name]["rms_difference_rtol_vs_half"] < 0.01 * smallest


def test_gddim_beats_euler_and_converges(quick_run):
    _, result = quick_run
    for name in ("vp", "cld", "bdm"):
        q2, euler = _records(result, name, "gddim q=2 R"), _records(result, name, "euler")
        assert q2[50]["path_error"] < 1e-3 < euler[50]["path_error"]
        errors = [q2[n]["data_error"] for n in sorted(q2)]
        assert all(a > b for a, b in zip(errors, errors[1:])), f"{name}: q=2 data error not decreasing: {errors}"


def test_data_error_floor_is_the_final_noise_level(quick_run):
    """For VP, exact samples of p(t_end) sit σ_{t_end} (per dimension) from their data point."""
    _, result = quick_run
    sigma = math.sqrt(gddim.VP().sigma(1e-3)[0, 0, 0, 0])
    assert result["reference"]["vp"]["data_error_of_exact_marginal"] == pytest.approx(sigma, rel=0.1)


def test_data_and_path_errors_agree(quick_run):
    """Distance to the nearest point is 1-Lipschitz: |data error - the reference's| <= path error."""
    _, result = quick_run
    for r in (r for r in result["records"] if r["path_error"] is not None):
        gap = abs(r["data_error"] - result["reference"][r["process"]]["data_error_of_reference"])
        assert gap <= r["path_error"] * (1 + 1e-9) + 1e-12, r


def test_ancestral_records_are_the_lambda_one_records_and_the_same_sampler(quick_run):
    _, result = quick_run
    ancestral, lam_one = _records(result, "bdm", "ancestral"), _records(result, "bdm", "gddim λ=1")
    assert {n: r["data_error"] for n, r in ancestral.items()} == {n: r["data_error"] for n, r in lam_one.items()}
    process = gddim.VP()
    data = benchmark.benchmark_images("digits")[:50].double()
    eps_fn = gddim.exact_eps(process, data)
    u_T = process.prior_sample((4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda method, lam: gddim.sample(process, eps_fn, u_T, 5, method=method, lam=lam,
                                           generator=torch.Generator().manual_seed(1))
    assert torch.equal(run("ancestral", None), run("gddim", 1.0))


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["bench", "exact", "--quick", "--out", str(tmp_path)]) == 2
    assert main(["bench", "coefficients", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def _synthetic(process, method, errors, order=0, lam=0.0, parameterization="R", path=None):
    return [{"process": process, "method": method, "order": order, "lam": lam, "parameterization": parameterization,
             "nfe": n, "path_error": None if path is None else path[n], "data_error": e} for n, e in errors.items()]


def test_acceleration_factors_on_synthetic_records():
    records = (_synthetic("vp", "em", {10: 0.5, 100: 0.2, 1000: 0.1}, lam=1.0)
               + _synthetic("vp", "euler", {10: 0.4, 1000: 0.095})
               + _synthetic("vp", "gddim", {10: 0.3, 20: 0.09, 50: 0.05})
               + _synthetic("vp", "gddim", {10: 0.08, 20: 0.2}, order=2)
               + _synthetic("vp", "gddim", {10: 0.6, 1000: 0.3}, lam=1.0))
    acc = benchmark.acceleration_factors(records)["vp"]
    assert set(acc) == {"em@1000", "euler@1000"}
    em = acc["em@1000"]
    assert em["target_data_error"] == 0.1
    assert em["samplers"]["gddim q=0 R"] == {"nfe": 20, "factor": 50.0}
    assert em["samplers"]["gddim q=2 R"] == {"nfe": 10, "factor": 100.0}  # the first NFE that reaches the target
    assert em["samplers"]["gddim λ=1"] == {"nfe": None, "factor": None}
    assert em["samplers"]["euler"] == {"nfe": 1000, "factor": 1.0}
    assert acc["euler@1000"]["samplers"]["em"] == {"nfe": None, "factor": None}
    assert acc["euler@1000"]["samplers"]["gddim q=0 R"] == {"nfe": 20, "factor": 50.0}
    assert "gddim q=2 R" in benchmark.format_summary(benchmark.summarize(records))
    flagged = benchmark.acceleration_factors(records, floors={"vp": 0.097})["vp"]
    assert not flagged["em@1000"]["below_reference"] and flagged["euler@1000"]["below_reference"]


def test_l_vs_r_on_synthetic_records():
    path = {10: 0.4, 20: 0.1}
    records = (_synthetic("cld", "gddim", {10: 1.0, 20: 1.0}, path=path)
               + _synthetic("cld", "gddim", {10: 1.0, 20: 1.0}, parameterization="L", path={10: 2.0, 20: 0.3}))
    table = benchmark.l_vs_r(records, nfes=(10, 20, 50))["cld"]
    assert set(table) == {"10", "20"}
    assert table["20"]["q=0"] == {"R": 0.1, "L": 0.3, "L/R": pytest.approx(3.0)}


@pytest.mark.parametrize("name, nfe, order, fits", [("cld", 1, 0, False), ("cld", 4, 3, False), ("cld", 5, 3, True),
                                                     ("vp", 3, 3, False), ("vp", 4, 3, True), ("bdm", 1, 0, True)])
def test_variants_that_do_not_fit_the_budget_are_skipped(name, nfe, order, fits):
    process = gddim.processes.make_process(name, (8, 8))
    assert Variant("gddim", order).fits(process, nfe) is fits


def test_coefficient_build_times_report_r_solve_and_medians():
    variant = (2, 0.5, {"prediction": "data", "corrector": True})
    result = benchmark.coefficient_build_times(("cld", "vp"), nfes=(10,), orders=(0, 2), repeats=3, progress=False,
                                               variants=(variant,))
    assert [(r["process"], r["order"], r["lam"], r.get("options")) for r in result["records"]] == [
        (name, *config) for name in ("cld", "vp")
        for config in [(0, 0.0, None), (2, 0.0, None), (0, 0.5, None), (2, 0.5, variant[2])]]
    for r in result["records"]:
        assert 0 < r["r_solve_cpu_s"] <= r["total_cpu_s"] and r["coefficients_s"] > 0 and r["repeats"] == 3
    cld_solve = np.median([r["r_solve_cpu_s"] for r in result["records"] if r["process"] == "cld"])
    vp_solve = np.median([r["r_solve_cpu_s"] for r in result["records"] if r["process"] == "vp"])
    assert cld_solve > 10 * vp_solve  # CLD solves an ODE for R_t; VP's R is a closed form

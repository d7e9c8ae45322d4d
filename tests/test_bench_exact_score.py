"""The exact-score benchmark (gddim.bench.exact_score, `gddim bench exact`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gddim
from gddim.bench import exact_score, sweeps
from gddim.bench.records import benchmark_images
from gddim.spec import SamplerSpec
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


def _records(result, process, sampler):
    return {r["nfe"]: r for r in result["records"] if r["process"] == process and r["sampler"] == sampler}


def test_quick_run_writes_results_plots_and_machine(quick_run):
    out, result = quick_run
    assert {p.name for p in out.iterdir()} == {"results.json", "vp.png", "cld.png", "bdm.png"}
    assert result["batch"] == sweeps.QUICK["batch"] and result["nfes"] == list(sweeps.QUICK["nfes"])
    assert result["data_points"] == 300 and result["image_shape"] == [1, 8, 8]
    assert {"cores", "torch", "device", "torch_threads"} <= set(result["machine"])
    assert result["command"].startswith("gddim bench exact --dataset digits")
    for record in result["records"]:
        assert set(exact_score.RECORD_FIELDS) <= set(record)
        spec = SamplerSpec.parse(record["sampler"])
        assert spec.label == record["sampler"]  # the canonical spelling
        assert (record["path_error"] is None) == spec.stochastic  # path errors for deterministic samplers only
        assert record["data_error"] > 0
    samplers = {(r["process"], r["sampler"]) for r in result["records"]}
    assert ("cld", "sscs") in samplers and ("vp", "sscs") not in samplers
    assert ("vp", "ancestral") in samplers and ("bdm", "ancestral") in samplers and ("cld", "ancestral") not in samplers
    assert {s for p, s in samplers if p == "vp"} == {s.label for s in exact_score.sweep_specs("vp")} | {"ancestral"}


def test_reference_solution_is_far_more_accurate_than_the_errors_it_measures(quick_run):
    _, result = quick_run
    for name in ("vp", "cld", "bdm"):
        smallest = min(r["path_error"] for r in result["records"] if r["process"] == name and r["path_error"] is not None)
        assert result["reference"][name]["rms_difference_rtol_vs_half"] < 0.01 * smallest


def test_gddim_beats_euler_and_converges(quick_run):
    _, result = quick_run
    for name in ("vp", "cld", "bdm"):
        q2, euler = _records(result, name, "gddim:q=2"), _records(result, name, "euler")
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
    ancestral, lam_one = _records(result, "bdm", "ancestral"), _records(result, "bdm", "gddim:lam=1")
    assert {n: r["data_error"] for n, r in ancestral.items()} == {n: r["data_error"] for n, r in lam_one.items()}
    process = gddim.VP()
    data = benchmark_images("digits")[:50].double()
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


@pytest.mark.parametrize("name, nfe, order, fits", [("cld", 1, 0, False), ("cld", 4, 3, False), ("cld", 5, 3, True),
                                                     ("vp", 3, 3, False), ("vp", 4, 3, True), ("bdm", 1, 0, True)])
def test_samplers_that_do_not_fit_the_budget_are_skipped(name, nfe, order, fits):
    process = gddim.processes.make_process(name, (8, 8))
    assert exact_score.fits(SamplerSpec("gddim", order), process, nfe) is fits

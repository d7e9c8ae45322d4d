"""The coefficient build-time benchmark (gddim.bench.coefficient_times, `gddim bench coefficients`)."""

from __future__ import annotations

import numpy as np

from gddim.bench import coefficient_times


def test_coefficient_build_times_report_r_solve_and_medians():
    result = coefficient_times.coefficient_build_times(("cld", "vp"), nfes=(10,), orders=(0, 2), repeats=3,
                                                       progress=False)
    assert [(r["process"], r["sampler"]) for r in result["records"]] == [
        ("cld", "gddim:q=0"), ("cld", "gddim:q=2"), ("cld", "gddim:lam=0.5"),
        ("vp", "gddim:q=0"), ("vp", "gddim:q=2"), ("vp", "gddim:lam=0.5")]
    for r in result["records"]:
        assert 0 < r["r_solve_cpu_s"] <= r["total_cpu_s"] and r["coefficients_s"] > 0 and r["repeats"] == 3
    cld_solve = np.median([r["r_solve_cpu_s"] for r in result["records"] if r["process"] == "cld"])
    vp_solve = np.median([r["r_solve_cpu_s"] for r in result["records"] if r["process"] == "vp"])
    assert cld_solve > 10 * vp_solve  # CLD solves an ODE for R_t; VP's R is a closed form
    slowest = result["summary"]["cld"]
    assert slowest["slowest_total_cpu_s"] == max(r["total_cpu_s"] for r in result["records"] if r["process"] == "cld")

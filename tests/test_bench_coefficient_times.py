"""The coefficient build-time benchmark (gddim.bench.coefficient_times, `gddim bench coefficients`)."""

from __future__ import annotations

import numpy as np

from gddim.bench import coefficient_times


def test_coefficient_build_times_report_r_solve_and_medians():
    variant = "gddim:q=2:lam=0.5:pred=data:corr=1"
    result = coefficient_times.coefficient_build_times(("cld", "vp"), nfes=(10,), orders=(0, 2), repeats=3,
                                                       progress=False, variants=(variant,))
    assert [(r["process"], r["sampler"]) for r in result["records"]] == [
        (name, sampler) for name in ("cld", "vp") for sampler in ("gddim:q=0", "gddim:q=2", "gddim:lam=0.5", variant)]
    for r in result["records"]:
        assert 0 < r["r_solve_cpu_s"] <= r["total_cpu_s"] and r["coefficients_s"] > 0 and r["repeats"] == 3
    cld_solve = np.median([r["r_solve_cpu_s"] for r in result["records"] if r["process"] == "cld"])
    vp_solve = np.median([r["r_solve_cpu_s"] for r in result["records"] if r["process"] == "vp"])
    assert cld_solve > 10 * vp_solve  # CLD solves an ODE for R_t; VP's R is a closed form
    slowest = result["summary"]["cld"]
    assert slowest["slowest_total_cpu_s"] == max(r["total_cpu_s"] for r in result["records"] if r["process"] == "cld")

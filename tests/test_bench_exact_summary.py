"""What the exact-score records say (gddim.bench.exact_summary), on synthetic records with known answers."""

from __future__ import annotations

import pytest

from gddim.bench import exact_summary


def _synthetic(process, sampler, errors, path=None):
    return [{"process": process, "sampler": sampler, "nfe": n, "path_error": None if path is None else path[n],
             "data_error": e} for n, e in errors.items()]


def test_acceleration_factors_on_synthetic_records():
    records = (_synthetic("vp", "em", {10: 0.5, 100: 0.2, 1000: 0.1})
               + _synthetic("vp", "euler", {10: 0.4, 1000: 0.095})
               + _synthetic("vp", "gddim:q=0", {10: 0.3, 20: 0.09, 50: 0.05})
               + _synthetic("vp", "gddim:q=2", {10: 0.08, 20: 0.2})
               + _synthetic("vp", "gddim:lam=1", {10: 0.6, 1000: 0.3}))
    acc = exact_summary.acceleration_factors(records)["vp"]
    assert set(acc) == {"em@1000", "euler@1000"}
    em = acc["em@1000"]
    assert em["target_data_error"] == 0.1
    assert em["samplers"]["gddim:q=0"] == {"nfe": 20, "factor": 50.0}
    assert em["samplers"]["gddim:q=2"] == {"nfe": 10, "factor": 100.0}  # the first NFE that reaches the target
    assert em["samplers"]["gddim:lam=1"] == {"nfe": None, "factor": None}
    assert em["samplers"]["euler"] == {"nfe": 1000, "factor": 1.0}
    assert acc["euler@1000"]["samplers"]["em"] == {"nfe": None, "factor": None}
    assert acc["euler@1000"]["samplers"]["gddim:q=0"] == {"nfe": 20, "factor": 50.0}
    text = exact_summary.format_summary(exact_summary.summarize(records))
    assert "gddim:q=2          NFE 10 (100x)" in text and "gddim:lam=1        not reached" in text
    flagged = exact_summary.acceleration_factors(records, floors={"vp": 0.097})["vp"]
    assert not flagged["em@1000"]["below_reference"] and flagged["euler@1000"]["below_reference"]


def test_l_vs_r_on_synthetic_records():
    records = (_synthetic("cld", "gddim:q=0", {10: 1.0, 20: 1.0}, path={10: 0.4, 20: 0.1})
               + _synthetic("cld", "gddim:q=0:param=L", {10: 1.0, 20: 1.0}, path={10: 2.0, 20: 0.3}))
    table = exact_summary.l_vs_r(records, nfes=(10, 20, 50))["cld"]
    assert set(table) == {"10", "20"}
    assert table["20"]["q=0"] == {"R": 0.1, "L": 0.3, "L/R": pytest.approx(3.0)}


def test_l_vs_r_rows_follow_the_nfes_when_an_order_lacks_one():
    records = (_synthetic("vp", "gddim:q=0", {20: 1.0}, path={20: 0.2})
               + _synthetic("vp", "gddim:q=0:param=L", {20: 1.0}, path={20: 0.4})
               + _synthetic("vp", "gddim:q=2", {10: 1.0, 20: 1.0}, path={10: 0.5, 20: 0.0})
               + _synthetic("vp", "gddim:q=2:param=L", {10: 1.0, 20: 1.0}, path={10: 0.25, 20: 0.1}))
    table = exact_summary.l_vs_r(records, nfes=(10, 20, 50))["vp"]
    assert list(table) == ["10", "20"] and list(table["20"]) == ["q=0", "q=2"]
    assert table["10"] == {"q=2": {"R": 0.5, "L": 0.25, "L/R": 0.5}}
    assert table["20"]["q=2"] == {"R": 0.0, "L": 0.1, "L/R": None}  # no ratio to a zero R error


def test_deterministic_vs_stochastic_keeps_the_nfes_it_has():
    records = (_synthetic("bdm", "gddim:q=0", {5: 0.3, 10: 0.2}) + _synthetic("bdm", "gddim:lam=0.5", {10: 0.25})
               + _synthetic("bdm", "em", {10: 0.9}))
    table = exact_summary.deterministic_vs_stochastic(records, nfes=(5, 10, 20))["bdm"]
    assert table == {"5": {"gddim:q=0": 0.3}, "10": {"gddim:q=0": 0.2, "gddim:lam=0.5": 0.25}}


def test_plot_draws_every_process(tmp_path):
    records = _synthetic("vp", "gddim", {5: 0.3, 10: 0.2}, path={5: 0.1, 10: 0.05}) + _synthetic("vp", "em", {5: 0.5})
    exact_summary.plot_process(records, "vp", tmp_path / "vp.png", "digits", floor=0.01)
    assert (tmp_path / "vp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

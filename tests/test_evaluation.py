"""Evaluation: sweeps that refuse bad samplers early and record diverging ones (sampler specs: test_spec.py)."""

from __future__ import annotations

import json
import math

import pytest

from gddim import evaluation
from gddim.sampling import SamplerError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_evaluate_refuses_bad_samplers_before_sampling(cld_run, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluation, "sample_images", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"unknown sampler method 'gdim' in 'gdim'"):
        evaluation.evaluate(cld_run, ["gddim", "gdim"], [5], n=8, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"nfe=3 gives 2 step\(s\): too few for order q=3"):
        evaluation.evaluate(cld_run, ["gddim:q=3"], [20, 3], n=8, out_dir=tmp_path)
    assert calls == [] and not (tmp_path / "metrics.json").exists()


def test_evaluate_records_a_diverging_sampler_and_goes_on(cld_run, tmp_path, monkeypatch):
    real_sampler = evaluation.sample_images

    def euler_diverges(process, model, n, nfe, method="gddim", **kw):
        if method == "euler":
            raise SamplerError("eps_fn returned NaN or inf at step 2 (t=0.5)")
        return real_sampler(process, model, n, nfe, method, **kw)

    monkeypatch.setattr(evaluation, "sample_images", euler_diverges)
    result = evaluation.evaluate(cld_run, ["euler", "gddim"], [5], n=8, out_dir=tmp_path)
    euler, gddim_q0 = result["records"]
    assert euler["fd"] is None and "NaN or inf at step 2" in euler["error"]
    assert math.isfinite(gddim_q0["fd"]) and "error" not in gddim_q0
    assert json.loads((tmp_path / "metrics.json").read_text())["records"][0]["fd"] is None
    assert (tmp_path / "quality_vs_nfe.png").is_file() and not (tmp_path / "grids" / "euler_nfe5.png").exists()



def test_an_evaluation_stopped_inside_a_record_makes_only_its_missing_shards(cld_run, tmp_path, monkeypatch):
    settings = dict(samplers=["ancestral"], nfes=[5], n=12, batch=4, shard_size=4)
    fresh = evaluation.evaluate(cld_run, **settings, out_dir=tmp_path / "fresh")
    real_sampler, calls, stops = evaluation.sample_images, [], []

    def stopped_at_the_second_shard(*args, first=0, **kwargs):
        calls.append(first)
        if first == 4 and not stops:  # Ctrl-C while the second shard is made, once
            stops.append(first)
            raise KeyboardInterrupt
        return real_sampler(*args, first=first, **kwargs)

    monkeypatch.setattr(evaluation, "sample_images", stopped_at_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(cld_run, **settings, out_dir=tmp_path / "split")
    shards = tmp_path / "split" / "shards" / "ancestral_nfe5"
    assert calls == [0, 4] and sorted(p.name for p in shards.glob("shard_*.npz")) == ["shard_000000.npz"]
    calls.clear()
    resumed = evaluation.evaluate(cld_run, **settings, out_dir=tmp_path / "split")
    assert calls == [4, 8]  # the rerun made the two missing shards, not the first
    assert resumed["records"][0]["fd"] == fresh["records"][0]["fd"] and resumed["floor"] == fresh["floor"]
    assert math.isfinite(resumed["records"][0]["fd"])

"""The peer benchmark's driver (gddim.bench.peers): references at each landing, model-call counts, records keyed
by (sampler, setting), and the ratios of the summary."""

from __future__ import annotations

import pytest
import torch

import gddim
from gddim.bench import peers
from gddim.bench.diffusers_vp import DiffusersVP
from gddim.bench.records import rms_error
from gddim.errors import SettingsError
from gddim.spec import SamplerSpec
from gddim.tuning import SELECTION_GRIDS, SHORTEST_PATH, SMOOTHING_WINDOWS


@pytest.fixture(scope="module")
def vp():
    return gddim.VP()


def _rec(sampler, family, setting, path, data, t_final=1e-3):
    return {"sampler": sampler, "family": family, "setting": setting, "nfe": 10, "path_error": path,
            "data_error": data, "t_final": t_final, "lands_at_t_end": t_final == 1e-3,
            "path_error_vs_t_end_reference": path}


def test_summary_ranks_settings_landing_at_t_end_and_lists_t0_landings_apart():
    records = [_rec("dpm++3m", "diffusers", "karras", None, None),  # a run that returned NaN: errors None
               _rec("gddim:q=0", "gddim", "trailing", 0.4, 0.1),
               _rec("gddim:q=2", "gddim", "trailing", 0.2, 0.3),
               _rec("gddim:q=2", "gddim", "quadratic", 0.1, 0.2), _rec("gddim", "gddim", peers.TUNED_GRID, 0.04, 0.3),
               _rec("ddim", "diffusers", "trailing", 0.4, 0.1), _rec("ddim", "diffusers", "leading", 0.3, 0.5),
               _rec("unipc-2", "diffusers", "trailing", 0.08, 0.4), _rec("unipc-2", "diffusers", "karras", 0.05, 0.3),
               _rec("unipc-2", "diffusers", "karras-zero", 1e-8, 1e-8, t_final=0.0)]
    (row,) = peers.summarize(records, default=peers.GddimVariant(SamplerSpec.parse("gddim:q=2"), "trailing"))
    path, data = row["path_error"], row["data_error"]
    assert path["best_peer"] == {"sampler": "unipc-2", "setting": "karras", "error": 0.05}  # not the t = 0 landing
    assert path["per_peer_best"]["ddim"]["setting"] == "leading" and path["per_peer_best"]["dpm++3m"] is None
    assert path["ratio_best"] == pytest.approx(0.04 / 0.05) and path["ratio_default"] == pytest.approx(0.2 / 0.05)
    assert path["gddim_tuned"] == {"sampler": "gddim", "setting": peers.TUNED_GRID, "error": 0.04}
    assert path["ratio_tuned"] == pytest.approx(0.04 / 0.05)
    assert path["gddim_default"] == {"sampler": "gddim:q=2", "setting": "trailing", "error": 0.2}
    assert path["same_levels"]["ratio"] == pytest.approx(0.2 / 0.08)
    assert data["gddim_best"] == {"sampler": "gddim:q=0", "setting": "trailing", "error": 0.1}
    assert data["ratio_best"] == pytest.approx(1.0)
    assert [r["setting"] for r in row["landing_t0"]] == ["karras-zero"]


def test_the_variants_are_specs_on_grids_with_the_default_sampler_among_them():
    keys = [v.key() for v in peers.GDDIM_VARIANTS]
    assert len(set(keys)) == len(keys) and peers.GDDIM_DEFAULT.key() == ("gddim", gddim.VP.default_grid) in keys
    assert ("gddim:q=2", "trailing") in keys and ("gddim:q=3", "logsnr") in keys and ("gddim", peers.TUNED_GRID) in keys


def test_references_continue_to_each_landing_and_end_on_a_data_point_at_t0(vp):
    data = torch.tensor([[-0.8, 0.5, 0.1, -0.3], [0.6, -0.4, 0.9, 0.2], [0.0, 0.8, -0.7, 0.5]],
                        dtype=torch.float64).reshape(3, 1, 2, 2)
    eps = gddim.exact_eps(vp, data)
    u_T = vp.prior_sample((4, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    refs = peers.References(DiffusersVP(vp), eps, u_T, 1e-8)
    t = vp.t_end + 2e-4
    direct = gddim.reference_ode(vp, eps, u_T, t_end=t, rtol=1e-9, atol=1e-9)
    assert rms_error(refs.at(t), direct) < 1e-7
    # at t_end the posterior over 3 separated points is one-hot: the t = 0 end is a data point itself
    dist = torch.cdist(refs.at(0.0).flatten(1), data.flatten(1)).min(1).values
    assert dist.max() < 1e-10 and refs.info["t0_check"]["rms_posterior_mean_t_end_vs_1e-5"] < 1e-10


def candidate_grid_names(steps: int) -> set[str]:
    return {SHORTEST_PATH, *SELECTION_GRIDS,
            *(f"{SHORTEST_PATH} smoothed over {w} steps" for w in SMOOTHING_WINDOWS if w <= steps)}


def test_benchmark_end_to_end_on_a_few_points(vp):
    """The whole peer benchmark on 12 data points: every run makes exactly NFE calls and carries its noise levels,
    DDIM and gDDIM q=0 agree on the shared grid, and the variants are one list with a named default."""
    data = torch.rand(12, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    shared_q0 = peers.GddimVariant(SamplerSpec(order=0), "trailing")
    quadratic_q2 = peers.GddimVariant(SamplerSpec(order=2), "quadratic")
    tuned = peers.GddimVariant(SamplerSpec(), peers.TUNED_GRID)
    result = peers.benchmark(DiffusersVP(vp, peers=("ddim", "unipc-2")), data, nfes=(5,), batch=4,
                             variants=[shared_q0, quadratic_q2, tuned], default=quadratic_q2, rtol=1e-8,
                             progress=lambda line: None)
    records = result["records"]
    assert len(records) == 3 + 3 + 5 and all(r["model_calls"] == r["nfe"] == 5 for r in records)
    on_tuned = next(r for r in records if r["setting"] == peers.TUNED_GRID)
    assert on_tuned["tuned_grid_chosen"] in candidate_grid_names(5) and on_tuned["lands_at_t_end"]
    assert result["summary"][0]["path_error"]["gddim_tuned"]["error"] == on_tuned["path_error"]
    assert all({"t_first_call", "t_last_call", "t_final", "alpha_bar_first_call", "alpha_bar_final"} <= r.keys()
               and r["finite_output"] == (r["path_error"] is not None) for r in records)
    assert len({(r["sampler"], r["setting"]) for r in records}) == len(records)
    ddim, q0 = (next(r for r in records if r["sampler"] == s and r["setting"] == "trailing")
                for s in ("ddim", "gddim:q=0"))
    # diffusers keeps ᾱ in float32: the two agree to float32 accuracy, not to float64
    assert abs(ddim["path_error"] - q0["path_error"]) < 1e-5
    zero = next(r for r in records if r["setting"] == "karras-zero")
    assert zero["t_final"] == 0.0 and 0.0 in result["reference"]["landings"]
    (row,) = result["summary"]
    assert row["path_error"]["gddim_default"]["sampler"] == "gddim:q=2" and row["landing_t0"][0]["sampler"] == "unipc-2"
    assert result["settings"]["gddim_default"] == {"sampler": "gddim:q=2", "setting": "quadratic"}
    assert result["reference"]["rms_difference_rtol_vs_half"] < 1e-6 and result["machine"]["diffusers"]
    with pytest.raises(SettingsError, match="not among the variants"):
        peers.benchmark(DiffusersVP(vp), data, nfes=(5,), batch=4, variants=[shared_q0], default=quadratic_q2)

"""The flow-matching peer benchmark's parts against exact answers: the shared σ levels, the reference flow on one
data point, Euler (diffusers) against gDDIM q = 0 on the same levels, and a smoke run's records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gddim.bench import diffusers_flow as flow
from gddim.exact import exact_data
from gddim.processes import FlowMatching


@pytest.mark.parametrize("shift", flow.SHIFTS)
def test_shared_levels_follow_flow_match_eulers_shape(shift):
    levels = flow.shared_levels(10, shift)
    assert len(levels) == 11 and levels[0] == 1.0 and levels[-1] == np.float32(flow.SIGMA_END)
    assert np.all(np.diff(levels) < 0) and np.array_equal(levels, levels.astype(np.float32))
    u = levels[:-1] / (shift - (shift - 1) * levels[:-1])  # the shift's inverse: u is uniform
    np.testing.assert_allclose(np.diff(u), np.diff(u)[0], rtol=2e-5)


def point_model(seed: int = 0):
    point = torch.rand((1, 3, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    x_1 = torch.randn((4, 1, 3, 3), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return point, exact_data(FlowMatching(), point[None]), x_1


def test_reference_flow_is_the_straight_path_of_one_point():
    point, data_fn, x_1 = point_model()
    x = flow.reference_flow(flow.velocity_of(data_fn), x_1, flow.SIGMA_END, 1e-10)
    torch.testing.assert_close(x, (1 - flow.SIGMA_END) * point + flow.SIGMA_END * x_1, rtol=0, atol=1e-10)


def test_diffusers_euler_equals_gddim_first_order_on_the_shared_levels():
    _, _, x_1 = point_model(3)
    five_points = torch.rand((5, 1, 3, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    data_fn = exact_data(FlowMatching(), five_points)
    levels = flow.shared_levels(6, 3.0)
    euler = flow.run_peer(flow.make_peer("euler"), flow.velocity_of(data_fn), x_1, levels)
    ours = flow.run_gddim(data_fn, x_1, 6, flow.SamplerSpec(order=0, prediction="data"), levels)
    torch.testing.assert_close(euler.double(), ours, rtol=0, atol=1e-6)  # FlowMatchEuler steps in float32


def test_smoke_run_records_every_sampler_with_its_calls():
    data = torch.rand((20, 1, 3, 3), generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = flow.benchmark(data, nfes=(5,), batch=3, rtol=1e-6, progress=lambda _: None)
    runs = {(r["sampler"], r["setting"]) for r in result["records"]}
    expected = {(s.label, f"shift={shift:g}") for s in flow.GDDIM_VARIANTS for shift in flow.SHIFTS}
    expected |= {(p, f"shift={shift:g}") for p in flow.PEERS for shift in flow.SHIFTS}
    assert runs == expected | {(flow.GDDIM_DEFAULT.label, flow.OWN_GRID)}
    assert all(r["model_calls"] == 5 and r["finite_output"] for r in result["records"])
    assert [(row["nfe"], row["setting"]) for row in result["same_levels"]] == [(5, "shift=1"), (5, "shift=3")]
    # the peers' own summary has no trailing levels to compare on here: the same-levels table above stands for it
    summary = result["summary"][0]["path_error"]
    assert "same_levels" not in summary and "gddim_tuned" not in summary

"""Deterministic inversion: exact on Dirac data for every process, order and NFE; converging on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gddim
from gddim import blocks
from gddim.cli import main
from gddim.data import load_images
from gddim.inversion import image_state, invert, round_trip

PROCESSES = {"vp": gddim.VP, "cld": gddim.CLD, "bdm": lambda: gddim.BDM(image_size=4)}


@pytest.fixture(scope="module", params=sorted(PROCESSES))
def process(request):
    return PROCESSES[request.param]()


def dirac_noise(process, point, u_end):
    """Where the ODE through u_end goes at t_start for Dirac data: m_T + R_T R_end⁻¹ (u_end - m_end) (MATH §1.5)."""
    y0 = process.to_basis(process.data_to_state(point[None].double()))
    y = process.to_basis(u_end)
    t0, t1 = process.t_end, process.t_start
    mean = lambda t: blocks.apply(process.blocks(process.mean_coef(t)[0], y), y0)
    gain = process.blocks((process.R(t1) @ np.linalg.inv(process.R(t0)))[0], y)
    return process.from_basis(mean(t1) + blocks.apply(gain, y - mean(t0)))


@pytest.mark.parametrize("order,nfe", [(0, 1), (0, 6), (1, 2), (2, 5), (3, 4), (3, 9)])
def test_dirac_round_trip_is_exact(process, order, nfe):
    point = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    eps = gddim.dirac_eps(process, point)
    x = point[None] + 0.05 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u_end = image_state(process, x, torch.Generator().manual_seed(2))
    result = round_trip(process, eps, u_end, nfe, order)
    assert result.state_error < 1e-9
    torch.testing.assert_close(result.noise, dirac_noise(process, point, u_end), rtol=1e-9, atol=1e-9)


def test_cld_state_carries_a_velocity_of_the_forward_law():
    cld = gddim.CLD()
    x = torch.zeros(4000, 1, 2, 2, dtype=torch.float64)
    u = image_state(cld, x, torch.Generator().manual_seed(0))
    assert u.shape == (4000, 2, 2, 2) and torch.equal(u[:, :1], x)
    var = float(cld.sigma(cld.t_end)[0, 0, 1, 1])
    assert abs(float(u[:, 1:].var()) / var - 1) < 5 * (2 / u[:, 1:].numel()) ** 0.5


@pytest.mark.parametrize("order", [0, 2])
def test_round_trip_error_falls_with_nfe_on_digits(order):
    vp = gddim.VP()
    data = load_images("digits")[:200].double()
    eps = gddim.exact_eps(vp, data)
    u_end, _ = vp.perturb(data[:4], torch.full((4,), vp.t_end, dtype=torch.float64),
                          generator=torch.Generator().manual_seed(0))
    errors = [round_trip(vp, eps, u_end, nfe, order).error for nfe in (20, 40, 80)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_bad_order_or_nfe_is_a_clear_error():
    vp = gddim.VP()
    u = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="order"):
        invert(vp, gddim.gaussian_eps(vp, 1.0), u, 5, order=4)
    with pytest.raises(ValueError, match="too few"):
        invert(vp, gddim.gaussian_eps(vp, 1.0), u, 2, order=2)


def test_invert_command_reports_round_trip_errors(tmp_path, capsys):
    out = tmp_path / "inv.json"
    rc = main(["invert", "--exact", "digits", "--n-data", "200", "--images", "digits", "--split", "train",
               "--num-images", "4", "--nfe", "20,80", "--order", "1", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    errors = [r["round_trip_error"] for r in result["records"]]
    assert [r["nfe"] for r in result["records"]] == [20, 80] and errors[1] < errors[0]
    assert "round-trip" in capsys.readouterr().out

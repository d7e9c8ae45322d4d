"""Sampler specifications (gddim.spec): one parser and one formatter for every spelling of a sampler setting."""

from __future__ import annotations

import pytest
import torch

import gddim
from gddim import sampling
from gddim.errors import SettingsError
from gddim.spec import METHODS, SamplerSpec


def test_specs_round_trip():
    for spec in ("gddim", "gddim:q=2", "gddim:lam=0.5", "gddim:q=1:param=L", "em", "sscs", "em:lam=0.5"):
        assert SamplerSpec.parse(spec).label == spec == str(SamplerSpec.parse(spec))
    assert SamplerSpec.parse("gddim:q=3").order == 3 and SamplerSpec.parse("em:lam=0").lam == 0.0
    fast = SamplerSpec.parse("gddim:q=3:pred=data:corr=1:interp=sqrt_t:lof=0:final=data")
    assert fast.options() == {"method": "gddim", "order": 3, "parameterization": "R", "prediction": "data",
                              "corrector": True, "interpolation": "sqrt_t", "lower_order_final": False,
                              "final_step": "data"}
    assert SamplerSpec.parse(fast.label) == fast
    assert SamplerSpec.parse("gddim").options() == {"method": "gddim", "parameterization": "R"}


def test_the_canonical_form_orders_keys_and_drops_what_changes_nothing():
    assert SamplerSpec.parse("gddim:lam=0.50:q=2:pred=data").label == "gddim:q=2:lam=0.5:pred=data"
    assert SamplerSpec.parse("gddim:q=0:param=R").label == "gddim:q=0"
    assert SamplerSpec.parse("gddim:q=0:lam=1.0") == SamplerSpec("gddim", 0, 1.0)


@pytest.mark.parametrize("text, message", [
    ("gddim:order=2", "bad sampler option 'order=2'"), ("gddim:q2", "bad sampler option 'q2'"),
    ("gddim:q=", "bad sampler option 'q='"), ("gddim:q=1:q=2", "bad sampler option 'q=2'"),
    ("gddim:corr=2", "corrector in 'gddim:corr=2' must be 0 or 1"), ("gddim:q=two", "bad number 'two' for order"),
    ("ddim", "unknown sampler method 'ddim'"), ("", "unknown sampler method ''")])
def test_bad_specs_are_refused_with_what_is_wrong(text, message):
    with pytest.raises(SettingsError, match=message):
        SamplerSpec.parse(text)


def test_the_methods_are_the_samplers_methods():
    assert sampling.METHODS is METHODS


@pytest.mark.parametrize("text, stochastic", [("gddim", False), ("gddim:q=2", False), ("gddim:lam=0.5", True),
                                              ("euler", False), ("em", True), ("em:lam=0", False), ("sscs", True),
                                              ("ancestral", True)])
def test_stochastic_is_whether_the_sampler_draws_noise(text, stochastic):
    """Two runs from the same start with different noise streams agree exactly unless the sampler draws noise."""
    spec = SamplerSpec.parse(text)
    process = gddim.CLD() if spec.method == "sscs" else gddim.VP()
    point = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64).reshape(1, 2, 2)
    eps = gddim.dirac_eps(process, point)
    u_T = process.prior_sample((2, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = [gddim.sample(process, eps, u_T, 6, generator=torch.Generator().manual_seed(s), **spec.options())
            for s in (1, 2)]
    assert spec.stochastic == (not torch.equal(*runs))

"""Processes are immutable, their config is their identity, and plans are cached on it (bounded, outside them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gddim
from gddim import blocks, sampling
from gddim.errors import ImmutableError
from gddim.exact import dirac_eps


def half_decay(t):
    return -0.5 * np.eye(1)


def unit_noise(t):
    return np.eye(1)


def linear_sde(decay=half_decay) -> gddim.LinearSDE:
    """A VP-like LinearSDE; equal to another one only if built with the same decay function."""
    return gddim.LinearSDE(decay, unit_noise, np.zeros((1, 1)), 1)


BUILDS = {
    "vp": lambda: gddim.VP(),
    "vp-cosine": lambda: gddim.VP(schedule="cosine"),
    "vp-discrete": lambda: gddim.DiscreteVP(np.cumprod(1 - np.linspace(1e-4, 0.02, 50))),
    "cld": lambda: gddim.CLD(),
    "bdm": lambda: gddim.BDM(image_size=4),
    "linear": linear_sde,
    "flow": lambda: gddim.FlowMatching(),
}
# for each process, a parameter of its config and a value it could take
CHANGES = {"vp": ("beta_max", 10.0), "vp-cosine": ("cosine_s", 0.01), "vp-discrete": ("t_start", 0.5),
           "cld": ("m_inv", 2.0), "bdm": ("sigma_blur_max", 1.0), "linear": ("t_end", 0.01),
           "flow": ("t_end", 0.01)}


@pytest.fixture
def empty_plan_cache():
    sampling.cached_plan.cache_clear()
    yield
    sampling.cached_plan.cache_clear()


@pytest.mark.parametrize("name", BUILDS)
def test_assigning_an_attribute_is_refused(name):
    """Setting or deleting any attribute after construction raises ImmutableError naming it and the fix."""
    process = BUILDS[name]()
    attribute, value = CHANGES[name]
    before = getattr(process, attribute)
    with pytest.raises(ImmutableError, match=rf"^cannot set {type(process).__name__}\.{attribute}: .* build a new "
                                             rf"{type(process).__name__} with {attribute}={value!r} instead$"):
        setattr(process, attribute, value)
    with pytest.raises(ImmutableError, match=rf"cannot delete {type(process).__name__}\.{attribute}"):
        delattr(process, attribute)
    with pytest.raises(AttributeError):  # ImmutableError is an AttributeError, as a frozen dataclass's is
        process.new_attribute = 1.0
    assert getattr(process, attribute) == before


def test_derived_values_and_arrays_cannot_change():
    """What a constructor derives (CLD's Γ) is refused like a parameter; its arrays are read-only copies."""
    cld = gddim.CLD()
    with pytest.raises(ImmutableError, match=r"cannot set CLD\.Gamma"):
        cld.Gamma = 1.0
    schedule = np.cumprod(1 - np.linspace(1e-4, 0.02, 50))
    discrete, bdm, sde = gddim.DiscreteVP(schedule), gddim.BDM(image_size=4), linear_sde()
    for array in (discrete.alphas_cumprod, bdm.freqs, sde.sigma0):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0.5
    schedule[0] = 0.5  # the caller's array is not the process's
    assert discrete.alphas_cumprod[0] == 1 - 1e-4


@pytest.mark.parametrize("name", [name for name in BUILDS if name != "linear"])
def test_config_is_the_identity(name):
    """process_from_config(p.config()) == p with the same hash; a process with one parameter changed differs."""
    process = BUILDS[name]()
    rebuilt = gddim.process_from_config(process.config())
    assert rebuilt == process and hash(rebuilt) == hash(process) and rebuilt is not process
    attribute, value = CHANGES[name]
    changed = gddim.process_from_config({**process.config(), attribute: value})
    assert changed != process and changed.config()[attribute] == value


def test_numbers_of_any_type_give_one_identity():
    """An int, a float and a numpy scalar of one value build equal processes (and JSON-ready configs)."""
    processes = [gddim.CLD(m_inv=4), gddim.CLD(m_inv=4.0), gddim.CLD(m_inv=np.float64(4.0))]
    assert len(set(processes)) == 1
    assert all(type(value) in (str, float) for value in processes[0].config().values())


def test_linear_sde_identity_includes_its_code():
    """Two LinearSDEs with one config are equal only when their F and G are the same functions."""
    assert linear_sde() == linear_sde() and hash(linear_sde()) == hash(linear_sde())
    other = linear_sde(lambda t: -0.7 * np.eye(1))
    assert other.config() == linear_sde().config() and other != linear_sde()


def test_equal_processes_share_plans(empty_plan_cache):
    """A plan built for one process is the cached object for any equal process; the process holds no plan."""
    first = gddim.plan(gddim.CLD(), 10, order=2)
    again = gddim.plan(gddim.CLD(m_inv=4), 10, order=2)
    assert again is first
    info = sampling.cached_plan.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert gddim.plan(gddim.CLD(m_inv=2.0), 10, order=2) is not first
    with pytest.raises(ValueError, match="read-only"):
        first.C[0] = 0.0
    assert not any(isinstance(value, dict) for value in vars(gddim.CLD()).values())


def apply_block(process: gddim.LinearProcess, block: np.ndarray, u: torch.Tensor) -> torch.Tensor:
    """A block (M, k, k) applied to states u in pixel layout."""
    return process.from_basis(blocks.apply(process.blocks(block, u), process.to_basis(u)))


def dirac_ode_end(process: gddim.LinearProcess, point: torch.Tensor, u_T: torch.Tensor, ts: np.ndarray):
    """The probability-flow ODE's state at ts[-1] from u_T at ts[0] for Dirac data, in closed form: ε is constant
    on the path, so u = m_s + R_s ε_T with ε_T = R_T⁻¹(u_T - m_T) and m_t = Ψ(t, 0)(x, 0) (MATH §1.5)."""
    mean = lambda t: apply_block(process, process.mean_coef(t)[0], process.data_to_state(point[None]))  # noqa: E731
    eps_T = apply_block(process, np.linalg.inv(process.R(ts[0])[0]), u_T - mean(ts[0]))
    return mean(ts[-1]) + apply_block(process, process.R(ts[-1])[0], eps_T)


def test_a_process_with_another_parameter_gets_fresh_coefficients(empty_plan_cache):
    """The stale-cache bug as a regression test: after CLD(m_inv=4) has sampled, CLD(m_inv=2) on the same grid
    and sampler lands on its own Dirac ODE solution (deterministic q = 0 is exact there); the first plan, which a
    cache keyed without the process would hand it, misses by far more."""
    point = torch.rand((1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    ends, plans = [], []
    for m_inv in (4.0, 2.0):
        process = gddim.CLD(m_inv=m_inv)
        u_T = process.prior_sample((3, 1, 2, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        out = gddim.sample(process, dirac_eps(process, point), u_T, nfe=10, order=0, denoise=False, return_state=True)
        ends.append(dirac_ode_end(process, point, u_T, gddim.time_grid(process, 10)))
        assert (out - ends[-1]).abs().max() < 1e-10, m_inv
        plans.append(gddim.plan(process, 10, order=0, denoise=False))
    stale = sampling.run_recursion(process, dirac_eps(process, point), u_T, plans[0])
    assert (stale - ends[-1]).abs().max() > 1e-2


def test_the_plan_cache_is_bounded(empty_plan_cache):
    """PLAN_CACHE_SIZE plans at the most: the least recently used is dropped (and built again when asked for)."""
    vp, size = gddim.VP(), sampling.PLAN_CACHE_SIZE
    for nfe in range(1, size + 6):
        gddim.plan(vp, nfe, order=0)
    info = sampling.cached_plan.cache_info()
    assert (info.currsize, info.misses, info.hits) == (size, size + 5, 0)
    gddim.plan(vp, size + 5, order=0)
    assert sampling.cached_plan.cache_info().hits == 1
    gddim.plan(vp, 1, order=0)
    assert sampling.cached_plan.cache_info().misses == size + 6

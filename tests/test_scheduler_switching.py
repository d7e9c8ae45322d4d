"""Switching a pipeline between GDDIMScheduler and diffusers' schedulers: each side keeps the other's order, form and
landing; DDIM and DDPM configs, which have no order, switch to gDDIM's default."""

from __future__ import annotations

import diffusers
import pytest
import torch

from gddim.diffusers import GDDIMScheduler
from gddim.sampling import DEFAULT_ORDER

PEERS = [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler, diffusers.DEISMultistepScheduler,
         diffusers.DPMSolverSinglestepScheduler]


def run_steps(scheduler, steps: int = 6) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x, out = torch.ones(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    for t in scheduler.timesteps:
        x = scheduler.step(out, t, x).prev_sample
    assert torch.isfinite(x).all()
    return x


@pytest.mark.parametrize("peer", PEERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("data", [True, False])
def test_switching_with_diffusers_multistep_schedulers_keeps_the_order(peer, order, data):
    # DPM-Solver's ε form cannot land on ᾱ = 1 (it refuses final_sigmas_type="zero", DEIS's configs alike)
    ours = GDDIMScheduler(solver_order=order, predict_x0=data, final_sigmas_type="zero" if data else "sigma_min")
    theirs = peer.from_config(ours.config)
    assert theirs.config.solver_order == order
    if "algorithm_type" in theirs.config and peer is not diffusers.DEISMultistepScheduler:
        assert theirs.config.algorithm_type == ("dpmsolver++" if data else "dpmsolver")
    if "predict_x0" in theirs.config:
        assert theirs.config.predict_x0 == data
    run_steps(theirs)
    back = GDDIMScheduler.from_config(peer(solver_order=order, **_form_key(peer, data)).config)
    assert back.config.solver_order == order
    assert back.config.predict_x0 == (data and peer is not diffusers.DEISMultistepScheduler)
    run_steps(back)
    assert back._recursion.C.shape[1] == order  # model outputs combined per step


def _form_key(peer, data: bool) -> dict:
    if peer is diffusers.UniPCMultistepScheduler:
        return {"predict_x0": data}
    if peer is diffusers.DEISMultistepScheduler:
        return {}  # DEIS is the ε form only
    return {"algorithm_type": "dpmsolver++"} if data else {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}


@pytest.mark.parametrize("peer", PEERS, ids=lambda c: c.__name__)
def test_saved_configs_switch_with_their_defaults(peer, tmp_path):
    # a pipeline's scheduler config on disk holds every key: each side reads the other's order and form
    peer().save_config(tmp_path / "theirs")
    ours = GDDIMScheduler.from_config(GDDIMScheduler.load_config(tmp_path / "theirs"))
    assert ours.config.solver_order == 2 and ours.config.predict_x0 == (peer is not diffusers.DEISMultistepScheduler)
    run_steps(ours)
    # diffusers' solvers landing on σ = 0 need their last step first order, and DPM-Solver the data form there
    GDDIMScheduler(solver_order=3, predict_x0=True, lower_order_final=True).save_config(tmp_path / "ours")
    theirs = peer.from_config(peer.load_config(tmp_path / "ours"))
    assert theirs.config.solver_order == 3
    run_steps(theirs)


def test_a_choice_under_either_name_carries_over():
    # in memory, from_config skips keys left at their defaults; predict_x0 set means algorithm_type set too
    ours = GDDIMScheduler(solver_order=2, predict_x0=False, set_alpha_to_one=False)
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(ours.config)
    assert dpm.config.algorithm_type == "dpmsolver" and dpm.config.final_sigmas_type == "sigma_min"
    unipc = diffusers.UniPCMultistepScheduler.from_config(GDDIMScheduler(set_alpha_to_one=False).config)
    assert unipc.config.final_sigmas_type == "sigma_min"
    assert diffusers.DPMSolverMultistepScheduler.from_config(GDDIMScheduler().config).config.algorithm_type == "dpmsolver++"


def test_solver_order_4_switches_into_unipc():
    theirs = diffusers.UniPCMultistepScheduler.from_config(GDDIMScheduler(solver_order=4).config)
    assert theirs.config.solver_order == 4
    run_steps(theirs, 8)


@pytest.mark.parametrize("peer,to_one", [(diffusers.DDIMScheduler(set_alpha_to_one=False), False),
                                         (diffusers.DDIMScheduler(), True), (diffusers.DDPMScheduler(), True)],
                         ids=["ddim-sigma_min", "ddim", "ddpm"])
def test_ddim_and_ddpm_configs_load_as_the_default_with_their_landing(peer, to_one):
    # DDIM and DDPM have no order to keep: switching to gDDIM gives its default sampler
    ours = GDDIMScheduler.from_config(peer.config)
    assert (ours.config.solver_order, ours.config.predict_x0, ours.config.use_corrector) == (DEFAULT_ORDER + 1, True, True)
    assert ours.config.set_alpha_to_one is to_one
    assert ours.config.final_sigmas_type == ("zero" if to_one else "sigma_min")
    run_steps(ours)


def test_dpm_solver_config_keeps_its_form_and_landing():
    dpm = diffusers.DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++", final_sigmas_type="sigma_min")
    ours = GDDIMScheduler.from_config(dpm.config)
    assert ours.config.predict_x0 is True and ours.config.set_alpha_to_one is False
    assert ours.final_alpha_cumprod == float(ours.alphas_cumprod[0])
    assert not GDDIMScheduler.from_config(diffusers.DEISMultistepScheduler().config).config.predict_x0
    with pytest.warns(UserWarning, match=r"algorithm_type='dpmsolver\+\+' is ignored"):
        assert not GDDIMScheduler(predict_x0=False, algorithm_type="dpmsolver++").config.predict_x0
    with pytest.warns(UserWarning, match="set_alpha_to_one=True is ignored"):
        assert GDDIMScheduler(final_sigmas_type="sigma_min", set_alpha_to_one=True).final_alpha_cumprod < 1


@pytest.mark.parametrize("peer,data,corrector", [(diffusers.DPMSolverMultistepScheduler, True, False),
                                                 (diffusers.UniPCMultistepScheduler, True, True),
                                                 (diffusers.DEISMultistepScheduler, False, False)],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_peer_at_its_defaults_keeps_its_method(peer, data, corrector):
    # in memory, from_config drops the keys a scheduler left at its defaults: the peer's own defaults still apply
    ours = GDDIMScheduler.from_config(peer().config)
    assert (ours.config.solver_order, ours.config.predict_x0, ours.config.use_corrector) == (2, data, corrector)
    assert peer.from_config(ours.config).config.solver_order == 2
    # an explicit choice beats the peer's default
    assert GDDIMScheduler.from_config(peer().config, use_corrector=not corrector).config.use_corrector is not corrector

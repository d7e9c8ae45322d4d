"""Grids tuned to a model (FAST §5): the shortest path, the step costs, held-out gains, grid files, grid="tuned"."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import gddim
from gddim.bench.records import rms_error
from gddim.cli import main
from gddim.data import load_images
from gddim.grid_files import grid_record, read_grid_file, write_grid_file
from gddim.grids import steps_for_nfe, time_grid
from gddim.sampling import plan, run_recursion
from gddim.tuning import (SELECTION_GRIDS, SHORTEST_PATH, STEP_SAMPLER, model_step_costs, shortest_path, smooth_grid,
                          step_costs_of_path, tune, tune_grid)

import reference as ref

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the shortest path ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_shortest_path_equals_brute_force(seed):
    """Exactly n edges from the first to the last node: the DP's path and cost equal the best of all C(K-2, n-1) paths."""
    k = 9
    costs = np.random.default_rng(seed).exponential(size=(k, k))
    costs[np.tril_indices(k)] = np.inf
    for n in range(1, k):
        paths = [(0, *inner, k - 1) for inner in itertools.combinations(range(1, k - 1), n - 1)]
        total = lambda p: sum(costs[a, b] for a, b in zip(p[:-1], p[1:]))
        best = min(paths, key=total)
        found = shortest_path(costs, n)
        assert len(found) == n + 1 and found[0] == 0 and found[-1] == k - 1 and np.all(np.diff(found) > 0)
        assert total(tuple(found)) == pytest.approx(total(best), rel=1e-12)
    with pytest.raises(ValueError, match="use at least 10 candidates"):
        shortest_path(costs, k)


@pytest.mark.parametrize("name", ["cld", "bdm", "vp-linear"])
def test_step_costs_are_one_gddim_step(name):
    """costs[a, b] is the RMS gap between one step of STEP_SAMPLER (the sampler's own plan) from states[a] and states[b]."""
    process = ref.build(name)
    times = time_grid(process, 5, "logsnr")
    gen = torch.Generator().manual_seed(0)
    shape = (len(times), 3, process.k, 4, 4)
    states, eps = torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)
    costs = step_costs_of_path(process, times, states, eps)
    assert np.all(np.isinf(costs[np.tril_indices(len(times))]))
    for a, b in [(0, 1), (0, 5), (2, 4), (4, 5)]:
        rec = plan(process, 1, grid=times[[a, b]], denoise=False, **STEP_SAMPLER.options())
        step = run_recursion(process, lambda u, t: eps[a], states[a], rec)
        assert costs[a, b] == pytest.approx(rms_error(step, states[b]), rel=1e-10)


# ---- tuned beats quadratic on prior samples it has not seen -----------------------------------------------------

@pytest.mark.parametrize("name,nfe", [("vp-linear", 5), ("cld", 6)])
def test_tuned_grid_beats_quadratic_on_held_out_batch(name, nfe):
    """Exact scores of 64 digits; tuned on 24 prior samples (seed 0), measured on 24 others (seed 1) against the ODE."""
    process = ref.build(name)
    data = load_images("digits")[:64]
    eps_fn = gddim.exact_eps(process, data)
    draw = lambda seed: process.prior_sample((24, 1, 8, 8), generator=torch.Generator().manual_seed(seed),
                                             dtype=torch.float64)
    times = tune_grid(process, eps_fn, draw(0), nfe, candidates=40)
    assert times[0] == process.t_start and times[-1] == process.t_end and np.all(np.diff(times) < 0)
    held_out = draw(1)
    truth = gddim.reference_ode(process, eps_fn, held_out, rtol=1e-7, atol=1e-7)  # path errors are ~0.1
    tuned = rms_error(gddim.sample(process, eps_fn, held_out, nfe, grid=times), truth)
    quadratic = rms_error(gddim.sample(process, eps_fn, held_out, nfe, grid="quadratic"), truth)
    assert tuned < 0.9 * quadratic, (tuned, quadratic)


@pytest.mark.parametrize("name", ["vp-linear", "cld"])
def test_tune_keeps_the_candidate_whose_end_is_nearest_an_independent_solve(name):
    """Each recorded end error is the sampler's gap to the ODE solved again, independently and tighter, from u_T."""
    process = ref.build(name)
    eps_fn = gddim.exact_eps(process, load_images("digits")[:64])
    u_T = process.prior_sample((16, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tuned = tune(process, eps_fn, u_T, 8, candidates=30, rtol=1e-9)
    steps = steps_for_nfe(process, 8)
    assert set(tuned.end_errors) >= {SHORTEST_PATH, *SELECTION_GRIDS}
    assert tuned.chosen == min(tuned.end_errors, key=tuned.end_errors.get) and tuned.sampler == "gddim"
    truth = gddim.reference_ode(process, eps_fn, u_T, rtol=1e-11, atol=1e-11, denoise=False, return_state=True)
    for label, grid in {"quadratic": "quadratic", "uniform": "uniform", tuned.chosen: tuned.times}.items():
        end = gddim.sample(process, eps_fn, u_T, steps, grid=grid, denoise=False, return_state=True)
        assert tuned.end_errors[label] == pytest.approx(rms_error(end, truth), rel=1e-5), label
    assert tuned.model_calls > steps * len(tuned.end_errors)


def test_smoothing_leaves_a_log_snr_grid_and_shrinks_jitter_threefold():
    """A grid uniform in log-SNR is a fixed point; steps alternating a, b, a, ... in log-SNR differ by |a - b| / 3 after."""
    process = ref.build("vp-linear")
    even = time_grid(process, 12, "logsnr")
    np.testing.assert_allclose(smooth_grid(process, even, 3), even, rtol=1e-9)
    ends = process.log_snr(np.array([process.t_start, process.t_end]))
    log_steps = np.tile(np.log([1.0, 2.0]), 6)
    targets = ends[0] + np.concatenate([[0], np.cumsum(np.exp(log_steps))]) * (ends[1] - ends[0]) / 18
    jittered = process.time_of_log_snr(targets, process.t_end, process.t_start)
    smoothed = smooth_grid(process, jittered, 3)
    assert smoothed[0] == jittered[0] and smoothed[-1] == jittered[-1] and np.all(np.diff(smoothed) < 0)
    log_sizes = np.log(np.diff(process.log_snr(smoothed)))
    assert np.max(np.abs(np.diff(log_sizes))) == pytest.approx(np.log(2.0) / 3, rel=1e-6)


def test_tune_refuses_a_bad_sampler_or_window_before_any_work():
    process = ref.build("vp-linear")
    calls = []
    eps_fn = lambda u, t: calls.append(1) or gddim.gaussian_eps(process, 0.3)(u, t)
    u_T = process.prior_sample((2, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown sampler method 'ddpm'"):
        tune(process, eps_fn, u_T, 5, candidates=8, sampler="ddpm")
    with pytest.raises(ValueError, match="sampler must be a gddim.spec.SamplerSpec or its text"):
        tune(process, eps_fn, u_T, 5, candidates=8, sampler={"order": 2})
    assert not calls
    with pytest.raises(ValueError, match="window must be an odd number of steps, 1 or more"):
        smooth_grid(process, time_grid(process, 6, "logsnr"), 2)
    assert tune(process, eps_fn, u_T, 5, candidates=8, rtol=1e-6, sampler="gddim:q=1").sampler == "gddim:q=1"


def test_model_step_costs_counts_calls_and_candidates():
    process = ref.build("vp-linear")
    eps_fn = gddim.gaussian_eps(process, 0.3)
    u_T = process.prior_sample((4, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []
    costs = model_step_costs(process, lambda u, t: calls.append(1) or eps_fn(u, t), u_T, candidates=7, rtol=1e-6)
    assert costs.model_calls == len(calls) > 7 and costs.batch == 4 and costs.times.shape == (7,)
    assert costs.path_cost(6) == pytest.approx(np.trace(costs.costs, offset=1))  # 6 steps through 7 times: all of them


# ---- grid files --------------------------------------------------------------------------------------------

def test_grid_file_round_trip_and_refusals(tmp_path):
    process = ref.build("cld")
    times = time_grid(process, 4, "logsnr")
    path = write_grid_file(tmp_path / "g.json", grid_record(times, 5, process, {"note": "test"}))
    record = read_grid_file(path)
    np.testing.assert_array_equal(record["times"], times)
    assert record["nfe"] == 5 and record["steps"] == 4 and record["tuned_on"] == {"note": "test"}
    u_T = process.prior_sample((3, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps_fn = gddim.gaussian_eps(process, 0.5)
    assert torch.equal(gddim.sample(process, eps_fn, u_T, 5, order=2, grid=path),
                       gddim.sample(process, eps_fn, u_T, 5, order=2, grid=times))
    with pytest.raises(ValueError, match="tuned for nfe=5, not nfe=6"):
        gddim.sample(process, eps_fn, u_T, 6, grid=str(path))
    with pytest.raises(ValueError, match="tuned for the process"):
        gddim.plan(gddim.CLD(beta_1=5.0), 5, grid=path)
    with pytest.raises(ValueError, match="explicit grid has 4 steps but nfe=5 asks for 5"):
        gddim.plan(process, 5, grid=path, denoise=False)


@pytest.mark.parametrize("text,message", [
    ("{", "not valid JSON"),
    ('{"times": [1, 0.5]}', "not a gddim grid file"),
    ('{"format": "gddim-grid", "version": 2}', "version 2"),
    ('{"format": "gddim-grid", "version": 1, "times": [1, 0.5]}', r"lacks the field\(s\) \['nfe', 'steps', 'process'\]"),
    ('{"format": "gddim-grid", "version": 1, "times": [0.5, 1], "nfe": 1, "steps": 1, "process": {}}', "strictly decreasing"),
    ('{"format": "gddim-grid", "version": 1, "times": ["1", 0.5], "nfe": 1, "steps": 1, "process": {}}', "list of at least 2"),
    ('{"format": "gddim-grid", "version": 1, "times": [1, 0.5], "nfe": 1, "steps": 2, "process": {}}', '"steps" the number'),
])
def test_bad_grid_files_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        gddim.plan(gddim.VP(), 1, grid=path)


def test_missing_grid_file_is_an_unknown_grid(tmp_path):
    with pytest.raises(ValueError, match="neither one of .* nor an existing grid file"):
        gddim.plan(gddim.VP(), 5, grid=str(tmp_path / "none.json"))


# ---- the shipped tuned grids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_tuned_grid_for_every_step_count(name):
    """grid="tuned" gives a strictly decreasing grid with exact ends for every NFE 1..1000 and custom end times."""
    process = ref.build(name)
    for nfe in range(1 + int(process.denoise), 1001):
        ts = time_grid(process, steps_for_nfe(process, nfe), "tuned")
        assert len(ts) == steps_for_nfe(process, nfe) + 1, nfe
        assert ts[0] == process.t_start and ts[-1] == process.t_end and np.all(np.diff(ts) < 0), nfe
    for nfe in (2, 10, 1000):  # and the sampler takes it
        np.testing.assert_array_equal(gddim.plan(process, nfe, grid="tuned").times[0], process.t_start)
    ts = time_grid(process, 50, "tuned", t_start=0.5, t_end=0.01)
    assert ts[0] == 0.5 and ts[-1] == 0.01 and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("name", ["vp", "cld", "bdm"])
def test_tuned_grid_reproduces_the_stored_grids(name):
    """For the default processes the stored grids come back to round-off; beyond them the warp is interpolated."""
    from gddim.grid_files import TUNED_DIR

    stored = json.loads((TUNED_DIR / f"{name}.json").read_text())
    process = gddim.process_from_config(stored["process"])
    for n, times in stored["grids"].items():
        np.testing.assert_allclose(time_grid(process, int(n), "tuned"), times, rtol=1e-12)
    finest = max(map(int, stored["grids"]))
    doubled = time_grid(process, 2 * finest, "tuned")
    np.testing.assert_allclose(doubled[::2], stored["grids"][str(finest)], rtol=1e-12)


def test_tuned_grid_refuses_a_process_without_one():
    process = gddim.LinearSDE(lambda t: -0.5 * np.eye(1), lambda t: np.eye(1), np.zeros((1, 1)), 1, name="vp")
    with pytest.raises(ValueError, match="no tuned grid ships for process"):
        time_grid(process, 5, "tuned")


# ---- the command -------------------------------------------------------------------------------------------

def test_cli_tune_grid_sample_evaluate(tmp_path, capsys):
    from gddim.networks import NetworkConfig
    from gddim.training import TrainConfig, train

    run = tmp_path / "run"
    micro = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                          norm_groups=8, dropout=0.1, gaussian_skip=0.5)
    train(gddim.CLD(), load_images("digits")[:64], run, micro,
          TrainConfig(steps=2, batch_size=8, warmup=1, ckpt_every=2, sample_nfe=4), {"source": "digits", "image_size": None},
          progress=False)
    grid = tmp_path / "grid.json"
    # a loose ODE tolerance: an untrained network's ODE takes hundreds of calls at any tighter one
    tune = ["tune-grid", str(run), "--nfe", "5", "--out", str(grid), "--batch", "2", "--candidates", "12",
            "--rtol", "1e-1"]
    assert main(tune) == 0
    record = read_grid_file(grid)
    assert record["nfe"] == 5 and record["steps"] == 4 and record["tuned_on"]["candidates"] == 12
    assert record["tuned_on"]["step_sampler"] == STEP_SAMPLER.label == "gddim:q=0"
    assert record["tuned_on"]["chosen"] in record["tuned_on"]["end_errors"] and record["tuned_on"]["judged_by"] == "gddim"
    assert main(tune) == 2 and "exists" in capsys.readouterr().err  # never overwrites
    assert main([*tune[:5], str(tmp_path / "g2.json"), "--nfe", "20", "--candidates", "12"]) == 2
    assert "use candidates >= 20" in capsys.readouterr().err
    assert main(["sample", str(run), "--grid", str(grid), "--nfe", "5", "--num-samples", "3", "--out", str(tmp_path / "s")]) == 0
    assert main(["sample", str(run), "--grid", str(grid), "--nfe", "6", "--num-samples", "3", "--out", str(tmp_path / "s6")]) == 2
    assert "tuned for nfe=5, not nfe=6" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--grid", str(grid), "--samplers", "gddim:q=1", "--nfe", "5", "--num-samples", "20",
                 "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["grid"] == str(grid)

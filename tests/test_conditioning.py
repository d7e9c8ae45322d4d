"""Conditioning in the engine: model keyword arguments, the per-step callback and classifier-free guidance, against
exact scores of class-conditional Dirac and Gaussian data (issue 10, "conditioning in the engine")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gddim
from gddim import blocks
from gddim.exact import class_conditional_eps, dirac_eps, exact_eps, gaussian_eps, gaussian_gain
from gddim.grids import steps_for_nfe, time_grid
from gddim.guidance import ClassifierFreeGuidance
from gddim.sampling import sampler_grid

import reference as ref

# every sampler method of gddim.sample on CLD (SSCS is CLD's own)
METHODS = [("gddim", {}), ("gddim", dict(order=2)), ("gddim", dict(lam=0.5, order=1, prediction="data")),
           ("euler", {}), ("em", {}), ("ancestral", {}), ("sscs", {})]
SHAPE = (1, 2, 2)  # (C, H, W)
LABELS = torch.tensor([2, 0, 1, 2, 0])


def class_points() -> torch.Tensor:
    """Three data points (one per class) in [-1, 1], at least 0.5 apart."""
    points = torch.tensor([[-0.8, 0.3, 0.6, -0.2], [0.5, -0.6, -0.1, 0.7], [0.1, 0.9, -0.7, -0.9]], dtype=torch.float64)
    return points.reshape(3, *SHAPE)


def conditional_dirac(process):
    """Exact ε of Dirac data per class, and of the three points together for the null label 3."""
    points = class_points()
    return points, class_conditional_eps([dirac_eps(process, p) for p in points], null=exact_eps(process, points))


def prior(process, batch: int = len(LABELS), seed: int = 1) -> torch.Tensor:
    return process.prior_sample((batch, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("method,options", METHODS, ids=str)
def test_model_kwargs_reach_every_call_unchanged(method, options):
    """The same label tensor and extra argument, not copies, at every one of the nfe calls."""
    process = ref.build("cld")
    _, eps_fn = conditional_dirac(process)
    seen = []
    def recording(u, t, cond, note):
        seen.append((cond, note))
        return eps_fn(u, t, cond=cond)
    note = object()
    gddim.sample(process, recording, prior(process), nfe=8, method=method, generator=torch.Generator().manual_seed(0),
                 model_kwargs={"cond": LABELS, "note": note}, **options)
    assert len(seen) == 8 and all(cond is LABELS and got is note for cond, got in seen)


@pytest.mark.parametrize("name", ["vp-linear", "cld"])
def test_class_conditional_exact_score_lands_on_each_class_point(name):
    """The final data step x̂(u, t_end) of the exact score is each sample's class point (to round-off); and every
    sampler gives each sample what it gives with its class's own Dirac score alone (same noise)."""
    process = ref.build(name)
    points, eps_fn = conditional_dirac(process)
    u_T = prior(process)
    x = gddim.sample(process, eps_fn, u_T, nfe=10, final_step="data", model_kwargs={"cond": LABELS})
    assert (x - points[LABELS]).abs().max() < 1e-9
    for method, options in METHODS if name == "cld" else METHODS[:-1]:
        run = lambda model, **kwargs: gddim.sample(process, model, u_T, nfe=10, method=method, **options, **kwargs,
                                                   generator=torch.Generator().manual_seed(0))
        x = run(eps_fn, model_kwargs={"cond": LABELS})
        for label, point in enumerate(points):
            rows = LABELS == label
            torch.testing.assert_close(x[rows], run(dirac_eps(process, point))[rows], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,method", [("vp-linear", "gddim"), ("cld", "gddim"), ("bdm", "gddim"), ("cld", "sscs"),
                                         ("vp-linear", "em")])
def test_callback_sees_every_model_step_with_the_exact_data_prediction(name, method):
    """One callback per model call, with its step, its time and the state the model saw; for Dirac data the
    closed-form data prediction E[x_0 | u_t] is the class's point itself at every step."""
    process = ref.build(name)
    shape = (1, 4, 4) if name == "bdm" else SHAPE
    point = torch.linspace(-0.9, 0.8, int(np.prod(shape)), dtype=torch.float64).reshape(shape)
    u_T = process.prior_sample((3, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    calls = []
    def callback(step, t, state, x_hat):
        calls.append((step, t, state.clone(), x_hat))
    times = []
    def eps_fn(u, t):
        times.append(float(t[0]))
        return dirac_eps(process, point)(u, t)
    gddim.sample(process, eps_fn, u_T, nfe=7, method=method, callback=callback, generator=torch.Generator().manual_seed(0))
    assert [c[0] for c in calls] == list(range(7))
    np.testing.assert_array_equal([c[1] for c in calls], times)
    ts = time_grid(process, steps_for_nfe(process, 7), sampler_grid(process, None, method))
    np.testing.assert_allclose(times[:-1] if method == "sscs" else times[:len(ts)],
                               0.5 * (ts[:-1] + ts[1:]) if method == "sscs" else ts[:len(times)], rtol=1e-15)
    if method != "sscs":  # SSCS calls the model after half a linear step
        # BDM's state makes a round trip through its 4x4 DCT: four passes of 4-term sums, each within a few ulp of
        # max |u| (seen: up to 3 ulp with AVX-512 kernels), so 16 ulp of max |u| bounds it on any BLAS
        round_trip = 16 * torch.finfo(torch.float64).eps * u_T.abs().max().item()
        torch.testing.assert_close(calls[0][2], u_T, rtol=0, atol=round_trip)
    for _, _, state, x_hat in calls:
        assert state.shape == u_T.shape and x_hat.shape == (3, *shape)
        assert (x_hat - point).abs().max() < 1e-9


def test_guidance_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    process = ref.build("cld")
    _, eps_fn = conditional_dirac(process)
    u_T, null = prior(process), torch.full_like(LABELS, 3)
    run = lambda model, labels: gddim.sample(process, model, u_T, nfe=8, model_kwargs={"cond": labels})
    torch.testing.assert_close(run(ClassifierFreeGuidance(eps_fn, 1.0, null=3), LABELS), run(eps_fn, LABELS),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(run(ClassifierFreeGuidance(eps_fn, 0.0, null=3), LABELS), run(eps_fn, null),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["vp-linear", "cld", "bdm"])
def test_guidance_of_gaussian_scores_is_the_blended_gain(name):
    """Class data N(0, 0.3 I), null data N(0, 1.5 I): the guided ε at scale w is ((1 − w) E_null + w E_c) u with
    E = Kᵀ C_t⁻¹ (exact.gaussian_gain), at every time, and sampling with it follows that linear model."""
    process = ref.build(name)
    shape = (1, 4, 4) if name == "bdm" else SHAPE
    eps_fn = class_conditional_eps([gaussian_eps(process, 0.3)], null=gaussian_eps(process, 1.5))
    guided = ClassifierFreeGuidance(eps_fn, 2.5, null=1)
    labels = torch.zeros(4, dtype=torch.long)
    u = process.prior_sample((4, *shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def blended(v, t):
        covariances = []
        for variance in (1.5, 0.3):
            cov = np.zeros((process.modes, process.k, process.k))
            cov[:, 0, 0] = variance
            covariances.append(gaussian_gain(process, float(t[0]), cov)[0])
        gain = process.blocks(-1.5 * covariances[0] + 2.5 * covariances[1], v)
        return process.from_basis(blocks.apply(gain, process.to_basis(v)))

    for t in (0.9, 0.3, 0.01):
        tt = torch.full((4,), t, dtype=torch.float64)
        torch.testing.assert_close(guided(u, tt, cond=labels), blended(u, tt), rtol=1e-12, atol=1e-12)
    # the two ε differ by round-off (1e-16), which BDM's data form multiplies by 1/M up to 8e4
    torch.testing.assert_close(gddim.sample(process, guided, u, nfe=6, model_kwargs={"cond": labels}),
                               gddim.sample(process, blended, u, nfe=6), rtol=0, atol=1e-10)


def test_guidance_needs_its_condition():
    process = ref.build("vp-linear")
    _, eps_fn = conditional_dirac(process)
    with pytest.raises(gddim.GddimError, match=r"pass model_kwargs=\{'cond': \.\.\.\}"):
        gddim.sample(process, ClassifierFreeGuidance(eps_fn, 2.0, null=3), prior(process), nfe=5)

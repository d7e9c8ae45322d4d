"""Noise keyed on the sample index: a sample does not depend on the batch or the range it is made in."""

import pytest
import torch

import gddim
from gddim.evaluation import sample_images
from gddim.exact import gaussian_eps
from gddim.networks import EpsModel, preset
from gddim.noise import SampleNoise, sample_seed

pytestmark = pytest.mark.usefixtures("one_thread")

# a deterministic sampler and every kind of per-step noise: stochastic gDDIM, Euler-Maruyama, ancestral, SSCS
SAMPLERS = [dict(order=2), dict(order=0, lam=0.5), dict(order=2, lam=1.0, prediction="data"), dict(method="em"),
            dict(method="ancestral"), dict(method="sscs")]


def batched(process, eps_fn, n: int, batch: int, seed: int, **options) -> torch.Tensor:
    """Samples 0..n-1 made in batches of `batch`, each batch with its samples' own generators."""
    out = []
    for start in range(0, n, batch):
        noise = SampleNoise(seed, range(start, min(start + batch, n)))
        out.append(gddim.sample(process, eps_fn, noise.prior(process, (1, 4, 4)), 12, generator=noise, **options))
    return torch.cat(out)


@pytest.mark.parametrize("options", SAMPLERS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_batch_3_and_batch_8_give_the_same_samples_bit_for_bit(options):
    process = gddim.CLD()
    eps_fn = gaussian_eps(process, 0.5)  # exact and computed sample by sample: any difference is the noise's
    whole = batched(process, eps_fn, 8, 8, seed=5, **options)
    assert torch.equal(batched(process, eps_fn, 8, 3, seed=5, **options), whole)
    assert not torch.equal(batched(process, eps_fn, 8, 8, seed=6, **options), whole)  # the seed matters


def test_each_sample_has_its_own_stream():
    noise = SampleNoise(0, range(4))
    like = torch.zeros(4, 2, 3, 3)
    draws = noise.normal(like)
    assert draws.shape == like.shape and draws.dtype == like.dtype
    assert all(not torch.equal(draws[i], draws[j]) for i in range(4) for j in range(i))
    single = SampleNoise(0, [2]).normal(like[:1])  # sample 2 alone draws what it drew in the batch
    assert torch.equal(single[0], draws[2])
    assert sample_seed(0, 1) != sample_seed(1, 0) and sample_seed(3, 7) == sample_seed(3, 7)
    with pytest.raises(ValueError, match="4 generators, one per sample; the state has 2"):
        noise.normal(like[:2])


def test_network_samples_do_not_depend_on_the_batch_or_the_range_they_are_made_in():
    torch.manual_seed(0)
    process = gddim.CLD()
    model = EpsModel(preset("tiny"), 1, 8, process.k, process).eval()
    options = dict(nfe=6, order=0, lam=1.0, seed=2)
    whole = sample_images(process, model, 8, batch=4, **options)
    # the same batches, started elsewhere: the same computations, so the same bits (what makes shards exact)
    assert torch.equal(sample_images(process, model, 4, batch=4, first=4, **options), whole[4:])
    # other batch sizes change only the network's rounding (batched float32 kernels sum in another order)
    assert torch.allclose(sample_images(process, model, 8, batch=3, **options), whole, rtol=0, atol=1e-4)
    assert not torch.allclose(sample_images(process, model, 8, batch=4, **{**options, "seed": 3}), whole, atol=0.1)

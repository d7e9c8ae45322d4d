"""Exact ε-models (gddim.exact, BENCHMARKS §1, MATH §1.3, §1.5) against brute-force float64 linear algebra.

The brute force writes every process as dense D x D matrices in pixel layout (the DCT from scipy for BDM)
and evaluates the score of the Gaussian mixture p_t(u) = (1/N) Σ_i N(u; m_i, Σ_t) directly:
s = Σ_i w_i Σ⁻¹(m_i - u), w = softmax of the log-densities; then ε_K = -K_pixᵀ s (MATH §1.3).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.special
import torch

from gddim import dirac_eps, exact_eps, gaussian_eps
from gddim.errors import SettingsError

import reference as ref

SHAPES = {"vp-linear": (2, 1, 2), "vp-cosine": (1, 2, 1), "cld": (2, 1, 2), "bdm": (2, 4, 4)}  # data (C, H, W)
TIMES = (1e-3, 0.05, 0.3, 0.9)
# the brute force inverts Σ_t (condition up to ~1e6 for CLD at t = 1e-3): agreement to ~1e-12 relative
TOL = 1e-9


def basis_matrix(process, shape) -> np.ndarray:
    """T with y = T u: a state (k, C, H, W) flattened in pixel layout -> in the process's basis."""
    c, h, w = shape
    if process.modes == 1:
        return np.eye(process.k * c * h * w)
    dct2 = np.kron(scipy.fft.dct(np.eye(h), norm="ortho", axis=0), scipy.fft.dct(np.eye(w), norm="ortho", axis=0))
    return np.kron(np.eye(process.k * c), dct2)


def dense(process, blocks: np.ndarray, shape) -> np.ndarray:
    """Per-mode blocks (M, k, k) as one D x D matrix acting on flattened pixel-layout states of data shape (C, H, W);
    a single mode (VP, CLD) is shared by every pixel."""
    c, h, w = shape
    k = process.k
    unit = lambda a, b: np.outer(np.eye(k)[a], np.eye(k)[b])
    per_pixel = lambda a, b: np.diag(np.broadcast_to(blocks[:, a, b], h * w))
    big = sum(np.kron(unit(a, b), np.kron(np.eye(c), per_pixel(a, b))) for a in range(k) for b in range(k))
    T = basis_matrix(process, shape)
    return T.T @ big @ T


def mixture_eps(process, data: np.ndarray, u: np.ndarray, t: float, parameterization: str = "R") -> np.ndarray:
    """ε_K(u, t) of the empirical distribution of data (N, C, H, W) for flattened states u (B, D)."""
    n, shape = len(data), data.shape[1:]
    u0 = np.concatenate([data.reshape(n, -1), np.zeros((n, (process.k - 1) * data[0].size))], axis=1)
    means = u0 @ dense(process, process.mean_coef(t)[0], shape).T
    sigma = dense(process, process.sigma(t)[0], shape)
    K = dense(process, process.K(t, parameterization)[0], shape)
    prec = np.linalg.inv(sigma)
    diff = means[None] - u[:, None]  # (B, N, D)
    logits = -0.5 * np.einsum("bnd,de,bne->bn", diff, prec, diff)
    weights = scipy.special.softmax(logits, axis=1)
    score = np.einsum("bn,bnd->bd", weights, diff) @ prec.T
    return -score @ K


def states_near(process, data: torch.Tensor, t: float, batch: int, seed: int) -> torch.Tensor:
    """States u_t drawn around the data points (so the posterior weights are neither uniform nor one-hot)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data), (batch,), generator=g)
    z = torch.randn((batch, process.k * data.shape[1], *data.shape[2:]), generator=g, dtype=torch.float64)
    u, _ = process.perturb(data[idx], torch.full((batch,), t, dtype=torch.float64), z=z)
    return u


def dataset(name: str, n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPES[name]), generator=g, dtype=torch.float64) * 2 - 1


def assert_close(actual, expected, tol=TOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.max(np.abs(actual - expected)) <= tol * np.max(np.abs(expected))


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_exact_eps_matches_brute_force_mixture(name, t):
    process, data = ref.build(name), dataset(name)
    u = states_near(process, data, t, batch=4, seed=1)
    eps = exact_eps(process, data)(u, torch.full((4,), t, dtype=torch.float64))
    assert eps.shape == u.shape and eps.dtype == torch.float64
    assert_close(eps.flatten(1), mixture_eps(process, data.numpy(), u.flatten(1).numpy(), t))


@pytest.mark.parametrize("t", [1e-3, 0.3])
def test_exact_eps_in_l_coordinates(t):
    """K = L: ε_L = -Lᵀ s, i.e. ε_L = Lᵀ R⁻ᵀ ε_R (MATH §1.3); on CLD the two differ by a large rotation."""
    process, data = ref.build("cld"), dataset("cld")
    u = states_near(process, data, t, batch=4, seed=2)
    tt = torch.full((4,), t, dtype=torch.float64)
    eps_l = exact_eps(process, data, parameterization="L")(u, tt)
    assert_close(eps_l.flatten(1), mixture_eps(process, data.numpy(), u.flatten(1).numpy(), t, "L"))
    assert (eps_l - exact_eps(process, data)(u, tt)).abs().max() > 0.1


@pytest.mark.parametrize("name", ["cld", "bdm"])
def test_chunking_does_not_change_exact_eps(name):
    """The running log-sum-exp over data chunks gives the one-shot answer (chunk 1, uneven 3, all)."""
    process, data = ref.build(name), dataset(name, n=7)
    u = states_near(process, data, 0.2, batch=3, seed=3)
    tt = torch.full((3,), 0.2, dtype=torch.float64)
    whole = exact_eps(process, data)(u, tt)
    for chunk in (1, 3):
        torch.testing.assert_close(exact_eps(process, data, chunk=chunk)(u, tt), whole, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_single_point_is_the_dirac_formula(name):
    """N = 1: ε = K_t⁻¹(u - m_t) (MATH §1.5), evaluated per mode in the basis."""
    process = ref.build(name)
    point = dataset(name, n=1)[0]
    t = 0.1
    u = states_near(process, point[None], t, batch=3, seed=4)
    y = process.to_basis(u).numpy()  # (B, k, C, H, W)
    m = process.to_basis(process.data_to_state(point[None])).numpy()
    mode_first = lambda a: a.reshape(*a.shape[:3], -1)  # (B, k, C, M)
    K, mean = process.R(t)[0], process.mean_coef(t)[0]  # (M, k, k)
    expected = np.einsum("mab,nbcm->nacm", np.linalg.inv(K),
                         mode_first(y) - np.einsum("mab,nbcm->nacm", mean, mode_first(m)))
    expected = process.from_basis(torch.from_numpy(expected.reshape(y.shape)))
    tt = torch.full((3,), t, dtype=torch.float64)
    for eps_fn in (dirac_eps(process, point), exact_eps(process, point[None])):
        assert_close(eps_fn(u, tt), expected, tol=1e-12)


@pytest.mark.parametrize("t", [1e-3, 0.4, 1.0])
@pytest.mark.parametrize("name", ref.PROCESS_NAMES)
def test_gaussian_eps_is_linear_gain(name, t):
    """x_0 ~ N(0, v I): ε = Kᵀ C_t⁻¹ u with C_t = M_t C_0 M_tᵀ + Σ_t (MATH §8.4 #10), dense in pixel layout."""
    process, variance = ref.build(name), 0.3
    shape = SHAPES[name]
    u = states_near(process, dataset(name), t, batch=3, seed=5)
    mean, K = dense(process, process.mean_coef(t)[0], shape), dense(process, process.R(t)[0], shape)
    d = u[0].numel()
    data_cov = np.diag(np.r_[np.full(d // process.k, variance), np.zeros(d - d // process.k)])
    cov = mean @ data_cov @ mean.T + dense(process, process.sigma(t)[0], shape)
    expected = u.flatten(1).numpy() @ np.linalg.solve(cov, K)  # rows: (Kᵀ C⁻¹ u)ᵀ
    eps = gaussian_eps(process, variance)(u, torch.full((3,), t, dtype=torch.float64))
    assert_close(eps.flatten(1), expected, tol=1e-11)


def test_gaussian_eps_is_the_limit_of_many_gaussian_samples():
    """The exact score of 4000 draws from N(0, 0.3) approaches the Gaussian gain (VP, 1 pixel, t = 0.5)."""
    process = ref.build("vp-linear")
    data = torch.randn((4000, 1, 1, 1), generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.3**0.5
    u = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64).reshape(7, 1, 1, 1)
    tt = torch.full((7,), 0.5, dtype=torch.float64)
    # the sample variance of 4000 draws is off by ~2%; the posterior mean moves by about as much
    torch.testing.assert_close(exact_eps(process, data)(u, tt), gaussian_eps(process, 0.3)(u, tt), rtol=0.03, atol=0.01)


def test_exact_eps_bad_input():
    process = ref.build("cld")
    data = dataset("cld")
    with pytest.raises(SettingsError, match=r"non-empty \(N, C, H, W\) tensor"):
        exact_eps(process, data[0])
    with pytest.raises(SettingsError, match=r"non-empty \(N, C, H, W\) tensor"):
        exact_eps(process, data[:0])
    eps_fn = exact_eps(process, data)
    u = states_near(process, data, 0.3, batch=2, seed=7)
    with pytest.raises(SettingsError, match="one time per call"):
        eps_fn(u, torch.tensor([0.3, 0.4], dtype=torch.float64))
    with pytest.raises(SettingsError, match="does not match the data's state shape"):
        eps_fn(u[..., :1], torch.full((2,), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels"):
        eps_fn(u[:, :3], torch.full((2,), 0.3, dtype=torch.float64))

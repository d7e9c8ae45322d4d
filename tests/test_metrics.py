import numpy as np
import pytest
import scipy.linalg
import torch

from gddim.data import load_images, load_labels
from gddim.errors import SettingsError
from gddim.metrics import (
    FeatureNet,
    FeatureStats,
    available_feature_nets,
    classifier_features,
    feature_net_info,
    frechet_distance,
    inception_fid,
    load_feature_net,
    real_floor,
    stats_distance,
)


@pytest.fixture(scope="module")
def net():
    return load_feature_net("digits", 8)


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


def _numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_distance_of_a_set_to_itself_is_zero(net, digits):
    half = digits[:750]
    scale = frechet_distance(half, -half, net)
    assert scale > 1.0
    assert abs(frechet_distance(half, half, net)) < 1e-6 * scale


def test_matches_direct_computation_on_the_same_features(net, digits):
    fake = (digits[:700] + 0.3 * torch.randn(700, 1, 8, 8, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    real = digits[700:]
    ours = frechet_distance(real, fake, net, batch_size=128)
    with torch.no_grad():
        f_real, f_fake = (net.features(x).double().numpy() for x in (real, fake))
    assert ours == pytest.approx(_numpy_frechet(f_real, f_fake), rel=1e-9)


def test_grows_with_noise_and_shift(net, digits):
    real, base = digits[:750], digits[750:]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(base.shape, generator=g)
    floor = frechet_distance(real, base, net)
    noisy = [frechet_distance(real, (base + s * noise).clamp(-1, 1), net) for s in (0.2, 0.8)]
    assert floor < noisy[0] < noisy[1]
    assert noisy[1] > 5 * floor
    assert floor < frechet_distance(real, (base + 0.5).clamp(-1, 1), net)


def test_real_floor_is_the_distance_between_halves(net, digits):
    floor = real_floor(digits, net)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(1500))
    assert floor == pytest.approx(frechet_distance(digits[perm[:750]], digits[perm[750:]], net), rel=1e-12)
    # fewer samples per side inflate the estimate
    assert real_floor(digits, net, n=200) > floor > 0
    with pytest.raises(ValueError, match=r"n must lie in \[2, "):
        real_floor(digits, net, n=751)


def test_digits_classifier_accuracy_on_the_test_split(net):
    with torch.no_grad():
        predicted = net(load_images("digits", "test")).argmax(dim=1)
    accuracy = (predicted == load_labels("digits", "test")).double().mean().item()
    assert accuracy > 0.9
    info = feature_net_info("digits", 8)
    assert accuracy == pytest.approx(info["test_accuracy"], abs=1e-3)
    assert info["seed"] == 0 and info["epochs"] > 0


def test_shipped_weights_are_small_and_listed():
    names = available_feature_nets()
    assert {"digits_8", "fashion-mnist_16"} <= set(names)
    for name in names:
        dataset, size = name.rsplit("_", 1)
        net = load_feature_net(dataset, int(size))
        assert net.image_size == int(size) and net.num_features == 64
        assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_unknown_dataset_or_size_lists_what_exists():
    with pytest.raises(ValueError, match=r"no feature-network weights for 'digits' at 16x16; available: .*digits_8"):
        load_feature_net("digits", 16)
    with pytest.raises(ValueError, match="available: .*fashion-mnist_16"):
        load_feature_net("cifar10", 32)


def test_shape_mismatch_and_too_few_samples(net, digits):
    with pytest.raises(SettingsError, match=r"takes images of shape \(N, 1, 8, 8\), got \(4, 3, 8, 8\)"):
        frechet_distance(digits[:4], digits[:4].expand(-1, 3, -1, -1), net)
    with pytest.raises(SettingsError, match="at least 2 fake images"):
        frechet_distance(digits, digits[:1], net)


def test_feature_net_shapes():
    net = FeatureNet(channels=3, image_size=16)
    x = torch.zeros(5, 3, 16, 16)
    assert net.features(x).shape == (5, 64) and net(x).shape == (5, 10)


def test_statistics_added_shard_by_shard_give_the_distance_of_all_the_images(net, digits):
    fake = (digits[:700] + 0.3 * torch.randn(700, 1, 8, 8, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    real, features = digits[700:], classifier_features(net)
    streamed = FeatureStats()
    for shard in fake.split(96):  # uneven shards, as a generation's last one is
        streamed.add(features(shard))
    assert streamed.count == 700
    mean, cov = streamed.mean_cov()
    with torch.no_grad():
        f_fake = net.features(fake).double()
    assert torch.allclose(mean, f_fake.mean(0), rtol=1e-12, atol=1e-12)
    assert torch.allclose(cov, torch.cov(f_fake.T), rtol=1e-9, atol=1e-12)
    assert stats_distance(FeatureStats.of(real, features), streamed) == pytest.approx(
        frechet_distance(real, fake, net), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        FeatureStats().add(f_fake[:1]).mean_cov()


def test_inception_fid_needs_local_weights_and_torch_fidelity(tmp_path, digits):
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        inception_fid(digits[:4], digits[4:8], tmp_path / "missing.pth")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        (tmp_path / "w.pth").write_bytes(b"")
        with pytest.raises(ModuleNotFoundError, match="pip install torch-fidelity"):
            inception_fid(digits[:4], digits[4:8], tmp_path / "w.pth")
    else:
        pytest.skip("torch-fidelity is installed; the missing-package error cannot be provoked")

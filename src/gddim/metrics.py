"""Fréchet distances for sample quality (BENCHMARKS.md §2).

The default feature space is that of a small classifier trained on the data set itself (`FeatureNet`,
weights shipped in gddim/weights/ and made by benchmarks/train_classifier.py), so that a score means
something for 8x8 digits or 16x16 Fashion-MNIST where Inception features do not. The statistics and the
distance are torchmetrics' FID, in float64 on the CPU (the small network itself runs in float32).
`inception_fid` gives standard FID when torch-fidelity and a local copy of its Inception weights are at hand.

The Fréchet distance is biased upward at small sample counts: compare scores only at equal counts, and
quote `real_floor` at that count beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from .errors import DependencyError, MissingFileError, SettingsError

WEIGHTS_DIR = Path(__file__).parent / "weights"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


class FeatureNet(nn.Module):
    """A small CNN classifier on images in [-1, 1]; its globally pooled activations are the features."""

    def __init__(self, channels: int, image_size: int, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.channels, self.image_size, self.num_classes, self.width = channels, image_size, num_classes, width
        self.num_features = 2 * width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
        )
        self.dropout = nn.Dropout(0.3)  # only in training: the 1500 digits overfit without it
        self.head = nn.Linear(2 * width, num_classes)

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "image_size": self.image_size, "num_classes": self.num_classes,
                "width": self.width}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [-1, 1] -> (N, num_features)."""
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise SettingsError(f"this feature network takes images of shape (N, {', '.join(map(str, expected))}), "
                                f"got {tuple(x.shape)}")
        return self.body(x).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def available_feature_nets() -> list[str]:
    """Names "{dataset}_{image_size}" of the shipped feature-network weights."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def load_feature_net(dataset: str, image_size: int) -> FeatureNet:
    """The shipped classifier for `dataset` at image_size x image_size, in eval mode and frozen."""
    name = f"{dataset}_{image_size}"
    if name not in available_feature_nets():  # a name, never a path: a recorded source cannot point elsewhere
        raise SettingsError(
            f"no feature-network weights for {dataset!r} at {image_size}x{image_size}; available: "
            f"{', '.join(available_feature_nets()) or 'none'} (make more with benchmarks/train_classifier.py)"
        )
    path = WEIGHTS_DIR / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        config = {k: int(v) for k, v in f.metadata().items()}
    net = FeatureNet(**config)
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


def feature_net_info(dataset: str, image_size: int) -> dict:
    """The training record (accuracy, seed, epochs, command) stored beside the shipped weights."""
    return json.loads((WEIGHTS_DIR / f"{dataset}_{image_size}.json").read_text())


class _Features(nn.Module):
    """What torchmetrics wants of a custom extractor: forward -> (N, d) and an int `num_features`."""

    def __init__(self, net: FeatureNet):
        super().__init__()
        self.net = net
        self.num_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 network (5x faster than float64 on CPU, features agree to ~1e-6), float64 statistics
        return self.net.features(x.to(self.net.head.weight.dtype)).double()


def rms_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Root mean square of x - reference over every element, in float64 on the reference's device."""
    return float(torch.sqrt(torch.mean((x.to(reference.device, torch.float64) - reference.double()) ** 2)))


def frechet_distance(real: torch.Tensor, fake: torch.Tensor, feature_net: FeatureNet, batch_size: int = 1000) -> float:
    """Fréchet distance between real and fake images (N, C, H, W) in [-1, 1] in feature_net's feature space.

    torchmetrics accumulates the feature sums and covariances and takes the distance in float64. Under torchrun
    its compute() gathers from every rank, so one rank alone would wait forever: there use FeatureStats.
    """
    for name, x in (("real", real), ("fake", fake)):
        if x.shape[0] < 2:
            raise SettingsError(f"the Fréchet distance needs at least 2 {name} images, got {x.shape[0]}")
    metric = FrechetInceptionDistance(feature=_Features(feature_net.eval()))
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for chunk in images.split(batch_size):
                metric.update(chunk.detach().cpu(), real=is_real)
        return float(metric.compute())


def real_floor(images: torch.Tensor, feature_net: FeatureNet, n: int | None = None, seed: int = 0,
               batch_size: int = 1000) -> float:
    """Distance between two disjoint random subsets of n real images each (default: the two halves).

    The score a perfect generator would get with n samples against n real images: the floor to print beside
    a score computed at the same count.
    """
    return frechet_distance(*real_split(images, n, seed), feature_net, batch_size)


def check_split_size(count: int, n: int) -> None:
    """real_split's n must leave two disjoint sets of n among count images."""
    if not 2 <= n <= count // 2:
        raise SettingsError(f"n must lie in [2, {count // 2}] for {count} real images (the floor needs 2n), got {n}")


def real_split(images: torch.Tensor, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random subsets of n images each (default: the two halves): the reference set that samples
    are scored against, and the held-out set that gives the real-vs-real floor."""
    n = images.shape[0] // 2 if n is None else n
    check_split_size(images.shape[0], n)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(images.shape[0]))
    return images[perm[:n]], images[perm[n : 2 * n]]


def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights_path: str | Path, batch_size: int = 50,
                  device: str | torch.device = "cpu") -> float:
    """Standard FID (Inception-v3 pool features, 2048 dims) of images in [-1, 1], from local weights only.

    Needs the torch-fidelity package and its weights file (weights-inception-2015-12-05-6726825d.pth);
    nothing is downloaded. Grayscale images are repeated to three channels.
    """
    # Inception runs in float32 as the reference implementation does; torchmetrics keeps the sums in float64
    metric = _inception_metric(weights_path, device)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for chunk in images.split(batch_size):
                metric.update(_inception_pixels(chunk).to(device), real=is_real)
        return float(metric.compute())


def _inception_metric(weights_path: str | Path, device) -> FrechetInceptionDistance:
    weights_path = Path(weights_path).expanduser()
    if not weights_path.is_file():
        raise MissingFileError(f"Inception weights {weights_path} do not exist; pass a local copy of "
                               f"torch-fidelity's {INCEPTION_WEIGHTS_FILE}")
    if not _TORCH_FIDELITY_AVAILABLE:
        raise DependencyError(
            "standard Inception FID needs the torch-fidelity package: `pip install torch-fidelity`, then pass "
            f"the path of a local {INCEPTION_WEIGHTS_FILE} as the weights path"
        )
    return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights_path)).to(device)


def _inception_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 RGB, what torch-fidelity's Inception takes."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)


# ---- statistics accumulated shard by shard -------------------------------------------------------------------

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def classifier_features(feature_net: FeatureNet) -> FeatureFn:
    """Images (N, C, H, W) in [-1, 1] -> float64 classifier features (N, d), as frechet_distance computes them."""
    return _Features(feature_net.eval())


def inception_features(weights_path: str | Path, device="cpu") -> FeatureFn:
    """Images (N, C, H, W) in [-1, 1] on any device -> float64 Inception pool features (N, 2048), as inception_fid
    computes them."""
    network = _inception_metric(weights_path, device).inception
    return lambda images: network(_inception_pixels(images).to(device)).double()


class FeatureStats:
    """The count, sum and sum of outer products (float64) of features: their mean and covariance without
    keeping them, so that the Fréchet distance of 50 000 samples needs the memory of one batch."""

    def __init__(self):
        self.count, self.total, self.outer = 0, None, None

    def add(self, features: torch.Tensor) -> FeatureStats:
        f = features.detach().to("cpu", torch.float64)
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.count += f.shape[0]
        self.total += f.sum(dim=0)
        self.outer += f.T @ f
        return self

    @classmethod
    def of(cls, images: torch.Tensor, features: FeatureFn, batch_size: int = 1000) -> FeatureStats:
        stats = cls()
        with torch.no_grad():
            for chunk in images.split(batch_size):
                stats.add(features(chunk))
        return stats

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and the unbiased covariance."""
        if self.count < 2:
            raise ValueError(f"the Fréchet distance needs at least 2 images, got {self.count}")
        mean = self.total / self.count
        return mean, (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)


def stats_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between the Gaussians of two feature statistics:
    |μ_a - μ_b|² + tr Σ_a + tr Σ_b - 2 tr (Σ_a Σ_b)^½, the trace of the root from the eigenvalues of
    Σ_a Σ_b."""
    (mean_a, cov_a), (mean_b, cov_b) = a.mean_cov(), b.mean_cov()
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * root_trace)

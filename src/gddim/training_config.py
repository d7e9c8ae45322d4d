"""The settings of a training run, importable without torch so that the `gddim train` command shows its defaults
and checks its options before loading anything heavy; gddim.training runs them."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SettingsError


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings; batch_size is per process (the global batch is batch_size x world size)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3  # for the small presets; the paper's 100M-parameter model used 2e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    flip: bool = False
    ckpt_every: int = 500
    sample_every: int = 0  # 0: one grid at the end
    sample_nfe: int = 20

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.ckpt_every < 1 or self.sample_every < 0:
            raise SettingsError("steps, batch_size and ckpt_every must be positive, sample_every non-negative")
        if self.lr <= 0 or self.warmup < 0 or self.grad_clip <= 0 or not 0 <= self.ema_decay < 1:
            raise SettingsError("need lr > 0, warmup >= 0, grad_clip > 0 and 0 <= ema_decay < 1")
        if self.sample_nfe < 2:  # checked now, not at the end of training; the default sampler lowers its order
            raise SettingsError(f"sample_nfe must be at least 2 (CLD's denoising step takes one of them), got "
                                f"{self.sample_nfe}")

    def lr_at(self, step: int) -> float:
        """Linear warmup from lr/warmup to lr over the first `warmup` steps, then constant (MATH §6.1)."""
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr


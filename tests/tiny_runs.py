"""The micro network, training settings and data record that the training, checkpoint and generation tests share."""

from __future__ import annotations

from pathlib import Path

import torch

from gddim.checkpoints import load_checkpoint
from gddim.networks import NetworkConfig
from gddim.training import TrainConfig

MICRO = NetworkConfig(channels=(16, 32), attention=(False, False), layers_per_block=1, mid_attention=False,
                      norm_groups=8, dropout=0.1, gaussian_skip=0.5)
DIGITS = {"source": "digits", "image_size": None}


def quick(steps=6, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 8, "lr": 1e-3, "warmup": 2, "ckpt_every": 3, "sample_nfe": 4,
                          **kw})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).tensors

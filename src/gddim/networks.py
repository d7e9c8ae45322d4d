"""The ε-network: diffusers' UNet2DModel with gDDIM's input and time conventions (MATH §4.2, §9.7).

The network sees the whole state u (B, k*C, H, W) in pixel layout (CLD: x channels, then v channels) and
returns ε in R-coordinates with the same shape, for every process. Its time input is 999·t.

Optional Gaussian skip (`gaussian_skip = s`): ε_θ(u, t) = E_t u + UNet(u, 999t), where E_t u is the exact ε
of data x_0 ~ N(0, s I) (gddim.exact.gaussian_gain). It generalizes gDDIM's "mixed score" (MATH §4.2) to
every process; the UNet then learns only what the data adds to a Gaussian. The paper's model has it off;
small models trained briefly need it for CLD, whose deterministic sampler otherwise diverges.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from diffusers import UNet2DModel
from torch import nn

from . import blocks
from .errors import NetworkConfigError, SettingsError
from .exact import gaussian_gain, isotropic_data_cov
from .processes import LinearProcess

TIME_SCALE = 999.0  # the network's time label is 999·t (MATH §9.7)


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the UNet, one entry per resolution level (level i works at image_size / 2**i).

    channels: feature channels per level; attention: whether each level's blocks have self-attention;
    layers_per_block: residual blocks per level on the way down (one more on the way up);
    head_dim: channels per attention head (None: one head, as NCSN++'s DDPM attention);
    norm_groups: GroupNorm groups (must divide every level's channels);
    gaussian_skip: data second moment s of the Gaussian skip (None: no skip; see the module doc).
    """

    channels: tuple[int, ...] = (32, 64)
    attention: tuple[bool, ...] = (False, False)
    layers_per_block: int = 1
    mid_attention: bool = True
    head_dim: int | None = None
    norm_groups: int = 8
    dropout: float = 0.0
    gaussian_skip: float | None = None

    def __post_init__(self):
        # JSON gives lists: store tuples so that configs compare equal after a round trip
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "channels": list(self.channels), "attention": list(self.attention)}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise NetworkConfigError(f"unknown network settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def validate(self, image_size: int) -> None:
        """Clear errors for sizes UNet2DModel would reject late or build wrongly."""
        levels = len(self.channels)
        if levels < 1 or any(c < 1 for c in self.channels):
            raise NetworkConfigError(f"channels must be a non-empty list of positive widths, got {list(self.channels)}")
        if len(self.attention) != levels:
            raise NetworkConfigError(f"attention has {len(self.attention)} entries but channels has {levels}: "
                                     "give one True/False per level")
        if self.layers_per_block < 1:
            raise NetworkConfigError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if not 0 <= self.dropout < 1:
            raise NetworkConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.gaussian_skip is not None and not self.gaussian_skip > 0:
            raise NetworkConfigError(f"gaussian_skip must be a positive data second moment or None, got {self.gaussian_skip}")
        factor = 2 ** (levels - 1)
        if image_size % factor:
            raise NetworkConfigError(
                f"{levels} levels halve the image {levels - 1} times, so the image size must be a multiple of "
                f"{factor}; got {image_size}. Use fewer levels (e.g. {_max_levels(image_size)}) or resize the images")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise NetworkConfigError(f"GroupNorm with {self.norm_groups} groups needs channels divisible by "
                                     f"{self.norm_groups}; {bad} are not. Change norm_groups or the channels")
        if self.head_dim is not None:
            attended = [c for c, a in zip(self.channels, self.attention) if a]
            attended += [self.channels[-1]] if self.mid_attention else []
            bad = [c for c in attended if c % self.head_dim]
            if bad:
                raise NetworkConfigError(f"attention head_dim={self.head_dim} must divide the attended channels; "
                                         f"{bad} are not multiples")


def _max_levels(image_size: int) -> int:
    levels = 1
    while image_size % (2**levels) == 0 and image_size >> levels >= 2:
        levels += 1
    return levels


PRESETS = {
    # 8x8 digits on a 2-core CPU in minutes: 8x8 and 4x4, attention only in the 4x4 middle
    "tiny": NetworkConfig(channels=(32, 64), attention=(False, False), layers_per_block=1, norm_groups=8,
                          gaussian_skip=0.5),
    # 16x16 Fashion-MNIST: 16, 8, 4 with attention at 8x8
    "small": NetworkConfig(channels=(64, 128, 128), attention=(False, True, False), layers_per_block=2,
                           norm_groups=16, dropout=0.1, gaussian_skip=0.5),
    # the paper's NCSN++ "deep" CIFAR-10 model in UNet2DModel terms (MATH §6.1): nf 128, mult (1, 2, 2, 2),
    # 8 res blocks, attention at 16x16, dropout 0.1, single-head attention
    "cifar10-paper": NetworkConfig(channels=(128, 256, 256, 256), attention=(False, True, False, False),
                                   layers_per_block=8, norm_groups=32, dropout=0.1),
}


def preset(name: str) -> NetworkConfig:
    if name not in PRESETS:
        raise NetworkConfigError(f"unknown network preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


class EpsModel(nn.Module):
    """ε_θ(u, t) for a state of k*data_channels channels at image_size x image_size.

    `process` is needed only with a Gaussian skip, whose E_t depends on it.
    """

    def __init__(self, config: NetworkConfig, data_channels: int, image_size: int, k: int,
                 process: LinearProcess | None = None):
        super().__init__()
        config.validate(image_size)
        if data_channels < 1 or k < 1:
            raise NetworkConfigError(f"need data_channels >= 1 and k >= 1, got {data_channels}, {k}")
        if config.gaussian_skip is not None and (process is None or process.k != k):
            raise NetworkConfigError(f"a Gaussian skip needs the process (with k={k}) the network is trained for")
        self.config, self.data_channels, self.image_size, self.k = config, data_channels, image_size, k
        self.process = process
        self.gain_table: tuple[torch.Tensor, torch.Tensor] | None = None  # (times, gains) while a sampler runs
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=k * data_channels, out_channels=k * data_channels,
            time_embedding_type="positional", down_block_types=down, up_block_types=up,
            block_out_channels=config.channels, layers_per_block=config.layers_per_block,
            add_attention=config.mid_attention, attention_head_dim=config.head_dim,
            norm_num_groups=config.norm_groups, dropout=config.dropout,
        )

    def spec(self) -> dict:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {"config": self.config.to_dict(), "data_channels": self.data_channels,
                "image_size": self.image_size, "k": self.k}

    @classmethod
    def from_spec(cls, spec: dict, process: LinearProcess | None = None) -> EpsModel:
        return cls(NetworkConfig.from_dict(spec["config"]), spec["data_channels"], spec["image_size"], spec["k"], process)

    def gaussian_part(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E_t u: the exact ε if the data were N(0, gaussian_skip I); one float64 gain per distinct time, or
        inside at_times the gain of the nearest announced time, looked up on the device."""
        if self.gain_table is not None:
            times, gains = self.gain_table
            per_sample = gains[(t.to(times.dtype)[:, None] - times).abs().argmin(1)].to(u.dtype)
        else:
            times, index = np.unique(t.detach().double().cpu().numpy(), return_inverse=True)
            per_sample = self._gains(times, u.dtype, u.device)[torch.from_numpy(index.reshape(-1)).to(u.device)]
        return self.process.from_basis(blocks.apply(per_sample, self.process.to_basis(u)))

    def _gains(self, times: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
        cov = isotropic_data_cov(self.process, self.config.gaussian_skip)
        return blocks.to_torch(gaussian_gain(self.process, times, cov), self.process.mode_shape, dtype, device)

    @contextmanager
    def at_times(self, times: np.ndarray, like: torch.Tensor):
        """While a sampler calls the network only at these times: the Gaussian skip's gains are computed once,
        before the loop, and looked up on the device, so that a call never waits to read t on the host."""
        if self.config.gaussian_skip is None:
            yield
            return
        previous = self.gain_table
        time_dtype = torch.promote_types(like.dtype, torch.float32)
        table_times = torch.tensor(np.asarray(times), dtype=time_dtype, device=like.device)  # plans are read-only
        self.gain_table = (table_times, self._gains(np.asarray(times), like.dtype, like.device))
        try:
            yield
        finally:
            self.gain_table = previous

    def forward(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        expected = (self.k * self.data_channels, self.image_size, self.image_size)
        if u.ndim != 4 or tuple(u.shape[1:]) != expected:
            raise SettingsError(f"EpsModel takes states of shape (B, {', '.join(map(str, expected))}), "
                                f"got {tuple(u.shape)}")
        weight = self.unet.conv_in.weight
        t = torch.as_tensor(t, device=u.device).reshape(-1).expand(u.shape[0])
        # samplers may run in float64 (reference_ode): compute in the weights' dtype, answer in u's; the time
        # label stays at least float32 (the UNet's sinusoidal embedding is computed in float32 anyway)
        label = TIME_SCALE * t.to(torch.promote_types(weight.dtype, torch.float32))
        eps = self.unet(u.to(weight.dtype), label, return_dict=False)[0].to(u.dtype)
        return eps if self.config.gaussian_skip is None else eps + self.gaussian_part(u, t)

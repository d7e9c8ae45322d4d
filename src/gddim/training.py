"""Training an ε-network (MATH §6): the loss, EMA, and the loop (AdamW, warmup, clipping), with loss.csv.

A run folder holds the checkpoints (gddim.checkpoints), `loss.csv` and `samples/step_XXXXXXXX.png`.
Every random draw of step s on rank r comes from a seed derived from (seed, r, s), and the data stream
is a pure function of (seed, step), so a resumed run repeats an uninterrupted one exactly.
Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set) the loop runs DDP (gddim.distributed), each rank on its
own shard of the data; only rank 0 writes.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .atomic import atomic_write_text, make_folder
from .checkpoints import clear_unfinished_start, restore, resume_point, resume_state, run_record, save_checkpoint
from .data import make_loader
from .distributed import InterruptFlag, ProcessGroup, agree, process_group, run_on_rank0
from .errors import SettingsError, TrainingError
from .generation import sample_images, save_grid
from .networks import EpsModel, NetworkConfig
from .processes import LinearProcess
from .training_config import TrainConfig


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # the losses of the steps this call ran
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT for a KeyboardInterrupt)
    images_per_second: float = float("nan")
    model: EpsModel | None = None  # the trained network (raw weights) ...
    ema_model: EpsModel | None = None  # ... and its EMA, the one to sample with


# ---- the loss --------------------------------------------------------------------------------------------

def diffusion_loss(process: LinearProcess, model: Callable, x0: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """mean (ε_θ(u_t, t) - z)² with u_t = mean_coef(t) u_0 + R_t z and t ~ U[t_train_min, t_max] (MATH §6; t_max = 1
    but for a LinearSDE defined on a shorter range)."""
    t_min, t_max = process.t_train_min, process.t_max
    t = t_min + (t_max - t_min) * torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    u_t, z = process.perturb(x0, t, generator=generator)
    return (model(u_t, t) - z).pow(2).mean()


def _seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch's global generators (t, z and dropout) from (seed, rank, step): resuming needs only the step."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1))


# ---- EMA ---------------------------------------------------------------------------------------------------

def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """EMA of the weights with decay min(decay, (1+n)/(10+n)), so that short runs are not dominated by the init."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        count = float(n)
        weight = 1 - min(decay, (1 + count) / (10 + count))
        for a, c in zip(averaged, current):
            a.lerp_(c, weight)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


# ---- the loop ----------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """A training run in progress: what it trains, where it writes, and how far it got (result.step)."""

    process: LinearProcess
    config: TrainConfig
    group: ProcessGroup
    out_dir: Path
    meta: dict  # the checkpoints' config.json, less the step
    model: EpsModel
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    result: TrainResult
    pending: list[tuple[int, float]] = field(default_factory=list)  # loss rows not yet in loss.csv
    images_seen: int = 0
    began: float = 0.0

    def save(self) -> None:
        """The pending loss rows, then the checkpoint that covers them (rank 0 only)."""
        if self.group.is_main:
            _append_losses(self.out_dir, self.pending)
            self.pending.clear()
            self.result.checkpoint = save_checkpoint(self.out_dir, {**self.meta, "step": self.result.step},
                                                     self.model, self.ema, self.optimizer)


def train(process: LinearProcess, images: torch.Tensor, out_dir: str | Path, network: NetworkConfig,
          config: TrainConfig, data_info: dict | None = None, resume: bool | None = None,
          callback: Callable[[int, float], None] | None = None, progress: bool = True, device=None) -> TrainResult:
    """Train an ε-network for `process` on images (N, C, H, W) in [-1, 1]; see the module doc for the folder.

    data_info (e.g. {"source": "digits", "image_size": 8}) is recorded so that evaluation finds the real data.
    callback(step, loss) runs after every step; raising KeyboardInterrupt in it acts like Ctrl-C.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise SettingsError(f"images must be square (N, C, H, W), got {tuple(images.shape)}; pass an image size")
    process.check_state(process.data_to_state(images[:1]), "images")
    with process_group(device) as group:
        run = _start(process, images, Path(out_dir).expanduser(), network, config, data_info or {}, resume, group)
        _loop(run, images, callback, progress)
    return run.result


def _start(process, images, out_dir, network, config, data_info, resume, group: ProcessGroup) -> _Run:
    """The model, its EMA and optimizer, fresh or restored from the run's checkpoint, and the folder made ready."""
    torch.manual_seed(config.seed)  # the initial weights, too, are a function of the seed
    model = EpsModel(network, images.shape[1], images.shape[-1], process.k, process).to(group.device)
    ema = make_ema(model, config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=config.weight_decay)
    meta = run_record(process, model.spec(), {**data_info, "shape": list(images.shape)}, asdict(config), group.world)
    checkpoint = run_on_rank0(group, resume_point, out_dir, meta, resume)
    start = 0
    if checkpoint is not None:
        state = run_on_rank0(group, resume_state, checkpoint)
        start = state["step"]
        restore(model, ema, optimizer, state, group.device)
    run_on_rank0(group, _prepare_folder, out_dir, checkpoint is None, start)
    result = TrainResult(step=start, checkpoint=checkpoint.path if checkpoint else None, model=model,
                         ema_model=ema.module)
    return _Run(process, config, group, out_dir, meta, model, ema, optimizer, result)


def _prepare_folder(out_dir: Path, fresh: bool, start: int) -> None:
    """Rank 0 readies the run folder; through run_on_rank0 its failure stops every rank instead of leaving the
    others waiting for it in DDP's first broadcast."""
    if fresh and out_dir.exists():
        clear_unfinished_start(out_dir)
    make_folder(out_dir)
    _reset_loss_log(out_dir, start)


def _loop(run: _Run, images: torch.Tensor, callback, progress: bool) -> None:
    """Steps until config.steps; a stop signal or KeyboardInterrupt ends it at a step boundary, checkpointed."""
    config, group = run.config, run.group
    net = DistributedDataParallel(run.model, device_ids=[group.device.index] if group.device.type == "cuda" else None) \
        if group.world > 1 else run.model
    loader = make_loader(images.to(group.device), config.batch_size, config.seed, group.rank, group.world,
                         config.flip, start_step=run.result.step)
    bar = tqdm(total=config.steps, initial=run.result.step, disable=not (progress and group.is_main), desc="training")
    run.began = time.perf_counter()
    with InterruptFlag() as interrupt:
        try:
            while run.result.step < config.steps:
                x0 = next(loader)
                _record(run, _step(run, net, x0, interrupt), x0.shape[0], bar, callback)
                _write_outputs(run)
        except KeyboardInterrupt:
            _stop(run, interrupt.signum or signal.SIGINT)
        finally:
            bar.close()


def _step(run: _Run, net: torch.nn.Module, x0: torch.Tensor, interrupt: InterruptFlag) -> float:
    """One update of the model and its EMA at step result.step; returns the loss averaged over the ranks."""
    step, config = run.result.step, run.config
    _seed_step(config.seed, run.group.rank, step)
    for group in run.optimizer.param_groups:
        group["lr"] = config.lr_at(step)
    run.model.train()
    loss = diffusion_loss(run.process, net, x0)
    value, stop = agree(loss.detach(), interrupt.raised, run.group.world)
    if stop:
        raise KeyboardInterrupt
    if not np.isfinite(value):
        raise TrainingError(f"the loss is {value} at step {step + 1}; training stopped. The last good "
                            f"checkpoint is {run.result.checkpoint or 'none (no checkpoint was written yet)'}; "
                            "lower the learning rate or check the data, then resume from it")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    run.ema.update_parameters(run.model)
    return value


def _record(run: _Run, value: float, batch: int, bar, callback) -> None:
    """Count the finished step: its loss, the throughput, the progress bar, then the caller's callback."""
    result = run.result
    result.step += 1
    result.losses.append(value)
    run.pending.append((result.step, value))
    run.images_seen += batch * run.group.world
    result.images_per_second = run.images_seen / (time.perf_counter() - run.began)
    bar.update(1)
    bar.set_postfix(loss=f"{value:.4f}", img_s=f"{result.images_per_second:.0f}")
    if callback is not None:
        callback(result.step, value)


def _write_outputs(run: _Run) -> None:
    """The sample grid and the checkpoint due at this step."""
    step, config = run.result.step, run.config
    # the grid before the checkpoint: a run killed between them redoes both, so no grid goes missing
    if run.group.is_main and (step == config.steps or config.sample_every and step % config.sample_every == 0):
        _write_sample_grid(run.out_dir, step, run.process, run.ema.module, config)
    if step % config.ckpt_every == 0 or step == config.steps:
        run.save()


def _stop(run: _Run, signum: int) -> None:
    """Checkpoint an interrupted run at the last finished step and say how to resume it."""
    result = run.result
    result.interrupted, result.stop_signal = True, signum
    if result.step > 0:
        run.save()
    if run.group.is_main:
        tqdm.write(f"interrupted ({signal.Signals(signum).name}) at step {result.step}; "
                   f"checkpoint {result.checkpoint}. Run the same command again to resume")


# ---- loss.csv and sample grids -------------------------------------------------------------------------------

def _reset_loss_log(out_dir: Path, start: int) -> None:
    """loss.csv cut back to the steps up to the checkpoint resumed from (a crash may have left rows past it)."""
    log = out_dir / "loss.csv"
    rows = []
    if start > 0 and log.exists():
        complete = log.read_text().split("\n")[1:-1]  # the header, and a row cut short by a crash, are not kept
        rows = [r + "\n" for r in complete if int(r.split(",")[0]) <= start]
    atomic_write_text(log, "".join(["step,loss\n", *rows]))


def _append_losses(out_dir: Path, rows: list[tuple[int, float]]) -> None:
    with open(out_dir / "loss.csv", "a") as f:
        f.writelines(f"{s},{v:.6g}\n" for s, v in rows)
        f.flush()
        os.fsync(f.fileno())  # on disk before the checkpoint that covers these rows is




def _write_sample_grid(out_dir: Path, step: int, process: LinearProcess, model: EpsModel, config: TrainConfig) -> None:
    images = sample_images(process, model, n=64, nfe=config.sample_nfe, seed=0)
    save_grid(images, out_dir / "samples" / f"step_{step:08d}.png")

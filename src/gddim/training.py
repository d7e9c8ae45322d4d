"""Training an ε-network (MATH §6): the loss, the loop (AdamW, warmup, clipping, EMA), checkpoints, DDP.

A run folder holds `checkpoints/step_XXXXXXXX/` (weights.safetensors with the model and its EMA,
config.json with the process recipe, network, data and training settings, state.pt with the optimizer),
`checkpoints/LATEST` naming the newest, `loss.csv` and `samples/step_XXXXXXXX.png`.

Every random draw of step s on rank r comes from a seed derived from (seed, r, s), and the data stream
is a pure function of (seed, step), so a resumed run repeats an uninterrupted one exactly.
Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set) the loop runs DDP, gloo on CPU and NCCL on GPUs,
each rank on its own shard of the data; only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .atomic import atomic_write_text, is_temp, temp_name
from .data import BUILT_IN_DATA, make_loader
from .errors import CheckpointError, SettingsError, TrainingError
from .networks import EpsModel, NetworkConfig
from .processes import LinearProcess, process_from_config

FORMAT = "gddim-checkpoint"
VERSION = 1
WEIGHTS, CONFIG, STATE, LATEST = "weights.safetensors", "config.json", "state.pt", "LATEST"
# settings that may change when a run is resumed: they do not alter the sequence of updates
RESUMABLE = ("steps", "ckpt_every", "sample_every", "sample_nfe")
CHECKPOINT_NAME = re.compile(r"step_(\d{8,})")  # what LATEST may hold: a folder beside it, never a path


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings; batch_size is per process (the global batch is batch_size x world size)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
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
        if self.sample_nfe < 4:  # checked now, not at the end of training: the grids sample with gDDIM q = 2
            raise SettingsError(f"sample_nfe must be at least 4 (the sample grids use gDDIM q = 2), got {self.sample_nfe}")

    def lr_at(self, step: int) -> float:
        """Linear warmup from lr/warmup to lr over the first `warmup` steps, then constant (MATH §6.1)."""
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr


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


# ---- checkpoints -------------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, its config.json and its tensors (model.* and ema.*)."""

    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def process(self, process: LinearProcess | None = None) -> LinearProcess:
        """The process the model was trained with; a given one must have the same recipe."""
        stored = self.meta["process"]
        if process is None:
            if stored.get("process") == "linear":
                raise CheckpointError(f"{self.path} was trained with a user-defined LinearSDE ({stored}); "
                                      "pass the same process object to load it")
            try:
                return process_from_config(stored)
            except (TypeError, ValueError) as err:  # a config.json edited by hand or made elsewhere
                raise CheckpointError(f"{self.path / CONFIG}: its process {stored} cannot be built ({err})") from None
        if _normalized(process.config()) != stored:
            raise CheckpointError(f"{self.path} was trained with process {stored}, not {process.config()}: "
                                  "a model only fits the process (for CLD the R_0 recipe) it was trained on")
        return process

    def network(self, which: str = "ema", device=None, process: LinearProcess | None = None) -> EpsModel:
        """The network with the EMA ('ema') or raw ('model') weights, in eval mode."""
        try:
            model = EpsModel.from_spec(self.meta["network"], self.process(process))
        except (TypeError, KeyError) as err:
            raise CheckpointError(f"{self.path / CONFIG}: its network record cannot be built ({err!r})") from None
        load_weights(model, self, which)
        return model.to(device).eval()


    def data_source(self, given: str | None = None, option: str = "--data") -> tuple[str, int | None]:
        """(source, image size) of the training images. A path recorded in the checkpoint is never opened on its
        own (the folder may come from someone else): only a built-in data set, or `given`, the caller's source."""
        data = self.meta.get("data") if isinstance(self.meta.get("data"), dict) else {}
        size, source = data.get("image_size"), data.get("source")
        if size is not None and (type(size) is not int or size < 1):
            raise CheckpointError(f"{self.path / CONFIG}: data.image_size must be a positive integer or null, "
                                  f"got {size!r}")
        if given is not None:
            return given, size
        if source in BUILT_IN_DATA:
            return source, size
        if source is None:
            raise SettingsError(f"{self.path} records no data source: name the training images with {option} PATH")
        raise SettingsError(f"{self.path} was trained on {str(source)[:200]!r}, a path recorded in the run folder, "
                            f"which gddim does not open unless you name it: pass it again with {option} PATH")


def _normalized(obj):
    """What JSON turns obj into (tuples -> lists), so that stored and live configs compare."""
    return json.loads(json.dumps(obj))


def _fsync_folder(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(out_dir: Path, meta: dict, model: torch.nn.Module, ema: AveragedModel,
                    optimizer: torch.optim.Optimizer) -> Path:
    """Write checkpoints/step_N atomically (a temp folder renamed into place), point LATEST at it, drop older ones."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{meta['step']:08d}"
    final = root / name
    if not final.exists():  # the state at a given step is deterministic: an existing folder already holds it
        tmp = temp_name(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        torch.save({"optimizer": optimizer.state_dict(), "step": meta["step"]}, tmp / STATE)
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        _fsync_folder(tmp)
        os.replace(tmp, final)
    atomic_write_text(root / LATEST, name + "\n")
    for old in root.iterdir():  # older checkpoints, leftovers of crashed writes
        if old.name != name and (old.name.startswith("step_") or is_temp(old.name)):
            _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a file or folder of our own; a link is removed itself, never what it points to."""
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (via checkpoints/LATEST) or a checkpoint folder itself."""
    path = Path(path).expanduser()
    if (path / CONFIG).is_file():
        return path
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        name = latest.read_text(errors="replace").strip()
        if not CHECKPOINT_NAME.fullmatch(name):
            raise CheckpointError(f"{latest} must name a checkpoint folder step_NNNNNNNN beside it, but holds "
                                  f"{name[:200]!r}: a run folder's pointer cannot lead out of it")
        target = path / "checkpoints" / name
        if not (target / CONFIG).is_file():
            raise CheckpointError(f"{latest} names {target.name}, which is missing or incomplete")
        if not target.resolve().is_relative_to((path / "checkpoints").resolve()):
            raise CheckpointError(f"{target} is a link out of the run folder {path}; gddim does not follow it")
        return target
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    raise FileNotFoundError(f"no checkpoint at {path}: expected a run folder (with checkpoints/{LATEST}) "
                            f"or a checkpoint folder (with {CONFIG} and {WEIGHTS})")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint (run folder or checkpoint folder); corrupt or foreign files give a CheckpointError."""
    folder = find_checkpoint(path)
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} is corrupt ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG} is not a gddim checkpoint (no \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{folder} has checkpoint version {meta.get('version')}; this gddim reads {VERSION}")
    for record in ("process", "network"):
        if not isinstance(meta.get(record), dict):
            raise CheckpointError(f"{folder / CONFIG} lacks its \"{record}\" record")
    step, named = meta.get("step"), CHECKPOINT_NAME.fullmatch(folder.name)
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{folder / CONFIG}: \"step\" must be a non-negative integer, got {step!r}")
    if named and int(named.group(1)) != step:
        raise CheckpointError(f"{folder / CONFIG} says step {step}, but its folder is {folder.name}")
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {folder} lacks {WEIGHTS}")
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {folder}: {WEIGHTS} is corrupt ({err})") from None
    return Checkpoint(folder, meta, tensors)


def load_weights(model: torch.nn.Module, checkpoint: Checkpoint, which: str = "ema") -> None:
    """Copy the checkpoint's EMA or raw weights into model, naming every key or shape that does not match."""
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    prefix = "ema.module." if which == "ema" else "model."
    stored = {k[len(prefix):]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix)}
    _check_shapes(model.state_dict(), stored, f"checkpoint {checkpoint.path}")
    model.load_state_dict(stored)


def _check_shapes(expected: dict, stored: dict, source: str) -> None:
    problems = [f"{k}: {source} has {tuple(stored[k].shape)}, the model has {tuple(v.shape)}"
                for k, v in expected.items() if k in stored and stored[k].shape != v.shape]
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing:
        problems.append(f"{len(missing)} weights missing from {source} (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} weights in {source} that the model lacks (e.g. {extra[0]})")
    if problems:
        raise CheckpointError("the checkpoint does not fit this network: " + "; ".join(problems[:5]))


def _differences(stored: dict, wanted: dict) -> list[str]:
    """The settings that differ between a stored run and the one asked for (RESUMABLE ones excepted)."""
    out = []
    for key in ("process", "network", "data", "world_size"):
        if stored.get(key) != wanted[key]:
            out.append(f"{key}: run has {stored.get(key)}, asked for {wanted[key]}")
    for key, value in wanted["train"].items():
        if key not in RESUMABLE and stored.get("train", {}).get(key) != value:
            out.append(f"train.{key}: run has {stored.get('train', {}).get(key)}, asked for {value}")
    return out


def _resume_point(out_dir: Path, meta: dict, resume: bool | None) -> Checkpoint | None:
    """The checkpoint to resume from, None for a fresh run, or a clear error (never a silent overwrite).

    resume=None resumes a run of the same configuration and starts an absent or empty folder;
    resume=True insists on a checkpoint; resume=False insists on a fresh folder.
    """
    if not (out_dir / "checkpoints" / LATEST).is_file():
        if not _unfinished_start(out_dir):
            raise FileExistsError(f"output folder {out_dir} exists and holds no resumable gddim run; "
                                  "choose a new folder or remove this one")
        if resume:
            raise FileNotFoundError(f"nothing to resume: {out_dir} holds no training run")
        return None
    checkpoint = load_checkpoint(out_dir)
    if resume is False:
        raise FileExistsError(f"output folder {out_dir} already holds a run (step {checkpoint.step}); "
                              "resume it or choose a new folder")
    changed = _differences(checkpoint.meta, _normalized(meta))
    if changed:
        raise FileExistsError(f"output folder {out_dir} holds a run with another configuration, so it cannot be "
                              "resumed: " + "; ".join(changed) + ". Choose a new folder")
    return checkpoint


def _unfinished_start(out_dir: Path) -> bool:
    """Whether out_dir is absent, empty, or holds only what a run writes before its first checkpoint (a run
    killed early or stopped by bad input), so that the same command can start it again."""
    if not out_dir.exists():
        return True
    own = {"loss.csv": None, "checkpoints": "step_*", "samples": "step_*.png"}  # name -> pattern of its entries
    for entry in out_dir.iterdir():
        if is_temp(entry.name):
            continue
        if entry.name not in own or entry.is_dir() != (own[entry.name] is not None):
            return False
        if entry.is_dir() and not all(e.match(own[entry.name]) or is_temp(e.name) for e in entry.iterdir()):
            return False
    return True


def _clear_unfinished_start(out_dir: Path) -> None:
    """Remove the checkpoint folders and temporary files of a run that never finished a checkpoint: the new
    run must not take a leftover step folder (perhaps of other settings) for its own."""
    for entry in out_dir.iterdir():
        if is_temp(entry.name) or entry.name == "checkpoints":
            _remove(entry)


# ---- distributed -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool


def _init_distributed(device) -> _Dist:
    """Join torchrun's process group when WORLD_SIZE > 1: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), False)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if cuda:
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"), owns)


def _from_rank0(value, world: int):
    """rank 0's value on every rank; an exception travels too and is raised everywhere, so no rank hangs."""
    box = [value]
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


# Ctrl-C, and what cluster schedulers and torchrun send to end a job
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _InterruptFlag:
    """A stop signal sets a flag instead of raising mid-update; the loop stops at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    @property
    def raised(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


# ---- the loop ----------------------------------------------------------------------------------------------

def train(process: LinearProcess, images: torch.Tensor, out_dir: str | Path, network: NetworkConfig,
          config: TrainConfig, data_info: dict | None = None, resume: bool | None = None,
          callback: Callable[[int, float], None] | None = None, progress: bool = True, device=None) -> TrainResult:
    """Train an ε-network for `process` on images (N, C, H, W) in [-1, 1]; see the module doc for the folder.

    data_info (e.g. {"source": "digits", "image_size": 8}) is recorded so that evaluation finds the real data.
    callback(step, loss) runs after every step; raising KeyboardInterrupt in it acts like Ctrl-C.
    """
    out_dir = Path(out_dir).expanduser()
    env = _init_distributed(device)
    try:
        return _train(process, images, out_dir, network, config, data_info or {}, resume, callback, progress, env)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


def _train(process, images, out_dir, network, config, data_info, resume, callback, progress, env: _Dist):
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise SettingsError(f"images must be square (N, C, H, W), got {tuple(images.shape)}; pass an image size")
    process.check_state(process.data_to_state(images[:1]), "images")
    torch.manual_seed(config.seed)  # the initial weights, too, are a function of the seed
    model = EpsModel(network, images.shape[1], images.shape[-1], process.k, process).to(env.device)
    ema = make_ema(model, config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=config.weight_decay)
    meta = {"format": FORMAT, "version": VERSION, "process": process.config(), "network": model.spec(),
            "data": {**data_info, "shape": list(images.shape)}, "train": asdict(config), "world_size": env.world}

    checkpoint = _from_rank0(_safe(_resume_point, out_dir, meta, resume) if env.rank == 0 else None, env.world)
    start = 0
    if checkpoint is not None:
        state = _from_rank0(_safe(_resume_state, checkpoint) if env.rank == 0 else None, env.world)
        start = state["step"]
        _restore(model, ema, optimizer, state, env.device)
    if env.rank == 0:
        if checkpoint is None and out_dir.exists():
            _clear_unfinished_start(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _reset_loss_log(out_dir, start)
    net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.world > 1 else model
    loader = make_loader(images.to(env.device), config.batch_size, config.seed, env.rank, env.world, config.flip,
                         start_step=start)
    result = TrainResult(step=start, checkpoint=checkpoint.path if checkpoint else None, model=model,
                         ema_model=ema.module)
    pending: list[tuple[int, float]] = []

    def save() -> None:
        if env.rank == 0:
            _append_losses(out_dir, pending)
            pending.clear()
            result.checkpoint = save_checkpoint(out_dir, {**meta, "step": result.step}, model, ema, optimizer)

    bar = tqdm(total=config.steps, initial=start, disable=not (progress and env.rank == 0), desc="training")
    began, images_seen = time.perf_counter(), 0
    with _InterruptFlag() as interrupt:
        try:
            while result.step < config.steps:
                step = result.step
                x0 = next(loader)
                _seed_step(config.seed, env.rank, step)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr_at(step)
                model.train()
                loss = diffusion_loss(process, net, x0)
                value, stop = _agree(loss.detach(), interrupt.raised, env.world)
                if stop:
                    raise KeyboardInterrupt
                if not np.isfinite(value):
                    raise TrainingError(f"the loss is {value} at step {step + 1}; training stopped. The last good "
                                        f"checkpoint is {result.checkpoint or 'none (no checkpoint was written yet)'}; "
                                        "lower the learning rate or check the data, then resume from it")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                ema.update_parameters(model)
                result.step = step + 1
                result.losses.append(value)
                pending.append((result.step, value))
                images_seen += x0.shape[0] * env.world
                result.images_per_second = images_seen / (time.perf_counter() - began)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{result.images_per_second:.0f}")
                if callback is not None:
                    callback(result.step, value)
                # the grid before the checkpoint: a run killed between them redoes both, so no grid goes missing
                if env.rank == 0 and (result.step == config.steps or
                                      config.sample_every and result.step % config.sample_every == 0):
                    _write_sample_grid(out_dir, result.step, process, ema.module, config)
                if result.step % config.ckpt_every == 0 or result.step == config.steps:
                    save()
        except KeyboardInterrupt:
            result.interrupted, result.stop_signal = True, interrupt.signum or signal.SIGINT
            if result.step > 0:
                save()
            if env.rank == 0:
                tqdm.write(f"interrupted ({signal.Signals(result.stop_signal).name}) at step {result.step}; "
                           f"checkpoint {result.checkpoint}. Run the same command again to resume")
        finally:
            bar.close()
    return result


def _safe(fn, *args):
    """fn(*args), or the exception it raised (to be broadcast to the other ranks)."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - re-raised on every rank by _from_rank0
        return err


def _resume_state(checkpoint: Checkpoint) -> dict:
    file = checkpoint.path / STATE
    try:  # weights_only: tensors and plain containers only, the file cannot run code
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: not repeated
        raise CheckpointError(f"{file} holds objects other than tensors and plain containers; gddim does not "
                              "load it, as unpickling it could run code") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{file} is missing or corrupt ({reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        raise CheckpointError(f"{file} is not a gddim optimizer state (expected a dict with \"optimizer\")")
    if state.get("step") != checkpoint.step:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {STATE} is for step {state.get('step')}, "
                              f"{CONFIG} for step {checkpoint.step}")
    return {"step": checkpoint.step, "optimizer": state["optimizer"], "tensors": checkpoint.tensors,
            "path": str(checkpoint.path)}


def _restore(model, ema, optimizer, state: dict, device) -> None:
    tensors = state["tensors"]
    source = f"checkpoint {state['path']}"
    for target, prefix in ((model, "model."), (ema, "ema.")):
        stored = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        _check_shapes(target.state_dict(), stored, source)
        target.load_state_dict(stored)
    optimizer.load_state_dict(state["optimizer"])
    model.to(device)
    ema.to(device)


def _agree(loss: torch.Tensor, interrupted: bool, world: int) -> tuple[float, bool]:
    """The mean loss over ranks and whether any rank was interrupted: every rank takes the same decision."""
    if world == 1:
        return float(loss), interrupted
    both = torch.stack([loss.float(), torch.tensor(float(interrupted), device=loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / world, bool(both[1] > 0)


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
    from .evaluation import sample_images, save_grid  # evaluation imports this module for checkpoints

    images = sample_images(process, model, n=64, nfe=config.sample_nfe, seed=0)
    save_grid(images, out_dir / "samples" / f"step_{step:08d}.png")

"""The checkpoint format of a training run and the policy for resuming one.

A run folder holds `checkpoints/step_XXXXXXXX/` (weights.safetensors with the model and its EMA,
config.json with the process recipe, network, data and training settings, state.pt with the optimizer)
and `checkpoints/LATEST` naming the newest. A checkpoint folder is written whole or not at all.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder, atomic_write_text, is_temp, read_json_record, write_json
from .data import BUILT_IN_DATA
from .errors import CheckpointError, MissingFileError, OutputExistsError, SettingsError
from .networks import EpsModel
from .processes import LinearProcess, process_from_config

FORMAT = "gddim-checkpoint"
VERSION = 1
WEIGHTS, CONFIG, STATE, LATEST = "weights.safetensors", "config.json", "state.pt", "LATEST"
# settings that may change when a run is resumed: they do not alter the sequence of updates
RESUMABLE = ("steps", "ckpt_every", "sample_every", "sample_nfe")
CHECKPOINT_NAME = re.compile(r"step_(\d{8,})")  # what LATEST may hold: a folder beside it, never a path


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



def run_record(process: LinearProcess, network: dict, data: dict, train: dict, world_size: int) -> dict:
    """The config.json of a run's checkpoints, less its step: what resuming the run must find unchanged."""
    return {"format": FORMAT, "version": VERSION, "process": process.config(), "network": network, "data": data,
            "train": train, "world_size": world_size}


def save_checkpoint(out_dir: Path, meta: dict, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> Path:
    """Write checkpoints/step_N atomically (a temp folder renamed into place), point LATEST at it, drop older ones."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{meta['step']:08d}"
    final = root / name
    if not final.exists():  # the state at a given step is deterministic: an existing folder already holds it
        with atomic_folder(final) as tmp:
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
            torch.save({"optimizer": optimizer.state_dict(), "step": meta["step"]}, tmp / STATE)
            write_json(tmp / CONFIG, meta, indent=2)
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
        raise MissingFileError(f"no checkpoint at {path}: the path does not exist")
    raise MissingFileError(f"no checkpoint at {path}: expected a run folder (with checkpoints/{LATEST}) "
                           f"or a checkpoint folder (with {CONFIG} and {WEIGHTS})")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint (run folder or checkpoint folder); corrupt or foreign files give a CheckpointError."""
    folder = find_checkpoint(path)
    meta = read_json_record(folder / CONFIG, "checkpoint", FORMAT, VERSION, CheckpointError)
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
        raise SettingsError(f"which must be 'ema' or 'model', got {which!r}")
    _load_prefixed(model, checkpoint.tensors, "ema.module." if which == "ema" else "model.",
                   f"checkpoint {checkpoint.path}")


def _load_prefixed(target: torch.nn.Module, tensors: dict, prefix: str, source: str) -> None:
    """Load the tensors named prefix + key into target, naming every key or shape that does not match."""
    stored = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    _check_shapes(target.state_dict(), stored, source)
    target.load_state_dict(stored)


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


# ---- resuming a run ---------------------------------------------------------------------------------------

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


def resume_point(out_dir: Path, meta: dict, resume: bool | None) -> Checkpoint | None:
    """The checkpoint to resume from, None for a fresh run, or a clear error (never a silent overwrite).

    resume=None resumes a run of the same configuration and starts an absent or empty folder;
    resume=True insists on a checkpoint; resume=False insists on a fresh folder.
    """
    if not (out_dir / "checkpoints" / LATEST).is_file():
        if not _unfinished_start(out_dir):
            raise OutputExistsError(f"output folder {out_dir} exists and holds no resumable gddim run; "
                                    "choose a new folder or remove this one")
        if resume:
            raise MissingFileError(f"nothing to resume: {out_dir} holds no training run")
        return None
    checkpoint = load_checkpoint(out_dir)
    if resume is False:
        raise OutputExistsError(f"output folder {out_dir} already holds a run (step {checkpoint.step}); "
                                "resume it or choose a new folder")
    changed = _differences(checkpoint.meta, _normalized(meta))
    if changed:
        raise OutputExistsError(f"output folder {out_dir} holds a run with another configuration, so it cannot be "
                                "resumed: " + "; ".join(changed) + ". Choose a new folder")
    return checkpoint


def _unfinished_start(out_dir: Path) -> bool:
    """Whether out_dir is absent, empty, or holds only what a run writes before its first checkpoint (a run
    killed early or stopped by bad input), so that the same command can start it again."""
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    own = {"loss.csv": None, "checkpoints": "step_*", "samples": "step_*.png"}  # name -> pattern of its entries
    for entry in out_dir.iterdir():
        if is_temp(entry.name):
            continue
        if entry.name not in own or entry.is_dir() != (own[entry.name] is not None):
            return False
        if entry.is_dir() and not all(e.match(own[entry.name]) or is_temp(e.name) for e in entry.iterdir()):
            return False
    return True


def clear_unfinished_start(out_dir: Path) -> None:
    """Remove the checkpoint folders and temporary files of a run that never finished a checkpoint: the new
    run must not take a leftover step folder (perhaps of other settings) for its own."""
    for entry in out_dir.iterdir():
        if is_temp(entry.name) or entry.name == "checkpoints":
            _remove(entry)


def resume_state(checkpoint: Checkpoint) -> dict:
    """The step, optimizer state and tensors to resume from, checked against each other."""
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


def restore(model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
            device) -> None:
    """Load a resume_state into the model, its EMA and the optimizer, naming any weight that does not fit."""
    for target, prefix in ((model, "model."), (ema, "ema.")):
        _load_prefixed(target, state["tensors"], prefix, f"checkpoint {state['path']}")
    optimizer.load_state_dict(state["optimizer"])
    model.to(device)
    ema.to(device)


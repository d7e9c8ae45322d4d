"""Long generations in shards: the ranks of a torchrun job split the samples, rank 0 writes each shard as soon as
it is made (atomically), and a rerun makes only the shards that are missing.

Shard j holds samples j·S .. (j+1)·S - 1 (S: the shard size). Sample k's noise is keyed on (seed, k)
(gddim.noise), so a shard does not depend on the rank that makes it nor on the number of ranks. The folder
holds generation.json (the settings; shards of other settings are discarded when it changes) and
shard_NNNNNN.npz, each with the world size of the job that made it. Each round every rank makes one shard and
rank 0 gathers them: rank 0 holds one shard per rank at a time, the others one shard.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .atomic import atomic_file, atomic_write_text, make_folder
from .errors import SamplerError, SettingsError
from .distributed import ProcessGroup, gather_to_rank0, run_on_rank0

SHARD_NAME = "shard_{:06d}.npz"
MANIFEST = "generation.json"
ShardFn = Callable[[range], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Generation:
    """n samples in shards of shard_size. make(range) returns {name: tensor (len(range), *shape)} with the names,
    shapes and dtypes of `fields`; `settings` say what is generated (a folder holding other settings starts anew)."""

    n: int
    shard_size: int
    make: ShardFn
    fields: dict[str, tuple[tuple[int, ...], torch.dtype]]
    settings: dict

    def __post_init__(self):
        if self.n < 1 or self.shard_size < 1:
            raise SettingsError(f"a generation needs n >= 1 samples in shards of shard_size >= 1, got n={self.n}, "
                                f"shard_size={self.shard_size}")

    def ranges(self) -> list[range]:
        return [range(start, min(start + self.shard_size, self.n)) for start in range(0, self.n, self.shard_size)]


def generate(generation: Generation, folder: Path, env: ProcessGroup, progress: bool = True) -> list[Path]:
    """Make the shards `folder` lacks, one per rank and round; rank 0 writes them. Returns the shard files in
    order (on every rank; only rank 0 may read them: another node need not see its disk)."""
    ranges = generation.ranges()
    todo = run_on_rank0(env, _missing_shards, generation, Path(folder))
    done = generation.n - sum(len(ranges[j]) for j in todo)
    with tqdm(total=generation.n, initial=done, unit="img", desc="sampling", smoothing=0.05,
              disable=not (progress and env.is_main)) as bar:
        for first in range(0, len(todo), env.world):
            turn = todo[first:first + env.world]
            mine = turn[env.rank] if env.rank < len(turn) else None
            arrays, error = _make(generation, ranges[mine]) if mine is not None else (None, None)
            for index, shard in _gather(generation, mine, arrays, error, env):
                _write_shard(Path(folder) / SHARD_NAME.format(index), shard, env.world)
                bar.update(len(ranges[index]))
    return [Path(folder) / SHARD_NAME.format(j) for j in range(len(ranges))]


def _make(generation: Generation, samples: range) -> tuple[dict | None, str | None]:
    try:
        return generation.make(samples), None
    except SamplerError as err:  # every rank must hear of it, or the others wait for this one forever
        return None, str(err)


def _gather(generation: Generation, index: int | None, arrays: dict | None, error: str | None,
            env: ProcessGroup) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """Every rank's (shard index, arrays) of this round, on rank 0 (others get []); a failure on any rank is
    raised on all of them."""
    count = 0 if arrays is None else len(next(iter(arrays.values())))
    meta = torch.tensor([-1 if index is None else index, count, error is not None], device=env.device)
    metas = [meta] if env.world == 1 else [torch.empty_like(meta) for _ in range(env.world)]
    if env.world > 1:
        dist.all_gather(metas, meta)
    failed = [int(m[0]) for m in metas if m[2]]
    if failed:
        raise SamplerError(error or f"the sampler failed on shard {failed[0]} on another rank (see its message)")
    gathered = {}
    for name, (shape, dtype) in generation.fields.items():
        padded = torch.zeros((generation.shard_size, *shape), dtype=dtype, device=env.device)
        if arrays is not None:
            padded[:count] = arrays[name]
        gathered[name] = gather_to_rank0(padded, env)
    if not env.is_main:
        return []
    return [(int(m[0]), {name: parts[r][:int(m[1])].cpu() for name, parts in gathered.items()})
            for r, m in enumerate(metas) if m[0] >= 0]


def _missing_shards(generation: Generation, folder: Path) -> list[int]:
    """The indices of the shards folder lacks (absent, cut short or unreadable); shards of other settings go."""
    make_folder(folder)
    manifest = folder / MANIFEST
    settings = json.loads(json.dumps({**generation.settings, "n": generation.n, "shard_size": generation.shard_size}))
    try:
        same = json.loads(manifest.read_text()) == settings
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        for old in folder.glob("shard_*.npz"):
            old.unlink()
        atomic_write_text(manifest, json.dumps(settings, indent=2))
    return [j for j, samples in enumerate(generation.ranges())
            if not _complete(folder / SHARD_NAME.format(j), generation, len(samples))]


def remove_shards(folder: Path) -> None:
    """The shards and manifest this module wrote, then folder if that left it empty: nothing else in it is lost."""
    for path in [*folder.glob("shard_*.npz"), folder / MANIFEST]:
        path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def _complete(path: Path, generation: Generation, count: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as shard:
            return all(shard[name].shape == (count, *shape) for name, (shape, _) in generation.fields.items())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return False


def _write_shard(path: Path, arrays: dict[str, torch.Tensor], world: int) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to the temp name
        np.savez(f, world_size=np.int64(world), **{name: a.numpy() for name, a in arrays.items()})


def read_shards(files: Iterable[Path], name: str) -> Iterator[np.ndarray]:
    """The array `name` of each shard, one shard in memory at a time."""
    for path in files:
        with np.load(path, allow_pickle=False) as shard:
            yield shard[name]


def write_npz(path: Path, arrays: dict[str, Callable[[], Iterator[np.ndarray]]], shapes: dict[str, tuple],
              scalars: dict[str, int]) -> Path:
    """An .npz whose arrays are written part by part (each `arrays[name]()` yields the parts along the first axis),
    so that 50 000 samples never sit in memory at once; np.load reads it as any .npz."""
    with atomic_file(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name, parts in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                header = None
                for part in parts():
                    if header is None:
                        header = {"descr": np.lib.format.dtype_to_descr(part.dtype), "fortran_order": False,
                                  "shape": shapes[name]}
                        np.lib.format.write_array_header_2_0(entry, header)
                    entry.write(np.ascontiguousarray(part).tobytes())
        for name, value in scalars.items():
            with archive.open(f"{name}.npy", "w") as entry:
                np.lib.format.write_array(entry, np.asarray(value))
    return path

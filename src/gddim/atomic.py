"""Files written so that a crash, a kill or a full disk leaves the old version or the new one, never half of one."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """Where path is written before its rename into place; is_temp recognizes the leftovers of a crash."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


@contextmanager
def atomic_file(path: Path):
    """A temporary path to write; renamed onto path (after an fsync) when the block succeeds, removed if it fails."""
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> Path:
    """obj as JSON (indented, UTF-8, a final newline) written atomically; its folder is made if missing."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    return path

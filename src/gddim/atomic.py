"""Files written so that a crash, a kill or a full disk leaves the old version or the new one, never half of one;
JSON records read back with their format and version checked."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import UserFileError


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
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: Path):
    """A temporary folder to fill; its files are fsynced and it is renamed onto path when the block succeeds.
    A failed block leaves the temporary folder, which is_temp recognizes, for its owner to remove."""
    tmp = temp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    yield tmp
    for file in tmp.iterdir():
        fsync_file(file)
    os.replace(tmp, path)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj, indent: int | None = 1) -> Path:
    """obj as JSON (UTF-8, a final newline) written atomically; its folder is made if missing."""
    path = Path(path).expanduser()
    make_folder(path.parent)
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
    return path


def read_json_record(path: Path, kind: str, format_name: str, version: int, error: type[Exception],
                     advice: str = "") -> dict:
    """The JSON object in path, refused with `error` (naming the file) unless it is valid JSON whose "format" is
    format_name and whose "version" is version (a file that cannot be read is a UserFileError); `advice` ends the
    message of a file of another format."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserFileError(f"{kind} {path} cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{kind} {path} is corrupt (not valid JSON: {err})") from None
    if not isinstance(record, dict) or record.get("format") != format_name:
        raise error(f"{path} is not a gddim {kind} (no \"format\": \"{format_name}\"){advice}")
    if record.get("version") != version:
        raise error(f"{kind} {path} has version {record.get('version')!r}; this gddim reads {version}")
    return record


def make_folder(path: Path) -> Path:
    """path as a folder, made with its parents if missing; a place that cannot hold one is the user's to change."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserFileError(f"cannot make the folder {path} ({err.strerror or err}: {err.filename or path}); "
                            "choose another output place") from None
    return path

"""Atomic writes (gddim.atomic): the one JSON writer."""

from __future__ import annotations

import json

import pytest

from gddim import atomic


def test_write_json_makes_the_folder_and_leaves_no_temporary_file(tmp_path):
    path = atomic.write_json(tmp_path / "a" / "results.json", {"sampler": "gddim:q=2", "λ": 1})
    assert path.read_text(encoding="utf-8") == '{\n "sampler": "gddim:q=2",\n "λ": 1\n}\n'
    assert json.loads(path.read_text(encoding="utf-8")) == {"sampler": "gddim:q=2", "λ": 1}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_write_json_that_fails_keeps_the_old_file(tmp_path):
    """A value JSON cannot hold fails the write before the rename: the old file stays, no temporary file is left."""
    path = atomic.write_json(tmp_path / "results.json", {"n": 1}, indent=None)
    with pytest.raises(TypeError):
        atomic.write_json(path, {"n": object()})
    assert path.read_text(encoding="utf-8") == '{"n": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]

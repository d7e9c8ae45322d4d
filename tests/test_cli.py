"""The `gddim` command itself: one module per command, cheap to parse, and only the project's errors caught.

A GddimError is the user's to fix and prints one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from gddim import cli, errors
from gddim.cli import build_parser, main, options

HEAVY = ("torch", "diffusers", "scipy", "sklearn", "numpy")


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the parser, e.g. ("train",), ("bench", "exact")."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _command_paths(sub, prefix + (name,))
    return found


def test_every_command_is_a_module_of_its_own():
    commands = {path[0] for path in _command_paths(build_parser()) if path}
    assert commands == {name.replace("_", "-") for name in cli.COMMAND_MODULES}
    assert {"quickstart", "train", "sample", "evaluate", "invert", "tune-grid", "bench"} == commands


def test_help_of_every_command_imports_nothing_heavy():
    code = f"""
import sys
from gddim.cli import build_parser
paths = {[list(p) for p in _command_paths(build_parser())]!r}
for path in paths:
    try:
        build_parser().parse_args(path + ["--help"])
    except SystemExit:
        pass
print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert "usage: gddim tune-grid" in out and "usage: gddim bench coefficients" in out
    assert "HEAVY []" in out


def test_a_command_module_that_fails_to_import_stops_the_command_line(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("vanished",))
    monkeypatch.setitem(sys.modules, "gddim.cli.vanished", None)  # importing it raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match="gddim.cli.vanished"):
        build_parser()


@pytest.mark.parametrize("bug", [ValueError("bad shape deep inside"), OSError("device lost"), KeyError("k")])
def test_an_internal_error_keeps_its_traceback(monkeypatch, bug):
    from gddim.cli import invert

    def broken(args):
        raise bug

    monkeypatch.setattr(invert, "run", broken)
    with pytest.raises(type(bug)) as info:
        main(["invert", "--exact", "digits"])
    assert info.value is bug


def test_a_project_error_is_one_line(monkeypatch, capsys):
    from gddim.cli import invert

    def refused(args):
        raise errors.OutputExistsError("out.json exists; choose another --out")

    monkeypatch.setattr(invert, "run", refused)
    assert main(["invert", "--exact", "digits"]) == 2
    assert capsys.readouterr().err == "gddim invert: error: out.json exists; choose another --out\n"


def test_files_the_user_names_are_project_errors(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["train", "--config", str(missing), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"gddim train: error: --config {missing} does not exist; name a JSON file of " \
                                      "train options\n"
    assert main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert f"no checkpoint at {tmp_path / 'nowhere'}: the path does not exist" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["bench", "coefficients", "--out", str(tmp_path / "full")]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, message", [
    (["train", "--process", "vp", "--steps", "1", "--out", "{file}"], "output folder {file} exists and holds no resumable"),
    (["quickstart", "--out", "{file}"], "{file} exists and is not a quickstart folder"),
    (["invert", "--exact", "digits", "--num-images", "2", "--nfe", "4", "--out", "{file}/r.json"],
     "cannot make the folder {file} (File exists: {file}); choose another output place"),
])
def test_an_output_place_blocked_by_a_file_is_one_line(command, message, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    args = [a.format(file=blocker) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gddim {args[0]}: error: ") and message.format(file=blocker) in err
    assert blocker.read_text() == "mine"


def test_make_folder_makes_parents_and_refuses_a_file_in_the_way(tmp_path):
    from gddim.atomic import make_folder

    assert make_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert make_folder(tmp_path / "a") == tmp_path / "a"  # an existing folder is fine
    (tmp_path / "f").write_text("")
    with pytest.raises(errors.UserFileError, match=f"cannot make the folder {tmp_path / 'f' / 'g'}"):
        make_folder(tmp_path / "f" / "g")


@pytest.mark.parametrize("command", [["bench", "exact", "--dataset", "{missing}", "--out", "{tmp}/b"],
                                     ["train", "--process", "vp", "--data", "{missing}", "--out", "{tmp}/t"]])
def test_cli_bad_data_is_one_line_on_stderr(command, tmp_path, capsys):
    args = [a.format(missing=tmp_path / "no_such_data", tmp=tmp_path) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gddim {args[0]}: error: data source") and "does not exist" in err and "Traceback" not in err


def test_file_errors_keep_their_built_in_base():
    assert issubclass(errors.MissingFileError, FileNotFoundError) and issubclass(errors.MissingFileError, errors.GddimError)
    assert issubclass(errors.OutputExistsError, FileExistsError) and issubclass(errors.UserFileError, OSError)


def test_names_offered_by_the_parsers_are_the_library_names():
    from gddim import grids, networks, processes, sampling

    assert options.PROCESSES == tuple(processes.PROCESSES)
    assert options.PRESET_NAMES == tuple(sorted(networks.PRESETS))
    assert options.GRID_NAMES == grids.GRIDS
    assert options.MAX_ORDER == sampling.MAX_ORDER

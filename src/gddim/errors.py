"""The errors that are the user's to fix: bad settings, data, checkpoints, a diverging model.

This module imports nothing heavy, so that the command line can catch these errors without loading torch.
Every class derives from GddimError, which `gddim` prints as one line; each also keeps the built-in base
it always had (ValueError, RuntimeError, OSError), so `except ValueError` around a library call still works.
"""

from __future__ import annotations


class GddimError(Exception):
    """An error whose message says what is wrong and how to fix it; the command line prints it as one line."""


class SettingsError(GddimError, ValueError):
    """A setting (an argument, an option of a config file) that is out of range or inconsistent."""


class DataError(GddimError):
    """A data source that cannot be read, with what to do about it."""


class CheckpointError(GddimError, ValueError):
    """A checkpoint or run folder that is missing, corrupt, unsafe, or does not fit what it is loaded into."""


class TrainingError(GddimError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the last checkpoint."""


class SamplerError(GddimError, RuntimeError):
    """The ε-model misbehaved during sampling (NaN, wrong shape)."""


class ImmutableError(GddimError, AttributeError):
    """An attribute of an immutable object (a process) was assigned; the message says to build a new one."""


class DependencyError(GddimError, ModuleNotFoundError):
    """An optional package that a requested feature needs is not installed; the message says how to install it."""


class NetworkConfigError(GddimError, ValueError):
    """A network size that UNet2DModel cannot build for the given images."""


class UserFileError(GddimError, OSError):
    """A file or folder the user named that cannot be read, or cannot be written as asked."""


class MissingFileError(UserFileError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(UserFileError, FileExistsError):
    """An output the command would write is already there; the message says how to keep or replace it."""

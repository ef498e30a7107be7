"""Exception hierarchy of vspbfr_core.

Every error says what went wrong and what to do next; the core never swallows an
exception and never continues with random weights.
"""
from __future__ import annotations


class VSPBFRError(Exception):
    """Base class of every error raised on purpose by vspbfr_core."""


class CheckpointError(VSPBFRError):
    """A model file is missing, unreadable, unsafe, of the wrong kind or does not fit the network."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint references a Python global outside the data-only allow-list."""


class UnsupportedDtypeError(VSPBFRError):
    """A network was asked to run in a precision it does not support."""


class InputError(VSPBFRError, ValueError):
    """A public input has the wrong shape, range, dtype or contents."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """A model file the caller asked for does not exist."""


class DownloadError(VSPBFRError):
    """A model file could not be downloaded, or what arrived is not the expected file.

    The message names the URL, the target folder and what to do next (retry, a mirror, or a manual download).
    """


class OutputError(VSPBFRError):
    """An output cannot be written where it was asked for: the output folder is a file, cannot be created or
    written, or the output would replace an input. Nothing is written in that case."""

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


class NonFiniteError(VSPBFRError):
    """A network produced NaN or infinite values from finite inputs: damaged weights or a precision overflow.

    ``stage`` is the pipeline stage (``encode``, ``diffuse``, ``feature_bank``, ``restore``, ``detect``, ``paste``),
    ``network`` the network that ran and ``source`` the model file its weights came from (or
    ``"(weights given in memory)"``).  The message says what to do: re-download the file, or run in float32.
    """

    def __init__(self, message: str, *, stage: str = "", network: str = "", source: str = ""):
        super().__init__(message)
        self.stage, self.network, self.source = stage, network, source


class InsufficientMemoryError(VSPBFRError):
    """Work that needs more memory than the device has: refused up front with the size it needs, or an
    out-of-memory error turned into advice (lower upscale, smaller image, another device)."""


class MissingPackageError(VSPBFRError, ImportError):
    """An optional Python package a feature needs (an identity embedder, video files) is not installed; the message
    says what to install."""

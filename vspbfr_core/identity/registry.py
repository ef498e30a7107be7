"""The embedder factory: one name -> one ready :class:`~vspbfr_core.identity.base.FaceEmbedder`.

``load_embedder("arcface", dirs, device)`` finds ``recognition_arcface_ir_se50.pth`` in the models folder(s) and
loads it strictly; ``load_embedder("dlib", device=...)`` needs the optional packages of ``vspbfr[dlib]`` and no
file of its own. Best-of-N, reference photos and the hosts call this; nothing is cached here.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

import torch

from ..errors import InputError
from .base import FaceEmbedder

__all__ = ["EMBEDDERS", "DEFAULT_EMBEDDER", "EmbedderName", "load_embedder"]

EmbedderName = Literal["arcface", "dlib"]
EMBEDDERS: tuple[str, ...] = ("arcface", "dlib")
DEFAULT_EMBEDDER: EmbedderName = "arcface"

PathLike = str | os.PathLike[str]


def load_embedder(name: str = DEFAULT_EMBEDDER, dirs: PathLike | Iterable[PathLike] | None = None,
                  device: torch.device | str = "cpu", *, file: PathLike | None = None) -> FaceEmbedder:
    """The identity embedder ``name`` on ``device`` (it always computes in float32).

    Args:
        name: ``"arcface"`` (default) or ``"dlib"``.
        dirs: the models folder, or folders searched in order, for the ArcFace file (default: the models folder,
            :func:`vspbfr_core.paths.resolve_models_dir`). Unused by dlib.
        device: where the embedder runs (dlib always computes on the CPU; its vectors come back on ``device``).
        file: an explicit ArcFace weights file instead of the search.

    Raises :class:`~vspbfr_core.errors.ModelNotFoundError` (the ArcFace file is missing; the message gives the
    download command), :class:`~vspbfr_core.identity.base.MissingPackageError` (dlib is not installed; the message
    gives the pip command), :class:`~vspbfr_core.errors.CheckpointError` (a file that does not load) or
    :class:`~vspbfr_core.errors.InputError` (an unknown name).
    """
    key = str(name).strip().lower()
    if key == "arcface":
        from ..paths import find_model_file
        from .arcface import ArcFaceEmbedder, load_arcface

        path = file if file is not None else find_model_file("arcface", dirs)
        return ArcFaceEmbedder(load_arcface(path), device)
    if key == "dlib":
        from .dlib import DlibEmbedder

        return DlibEmbedder(device)
    raise InputError(f"unknown identity embedder {name!r}: choose {' or '.join(EMBEDDERS)}")

"""Command-line options that several commands share, defined once (same names, ranges and help everywhere)."""
from __future__ import annotations

import argparse

from ..cli import number

ORDERS = ("left-right", "top-bottom", "area", "score")
DETECTOR_NAMES = {"auto": "auto", "resnet50": "retinaface_resnet50", "mobile0.25": "retinaface_mobile0.25"}


def detector_name(text: str) -> str:
    """``--detector``: auto, resnet50, mobile0.25 or facexlib's retinaface_* names -> ``auto`` or facexlib's name."""
    name = DETECTOR_NAMES.get(text, text)
    if name not in DETECTOR_NAMES.values():
        raise argparse.ArgumentTypeError(f"unknown detector {text!r}: use {', '.join(DETECTOR_NAMES)}")
    return name


def add_detector_options(group: argparse._ActionsContainer) -> None:
    """``--detector`` and ``--detector-dir``."""
    group.add_argument("--detector", metavar="{" + ",".join(DETECTOR_NAMES) + "}", default="auto", type=detector_name,
                       help="RetinaFace backbone; auto: the file that is there, resnet50 first, else mobile0.25 "
                            "(facexlib's retinaface_* names work too)")
    group.add_argument("--detector-dir", metavar="DIR", default=None,
                       help="folder with the detector file, searched before the models folder")


def add_device_option(group: argparse._ActionsContainer) -> None:
    group.add_argument("--device", default="auto",
                       help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps or another PyTorch device")


def add_selection_options(group: argparse._ActionsContainer) -> None:
    """``--threshold``, ``--min-size``, ``--max-faces``, ``--select`` and ``--order`` (see
    :func:`vspbfr_core.face.detect_faces`)."""
    group.add_argument("--threshold", metavar="T", type=number(float, low=0, high=1, low_open=True), default=None,
                       help="detector score threshold in (0, 1] (default 0.97)")
    group.add_argument("--min-size", metavar="PX", type=number(float, low=0), default=0.0,
                       help="ignore faces smaller than this (pixels, box short side)")
    group.add_argument("--max-faces", metavar="N", type=number(int, low=0), default=0,
                       help="at most this many faces per image, largest first (0: all)")
    group.add_argument("--select", metavar="WHICH", default="all",
                       help='"all", "largest", "center" or face indices such as "0,2" (see `vspbfr faces`)')
    group.add_argument("--order", choices=ORDERS, default="left-right", help="how faces are numbered for --select")

"""The ``vspbfr`` command line (also ``python -m vspbfr_core``).

Each sub-command lives in its own module that exposes ``register(subparsers)``; the module sets
``func`` on its parser, and ``func(args) -> int`` is the exit status.  Modules are listed in
``COMMAND_MODULES`` (relative to this package).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import VSPBFRError

COMMAND_MODULES: tuple[str, ...] = (
    ".commands.convert",
    ".commands.download",
    ".commands.info",
    ".commands.restore",
    ".commands.faces",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vspbfr", description="VSPBFR blind face restoration")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name, __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VSPBFRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

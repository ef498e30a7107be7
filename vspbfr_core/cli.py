"""The ``vspbfr`` command line (also ``python -m vspbfr_core``).

Each sub-command lives in its own module that exposes ``register(subparsers)``; the module sets
``func`` on its parser, and ``func(args) -> int`` is the exit status.  Modules are listed in
``COMMAND_MODULES`` (relative to this package).

Rules shared by every command:

* Output text never fails on a file name: standard output and error use the ``vspbfr.names`` error handler,
  so bytes of a name that is not valid UTF-8 (held by Python as surrogate escapes) are printed as ``\\xNN`` and
  characters the stream's encoding lacks as ``\\xNN`` / ``\\uNNNN`` escapes, whatever the terminal or pipe
  encoding.  ``--json`` output is ASCII (escaped by ``json``).
* Numeric options are checked when the command line is parsed (:func:`number`): a value outside its range,
  NaN or infinity is a usage error (exit status 2) naming the option and the accepted range.
* A :class:`~vspbfr_core.errors.VSPBFRError` or a file-system error that stops a command is printed as one
  ``error: ...`` line (exit status 1); ``-v`` adds the traceback.
"""
from __future__ import annotations

import argparse
import codecs
import importlib
import logging
import math
import sys
from collections.abc import Callable

from .errors import VSPBFRError

COMMAND_MODULES: tuple[str, ...] = (
    ".commands.convert",
    ".commands.download",
    ".commands.info",
    ".commands.restore",
    ".commands.faces",
    ".commands.batch",
)
OUTPUT_ERRORS = "vspbfr.names"

log = logging.getLogger(__name__)


def _escape_unencodable(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: undecodable file-name bytes (surrogate escapes) -> ``\\xNN``, others -> escapes."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    parts = []
    for ch in exc.object[exc.start:exc.end]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            parts.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            parts.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    return "".join(parts), exc.end


codecs.register_error(OUTPUT_ERRORS, _escape_unencodable)


def safe_output_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` print any text (see the module rules); idempotent."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        try:
            reconfigure(errors=OUTPUT_ERRORS)
        except (ValueError, OSError, TypeError, AttributeError):   # a closed or non-standard stream: leave it
            pass


def _bound(value: float) -> str:
    return f"{value:g}"


def number(kind: type = float, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type=`` that parses an int or a finite float and checks it against a range.

    ``low`` / ``high`` are the bounds (``None``: unbounded), included unless ``low_open`` / ``high_open``.
    """
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        what = f"{noun} in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    elif low is not None:
        what = f"{noun} {'>' if low_open else '>='} {_bound(low)}"
    elif high is not None:
        what = f"{noun} {'<' if high_open else '<='} {_bound(high)}"
    else:
        what = noun

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not a finite number)")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = kind.__name__      # argparse names the type in some messages
    return parse


class DefaultsOnce(argparse.HelpFormatter):
    """``--help`` shows an option's default once, and only when there is one to show: not for flags, required
    options or ``None`` defaults, and not when the help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0                                  # store_true / store_false / help / version
        if (flag or action.required or not action.option_strings or action.default in (None, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return text + " (default: %(default)s)"


def _with_defaults_once(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` its own formatter with :class:`DefaultsOnce` in front (its layout is kept)."""
    base = parser.formatter_class
    if not (isinstance(base, type) and issubclass(base, DefaultsOnce)):
        parser.formatter_class = type("Formatter", (DefaultsOnce, base), {})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vspbfr", description="VSPBFR blind face restoration",
                                     formatter_class=DefaultsOnce)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name, __package__).register(sub)
    for command in sub.choices.values():
        _with_defaults_once(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .paths import HostHints, set_host_hints

    safe_output_streams()
    set_host_hints(HostHints())            # messages name this program's commands and options
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VSPBFRError as exc:
        log.debug("details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:          # a file or folder the command needed could not be used
        log.debug("details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

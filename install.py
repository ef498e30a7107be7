"""Install the VSPBFR pack's missing Python dependencies (ComfyUI-Manager and Automatic1111 run this file).

Reads ``requirements.txt`` beside this file and installs, with ``python -m pip install`` in one call, every
requirement that is not installed or is older than asked.  Under Automatic1111 (its ``launch`` module is
importable only there) the webui's own helpers are used instead: ``launch.is_installed`` for requirements without a
version, ``launch.run_pip`` to install (the webui's venv, index URL and ``--skip-install``).
Prints nothing and does nothing when all are present.
Never installs or upgrades torch, torchvision or torchaudio (the host brings its own build) and never downloads
model weights (``vspbfr download`` does that, on request).  Standard library only.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
NEVER_INSTALL = {"torch", "torchvision", "torchaudio"}
_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([<>=!~][^;#]*)?")


def read_requirements(path: str = REQUIREMENTS) -> list[tuple[str, str]]:
    """``(name, version spec)`` per requirement line (comments, options and environment markers ignored)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _LINE.match(line.strip())
            if m and m.group(1).lower() not in NEVER_INSTALL:
                out.append((m.group(1), (m.group(2) or "").strip()))
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:4])


def is_satisfied(name: str, spec: str) -> bool:
    """Whether ``name`` is installed in a version meeting ``spec`` (>=, >, ==, <=, <, != clauses)."""
    try:
        have = _version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return False
    checks = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "==": lambda a, b: a == b,
              "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, "!=": lambda a, b: a != b}
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op = next((o for o in (">=", "<=", "==", "!=", ">", "<") if clause.startswith(o)), None)
        if op is not None and not checks[op](have, _version(clause[len(op):])):
            return False
    return True


def missing(requirements: list[tuple[str, str]]) -> list[str]:
    return [name + spec for name, spec in requirements if not is_satisfied(name, spec)]


def a1111_launch():
    """A1111's ``launch`` module when A1111 runs this file, else None."""
    try:
        import launch
    except ImportError:
        return None
    helpers = (getattr(launch, "run_pip", None), getattr(launch, "is_installed", None))
    return launch if all(callable(h) for h in helpers) else None


def main() -> int:
    launch = a1111_launch()
    todo = [name + spec for name, spec in read_requirements() if not is_satisfied(name, spec)
            and not (launch is not None and not spec and launch.is_installed(name))]
    if not todo:
        return 0
    if launch is not None:
        if getattr(getattr(launch, "args", None), "skip_install", False):
            print(f"[VSPBFR] missing Python packages, not installed because of --skip-install: {' '.join(todo)}")
            return 0
        # run_pip builds a shell command line: quote each requirement (">=" would be a redirection)
        launch.run_pip("install " + " ".join(f'"{req}"' for req in todo),
                       desc=f"VSPBFR requirements: {', '.join(todo)}")
        return 0
    print(f"[VSPBFR] installing missing Python packages: {' '.join(todo)}", flush=True)
    return subprocess.call([sys.executable, "-m", "pip", "install", *todo])


if __name__ == "__main__":
    sys.exit(main())

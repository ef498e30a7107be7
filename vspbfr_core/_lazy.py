"""Lazy package exports (a package's public names are imported from its submodules on first use, so importing the
package stays cheap: no torch, dlib or PyAV until a name that needs them is touched) and optional packages
(:func:`optional_import`: a missing one is a MissingPackageError naming what to install)."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps each public name to the relative module that
    defines it; a name is imported once and then kept in ``namespace`` (the package's globals)."""
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value
    return __getattr__


def optional_import(name: str, install: str) -> Any:
    """Import the optional module ``name`` (``"pyarrow.fs"``, ``"ray.data"``, ...) and return it, or raise
    :class:`~vspbfr_core.errors.MissingPackageError` whose message is ``install`` (what needs it and the ``pip``
    command) plus the import failure."""
    from .errors import MissingPackageError

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingPackageError(f"{install} (import failed: {exc})") from exc

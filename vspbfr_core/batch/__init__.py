"""Batch engines for archives (``vspbfr batch``): the per-file restore both engines call (:mod:`.files`), where
inputs and outputs live (:mod:`.storage`: local paths and pyarrow URIs), the Parquet manifest (:mod:`.manifest`),
what a run restores and skips and the local engine (:mod:`.jobs`), and the Ray Data engine (:mod:`.ray_engine`,
``pip install "vspbfr[ray]"``).

Importing this package imports neither torch nor pyarrow nor Ray; the submodules load on first use of a name.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "BatchConfig": ".files", "BatchItem": ".files", "ItemResult": ".files", "FileRestorer": ".files",
    "options_key": ".files", "Manifest": ".manifest", "collect": ".jobs", "run_local": ".jobs",
    "with_resume": ".jobs", "run_ray": ".ray_engine",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

"""The batch manifest: a folder of Parquet part files, one row per input attempt that finished.

Location: ``OUTPUT/_vspbfr_manifest/`` by default, or ``--manifest LOCATION`` (a local folder or a URI).  Each
flush writes one new part file ``part-<time>-<pid>-<n>.parquet`` atomically (:func:`.storage.write_bytes`), so a
crash loses at most the rows not flushed yet and never leaves a broken part.  Rows are flushed every
``flush_rows`` rows or ``flush_seconds`` seconds, and when the run ends.

Columns (:class:`~vspbfr_core.batch.files.ItemResult`): ``input``, ``output``, ``options`` (the options key),
``status`` (``done`` / ``failed``), ``input_sha256``, ``faces``, ``identity_input`` and ``identity_reference``
(per face, identity options on), ``seconds``, ``worker``, ``error``, ``attempts``, ``written``.

Reading (:meth:`Manifest.load`): all parts, the last row per input (in part-file order) wins.  An input counts as
done for a rerun when its last row is ``done`` with the same options key and the input still has the same sha256.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

from . import storage

FOLDER = "_vspbfr_manifest"
_FIELDS = ("input", "output", "options", "status", "input_sha256", "faces", "identity_input", "identity_reference",
           "seconds", "worker", "error", "attempts", "written")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("input", pa.string()), ("output", pa.string()), ("options", pa.string()), ("status", pa.string()),
        ("input_sha256", pa.string()), ("faces", pa.int32()), ("identity_input", pa.list_(pa.float64())),
        ("identity_reference", pa.list_(pa.float64())), ("seconds", pa.float64()), ("worker", pa.string()),
        ("error", pa.string()), ("attempts", pa.int32()), ("written", pa.bool_()),
    ])


def _import_parquet() -> Any:
    storage._import_fs()                       # the same package and the same message
    import pyarrow.parquet as pq

    return pq


class Manifest:
    """Rows in, Parquet parts out (see the module)."""

    def __init__(self, location: str, *, flush_rows: int = 64, flush_seconds: float = 10.0) -> None:
        _import_parquet()
        self.location = location
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._rows: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._parts = 0
        self.written = 0                        # rows flushed by this object

    # -- reading ---------------------------------------------------------------------------------------------

    def _part_files(self) -> list[str]:
        if storage.is_uri(self.location):
            try:
                files = storage.list_files(self.location, (".parquet",))
            except Exception:  # noqa: BLE001 - a missing manifest folder is an empty manifest
                return []
            return [uri for uri, _ in files]
        if not os.path.isdir(self.location):
            return []
        return [os.path.join(self.location, n) for n in sorted(os.listdir(self.location))
                if n.startswith("part-") and n.endswith(".parquet")]

    def rows(self) -> list[dict[str, Any]]:
        """Every row of every part, in part-file (time) order."""
        pq = _import_parquet()
        out: list[dict[str, Any]] = []
        for part in sorted(self._part_files(), key=lambda p: Path(p).name):      # part names sort by time
            table = pq.read_table(io.BytesIO(storage.read_bytes(part)))
            out.extend(table.to_pylist())
        return out

    def load(self) -> dict[str, dict[str, Any]]:
        """The last row of each input."""
        return {row["input"]: row for row in self.rows()}

    # -- writing ---------------------------------------------------------------------------------------------

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append({k: row.get(k) for k in _FIELDS})
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa

        pq = _import_parquet()
        table = pa.Table.from_pylist(self._rows, schema=_schema())
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._parts:05d}.parquet"
        storage.write_bytes(storage.join(self.location, name), buffer.getvalue())
        self._parts += 1
        self.written += len(self._rows)
        self._rows = []
        self._last_flush = time.monotonic()

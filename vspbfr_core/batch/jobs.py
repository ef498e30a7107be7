"""What a batch run restores (inputs -> :class:`~vspbfr_core.batch.files.BatchItem`), what a rerun skips, and the
local engine.

Inputs (``vspbfr batch INPUT...``):

* local files, folders (searched recursively) and glob patterns, collected as ``vspbfr restore`` collects them
  (:func:`vspbfr_core.commands.inputs.collect_inputs`): a folder's files keep their path relative to the folder,
  other files their name;
* a URI (``s3://bucket/photos/``, a file or a "folder" prefix, searched recursively for the image extensions);
* a list file, named by its extension: ``.txt`` / ``.lst`` (one path or URI per line; blank lines and lines
  starting with ``#`` skipped), ``.csv`` (the column ``path`` or ``input``, else the first column; a header row is
  required) or ``.parquet`` (the column ``path`` or ``input``).  Relative local paths are relative to the list's
  folder.  Each entry keeps its path relative to the deepest folder that holds all the list's entries.

The output of an input is ``OUTPUT/<its relative path>`` (same name and format).  Two inputs with the same output,
or an output that is an input, are refused before anything loads.

Resume: an input whose last manifest row is ``done`` with the same options key is passed to its worker with that
row's sha256; the worker reads the input, and when the sha256 still matches it skips the restoration (the row
stays as it is).  Retries: a failure that is not a bad input (``InputError``: unreadable, not an image, too
large, ...) is tried again up to ``retries`` more times before its row says ``failed``.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InputError
from . import storage
from .files import BatchItem, ItemResult

LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".parquet")


@dataclass
class Plan:
    items: list[BatchItem] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)      # (input, reason) found while collecting


def _read_list(path: str) -> list[str]:
    data = storage.read_bytes(path)
    ext = os.path.splitext(path.rsplit("/", 1)[-1])[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        column = next((c for c in ("path", "input") if c in table.column_names), None)
        if column is None:
            raise InputError(f"{path}: a Parquet input list needs a column named 'path' or 'input' (found "
                             f"{', '.join(table.column_names) or 'none'})")
        return [str(v) for v in table.column(column).to_pylist() if v]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: an input list must be UTF-8 text") from exc
    if ext == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(c) for c in ("path", "input") if c in header), 0)
        return [r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _common_parent(entries: list[str]) -> str:
    if storage.is_uri(entries[0]):
        parents = [e.rsplit("/", 1)[0] for e in entries]
        common = parents[0]
        for p in parents[1:]:
            while not (p == common or p.startswith(common + "/")):
                common = common.rsplit("/", 1)[0]
        return common
    return os.path.commonpath([os.path.dirname(os.path.abspath(e)) for e in entries])


def _rel(entry: str, parent: str) -> str:
    if storage.is_uri(entry):
        return entry[len(parent):].lstrip("/")
    return os.path.relpath(os.path.abspath(entry), parent)


def collect(inputs: list[str], output: str, extensions: tuple[str, ...]) -> Plan:
    """The items of a run (see the module); ``InputError`` for an INPUT that names nothing or clashing outputs."""
    from ..commands.inputs import collect_inputs

    plan = Plan()
    found: list[tuple[str, str]] = []                 # (input, relative output path)
    local: list[str] = []
    for item in inputs:
        ext = os.path.splitext(item.rsplit("/", 1)[-1])[1].lower()
        if ext in LIST_EXTENSIONS and (storage.is_uri(item) or os.path.isfile(item)):
            entries = _read_list(item)
            if not entries:
                raise InputError(f"{item}: the input list is empty")
            base = item.rsplit("/", 1)[0] if storage.is_uri(item) else os.path.dirname(os.path.abspath(item))
            entries = [e if storage.is_uri(e) or os.path.isabs(e) else storage.join(base, e) for e in entries]
            parent = _common_parent(entries)
            found += [(e, _rel(e, parent)) for e in entries]
        elif storage.is_uri(item):
            files = storage.list_files(item, extensions)
            if not files:
                raise InputError(f"{item}: no image found under this URI")
            found += files
        else:
            local.append(item)
    if local:
        collected = collect_inputs(local, None if storage.is_uri(output) else output)
        found += [(str(src), str(rel)) for src, rel in collected.files]
        plan.failures += [(str(p), reason) for p, reason in collected.failures]
    seen: dict[str, str] = {}
    inputs_set = {i if storage.is_uri(i) else os.path.realpath(i) for i, _ in found}
    clashes = []
    for src, rel in found:
        dst = storage.join(output, rel)
        key = dst if storage.is_uri(dst) else os.path.realpath(dst)
        if key in seen and seen[key] != src:
            clashes.append(f"{seen[key]} and {src} would both write {dst}")
            continue
        if key in inputs_set:
            raise InputError(f"refusing to overwrite inputs: the output of {src} would replace the input {dst}; "
                             "choose an OUTPUT that holds no input files")
        if key in seen:
            continue                                   # the same input named twice
        seen[key] = src
        plan.items.append(BatchItem(src, dst, rel))
    if clashes:
        raise InputError(f"two inputs map to the same output name: {'; '.join(clashes[:5])}"
                         + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""))
    return plan


def with_resume(items: list[BatchItem], done: dict[str, dict[str, Any]], key: str) -> tuple[list[BatchItem], int]:
    """Items with the sha256 of their ``done`` row under the same options key (the worker skips them when the input
    is unchanged); returns them and how many have such a row."""
    out, resumable = [], 0
    for item in items:
        row = done.get(item.input)
        if row is not None and row.get("status") == "done" and row.get("options") == key and row.get("input_sha256"):
            out.append(replace(item, done_sha256=row["input_sha256"]))
            resumable += 1
        else:
            out.append(item)
    return out, resumable


def run_local(restorer: Callable[..., ItemResult], items: Iterable[BatchItem], retries: int) -> Iterator[ItemResult]:
    """The local engine: one worker, inputs in order, each tried up to ``1 + retries`` times."""
    for item in items:
        attempt = 1
        while True:
            row = restorer(item, attempt)
            if row.status != "failed" or not row.retry or attempt > retries:
                yield row
                break
            attempt += 1

"""Where ``vspbfr batch`` reads inputs and writes outputs: local paths, or any URI a pyarrow file system opens.

A location is a string: a local path (``photos/a.jpg``, ``/data/out``) or a URI with a scheme (``s3://bucket/a.jpg``,
``gs://...``, ``hdfs://...``, ``file:///...``).  Local paths need nothing beyond the standard library; URIs need
pyarrow (``pip install "vspbfr[batch]"``), whose ``FileSystem.from_uri`` resolves them (credentials come from the
usual environment of each file system).

Writes are atomic: a local output is written through an exclusive temporary file renamed onto its name
(:func:`vspbfr_core.imagefile.write_bytes_atomic`); a URI output is written to ``<name>.vspbfr-<random>.part`` and
moved onto its name, so no reader ever sees a partial file at the final name (object stores such as S3 make an
object visible only once its upload is complete anyway).
"""
from __future__ import annotations

import os
import posixpath
import re
import secrets
from pathlib import Path
from typing import Any

from .._lazy import optional_import
from ..errors import InputError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    """``s3://...``-style (a scheme of two letters or more: ``C:\\`` is a Windows drive, not a scheme)."""
    found = _SCHEME.match(location)
    return bool(found) and len(found.group(0)) > 4


def _import_fs() -> Any:
    return optional_import("pyarrow.fs", 'URIs (s3://, gs://, ...) and the batch manifest need pyarrow: pip install '
                                         '"vspbfr[batch]" (or pip install pyarrow)')


def resolve(location: str) -> tuple[Any, str]:
    """A URI -> (pyarrow FileSystem, path inside it)."""
    pafs = _import_fs()
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as exc:
        raise InputError(f"{location}: cannot open this URI: {exc}") from exc


def join(base: str, rel: str) -> str:
    """``base`` + a relative path with ``/`` separators (URIs) or the local separator."""
    if is_uri(base):
        return base.rstrip("/") + "/" + rel.replace(os.sep, "/")
    return str(Path(base) / rel)


def read_bytes(location: str) -> bytes:
    """The whole file; an ``InputError`` naming it when it cannot be read."""
    if not is_uri(location):
        from ..imagefile import _check_file

        path = Path(location)
        _check_file(path)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InputError(f"{location}: cannot read the file: {exc.strerror or exc}") from exc
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, ValueError) as exc:
        raise InputError(f"{location}: cannot read: {exc}") from exc


def exists(location: str) -> bool:
    if not is_uri(location):
        return os.path.isfile(location)
    pafs = _import_fs()
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def write_bytes(location: str, data: bytes) -> None:
    """``data`` -> ``location`` atomically (see the module)."""
    from ..errors import OutputError

    if not is_uri(location):
        from ..imagefile import write_bytes_atomic

        try:
            write_bytes_atomic(data, location)
        except OSError as exc:
            raise OutputError(f"{location}: cannot write: {exc.strerror or exc}") from exc
        return
    fs, path = resolve(location)
    parent = posixpath.dirname(path)
    tmp = f"{path}.vspbfr-{secrets.token_hex(4)}.part"
    try:
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except (OSError, ValueError) as exc:
        try:
            fs.delete_file(tmp)
        except (OSError, ValueError):
            pass
        raise OutputError(f"{location}: cannot write: {exc}") from exc


def list_files(location: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """Files under a URI folder (recursive) whose name ends in one of ``extensions`` -> (URI, relative path),
    sorted by relative path."""
    pafs = _import_fs()
    fs, root = resolve(location)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [(location, posixpath.basename(root))]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{location}: no such file or folder")
    scheme = location[:location.index("://") + 3]
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if entry.type == pafs.FileType.File and os.path.splitext(entry.path)[1].lower() in extensions:
            rel = posixpath.relpath(entry.path, root)
            found.append((scheme + entry.path, rel))
    return sorted(found, key=lambda item: item[1])

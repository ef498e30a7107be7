"""Reading weight files without ever running code from them, and checking the tensors they hold.

Used by the VSPBFR networks (:mod:`vspbfr_core.checkpoints`), the RetinaFace detector and ``vspbfr download`` /
``vspbfr info``. Reading rules:

* ``.safetensors`` files through the safetensors library (header metadata kept); anything else as a PyTorch
  checkpoint with ``torch.load(weights_only=True)`` and a data-only allow-list of globals (a restricted unpickler
  on PyTorch < 2.5);
* zip checkpoints are checked member by member (CRC-32, about 0.4 s per GB) and memory-mapped only when
  every member is stored, as ``torch.save`` writes them; deflated members (a re-zipped file) are read
  without ``mmap``, giving the same tensors; other zip compression methods are refused;
* :class:`UnsafeCheckpointError` ("could run code") only when the pickle names a real global outside the
  allow-list; truncated, random, damaged or legacy garbage data is a plain :class:`CheckpointError`;
* no message passes on PyTorch's advice to retry with ``weights_only=False``;
* paths may be ``bytes`` or hold bytes that are not UTF-8 (reached through ``/proc/self/fd`` by the native
  readers on Linux); messages show such bytes as ``\\xff`` escapes;
* :func:`check_tensors` compares dtypes (floating / integer) and values (no NaN / Inf, no negative BatchNorm
  variance) with what a network expects.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError

__all__ = [
    "SAFE_GLOBAL_NAMES", "file_sha256", "as_path", "shown", "torch_reason", "read_weights_file", "check_tensors",
    "count_non_finite",
]

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

#----------------------------------------------------------------------------
# Reading


def _safe_globals() -> list[Any]:
    """Data-only globals the official training files may pickle (argparse args, numpy numbers)."""
    out: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the core
        return out
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # numpy < 2
    out += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


SAFE_GLOBAL_NAMES = ("argparse.Namespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                     "numpy.dtype", "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType",
                     "numpy.dtypes.Float16DType", "numpy.dtypes.Int64DType", "numpy.dtypes.Int32DType",
                     "numpy.dtypes.BoolDType")


def file_sha256(path: str | bytes | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(as_path(path), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def as_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Path:
    """``path`` as a :class:`Path`; ``bytes`` names (POSIX names that are not UTF-8) are decoded with
    :func:`os.fsdecode`, so they round-trip to the same bytes when the file is opened."""
    try:
        return Path(os.fsdecode(os.fspath(path)))
    except TypeError as exc:
        raise CheckpointError(f"a model file path must be a str, bytes or os.PathLike, not {type(path).__name__}"
                              ) from exc


def shown(path: str | bytes | os.PathLike[str]) -> str:
    """``path`` (or any text) for messages: bytes that are not UTF-8 appear as ``\\xff`` escapes, so every stream
    can print it; valid names are unchanged."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:   # a lone surrogate that no file name byte produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def _native_name(path: Path) -> Iterator[str | None]:
    """A name the native readers (PyTorch's zip reader and ``mmap``, safetensors) can open for ``path``.

    They only take UTF-8 strings. A POSIX name with other bytes is opened here and reached through
    ``/proc/self/fd/N`` (Linux); ``None`` where that does not exist (the caller then reads through a Python
    file object). A mapping made through the descriptor outlives it.
    """
    name = os.fspath(path)
    if _utf8(name):
        yield name
        return
    if not os.path.isdir("/proc/self/fd"):
        yield None
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _check_exists(path: Path) -> None:
    """A clear error unless ``path`` is a regular file this process can open."""
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {shown(path)}")
    if not path.is_file():
        raise CheckpointError(f"{shown(path)}: is a folder or a special file, not a model file")
    try:
        with open(path, "rb") as f:
            empty = f.read(1) == b""
    except OSError as exc:
        raise CheckpointError(f"{shown(path)}: cannot open the model file ({exc.strerror or exc}); check its "
                              "permissions") from exc
    if empty:
        raise CheckpointError(f"{shown(path)}: the file is empty (an interrupted download or copy): download it "
                              "again (vspbfr download)")


_TORCH_REBUILDERS = frozenset({
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_meta_tensor_no_storage",
})
_DATA_GLOBALS = frozenset({"collections.OrderedDict", "torch.Size", "torch.device", "builtins.set", "_codecs.encode",
                           "builtins.frozenset", "builtins.bytearray"})


class _RestrictedUnpickler(pickle.Unpickler):
    """Fallback for PyTorch < 2.5 (no ``safe_globals``): resolves only tensor-rebuild and data globals."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if module == "torch._utils" and name in _TORCH_REBUILDERS:
            return getattr(torch._utils, name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if full in _DATA_GLOBALS or full in SAFE_GLOBAL_NAMES:
            if full.startswith("numpy.") and "scalar" in full:
                for obj in _safe_globals():
                    if isinstance(obj, tuple) and obj[1] == full:
                        return obj[0]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full} was not an allowed global")


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` whose unpickler refuses every global outside the allow-lists."""

    Unpickler = _RestrictedUnpickler
    __name__ = "vspbfr_restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _has_safe_globals() -> bool:
    ser = torch.serialization
    return hasattr(ser, "safe_globals") and hasattr(ser, "get_unsafe_globals_in_checkpoint")


# A global named by an unpickler: dotted Python identifiers (what a GLOBAL / STACK_GLOBAL opcode of a real pickle
# holds). Bytes of a damaged file that an unpickler reads as a "name" do not look like this.
_GLOBAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)")
# PyTorch's weights_only errors advise re-running with weights_only=False (which would run the file's code);
# sentences that mention it or the allow-list helpers are dropped from every message passed on.
_ADVICE = re.compile(r"weights[_ ]only|safe_globals|add_safe_globals|arbitrary code|trusted source", re.IGNORECASE)


def _has_advice(exc: BaseException) -> bool:
    return bool(_ADVICE.search(str(exc)))


def torch_reason(exc: BaseException, limit: int = 240) -> str:
    """A one-line reason for a failed ``torch.load``: the unpickler's own words, without PyTorch's advice."""
    text = str(exc)
    inner = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\s*\n|Check the documentation|$)", text, re.S)
    if inner and inner.group(1).strip():
        text = inner.group(1)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    text = " ".join(s for s in sentences if not _ADVICE.search(s)).strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _refused_global(exc: BaseException) -> str | None:
    """The forbidden global a refusal names, or None when the error is not such a refusal (damaged data)."""
    match = _REFUSED_GLOBAL.search(str(exc))
    if match and _GLOBAL_NAME.fullmatch(match.group(1)) and match.group(1) not in SAFE_GLOBAL_NAMES:
        return match.group(1)
    return None


_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def _zip_compressed(path: Path) -> bool:
    """Whether a zip checkpoint has compressed (deflate) members, after checking every member's CRC-32.

    ``torch.save`` writes stored members, which PyTorch can memory-map; a file re-zipped by another tool may hold
    deflated ones, which must be read without ``mmap`` (mapped, they would be read as raw compressed bytes).
    Raises :class:`CheckpointError` for other compression methods and for damaged archives or members.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            other = sorted({i.compress_type for i in infos} - set(_ZIP_METHODS))
            if other:
                raise CheckpointError(
                    f"{shown(path)}: the archive's members use zip compression method(s) {other}, which PyTorch "
                    "cannot read (only stored and deflate): save the checkpoint again with torch.save")
            bad = zf.testzip()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"{shown(path)}: damaged zip archive ({type(exc).__name__}: {exc}). The file is "
                              "truncated or corrupt: download it again (vspbfr download).") from exc
    if bad is not None:
        raise CheckpointError(f"{shown(path)}: the archive member {bad!r} is damaged (its CRC-32 does not match "
                              "its contents). The file is corrupt: download it again (vspbfr download).")
    return any(i.compress_type != zipfile.ZIP_STORED for i in infos)


def _torch_load(path: Path, restricted_fallback: bool | None = None) -> Any:
    """Unpickle a checkpoint without ever running code from it.

    PyTorch >= 2.5: ``weights_only=True`` with the data-only allow-list.  Older PyTorch (A1111 1.10
    ships 2.1): the same allow-list through a restricted unpickler.  ``torch.serialization.load`` is
    called directly because some hosts replace ``torch.load`` with wrappers that return ``None``.

    Zip checkpoints are checked member by member (CRC-32) first and memory-mapped only when every member is
    stored; deflated members are read without ``mmap``. :class:`UnsafeCheckpointError` is raised only when the
    pickle names a real global outside the allow-list; anything else that fails is a damaged file
    (:class:`CheckpointError`). No message passes on PyTorch's advice to load with ``weights_only=False``.
    """
    path = as_path(path)
    use_fallback = (not _has_safe_globals()) if restricted_fallback is None else restricted_fallback
    is_zip = zipfile.is_zipfile(path)
    compressed = _zip_compressed(path) if is_zip else False
    with _native_name(path) as name, contextlib.ExitStack() as stack:
        def source() -> Any:
            return name if name is not None else stack.enter_context(open(path, "rb"))

        if is_zip and not use_fallback:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source())
            except Exception as exc:  # a damaged pickle: let the load below produce the precise error
                log.debug("could not scan %s for globals: %s", shown(path), torch_reason(exc))
                unsafe = []
            forbidden = [g for g in unsafe if g not in SAFE_GLOBAL_NAMES and _GLOBAL_NAME.fullmatch(g)]
            if forbidden:
                raise UnsafeCheckpointError(
                    f"{shown(path)}: refused to load, the pickle references {', '.join(forbidden)}, which is not on "
                    f"the data-only allow-list ({', '.join(SAFE_GLOBAL_NAMES[:4])}, ...). Loading it could run code. "
                    "Use the official files from the model hub, or convert a trusted file yourself in a separate "
                    "environment.")
        try:
            if use_fallback:
                obj = torch.serialization.load(source(), map_location="cpu", pickle_module=_RestrictedPickleModule,
                                               weights_only=False)
            else:
                mmap = is_zip and not compressed and name is not None
                with torch.serialization.safe_globals(_safe_globals()):
                    obj = torch.serialization.load(source(), map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # the unpickler fails on damaged data with every kind of error
            cause = None if _has_advice(exc) else exc
            forbidden_name = _refused_global(exc) if isinstance(exc, pickle.UnpicklingError) else None
            if forbidden_name is not None:
                raise UnsafeCheckpointError(
                    f"{shown(path)}: refused to load, the pickle needs {forbidden_name}, which is not on the "
                    "data-only allow-list. Loading it could run code. Use the official files from the model hub.",
                ) from cause
            raise CheckpointError(
                f"{shown(path)}: cannot read this file as a PyTorch checkpoint ({torch_reason(exc)}). It is probably "
                "truncated or corrupt: download it again (vspbfr download).") from cause
    if obj is None:
        raise CheckpointError(f"{shown(path)}: the file unpickled to None; it is not a checkpoint (or a host's "
                              "torch.load wrapper refused it)")
    return obj


def _safetensors_header_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (for the in-memory fallback; safetensors checks the rest)."""
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{shown(path)}: not a valid .safetensors file (unreadable header: {exc})") from exc
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load, load_file
    except ImportError as exc:
        raise CheckpointError(f"{shown(path)}: reading .safetensors needs the 'safetensors' package "
                              "(pip install safetensors)") from exc
    try:
        with _native_name(path) as name:
            if name is None:
                data = path.read_bytes()
                return load(data), _safetensors_header_metadata(data, path)
            with safe_open(name, framework="pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(name), meta
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError for bad headers
        raise CheckpointError(
            f"{shown(path)}: not a valid .safetensors file ({torch_reason(exc)}). The header or data is damaged or "
            "the file is incomplete: convert or download it again.") from exc


def read_weights_file(path: str | bytes | os.PathLike[str]) -> tuple[Any, dict[str, str]]:
    """The contents of any weights file, read without running code from it.

    ``.safetensors``: ``(tensor dict, header metadata)``; anything else: ``(the unpickled object, {})`` through
    the data-only unpickler. Raises :class:`ModelNotFoundError` for a missing file, :class:`UnsafeCheckpointError`
    for a pickle that names a forbidden global, and :class:`CheckpointError` for every other unreadable file.
    Used for the VSPBFR networks and the RetinaFace detector alike.
    """
    path = as_path(path)
    _check_exists(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _torch_load(path), {}


#----------------------------------------------------------------------------
# Tensor checks (dtypes and values)


def _dtype_class(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "boolean"
    if t.is_complex():
        return "complex"
    return "floating-point" if t.is_floating_point() else "integer"


def count_non_finite(t: torch.Tensor) -> int:
    """How many NaN / infinite values ``t`` holds (0 for integer tensors).

    One float sum first: a NaN or an infinity makes the sum non-finite, so a finite sum proves the tensor finite;
    only when it is not (a bad value, or an overflow of large finite values) are the values counted one by one.
    """
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    if bool(torch.isfinite(t.sum())):
        return 0
    return int((~torch.isfinite(t)).sum())


def check_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: str | os.PathLike[str],
                  what: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Check the file's tensors for a network's state dict and return them converted for loading.

    ``expected`` is the network's own state dict (shapes are checked before this); the file's tensor for key
    ``k`` is ``found[prefix + k]``. Rules: a floating-point tensor where the network has a floating-point
    parameter or buffer, an integer tensor where it has an integer one (booleans and complex numbers match
    nothing else); every floating-point value finite; BatchNorm ``running_var`` not negative. Raises
    :class:`CheckpointError` naming the file, the tensors and how many values are bad. Returns
    ``{k: tensor}``: floating-point tensors in float32, integers in the network's integer dtype.
    """
    wrong = []
    for k, ref in expected.items():
        t = found[prefix + k]
        if _dtype_class(t) != _dtype_class(ref):
            wrong.append(f"{prefix + k!r} is {str(t.dtype).removeprefix('torch.')}, the network expects "
                         f"{_dtype_class(ref)} values")
    if wrong:
        raise CheckpointError(f"{shown(path)}: {len(wrong)} tensor(s) of the {what} network have the wrong dtype "
                              f"(first: {'; '.join(wrong[:3])}). The file is damaged or not written for this network.")
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    total = 0
    for k, ref in expected.items():
        t = found[prefix + k]
        t = t.float() if t.is_floating_point() else t.to(ref.dtype)
        n = count_non_finite(t)
        if n:
            total += n
            bad.append(f"{prefix + k!r} ({n} of {t.numel()} values)")
        elif k.endswith("running_var") and t.numel() and bool((t < 0).any()):
            raise CheckpointError(f"{shown(path)}: tensor {prefix + k!r} of the {what} network holds "
                                  f"{int((t < 0).sum())} negative variance(s); the file is damaged: download it again.")
        out[k] = t
    if bad:
        raise CheckpointError(
            f"{shown(path)}: {len(bad)} tensor(s) of the {what} network hold NaN or infinite values ({total} in all; "
            f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}). The file is damaged or comes from a diverged "
            "training run: download it again (vspbfr download).")
    return out


def tensor_dict(obj: Any, path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """The ``name -> tensor`` dict of a loaded weights file: a ``{"state_dict": ...}`` wrapper and a ``module.``
    prefix (DataParallel) are taken off; anything else is a CheckpointError naming the file and ``what`` was
    expected (e.g. "a RetinaFace state dict")."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        found = "an empty dict" if isinstance(obj, dict) and not obj else type(obj).__name__
        raise CheckpointError(f"{shown(path)}: expected {what} (name -> tensor), found {found}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)

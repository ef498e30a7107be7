"""Memory estimates and guards: refuse work that cannot fit before allocating it, and turn a late
out-of-memory error into advice instead of a traceback.

* :func:`available_bytes` is what the device can still give: on the CPU ``MemAvailable`` from
  ``/proc/meminfo`` (Linux; ``os.sysconf`` available pages elsewhere; swap is not counted), on CUDA the
  free device memory plus what PyTorch's caching allocator holds unused.  ``None`` means unknown (MPS,
  other backends, an unreadable ``/proc``): nothing is refused then.  Code calls it through this module
  (``memory.available_bytes``), so tests can monkeypatch it to fake a small machine.
* :func:`paste_bytes` estimates the peak of :func:`~vspbfr_core.face.paste_faces` (output, mask and the
  per-face working tensors), :func:`result_bytes` the peak of a whole restored batch on its way back to
  the host (output, mask and the two copies ``to_host`` makes); the upscaled output dominates both: a
  6000 x 4000 RGB photo at ``upscale=8`` is 48000 x 32000 x 3 float32 values, about 18.4 GB, in one
  allocation (``paste_faces`` needs 24.6 GB with its mask, the pipeline about 62 GB until the host copy).
* :func:`ensure_available` raises :class:`~vspbfr_core.errors.InsufficientMemoryError` naming the size,
  what is available and what to do, when an estimate exceeds the available memory.
* :func:`guard` converts ``MemoryError`` and PyTorch's out-of-memory errors (CUDA, and the CPU
  allocator's "can't allocate memory") raised inside it into the same error.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .errors import InsufficientMemoryError, VSPBFRError

if TYPE_CHECKING:
    import torch

__all__ = ["available_bytes", "format_bytes", "is_out_of_memory", "image_bytes", "paste_bytes", "ensure_available",
           "guard", "scaled_size", "result_bytes", "ADVICE"]

ADVICE = ("Use a lower upscale, a smaller image (or fewer images per batch), or a device with more memory "
          "(a GPU with more memory, or the CPU with more RAM).")
PASTE_VALUES_PER_FACE_PIXEL = 14    # paste_faces, per output pixel of an RGB face region: grid 2, warped face 3,
                                     # mask 1, warped original 3, change 2, keep 1, target 3 (blend temporaries)
GROUP_WASTE = 2.0                   # face regions are padded to their group's largest (face/paste.py)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return int(pages) * int(size) if pages > 0 and size > 0 else None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes the device can still allocate, or ``None`` when unknown (then nothing is refused)."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return _meminfo_available() or _sysconf_available()
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except (RuntimeError, AssertionError):       # no CUDA here, or a device that went away
            return None
        return int(free) + max(0, int(cached))
    return None


def format_bytes(n: float) -> str:
    """``18.4 GB``-style sizes (powers of 1000, like the file sizes people see)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, ``torch.OutOfMemoryError`` or a RuntimeError that says the allocator ran out."""
    import torch

    if isinstance(exc, MemoryError):
        return True
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


def _elem(dtype: torch.dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else torch.iinfo(dtype).bits // 8


def image_bytes(batch: int, channels: int, height: int, width: int, dtype: torch.dtype) -> int:
    """Bytes of one ``[batch, channels, height, width]`` tensor."""
    return int(batch) * int(channels) * int(height) * int(width) * _elem(dtype)


def paste_bytes(batch: int, channels: int, height: int, width: int, out_h: int, out_w: int, dtype: torch.dtype,
                face_areas: Iterable[int] = (), crops: int = 0, crop_size: int = 0) -> int:
    """Peak bytes :func:`~vspbfr_core.face.paste_faces` allocates for ``batch`` images ``height x width`` pasted
    into ``out_h x out_w`` outputs of ``dtype``, with face regions of ``face_areas`` output pixels and ``crops``
    restored crops of side ``crop_size`` (the inputs themselves not counted)."""
    import torch

    work = torch.float64 if dtype == torch.float64 else torch.float32
    need = image_bytes(batch, channels, out_h, out_w, dtype)                 # the output
    need += image_bytes(batch, 1, out_h, out_w, dtype)                       # its mask
    if (out_h, out_w) != (height, width) and dtype != work:
        need += image_bytes(batch, channels, height, width, work)            # the input in the work dtype
        need += image_bytes(batch, channels, out_h, out_w, work)             # resampled there, before the cast
    areas = [int(a) for a in face_areas]
    if areas:
        per_pixel = PASTE_VALUES_PER_FACE_PIXEL * _elem(work) + channels * _elem(dtype)   # + kept original
        need += int(GROUP_WASTE * sum(areas) * per_pixel)
    need += 3 * image_bytes(crops, channels, crop_size, crop_size, work)     # crops in the work dtype, colour match
    return need


def result_bytes(batch: int, host_channels: int, out_h: int, out_w: int, in_hw: tuple[int, int] | None = None) -> int:
    """Peak bytes of a whole restored batch at ``out_h x out_w`` on the working device: the float32 RGB output and
    its mask, the two copies :func:`vspbfr_core.image.to_host` makes (clamped RGB, then the host layout with
    ``host_channels``) and, with ``in_hw``, the float32 working copy of the input."""
    import torch

    f32 = torch.float32
    need = 2 * image_bytes(batch, 3, out_h, out_w, f32) + image_bytes(batch, 1, out_h, out_w, f32)
    need += image_bytes(batch, host_channels, out_h, out_w, f32)
    if in_hw is not None:
        need += image_bytes(batch, 3, in_hw[0], in_hw[1], f32)
    return need


def ensure_available(need: int, device: torch.device | str, what: str, advice: str = ADVICE) -> None:
    """Raise :class:`InsufficientMemoryError` when ``need`` bytes exceed :func:`available_bytes` of ``device``."""
    have = available_bytes(device)          # a module global looked up at call time: monkeypatchable
    if have is None or need <= have:
        return
    raise InsufficientMemoryError(f"{what} would need about {format_bytes(need)} of memory at once, but only "
                                  f"{format_bytes(have)} is available on {device}. {advice}")


@contextlib.contextmanager
def guard(what: str, device: torch.device | str | None = None, advice: str = ADVICE) -> Iterator[None]:
    """Turn an out-of-memory error raised inside the block into :class:`InsufficientMemoryError`."""
    try:
        yield
    except VSPBFRError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        where = f" on {device}" if device is not None else ""
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InsufficientMemoryError(f"{what} ran out of memory{where} ({detail}). {advice}") from exc


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(height * scale), round(width * scale))``, at least 1 each (paste_faces' rule)."""
    if not math.isfinite(scale):
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))

"""Device names from users (``--device``, ``load_pipeline(device=...)``) -> a usable ``torch.device``.

``"auto"`` picks CUDA, then MPS, then the CPU.  Anything else must name a device this PyTorch build and
machine actually have: ``cpu``, ``cuda`` / ``cuda:N`` (N below the number of visible GPUs), ``mps``, or
another accelerator type PyTorch knows (``xpu``, ...) when its backend reports it available.  A typo or
an absent device is an :class:`~vspbfr_core.errors.InputError` that says what is available, raised
before any model is loaded, never a crash deep inside torch on the first tensor move.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "available_devices"]


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and bool(mps.is_available())


def available_devices() -> list[str]:
    """The device names :func:`resolve_device` accepts on this machine (besides ``auto``)."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device | None = "auto", *, what: str = "device") -> torch.device:
    """``name`` as a ``torch.device`` that exists here; ``what`` names the option in messages."""
    import torch

    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, (str, torch.device)):
        raise InputError(f"{what}: expected a device name such as 'cpu', 'cuda', 'cuda:1' or 'mps', "
                         f"got {type(name).__name__} {name!r}")
    try:
        device = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{what}: unknown device {name!r}; use auto or one of: "
                         f"{', '.join(available_devices())}") from exc
    here = ", ".join(available_devices())
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what} {name!r}: CUDA is not available in this PyTorch build or on this machine "
                             f"(available: {here})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"{what} {name!r}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise InputError(f"{what} {name!r}: Apple MPS is not available in this PyTorch build or on this "
                             f"machine (available: {here})")
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        count_fn = getattr(backend, "device_count", None)
        if device.index is not None and callable(count_fn) and device.index >= count_fn():
            raise InputError(f"{what} {name!r}: this machine has {count_fn()} {device.type} device(s)")
        return device
    raise InputError(f"{what} {name!r}: no {device.type} device is available here (available: {here})")

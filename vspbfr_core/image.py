"""Host-boundary image conversions (style guide section 4.11), float only.

Hosts (ComfyUI, A1111, the CLI) hand over an IMAGE tensor ``[B, H, W, C]`` in ``[0, 1]``; the core
works on ``[B, C, H, W]``.  Everything that differs between host images is made explicit here, once:

* ``C == 4`` (RGBA): the alpha plane is split off and kept in an :class:`ImageLayout`, then put back
  (resized if the image was upscaled) by :func:`to_host`.
* ``C == 1`` (grayscale): replicated to three channels, and reduced back with BT.601 luma weights.
* dtype: floating point only; integer images (uint8 0..255) are refused with a hint instead of being
  guessed.  Values within ``RANGE_TOLERANCE`` outside ``[0, 1]`` are clamped; further out is an error,
  because it means the caller passed ``[0, 255]`` or ``[-1, 1]`` data.
* NaN / inf: refused with :class:`~vspbfr_core.errors.InputError`.

There is no uint8, BGR or cv2 round trip anywhere: the values the host gave are the values used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageLayout", "RANGE_TOLERANCE", "LUMA_WEIGHTS", "check_image", "check_bchw", "from_host", "to_host",
    "to_signed", "from_signed", "gray_to_rgb", "rgb_to_gray",
]

RANGE_TOLERANCE = 1.0 / 255.0           # values this far outside [0, 1] are clamped, further out refused
LUMA_WEIGHTS = (0.299, 0.587, 0.114)    # BT.601, used to turn RGB back into one gray channel


@dataclass(frozen=True)
class ImageLayout:
    """What :func:`from_host` split off an IMAGE, so :func:`to_host` can restore it."""

    channels: int                        # channel count the host gave: 1, 3 or 4
    alpha: torch.Tensor | None = None    # [B, 1, H, W] alpha plane of an RGBA input, else None


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {str(x.dtype).replace('torch.', '')}, device {x.device}"


def _dense(x: torch.Tensor) -> torch.Tensor:
    """A view of ``x`` with its dimensions in memory order, so whole-tensor reductions need no copy
    (a host IMAGE permuted to BCHW is not contiguous, but its memory is)."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    view = x.permute(order)
    return view if view.is_contiguous() else x


def _not_a_tensor(x: object, name: str, expects: str) -> InputError:
    kind = type(x).__name__
    hint = ""
    if kind == "ndarray":
        hint = " (convert a NumPy array with torch.from_numpy(array).float(), divided by 255 for 8-bit data)"
    elif isinstance(x, (list, tuple)):
        hint = " (stack the images into one tensor with torch.stack)"
    return InputError(f"{name}: expected {expects}, got {kind}{hint}")


def _check_values(x: torch.Tensor, name: str, check_range: bool, expects: str = "a floating point tensor in [0, 1]",
                  allow_empty: bool = False) -> torch.Tensor:
    import torch

    if not x.is_floating_point():
        hint = " (divide 8-bit images by 255)" if x.dtype == torch.uint8 else ""
        raise InputError(f"{name}: expected {expects}, got {_describe(x)}{hint}")
    if x.numel() == 0:
        if allow_empty:
            return x
        raise InputError(f"{name}: the tensor is empty ({_describe(x)})")
    lo_t, hi_t = torch.aminmax(_dense(x))            # one pass; NaN propagates, inf shows as a bound
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{name}: contains {bad} NaN or infinite value(s) ({_describe(x)}); the previous step "
                         "produced invalid pixels (try running it in float32)")
    if check_range:
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            hint = ""
            if hi > 2.0:
                hint = " (looks like 0..255 data: divide by 255)"
            elif lo < -0.1:
                hint = " (looks like [-1, 1] data: use (x + 1) / 2)"
            raise InputError(f"{name}: values must lie in [0, 1], found min {lo:.4g} and max {hi:.4g}{hint}")
        if lo < 0.0 or hi > 1.0:
            x = x.clamp(0.0, 1.0)
    return x


def check_image(images: torch.Tensor, name: str = "image", *, check_range: bool = True) -> torch.Tensor:
    """Validate a host IMAGE ``[B, H, W, C]`` (C in 1, 3, 4) and return it, clamped to [0, 1].

    A 3-d tensor ``[H, W, C]`` is not accepted silently: the host must say it is one image.
    """
    import torch

    if not isinstance(images, torch.Tensor):
        raise _not_a_tensor(images, name, "a float torch.Tensor [B, H, W, C] in [0, 1]")
    if images.dim() != 4:
        hint = " (a single image needs a batch dimension: image[None])" if images.dim() == 3 else ""
        raise InputError(f"{name}: expected a 4-d IMAGE tensor [B, H, W, C], got {_describe(images)}{hint}")
    if images.shape[-1] not in (1, 3, 4):
        hint = " (this looks like a [B, C, H, W] tensor)" if images.shape[1] in (1, 3, 4) else ""
        raise InputError(f"{name}: the last dimension must be 1 (gray), 3 (RGB) or 4 (RGBA) channels, "
                         f"got {_describe(images)}{hint}")
    return _check_values(images, name, check_range)


def check_bchw(images: torch.Tensor, name: str = "images", *, channels: tuple[int, ...] | None = None,
               check_range: bool = True, dims: str = "B, C, H, W", allow_empty: bool = False) -> torch.Tensor:
    """Validate a core image batch ``[B, C, H, W]`` in [0, 1] and return it (clamped).

    ``dims`` names the dimensions in messages (e.g. ``"F, 3, H, W"`` for face crops); ``allow_empty`` accepts a
    batch of zero images (checked for layout and dtype only).
    """
    import torch

    expects = f"a float torch.Tensor [{dims}] in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise _not_a_tensor(images, name, expects)
    if images.dim() != 4:
        raise InputError(f"{name}: expected a 4-d tensor [{dims}], got {_describe(images)}")
    if channels is not None and images.shape[1] not in channels:
        hint = " (this looks like a host IMAGE [B, H, W, C]: use vspbfr_core.image.from_host)" \
            if images.shape[-1] in (1, 3, 4) else ""
        raise InputError(f"{name}: expected {' or '.join(map(str, channels))} channels in dimension 1 of [{dims}], "
                         f"got {_describe(images)}{hint}")
    return _check_values(images, name, check_range, expects, allow_empty and images.shape[0] == 0)


def gray_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` -> ``[B, 3, H, W]`` by replication."""
    return x.expand(-1, 3, -1, -1).contiguous()


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 1, H, W]`` with BT.601 luma weights."""
    r, g, b = x.unbind(1)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(1)


def from_host(images: torch.Tensor, name: str = "image") -> tuple[torch.Tensor, ImageLayout]:
    """Host IMAGE ``[B, H, W, C]`` in [0, 1] -> RGB ``[B, 3, H, W]`` in [0, 1] plus what was split off.

    The dtype and device are kept (any floating dtype).  RGBA loses its alpha into the layout,
    grayscale is replicated to RGB.
    """
    images = check_image(images, name)
    x = images.permute(0, 3, 1, 2)                           # [B, C, H, W]
    channels = int(x.shape[1])
    alpha = None
    if channels == 4:
        alpha = x[:, 3:4].contiguous()
        x = x[:, :3]
    elif channels == 1:
        x = gray_to_rgb(x)
    return x.contiguous(), ImageLayout(channels=channels, alpha=alpha)


def to_host(rgb: torch.Tensor, layout: ImageLayout | None = None) -> torch.Tensor:
    """RGB ``[B, 3, H, W]`` in [0, 1] -> host IMAGE ``[B, H, W, C]`` with the input's channel layout.

    The alpha plane of an RGBA input is resized (bilinear, antialiased) when the image size changed.
    """
    import torch
    import torch.nn.functional as F

    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise InputError(f"to_host: expected an RGB tensor [B, 3, H, W], got {_describe(rgb)}")
    x = rgb.clamp(0.0, 1.0)
    if layout is not None and layout.channels == 1:
        x = rgb_to_gray(x).clamp(0.0, 1.0)
    elif layout is not None and layout.channels == 4:
        alpha = layout.alpha
        if alpha is None:
            raise InputError("to_host: the layout says RGBA but carries no alpha plane")
        alpha = alpha.to(device=x.device, dtype=x.dtype)
        if alpha.shape[0] != x.shape[0]:
            raise InputError(f"to_host: alpha has batch {alpha.shape[0]} but the image has {x.shape[0]}")
        if alpha.shape[-2:] != x.shape[-2:]:
            antialias = alpha.shape[-2] > x.shape[-2] or alpha.shape[-1] > x.shape[-1]
            alpha = F.interpolate(alpha, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False,
                                  antialias=antialias).clamp(0.0, 1.0)
        x = torch.cat([x, alpha], dim=1)
    return x.permute(0, 2, 3, 1).contiguous()


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the networks' internal range)."""
    return x * 2.0 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)

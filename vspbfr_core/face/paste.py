"""Paste restored face crops back into their images: inverse warp, soft mask, colour match, blend.

Pipeline step 8 (style guide section 6).  For each face the inverse similarity transform is sampled
only over the face's own region of the (optionally upscaled) output, with ``affine_grid`` /
``grid_sample`` batched over faces of similar size, on the images' device.  The soft mask is evaluated
analytically in crop coordinates, so it has the same shape at every face size and never reaches past
the crop:

* ``"square"``: the crop square with a smooth (C2 "smootherstep") ramp of width ``feather`` along its
  four sides; the default (50 of 512) matches the look of FaceRestoreHelper's eroded-and-blurred
  square mask (a ramp from the crop border to about a tenth of the crop side).
* ``"ellipse"``: an upright ellipse around the FFHQ face (0.42 x 0.49 of the crop side in semi-axes),
  with the ramp of width ``feather`` inside its boundary; background and hair corners stay original.
* ``"landmarks"`` and ``"parsing"``: one mask per face, following its five landmarks or a face-parsing network's
  face parts (see :mod:`.masks`).

A ``limit`` mask in image space (a user's or an occlusion mask, SEG masks) multiplies every face's mask: where it
is 0 the output keeps the original pixels.

``feather`` is measured in pixels of a 512 x 512 crop (scaled with the crop size; 0 = hard edge,
default 50, at most 230).  The mask is 0 one crop pixel inside the crop border, so the zero padding
beyond the crop is never blended in.

Bilinear warping there and back is not lossless: sharp edges come back up to ~40/255 off, and a face
larger than the crop loses its finest detail.  So by default (``keep_detail``) the paste keeps the
original's *residual* ``R = original - warp_back(original crop)`` wherever the restorer left the image
alone, and drops it where the restorer changed it::

    target = warp_back(restored) + g * R,   g = clamp(1 - local_mean|warp_back(restored - crop)| / 3/255, 0, 1)

(local mean over 5 x 5 output pixels).  An unmodified crop therefore pastes back to float rounding (g = 1),
the untouched background inside the crop square is not softened, and where a restorer denoised or
rebuilt the face (changes of several levels) its result is pasted as it is, without the original's
grain (a residual added everywhere would bring back about a third of the original's pixel noise).

Overlapping faces are composited one after another in detection order (later faces on top, each with
its own alpha); the returned mask is the union ``1 - prod(1 - m_k)`` of the face masks (without the
``visibility`` factor).  Pixels whose mask is 0 are returned bit-identical (upscale 1).

Colour correction happens in crop space against the aligned original crop: ``"meanstd"`` matches
per-channel mean and standard deviation in YCbCr (per channel in the native space for non-RGB
images), weighted by the ellipse mask so the background does not count; ``"wavelet"`` replaces the
restored face's low frequencies (a blur of about 1/64 of the crop side) by the original's, keeping
the restored detail.  Both are the identity when the restored crop equals the original.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .. import memory
from ..checks import check_bool, check_float
from ..errors import InputError, NonFiniteError
from ..image import check_bchw
from .align import AlignedFaces, _to3x3, affine_grid, normalized_to_pixel, pixel_to_normalized
from .masks import MASK_SHAPES, PER_FACE_SHAPES

__all__ = ["FEATHER_DEFAULT", "paste_faces", "face_mask", "mask_from_crop_coords", "color_correct"]

MaskShape = Literal["square", "ellipse", "landmarks", "parsing"]
ColorCorrection = Literal["meanstd", "wavelet"]

ELLIPSE_AXES = (0.42, 0.49)      # semi-axes (x, y) of the ellipse mask, fraction of the crop side
ELLIPSE_CENTRE = (0.5, 0.5)      # centre of the ellipse mask, fraction of the crop side
STD_RATIO_LIMITS = (0.5, 2.0)    # "meanstd" never scales a channel's contrast beyond these factors
FEATHER_DEFAULT = 50.0           # soft-edge width in pixels of a 512 crop (FaceRestoreHelper: about 51)
FEATHER_MAX = 230.0              # wider ramps would not reach 1 anywhere in the crop
DETAIL_CHANGE = 3.0 / 255.0      # keep_detail: local mean change at which the original's residual is dropped
DETAIL_WINDOW = 5                # keep_detail: local mean over this many output pixels (odd)
GROUP_WASTE = 2.0                # faces are warped together while padding costs at most this factor


#----------------------------------------------------------------------------
# Masks


def _smootherstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def mask_from_crop_coords(fx: torch.Tensor, fy: torch.Tensor, crop_size: int, shape: MaskShape = "square",
                          feather: float = FEATHER_DEFAULT / 512) -> torch.Tensor:
    """Soft mask at crop positions given as fractions of the crop side (0 and 1 are the outer edges).

    Here ``feather`` is also a fraction of the crop side; ``crop_size`` sets the one-pixel guard band.
    """
    margin = 1.0 / crop_size
    if shape == "square":
        if feather <= 0:
            inside = (fx >= margin) & (fx <= 1 - margin) & (fy >= margin) & (fy <= 1 - margin)
            return inside.to(fx.dtype)
        dx = torch.minimum(fx, 1.0 - fx) - margin
        dy = torch.minimum(fy, 1.0 - fy) - margin
        return _smootherstep(dx / feather) * _smootherstep(dy / feather)
    ax, ay = ELLIPSE_AXES
    rx, ry = (fx - ELLIPSE_CENTRE[0]) / ax, (fy - ELLIPSE_CENTRE[1]) / ay
    depth = (1.0 - torch.sqrt(rx * rx + ry * ry)) * min(ax, ay)     # approximate distance inside the boundary
    if feather <= 0:
        return (depth >= 0).to(fx.dtype)
    return _smootherstep(depth / feather)


def face_mask(size: int = 512, shape: MaskShape = "square", feather: float = FEATHER_DEFAULT, *,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The soft paste mask ``[size, size]`` in crop space (1 = restored face, 0 = original).

    ``feather`` in pixels of a 512 crop, as for :func:`paste_faces`.
    """
    _check_mask_args(shape, feather)
    f = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size
    mask = mask_from_crop_coords(f.view(1, -1), f.view(-1, 1), size, shape, feather / 512.0)
    return torch.where(mask < 1e-6, 0.0, mask).to(dtype)          # no denormals in the tails


def _check_mask_args(shape: str, feather: float, shapes: tuple[str, ...] = ("square", "ellipse")) -> None:
    if not isinstance(shape, str) or shape not in shapes:
        raise InputError(f"mask_shape {shape!r}: use " + ", ".join(repr(s) for s in shapes[:-1])
                         + f" or {shapes[-1]!r}")
    try:
        check_float(feather, "feather", minimum=0.0, maximum=FEATHER_MAX)
    except InputError as exc:
        raise InputError(f"{exc} (pixels of a 512 x 512 face crop)") from None


#----------------------------------------------------------------------------
# Colour correction


# BT.601 full-range YCbCr (a linear, luma/chroma-decorrelating transform of RGB)
_RGB_TO_YCC = ((0.299, 0.587, 0.114),
               (-0.168736, -0.331264, 0.5),
               (0.5, -0.418688, -0.081312))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(dtype=x.dtype, device=x.device)
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    pad_w, pad_h = min(radius, w - 1), min(radius, h - 1)
    if pad_w > 0:
        y = F.pad(y, (pad_w, pad_w, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, radius - pad_w) if pad_w < radius else 0)
    if pad_h > 0:
        y = F.pad(y, (0, 0, pad_h, pad_h), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(radius - pad_h, 0) if pad_h < radius else 0)
    return y.reshape(n, c, h, w)


def _low_pass(x: torch.Tensor) -> torch.Tensor:
    """A smooth blur of about size/64 sigma, computed on a 4x smaller copy (cheap at any crop size)."""
    size = x.shape[-1]
    factor = 4 if size >= 64 else 1
    small = F.avg_pool2d(x, factor) if factor > 1 else x
    small = _gaussian_blur(small, max(size / 64.0 / factor, 0.5))
    if factor > 1:
        small = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return small


def color_correct(restored: torch.Tensor, original: torch.Tensor, method: ColorCorrection = "meanstd"
                  ) -> torch.Tensor:
    """Match the colours of ``restored`` crops ``[F, C, S, S]`` to ``original`` crops of the same shape.

    ``"meanstd"`` works in YCbCr for RGB (per channel otherwise): the statistics are taken on a 4x
    smaller copy weighted by the ellipse face mask, and the transfer, being affine in a linear colour
    space, is applied as one 3x3 colour matrix plus offset per face.
    """
    if method == "wavelet":
        return (restored - _low_pass(restored) + _low_pass(original)).clamp(0.0, 1.0)
    if method != "meanstd":
        raise InputError(f"color_correction {method!r}: use None, 'meanstd' or 'wavelet'")
    n, c, size, _ = restored.shape
    factor = 4 if size >= 64 else 1
    small_r = F.avg_pool2d(restored, factor) if factor > 1 else restored
    small_o = F.avg_pool2d(original, factor) if factor > 1 else original
    weight = face_mask(small_r.shape[-1], "ellipse", FEATHER_DEFAULT, dtype=restored.dtype, device=restored.device)
    weight = (weight / weight.sum()).view(1, 1, *weight.shape)
    if c == 3:
        to_ycc = torch.tensor(_RGB_TO_YCC, dtype=restored.dtype, device=restored.device)
    else:
        to_ycc = torch.eye(c, dtype=restored.dtype, device=restored.device)
    src = torch.einsum("ij,njhw->nihw", to_ycc, small_r)
    ref = torch.einsum("ij,njhw->nihw", to_ycc, small_o)
    mu_s, mu_r = (src * weight).sum(dim=(2, 3)), (ref * weight).sum(dim=(2, 3))                 # [F, C]
    sd_s = (((src - mu_s[..., None, None]) ** 2) * weight).sum(dim=(2, 3)).sqrt()
    sd_r = (((ref - mu_r[..., None, None]) ** 2) * weight).sum(dim=(2, 3)).sqrt()
    ratio = (sd_r / sd_s.clamp(min=1e-6)).clamp(*STD_RATIO_LIMITS)
    ratio = torch.where(sd_s > 1e-6, ratio, torch.ones_like(ratio))                            # [F, C]
    # y = ratio * (T x - mu_s) + mu_r  ->  x' = T^-1 diag(ratio) T x + T^-1 (mu_r - ratio * mu_s)
    inv = torch.linalg.inv(to_ycc.double()).to(restored.dtype)
    matrix = inv @ (ratio.unsqueeze(-1) * to_ycc)                                            # [F, C, C]
    offset = ((mu_r - ratio * mu_s) @ inv.T)                                                 # [F, C]
    out = torch.einsum("nij,njhw->nihw", matrix, restored) + offset[..., None, None]
    return out.clamp(0.0, 1.0)


#----------------------------------------------------------------------------
# Paste


def _group_faces(areas: list[int]) -> list[list[int]]:
    """Faces of similar region size, so one padded ``grid_sample`` per group wastes little."""
    order = sorted(range(len(areas)), key=lambda k: -areas[k])
    groups: list[list[int]] = []
    for k in order:
        if groups and areas[groups[-1][0]] * (len(groups[-1]) + 1) <= GROUP_WASTE * (
                sum(areas[j] for j in groups[-1]) + areas[k]):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def paste_faces(images: torch.Tensor, restored: torch.Tensor, aligned: AlignedFaces, *, visibility: float = 1.0,
                mask_shape: MaskShape = "square", feather: float = FEATHER_DEFAULT,
                color_correction: ColorCorrection | None = None, upscale: float = 1.0, keep_detail: bool = True,
                parser: Any = None, mask_parts: Any = None, limit: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend restored face crops into their images.

    Args:
        images: the original batch ``[B, C, H, W]`` float in [0, 1] (the one given to ``align_faces``).
        restored: ``[F, C, R, R]`` float in [0, 1], one per aligned face, same order; R may differ from
            ``aligned.size`` (e.g. a restorer that doubles the resolution).
        aligned: from :func:`~vspbfr_core.face.align_faces`.
        visibility: 0 keeps the original face, 1 the restored one; in between blends the two.
        mask_shape: ``"square"`` or ``"ellipse"`` (see the module docstring), ``"landmarks"`` or ``"parsing"``
            (one mask per face, see :mod:`.masks`; ``parsing`` needs ``parser``).
        feather: width of the soft edge in pixels of a 512 crop (scaled with the crop; 0 = hard edge;
            default 50, like FaceRestoreHelper's mask).
        color_correction: ``None``, ``"meanstd"`` or ``"wavelet"`` (against the aligned original crop).
        upscale: output size factor; the background is resized (bicubic) and faces are pasted at
            the new scale, so a larger ``R`` keeps its detail.
        keep_detail: keep the original's pixels where the restorer changed nothing (see the module
            docstring): an unmodified crop pastes back to float rounding and untouched areas inside the crop are
            not softened by the two resampling steps.  False pastes the resampled restored crop as is.
        parser: a :class:`~vspbfr_core.face.parsing.FaceParser` (``mask_shape="parsing"`` only).
        mask_parts: the face parts the parsing mask pastes (:func:`~vspbfr_core.face.parsing.parse_parts`; None:
            its default set).
        limit: where pixels may change at all, ``[B, H, W]`` (or ``[H, W]`` for every image) in [0, 1] at the
            input size (an occlusion or user mask): every face's mask is multiplied by it (resized bilinearly to
            the output, and exactly 0 wherever its nearest input pixel is 0), so pixels where it is 0 keep the
            original (resized) values bit for bit.

    Returns:
        ``(images [B, C, H', W'], mask [B, H', W'])`` with ``H' = round(H * upscale)``; the mask is the
        pasted area in [0, 1].  Images without faces come back unchanged (resized) with a zero mask.

    Raises:
        InputError: bad arguments (types, ranges, shapes that do not match ``aligned``, NaN / inf inputs).
        InsufficientMemoryError: the work (mostly the upscaled output) needs more memory than the device has,
            checked before anything large is allocated (:func:`vspbfr_core.memory.paste_bytes`), or an
            out-of-memory error happened anyway.
        NonFiniteError: a pasted face came out NaN / inf (never expected from finite inputs; nothing is returned).
    """
    with memory.guard("paste_faces", images.device if isinstance(images, torch.Tensor) else None):
        return _paste_faces(images, restored, aligned, visibility=visibility, mask_shape=mask_shape, feather=feather,
                            color_correction=color_correction, upscale=upscale, keep_detail=keep_detail,
                            parser=parser, mask_parts=mask_parts, limit=limit)


def _paste_faces(images: torch.Tensor, restored: torch.Tensor, aligned: AlignedFaces, *, visibility: float,
                 mask_shape: MaskShape, feather: float, color_correction: ColorCorrection | None, upscale: float,
                 keep_detail: bool, parser: Any = None, mask_parts: Any = None, limit: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    images = check_bchw(images, "paste_faces: images")
    batch, channels, height, width = images.shape
    if not isinstance(aligned, AlignedFaces):
        raise InputError(f"paste_faces: expected AlignedFaces from align_faces, got {type(aligned).__name__}")
    if aligned.num_images and aligned.num_images != batch:
        raise InputError(f"paste_faces: the faces were aligned from a batch of {aligned.num_images} images, "
                         f"but {batch} images were given")
    if aligned.image_size != (0, 0) and tuple(aligned.image_size) != (height, width):
        raise InputError(f"paste_faces: the faces were aligned from {aligned.image_size[0]}x"
                         f"{aligned.image_size[1]} images, but the images are {height}x{width}")
    count = len(aligned)
    if count:
        restored = check_bchw(restored, "paste_faces: restored", channels=(channels,))
        if restored.shape[0] != count or restored.shape[-1] != restored.shape[-2]:
            raise InputError(f"paste_faces: restored must be [{count}, {channels}, R, R] (one square crop per "
                             f"aligned face), got {tuple(restored.shape)}")
    visibility = check_float(visibility, "paste_faces: visibility", minimum=0.0, maximum=1.0)
    _check_mask_args(mask_shape, feather, MASK_SHAPES)
    if mask_shape == "parsing":
        _check_parser(parser, mask_parts)
    limit = check_user_mask(limit, batch, height, width)
    if color_correction is not None and (not isinstance(color_correction, str)
                                         or color_correction not in ("meanstd", "wavelet")):
        raise InputError(f"paste_faces: color_correction {color_correction!r}: use None, 'meanstd' or 'wavelet'")
    upscale = check_float(upscale, "paste_faces: upscale", minimum=0.0, maximum=16.0, min_open=True)
    keep_detail = check_bool(keep_detail, "paste_faces: keep_detail")

    device, dtype = images.device, images.dtype
    out_h, out_w = max(1, round(height * upscale)), max(1, round(width * upscale))
    pasting = count > 0 and visibility != 0.0
    res = int(restored.shape[-1]) if pasting else 0
    if pasting:
        uses_original = color_correction is not None or keep_detail or mask_shape == "parsing"
        if not _all_finite(aligned.affine) or (uses_original and not _all_finite(aligned.crops)):
            raise InputError("paste_faces: the aligned faces contain NaN or infinite values (affine or crops); "
                             "align them again with align_faces")
        # output pixel -> input pixel -> crop pixel (aligned.size) -> restored pixel (res), all pixel centres
        boxes, out_to_res = _face_regions(aligned, res, height, width, out_h, out_w, device)
        areas = [max(0, x1 - x0) * max(0, y1 - y0) for x0, y0, x1, y1 in boxes]
    else:
        areas = []
    need = memory.paste_bytes(batch, channels, height, width, out_h, out_w, dtype, areas, count if pasting else 0,
                              res)
    memory.ensure_available(need, device, f"paste_faces ({batch} image(s) of {width}x{height} -> {out_w}x{out_h}, "
                            f"{count} face(s))")
    if (out_h, out_w) == (height, width):
        out = images.clone()
    else:
        antialias = out_h < height or out_w < width
        resample = torch.float64 if images.dtype == torch.float64 else torch.float32
        out = F.interpolate(images.to(resample), size=(out_h, out_w), mode="bicubic", align_corners=False,
                            antialias=antialias).clamp_(0.0, 1.0).to(images.dtype)
    mask = images.new_zeros(batch, out_h, out_w)
    if not pasting:
        return out, mask

    work = torch.float64 if dtype == torch.float64 else torch.float32   # half-precision grids would be off by pixels
    faces = restored.to(device=device, dtype=work)
    original = None
    if uses_original:
        original = aligned.crops.to(device=device, dtype=work)
        if original.shape[-1] != res:
            original = F.interpolate(original, size=(res, res), mode="bilinear", align_corners=False,
                                     antialias=original.shape[-1] > res)
        if color_correction is not None:
            faces = color_correct(faces, original, color_correction)
    visible = [k for k in range(count) if areas[k] > 0]
    image_index_list = aligned.image_index.tolist()
    f64 = torch.float64

    # square / ellipse: the same mask in every crop, one template sampled with each face's grid; landmarks /
    # parsing: one mask per face
    if mask_shape in PER_FACE_SHAPES:
        templates = _face_templates(mask_shape, faces, original, aligned, res, float(feather), parser, mask_parts,
                                    work, device)
    else:
        template = face_mask(res, mask_shape, float(feather), dtype=work, device=device)       # [R, R]
    out_limit = _output_limit(limit, out_h, out_w, work, device) if limit is not None else None
    warped: dict[int, tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]] = {}
    for group in _group_faces([areas[k] for k in visible]):
        idx = sorted(visible[g] for g in group)
        rh = max(boxes[k][3] - boxes[k][1] for k in idx)
        rw = max(boxes[k][2] - boxes[k][0] for k in idx)
        shift = torch.eye(3, dtype=f64, device=device).repeat(len(idx), 1, 1)
        shift[:, 0, 2] = torch.tensor([boxes[k][0] for k in idx], dtype=f64, device=device)
        shift[:, 1, 2] = torch.tensor([boxes[k][1] for k in idx], dtype=f64, device=device)
        # region normalised -> region pixel -> output pixel -> restored pixel -> restored normalised
        theta = (pixel_to_normalized(res, res, device=device) @ out_to_res[idx] @ shift
                 @ normalized_to_pixel(rh, rw, device=device))[:, :2]
        grid = affine_grid(theta, rh, rw, work)                                             # [G, rh, rw, 2]
        contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
        pick = slice(idx[0], idx[0] + len(idx)) if contiguous else idx
        sampled = F.grid_sample(faces[pick], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        source = templates[pick].unsqueeze(1) if mask_shape in PER_FACE_SHAPES else template.expand(
            len(idx), 1, res, res)
        alpha = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)                                         # [G, 1, rh, rw]
        if keep_detail:
            before = F.grid_sample(original[pick], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            change = (sampled - before).abs().amax(dim=1, keepdim=True)                    # [G, 1, rh, rw]
            change = F.avg_pool2d(change, DETAIL_WINDOW, 1, DETAIL_WINDOW // 2, count_include_pad=False)
            keep = (1.0 - change / DETAIL_CHANGE).clamp_(0.0, 1.0)                         # 1: restorer left it
        for j, k in enumerate(idx):
            x0, y0, x1, y1 = boxes[k]
            crop = (slice(None), slice(0, y1 - y0), slice(0, x1 - x0))
            extra = (before[j][crop], keep[j][crop]) if keep_detail else None
            a = alpha[j][crop]
            if out_limit is not None:
                a = a * out_limit[image_index_list[k], y0:y1, x0:x1]
            warped[k] = (sampled[j][crop], a, extra)

    # composite in detection order (later faces on top); ``base`` is the original the changes apply to
    image_index = image_index_list
    resized = (out_h, out_w) != (height, width)
    base_regions = {}
    if keep_detail:
        for k in visible:
            x0, y0, x1, y1 = boxes[k]
            view = (out if resized else images)[image_index[k], :, y0:y1, x0:x1]
            base_regions[k] = view.clone() if resized else view
    finite: list[torch.Tensor] = []
    for k in visible:
        b = image_index[k]
        x0, y0, x1, y1 = boxes[k]
        face, alpha, extra = warped[k]
        if extra is not None:                          # restored + kept residual of the original
            before, keep = extra
            target = torch.addcmul(face, keep, base_regions[k].to(work) - before)
        else:
            target = face.clone()
        finite.append(torch.isfinite(target).all())       # before the clamp, which would turn inf into 0 or 1
        target.clamp_(0.0, 1.0)
        blend = alpha * float(visibility) if float(visibility) != 1.0 else alpha
        region = out[b, :, y0:y1, x0:x1]
        if region.dtype == work:
            region.lerp_(target, blend)
        else:
            region.copy_(torch.lerp(region.to(work), target, blend))
        m = mask[b, y0:y1, x0:x1]
        a = alpha[0].to(dtype)
        m.add_(a * (1.0 - m))
    if finite and not bool(torch.stack(finite).all()):
        raise NonFiniteError("stage 'paste': a pasted face came out NaN or infinite from finite inputs (no network "
                             "runs here; the alignment of that face is probably degenerate): align the faces again",
                             stage="paste", network="paste-back", source="")
    return out, mask.clamp_(0.0, 1.0)


def _check_parser(parser: Any, parts: Any) -> None:
    from .parsing import FaceParser, parse_parts

    if parser is None:
        raise InputError("mask_shape 'parsing' needs a face-parsing network (parsing_parsenet.pth: get it with "
                         "`vspbfr download --only parsing`, load it with vspbfr_core.face.load_parser); or use "
                         "mask_shape 'landmarks', which needs no weights")
    if not isinstance(parser, FaceParser):
        raise InputError(f"parser: expected a FaceParser from load_parser, got {type(parser).__name__}")
    if parts is not None:
        parse_parts(parts)


def check_user_mask(limit: Any, batch: int, height: int, width: int) -> torch.Tensor | None:
    """The user / occlusion mask as ``[B, H, W]`` (checked: shape, finite, in [0, 1])."""
    if limit is None:
        return None
    if not isinstance(limit, torch.Tensor) or not limit.is_floating_point() and limit.dtype != torch.bool:
        raise InputError(f"paste_faces: mask (limit) must be a float tensor [B, H, W] in [0, 1], got "
                         f"{type(limit).__name__ if not isinstance(limit, torch.Tensor) else limit.dtype}")
    m = limit.float()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3 or tuple(m.shape[1:]) != (height, width) or m.shape[0] not in (1, batch):
        raise InputError(f"paste_faces: the mask is {tuple(limit.shape)} but the images are {batch} x {height}x"
                         f"{width}: give one mask [H, W] for every image or one per image [B, H, W] of the "
                         "images' size")
    if not _all_finite(m):
        raise InputError("paste_faces: the mask contains NaN or infinite values")
    if bool((m < 0).any()) or bool((m > 1).any()):
        raise InputError("paste_faces: mask values must lie in [0, 1]")
    return m.expand(batch, height, width)


def _output_limit(limit: torch.Tensor, out_h: int, out_w: int, dtype: torch.dtype, device: torch.device
                  ) -> torch.Tensor:
    """The input-size mask at the output size: bilinear, and 0 wherever the nearest input pixel is 0."""
    m = limit.to(device=device, dtype=dtype)
    if tuple(m.shape[-2:]) == (out_h, out_w):
        return m
    up = F.interpolate(m.unsqueeze(1), size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
    near = F.interpolate(m.unsqueeze(1), size=(out_h, out_w), mode="nearest")[:, 0]
    return torch.where(near == 0, torch.zeros_like(up), up.clamp_(0.0, 1.0))


def _face_templates(shape: str, faces: torch.Tensor, original: torch.Tensor | None, aligned: AlignedFaces, res: int,
                    feather: float, parser: Any, parts: Any, dtype: torch.dtype, device: torch.device
                    ) -> torch.Tensor:
    """Per-face masks ``[F, R, R]`` in restored-crop space for the ``landmarks`` / ``parsing`` shapes (``original``:
    the aligned crops at R, which parsing reads)."""
    from .masks import crop_landmarks, landmark_masks, parsing_masks

    if shape == "landmarks":
        return landmark_masks(crop_landmarks(aligned, res), res, feather, dtype=dtype, device=device)
    return parsing_masks(parser, faces, original, feather, parts).to(device=device, dtype=dtype)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite (one reduction)."""
    return bool(torch.isfinite(x).all()) if x.numel() else True


def _face_regions(aligned: AlignedFaces, res: int, height: int, width: int, out_h: int, out_w: int,
                  device: torch.device) -> tuple[list[list[int]], torch.Tensor]:
    """Each face's region of the output (bounding box of its crop square, clipped to the image) as
    ``[x0, y0, x1, y1]`` lists, and the output-pixel -> restored-pixel transforms ``[F, 3, 3]`` (float64)."""
    f64 = torch.float64
    up = torch.tensor([[width / out_w, 0.0, 0.5 * width / out_w - 0.5],
                       [0.0, height / out_h, 0.5 * height / out_h - 0.5],
                       [0.0, 0.0, 1.0]], dtype=f64, device=device)
    s = res / aligned.size
    to_res = torch.tensor([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]], dtype=f64,
                          device=device)
    out_to_res = to_res @ _to3x3(aligned.affine.to(device=device, dtype=f64)) @ up           # [F, 3, 3]
    res_to_out = torch.linalg.inv(out_to_res)
    corners = torch.tensor([[-0.5, -0.5, 1.0], [res - 0.5, -0.5, 1.0], [-0.5, res - 0.5, 1.0],
                            [res - 0.5, res - 0.5, 1.0]], dtype=f64, device=device)
    pts = (res_to_out[:, :2] @ corners.T).transpose(1, 2)                                    # [F, 4, 2]
    if not _all_finite(pts):
        raise InputError("paste_faces: an aligned face has a degenerate (non-invertible) alignment transform; "
                         "align the faces again with align_faces")
    lo = torch.floor(pts.min(dim=1).values + 0.5).clamp(min=0)
    hi = torch.ceil(pts.max(dim=1).values + 0.5)
    hi = torch.minimum(hi, torch.tensor([out_w, out_h], dtype=f64, device=device))
    return torch.cat([lo, hi], dim=1).long().tolist(), out_to_res                           # x0, y0, x1, y1

"""Paste-back masks that follow the face: ``landmarks`` (a face shape from the 5 landmarks, no weights) and
``parsing`` (a face-parsing network's face parts), both in crop space, one mask per face.

The two older shapes (``square``, ``ellipse``: one template for every face) live in :mod:`.paste`; all four share
its conventions: ``feather`` is the width of the soft edge in pixels of a 512 crop (0: a hard edge), and every mask
is multiplied by the square mask of the same feather, so it is 0 one crop pixel inside the crop border and never
makes a step there.

``landmarks``
    The face outline of the aligned FFHQ crop, placed and bent by the face's own five landmarks: in the face's frame
    (origin between the eyes, x along the eye line, unit ``s`` = the mean of the eye distance and the eye-to-mouth
    distance) it is a dome of half-width ``OUTLINE_HALF_WIDTH`` at the eye line rising to ``OUTLINE_TOP`` above it
    (forehead) and a half-ellipse down to ``OUTLINE_CHIN`` below it (chin).  A turned head moves the nose off the
    eye/mouth midline; the outline's midline follows (``YAW_SHIFT_EYES`` at the eye line, ``YAW_SHIFT_MOUTH`` at
    the mouth, none at the chin), so the far cheek is not cut and the background beside the near cheek is not
    pasted over.  The numbers were fitted to the jaw and brow points of dlib's 68-point predictor on the twelve
    real aligned crops of the test set (width 2.29 s, sd 0.19; chin 1.76 s below the eyes, sd 0.10; midline shift
    -1.45 and -0.97 times the nose offset), plus a margin of 0.08 s.  Unlike the other shapes, the soft edge is centred on this outline (half
    a feather outside it, half inside), so the face's own contour is restored and the ramp hides in the contour's
    edge; it uses a first-order distance to the outline (``f / |grad f|`` of its implicit form), so its width is the
    same all round.

``parsing``
    See :func:`parsing_masks`: the product of the face-part probability of the restored crop and of the original
    crop (a pixel is pasted only where both see face: a hand, hair or glasses frame in the original stays), blurred
    and moved inside its boundary by the feather.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError
from . import MASK_SHAPES
from .align import face_template

__all__ = ["MASK_SHAPES", "PER_FACE_SHAPES", "landmark_masks", "parsing_masks", "crop_landmarks"]

PER_FACE_SHAPES = ("landmarks", "parsing")     # one mask per face (the others: one template for all)

# the landmark outline, in units of the face scale s (see the module docstring), y pointing down from the eye line
# the fitted contour plus a margin of 0.08 s (bench_faces.py --seams: with feather 50, 97.5 % of the face core is
# restored and 1.3 % of the pasted area lies off the face; without the margin 93.7 % and 0.4 %)
OUTLINE_HALF_WIDTH = 1.23     # half-width at the eye line (the cheeks' contour: 1.15)
OUTLINE_TOP = 1.03            # forehead above the eye line (0.95; the brows are at 0.34)
OUTLINE_CHIN = 1.84           # chin below the eye line (1.76)
YAW_SHIFT_EYES = -1.45        # midline shift at the eye line per unit of nose offset
YAW_SHIFT_MOUTH = -0.97       # the same at the mouth line (y = MOUTH_LINE)
MOUTH_LINE = 1.0              # the mouth corners' midpoint lies about 1 s below the eye line
YAW_LIMIT = 0.5               # nose offsets beyond this (a detector's outlier) are clipped


def _smootherstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def crop_landmarks(aligned: Any, size: int) -> torch.Tensor:
    """The faces' five landmarks in the pixels of a ``size`` crop ``[F, 5, 2]`` (float64): ``aligned.landmarks``
    when the aligner kept them, else the FFHQ template (the face is then assumed to sit exactly on it)."""
    count = len(aligned)
    points = getattr(aligned, "landmarks", None)
    if points is None:
        return face_template(size).expand(count, 5, 2).clone()
    points = points.to(torch.float64).cpu()
    if points.shape != (count, 5, 2):
        raise InputError(f"aligned faces: landmarks must be [{count}, 5, 2], got {tuple(points.shape)}")
    scale = size / aligned.size
    return (points + 0.5) * scale - 0.5 if scale != 1.0 else points


def landmark_masks(landmarks: torch.Tensor, size: int, feather: float, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Face-shaped soft masks ``[F, size, size]`` from each face's five landmarks in crop pixels ``[F, 5, 2]``.

    ``feather`` in pixels of a 512 crop (0: hard edge).  See the module docstring for the shape.
    """
    from .paste import face_mask

    lm = landmarks.to(device=device, dtype=torch.float64)
    count = lm.shape[0]
    if count == 0:
        return torch.zeros(0, size, size, dtype=dtype, device=device)
    eyes = 0.5 * (lm[:, 0] + lm[:, 1])
    mouth = 0.5 * (lm[:, 3] + lm[:, 4])
    across = lm[:, 1] - lm[:, 0]
    eye_dist = across.norm(dim=-1).clamp(min=1e-6)
    u = across / eye_dist[:, None]                                    # x axis: along the eye line
    v = torch.stack([-u[:, 1], u[:, 0]], dim=-1)                      # y axis: down the face
    s = 0.5 * (eye_dist + (mouth - eyes).norm(dim=-1)).clamp(min=1e-6)        # [F] face scale, crop pixels
    local = lambda p: torch.stack([((p - eyes) * u).sum(-1), ((p - eyes) * v).sum(-1)], dim=-1) / s[:, None]
    nose, mouth_l = local(lm[:, 2]), local(mouth)
    yaw = (nose[:, 0] - 0.5 * mouth_l[:, 0]).clamp(-YAW_LIMIT, YAW_LIMIT)      # nose off the eye-mouth midline

    c = torch.arange(size, dtype=torch.float64, device=device)
    px, py = c.view(1, 1, -1), c.view(1, -1, 1)                       # pixel centres
    dx, dy = px - eyes[:, 0, None, None], py - eyes[:, 1, None, None]
    x = (dx * u[:, 0, None, None] + dy * u[:, 1, None, None]) / s[:, None, None]    # [F, S, S] face frame
    y = (dx * v[:, 0, None, None] + dy * v[:, 1, None, None]) / s[:, None, None]
    # the outline's midline c(y): piecewise linear in y, and its slope (for the gradient)
    shift_e, shift_m = (YAW_SHIFT_EYES * yaw)[:, None, None], (YAW_SHIFT_MOUTH * yaw)[:, None, None]
    upper = y <= 0
    lower_mid = (y > 0) & (y <= MOUTH_LINE)
    t_chin = ((y - MOUTH_LINE) / (OUTLINE_CHIN - MOUTH_LINE)).clamp(0.0, 1.0)
    mid = torch.where(upper, shift_e, torch.where(lower_mid, shift_e + (shift_m - shift_e) * (y / MOUTH_LINE),
                                                  shift_m * (1.0 - t_chin)))
    slope = torch.where(upper, torch.zeros_like(y), torch.where(lower_mid, (shift_m - shift_e) / MOUTH_LINE,
                                                                torch.where(t_chin < 1.0, -shift_m / (OUTLINE_CHIN - MOUTH_LINE),
                                                                            torch.zeros_like(y))))
    a = OUTLINE_HALF_WIDTH
    b = torch.where(upper, torch.full_like(y, OUTLINE_TOP), torch.full_like(y, OUTLINE_CHIN))
    X = x - mid
    f = 1.0 - (X / a) ** 2 - (y / b) ** 2                              # > 0 inside the outline
    gx = 2.0 * X / a ** 2
    gy = 2.0 * y / b ** 2 - 2.0 * X * slope / a ** 2
    depth = f / torch.sqrt(gx * gx + gy * gy).clamp(min=1e-3)           # distance inside, in units of s
    depth = depth * s[:, None, None]                                   # crop pixels
    ramp = feather * size / 512.0
    if feather <= 0:
        mask = (depth >= 0).to(torch.float64)
    else:
        mask = _smootherstep((depth + 0.5 * ramp) / ramp)              # centred on the outline
    guard = face_mask(size, "square", feather, dtype=torch.float64, device=device)
    mask = mask * guard
    return torch.where(mask < 1e-6, 0.0, mask).to(dtype)


def _blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    from .paste import _gaussian_blur

    return _gaussian_blur(mask.unsqueeze(1), sigma).squeeze(1)


def parsing_masks(parser: Any, restored: torch.Tensor, original: torch.Tensor | None, feather: float,
                  parts: Sequence[str] | str | None = None) -> torch.Tensor:
    """Soft masks ``[F, R, R]`` of the face parts of restored crops ``[F, C, R, R]`` (and, when given, of the
    original crops, resized to R): the pixels both see as face, made soft inside their boundary by ``feather``
    (pixels of a 512 crop): blurred with sigma = feather / 4, then ``smootherstep(2 b - 1)``, so the mask is 0 on
    and outside the parts' boundary and 1 about half a feather inside it.

    ``parser`` is a :class:`vspbfr_core.face.parsing.FaceParser`; ``parts`` as
    :func:`vspbfr_core.face.parsing.parse_parts` reads them (None: its default set).
    """
    from .paste import face_mask
    from .parsing import DEFAULT_PARTS, parse_parts

    chosen = DEFAULT_PARTS if parts is None else parse_parts(parts)
    size = restored.shape[-1]

    def probability(crops: torch.Tensor) -> torch.Tensor:      # the parser runs on its own device (a GPU, say)
        rgb = crops[:, :3] if crops.shape[1] >= 3 else crops.expand(-1, 3, -1, -1)
        return parser.part_probability(rgb.float(), chosen).to(torch.float64)

    face = probability(restored)
    if original is not None:
        face = face * probability(original)
    if feather > 0:
        blurred = _blur(face, max(feather * size / 512.0 / 4.0, 0.5))
        mask = _smootherstep(2.0 * blurred - 1.0)
    else:
        mask = (face >= 0.5).to(torch.float64)
    guard = face_mask(size, "square", feather, dtype=torch.float64, device=mask.device)
    mask = mask * guard
    return torch.where(mask < 1e-6, 0.0, mask).to(restored.dtype)

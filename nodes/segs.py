"""Impact-Pack SEGS in and out of the pack's faces (``VSPBFR_FACES``): the logic of nodes/segs_nodes.py.

SEGS is the face / object list the Impact-Pack nodes pass around (FaceDetailer, the SEGS filters, the SAM, YOLO
and mediapipe detectors): a pair ``((height, width), [SEG, ...])`` describing ONE image, each SEG a record with
the fields of :data:`SEG_FIELDS`, read by name (or position) by Impact's nodes.  What those nodes put there, and so
what is accepted here:

* ``crop_region``: ``[x1, y1, x2, y2]`` python ints, end exclusive (the bbox enlarged by ``crop_factor``, default
  3.0 on Impact's detector nodes), inside the image.
* ``bbox``: ``[x1, y1, x2, y2]`` in image pixels: floats (a numpy array straight from a YOLO ``xyxy``) or ints
  (the mask-based detectors), inside the image.
* ``cropped_mask``: the object's mask cut to ``crop_region``: a numpy float32 ``[h, w]`` in [0, 1] (a box-only
  detector's mask is the bbox rectangle), sometimes a torch tensor, ``[1, h, w]`` from the batch-mask nodes, or
  None here.
* ``cropped_image``: IMAGE ``[1, h, w, 3]`` cut to ``crop_region`` (None from some detectors; not read here: the
  IMAGE input is what is cut).
* ``confidence``: the detector score (a float, or a one-element numpy array); ``label``: a string;
  ``control_net_wrapper``: None unless a ControlNet was applied.

Impact's detector nodes refuse image batches (a SEGS has one image size and no image index); so do these.

:func:`faces_to_segs` makes one SEG per face (crop region = the face box enlarged around its centre and clipped to
the image, mask = the face's own paste mask).  :func:`segs_to_faces` finds, in each SEG's crop region, the
RetinaFace face that matches the SEG's bbox and maps it back to the image; the SEG masks become ``FaceSet.limit``,
so the paste never changes pixels outside them.

Re-detection on a crop reproduces the whole-image detection (to the detector's float rounding, well below a pixel
on the real photos): the crop is cut from the image resized exactly as :func:`vspbfr_core.face.detect_faces`
resizes it (long side at most 640), its corner on the network's coarsest stride (32 px of that resized image) and
its size a multiple of that stride, so every anchor and every feature of the crop sits where it sits in the whole
image; only the context beyond the crop's border differs, so the crop spans at least :data:`CONTEXT` bbox sizes
(on the real test photos: boxes and landmarks within 0.01 px of the whole-image detection at 8 sizes; 0.9 px at 4,
up to 8 px for a plain crop detected at its own scale).  A face too small at the whole image's scale is looked for
again in the crop at its own resolution.
"""
from __future__ import annotations

import logging
import math
from collections import namedtuple
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..vspbfr_core.checks import check_choice, check_float, check_int, describe_value
from ..vspbfr_core.errors import InputError
from ..vspbfr_core.image import from_host
from ..vspbfr_core.progress import Progress
from . import comfy_host as host
from . import ops
from .handles import FaceSet

log = logging.getLogger(__name__)

SEG_FIELDS = ("cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label", "control_net_wrapper")
# the same field names in the same order as Impact-Pack's SEG, so its nodes read ours by name or by index
SEG = namedtuple("SEG", SEG_FIELDS, defaults=[None])
NEEDED_FIELDS = ("cropped_mask", "crop_region", "bbox")        # what segs_to_faces reads of a SEG

DEFAULT_CROP_FACTOR = 3.0      # Impact's detector nodes' crop_factor default
SEGS_THRESHOLD = 0.5           # SEGS to Faces: the SEG already says a face is there (see the node's tooltip)
MIN_IOU = 0.3                  # a detected face matches a SEG when its box overlaps the SEG bbox at least this much,
MIN_INSIDE = 0.5               # ... or its centre is inside the bbox with at least this fraction of its box
CONTEXT = 8.0                  # the detection window spans at least this many bbox sizes around the bbox centre
STRIDE = 32                    # RetinaFace's coarsest feature stride: crop corners sit on it (see the docstring)
DETECT_SIZE = 640              # vspbfr_core.face.detect_faces' default long side
LABEL = "face"


# -- Faces -> SEGS -----------------------------------------------------------------------------------------------------

def crop_region(box: Any, crop_factor: float, height: int, width: int) -> list[int]:
    """``box`` (x1, y1, x2, y2) enlarged ``crop_factor`` times around its centre, to whole pixels covering it,
    clipped to the image -> ``[x1, y1, x2, y2]`` ints (end exclusive)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) * crop_factor / 2, (y2 - y1) * crop_factor / 2
    return [max(0, math.floor(cx - hw)), max(0, math.floor(cy - hh)),
            min(width, math.ceil(cx + hw)), min(height, math.ceil(cy + hh))]


def _int_box(box: Any, height: int, width: int) -> list[int]:
    """A float box as whole pixels covering it, clipped to the image (ints, as Impact's mask detectors give)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2))]


def _single_aligned(aligned: Any, k: int) -> Any:
    """Face ``k`` of ``aligned`` as the only face of a batch of one image."""
    return replace(aligned.select(torch.tensor([k])), image_index=torch.zeros(1, dtype=torch.long), num_images=1)


def face_masks(faces: FaceSet, height: int, width: int, *, mask_shape: str = ops.DEFAULT_MASK_SHAPE,
               feather: float = 50.0, mask_parts: str | None = None, parser: Any = None) -> torch.Tensor:
    """Each face's own paste mask in image space ``[F, H, W]`` float32 on the CPU: what ``paste_faces`` blends
    that face with (``mask_shape``, ``feather`` in pixels of a 512 crop), the face pasted alone.  ``parsing``
    parses the face's original crop with ``parser`` (a FaceParser; ``mask_parts`` as the paste node's)."""
    from ..vspbfr_core.face import paste_faces

    if not isinstance(faces, FaceSet):
        raise InputError(f"faces: expected the VSPBFR_FACES output of the VSPBFR Detect Faces node, got "
                         f"{describe_value(faces)}")
    aligned = faces.aligned
    if aligned is None:
        raise InputError("faces: these faces carry no alignment; connect the faces output of a detect node")
    if tuple(aligned.image_size) != (height, width):
        raise InputError(f"faces: the faces were found in {aligned.image_size[1]}x{aligned.image_size[0]} images, "
                         f"not {width}x{height}")
    channels = aligned.crops.shape[1]
    zero = torch.zeros(1, channels, height, width)
    out = torch.zeros(len(aligned), height, width)
    extra: dict[str, Any] = {}
    if mask_shape == "parsing":
        extra = dict(parser=parser, mask_parts=mask_parts)
    for k in range(len(aligned)):
        one = _single_aligned(aligned, k)
        # the mask does not depend on the pasted pixels, except parsing's, which reads the face's own crop
        _, mask = paste_faces(zero, one.crops.float(), one, mask_shape=mask_shape, feather=feather,
                              keep_detail=False, **extra)
        out[k] = mask[0]
    return out


def _one_image(image: Any, what: str) -> torch.Tensor:
    rgb, _ = from_host(image)                                   # IMAGE checks (type, layout, range, NaN)
    if rgb.shape[0] != 1:
        raise InputError(f"{what}: SEGS describe one image, but the IMAGE batch holds {rgb.shape[0]}; run it once "
                         "per image (e.g. Impact-Pack's 'Image Batch to Image List' in front makes ComfyUI run this "
                         "node for each image), as Impact's own detectors require")
    return rgb


def faces_to_segs(image: torch.Tensor, faces: FaceSet, *, crop_factor: float = DEFAULT_CROP_FACTOR,
                  mask_shape: str = ops.DEFAULT_MASK_SHAPE, feather: float = 50.0, mask_parts: str | None = None,
                  parser: str = "parsenet") -> tuple[tuple[int, int], list]:
    """The faces of a one-image IMAGE ``[1, H, W, C]`` as Impact SEGS ``((H, W), [SEG, ...])``, one SEG per face in
    the faces' order: crop region, the detection box as ints, the image and the face's paste mask cut to the crop
    region, the detector score, label ``face``.  ``mask_shape`` parsing: the face-parsing network ``parser`` on
    each face's crop, ``mask_parts`` the parts kept (None: all)."""
    crop_factor = check_float(crop_factor, "crop_factor", minimum=1.0, maximum=100.0)
    check_choice(mask_shape, "mask_shape", ops.MASK_SHAPES)
    check_choice(parser, "parser", ops.PARSERS)
    if mask_parts is not None:
        from ..vspbfr_core.face.parsing import parse_parts
        parse_parts(mask_parts)
    feather = check_float(feather, "feather", minimum=0.0, maximum=230.0)
    if not isinstance(faces, FaceSet):
        raise InputError(f"faces: expected the VSPBFR_FACES output of the VSPBFR Detect Faces node, got "
                         f"{describe_value(faces)}")
    rgb = _one_image(image, "VSPBFR Faces to SEGS")
    height, width = rgb.shape[2:]
    dets = faces.detections
    if len(dets) and (dets.num_images != 1 or tuple(dets.image_size) != (height, width)):
        raise InputError(f"faces: found in {dets.num_images} image(s) of {dets.image_size[1]}x{dets.image_size[0]}, "
                         f"but the image is one of {width}x{height}; connect the image these faces were found in")
    if len(dets) == 0:
        return (height, width), []
    if faces.aligned is None:                   # e.g. a temporal window's faces: align them here
        from .ops import _align_crops
        faces = replace(faces, aligned=_align_crops(rgb.float().cpu(), dets, 512))
    loaded = ops._active_parser(ops.get_parser(parser)) if mask_shape == "parsing" else None
    masks = face_masks(faces, height, width, mask_shape=mask_shape, feather=feather, mask_parts=mask_parts,
                       parser=loaded)
    segs = []
    for k in range(len(dets)):
        x1, y1, x2, y2 = region = crop_region(dets.boxes[k].tolist(), crop_factor, height, width)
        segs.append(SEG(rgb[:, :, y1:y2, x1:x2].permute(0, 2, 3, 1).contiguous(),      # IMAGE [1, h, w, 3]
                        masks[k, y1:y2, x1:x2].numpy().copy(), float(dets.scores[k]),
                        region, _int_box(dets.boxes[k].tolist(), height, width), LABEL, None))
    return (height, width), segs


# -- SEGS -> Faces -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckedSeg:
    """One SEG, checked: its index in the SEGS, crop region (ints), bbox (floats) and mask (CPU float, crop size)."""

    index: int
    region: tuple[int, int, int, int]
    bbox: tuple[float, float, float, float]
    mask: torch.Tensor | None


def _numbers(value: Any, what: str) -> list[float]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().flatten().tolist()
    elif isinstance(value, np.ndarray):
        value = value.flatten().tolist()
    try:
        numbers = [float(v) for v in value] if not isinstance(value, (str, bytes)) else None
    except (TypeError, ValueError):
        numbers = None
    if numbers is None or len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise InputError(f"{what}: expected 4 numbers [x1, y1, x2, y2], got {describe_value(value)}")
    return numbers


def _box(value: Any, what: str, height: int, width: int) -> list[float]:
    x1, y1, x2, y2 = box = _numbers(value, what)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{what} {box} is empty (x2 <= x1 or y2 <= y1)")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InputError(f"{what} {box} reaches outside the {width}x{height} image")
    return box


def _mask(value: Any, what: str, h: int, w: int) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.dtype == np.bool_:
            value = value.astype(np.float32)
        if not np.issubdtype(value.dtype, np.number):
            raise InputError(f"{what}: expected a numeric mask, got a numpy array of {value.dtype}")
        mask = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    elif isinstance(value, torch.Tensor):
        mask = value.detach().cpu().float()
    else:
        raise InputError(f"{what}: expected a numpy array or a torch tensor [h, w], got {describe_value(value)}")
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2:
        raise InputError(f"{what}: expected a 2-D mask [h, w] (or [1, h, w]), got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != (h, w):
        raise InputError(f"{what}: the mask is {mask.shape[1]}x{mask.shape[0]} (w x h) but the crop region is "
                         f"{w}x{h}; the mask must cover the crop region exactly")
    if not bool(torch.isfinite(mask).all()):
        raise InputError(f"{what}: the mask contains NaN or infinite values")
    return mask.clamp(0.0, 1.0)


def check_segs(segs: Any, height: int, width: int) -> list[CheckedSeg]:
    """Impact SEGS ``((H, W), [SEG, ...])`` of an ``height x width`` image -> the checked SEGs; an InputError
    naming the SEG (by its index) for anything that cannot be used."""
    if not isinstance(segs, (tuple, list)) or len(segs) != 2 or not isinstance(segs[1], (tuple, list)):
        raise InputError(f"segs: expected SEGS, a pair ((height, width), [SEG, ...]) as Impact-Pack's detectors "
                         f"output, got {describe_value(segs)}")
    shape = segs[0]
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape)
    if not ok:
        raise InputError(f"segs: the SEGS shape must be two positive ints (height, width), got "
                         f"{describe_value(shape)}")
    if (int(shape[0]), int(shape[1])) != (height, width):
        raise InputError(f"segs: the SEGS describe a {int(shape[1])}x{int(shape[0])} image but the image is "
                         f"{width}x{height}; connect the image the SEGS were detected in")
    checked = []
    for i, seg in enumerate(segs[1]):
        what = f"segs: SEG {i}"
        missing = [name for name in NEEDED_FIELDS if not hasattr(seg, name)]
        if missing:
            raise InputError(f"{what} has no {', '.join(missing)} (expected an Impact-Pack SEG with the fields "
                             f"{', '.join(SEG_FIELDS)}), got {describe_value(seg)}")
        region = _box(seg.crop_region, f"{what}: crop_region", height, width)
        if any(abs(v - round(v)) > 1e-6 for v in region):
            raise InputError(f"{what}: crop_region {region} must be whole pixels")
        x1, y1, x2, y2 = (int(round(v)) for v in region)
        bbox = _box(seg.bbox, f"{what}: bbox", height, width)
        mask = _mask(seg.cropped_mask, f"{what}: cropped_mask", y2 - y1, x2 - x1)
        checked.append(CheckedSeg(i, (x1, y1, x2, y2), tuple(bbox), mask))
    return checked


def segs_limit(checked: list[CheckedSeg], height: int, width: int) -> torch.Tensor:
    """The union (max) of the SEG masks placed at their crop regions ``[1, H, W]`` (zero elsewhere); a SEG
    without a mask counts as its bbox rectangle."""
    limit = torch.zeros(1, height, width)
    for seg in checked:
        if seg.mask is None:
            x1, y1, x2, y2 = _int_box(seg.bbox, height, width)
            limit[0, y1:y2, x1:x2] = 1.0
        else:
            x1, y1, x2, y2 = seg.region
            torch.maximum(limit[0, y1:y2, x1:x2], seg.mask, out=limit[0, y1:y2, x1:x2])
    return limit


def _iou(boxes: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of ``boxes`` [N, 4] with ``box`` [4], and the fraction of each of ``boxes`` inside ``box``."""
    lo = torch.maximum(boxes[:, :2], box[:2])
    hi = torch.minimum(boxes[:, 2:], box[2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    other = (box[2:] - box[:2]).clamp(min=0).prod()
    return inter / (area + other - inter).clamp(min=1e-9), inter / area.clamp(min=1e-9)


def best_match(boxes: torch.Tensor, bbox: Any) -> int | None:
    """The detected box (``boxes`` [N, 4], image pixels) that matches a SEG ``bbox``: the highest IoU among those
    overlapping it by at least :data:`MIN_IOU`, or whose centre is inside it with at least :data:`MIN_INSIDE` of
    their box; None when none does (a neighbour's face at the edge of the crop is not taken)."""
    if boxes.shape[0] == 0:
        return None
    box = torch.tensor([float(v) for v in bbox], dtype=torch.float64)
    b = boxes.to(torch.float64)
    iou, inside = _iou(b, box)
    centre = (b[:, :2] + b[:, 2:]) / 2
    centred = (centre >= box[:2]).all(dim=1) & (centre <= box[2:]).all(dim=1)
    ok = (iou >= MIN_IOU) | (centred & (inside >= MIN_INSIDE))
    if not bool(ok.any()):
        return None
    return int(torch.argmax(torch.where(ok, iou, torch.full_like(iou, -1.0))))


def _window(seg: CheckedSeg, height: int, width: int) -> tuple[float, float, float, float]:
    """Where to look for the SEG's face, in image pixels: its crop region, widened to :data:`CONTEXT` bbox sizes
    around the bbox centre when it is tighter (the context RetinaFace's features see in the whole image), clipped
    to the image."""
    bx1, by1, bx2, by2 = seg.bbox
    cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
    hw, hh = (bx2 - bx1) * CONTEXT / 2, (by2 - by1) * CONTEXT / 2
    x1, y1, x2, y2 = seg.region
    return (max(0.0, min(x1, cx - hw)), max(0.0, min(y1, cy - hh)),
            min(float(width), max(x2, cx + hw)), min(float(height), max(y2, cy + hh)))


def _aligned_span(lo: float, hi: float, scale: float, limit: int) -> tuple[int, int]:
    """``[lo, hi)`` (image pixels) in the resized image (``scale`` image pixels per resized pixel, ``limit``
    resized pixels), widened to the stride grid (start and length multiples of :data:`STRIDE`), clipped."""
    a = int(math.floor(lo / scale / STRIDE)) * STRIDE
    b = int(math.ceil(hi / scale / STRIDE)) * STRIDE
    return max(0, a), min(limit, max(b, a + STRIDE))


@torch.no_grad()
def redetect(net: Any, rgb: torch.Tensor, small: torch.Tensor, seg: CheckedSeg, threshold: float) -> Any:
    """The RetinaFace face in ``seg``'s crop region of ``rgb`` ``[1, 3, H, W]`` that matches its bbox, in image
    pixels (a one-face Detections), or None.  ``small`` is ``rgb`` resized as ``detect_faces`` resizes it."""
    from ..vspbfr_core.face import detect_faces

    height, width = rgb.shape[2:]
    h, w = small.shape[2:]
    sx, sy = width / w, height / h
    x1, y1, x2, y2 = _window(seg, height, width)
    ax, bx = _aligned_span(x1, x2, sx, w)
    ay, by = _aligned_span(y1, y2, sy, h)
    # 1. at the whole-image detection's scale, on its stride grid: the face the detect node would find here
    dets = detect_faces(net, small[:, :, ay:by, ax:bx].permute(0, 2, 3, 1), threshold=threshold, detect_size=0)
    shift = torch.tensor([ax, ay], dtype=torch.float32)
    scale = torch.tensor([sx, sy], dtype=torch.float32)
    boxes = ((dets.boxes.view(-1, 2, 2) + shift) * scale).view(-1, 4)
    points = (dets.landmarks + shift) * scale
    k = best_match(boxes, seg.bbox)
    if k is None and (sx > 1 or sy > 1):
        # 2. a face too small at that scale: the crop at its own resolution (long side at most DETECT_SIZE)
        px1, py1, px2, py2 = int(math.floor(x1)), int(math.floor(y1)), int(math.ceil(x2)), int(math.ceil(y2))
        dets = detect_faces(net, rgb[:, :, py1:py2, px1:px2].permute(0, 2, 3, 1), threshold=threshold,
                            detect_size=DETECT_SIZE)
        shift = torch.tensor([px1, py1], dtype=torch.float32)
        boxes = (dets.boxes.view(-1, 2, 2) + shift).view(-1, 4)
        points = dets.landmarks + shift
        k = best_match(boxes, seg.bbox)
    if k is None:
        return None
    return boxes[k], points[k], dets.scores[k]


def _resized(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb`` resized as ``detect_faces`` resizes an image for the network (long side at most 640)."""
    from ..vspbfr_core.face.detect import _detection_size

    height, width = rgb.shape[2:]
    h, w = _detection_size(height, width, DETECT_SIZE)
    if (h, w) == (height, width):
        return rgb
    return F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def segs_to_faces(image: torch.Tensor, segs: Any, detector: str, *, threshold: float = SEGS_THRESHOLD,
                  size: int = 512, callback: Any = None) -> tuple[FaceSet, int]:
    """The faces of Impact SEGS: for each SEG the RetinaFace face in its crop region that matches its bbox ->
    (FaceSet of image 0, ordered left to right, aligned at ``size``, its ``limit`` the union of the kept SEGs'
    masks; the number of SEGs dropped because no face matched)."""
    from ..vspbfr_core.face import Detections
    from .ops import DETECTORS, _align_crops, get_detector, placed

    check_choice(detector, "facedetection", DETECTORS)
    threshold = check_float(threshold, "threshold", minimum=0.0, maximum=1.0)
    size = check_int(size, "face_size", minimum=8, maximum=4096)
    rgb = _one_image(image, "VSPBFR SEGS to Faces")
    height, width = rgb.shape[2:]
    checked = check_segs(segs, height, width)
    loaded = get_detector(detector)
    cpu = rgb.float().cpu()
    found: list[tuple[CheckedSeg, Any]] = []
    if checked:
        device = placed(loaded.net, [loaded.patcher], host.memory_estimate(1, DETECT_SIZE, torch.float32))
        on = rgb.to(device=device, dtype=torch.float32)
        small = _resized(on)
        progress = Progress(len(checked), callback)
        for seg in checked:
            hit = redetect(loaded.net, on, small, seg, threshold)
            if hit is not None:
                found.append((seg, hit))
            progress.step("detect")
    else:
        log.warning("VSPBFR SEGS to Faces: the SEGS hold no SEG (the detector found nothing); the image passes "
                    "through unchanged")
    dropped = len(checked) - len(found)
    if dropped:
        log.warning("VSPBFR SEGS to Faces: no face found in %d of %d SEG(s) (SEG %s; detector %s, threshold %g); "
                    "they are left out", dropped, len(checked),
                    ", ".join(str(s.index) for s in checked if all(s is not f[0] for f in found)), loaded.name,
                    threshold)
    order = sorted(range(len(found)), key=lambda j: float(found[j][1][0][0] + found[j][1][0][2]))   # left to right
    found = [found[j] for j in order]
    count = len(found)
    if count:
        dets = Detections(torch.zeros(count, dtype=torch.long), torch.stack([f[1][0] for f in found]).float().cpu(),
                          torch.stack([f[1][1] for f in found]).float().cpu(),
                          torch.stack([f[1][2] for f in found]).float().cpu(), torch.arange(count), 1, (height, width))
    else:
        dets = Detections.empty(1, (height, width))
    faces = FaceSet(dets, _align_crops(cpu, dets, size), loaded.name, keep=loaded,
                    limit=segs_limit([f[0] for f in found], height, width))
    return faces, dropped

"""Face detection for an IMAGE batch: loading the RetinaFace weights, detection, selection, ordering.

Pipeline step 2 (style guide section 6): ``Detections`` per image, flattened into one face batch of
size F with an ``image_index`` map.  Steps of :func:`detect_faces`:

1. IMAGE ``[B, H, W, C]`` (C = 1, 3 or 4) -> RGB ``[B, 3, H, W]`` through :mod:`vspbfr_core.image`.
2. Resize to a copy whose long side is at most ``detect_size`` (antialiased, float, on the detector's
   device).  Never upscaled.  Coordinates are mapped back with the exact per-axis factors ``W / w`` and
   ``H / h`` (``x * W / w``, the mapping facexlib applies after its own resize; which half-pixel
   convention the network's outputs follow is not documented, and on the real photos the difference
   is below the detector's own jitter).
3. One network pass per chunk of images, score threshold, box / landmark decoding of the survivors,
   per-image non-maximum suppression (IoU 0.4) in one ``batched_nms`` call (torchvision's when it is
   installed, as in every ComfyUI / A1111 install; a plain-torch equivalent otherwise).
4. Per image: drop faces whose box short side is below ``min_size``; order the rest (``order``); the
   position in that ordered list is the face's *index* (what ``selection="0,2"`` and the ``faces``
   command refer to); apply ``selection``; then ``max_faces`` keeps the largest faces of the selection,
   still in order.

Weights are never downloaded implicitly: :func:`load_detector` only reads files the caller's folders
hold; fetching them is the explicit job of :mod:`vspbfr_core.download` (``vspbfr download``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..checks import check_float, check_int
from ..errors import CheckpointError, InputError, ModelNotFoundError, NonFiniteError
from ..image import from_host
from .retinaface import MOBILENET_025, RESNET50, RetinaFaceConfig, RetinaFaceDetector, decode_boxes, decode_landmarks

__all__ = [
    "DETECTOR_FILES", "DETECTOR_URLS", "DETECTOR_ALIASES", "DEFAULT_THRESHOLD", "NMS_IOU", "Detections",
    "find_detector_file", "canonical_detector_name", "load_detector", "load_detector_file", "detect_faces",
    "parse_selection", "batched_nms", "nms_reference",
]

log = logging.getLogger(__name__)

DETECTOR_FILES: dict[str, str] = {
    "retinaface_resnet50": "detection_Resnet50_Final.pth",
    "retinaface_mobile0.25": "detection_mobilenet0.25_Final.pth",
}
DETECTOR_CONFIGS: dict[str, RetinaFaceConfig] = {
    "retinaface_resnet50": RESNET50,
    "retinaface_mobile0.25": MOBILENET_025,
}
_RELEASE = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
DETECTOR_URLS: dict[str, str] = {name: _RELEASE + file for name, file in DETECTOR_FILES.items()}
DETECTOR_ALIASES: dict[str, str] = {      # the short names of ``vspbfr download --detector``
    "resnet50": "retinaface_resnet50",
    "mobile0.25": "retinaface_mobile0.25",
}

DEFAULT_THRESHOLD = 0.97     # FaceRestoreHelper's detection threshold (GFPGAN / CodeFormer behaviour)
NMS_IOU = 0.4                # RetinaFace's suppression overlap
DETECT_PIXELS = {"cpu": 640 * 640, "other": 16 * 640 * 640}   # input pixels per network pass: CPUs run
                                                                # fastest on cache-sized chunks, GPUs on big ones

Order = Literal["left-right", "top-bottom", "area", "score"]
ORDERS: tuple[str, ...] = ("left-right", "top-bottom", "area", "score")

ModelDirs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

#----------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Detections:
    """Faces found in an image batch, flattened; ordered by image index, then by the chosen order.

    All tensors live on the CPU unless moved with :meth:`to`.  Coordinates are input-image pixels
    (float32, x to the right, y down), the numbers RetinaFace reports (facexlib gives the same); the
    alignment reads integer coordinates as pixel centres, as OpenCV and FaceRestoreHelper do.
    """

    image_index: torch.Tensor    # [F] long: which image of the batch each face belongs to
    boxes: torch.Tensor          # [F, 4] float32: x1, y1, x2, y2
    landmarks: torch.Tensor      # [F, 5, 2] float32: (x, y) of left eye, right eye, nose, left and right mouth corner
    scores: torch.Tensor         # [F] float32: face probability
    order_index: torch.Tensor    # [F] long: position of the face in its image's ordered candidate list
    num_images: int = 0          # B, the batch the faces were found in (also when F == 0)
    image_size: tuple[int, int] = (0, 0)   # (H, W) of the input images

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """The detections of consecutive image batches as one batch (image indices offset accordingly)."""
        if not parts:
            raise ValueError("no detections to concatenate")
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + p.num_images)
        return cls(torch.cat([p.image_index + off for p, off in zip(parts, offsets)]),
                   torch.cat([p.boxes for p in parts]), torch.cat([p.landmarks for p in parts]),
                   torch.cat([p.scores for p in parts]), torch.cat([p.order_index for p in parts]),
                   offsets[-1] + parts[-1].num_images, parts[0].image_size)

    @property
    def sizes(self) -> torch.Tensor:
        """[F] face size in pixels: the short side of the box (what ``min_size`` compares to)."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return wh.min(dim=1).values

    @property
    def centers(self) -> torch.Tensor:
        """[F, 2] box centres (x, y)."""
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2

    def counts(self) -> list[int]:
        """Number of faces of each image of the batch."""
        return torch.bincount(self.image_index.cpu(), minlength=self.num_images).tolist()

    def index(self, keep: torch.Tensor) -> Detections:
        """The faces selected by a boolean mask or index tensor over F, keeping the batch metadata."""
        keep = keep.to(self.image_index.device)
        return Detections(self.image_index[keep], self.boxes[keep], self.landmarks[keep], self.scores[keep],
                          self.order_index[keep], self.num_images, self.image_size)

    def for_image(self, i: int) -> Detections:
        """The faces of image ``i`` (``image_index`` keeps the value ``i``)."""
        if not 0 <= i < max(self.num_images, 1):
            raise InputError(f"for_image: image index {i} is outside the batch of {self.num_images}")
        return self.index(self.image_index == i)

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.image_index.to(device), self.boxes.to(device), self.landmarks.to(device),
                          self.scores.to(device), self.order_index.to(device), self.num_images, self.image_size)

    def to_json(self, decimals: int = 2) -> list[dict[str, Any]]:
        """One JSON-ready dict per face (stable keys: image, index, box, landmarks, score, size)."""
        out = []
        sizes = self.sizes.tolist()
        for k in range(len(self)):
            out.append({
                "image": int(self.image_index[k]),
                "index": int(self.order_index[k]),
                "box": [round(float(v), decimals) for v in self.boxes[k].tolist()],
                "landmarks": [[round(float(x), decimals), round(float(y), decimals)]
                              for x, y in self.landmarks[k].tolist()],
                "score": round(float(self.scores[k]), 4),
                "size": round(float(sizes[k]), decimals),
            })
        return out

    @staticmethod
    def empty(num_images: int = 0, image_size: tuple[int, int] = (0, 0)) -> Detections:
        return Detections(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0, 5, 2),
                          torch.zeros(0), torch.zeros(0, dtype=torch.long), num_images, image_size)


#----------------------------------------------------------------------------
# Model files


def _dir_list(model_dir: ModelDirs) -> list[Path]:
    if isinstance(model_dir, (str, os.PathLike)):
        return [Path(model_dir)]
    return [Path(d) for d in model_dir]


def canonical_detector_name(name: str) -> str:
    """facexlib's detector name for ``name`` (also accepts ``resnet50`` / ``mobile0.25``)."""
    name = DETECTOR_ALIASES.get(name, name)
    if name not in DETECTOR_FILES:
        raise InputError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_FILES)} "
                         f"(or {', '.join(DETECTOR_ALIASES)})")
    return name


def find_detector_file(name: str, model_dir: ModelDirs) -> Path:
    """The weight file of detector ``name`` in the first of ``model_dir`` that holds it.

    A ``.safetensors`` file with the same stem is preferred over the ``.pth`` in the same folder.
    Raises :class:`ModelNotFoundError` naming the file, the folders searched and where to get it.
    """
    name = canonical_detector_name(name)
    file = DETECTOR_FILES[name]
    dirs = _dir_list(model_dir)
    for d in dirs:
        for candidate in (d / (Path(file).stem + ".safetensors"), d / file):
            if candidate.is_file():
                return candidate
    from ..paths import download_command

    searched = ", ".join(str(d) for d in dirs) or "(no folder given)"
    command = download_command(dirs[0] if dirs else "FOLDER", name, only_detector=True)
    raise ModelNotFoundError(
        f"face detector weights {file} not found in {searched}. Download {DETECTOR_URLS[name]} "
        f"(facexlib release v0.1.0) into one of those folders, or run `{command}`, which fetches and checks it. "
        "Nothing is downloaded automatically.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a detector file, read like the VSPBFR networks (:func:`vspbfr_core.weights_file.read_weights_file`:
    no code ever runs, damaged files are clear errors, deflated zips and non-UTF-8 names load)."""
    from ..weights_file import read_weights_file, tensor_dict

    obj, _ = read_weights_file(path)
    return tensor_dict(obj, path, "a RetinaFace state dict")


def load_detector(name: str, model_dir: ModelDirs, device: torch.device | str = "cpu") -> RetinaFaceDetector:
    """Build detector ``name`` and load its released weights strictly; eval mode, no gradients.

    Args:
        name: ``"retinaface_resnet50"`` or ``"retinaface_mobile0.25"`` (keys of ``DETECTOR_FILES``; the
            short names ``"resnet50"`` / ``"mobile0.25"`` are accepted too).
        model_dir: a folder, or folders searched in order, holding ``DETECTOR_FILES[name]``.
        device: where the network lives (it always runs in float32).
    """
    return load_detector_file(name, find_detector_file(name, model_dir), device)


def load_detector_file(name: str, path: str | bytes | os.PathLike[str], device: torch.device | str = "cpu"
                       ) -> RetinaFaceDetector:
    """Like :func:`load_detector`, for one explicit file.

    Strict: the keys and shapes of ``name``'s network, floating-point tensors where it has floating-point ones
    (integers for the BatchNorm counters), no NaN / Inf value and no negative BatchNorm variance
    (:func:`vspbfr_core.weights_file.check_tensors`). Each refusal is a :class:`CheckpointError` naming the file
    and the tensor, raised here rather than turning into "0 faces" later.
    """
    from ..weights_file import as_path, check_tensors, shown

    name = canonical_detector_name(name)
    path = as_path(path)
    sd = _read_state_dict(path)
    with torch.device("meta"):
        net = RetinaFaceDetector(DETECTOR_CONFIGS[name], name)
    expected = set(net.state_dict())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        other = [n for n, cfg in DETECTOR_CONFIGS.items() if n != name]
        raise CheckpointError(
            f"{shown(path)}: not the weights of {name}: {len(missing)} missing keys {missing[:4]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:4]}. Is it the file of {other[0]}?")
    shapes = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in net.state_dict().items() if sd[k].shape != v.shape]
    if shapes:
        raise CheckpointError(f"{shown(path)}: tensor shapes do not fit {name}: {shapes[:3]} (file, network)")
    net.load_state_dict(check_tensors(sd, net.state_dict(), path, name), strict=True, assign=True)
    net.mean_bgr = torch.tensor(net.config.mean_bgr).view(1, 3, 1, 1)
    left = [k for k, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{shown(path)}: tensors left uninitialised after loading: {left[:4]}")
    log.debug("loaded %s from %s", name, shown(path))
    return net.eval().requires_grad_(False).to(device)


#----------------------------------------------------------------------------
# Detection


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy per-group non-maximum suppression in plain torch (same rule as ``torchvision.ops.nms``:
    a box is dropped when its IoU with a kept, higher-scoring box of its group exceeds ``iou``).

    Returns the kept indices by decreasing score.  Used when torchvision is not installed.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, groups = boxes[order].double(), groups[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if not bool(alive[i]):
            continue
        keep.append(i)
        rest = alive.clone()
        rest[: i + 1] = False
        rest &= groups == groups[i]
        idx = torch.nonzero(rest, as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        lt = torch.maximum(boxes[idx, :2], boxes[i, :2])
        rb = torch.minimum(boxes[idx, 2:], boxes[i, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        overlap = inter / (areas[idx] + areas[i] - inter)
        alive[idx[overlap > iou]] = False
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` when torchvision is installed, else :func:`nms_reference`."""
    try:
        from torchvision.ops import batched_nms as tv_batched_nms
    except ImportError:
        return nms_reference(boxes, scores, groups, iou)
    return tv_batched_nms(boxes, scores, groups, iou)


def parse_selection(selection: str) -> str | list[int]:
    """``"all"``, ``"largest"``, ``"center"`` or a list of indices from ``"0,2"`` (spaces allowed)."""
    text = str(selection).strip().lower()
    if text in ("all", "largest", "center", "centre"):
        return "center" if text == "centre" else text
    try:
        indices = [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        indices = []
    if not indices or any(i < 0 for i in indices):
        raise InputError(f"selection {selection!r}: use 'all', 'largest', 'center' or face indices such as '0,2' "
                         "(0 is the first face in the chosen order)")
    return indices


def _order_keys(boxes: torch.Tensor, scores: torch.Tensor, areas: torch.Tensor, order: str) -> torch.Tensor:
    """Permutation putting one image's faces in ``order`` (ties broken by score)."""
    if order == "score":
        return torch.argsort(scores, descending=True, stable=True)
    if order == "area":
        return torch.argsort(areas, descending=True, stable=True)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    key = centre[:, 0] if order == "left-right" else centre[:, 1]
    by_score = torch.argsort(scores, descending=True, stable=True)
    return by_score[torch.argsort(key[by_score], stable=True)]


def _clipped_areas(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return (x[:, 1] - x[:, 0]) * (y[:, 1] - y[:, 0])


def _detection_size(height: int, width: int, detect_size: int) -> tuple[int, int]:
    if detect_size <= 0 or max(height, width) <= detect_size:
        return height, width
    s = detect_size / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def _non_finite_detector(detector: RetinaFaceDetector, scores: torch.Tensor) -> None:
    from ..model import IN_MEMORY

    source = getattr(detector, "weights_file", None) or IN_MEMORY
    fix = ("its weights contain NaN / inf values or are damaged" if source == IN_MEMORY else
           f"the file {source} is probably damaged: re-download it (vspbfr download --detector ...)")
    raise NonFiniteError(f"stage 'detect': the face detector ({type(detector).__name__}) produced NaN or infinite "
                         f"scores, boxes or landmarks ({str(scores.dtype).replace('torch.', '')} on {scores.device}) "
                         f"from a finite image; weights: {source}. {fix[0].upper()}{fix[1:]}; if it runs in half "
                         "precision, try float32.", stage="detect", network="detector", source=source)


@torch.no_grad()
def detect_faces(detector: RetinaFaceDetector, images: torch.Tensor, *, threshold: float = DEFAULT_THRESHOLD,
                 min_size: float = 0.0, max_faces: int = 0, selection: str = "all", order: Order = "left-right",
                 detect_size: int = 640, nms_iou: float = NMS_IOU) -> Detections:
    """Find faces in an IMAGE batch.

    Args:
        detector: from :func:`load_detector`.
        images: ``[B, H, W, C]`` float in [0, 1], C = 1 (gray), 3 (RGB) or 4 (RGBA, alpha ignored), any device.
        threshold: minimum face probability (default 0.97, as FaceRestoreHelper; RetinaFace's own 0.8 lets
            in more false positives).
        min_size: drop faces whose box short side is below this many input pixels (0 keeps all).
        max_faces: keep at most this many faces per image, the largest ones (0 = no limit).
        selection: ``"all"``, ``"largest"`` (one face, largest box), ``"center"`` (one face, closest to the
            image centre) or indices into the ordered list such as ``"0,2"`` (missing indices are skipped).
        order: ``"left-right"``, ``"top-bottom"`` (box centres), ``"area"`` (largest first) or ``"score"``.
        detect_size: the network sees a copy whose long side is at most this (0 = full size).
        nms_iou: overlap above which the weaker of two boxes is suppressed.

    Returns:
        :class:`Detections` on the CPU, ordered by image then by ``order``.
    """
    if not isinstance(order, str) or order not in ORDERS:
        raise InputError(f"order {order!r}: use one of {', '.join(ORDERS)}")
    threshold = check_float(threshold, "threshold", minimum=0.0, maximum=1.0)
    min_size = check_float(min_size, "min_size")
    max_faces = check_int(max_faces, "max_faces")
    detect_size = check_int(detect_size, "detect_size")
    nms_iou = check_float(nms_iou, "nms_iou", minimum=0.0, maximum=1.0)
    if min_size < 0 or max_faces < 0 or detect_size < 0:
        raise InputError(f"min_size ({min_size}), max_faces ({max_faces}) and detect_size ({detect_size}) "
                         "must not be negative")
    if not isinstance(selection, str):
        raise InputError(f"selection: expected a string ('all', 'largest', 'center' or face indices such as '0,2'), "
                         f"got {type(selection).__name__} {selection!r}")
    chosen = parse_selection(selection)
    rgb, _ = from_host(images, "detect_faces: images")        # [B, 3, H, W]
    batch, _, height, width = rgb.shape
    h, w = _detection_size(height, width, int(detect_size))
    sx, sy = width / w, height / h
    param = next(detector.parameters())
    device = param.device
    priors = detector.priors(h, w, device)                      # [P, 4]
    variances = detector.config.variances
    chunk = max(1, DETECT_PIXELS["cpu" if device.type == "cpu" else "other"] // (h * w))

    found_b, found_boxes, found_lms, found_scores = [], [], [], []
    for start in range(0, batch, chunk):
        x = rgb[start:start + chunk].to(device=device, dtype=torch.float32)
        if (h, w) != (height, width):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        loc, scores, lms = detector(detector.preprocess(x))     # [n, P, 4], [n, P], [n, P, 10]
        b_idx, p_idx = torch.nonzero(scores > threshold, as_tuple=True)
        # NaN scores would compare False above and silently mean "no face": one check of the scores and of the
        # survivors' boxes and landmarks (the input was checked finite by from_host)
        flags = [torch.isfinite(scores).all()]
        if b_idx.numel():
            flags += [torch.isfinite(loc[b_idx, p_idx]).all(), torch.isfinite(lms[b_idx, p_idx]).all()]
        if not bool(torch.stack(flags).all()):
            _non_finite_detector(detector, scores)
        if b_idx.numel() == 0:
            continue
        boxes = decode_boxes(loc[b_idx, p_idx].float(), priors[p_idx], variances)
        points = decode_landmarks(lms[b_idx, p_idx].float(), priors[p_idx], variances)
        scale = torch.tensor([sx, sy], device=device, dtype=torch.float32)
        found_b.append(b_idx + start)
        found_boxes.append(boxes * scale.repeat(2))
        found_lms.append(points * scale)
        found_scores.append(scores[b_idx, p_idx].float())
    if not found_b:
        return Detections.empty(batch, (height, width))

    b_all = torch.cat(found_b)
    boxes_all = torch.cat(found_boxes)
    scores_all = torch.cat(found_scores)
    keep = batched_nms(boxes_all, scores_all, b_all, nms_iou)   # sorted by decreasing score
    b_all, boxes_all, scores_all = b_all[keep].cpu(), boxes_all[keep].cpu(), scores_all[keep].cpu()
    lms_all = torch.cat(found_lms)[keep].cpu()

    out_index: list[torch.Tensor] = []
    out_order: list[torch.Tensor] = []
    for b in range(batch):
        idx = torch.nonzero(b_all == b, as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        boxes = boxes_all[idx]
        sizes = (boxes[:, 2:] - boxes[:, :2]).min(dim=1).values
        ok = sizes >= min_size
        idx, boxes = idx[ok], boxes[ok]
        if idx.numel() == 0:
            continue
        areas = _clipped_areas(boxes, height, width)
        perm = _order_keys(boxes, scores_all[idx], areas, order)
        idx, boxes, areas = idx[perm], boxes[perm], areas[perm]
        positions = torch.arange(idx.numel())
        if chosen == "largest":
            pick = torch.argmax(areas).view(1)
        elif chosen == "center":
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            target = torch.tensor([width / 2, height / 2])
            pick = torch.argmin(((centre - target) ** 2).sum(dim=1)).view(1)
        elif isinstance(chosen, list):
            valid = [i for i in dict.fromkeys(chosen) if i < idx.numel()]
            if len(valid) < len(chosen):
                log.debug("image %d has %d faces; selection %s skips the missing indices", b, idx.numel(), chosen)
            pick = torch.tensor(sorted(valid), dtype=torch.long)
        else:
            pick = positions
        if max_faces and pick.numel() > max_faces:
            largest = torch.argsort(areas[pick], descending=True, stable=True)[:max_faces]
            pick = pick[torch.sort(largest).values]
        out_index.append(idx[pick])
        out_order.append(positions[pick])
    if not out_index:
        return Detections.empty(batch, (height, width))
    sel = torch.cat(out_index)
    return Detections(b_all[sel].long(), boxes_all[sel].float(), lms_all[sel].float(), scores_all[sel].float(),
                      torch.cat(out_order).long(), batch, (height, width))

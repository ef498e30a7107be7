"""What the VSPBFR nodes do, as plain functions over vspbfr_core (the node classes only declare sockets).

Every function takes and returns ComfyUI values (IMAGE ``[B, H, W, C]`` float in [0, 1] on the intermediate device,
MASK ``[B, H, W]``, LATENT dicts) and the pack's handles.  Device, precision, memory, progress and interrupts go
through :mod:`.comfy_host`.  The split nodes and the all-in-one node share these functions, so the chain
detect -> style prompt -> restore -> paste gives the same pixels as the all-in-one node with the same settings
(the face crops being the same size).

Faces are processed in slices (one face on the CPU, the pipeline's chunk elsewhere) with a progress step after each
stage of each slice: that is where Cancel takes effect, so an interrupt stops a long batch within one face (one
chunk on a GPU).  Seeds are per face: face ``k`` of an image uses ``make_generator(seed, k)``, whatever batch it is in.

Temporal (the detect / all-in-one nodes' ``temporal`` widget, off by default): the IMAGE batch is consecutive video
frames.  Faces are tracked (vspbfr_core.temporal.batch), the track id replaces the per-image index as the seed key,
selection / max_faces refer to tracks, each track's landmarks are smoothed (the crops and the paste-back follow
them) and each track's encoder W+ and (fidelity-mixed) style prompt are smoothed along the frames before the
restoration, as vspbfr_core.temporal.restore_sequence does.  The all-in-one node then works in windows of
:data:`TEMPORAL_WINDOW` frames (two passes: codes, then restore and paste), so its memory does not grow with the
batch beyond the input and output IMAGE; the split graph gives the same pixels (its paste node pastes temporal faces
window by window too).

Bad inputs stop the node with a :class:`~vspbfr_core.errors.VSPBFRError` that ComfyUI shows as the node's error:
widget values are checked (types, ranges, choices) before any model is loaded, IMAGE inputs must be float
``[B, H, W, C]`` in [0, 1] without NaN, the custom-socket inputs must be the pack's own objects, crops / faces / style
counts must match, and NaN produced by damaged weights is a NonFiniteError naming the network and its file (never a
black or white face).  Work too large for the memory is refused up front (InsufficientMemoryError).

Identity (best-of-N candidates, reference photos, only the matching faces; vspbfr_core.identity.select) is off by
default, and then nothing of it runs: no identity network is loaded and the pixels are those of the plain
restoration.  It turns on with candidates > 1, a connected reference or only_matching; the embedder is then loaded
once per (name, file, device) while anything holds it (:class:`LoadedEmbedder`), ArcFace through the memory manager
on the networks' device, dlib on the CPU.
"""
from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..vspbfr_core import face as face_names
from ..vspbfr_core import memory
from ..vspbfr_core.checks import check_bool, check_choice, check_float, check_int, describe_value
from ..vspbfr_core.errors import InputError
from ..vspbfr_core.image import from_host, to_host
from ..vspbfr_core.pipeline import (MAX_CANDIDATES, MEMORY_ADVICE, PROGRESS_PER_FACE, RestoreOptions, StylePrompts,
                                    VSPBFRPipeline, check_precision)
from ..vspbfr_core.progress import Progress
from . import comfy_host as host
from .handles import FaceSet, ModelHandle, StyleSet

log = logging.getLogger(__name__)

KINDS = ("style_encoder_decoder", "code_diffuser", "restoration_net")
DETECTOR_AUTO = "auto"              # the RetinaFace file that is there (resnet50 first), see vspbfr_core.paths
DETECTORS = (DETECTOR_AUTO, "retinaface_resnet50", "retinaface_mobile0.25")
ORDERS = ("left-right", "top-bottom", "area", "score")
MASK_SHAPES = face_names.MASK_SHAPES          # square, ellipse, landmarks, parsing
DEFAULT_MASK_SHAPE = face_names.DEFAULT_MASK_SHAPE
PARSERS = ("parsenet", "bisenet")               # vspbfr_core.face.parsing.PARSERS
COLOR_CORRECTIONS = ("none", "meanstd", "wavelet")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_THRESHOLD = 0.97            # vspbfr_core.face.DEFAULT_THRESHOLD (FaceRestoreHelper's)
PREVIEW_FACES = 8                   # crops shown side by side in the restore node's comparison
EMBEDDERS = ("arcface", "dlib")     # vspbfr_core.identity.EMBEDDERS, the identity widget's choices
DEFAULT_SMOOTHING = 2.0             # temporal smoothing strengths (Gaussian sigma in frames), as the benchmarks
MAX_SMOOTHING = 10.0
TEMPORAL_WINDOW = 16                # frames per pass of the all-in-one node with temporal on (bounded memory)


class LoadedDetector:
    """A RetinaFace network and its ModelPatcher.  The pack's cache holds these weakly: what keeps one alive is
    what uses it (the detect node's cached VSPBFR_FACES output, the VSPBFR_MODEL handle of an all-in-one node) and
    ComfyUI's own list of loaded models; so "Free model and node cache" frees it like the networks."""

    def __init__(self, name: str, net: Any, patcher: Any):
        self.name, self.net, self.patcher = name, net, patcher

    def __iter__(self):                       # (net, patcher) = get_detector(name)
        return iter((self.net, self.patcher))

    def __getitem__(self, i: int) -> Any:
        return (self.net, self.patcher)[i]


# (name, path, mtime) -> the loaded detector, while anything holds it
_DETECTORS: weakref.WeakValueDictionary[tuple[str, str, float], LoadedDetector] = weakref.WeakValueDictionary()


class LoadedEmbedder:
    """An identity embedder (vspbfr_core.identity) and the ModelPatcher of its network (ArcFace; None for dlib,
    which has no torch network and runs on the CPU).  Held weakly by the pack's cache, like :class:`LoadedDetector`:
    the VSPBFR_MODEL handle of the node that used it keeps it loaded."""

    def __init__(self, name: str, embedder: Any, patcher: Any):
        self.name, self.embedder, self.patcher = name, embedder, patcher

    @property
    def patchers(self) -> list[Any]:
        return [] if self.patcher is None else [self.patcher]


class LoadedParser:
    """A face-parsing network (mask_shape "parsing") and its ModelPatcher, held weakly like :class:`LoadedDetector`
    (the VSPBFR_FACES / VSPBFR_MODEL object of the node that used it keeps it loaded)."""

    def __init__(self, name: str, parser: Any, patcher: Any):
        self.name, self.parser, self.patcher = name, parser, patcher


# (name, path, mtime) -> the loaded parser, while anything holds it
_PARSERS: weakref.WeakValueDictionary[tuple[str, str, float], LoadedParser] = weakref.WeakValueDictionary()


# (name, path, mtime, device) -> the loaded embedder, while anything holds it
_EMBEDDERS: weakref.WeakValueDictionary[tuple[str, str, float, str], LoadedEmbedder] = weakref.WeakValueDictionary()


# -- inputs and outputs ----------------------------------------------------------------------------------------------

def input_images(image: torch.Tensor | None, latent: dict | None, vae: Any) -> torch.Tensor:
    """The IMAGE to work on: ``image``, or ``latent`` decoded with ``vae``."""
    if image is not None:
        return image
    if latent is not None:
        if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
            raise InputError(f"latent: expected a LATENT (a dict with a 'samples' tensor), got "
                             f"{describe_value(latent)}")
        return host.vae_decode(vae, latent)
    raise InputError("connect an IMAGE, or a LATENT together with its VAE")


def latent_output(vae: Any, images: torch.Tensor, prompt: dict | None, unique_id: Any, slot: int) -> dict | None:
    """The result encoded with ``vae``; None when no VAE is connected (an error if the LATENT output is used)."""
    if vae is not None:
        return host.vae_encode(vae, images)
    if host.output_is_linked(prompt, unique_id, slot):
        raise InputError("the LATENT output is connected but the VAE input is not: connect the VAE to encode the result")
    return None


def _placeholder(crops: torch.Tensor) -> bool:
    """A detect node that found no face outputs one black crop; such a batch is passed through untouched."""
    if not isinstance(crops, torch.Tensor):
        raise InputError(f"crops: expected an IMAGE (a float tensor [F, H, W, C] in [0, 1]), got "
                         f"{describe_value(crops)}")
    return crops.dim() == 4 and crops.shape[0] == 1 and not bool(crops.any())


def _check_handle(handle: Any) -> ModelHandle:
    if not isinstance(handle, ModelHandle):
        raise InputError(f"model: expected the VSPBFR_MODEL output of the VSPBFR Load Model node, got "
                         f"{describe_value(handle)}")
    return handle


def _check_faces(faces: Any, optional: bool = True) -> FaceSet | None:
    if (faces is None and optional) or isinstance(faces, FaceSet):
        return faces
    raise InputError(f"faces: expected the VSPBFR_FACES output of the VSPBFR Detect Faces node, got "
                     f"{describe_value(faces)}")


def _face_keys(count: int, faces: FaceSet | None, what: str) -> list[int]:
    _check_faces(faces)
    if faces is None:
        return list(range(count))
    if len(faces) != count:
        raise InputError(f"{what}: 'faces' holds {len(faces)} face(s) but {count} crop(s) arrived; connect the faces "
                         "output of the detect node that produced these crops, or leave 'faces' unconnected")
    return faces.face_keys


def _slices(count: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(count, a + size)) for a in range(0, count, size)]


# -- model -----------------------------------------------------------------------------------------------------------

def load_model(files: dict[str, str], precision: str = "auto") -> ModelHandle:
    """The three network files (names in the ``vspbfr`` folder) -> a handle ready for ComfyUI's memory manager."""
    check_choice(precision, "precision", PRECISIONS)
    for kind in KINDS:
        if not isinstance(files.get(kind), str) or not files[kind]:
            raise InputError(f"{kind}: expected a file name from the 'vspbfr' model folder, got "
                             f"{describe_value(files.get(kind))}")
    paths = {kind: host.resolve_model_file(files[kind]) for kind in KINDS}
    pipeline = VSPBFRPipeline.from_dir(None, detector=None, files=paths, offload_device=host.offload_device())
    num_params = sum(p.numel() for p in pipeline.model.parameters())
    dtype = check_precision(host.torch_device(), host.choose_dtype(precision, host.torch_device(), num_params))
    size = sum(t.numel() for t in pipeline.model.state_dict().values()) * (torch.finfo(dtype).bits // 8)
    patcher = host.wrap_model(pipeline.model, size)
    log.info("VSPBFR networks loaded from %s (%s)", ", ".join(os.path.basename(p) for p in paths.values()), dtype)
    return ModelHandle(pipeline, patcher, dtype, paths)


def _on_device(module: torch.nn.Module, device: torch.device) -> bool:
    tensors = list(module.parameters()) + list(module.buffers())
    return all(t.device == device for t in tensors)


def placed(module: torch.nn.Module, patchers: Sequence[Any], memory_required: int = 0) -> torch.device:
    """Load ``patchers`` through the memory manager and make sure ``module`` (the first one's network) is on the
    device it chose (a CPU-only run leaves it where it was); returns that device."""
    device = host.load_models(patchers, memory_required)
    if not _on_device(module, device):
        module.to(device)
    return device


def _activate(handle: ModelHandle, faces: int, extra: Sequence[Any] = ()) -> VSPBFRPipeline:
    """Load the networks (and ``extra`` patchers) through the memory manager and run them in the handle's precision."""
    memory = host.memory_estimate(min(faces, handle.pipeline.chunk_size), handle.resolution, handle.dtype)
    device = host.load_models([handle.patcher, *extra], memory)
    pipeline = handle.pipeline
    if pipeline.device != device or pipeline.dtype != handle.dtype or not _on_device(pipeline.model, device):
        pipeline.to(device, handle.dtype)
    return pipeline


# -- identity --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class IdentitySettings:
    """The identity widgets of the restore nodes (the identity fields of RestoreOptions, plus the reference photos)."""

    candidates: int = 1                       # best-of-N (1: off)
    embedder: str = "arcface"                 # the identity network
    only_matching: bool = False               # restore only the faces that match the reference
    match_threshold: float | None = None      # None: the embedder's own default
    reference_mix: float = 0.0                # style prompt moved toward the reference W+ (0: off)
    reference: torch.Tensor | None = None     # IMAGE [K, H, W, C]: photos of the person (largest face of each)

    @property
    def needed(self) -> bool:
        """Whether an identity embedder runs (else the restoration is the plain one, byte for byte)."""
        return self.candidates > 1 or self.reference is not None or self.only_matching

    def options(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "only_matching": self.only_matching,
                "match_threshold": self.match_threshold, "reference_mix": self.reference_mix}


def identity_settings(candidates: int = 1, identity: str = "arcface", only_matching: bool = False,
                      use_default_threshold: bool = True, match_threshold: float = 0.5, reference_mix: float = 0.0,
                      reference: torch.Tensor | None = None) -> IdentitySettings:
    """The identity widgets -> checked :class:`IdentitySettings` (before any model is loaded).

    ``match_threshold`` is used only when ``use_default_threshold`` is off; with it on, the embedder's own threshold
    applies (``FaceEmbedder.match_threshold``: arcface 0.3, dlib 0.94)."""
    candidates = check_int(candidates, "candidates", minimum=1, maximum=MAX_CANDIDATES)
    check_choice(identity, "identity", EMBEDDERS)
    only_matching = check_bool(only_matching, "only_matching")
    use_default = check_bool(use_default_threshold, "use_default_threshold")
    threshold = check_float(match_threshold, "match_threshold", minimum=-1.0, maximum=1.0)
    reference_mix = check_float(reference_mix, "reference_mix", minimum=0.0, maximum=1.0)
    if reference is not None:
        from_host(reference, "reference")
    else:
        for name, on in (("only_matching", only_matching), ("reference_mix > 0", reference_mix > 0)):
            if on:
                raise InputError(f"{name} needs the reference input: connect one or more photos of the person (an "
                                 "IMAGE batch; the largest face of each photo is used)")
    return IdentitySettings(candidates, identity, only_matching, None if use_default else threshold, reference_mix,
                            reference)


def default_threshold(name: str) -> float:
    """The match threshold embedder ``name`` uses by default (``FaceEmbedder.match_threshold``; nothing loaded)."""
    check_choice(name, "identity", EMBEDDERS)
    if name == "dlib":
        from ..vspbfr_core.identity.dlib import DlibEmbedder as cls
    else:
        from ..vspbfr_core.identity.arcface import ArcFaceEmbedder as cls
    return float(cls.match_threshold)


def get_embedder(name: str) -> LoadedEmbedder:
    """The identity embedder ``name``; ArcFace (``recognition_arcface_ir_se50.pth`` from ``facexlib`` / ``vspbfr``)
    is loaded once per file and device while anything holds it and runs where the VSPBFR networks run; dlib runs on
    the CPU.  A missing ArcFace file raises naming the file, the folders searched and ComfyUI's download command."""
    from ..vspbfr_core.identity import load_embedder

    check_choice(name, "identity", EMBEDDERS)
    if name == "dlib":
        key: tuple[str, str, float, str] = ("dlib", "", 0.0, "cpu")
        path = None
    else:
        from ..vspbfr_core.paths import find_model_file

        path = find_model_file("arcface", host.identity_dirs())
        key = ("arcface", str(path), os.path.getmtime(path), str(host.torch_device()))
    loaded = _EMBEDDERS.get(key)
    if loaded is None:
        if path is None:
            loaded = LoadedEmbedder(name, load_embedder("dlib", device="cpu"), None)
        else:
            embedder = load_embedder("arcface", device=host.offload_device(), file=path)
            size = sum(t.numel() * t.element_size() for t in embedder.net.state_dict().values())
            loaded = LoadedEmbedder(name, embedder, host.wrap_model(embedder.net, size))
        _EMBEDDERS[key] = loaded
    return loaded


def activate_embedder(loaded: LoadedEmbedder, device: torch.device | None = None) -> Any:
    """The embedder, on the device: ArcFace's network is put there by the memory manager, unless ``device`` says
    where its patcher was just loaded (together with the VSPBFR networks, see :func:`_activate`)."""
    if loaded.patcher is None:
        return loaded.embedder
    if device is None:
        device = host.load_models([loaded.patcher])
    if loaded.embedder.device != device or not _on_device(loaded.embedder.net, device):
        loaded.embedder.to(device)
    return loaded.embedder


@dataclass
class IdentityJob:
    """What a restoration with identity needs: the settings, the loaded embedder and the reference (if any)."""

    settings: IdentitySettings
    loaded: LoadedEmbedder
    reference: Any = None             # vspbfr_core.identity.IdentityReference


def identity_reference(handle: ModelHandle, photos: torch.Tensor, loaded: LoadedEmbedder, detector: str,
                       callback: Any = None, extra: Sequence[Any] = ()) -> Any:
    """An IdentityReference from reference photos (IMAGE ``[K, H, W, C]``): the largest face of each, detected and
    aligned as the faces to restore; a photo without a face is an error naming it."""
    from ..vspbfr_core.identity.base import ALIGN_SIZE
    from ..vspbfr_core.identity.select import make_reference

    found = find_faces(photos, detector, selection="largest", size=max(ALIGN_SIZE, handle.resolution), callback=callback,
                       extra=[handle.patcher, *loaded.patchers, *extra])
    missing = sorted(set(range(photos.shape[0])) - set(found.detections.image_index.tolist()))
    if missing:
        which = ", ".join(str(i + 1) for i in missing)
        raise InputError(f"reference: no face found in photo {which} of {photos.shape[0]} (detector "
                         f"{found.detector}); use photos where the person's face is clearly visible")
    pipeline = _activate(handle, len(found), [*loaded.patchers, *extra])
    embedder = activate_embedder(loaded, pipeline.device)
    crops = found.aligned.crops.permute(0, 2, 3, 1)
    reference = make_reference(pipeline, crops, embedder, aligned=True)
    boxes = tuple(tuple(round(float(v), 2) for v in box) for box in found.detections.boxes.tolist())
    return replace(reference, boxes=boxes)


# -- detection -------------------------------------------------------------------------------------------------------

def resolve_detector(name: str) -> str:
    """The detector to use for the widget value ``name``: ``auto`` becomes the RetinaFace file that is in the
    detector folders (resnet50 first, else mobile0.25; logged); an explicit name is kept (a missing file is then
    the loader's error naming it)."""
    from ..vspbfr_core.paths import choose_detector

    check_choice(name, "facedetection", DETECTORS)
    chosen = choose_detector(name, host.detector_dirs())
    if name == DETECTOR_AUTO:
        log.info("VSPBFR: facedetection auto -> %s", chosen)
    return chosen


def get_detector(name: str) -> LoadedDetector:
    """RetinaFace ``name`` (``auto`` resolved) from ``facedetection`` / ``facexlib`` / ``vspbfr`` and its patcher;
    loaded once per file while anything holds it (see :class:`LoadedDetector`)."""
    from ..vspbfr_core.face import find_detector_file, load_detector_file

    name = resolve_detector(name)
    path = find_detector_file(name, host.detector_dirs())     # raises naming the file, folders and command
    key = (name, str(path), os.path.getmtime(path))
    loaded = _DETECTORS.get(key)
    if loaded is None:
        net = load_detector_file(name, path, host.offload_device())
        net.weights_file = str(path)                            # named by NonFiniteError
        patcher = host.wrap_model(net, sum(t.numel() * t.element_size() for t in net.state_dict().values()))
        loaded = LoadedDetector(name, net, patcher)
        _DETECTORS[key] = loaded
    return loaded


@dataclass(frozen=True)
class TemporalSettings:
    """The temporal widgets of the detect and all-in-one nodes, checked (``on`` False: the per-image behaviour)."""

    on: bool = False
    smooth_alignment: float = DEFAULT_SMOOTHING       # landmark smoothing, Gaussian sigma in frames (0: off)
    smooth_wplus: float = DEFAULT_SMOOTHING           # W+ / style prompt smoothing, sigma in frames (0: off)


def temporal_settings(temporal: bool = False, smooth_alignment: float = DEFAULT_SMOOTHING,
                      smooth_wplus: float = DEFAULT_SMOOTHING) -> TemporalSettings:
    """The temporal widgets -> checked :class:`TemporalSettings` (before any model is loaded)."""
    on = check_bool(temporal, "temporal")
    smooth_alignment = check_float(smooth_alignment, "smooth_alignment", minimum=0.0, maximum=MAX_SMOOTHING)
    smooth_wplus = check_float(smooth_wplus, "smooth_wplus", minimum=0.0, maximum=MAX_SMOOTHING)
    return TemporalSettings(on, smooth_alignment, smooth_wplus)


def _check_detect_widgets(detector: str, threshold: float, min_size: float, max_faces: int, selection: str,
                          order: str) -> tuple[float, float, int]:
    from ..vspbfr_core.face.detect import parse_selection

    check_choice(detector, "facedetection", DETECTORS)
    threshold = check_float(threshold, "threshold", minimum=0.0, maximum=1.0)
    min_size = check_float(min_size, "min_size", minimum=0.0)
    max_faces = check_int(max_faces, "max_faces", minimum=0)
    if not isinstance(selection, str):
        raise InputError(f"selection: expected a string ('all', 'largest', 'center' or face indices such as '0,2'), "
                         f"got {describe_value(selection)}")
    parse_selection(selection)
    check_choice(order, "order", ORDERS)
    return threshold, min_size, max_faces


def _detect_frames(images: torch.Tensor, loaded: LoadedDetector, *, threshold: float, min_size: float,
                   max_faces: int, selection: str, order: str, callback: Any, extra: Sequence[Any]) -> Any:
    """Detections of an IMAGE batch, one image at a time (so a frame gives the same faces in any batch, and Cancel
    acts between frames)."""
    from ..vspbfr_core.face import Detections, detect_faces

    net = loaded.net
    placed(net, [loaded.patcher, *extra], host.memory_estimate(1, 640, torch.float32))
    progress = Progress(images.shape[0], callback)
    parts = []
    for b in range(images.shape[0]):
        parts.append(detect_faces(net, images[b:b + 1], threshold=threshold, min_size=min_size, max_faces=max_faces,
                                  selection=selection, order=order))
        progress.step("detect")
    dets = Detections.concat(parts)
    if len(dets) == 0:
        log.warning("VSPBFR: no face selected in %d image(s) (detector %s, threshold %g, selection %r); they pass "
                    "through unchanged", images.shape[0], loaded.name, threshold, selection)
    return dets


def _track_frames(images: torch.Tensor, loaded: LoadedDetector, temporal: TemporalSettings, *, threshold: float,
                  min_size: float, max_faces: int, selection: str, callback: Any, extra: Sequence[Any]) -> Any:
    """Temporal on: the batch's frames detected, tracked and selected by track (vspbfr_core.temporal.batch), each
    track's landmarks smoothed -> TrackedFaces (detections only: no crops)."""
    from ..vspbfr_core.temporal.batch import TrackSelection, track_batch

    chosen = TrackSelection.parse(selection, max_faces)
    dets = _detect_frames(images, loaded, threshold=threshold, min_size=min_size, max_faces=0,
                          selection=chosen.per_frame, order="left-right", callback=callback, extra=extra)
    return track_batch(dets, selection=chosen, smooth_alignment=temporal.smooth_alignment)


def _align_crops(rgb: torch.Tensor, dets: Any, size: int) -> Any:
    """Aligned crops of ``rgb`` ``[B, 3, H, W]`` (CPU float) for ``dets``, stored channels-last: the crops IMAGE
    output ``[F, S, S, 3]`` is then a view of the same memory, not a copy."""
    from ..vspbfr_core.face import align_faces

    aligned = align_faces(rgb, dets, size=size)
    return replace(aligned, crops=aligned.crops.contiguous(memory_format=torch.channels_last))


def find_faces(images: torch.Tensor, detector: str, *, threshold: float = DEFAULT_THRESHOLD, min_size: float = 0.0,
               max_faces: int = 0, selection: str = "all", order: str = "left-right", size: int = 512,
               temporal: bool = False, smooth_alignment: float = DEFAULT_SMOOTHING,
               smooth_wplus: float = DEFAULT_SMOOTHING, callback: Any = None, extra: Sequence[Any] = ()) -> FaceSet:
    """Detect, select and align the faces of an IMAGE batch, one image at a time.

    ``temporal`` on: the batch is consecutive video frames.  Faces are tracked (ids numbered by first appearance,
    then left to right), ``max_faces`` / index selections refer to track ids, faces are ordered by track within
    each frame (``order`` is not used), each track's landmarks are smoothed (``smooth_alignment``), and the FaceSet
    carries the track ids (the seed keys downstream) and ``smooth_wplus`` for the restore side."""
    threshold, min_size, max_faces = _check_detect_widgets(detector, threshold, min_size, max_faces, selection, order)
    size = check_int(size, "face_size", minimum=8, maximum=4096)
    settings = temporal_settings(temporal, smooth_alignment, smooth_wplus)
    rgb, _ = from_host(images)                                  # IMAGE checks before any model is loaded
    loaded = get_detector(detector)
    if settings.on:
        tracked = _track_frames(images, loaded, settings, threshold=threshold, min_size=min_size,
                                max_faces=max_faces, selection=selection, callback=callback, extra=extra)
        aligned = _align_crops(rgb.float().cpu(), tracked.detections, size)
        return FaceSet(tracked.detections, aligned, loaded.name, keep=loaded, track_ids=tracked.track_ids.tolist(),
                       smooth_wplus=settings.smooth_wplus)
    dets = _detect_frames(images, loaded, threshold=threshold, min_size=min_size, max_faces=max_faces,
                          selection=selection, order=order, callback=callback, extra=extra)
    return FaceSet(dets, _align_crops(rgb.float().cpu(), dets, size), loaded.name, keep=loaded)


def crops_output(faces: FaceSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned crops as IMAGE ``[F, S, S, 3]`` and their paste masks as MASK ``[F, S, S]`` (one black crop and an
    empty mask when no face was found, so downstream IMAGE nodes still get a batch)."""
    from ..vspbfr_core.face import face_mask

    s = faces.aligned.size
    device = host.intermediate_device()
    if len(faces) == 0:
        return torch.zeros(1, s, s, 3, device=device), torch.zeros(1, s, s, device=device)
    crops = faces.aligned.crops.permute(0, 2, 3, 1).contiguous().to(device)      # a view: see find_faces
    mask = face_mask(s, "ellipse").expand(len(faces), s, s).contiguous().to(device)
    return crops, mask


# -- style prompts and restoration -----------------------------------------------------------------------------------

def style_prompts(handle: ModelHandle, crops: torch.Tensor, seed: int, faces: FaceSet | None = None,
                  callback: Any = None) -> StyleSet:
    """Encoder W+ and diffused visual style prompts of aligned crops (``prompt_mix`` 1: fidelity is the restore
    node's business)."""
    model = _check_handle(handle).pipeline.model
    RestoreOptions(seed=seed).validate()
    _check_faces(faces)
    if _placeholder(crops):
        enc = model.style_encoder.config
        zeros = torch.zeros(1, enc.num_ws, enc.w_dim)
        return StyleSet(StylePrompts(zeros, zeros.clone()), seed, [0])
    rgb, _ = from_host(crops, "crops")
    keys = _face_keys(rgb.shape[0], faces, "style prompt")
    pipeline = _activate(handle, rgb.shape[0])
    progress = Progress(2 * rgb.shape[0], callback)
    encoder_ws, prompts = [], []
    for a, b in _slices(rgb.shape[0], host.chunk_size(pipeline.device, pipeline.chunk_size)):
        noise = pipeline.noise_for(keys[a:b], seed)
        part = pipeline.style_prompts(rgb[a:b], noise)
        encoder_ws.append(part.encoder_ws.float().cpu())
        prompts.append(part.prompts.float().cpu())
        progress.step("style", 2 * (b - a))
    style = StylePrompts(torch.cat(encoder_ws), torch.cat(prompts))
    if _smooths(faces):
        return StyleSet(_smooth_style(style, faces), seed, keys, smoothed=True)
    return StyleSet(style, seed, keys)


def _smooths(faces: FaceSet | None) -> bool:
    """Whether the restore side smooths W+ and style prompts per track (temporal faces, smooth_wplus > 0)."""
    return faces is not None and faces.temporal and faces.smooth_wplus > 0


def _smooth_codes(codes: torch.Tensor, faces: FaceSet) -> torch.Tensor:
    """Per-face codes ``[F, ...]`` smoothed per track along the frames (faces.smooth_wplus)."""
    from ..vspbfr_core.temporal.batch import smooth_track_codes

    return smooth_track_codes(codes, faces.detections.image_index, faces.face_keys, faces.smooth_wplus)


def _smooth_style(style: StylePrompts, faces: FaceSet) -> StylePrompts:
    both = _smooth_codes(torch.stack([style.encoder_ws.float().cpu(), style.prompts.float().cpu()], dim=1), faces)
    return StylePrompts(both[:, 0].to(style.encoder_ws.dtype), both[:, 1].to(style.prompts.dtype))


def _temporal_codes(pipeline: VSPBFRPipeline, rgb: torch.Tensor, keys: list[int], options: RestoreOptions,
                    progress: Progress) -> torch.Tensor:
    """Pass 1 of a temporal restoration: encoder W+ and diffused style prompt of each crop ``[F, 3, S, S]`` with its
    track's noise, the prompt mixed with the fidelity (as restore_sequence does) -> ``[F, 2, num_ws, w_dim]``
    float32 on the CPU (``num_ws * w_dim * 4`` bytes per code: 32 KiB at 16 x 512)."""
    out = []
    for a, b in _slices(rgb.shape[0], host.chunk_size(pipeline.device, pipeline.chunk_size)):
        noise = pipeline.noise_for(keys[a:b], options.seed)
        ws = pipeline.encode(rgb[a:b])
        progress.step("encode", b - a)
        prompts = pipeline.diffuse(ws, noise)
        progress.step("diffuse", b - a)
        if options.prompt_mix != 1.0:
            prompts = torch.lerp(ws.to(prompts.dtype), prompts, options.prompt_mix)
        out.append(torch.stack([ws.float(), prompts.float()], dim=1).cpu())
    return torch.cat(out)


def _restore_slices(pipeline: VSPBFRPipeline, rgb: torch.Tensor, keys: list[int], options: RestoreOptions,
                    mixed: StylePrompts | None, progress: Progress) -> torch.Tensor:
    """Checked crops ``[F, 3, S, S]`` restored slice by slice (the Cancel points) -> IMAGE ``[F, R, R, 3]``."""
    device_out = host.intermediate_device()
    out = []
    for a, b in _slices(rgb.shape[0], host.chunk_size(pipeline.device, pipeline.chunk_size)):
        part = None if mixed is None else StylePrompts(mixed.encoder_ws[a:b], mixed.prompts[a:b])
        restored, _ = pipeline.restore_faces(rgb[a:b], part, options=options, face_keys=keys[a:b], progress=progress)
        out.append(restored.float().to(device_out))
    return torch.cat(out).permute(0, 2, 3, 1).contiguous()


def _refuse_identity_on_tracks(temporal: bool, settings: IdentitySettings) -> None:
    if temporal and settings.needed:
        raise InputError("identity (candidates > 1, a reference, only_matching) is not supported on temporal batches "
                         "yet: turn temporal off on the detect / all-in-one node, or set candidates to 1 and "
                         "disconnect the reference")


def _mix(style: StylePrompts, fidelity: float) -> StylePrompts:
    if fidelity == 1.0:
        return style
    return StylePrompts(style.encoder_ws, torch.lerp(style.encoder_ws.to(style.prompts.dtype), style.prompts, fidelity))


def restore_crops(handle: ModelHandle, crops: torch.Tensor, *, seed: int, fidelity: float = 1.0,
                  bank_scale: float = 1.0, style: StyleSet | None = None, faces: FaceSet | None = None,
                  keep_gray: bool = True, identity: IdentitySettings | None = None, callback: Any = None,
                  extra: Sequence[Any] = ()) -> torch.Tensor:
    """Aligned crops IMAGE ``[F, S, S, C]`` -> restored crops IMAGE ``[F, R, R, 3]`` (R: the model's resolution).

    ``keep_gray``: a crop whose channels are equal (a grayscale photo: ComfyUI's LoadImage gives it as RGB) is
    restored in gray (see :class:`vspbfr_core.pipeline.RestoreOptions`).  ``identity``: best-of-N candidates, and
    reference photos (their largest face found by the ``auto`` detector) as the candidates' target and for the
    reference mix."""
    job = None
    checked = _check_faces(faces)
    _refuse_identity_on_tracks(checked is not None and checked.temporal,
                               identity if identity is not None else IdentitySettings())
    if identity is not None and identity.reference is not None and not _placeholder(crops):
        _check_handle(handle)
        job = IdentityJob(identity, get_embedder(identity.embedder))
        loaded = get_detector(DETECTOR_AUTO)
        job.reference = identity_reference(handle, identity.reference, job.loaded, loaded.name, callback,
                                           [loaded.patcher, *extra])
    restored, _ = _restore_crops(handle, crops, seed=seed, fidelity=fidelity, bank_scale=bank_scale, style=style,
                                 faces=faces, keep_gray=keep_gray, identity=identity, job=job, callback=callback,
                                 extra=extra)
    return restored


def _restore_crops(handle: ModelHandle, crops: torch.Tensor, *, seed: int, fidelity: float = 1.0,
                   bank_scale: float = 1.0, style: StyleSet | None = None, faces: FaceSet | None = None,
                   keep_gray: bool = True, identity: IdentitySettings | None = None, job: IdentityJob | None = None,
                   callback: Any = None, extra: Sequence[Any] = ()) -> tuple[torch.Tensor, list[Any] | None]:
    """:func:`restore_crops`, plus each face's identity record (vspbfr_core.identity.FaceIdentity) when identity
    is on (``job``, or ``identity`` whose embedder is loaded here); None when it is off."""
    _check_handle(handle)
    settings = job.settings if job is not None else identity if identity is not None else IdentitySettings()
    options = RestoreOptions(seed=seed, prompt_mix=fidelity, bank_scale=bank_scale, keep_gray=keep_gray,
                             **settings.options())
    options.validate()
    _check_faces(faces)
    _refuse_identity_on_tracks(faces is not None and faces.temporal, settings)
    if style is not None and not isinstance(style, StyleSet):
        raise InputError(f"style: expected the VSPBFR_STYLE output of the VSPBFR W+ Style Prompt node, got "
                         f"{describe_value(style)}")
    if style is not None and settings.needed:
        raise InputError("style: a connected style prompt cannot be combined with identity (candidates > 1: each "
                         "candidate diffuses its own style prompt); leave style unconnected or set candidates to 1")
    device_out = host.intermediate_device()
    if _placeholder(crops):
        return crops.to(device_out), ([] if settings.needed else None)
    rgb, _ = from_host(crops, "crops")
    count = rgb.shape[0]
    keys = _face_keys(count, faces, "restore")
    if settings.needed:
        if job is None:
            job = IdentityJob(settings, get_embedder(settings.embedder))
        handle.embedder = job.loaded    # kept loaded as long as the loader node's cached output (see LoadedEmbedder)
        return _restore_identity(handle, rgb, keys, options, job, callback, extra)
    mixed = None
    if style is not None:
        if len(style) != count:
            raise InputError(f"restore: the style holds {len(style)} face(s) but {count} crop(s) arrived; connect "
                             "the style prompt computed from these crops")
        smoothed = style.style if style.smoothed or not _smooths(faces) else _smooth_style(style.style, faces)
        mixed = _mix(smoothed, fidelity)
    pipeline = _activate(handle, count, extra)
    two_pass = style is None and _smooths(faces)
    progress = Progress((PROGRESS_PER_FACE + (2 if two_pass else 0)) * count, callback)
    if two_pass:        # temporal: W+ and the mixed prompt of every face first, smoothed per track, then restore
        codes = _smooth_codes(_temporal_codes(pipeline, rgb, keys, options, progress), faces)
        mixed = StylePrompts(codes[:, 0].contiguous(), codes[:, 1].contiguous())   # as the all-in-one's windows
    restored = _restore_slices(pipeline, rgb, keys, options, mixed, progress)
    host.soft_empty_cache()
    return restored, None


def _restore_identity(handle: ModelHandle, rgb: torch.Tensor, keys: list[int], options: RestoreOptions,
                      job: IdentityJob, callback: Any, extra: Sequence[Any]) -> tuple[torch.Tensor, list[Any]]:
    """Best-of-N / only-matching / reference mix of checked crops ``[F, 3, S, S]``, in the same slices (and so with
    the same per-face seeds and Cancel points) as the plain path."""
    from ..vspbfr_core.identity import select

    count = rgb.shape[0]
    pipeline = _activate(handle, count, [*extra, *job.loaded.patchers])
    embedder = activate_embedder(job.loaded, pipeline.device)
    select.check_identity_request(options, embedder, job.reference, "VSPBFR restore")
    progress = Progress(select.progress_units(options, True) * count, callback)
    device_out = host.intermediate_device()
    out, records = [], []
    with torch.inference_mode(), memory.guard("restoring faces with identity", pipeline.device, MEMORY_ADVICE):
        for a, b in _slices(count, host.chunk_size(pipeline.device, pipeline.chunk_size)):
            found = select.restore_with_identity(pipeline, rgb[a:b], keys[a:b], options, embedder, job.reference,
                                                 progress)
            out.append(found.restored.float().to(device_out))
            records.extend(found.faces)
    host.soft_empty_cache()
    return torch.cat(out).permute(0, 2, 3, 1).contiguous(), records


# -- paste-back ------------------------------------------------------------------------------------------------------

def get_parser(name: str = "parsenet") -> LoadedParser:
    """Face-parsing network ``name`` from ``facedetection`` / ``facexlib`` / ``vspbfr`` and its patcher, loaded once
    per file while anything holds it; a missing file raises naming the file, the folders and the download command."""
    from ..vspbfr_core.face.parsing import find_parser_file, load_parser

    check_choice(name, "parser", PARSERS)
    path = find_parser_file(name, host.parsing_dirs())
    key = (name, str(path), os.path.getmtime(path))
    loaded = _PARSERS.get(key)
    if loaded is None:
        parser = load_parser(name, path, device=host.offload_device())
        patcher = host.wrap_model(parser, sum(t.numel() * t.element_size() for t in parser.state_dict().values()))
        loaded = LoadedParser(name, parser, patcher)
        _PARSERS[key] = loaded
    return loaded


def _active_parser(loaded: LoadedParser) -> Any:
    """The parser on the device the memory manager put it on (it runs there; the masks come back to the paste)."""
    placed(loaded.parser, [loaded.patcher])
    return loaded.parser


def parts_widget(text: Any) -> str | None:
    """The mask_parts widget -> RestoreOptions.mask_parts ("all" or empty: None, the default set)."""
    if not isinstance(text, str):
        raise InputError(f"mask_parts: expected a comma-separated list of face parts, got {describe_value(text)}")
    return None if text.strip().lower() in ("", "all") else text


def paste_limit(faces: FaceSet, mask: torch.Tensor | None, batch: int, height: int, width: int
                ) -> torch.Tensor | None:
    """Where the paste may change pixels, ``[B, H, W]`` on the CPU: the faces' own limit (SEGS masks) times the
    user's MASK (``[H, W]``, ``[1, H, W]`` for every image, or ``[B, H, W]``); None when there is neither."""
    from ..vspbfr_core.face.paste import check_user_mask

    limits = []
    for name, m in (("faces", faces.limit), ("mask", mask)):
        if m is None:
            continue
        try:
            limits.append(check_user_mask(m.detach().cpu() if isinstance(m, torch.Tensor) else m, batch, height, width))
        except InputError as exc:
            raise InputError(f"{name}: {str(exc).removeprefix('paste_faces: ')} (resize the mask first, e.g. with a "
                             "mask resize node)") from None
    if not limits:
        return None
    return limits[0] if len(limits) == 1 else limits[0] * limits[1]


def paste(images: torch.Tensor, faces: FaceSet, restored: torch.Tensor, *, visibility: float = 1.0,
          feather: float | None = None, mask_shape: str = DEFAULT_MASK_SHAPE, color_correction: str = "none",
          upscale: float = 1.0, mask: torch.Tensor | None = None, mask_parts: str | None = None,
          parser: str = "parsenet") -> tuple[torch.Tensor, torch.Tensor]:
    """Blend restored crops into the original IMAGE batch -> (IMAGE, MASK of the pasted area).

    ``mask`` (a MASK of the images' size): pixels where it is 0 are never changed; it multiplies the faces' own
    limit (the SEG masks of faces from VSPBFR SEGS to Faces).  ``mask_shape`` "parsing" runs the face-parsing
    network ``parser`` on the restored and original crops (``mask_parts``: the parts pasted; None: all).

    Temporal faces (video frames) are pasted :data:`TEMPORAL_WINDOW` frames at a time, as the all-in-one node
    does, so the two give the same pixels whatever the batch length."""
    check_choice(color_correction, "color_correction", COLOR_CORRECTIONS)
    check_choice(mask_shape, "mask_shape", MASK_SHAPES)
    RestoreOptions(visibility=visibility, feather=feather, upscale=upscale, mask_shape=mask_shape,
                   mask_parts=mask_parts or None).validate()
    _check_faces(faces, optional=False)
    rgb, layout = from_host(images)
    count = len(faces)
    if count:
        crops, _ = from_host(restored, "restored")
        if crops.shape[0] != count:
            raise InputError(f"paste: {crops.shape[0]} restored crop(s) for {count} face(s); the restored batch must "
                             "come from this detect node's crops, in the same order")
    else:
        crops = rgb.new_zeros(0, 3, faces.aligned.size, faces.aligned.size)
    limit = paste_limit(faces, mask, *rgb.shape[:1], *rgb.shape[2:])
    _ensure_paste_memory(images, float(upscale), rgb.device)
    loaded_parser = get_parser(parser) if mask_shape == "parsing" and count else None
    frames = images.shape[0]
    if faces.temporal and frames > TEMPORAL_WINDOW and faces.aligned.num_images == frames:
        out = out_mask = None
        for a, b in _slices(frames, TEMPORAL_WINDOW):
            part, where = _frame_window(faces, a, b)
            part = replace(part, aligned=_window_aligned(faces.aligned, where, a, b))
            o, m = paste(images[a:b], part, restored[where.to(restored.device)] if count else restored,
                         visibility=visibility, feather=feather, mask_shape=mask_shape,
                         color_correction=color_correction, upscale=upscale,
                         mask=None if limit is None else limit[a:b], mask_parts=mask_parts, parser=parser)
            if out is None:
                out, out_mask = o.new_empty((frames, *o.shape[1:])), m.new_empty((frames, *m.shape[1:]))
            out[a:b], out_mask[a:b] = o, m
        return out, out_mask
    return _paste_batch(rgb, layout, faces, crops, visibility=visibility, feather=feather, mask_shape=mask_shape,
                        color_correction=color_correction, upscale=upscale, limit=limit, mask_parts=mask_parts,
                        parser=loaded_parser)


def _paste_batch(rgb: torch.Tensor, layout: Any, faces: FaceSet, crops: torch.Tensor, *, visibility: float,
                 feather: float | None, mask_shape: str, color_correction: str, upscale: float,
                 limit: torch.Tensor | None, mask_parts: str | None, parser: LoadedParser | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    from ..vspbfr_core.face import paste_faces

    kwargs: dict[str, Any] = dict(visibility=visibility, mask_shape=mask_shape, upscale=upscale,
                                  color_correction=None if color_correction == "none" else color_correction)
    if feather is not None:
        kwargs["feather"] = feather
    if limit is not None:
        kwargs["limit"] = limit.to(rgb.device)
    if parser is not None:
        kwargs.update(parser=_active_parser(parser), mask_parts=mask_parts or None)
        faces.keep_parser = parser            # loaded while the faces are cached (see LoadedParser)
    with memory.guard("paste", rgb.device, MEMORY_ADVICE):
        out, out_mask = paste_faces(rgb.float(), crops.float().to(rgb.device), faces.aligned, **kwargs)
        device = host.intermediate_device()
        return to_host(out, layout).to(device), out_mask.float().to(device)


def _ensure_paste_memory(images: torch.Tensor, upscale: float, device: torch.device) -> None:
    """Refuse up front when pasting into ``images`` (IMAGE ``[B, H, W, C]``) at ``upscale`` cannot fit in memory."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return                                                  # from_host reports what is wrong with it
    batch, height, width, channels = images.shape
    out_h, out_w = memory.scaled_size(height, width, upscale)
    what = f"pasting into {batch} image(s) of {width}x{height} at upscale {upscale:g} ({out_w}x{out_h})"
    memory.ensure_available(memory.result_bytes(batch, channels, out_h, out_w), device, what, MEMORY_ADVICE)


def face_restore(handle: ModelHandle, images: torch.Tensor, *, detector: str, seed: int, fidelity: float = 1.0,
                 visibility: float = 1.0, selection: str = "all", only_center_face: bool = False,
                 upscale: float = 1.0, threshold: float = DEFAULT_THRESHOLD, keep_gray: bool = True,
                 identity: IdentitySettings | None = None, temporal: TemporalSettings | None = None,
                 mask_shape: str = DEFAULT_MASK_SHAPE, mask: torch.Tensor | None = None, mask_parts: str | None = None,
                 parser: str = "parsenet", callback: Any = None) -> tuple[torch.Tensor, torch.Tensor, int, FaceSet, list[Any] | None]:
    """The all-in-one node: detect, restore and paste, with crops at the model's resolution.

    Returns the images, the paste mask, the number of faces restored, the faces found and (identity on) each
    face's identity record; faces that ``only_matching`` leaves alone are not pasted, so their pixels stay as
    they were.  ``temporal`` on: :func:`_face_restore_frames` (bounded memory; the FaceSet returned then holds the
    detections and track ids but no crops).  ``mask_shape``, ``mask``, ``mask_parts``: as :func:`paste`."""
    _check_handle(handle)
    check_choice(detector, "facedetection", DETECTORS)
    check_bool(only_center_face, "only_center_face")
    settings = identity if identity is not None else IdentitySettings()
    RestoreOptions(seed=seed, prompt_mix=fidelity, visibility=visibility, upscale=upscale, selection=selection,
                   threshold=threshold, keep_gray=keep_gray, mask_shape=mask_shape, mask_parts=mask_parts or None,
                   **settings.options()).validate()
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        paste_limit(FaceSet(None, None), mask, images.shape[0], images.shape[1], images.shape[2])   # early check
    check_choice(parser, "parser", PARSERS)
    paste_args: dict[str, Any] = dict(mask_shape=mask_shape, mask=mask, mask_parts=mask_parts, parser=parser)
    if mask_shape == "parsing":         # before any detection work (a missing file first); kept while the handle is
        handle.parser = get_parser(parser)
    if temporal is not None and not isinstance(temporal, TemporalSettings):
        raise InputError(f"temporal: expected TemporalSettings from temporal_settings, got {describe_value(temporal)}")
    _refuse_identity_on_tracks(temporal is not None and temporal.on, settings)
    _ensure_paste_memory(images, float(upscale), host.intermediate_device())     # before any detection work
    if temporal is not None and temporal.on:
        loaded = get_detector(detector)
        handle.detector = loaded
        return _face_restore_frames(handle, images, loaded, temporal, seed=seed, fidelity=fidelity,
                                    visibility=visibility, selection="center" if only_center_face else selection,
                                    upscale=upscale, threshold=threshold, keep_gray=keep_gray, callback=callback,
                                    paste_args=paste_args)
    # the identity network before any detection work (a missing ArcFace file is reported first)
    job = IdentityJob(settings, get_embedder(settings.embedder)) if settings.needed else None
    loaded = get_detector(detector)
    handle.detector = loaded            # lives as long as the loader node's cached output (see LoadedDetector)
    faces = find_faces(images, loaded.name, threshold=threshold,
                       selection="center" if only_center_face else selection, size=handle.resolution,
                       callback=callback, extra=[handle.patcher])
    restored = torch.zeros(0, handle.resolution, handle.resolution, 3)
    records = None if job is None else []
    pasted = faces
    if len(faces):
        if job is not None and settings.reference is not None:
            job.reference = identity_reference(handle, settings.reference, job.loaded, loaded.name, callback,
                                               [loaded.patcher])
        crops = faces.aligned.crops.permute(0, 2, 3, 1)
        restored, records = _restore_crops(handle, crops, seed=seed, fidelity=fidelity, faces=faces,
                                           keep_gray=keep_gray, job=job, callback=callback, extra=[loaded.patcher])
        if records is not None and not all(r.restored for r in records):
            keep = torch.tensor([r.restored for r in records], dtype=torch.bool)
            pasted, restored = _subset(faces, keep), restored[keep]
    out, out_mask = paste(images, pasted, restored, visibility=visibility, upscale=upscale, **paste_args)
    return out, out_mask, len(pasted), faces, records


def _frame_window(faces: FaceSet, a: int, b: int) -> tuple[FaceSet, torch.Tensor]:
    """The faces of frames ``a..b-1`` as a FaceSet of that window (frame indices from 0; no crops yet) and their
    positions in ``faces``."""
    dets = faces.detections
    where = torch.nonzero((dets.image_index >= a) & (dets.image_index < b), as_tuple=True)[0]
    part = dets.index(where)
    part = replace(part, image_index=part.image_index - a, num_images=b - a)
    ids = None if faces.track_ids is None else [faces.track_ids[k] for k in where.tolist()]
    return FaceSet(part, None, faces.detector, track_ids=ids, smooth_wplus=faces.smooth_wplus), where


def _window_aligned(aligned: Any, where: torch.Tensor, a: int, b: int) -> Any:
    """The AlignedFaces ``where`` (the faces of frames ``a..b-1``) as aligned from that window of frames."""
    return aligned.select(where, first_image=a, num_images=b - a)


def _face_restore_frames(handle: ModelHandle, images: torch.Tensor, loaded: LoadedDetector,
                         temporal: TemporalSettings, *, seed: int, fidelity: float, visibility: float, selection: str,
                         upscale: float, threshold: float, keep_gray: bool, callback: Any,
                         paste_args: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, int, FaceSet, None]:
    """The all-in-one node with temporal on, in memory that does not grow with the batch (beyond its input and
    output IMAGE):

    1. detect every frame, track, select tracks, smooth each track's landmarks: detections only (tiny);
    2. ``smooth_wplus > 0``: per window of :data:`TEMPORAL_WINDOW` frames, align that window's faces, encode and
       diffuse with the track noise, keep only the W+ codes (float32, CPU); smooth them per track;
    3. per window: align again, restore (with the smoothed codes), paste into the preallocated output.

    The result equals the split graph (detect with temporal on -> restore with faces -> paste) with the same
    settings: the same functions on the same faces, one face per slice on the CPU."""
    r = handle.resolution
    options = RestoreOptions(seed=seed, prompt_mix=fidelity, bank_scale=1.0, keep_gray=keep_gray)
    tracked = _track_frames(images, loaded, temporal, threshold=threshold, min_size=0.0, max_faces=0,
                            selection=selection, callback=callback, extra=[handle.patcher])
    faces = FaceSet(tracked.detections, None, loaded.name, keep=loaded, track_ids=tracked.track_ids.tolist(),
                    smooth_wplus=temporal.smooth_wplus)
    count, frames = len(faces), images.shape[0]
    windows = _slices(frames, TEMPORAL_WINDOW)

    def window_crops(a: int, b: int) -> tuple[FaceSet, torch.Tensor, torch.Tensor | None]:
        part, where = _frame_window(faces, a, b)
        rgb, _ = from_host(images[a:b])
        part = replace(part, aligned=_align_crops(rgb.float().cpu(), part.detections, r))
        crops = from_host(part.aligned.crops.permute(0, 2, 3, 1), "crops")[0] if len(part) else None
        return part, where, crops

    codes = None
    if count:
        pipeline = _activate(handle, count, [loaded.patcher])
        progress = Progress((PROGRESS_PER_FACE + (2 if _smooths(faces) else 0)) * count, callback)
        if _smooths(faces):
            parts = []
            for a, b in windows:
                part, _, crops = window_crops(a, b)
                if len(part):
                    parts.append(_temporal_codes(pipeline, crops, part.face_keys, options, progress))
            codes = _smooth_codes(torch.cat(parts), faces)
    out = mask = None
    for a, b in windows:
        part, where, crops = window_crops(a, b)
        restored = torch.zeros(0, r, r, 3)
        if len(part):
            mixed = None if codes is None else StylePrompts(codes[where, 0], codes[where, 1])
            restored = _restore_slices(pipeline, crops, part.face_keys, options, mixed, progress)
        frame_out, frame_mask = paste(images[a:b], part, restored, visibility=visibility, upscale=upscale,
                                      **_window_paste_args(paste_args, a, b))
        if out is None:
            out = frame_out.new_empty((frames, *frame_out.shape[1:]))
            mask = frame_mask.new_empty((frames, *frame_mask.shape[1:]))
        out[a:b], mask[a:b] = frame_out, frame_mask
    host.soft_empty_cache()
    return out, mask, count, faces, None


def _window_paste_args(paste_args: dict[str, Any] | None, a: int, b: int) -> dict[str, Any]:
    """The paste arguments for frames ``a..b-1``: a per-frame user mask cut to the window."""
    args = dict(paste_args or {})
    m = args.get("mask")
    if isinstance(m, torch.Tensor) and m.dim() == 3 and m.shape[0] > 1:
        args["mask"] = m[a:b]
    return args


def _subset(faces: FaceSet, keep: torch.Tensor) -> FaceSet:
    """The faces of ``faces`` selected by the bool mask ``keep`` [F] (for pasting only the restored ones)."""
    aligned = faces.aligned.select(keep)
    return FaceSet(faces.detections.index(keep), aligned, faces.detector, keep=faces.keep, limit=faces.limit)


# -- previews for web/js/vspbfr.js -----------------------------------------------------------------------------------

def detect_preview(images: torch.Tensor, faces: FaceSet) -> dict[str, list]:
    """UI data of the detect node: the first frame and its faces (boxes in image pixels, index, score)."""
    h, w = images.shape[1:3]
    first = [(k, f) for k, f in enumerate(faces.detections.to_json()) if f["image"] == 0]   # temporal: track ids
    return {"vspbfr_faces": [{
        "image": host.save_preview(images[0], "vspbfr_detect"), "width": int(w), "height": int(h),
        "frames": int(images.shape[0]), "count": len(faces),
        "faces": [{"index": f["index"] if faces.track_ids is None else faces.track_ids[k], "box": f["box"],
                   "score": f["score"]} for k, f in first],
    }]}


def _strip(crops: torch.Tensor) -> torch.Tensor:
    """Up to PREVIEW_FACES crops ``[F, S, S, C]`` side by side as one frame ``[S, n*S, 3]``."""
    picked = crops[:PREVIEW_FACES, :, :, :3].float()
    return torch.cat(list(picked), dim=1)


def compare_preview(before: torch.Tensor, after: torch.Tensor, crops: bool = False) -> dict[str, list]:
    """UI data of the before/after slider: the first frame (or the first crops) before and after."""
    if crops:
        size = after.shape[1]
        if before.shape[1] != size:
            before = torch.nn.functional.interpolate(before[..., :3].permute(0, 3, 1, 2).float(), size=(size, size),
                                                     mode="bilinear", antialias=True).permute(0, 2, 3, 1)
        first_before, first_after = _strip(before), _strip(after)
    else:
        first_before, first_after = before[0], after[0]
        if first_before.shape[:2] != first_after.shape[:2]:
            first_before = torch.nn.functional.interpolate(first_before[..., :3].permute(2, 0, 1)[None].float(),
                                                           size=tuple(first_after.shape[:2]), mode="bicubic"
                                                           )[0].permute(1, 2, 0).clamp(0, 1)
    return {"vspbfr_compare": [{"before": host.save_preview(first_before, "vspbfr_before"),
                                "after": host.save_preview(first_after, "vspbfr_after")}]}

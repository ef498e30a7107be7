"""What the VSPBFR nodes do, as plain functions over vspbfr_core (the node classes only declare sockets).

Every function takes and returns ComfyUI values (IMAGE ``[B, H, W, C]`` float in [0, 1] on the intermediate device,
MASK ``[B, H, W]``, LATENT dicts) and the pack's handles.  Device, precision, memory, progress and interrupts go
through :mod:`.comfy_host`.  The split nodes and the all-in-one node share these functions, so the chain
detect -> style prompt -> restore -> paste gives the same pixels as the all-in-one node with the same settings
(the face crops being the same size).

Faces are processed in slices (one face on the CPU, the pipeline's chunk elsewhere) with a progress step after each
stage of each slice: that is where Cancel takes effect, so an interrupt stops a long batch within one face (one
chunk on a GPU).  Seeds are per face: face ``k`` of an image uses ``make_generator(seed, k)``, whatever batch it is in.

Bad inputs stop the node with a :class:`~vspbfr_core.errors.VSPBFRError` that ComfyUI shows as the node's error:
widget values are checked (types, ranges, choices) before any model is loaded, IMAGE inputs must be float
``[B, H, W, C]`` in [0, 1] without NaN, the custom-socket inputs must be the pack's own objects, crops / faces / style
counts must match, and NaN produced by damaged weights is a NonFiniteError naming the network and its file (never a
black or white face).  Work too large for the memory is refused up front (InsufficientMemoryError).
"""
from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..vspbfr_core import memory
from ..vspbfr_core.checks import check_bool, check_choice, check_float, check_int, describe_value
from ..vspbfr_core.errors import InputError
from ..vspbfr_core.image import from_host, to_host
from ..vspbfr_core.pipeline import (MEMORY_ADVICE, PROGRESS_PER_FACE, RestoreOptions, StylePrompts, VSPBFRPipeline,
                                    check_precision)
from ..vspbfr_core.progress import Progress
from . import comfy_host as host
from .handles import FaceSet, ModelHandle, StyleSet

log = logging.getLogger(__name__)

KINDS = ("style_encoder_decoder", "code_diffuser", "restoration_net")
DETECTOR_AUTO = "auto"              # the RetinaFace file that is there (resnet50 first), see vspbfr_core.paths
DETECTORS = (DETECTOR_AUTO, "retinaface_resnet50", "retinaface_mobile0.25")
ORDERS = ("left-right", "top-bottom", "area", "score")
MASK_SHAPES = ("square", "ellipse")
COLOR_CORRECTIONS = ("none", "meanstd", "wavelet")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_THRESHOLD = 0.97            # vspbfr_core.face.DEFAULT_THRESHOLD (FaceRestoreHelper's)
PREVIEW_FACES = 8                   # crops shown side by side in the restore node's comparison



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


def _activate(handle: ModelHandle, faces: int, extra: Sequence[Any] = ()) -> VSPBFRPipeline:
    """Load the networks (and ``extra`` patchers) through the memory manager and run them in the handle's precision."""
    memory = host.memory_estimate(min(faces, handle.pipeline.chunk_size), handle.resolution, handle.dtype)
    device = host.load_models([handle.patcher, *extra], memory)
    pipeline = handle.pipeline
    if pipeline.device != device or pipeline.dtype != handle.dtype or not _on_device(pipeline.model, device):
        pipeline.to(device, handle.dtype)
    return pipeline


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


def find_faces(images: torch.Tensor, detector: str, *, threshold: float = DEFAULT_THRESHOLD, min_size: float = 0.0,
               max_faces: int = 0, selection: str = "all", order: str = "left-right", size: int = 512,
               callback: Any = None, extra: Sequence[Any] = ()) -> FaceSet:
    """Detect, select and align the faces of an IMAGE batch, one image at a time (so a frame gives the same faces
    in any batch, and Cancel acts between frames)."""
    from ..vspbfr_core.face import Detections, align_faces, detect_faces
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
    size = check_int(size, "face_size", minimum=8, maximum=4096)
    rgb, _ = from_host(images)                                  # IMAGE checks before any model is loaded
    loaded = get_detector(detector)
    net, patcher, detector = loaded.net, loaded.patcher, loaded.name
    device = host.load_models([patcher, *extra], host.memory_estimate(1, 640, torch.float32))
    if not _on_device(net, device):
        net.to(device)
    progress = Progress(images.shape[0], callback)
    parts = []
    for b in range(images.shape[0]):
        parts.append(detect_faces(net, images[b:b + 1], threshold=threshold, min_size=min_size, max_faces=max_faces,
                                  selection=selection, order=order))
        progress.step("detect")
    dets = Detections.concat(parts)
    if len(dets) == 0:
        log.warning("VSPBFR: no face selected in %d image(s) (detector %s, threshold %g, selection %r); they pass "
                    "through unchanged", images.shape[0], detector, threshold, selection)
    aligned = align_faces(rgb.float().cpu(), dets, size=size)
    # channels-last storage: the crops IMAGE output [F, S, S, 3] is then a view of the same memory, not a copy
    aligned = replace(aligned, crops=aligned.crops.contiguous(memory_format=torch.channels_last))
    return FaceSet(dets, aligned, detector, keep=loaded)


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
    return StyleSet(StylePrompts(torch.cat(encoder_ws), torch.cat(prompts)), seed, keys)


def _mix(style: StylePrompts, fidelity: float) -> StylePrompts:
    if fidelity == 1.0:
        return style
    return StylePrompts(style.encoder_ws, torch.lerp(style.encoder_ws.to(style.prompts.dtype), style.prompts, fidelity))


def restore_crops(handle: ModelHandle, crops: torch.Tensor, *, seed: int, fidelity: float = 1.0,
                  bank_scale: float = 1.0, style: StyleSet | None = None, faces: FaceSet | None = None,
                  keep_gray: bool = True, callback: Any = None, extra: Sequence[Any] = ()) -> torch.Tensor:
    """Aligned crops IMAGE ``[F, S, S, C]`` -> restored crops IMAGE ``[F, R, R, 3]`` (R: the model's resolution).

    ``keep_gray``: a crop whose channels are equal (a grayscale photo: ComfyUI's LoadImage gives it as RGB) is
    restored in gray (see :class:`vspbfr_core.pipeline.RestoreOptions`)."""
    _check_handle(handle)
    options = RestoreOptions(seed=seed, prompt_mix=fidelity, bank_scale=bank_scale, keep_gray=keep_gray)
    options.validate()
    _check_faces(faces)
    if style is not None and not isinstance(style, StyleSet):
        raise InputError(f"style: expected the VSPBFR_STYLE output of the VSPBFR W+ Style Prompt node, got "
                         f"{describe_value(style)}")
    device_out = host.intermediate_device()
    if _placeholder(crops):
        return crops.to(device_out)
    rgb, _ = from_host(crops, "crops")
    count = rgb.shape[0]
    keys = _face_keys(count, faces, "restore")
    mixed = None
    if style is not None:
        if len(style) != count:
            raise InputError(f"restore: the style holds {len(style)} face(s) but {count} crop(s) arrived; connect "
                             "the style prompt computed from these crops")
        mixed = _mix(style.style, fidelity)
    pipeline = _activate(handle, count, extra)
    progress = Progress(PROGRESS_PER_FACE * count, callback)
    out = []
    for a, b in _slices(count, host.chunk_size(pipeline.device, pipeline.chunk_size)):
        part = None if mixed is None else StylePrompts(mixed.encoder_ws[a:b], mixed.prompts[a:b])
        restored, _ = pipeline.restore_faces(rgb[a:b], part, options=options, face_keys=keys[a:b], progress=progress)
        out.append(restored.float().to(device_out))
    host.soft_empty_cache()
    return torch.cat(out).permute(0, 2, 3, 1).contiguous()


# -- paste-back ------------------------------------------------------------------------------------------------------

def paste(images: torch.Tensor, faces: FaceSet, restored: torch.Tensor, *, visibility: float = 1.0,
          feather: float | None = None, mask_shape: str = "square", color_correction: str = "none",
          upscale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend restored crops into the original IMAGE batch -> (IMAGE, MASK of the pasted area)."""
    from ..vspbfr_core.face import paste_faces

    check_choice(color_correction, "color_correction", COLOR_CORRECTIONS)
    check_choice(mask_shape, "mask_shape", MASK_SHAPES)
    RestoreOptions(visibility=visibility, feather=feather, upscale=upscale).validate()
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
    _ensure_paste_memory(images, float(upscale), rgb.device)
    kwargs: dict[str, Any] = dict(visibility=visibility, mask_shape=mask_shape, upscale=upscale,
                                  color_correction=None if color_correction == "none" else color_correction)
    if feather is not None:
        kwargs["feather"] = feather
    with memory.guard("paste", rgb.device, MEMORY_ADVICE):
        out, mask = paste_faces(rgb.float(), crops.float().to(rgb.device), faces.aligned, **kwargs)
        device = host.intermediate_device()
        return to_host(out, layout).to(device), mask.float().to(device)


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
                 callback: Any = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The all-in-one node: detect, restore and paste, with crops at the model's resolution."""
    _check_handle(handle)
    check_choice(detector, "facedetection", DETECTORS)
    check_bool(only_center_face, "only_center_face")
    RestoreOptions(seed=seed, prompt_mix=fidelity, visibility=visibility, upscale=upscale, selection=selection,
                   threshold=threshold, keep_gray=keep_gray).validate()
    _ensure_paste_memory(images, float(upscale), host.intermediate_device())     # before any detection work
    loaded = get_detector(detector)
    handle.detector = loaded            # lives as long as the loader node's cached output (see LoadedDetector)
    faces = find_faces(images, loaded.name, threshold=threshold,
                       selection="center" if only_center_face else selection, size=handle.resolution,
                       callback=callback, extra=[handle.patcher])
    restored = torch.zeros(0, handle.resolution, handle.resolution, 3)
    if len(faces):
        crops = faces.aligned.crops.permute(0, 2, 3, 1)
        restored = restore_crops(handle, crops, seed=seed, fidelity=fidelity, faces=faces, keep_gray=keep_gray,
                                 callback=callback, extra=[loaded.patcher])
    out, mask = paste(images, faces, restored, visibility=visibility, upscale=upscale)
    return out, mask, len(faces)


# -- previews for web/js/vspbfr.js -----------------------------------------------------------------------------------

def detect_preview(images: torch.Tensor, faces: FaceSet) -> dict[str, list]:
    """UI data of the detect node: the first frame and its faces (boxes in image pixels, index, score)."""
    h, w = images.shape[1:3]
    first = [f for f in faces.detections.to_json() if f["image"] == 0]
    return {"vspbfr_faces": [{
        "image": host.save_preview(images[0], "vspbfr_detect"), "width": int(w), "height": int(h),
        "frames": int(images.shape[0]), "count": len(faces),
        "faces": [{"index": f["index"], "box": f["box"], "score": f["score"]} for f in first],
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

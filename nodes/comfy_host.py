"""Everything the VSPBFR nodes need from ComfyUI, in one place: the only module that imports ``comfy`` or
``folder_paths`` (style guide, section 5).

* Model folders: ``vspbfr`` (our networks), ``facedetection`` (RetinaFace, shared with facerestore_cf, ReActor,
  GPEN...) and ``facexlib`` (the optional ArcFace identity network, where PuLID and other packs keep facexlib's
  files) are registered append-safely: an entry that already exists (from ``extra_model_paths.yaml`` or another
  pack) keeps its folders and gets ours added at the end.  Nothing is downloaded, ever.
* Devices and precision: ``model_management`` decides (``--cpu``, ``--gpu-only``, fp16/bf16 support).
* Memory: each network bundle is wrapped in a ``ModelPatcher`` and loaded with ``load_models_gpu`` plus an
  activation estimate, so ComfyUI offloads an SD model to make room and "Unload models" frees ours.
* Progress and interrupts: one callback per unit of work that updates a ``ProgressBar`` and raises ComfyUI's
  ``InterruptProcessingException`` after the user pressed Cancel.
* Previews: PNGs in ComfyUI's temp folder for the web extension (``web/js/vspbfr.js``).

Works with ComfyUI from early 2024 (the core CI runs against) to the V3-era releases: only functions present in both
are used, and ``add_model_folder_path`` is not (its signature changed).
"""
from __future__ import annotations

import logging
import os
import random
import string
from collections.abc import Iterable, Sequence
from typing import Any

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..vspbfr_core.errors import InputError

log = logging.getLogger(__name__)

MODEL_FOLDER = "vspbfr"                                # models/vspbfr: the three VSPBFR networks
DETECTOR_FOLDERS = ("facedetection", "facexlib")       # RetinaFace weights users already have, searched first
IDENTITY_FOLDERS = ("facexlib", MODEL_FOLDER)          # recognition_arcface_ir_se50.pth: facexlib's folder first
MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors")
PREVIEW_MAX_SIDE = 1024                                # previews for the web extension are at most this large
ACTIVATION_VALUES_PER_PIXEL = 512                      # rough activation estimate per face pixel (see memory_estimate)

InterruptProcessingException = model_management.InterruptProcessingException


# -- model folders ---------------------------------------------------------------------------------------------------

def register_folder(name: str, path: str, extensions: Iterable[str] = MODEL_EXTENSIONS) -> None:
    """Add ``path`` to the model folder ``name`` without dropping what is registered already.

    A new name gets ``([path], extensions)``.  An existing entry keeps its folders (``extra_model_paths.yaml`` entries
    and other packs' folders stay first) and its extension set: an empty set means "every file" and stays empty.
    """
    table = folder_paths.folder_names_and_paths
    entry = table.get(name)
    if entry is None:
        table[name] = ([path], set(extensions))
        return
    dirs, exts = list(entry[0]), entry[1]
    if path not in dirs:
        dirs.append(path)
    if exts:
        exts = set(exts) | set(extensions)
    table[name] = (dirs, exts)


def register_model_folders() -> None:
    """Register ``models/vspbfr``, ``models/facedetection`` and ``models/facexlib`` (append-safe; creates no
    folder)."""
    for name in (MODEL_FOLDER, DETECTOR_FOLDERS[0], IDENTITY_FOLDERS[0]):
        register_folder(name, os.path.join(folder_paths.models_dir, name))


PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # custom_nodes/<this pack>


def download_command(folder: str, detector: str | None = None, only: str | None = None) -> str:
    """The command that fetches model files into ``folder`` from ComfyUI's own Python (its venv has no ``vspbfr``
    script on the PATH, and ``vspbfr_core`` is importable from the pack's folder only)."""
    import sys

    command = f'cd "{PACK_DIR}" && "{sys.executable}" -m vspbfr_core download --models "{folder}"'
    if only is not None:
        command += f" --only {only}"
    if detector is not None:
        command += f" --detector {detector}"
    return command


def install_hints() -> None:
    """Messages of vspbfr_core about model files give ComfyUI's command and model folder."""
    from ..vspbfr_core.paths import HostHints, set_host_hints

    set_host_hints(HostHints(
        download=lambda folder, detector, only_detector: download_command(
            str(folder), detector, "detector" if only_detector else None),
        choose_folder=f"ComfyUI's '{MODEL_FOLDER}' model folder (models/{MODEL_FOLDER}, or a '{MODEL_FOLDER}:' line in "
                      "extra_model_paths.yaml; press R in the browser after adding files)",
        download_identity=lambda folder: download_command(str(folder), None, "identity")))


def model_dirs() -> list[str]:
    """The folders of the ``vspbfr`` model folder, in search order."""
    return list(folder_paths.get_folder_paths(MODEL_FOLDER))


def _folder_dirs(names: Iterable[str]) -> list[str]:
    """The registered folders of each model folder name (plus its default ``models/<name>``), in order, once each."""
    out: list[str] = []
    for name in names:
        entry = folder_paths.folder_names_and_paths.get(name)
        dirs = list(entry[0]) if entry is not None else []
        dirs.append(os.path.join(folder_paths.models_dir, name))
        out.extend(d for d in dirs if d not in out)
    return out


def detector_dirs() -> list[str]:
    """Where RetinaFace weights are looked for: ``facedetection``, then ``facexlib``, then ``vspbfr``."""
    return _folder_dirs(DETECTOR_FOLDERS + (MODEL_FOLDER,))


def parsing_dirs() -> list[str]:
    """Where the face-parsing networks (parsing_parsenet.pth, parsing_bisenet.pth) are looked for: ``facedetection``
    (where facerestore_cf keeps facexlib's files), ``facexlib``, then ``vspbfr``."""
    return _folder_dirs(DETECTOR_FOLDERS + (MODEL_FOLDER,))


def identity_dirs() -> list[str]:
    """Where the ArcFace identity network is looked for: ``facexlib`` (other face packs keep it there), then
    ``vspbfr``; a missing file's download command targets the first of them."""
    return _folder_dirs(IDENTITY_FOLDERS)


def model_file_names() -> list[str]:
    """Every network file in the ``vspbfr`` folder (detector weights left out), as the combo widgets list them."""
    try:
        names = folder_paths.get_filename_list(MODEL_FOLDER)
    except Exception:  # a folder that vanished or cannot be listed must not break /object_info
        log.warning("cannot list the %r model folder", MODEL_FOLDER, exc_info=True)
        return []
    return sorted(n for n in names if os.path.splitext(n)[1].lower() in MODEL_EXTENSIONS
                  and not os.path.basename(n).startswith(("detection_", "parsing_")))


def resolve_model_file(name: str) -> str:
    """The path of ``name`` in the ``vspbfr`` folders; a missing file raises naming it, the folders and the fix."""
    from ..vspbfr_core.paths import find_model_file

    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is not None:
        return path
    # also accepts the converted .safetensors twin; a missing file names the folders and ComfyUI's download command
    return str(find_model_file(name, model_dirs()))


# -- devices, precision, memory --------------------------------------------------------------------------------------

def torch_device() -> torch.device:
    return model_management.get_torch_device()


def offload_device() -> torch.device:
    return model_management.unet_offload_device()


def intermediate_device() -> torch.device:
    return model_management.intermediate_device()


def choose_dtype(precision: str, device: torch.device, num_params: int) -> torch.dtype:
    """``precision`` ("auto", "fp32", "fp16", "bf16") -> dtype; auto follows ComfyUI's fp16/bf16 policy."""
    fixed = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision in fixed:
        return fixed[precision]
    if precision != "auto":
        raise InputError(f"precision {precision!r}: use auto, fp32, fp16 or bf16")
    if model_management.should_use_fp16(device, model_params=num_params):
        return torch.float16
    if model_management.should_use_bf16(device, model_params=num_params):
        return torch.bfloat16
    return torch.float32


def wrap_model(module: torch.nn.Module, size_bytes: int) -> Any:
    """A ``ModelPatcher`` for ``module`` (living on the offload device) so the memory manager can place and free it."""
    return comfy.model_patcher.ModelPatcher(module, load_device=torch_device(), offload_device=offload_device(),
                                            size=int(size_bytes))


def load_models(patchers: Sequence[Any], memory_required: int = 0) -> torch.device:
    """Put the wrapped networks on the device, offloading other models as needed; returns the device."""
    model_management.load_models_gpu(list(patchers), memory_required=int(memory_required))
    return torch_device()


def memory_estimate(faces: int, resolution: int, dtype: torch.dtype) -> int:
    """Bytes of activations for ``faces`` faces at ``resolution`` (a conservative guess, not a measurement)."""
    elem = torch.finfo(dtype).bits // 8
    return int(max(1, faces) * resolution * resolution * ACTIVATION_VALUES_PER_PIXEL * elem)


def soft_empty_cache() -> None:
    model_management.soft_empty_cache()


def chunk_size(device: torch.device, default: int) -> int:
    """Faces per network call: one on the CPU (so Cancel acts within one face), ``default`` elsewhere."""
    return 1 if torch.device(device).type == "cpu" else max(1, int(default))


class Progress:
    """The core's ``callback(done, total, stage)`` as a ComfyUI progress bar that is also the interrupt point."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        model_management.throw_exception_if_processing_interrupted()
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total)
        self.bar.update_absolute(done, total)


def check_interrupted() -> None:
    model_management.throw_exception_if_processing_interrupted()


# -- LATENT / VAE ----------------------------------------------------------------------------------------------------

def vae_decode(vae: Any, latent: dict) -> torch.Tensor:
    """LATENT -> IMAGE ``[B, H, W, C]`` with the workflow's VAE (video VAEs' 5-d output is flattened to frames)."""
    if vae is None:
        raise InputError("a LATENT input needs the VAE input too (connect the VAE that made the latent)")
    images = vae.decode(latent["samples"])
    if images.dim() == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images


def vae_encode(vae: Any, images: torch.Tensor) -> dict:
    """IMAGE -> LATENT with the workflow's VAE, cropping to a multiple of its compression factor like VAEEncode."""
    factor = vae.spacial_compression_encode() if hasattr(vae, "spacial_compression_encode") \
        else getattr(vae, "downscale_ratio", 8)
    factor = int(factor) if isinstance(factor, int) else 8
    h, w = (images.shape[1] // factor) * factor, (images.shape[2] // factor) * factor
    if (h, w) != tuple(images.shape[1:3]):
        y, x = (images.shape[1] % factor) // 2, (images.shape[2] % factor) // 2
        images = images[:, y:y + h, x:x + w, :]
    return {"samples": vae.encode(images[:, :, :, :3])}


def output_is_linked(prompt: dict | None, unique_id: Any, slot: int) -> bool:
    """Whether output ``slot`` of node ``unique_id`` feeds any input in the (API-format) prompt."""
    if not prompt or unique_id is None:
        return False
    uid = str(unique_id)
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == uid and value[1] == slot:
                return True
    return False


# -- previews for the web extension ----------------------------------------------------------------------------------

def save_preview(image_hwc: torch.Tensor, prefix: str = "vspbfr") -> dict[str, str]:
    """Write one IMAGE frame ``[H, W, C]`` as a PNG in the temp folder; returns ``{filename, subfolder, type}``."""
    import numpy as np
    from PIL import Image

    x = image_hwc.detach().float().cpu()[..., :3]
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, 3)
    h, w = x.shape[:2]
    if max(h, w) > PREVIEW_MAX_SIDE:
        s = PREVIEW_MAX_SIDE / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = torch.nn.functional.interpolate(x.permute(2, 0, 1)[None], size=size, mode="bilinear",
                                            antialias=True, align_corners=False)[0].permute(1, 2, 0)
    array = (x.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    temp_dir = folder_paths.get_temp_directory()
    tag = "".join(random.choice(string.ascii_lowercase) for _ in range(6))
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(f"{prefix}_{tag}", temp_dir,
                                                                               array.shape[1], array.shape[0])
    os.makedirs(folder, exist_ok=True)
    file = f"{filename}_{counter:05}_.png"
    Image.fromarray(array).save(os.path.join(folder, file), compress_level=1)
    return {"filename": file, "subfolder": subfolder, "type": "temp"}

"""VSPBFRPipeline: whole images in, every chosen face restored and pasted back.

Paper: VSPBFR, Pattern Recognition 2025 (the restoration of Sec. 3 applied to faces found in
arbitrary images).  Each numbered stage below is also a public method, because the ComfyUI graph
blocks call them one by one:

1. ``detect``: IMAGE ``[B, H, W, C]`` in [0, 1] -> :class:`~vspbfr_core.face.Detections`;
2. ``align``: 5-point similarity warp to the FFHQ template -> crops ``[F, 3, 512, 512]`` in [0, 1];
3. ``encode``: crops -> encoder W+ ``[F, 18, 512]``;
4. ``diffuse``: W+ -> visual style prompts (4-step W+ DDPM, always float32 or wider);
5. ``feature_bank``: prompts -> StyleGAN2 features 4..512;
6. ``restore_faces``: crops + bank + prompts -> restored crops in [0, 1];
7. ``paste``: inverse warp, feathered blend, optional colour correction and upscale.

Randomness: the noise of face ``k`` of image ``b`` comes from ``make_generator(seed, k)``, so an
image restores the same way whatever batch it is in.  Faces are processed in chunks; a chunk that
runs out of memory is halved and retried.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, UnsupportedDtypeError, VSPBFRError
from .model import RestoreNoise, VSPBFRModel
from .progress import Progress, ProgressCallback
from .rng import make_generator

__all__ = ["VSPBFRPipeline", "RestoreOptions", "RestoreResult", "StylePrompts", "load_pipeline"]

log = logging.getLogger(__name__)

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class RestoreOptions:
    """Every knob of a restoration; each default is the official behaviour (or a no-op)."""

    seed: int = 0                              # per-face noise: make_generator(seed, face index in its image)
    # face selection (see vspbfr_core.face.detect_faces)
    threshold: float | None = None             # detector score threshold (None: the detector default, 0.97)
    min_size: float = 0.0                      # ignore faces whose box short side is below this (input pixels)
    max_faces: int = 0                         # at most this many faces per image, largest first (0: no limit)
    selection: str = "all"                     # "all" | "largest" | "center" | "0,2" (indices in `order`)
    order: str = "left-right"                  # "left-right" | "top-bottom" | "area" | "score"
    detect_size: int = 640                     # detection runs on a copy whose long side is at most this
    # fidelity
    prompt_mix: float = 1.0                    # style prompt = lerp(encoder W+, diffused W+, prompt_mix); 1: official
    bank_scale: float = 1.0                    # scale of the StyleGAN feature-bank term in the decoder; 1: official
    # paste-back
    visibility: float = 1.0                    # 1: restored face; 0: original face
    color_correction: str | None = None        # None | "meanstd" | "wavelet": match the restored face's colours
    mask_shape: str = "square"                 # "square" (eroded + blurred, as facexlib) | "ellipse"
    feather: float | None = None               # soft-mask blur, in crop pixels at 512 (None: default)
    upscale: float = 1.0                       # whole-image scale factor of the output

    def validate(self) -> None:
        if not 0.0 <= self.visibility <= 1.0:
            raise InputError(f"visibility must lie in [0, 1], got {self.visibility}")
        if not 0.0 <= self.prompt_mix <= 1.0:
            raise InputError(f"prompt_mix must lie in [0, 1], got {self.prompt_mix}")
        if not 0.0 <= self.bank_scale <= 4.0:
            raise InputError(f"bank_scale must lie in [0, 4], got {self.bank_scale}")
        if not 1.0 <= self.upscale <= 8.0:
            raise InputError(f"upscale must lie in [1, 8], got {self.upscale}")


@dataclass
class StylePrompts:
    """W+ codes of a face batch: what the encoder saw and the diffused visual style prompts."""

    encoder_ws: torch.Tensor                   # [F, num_ws, w_dim]
    prompts: torch.Tensor                      # [F, num_ws, w_dim]


@dataclass
class RestoreResult:
    images: torch.Tensor                       # [B, H', W', C] in [0, 1], the host's channel layout
    masks: torch.Tensor                        # [B, H', W'] pasted area in [0, 1]
    detections: Any                            # vspbfr_core.face.Detections (F faces)
    crops: torch.Tensor                        # [F, 3, R, R] aligned input faces in [0, 1]
    restored_crops: torch.Tensor               # [F, 3, R, R] restored faces in [0, 1]
    style: StylePrompts | None = None
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def faces_found(self) -> int:
        return int(self.crops.shape[0])


def _is_oom(exc: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class VSPBFRPipeline:
    """Owns the VSPBFR networks and (optionally) a face detector; runs on one device and dtype."""

    def __init__(self, model: VSPBFRModel, detector: nn.Module | None = None, *, chunk_size: int = 4,
                 low_memory: bool = False, offload_device: torch.device | str = "cpu",
                 compile: bool | dict[str, Any] = False, allow_tf32: bool = False):
        self.model = model.eval()
        self.model.allow_tf32 = allow_tf32     # CUDA float32 bank + restoration in TF32 (see VSPBFRModel)
        if compile:     # opt-in torch.compile; a dict holds torch.compile options (mode, backend, dynamic)
            self.model.compile_networks(**(compile if isinstance(compile, dict) else {}))
        self.detector = detector.eval() if detector is not None else None
        self.chunk_size = max(1, int(chunk_size))
        self.low_memory = low_memory
        self.offload_device = torch.device(offload_device)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, models_dir: str | os.PathLike[str] | None = None, *,
                 detector: str | None = "retinaface_resnet50", detector_dir: str | os.PathLike[str] | None = None,
                 files: dict[str, str | os.PathLike[str]] | None = None, **kwargs: Any) -> VSPBFRPipeline:
        """Load the three VSPBFR files (official ``.pt`` or converted ``.safetensors``) and a detector.

        ``files`` may name explicit paths per kind (``style_encoder_decoder``, ``code_diffuser``,
        ``restoration_net``); the rest are looked up in ``models_dir`` (default: see
        :func:`vspbfr_core.paths.resolve_models_dir`).  ``detector=None`` builds a pipeline for
        already-aligned faces only.
        """
        from .checkpoints import load_checkpoint
        from .paths import find_model_file, resolve_models_dir

        root = resolve_models_dir(models_dir)
        files = dict(files or {})
        loaded = {}
        for kind in ("style_encoder_decoder", "code_diffuser", "restoration_net"):
            path = Path(files[kind]) if kind in files else find_model_file(kind, [root])
            loaded[kind] = load_checkpoint(path, expect=kind)  # type: ignore[arg-type]
        model = VSPBFRModel(loaded["style_encoder_decoder"].networks["style_encoder"],
                            loaded["style_encoder_decoder"].networks["stylegan"],
                            loaded["code_diffuser"].networks["code_diffuser"],
                            loaded["restoration_net"].networks["restoration_net"])
        det = None
        if detector is not None:
            from .face import load_detector
            from .paths import find_model_file as _find
            det_path = _find(detector, [root], detector_dir=detector_dir)
            det = load_detector(detector, [det_path.parent])
        return cls(model, det, **kwargs)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VSPBFRPipeline:
        """Move to ``device`` and run in ``dtype``; the W+ diffusion and mapping MLP stay in float32."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if dtype not in (torch.float32, torch.float64, *HALF_DTYPES):
            raise UnsupportedDtypeError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        if device.type == "cpu" and dtype == torch.float16:
            raise UnsupportedDtypeError("float16 is not supported on CPU (too slow and inaccurate); use float32 or "
                                        "bfloat16")
        self.device, self.dtype = device, dtype
        self.model.set_precision(dtype, device if not self.low_memory else self.offload_device)
        if self.detector is not None:
            self.detector.to(device)
        return self

    def _use(self, *names: str) -> None:
        """Low-memory mode: only the named networks on the device, the others on the offload device."""
        if not self.low_memory:
            return
        for name in ("style_encoder", "stylegan", "code_diffuser", "restoration_net"):
            net = getattr(self.model, name)
            target = self.device if name in names else self.offload_device
            if next(net.parameters()).device != target:
                net.to(target)            # device only: dtypes were settled by set_precision

    # -- stages ------------------------------------------------------------------------------------

    def detect(self, images: torch.Tensor, options: RestoreOptions | None = None) -> Any:
        from .face import Detections, detect_faces

        if self.detector is None:
            raise VSPBFRError("this pipeline has no face detector; build it with detector=... or pass aligned faces")
        o = options or RestoreOptions()
        kwargs: dict[str, Any] = dict(min_size=o.min_size, max_faces=o.max_faces, selection=o.selection,
                                      order=o.order, detect_size=o.detect_size)
        if o.threshold is not None:
            kwargs["threshold"] = o.threshold
        images = images.to(self.device)
        if images.shape[0] == 1:
            return detect_faces(self.detector, images, **kwargs)
        # One image at a time: batched convolutions may round differently, and a landmark that moves by
        # 1e-5 px changes the aligned crop, so an image would restore differently in another batch.
        parts = [detect_faces(self.detector, images[i:i + 1], **kwargs) for i in range(images.shape[0])]
        return Detections.concat(parts)

    def align(self, images_bchw: torch.Tensor, detections: Any) -> Any:
        from .face import align_faces

        return align_faces(images_bchw.to(self.device), detections.to(self.device), size=self.model.resolution)

    def _signed(self, crops: torch.Tensor) -> torch.Tensor:
        r = self.model.resolution
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise InputError(f"aligned faces must be [F, 3, H, W], got {tuple(crops.shape)}")
        x = crops.to(self.device, torch.promote_types(self.dtype, torch.float32))   # the encoder runs wide
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bicubic", antialias=True, align_corners=False)
        return (x * 2.0 - 1.0).clamp(-1.0, 1.0)

    def noise_for(self, face_keys: Sequence[int], seed: int) -> RestoreNoise:
        """Noise for faces whose generator index is ``face_keys[i]`` (their index within their image)."""
        return self.model.draw_noise_per_face([make_generator(seed, k) for k in face_keys])

    @torch.inference_mode()
    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """Aligned crops ``[F, 3, R, R]`` in [0, 1] -> encoder W+ ``[F, num_ws, w_dim]``."""
        self._use("style_encoder")
        return self._chunked(lambda a, b: self.model.encode(self._signed(crops[a:b])), crops.shape[0])

    @torch.inference_mode()
    def diffuse(self, ws: torch.Tensor, noise: RestoreNoise) -> torch.Tensor:
        self._use("code_diffuser")
        return self.model.diffuse(ws.to(self.device), noise.x_T.to(self.device))

    @torch.inference_mode()
    def style_prompts(self, crops: torch.Tensor, noise: RestoreNoise, prompt_mix: float = 1.0) -> StylePrompts:
        ws = self.encode(crops)
        prompts = self.diffuse(ws, noise)
        if prompt_mix != 1.0:
            prompts = torch.lerp(ws.to(prompts.dtype), prompts, prompt_mix)
        return StylePrompts(ws, prompts)

    @torch.inference_mode()
    def restore_faces(self, crops: torch.Tensor, style: StylePrompts | None = None, *, seed: int = 0,
                      face_keys: Sequence[int] | None = None, options: RestoreOptions | None = None,
                      callback: ProgressCallback | None = None, progress: Progress | None = None
                      ) -> tuple[torch.Tensor, StylePrompts]:
        """Aligned crops ``[F, 3, R, R]`` in [0, 1] -> restored crops ``[F, 3, R, R]`` in [0, 1].

        ``style`` (from :meth:`style_prompts`) is computed when absent.  ``face_keys`` are the
        per-face generator indices (default ``0..F-1``).
        """
        o = options or RestoreOptions(seed=seed)
        n = crops.shape[0]
        keys = list(face_keys) if face_keys is not None else list(range(n))
        progress = progress or Progress(3 * n, callback)
        if n == 0:
            r = self.model.resolution
            empty = crops.new_zeros(0, 3, r, r)
            return empty, StylePrompts(empty.new_zeros(0, 1, 1), empty.new_zeros(0, 1, 1))
        noise = self.noise_for(keys, o.seed)
        if style is None:
            ws = self.encode(crops)
            progress.step("encode", n)
            prompts = self.diffuse(ws, noise)
            progress.step("diffuse", n)
            if o.prompt_mix != 1.0:
                prompts = torch.lerp(ws.to(prompts.dtype), prompts, o.prompt_mix)
            style = StylePrompts(ws, prompts)
        else:
            progress.step("style", 2 * n)
        self._use("stylegan", "restoration_net")
        noise = noise.to(self.device, self.dtype)

        def run(a: int, b: int) -> torch.Tensor:
            part = noise.slice(a, b)
            prompts = style.prompts[a:b].to(self.device, self.dtype)
            bank, _ = self.model.feature_bank(prompts, part.stylegan)
            out = self.model.restore(self._signed(crops[a:b]), bank, prompts, part, o.bank_scale)
            progress.step("restore", b - a)
            return ((out.float() + 1.0) * 0.5).clamp(0.0, 1.0)

        return self._chunked(run, n), style

    def _chunked(self, fn: Callable[[int, int], torch.Tensor], n: int) -> torch.Tensor:
        """Run ``fn(start, stop)`` over chunks of faces, halving the chunk on out-of-memory."""
        outs: list[torch.Tensor] = []
        start, chunk = 0, self.chunk_size
        while start < n:
            stop = min(n, start + chunk)
            try:
                outs.append(fn(start, stop))
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                if chunk == 1:
                    raise VSPBFRError(
                        f"out of memory on {self.device} even with one face at a time ({exc}). Free memory (unload "
                        "other models), use low-memory mode, a lower precision, or the CPU.") from exc
                chunk = max(1, chunk // 2)
                log.warning("out of memory with %d faces per chunk; retrying with %d", stop - start, chunk)
                self._empty_cache()
                continue
            start = stop
        return torch.cat(outs) if outs else torch.zeros(0)

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def paste(self, images_bchw: torch.Tensor, restored: torch.Tensor, aligned: Any,
              options: RestoreOptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from .face import paste_faces

        o = options or RestoreOptions()
        kwargs: dict[str, Any] = dict(visibility=o.visibility, mask_shape=o.mask_shape,
                                      color_correction=o.color_correction, upscale=o.upscale)
        if o.feather is not None:
            kwargs["feather"] = o.feather
        return paste_faces(images_bchw.to(self.device), restored.to(self.device, images_bchw.dtype), aligned, **kwargs)

    # -- the whole job -----------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, options: RestoreOptions | None = None, *,
                 callback: ProgressCallback | None = None, **overrides: Any) -> RestoreResult:
        """Restore every selected face of an IMAGE batch ``[B, H, W, C]`` in [0, 1] (C = 1, 3 or 4)."""
        from .image import from_host, to_host

        o = replace(options or RestoreOptions(), **overrides)
        o.validate()
        rgb, layout = from_host(images)
        rgb = rgb.to(self.device, torch.float32)
        # 1. detect
        dets = self.detect(images, o)
        n = len(dets)
        progress = Progress(3 * n + 2, callback)
        progress.step("detect")
        if n == 0:
            log.info("no face selected in %d image(s); returning them unchanged", images.shape[0])
            out = rgb
            if o.upscale != 1.0:
                out, _ = self.paste(rgb, rgb.new_zeros(0, 3, self.model.resolution, self.model.resolution),
                                    self.align(rgb, dets), o)
            h, w = out.shape[-2:]
            r = self.model.resolution
            progress.step("paste")
            return RestoreResult(to_host(out, layout).cpu(), torch.zeros(images.shape[0], h, w), dets,
                                 torch.zeros(0, 3, r, r), torch.zeros(0, 3, r, r), None, o.seed)
        # 2. align
        aligned = self.align(rgb, dets)
        # 3-6. encode, diffuse, feature bank, restore (face key = index of the face within its image)
        keys = dets.order_index.tolist()
        restored, style = self.restore_faces(aligned.crops, options=o, face_keys=keys, progress=progress)
        # 7. paste
        out, masks = self.paste(rgb, restored, aligned, o)
        progress.step("paste")
        return RestoreResult(to_host(out, layout).cpu(), masks.float().cpu(), dets.to("cpu"), aligned.crops.float().cpu(),
                             restored.cpu(), style, o.seed)

    @torch.inference_mode()
    def restore_aligned(self, faces: torch.Tensor, options: RestoreOptions | None = None, *,
                        callback: ProgressCallback | None = None, **overrides: Any) -> RestoreResult:
        """Already-aligned faces (IMAGE ``[F, H, W, C]``, square) -> restored faces at the same size."""
        from .image import from_host, to_host

        o = replace(options or RestoreOptions(), **overrides)
        o.validate()
        rgb, layout = from_host(faces)
        if rgb.shape[-1] != rgb.shape[-2]:
            raise InputError(f"aligned faces must be square, got {rgb.shape[-2]}x{rgb.shape[-1]}")
        restored, style = self.restore_faces(rgb, options=o, callback=callback)
        out = restored.to(rgb.device)
        if out.shape[-2:] != rgb.shape[-2:]:
            out = F.interpolate(out, size=rgb.shape[-2:], mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        if o.visibility != 1.0:
            out = torch.lerp(rgb.float(), out.float(), o.visibility)
        h, w = out.shape[-2:]
        return RestoreResult(to_host(out.to(rgb.dtype), layout).cpu(), torch.ones(rgb.shape[0], h, w), None, rgb.cpu(),
                             restored.cpu(), style, o.seed)


def load_pipeline(models_dir: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, **kwargs: Any) -> VSPBFRPipeline:
    """Convenience: :meth:`VSPBFRPipeline.from_dir` then ``.to(device, dtype)``."""
    return VSPBFRPipeline.from_dir(models_dir, **kwargs).to(device, dtype)

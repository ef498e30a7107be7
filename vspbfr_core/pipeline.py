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

Reliability rules (every public method):

* Inputs are checked before any work: face crops must be float tensors ``[F, 3, H, W]`` in [0, 1]
  (uint8, 0..255 data, NumPy arrays, lists, NaN / inf are an :class:`~vspbfr_core.errors.InputError`
  saying so, through :func:`vspbfr_core.image.check_bchw`); ``options`` must be a :class:`RestoreOptions`
  (a dict is refused, keyword overrides must be field names) and :meth:`RestoreOptions.validate` checks
  the type and range of every field; devices go through :func:`vspbfr_core.devices.resolve_device`.
* NaN never becomes a picture: each network stage checks its output (see :mod:`vspbfr_core.model`) and
  raises :class:`~vspbfr_core.errors.NonFiniteError` naming the stage, the network and its model file
  (kept by :meth:`VSPBFRPipeline.from_dir` in ``model.weight_files`` and ``detector.weights_file``).
* Memory: whole-image work (paste-back, upscale, the host copy) is estimated before it starts and refused
  with :class:`~vspbfr_core.errors.InsufficientMemoryError` (the size needed, the size available and what to
  do) when it cannot fit (see :mod:`vspbfr_core.memory`); an out-of-memory error that still happens is
  turned into the same error.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import memory
from .checks import check_bool, check_choice, check_float, check_int, describe_value
from .devices import resolve_device
from .errors import InputError, InsufficientMemoryError, UnsupportedDtypeError, VSPBFRError
from .face import DEFAULT_MASK_SHAPE
from .image import check_bchw
from .model import RestoreNoise, VSPBFRModel
from .progress import Progress, ProgressCallback
from .rng import make_generator

__all__ = ["VSPBFRPipeline", "RestoreOptions", "RestoreResult", "StylePrompts", "load_pipeline"]

log = logging.getLogger(__name__)

HALF_DTYPES = (torch.float16, torch.bfloat16)
GRAY_TOLERANCE = 2.0 / 255.0      # a crop whose channels differ by at most this everywhere is a gray face
MODEL_KINDS = ("style_encoder_decoder", "code_diffuser", "restoration_net")
PROGRESS_PER_FACE = 4             # progress units per face: encode, diffuse, feature bank, restore
MAX_CANDIDATES = 64               # best-of-N: at most this many candidates per face


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
    mask_shape: str = DEFAULT_MASK_SHAPE       # "square" (eroded + blurred, as facexlib) | "ellipse" | "landmarks"
                                               # | "parsing" (a face-parsing network: VSPBFRPipeline.parser)
    mask_parts: str | None = None              # parsing: the face parts pasted (face.parsing.parse_parts; None: all)
    feather: float | None = None               # soft-mask blur, in crop pixels at 512 (None: default)
    upscale: float = 1.0                       # whole-image scale factor of the output
    # gray inputs: a face whose crop has equal R, G, B (within GRAY_TOLERANCE) is restored in gray (BT.601 luma
    # of the network's colour output); False: keep the colours the network gives it
    keep_gray: bool = True
    # identity (vspbfr_core.identity.select; they need an identity embedder, and the last three a reference)
    candidates: int = 1                        # best-of-N: restore each face N times, keep the most similar one
    only_matching: bool = False                # restore only the faces that match the reference
    match_threshold: float | None = None       # identity needed to match (None: the embedder's default)
    reference_mix: float = 0.0                 # move the style prompt this far toward the reference's W+ (0: off)
    reference_layers: str = "middle"           # the W+ layers the reference mix moves (see identity.select)

    def validate(self) -> None:
        """Check the type and range of every field; all problems are reported in one InputError.

        Integers (``seed``, ``max_faces``, ``detect_size``) must be ints (not bool, float or str); numbers accept
        ints and floats but not bool, NaN or inf; enumerations are strings from the listed values.  Ranges:
        threshold in (0, 1] (or None), min_size >= 0, max_faces >= 0, detect_size >= 0 (0: full size),
        prompt_mix and visibility in [0, 1], bank_scale in [0, 4], upscale in [1, 8], feather in [0, 230] (or
        None); selection as :func:`vspbfr_core.face.detect.parse_selection` reads it; candidates in [1, 64],
        match_threshold in [-1, 1] (or None), reference_mix in [0, 1], reference_layers as
        :func:`vspbfr_core.identity.select.parse_layers` reads it.
        """
        from .identity.select import parse_layers
        from .face.detect import ORDERS, parse_selection
        from .face.masks import MASK_SHAPES
        from .face.parsing import parse_parts
        from .face.paste import FEATHER_MAX

        def selection() -> None:
            if not isinstance(self.selection, str):
                raise InputError(f"selection: expected a string ('all', 'largest', 'center' or face indices such "
                                 f"as '0,2'), got {describe_value(self.selection)}")
            parse_selection(self.selection)

        checks: list[Callable[[], Any]] = [
            lambda: check_int(self.seed, "seed"),
            lambda: self.threshold is None or check_float(self.threshold, "threshold", minimum=0.0, maximum=1.0,
                                                          min_open=True),
            lambda: check_float(self.min_size, "min_size", minimum=0.0),
            lambda: check_int(self.max_faces, "max_faces", minimum=0),
            selection,
            lambda: check_choice(self.order, "order", ORDERS),
            lambda: check_int(self.detect_size, "detect_size", minimum=0),
            lambda: check_float(self.prompt_mix, "prompt_mix", minimum=0.0, maximum=1.0),
            lambda: check_float(self.bank_scale, "bank_scale", minimum=0.0, maximum=4.0),
            lambda: check_float(self.visibility, "visibility", minimum=0.0, maximum=1.0),
            lambda: check_choice(self.color_correction, "color_correction", ("meanstd", "wavelet"), allow_none=True),
            lambda: check_choice(self.mask_shape, "mask_shape", MASK_SHAPES),
            lambda: self.mask_parts is None or parse_parts(self.mask_parts),
            lambda: self.feather is None or check_float(self.feather, "feather", minimum=0.0, maximum=FEATHER_MAX),
            lambda: check_float(self.upscale, "upscale", minimum=1.0, maximum=8.0),
            lambda: check_bool(self.keep_gray, "keep_gray"),
            lambda: check_int(self.candidates, "candidates", minimum=1, maximum=MAX_CANDIDATES),
            lambda: check_bool(self.only_matching, "only_matching"),
            lambda: self.match_threshold is None or check_float(self.match_threshold, "match_threshold",
                                                                minimum=-1.0, maximum=1.0),
            lambda: check_float(self.reference_mix, "reference_mix", minimum=0.0, maximum=1.0),
            lambda: parse_layers(self.reference_layers),
        ]
        problems = []
        for check in checks:
            try:
                check()
            except InputError as exc:
                problems.append(str(exc))
        if problems:
            raise InputError(f"invalid restore option{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))


OPTION_NAMES = tuple(f.name for f in fields(RestoreOptions))


def is_gray(crops: torch.Tensor, tolerance: float = GRAY_TOLERANCE) -> torch.Tensor:
    """[F] bool: whether each crop ``[F, 3, H, W]`` has equal channels within ``tolerance`` everywhere (a face from
    a grayscale image: ComfyUI, A1111 and 3-channel JPEGs give such images as RGB)."""
    if crops.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    c = crops.float()
    spread = torch.maximum((c[:, 0] - c[:, 1]).abs().amax(dim=(1, 2)), (c[:, 1] - c[:, 2]).abs().amax(dim=(1, 2)))
    return (spread <= tolerance).cpu()


def gray_like_input(restored: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """``restored`` with every face whose input crop is gray (:func:`is_gray`) turned into gray (BT.601 luma on
    all three channels); colour faces are returned as they are (the same tensor when none is gray)."""
    from .image import rgb_to_gray

    gray = is_gray(crops)
    if not bool(gray.any()):
        return restored
    out = restored.clone()
    idx = gray.nonzero().flatten().to(restored.device)
    out[idx] = rgb_to_gray(restored[idx]).clamp(0.0, 1.0).expand(-1, 3, -1, -1)
    return out


def resolve_options(options: Any = None, overrides: dict[str, Any] | None = None, where: str = "options",
                    **defaults: Any) -> RestoreOptions:
    """``options`` (a :class:`RestoreOptions` or None for the defaults, ``defaults`` applied then) with
    ``overrides`` applied, validated.  Anything else, or an override that is not a field, is an InputError."""
    if options is None:
        base = RestoreOptions(**defaults) if defaults else RestoreOptions()
    elif isinstance(options, RestoreOptions):
        base = options
    else:
        hint = " (build one with RestoreOptions(**your_dict))" if isinstance(options, dict) else ""
        raise InputError(f"{where}: expected a vspbfr_core.pipeline.RestoreOptions or None, got "
                         f"{describe_value(options)}{hint}; single options may also be given as keyword arguments")
    if overrides:
        unknown = sorted(str(k) for k in overrides if k not in OPTION_NAMES)
        if unknown:
            raise InputError(f"{where}: unknown option(s) {', '.join(unknown)}; RestoreOptions fields are "
                             f"{', '.join(OPTION_NAMES)}")
        base = replace(base, **overrides)
    base.validate()
    return base


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
    # per face, with an identity embedder: scores, candidates, chosen, restored (vspbfr_core.identity.FaceIdentity)
    identity: list[Any] | None = None

    @property
    def faces_found(self) -> int:
        return int(self.crops.shape[0])


_is_oom = memory.is_out_of_memory       # MemoryError, torch OOM (CUDA) and the CPU allocator's "can't allocate"


def _guarded(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Method decorator: an out-of-memory error inside becomes InsufficientMemoryError (see memory.guard)."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def run(self: VSPBFRPipeline, *args: Any, **kwargs: Any) -> Any:
            with memory.guard(what, self.device, MEMORY_ADVICE):
                return method(self, *args, **kwargs)
        return run
    return wrap


MEMORY_ADVICE = ("Use a lower upscale, a smaller image (or fewer images per batch), low-memory mode, a lower "
                 "precision, or a device with more memory (a GPU with more memory, or the CPU with more RAM).")


def check_precision(device: torch.device, dtype: Any) -> torch.dtype:
    """``dtype`` if the pipeline can run in it on ``device``, else UnsupportedDtypeError."""
    if not isinstance(dtype, torch.dtype):
        raise UnsupportedDtypeError(f"dtype: expected a torch.dtype (torch.float32, torch.float16 or torch.bfloat16), "
                                    f"got {describe_value(dtype)}")
    if dtype not in (torch.float32, torch.float64, *HALF_DTYPES):
        raise UnsupportedDtypeError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
    if device.type == "cpu" and dtype == torch.float16:
        raise UnsupportedDtypeError("float16 is not supported on CPU (too slow and inaccurate); use float32 or "
                                    "bfloat16")
    return dtype


def _check_crops(crops: Any, where: str) -> torch.Tensor:
    """Face crops must be a float tensor ``[F, 3, H, W]`` in [0, 1] (F may be 0); returned unchanged."""
    check_bchw(crops, f"{where}: crops", channels=(3,), dims="F, 3, H, W", allow_empty=True)
    return crops


def _device(device: Any, what: str) -> torch.device:
    """:func:`~vspbfr_core.devices.resolve_device`, a ``torch.device`` named as ``'cuda:3'`` in its messages."""
    return resolve_device(str(device) if isinstance(device, torch.device) else device, what=what)


def _face_keys(face_keys: Any) -> list[int]:
    """Per-face generator indices: a sequence (or 1-d tensor) of ints >= 0."""
    if isinstance(face_keys, torch.Tensor) and face_keys.dim() == 1 and not face_keys.is_floating_point():
        face_keys = face_keys.tolist()
    if isinstance(face_keys, (str, bytes)) or not isinstance(face_keys, Sequence):
        raise InputError(f"face_keys: expected a sequence of ints (one per face), got {describe_value(face_keys)}")
    return [check_int(k, "face_keys[i]", minimum=0) for k in face_keys]


def _check_callback(callback: Any, where: str) -> None:
    if callback is not None and not callable(callback):
        raise InputError(f"{where}: callback must be callable as callback(done, total, stage) or None, got "
                         f"{describe_value(callback)}")


class VSPBFRPipeline:
    """Owns the VSPBFR networks and (optionally) a face detector; runs on one device and dtype."""

    def __init__(self, model: VSPBFRModel, detector: nn.Module | None = None, *, chunk_size: int = 4,
                 low_memory: bool = False, offload_device: torch.device | str = "cpu",
                 compile: bool | dict[str, Any] = False, allow_tf32: bool = False):
        if not isinstance(model, VSPBFRModel):
            raise InputError(f"VSPBFRPipeline: expected a VSPBFRModel, got {describe_value(model)}")
        if detector is not None and not isinstance(detector, nn.Module):
            raise InputError(f"VSPBFRPipeline: detector must be a face detector module or None, got "
                             f"{describe_value(detector)}")
        self.chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
        self.offload_device = _device(offload_device, "offload_device")
        check_bool(low_memory, "low_memory")
        check_bool(allow_tf32, "allow_tf32")
        if not isinstance(compile, (bool, dict)):
            raise InputError(f"compile: expected True, False or a dict of torch.compile options, got "
                             f"{describe_value(compile)}")
        self.model = model.eval()
        self.model.allow_tf32 = allow_tf32     # CUDA float32 bank + restoration in TF32 (see VSPBFRModel)
        if compile:     # opt-in torch.compile; a dict holds torch.compile options (mode, backend, dynamic)
            self.model.compile_networks(**(compile if isinstance(compile, dict) else {}))
        self.detector = detector.eval() if detector is not None else None
        self.parser: Any = None        # a face-parsing network for mask_shape "parsing" (see load_parser)
        self.low_memory = low_memory
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
        already-aligned faces only.  The paths are kept (``model.weight_files``, ``detector.weights_file``)
        so an error about non-finite values can name the file.
        """
        from .checkpoints import load_checkpoint
        from .paths import find_model_file, resolve_models_dir

        if models_dir is not None and not isinstance(models_dir, (str, os.PathLike)):
            raise InputError(f"models_dir: expected a folder path or None, got {describe_value(models_dir)}")
        if files is not None and not isinstance(files, dict):
            raise InputError(f"files: expected a dict of kind -> path, got {describe_value(files)}")
        unknown = sorted(str(k) for k in (files or {}) if k not in MODEL_KINDS)
        if unknown:
            raise InputError(f"files: unknown kind(s) {', '.join(unknown)}; use {', '.join(MODEL_KINDS)}")
        bad = [k for k, v in (files or {}).items() if not isinstance(v, (str, os.PathLike))]
        if bad:
            raise InputError(f"files[{bad[0]!r}]: expected a file path, got {describe_value(files[bad[0]])}")
        if detector is not None and not isinstance(detector, str):
            raise InputError(f"detector: expected a detector name such as 'retinaface_resnet50' or None, got "
                             f"{describe_value(detector)}")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "model", "detector"}
        unknown = sorted(k for k in kwargs if k not in accepted)
        if unknown:
            raise InputError(f"unknown pipeline option(s) {', '.join(unknown)}; accepted: "
                             f"{', '.join(sorted(accepted))}")
        root = resolve_models_dir(models_dir)
        files = dict(files or {})
        loaded, paths = {}, {}
        for kind in MODEL_KINDS:
            path = Path(files[kind]) if kind in files else find_model_file(kind, [root])
            loaded[kind] = load_checkpoint(path, expect=kind)  # type: ignore[arg-type]
            paths[kind] = str(path)
        model = VSPBFRModel(loaded["style_encoder_decoder"].networks["style_encoder"],
                            loaded["style_encoder_decoder"].networks["stylegan"],
                            loaded["code_diffuser"].networks["code_diffuser"],
                            loaded["restoration_net"].networks["restoration_net"])
        model.weight_files = {"style_encoder": paths["style_encoder_decoder"],
                              "stylegan": paths["style_encoder_decoder"],
                              "code_diffuser": paths["code_diffuser"], "restoration_net": paths["restoration_net"]}
        det = None
        if detector is not None:
            from .face import load_detector
            from .paths import find_model_file as _find
            det_path = _find(detector, [root], detector_dir=detector_dir)
            det = load_detector(detector, [det_path.parent])
            det.weights_file = str(det_path)
        return cls(model, det, **kwargs)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VSPBFRPipeline:
        """Move to ``device`` and run in ``dtype``; the W+ diffusion and mapping MLP stay in float32.

        ``device`` is a name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"``) or a ``torch.device``
        that exists here (:func:`vspbfr_core.devices.resolve_device`; anything else is an InputError before
        anything moves); ``None`` keeps the current device.
        """
        target = self.device if device is None else _device(device, "VSPBFRPipeline.to: device")
        dtype = check_precision(target, self.dtype if dtype is None else dtype)
        with memory.guard(f"moving the networks to {target}", target, MEMORY_ADVICE):
            self.model.set_precision(dtype, target if not self.low_memory else self.offload_device)
            if self.detector is not None:
                self.detector.to(target)
            if self.parser is not None:
                self.parser.to(target)
        self.device, self.dtype = target, dtype
        return self

    def load_parser(self, name: str = "parsenet", models_dir: str | os.PathLike[str] | None = None, *,
                    file: str | os.PathLike[str] | None = None) -> Any:
        """Load the face-parsing network of ``mask_shape="parsing"`` (``parsing_parsenet.pth`` from the models
        folder, or ``file``) onto this pipeline's device; kept as :attr:`parser` and returned."""
        from .face.parsing import find_parser_file, load_parser
        from .paths import resolve_models_dir

        path = Path(file) if file is not None else find_parser_file(name, [resolve_models_dir(models_dir)])
        self.parser = load_parser(name, path, device=self.device)
        return self.parser

    def _check_parser(self, o: RestoreOptions, where: str) -> None:
        if o.mask_shape == "parsing" and self.parser is None:
            raise InputError(f"{where}: mask_shape 'parsing' needs the face-parsing network: call "
                             "pipeline.load_parser() (file parsing_parsenet.pth; `vspbfr download --only parsing` "
                             "fetches it), or use mask_shape 'landmarks', which needs no weights")

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
        """IMAGE ``[B, H, W, C]`` in [0, 1] -> :class:`~vspbfr_core.face.Detections` of the selected faces."""
        from .face import Detections, detect_faces

        if self.detector is None:
            raise VSPBFRError("this pipeline has no face detector; build it with detector=... or pass aligned faces")
        if not isinstance(images, torch.Tensor):
            raise InputError(f"detect: expected a float torch.Tensor [B, H, W, C] in [0, 1], got "
                             f"{type(images).__name__}")
        o = resolve_options(options, where="detect: options")
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
        """Images ``[B, C, H, W]`` in [0, 1] + their detections -> :class:`~vspbfr_core.face.AlignedFaces`."""
        from .face import Detections, align_faces

        if not isinstance(images_bchw, torch.Tensor):       # values are checked by align_faces
            raise InputError(f"align: images: expected a float torch.Tensor [B, C, H, W] in [0, 1], got "
                             f"{type(images_bchw).__name__}")
        if not isinstance(detections, Detections):
            raise InputError(f"align: expected Detections from detect, got {describe_value(detections)}")
        return align_faces(images_bchw.to(self.device), detections.to(self.device), size=self.model.resolution)

    def _signed(self, crops: torch.Tensor) -> torch.Tensor:
        r = self.model.resolution
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise InputError(f"aligned faces must be [F, 3, H, W], got {tuple(crops.shape)}")
        x = crops.to(self.device, torch.promote_types(self.dtype, torch.float32))   # the encoder runs wide
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bicubic", antialias=True, align_corners=False)
        return (x * 2.0 - 1.0).clamp(-1.0, 1.0)

    def noise_for(self, face_keys: Sequence[int], seed: int, candidate: int = 0) -> RestoreNoise:
        """Noise for faces whose generator index is ``face_keys[i]`` (their index within their image);
        ``candidate`` ``c`` gives best-of-N candidate ``c`` (0: the noise of a restoration without candidates)."""
        seed = check_int(seed, "seed")
        candidate = check_int(candidate, "candidate", minimum=0)
        return self.model.draw_noise_per_face([make_generator(seed, k, candidate) for k in _face_keys(face_keys)])

    def _check_noise(self, noise: Any, count: int, where: str) -> RestoreNoise:
        if not isinstance(noise, RestoreNoise):
            raise InputError(f"{where}: expected RestoreNoise from noise_for, got {describe_value(noise)}")
        if noise.x_T.shape[0] != count:
            raise InputError(f"{where}: the noise is for {noise.x_T.shape[0]} face(s) but {count} arrived; draw it "
                             "with noise_for(face_keys, seed) for these faces")
        return noise

    @torch.inference_mode()
    @_guarded("encode")
    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """Aligned crops ``[F, 3, R, R]`` in [0, 1] -> encoder W+ ``[F, num_ws, w_dim]``."""
        _check_crops(crops, "encode")
        return self._encode(crops)

    def _encode(self, crops: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        self._use("style_encoder")

        def run(a: int, b: int) -> torch.Tensor:
            ws = self.model.encode(self._signed(crops[a:b]))
            if progress is not None:
                progress.step("encode", b - a)
            return ws
        return self._chunked(run, crops.shape[0])

    @torch.inference_mode()
    @_guarded("diffuse")
    def diffuse(self, ws: torch.Tensor, noise: RestoreNoise) -> torch.Tensor:
        """Encoder W+ ``[F, num_ws, w_dim]`` -> visual style prompts (same shape, float32 or wider)."""
        enc = self.model.style_encoder.config
        if not isinstance(ws, torch.Tensor) or ws.dim() != 3 or not ws.is_floating_point() \
                or tuple(ws.shape[1:]) != (enc.num_ws, enc.w_dim):
            got = f"shape {tuple(ws.shape)}, dtype {ws.dtype}" if isinstance(ws, torch.Tensor) else describe_value(ws)
            raise InputError(f"diffuse: ws must be a float tensor [F, {enc.num_ws}, {enc.w_dim}] (from encode), "
                             f"got {got}")
        self._check_noise(noise, ws.shape[0], "diffuse")
        return self._diffuse(ws, noise)

    def _diffuse(self, ws: torch.Tensor, noise: RestoreNoise) -> torch.Tensor:
        self._use("code_diffuser")
        return self.model.diffuse(ws.to(self.device), noise.x_T.to(self.device))

    @torch.inference_mode()
    @_guarded("style prompts")
    def style_prompts(self, crops: torch.Tensor, noise: RestoreNoise, prompt_mix: float = 1.0) -> StylePrompts:
        """Aligned crops ``[F, 3, R, R]`` in [0, 1] -> encoder W+ and diffused style prompts."""
        _check_crops(crops, "style_prompts")
        self._check_noise(noise, crops.shape[0], "style_prompts")
        prompt_mix = check_float(prompt_mix, "prompt_mix", minimum=0.0, maximum=1.0)
        ws = self._encode(crops)
        prompts = self._diffuse(ws, noise)
        if prompt_mix != 1.0:
            prompts = torch.lerp(ws.to(prompts.dtype), prompts, prompt_mix)
        return StylePrompts(ws, prompts)

    @torch.inference_mode()
    @_guarded("restore_faces")
    def restore_faces(self, crops: torch.Tensor, style: StylePrompts | None = None, *, seed: int = 0,
                      face_keys: Sequence[int] | None = None, options: RestoreOptions | None = None,
                      callback: ProgressCallback | None = None, progress: Progress | None = None
                      ) -> tuple[torch.Tensor, StylePrompts]:
        """Aligned crops ``[F, 3, R, R]`` in [0, 1] -> restored crops ``[F, 3, R, R]`` in [0, 1].

        ``style`` (from :meth:`style_prompts`) is computed when absent.  ``face_keys`` are the
        per-face generator indices (default ``0..F-1``).  ``seed`` is used when ``options`` is None.
        """
        _check_crops(crops, "restore_faces")
        _check_callback(callback, "restore_faces")
        o = resolve_options(options, where="restore_faces: options", seed=seed)
        if o.candidates > 1 or o.only_matching or o.reference_mix > 0:
            raise InputError("restore_faces restores one candidate per face without a reference; for candidates, "
                             "only_matching or reference_mix call the pipeline (or restore_aligned) with embedder=... "
                             "(vspbfr_core.identity.load_embedder)")
        n = crops.shape[0]
        keys = _face_keys(face_keys) if face_keys is not None else list(range(n))
        if len(keys) != n:
            raise InputError(f"restore_faces: {len(keys)} face key(s) for {n} crop(s); give one per crop")
        if style is not None:
            if not isinstance(style, StylePrompts):
                raise InputError(f"restore_faces: style must be StylePrompts from style_prompts, got "
                                 f"{describe_value(style)}")
            if style.prompts.shape[0] != n:
                raise InputError(f"restore_faces: the style holds {style.prompts.shape[0]} face(s) but {n} crop(s) "
                                 "arrived; compute it from these crops")
        progress = progress or Progress(PROGRESS_PER_FACE * n, callback)
        if n == 0:
            r = self.model.resolution
            empty = crops.new_zeros(0, 3, r, r)
            return empty, StylePrompts(empty.new_zeros(0, 1, 1), empty.new_zeros(0, 1, 1))
        noise = self.noise_for(keys, o.seed)
        if style is None:
            ws = self._encode(crops, progress)
            prompts = self._diffuse(ws, noise)
            progress.step("diffuse", n)
            if o.prompt_mix != 1.0:
                prompts = torch.lerp(ws.to(prompts.dtype), prompts, o.prompt_mix)
            style = StylePrompts(ws, prompts)
        else:
            progress.step("style", 2 * n)
        return self._render(crops, style, noise, o, progress), style

    def _render(self, crops: torch.Tensor, style: StylePrompts, noise: RestoreNoise, o: RestoreOptions,
                progress: Progress) -> torch.Tensor:
        """Feature bank + restoration of checked crops with their prompts and noise -> restored crops in [0, 1]
        (gray faces made gray again under ``keep_gray``); package-internal, also used by identity.select."""
        # (the chunks below step "feature bank" and "restore" once per face on CPU, per chunk elsewhere)
        self._use("stylegan", "restoration_net")
        noise = noise.to(self.device, self.dtype)

        def run(a: int, b: int) -> torch.Tensor:
            part = noise.slice(a, b)
            prompts = style.prompts[a:b].to(self.device, self.dtype)
            bank, _ = self.model.feature_bank(prompts, part.stylegan,
                                              on_group=lambda k: progress.step("feature bank", k))
            out = self.model.restore(self._signed(crops[a:b]), bank, prompts, part, o.bank_scale,
                                     on_group=lambda k: progress.step("restore", k))
            return ((out.float() + 1.0) * 0.5).clamp(0.0, 1.0)

        restored = self._chunked(run, crops.shape[0])
        if o.keep_gray:
            restored = gray_like_input(restored, crops)
        return restored

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
                    raise InsufficientMemoryError(
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

    @_guarded("paste")
    def paste(self, images_bchw: torch.Tensor, restored: torch.Tensor, aligned: Any,
              options: RestoreOptions | None = None, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend restored crops ``[F, C, R, R]`` in [0, 1] into the images ``[B, C, H, W]`` they were aligned from.

        ``mask`` (``[B, H, W]`` or ``[H, W]`` in [0, 1], the images' size): pixels where it is 0 are never changed
        (a hand in front of a face, a region to protect)."""
        from .face import paste_faces

        if not isinstance(images_bchw, torch.Tensor):       # values are checked by paste_faces
            raise InputError(f"paste: images: expected a float torch.Tensor [B, C, H, W] in [0, 1], got "
                             f"{type(images_bchw).__name__}")
        check_bchw(restored, "paste: restored crops", dims="F, C, R, R", allow_empty=True)
        o = resolve_options(options, where="paste: options")
        self._check_parser(o, "paste")
        kwargs: dict[str, Any] = dict(visibility=o.visibility, mask_shape=o.mask_shape,
                                      color_correction=o.color_correction, upscale=o.upscale, limit=mask)
        if o.mask_shape == "parsing":
            kwargs.update(parser=self.parser, mask_parts=o.mask_parts)
        if o.feather is not None:
            kwargs["feather"] = o.feather
        return paste_faces(images_bchw.to(self.device), restored.to(self.device, images_bchw.dtype), aligned, **kwargs)

    # -- memory ------------------------------------------------------------------------------------

    def _ensure_memory(self, batch: int, channels: int, out_h: int, out_w: int, what: str,
                       in_hw: tuple[int, int] | None = None) -> None:
        """Refuse up front when the whole-image work (:func:`vspbfr_core.memory.result_bytes`) cannot fit on the
        device, or, off the CPU, the result copied back to the CPU cannot fit there."""
        memory.ensure_available(memory.result_bytes(batch, channels, out_h, out_w, in_hw), self.device, what,
                                MEMORY_ADVICE)
        if self.device.type != "cpu":
            memory.ensure_available(memory.image_bytes(batch, channels, out_h, out_w, torch.float32),
                                    torch.device("cpu"), f"{what} (the result copied to the CPU)", MEMORY_ADVICE)

    # -- the whole job -----------------------------------------------------------------------------

    def make_reference(self, images: Any, embedder: Any, *, aligned: bool = False,
                       names: Sequence[str] | None = None, threshold: float | None = None) -> Any:
        """An identity reference from photos of one person: see :func:`vspbfr_core.identity.select.make_reference`."""
        from .identity.select import make_reference

        return make_reference(self, images, embedder, aligned=aligned, names=names, threshold=threshold)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, options: RestoreOptions | None = None, *,
                 callback: ProgressCallback | None = None, embedder: Any = None, reference: Any = None,
                 mask: torch.Tensor | None = None, **overrides: Any) -> RestoreResult:
        """Restore every selected face of an IMAGE batch ``[B, H, W, C]`` in [0, 1] (C = 1, 3 or 4).

        ``embedder`` (:func:`vspbfr_core.identity.load_embedder`) turns on the identity features: the scores in
        ``result.identity``, best-of-N (``candidates``), and with ``reference`` (:meth:`make_reference`)
        ``only_matching`` and ``reference_mix`` (see :mod:`vspbfr_core.identity.select`).  Without them the
        restoration is the plain one, byte for byte.  ``mask`` (``[B, H, W]`` or ``[H, W]`` in [0, 1], the
        images' size): pixels where it is 0 are never changed (see :meth:`paste`).
        """
        from .identity.select import check_identity_request
        from .image import from_host

        o = resolve_options(options, overrides, "VSPBFRPipeline")
        _check_callback(callback, "VSPBFRPipeline")
        check_identity_request(o, embedder, reference, "VSPBFRPipeline")
        self._check_parser(o, "VSPBFRPipeline")
        with memory.guard("restoring the image batch", self.device, MEMORY_ADVICE):
            rgb, layout = from_host(images)
            batch, _, height, width = rgb.shape
            out_h, out_w = memory.scaled_size(height, width, o.upscale)
            self._ensure_memory(batch, layout.channels, out_h, out_w,
                                f"restoring {batch} image(s) of {width}x{height} at upscale {o.upscale:g} "
                                f"({out_w}x{out_h})", (height, width))
            if mask is not None:
                from .face.paste import check_user_mask
                mask = check_user_mask(mask, batch, height, width)          # before any network runs
            return self._restore(images, rgb, layout, o, callback, embedder, reference, mask)

    def _restore(self, images: torch.Tensor, rgb: torch.Tensor, layout: Any, o: RestoreOptions,
                 callback: ProgressCallback | None, embedder: Any = None, reference: Any = None,
                 mask: torch.Tensor | None = None) -> RestoreResult:
        from .identity import select
        from .image import to_host

        rgb = rgb.to(self.device, torch.float32)
        # 1. detect
        dets = self.detect(images, o)
        n = len(dets)
        scoring = select.needs_identity(o, embedder, reference)
        units = select.progress_units(o, True) if scoring else PROGRESS_PER_FACE
        progress = Progress(units * n + 2, callback)
        progress.step("detect")
        if n == 0:
            log.warning("no face selected in %d image(s); returning them unchanged%s", images.shape[0],
                        f" (resized by {o.upscale:g})" if o.upscale != 1.0 else "")
            out = rgb
            if o.upscale != 1.0:
                out, _ = self.paste(rgb, rgb.new_zeros(0, 3, self.model.resolution, self.model.resolution),
                                    self.align(rgb, dets), o)
            h, w = out.shape[-2:]
            r = self.model.resolution
            progress.step("paste")
            return RestoreResult(to_host(out, layout).cpu(), torch.zeros(images.shape[0], h, w), dets,
                                 torch.zeros(0, 3, r, r), torch.zeros(0, 3, r, r), None, o.seed,
                                 identity=[] if scoring else None)
        # 2. align
        aligned = self.align(rgb, dets)
        # 3-6. encode, diffuse, feature bank, restore (face key = index of the face within its image)
        keys = dets.order_index.tolist()
        faces = None
        if scoring:
            inputs = None
            if aligned.crops.shape[-1] < select.ALIGN_SIZE:     # a small model: embed the faces aligned at 512
                inputs = embedder.embed_faces(rgb, dets.landmarks, dets.image_index)
            found = select.restore_with_identity(self, aligned.crops, keys, o, embedder, reference, progress, inputs)
            restored, style, faces = found.restored, found.style, found.faces
        else:
            restored, style = self.restore_faces(aligned.crops, options=o, face_keys=keys, progress=progress)
        # 7. paste (faces that were not restored, under only_matching, are left as they are)
        pasted, pasted_faces = restored, aligned
        if faces is not None and not all(f.restored for f in faces):
            keep = torch.tensor([f.restored for f in faces], dtype=torch.bool)
            pasted, pasted_faces = restored[keep.to(restored.device)], _subset(aligned, keep)
        out, masks = self.paste(rgb, pasted, pasted_faces, o, mask)
        progress.step("paste")
        return RestoreResult(to_host(out, layout).cpu(), masks.float().cpu(), dets.to("cpu"), aligned.crops.float().cpu(),
                             restored.cpu(), style, o.seed, identity=faces)

    @torch.inference_mode()
    def restore_aligned(self, faces: torch.Tensor, options: RestoreOptions | None = None, *,
                        callback: ProgressCallback | None = None, embedder: Any = None, reference: Any = None,
                        **overrides: Any) -> RestoreResult:
        """Already-aligned faces (IMAGE ``[F, H, W, C]``, square) -> restored faces at ``upscale`` times that size.

        The restored face (at the model's resolution) is resampled to ``round(side * upscale)`` pixels
        (bicubic); ``visibility`` blends it with the input face resized the same way.  The paste-back options
        (mask, feather, colour correction) do not apply to aligned faces.  ``embedder`` and ``reference`` as in
        :meth:`__call__` (face ``i`` is seeded with key ``i``); a face left alone by ``only_matching`` comes back
        as its input, resized the same way.
        """
        from .identity import select
        from .image import from_host, to_host

        o = resolve_options(options, overrides, "restore_aligned")
        _check_callback(callback, "restore_aligned")
        select.check_identity_request(o, embedder, reference, "restore_aligned")
        rgb, layout = from_host(faces, "restore_aligned: faces")
        if rgb.shape[-1] != rgb.shape[-2]:
            raise InputError(f"aligned faces must be square, got {rgb.shape[-2]}x{rgb.shape[-1]}")
        count, side = rgb.shape[0], rgb.shape[-1]
        out_side = memory.scaled_size(side, side, o.upscale)[0]
        self._ensure_memory(count, layout.channels, out_side, out_side,
                            f"restoring {count} aligned face(s) of {side}x{side} at upscale {o.upscale:g} "
                            f"({out_side}x{out_side})")
        with memory.guard("restoring the aligned faces", self.device, MEMORY_ADVICE):
            identities = None
            if select.needs_identity(o, embedder, reference):
                _check_crops(rgb, "restore_aligned")
                progress = Progress(select.progress_units(o, True) * count, callback)
                found = select.restore_with_identity(self, rgb, list(range(count)), o, embedder, reference, progress)
                restored, style, identities = found.restored, found.style, found.faces
            else:
                restored, style = self.restore_faces(rgb, options=o, callback=callback)
            out = restored.to(rgb.device)
            target = (out_side, out_side)
            if out.shape[-2:] != target:
                out = F.interpolate(out, size=target, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            if o.visibility != 1.0:
                base = rgb.float()
                if base.shape[-2:] != target:
                    base = F.interpolate(base, size=target, mode="bicubic", antialias=out_side < side,
                                         align_corners=False).clamp(0, 1)
                out = torch.lerp(base, out.float(), o.visibility)
            if identities is not None and not all(f.restored for f in identities):
                left = torch.tensor([not f.restored for f in identities], dtype=torch.bool).to(out.device)
                base = rgb.to(out.dtype)
                if base.shape[-2:] != target:
                    base = F.interpolate(rgb.float(), size=target, mode="bicubic", antialias=out_side < side,
                                         align_corners=False).clamp(0, 1).to(out.dtype)
                out[left] = base[left]
            h, w = out.shape[-2:]
            return RestoreResult(to_host(out.to(rgb.dtype), layout).cpu(), torch.ones(rgb.shape[0], h, w), None,
                                 rgb.cpu(), restored.cpu(), style, o.seed, identity=identities)


def _subset(aligned: Any, keep: torch.Tensor) -> Any:
    """The faces of :class:`~vspbfr_core.face.AlignedFaces` selected by the bool mask ``keep`` [F]."""
    return aligned.select(keep)


def load_pipeline(models_dir: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, **kwargs: Any) -> VSPBFRPipeline:
    """Convenience: :meth:`VSPBFRPipeline.from_dir` then ``.to(device, dtype)``.

    The device (a name, ``"auto"`` or a ``torch.device``) and the dtype are checked before any file is read: an
    unavailable or misspelled device is an InputError, an unsupported precision an UnsupportedDtypeError.
    """
    target = _device(device, "load_pipeline: device")
    check_precision(target, dtype)
    return VSPBFRPipeline.from_dir(models_dir, **kwargs).to(target, dtype)

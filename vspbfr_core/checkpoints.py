"""Checkpoint reading, kind detection, config inference and strict loading.

Steps (spandrel's pipeline, made strict): read (safetensors, or ``torch.load(weights_only=True)``
with a data-only allow-list) -> canonicalize (unwrap the official containers) -> detect the kind
from the keys -> infer the config from tensor shapes -> drop the keys inference never uses after
checking them (FIR kernels must equal the computed ones; noise buffers and the decoder's mapping
MLP are unused) -> build on the meta device -> strict ``load_state_dict(assign=True)`` -> assert
nothing is left on meta -> ``eval().requires_grad_(False)``.

A file is never unpickled with arbitrary globals and a mismatch never falls back to random weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .encoder import StyleEncoder, StyleEncoderConfig
from .errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from .restorer import RestorationConfig, RestorationNet
from .stylegan2 import StyleGAN2Config, StyleGAN2Synthesis
from .wplus_diffusion import CodeDiffuser, CodeDiffuserConfig

__all__ = [
    "CheckpointKind", "OFFICIAL_FILES", "LoadedCheckpoint", "read_checkpoint", "detect_kind", "load_checkpoint",
    "load_state_dict_kind", "convert_checkpoint", "file_sha256", "SAFE_GLOBAL_NAMES",
]

log = logging.getLogger(__name__)

CheckpointKind = Literal["style_encoder_decoder", "code_diffuser", "restoration_net"]
KINDS: tuple[CheckpointKind, ...] = ("style_encoder_decoder", "code_diffuser", "restoration_net")
OFFICIAL_FILES: dict[CheckpointKind, str] = {
    "style_encoder_decoder": "style_encoder_decoder.pt",
    "code_diffuser": "code_diffuser.pt",
    "restoration_net": "restoration_net.pt",
}
FORMAT_TAG = "vspbfr-safetensors-v1"

StateDict = dict[str, torch.Tensor]

#----------------------------------------------------------------------------
# Reading


def _safe_globals() -> list[Any]:
    """Data-only globals the official training files may pickle (argparse args, numpy numbers)."""
    out: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the core
        return out
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # numpy < 2
    out += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


SAFE_GLOBAL_NAMES = ("argparse.Namespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                     "numpy.dtype", "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType",
                     "numpy.dtypes.Float16DType", "numpy.dtypes.Int64DType", "numpy.dtypes.Int32DType",
                     "numpy.dtypes.BoolDType")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")


_TORCH_REBUILDERS = frozenset({
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_meta_tensor_no_storage",
})
_DATA_GLOBALS = frozenset({"collections.OrderedDict", "torch.Size", "torch.device", "builtins.set", "_codecs.encode",
                           "builtins.frozenset", "builtins.bytearray"})


class _RestrictedUnpickler(pickle.Unpickler):
    """Fallback for PyTorch < 2.5 (no ``safe_globals``): resolves only tensor-rebuild and data globals."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if module == "torch._utils" and name in _TORCH_REBUILDERS:
            return getattr(torch._utils, name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if full in _DATA_GLOBALS or full in SAFE_GLOBAL_NAMES:
            if full.startswith("numpy.") and "scalar" in full:
                for obj in _safe_globals():
                    if isinstance(obj, tuple) and obj[1] == full:
                        return obj[0]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full} was not an allowed global")


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` whose unpickler refuses every global outside the allow-lists."""

    Unpickler = _RestrictedUnpickler
    __name__ = "vspbfr_restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _has_safe_globals() -> bool:
    ser = torch.serialization
    return hasattr(ser, "safe_globals") and hasattr(ser, "get_unsafe_globals_in_checkpoint")


def _torch_load(path: Path, restricted_fallback: bool | None = None) -> Any:
    """Unpickle a checkpoint without ever running code from it.

    PyTorch >= 2.5: ``weights_only=True`` with the data-only allow-list.  Older PyTorch (A1111 1.10
    ships 2.1): the same allow-list through a restricted unpickler.  ``torch.serialization.load`` is
    called directly because some hosts replace ``torch.load`` with wrappers that return ``None``.
    """
    use_fallback = (not _has_safe_globals()) if restricted_fallback is None else restricted_fallback
    is_zip = zipfile.is_zipfile(path)
    if is_zip and not use_fallback:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as exc:  # a damaged archive: let the load below produce the precise error
            log.debug("could not scan %s for globals: %s", path, exc)
            unsafe = []
        forbidden = [g for g in unsafe if g not in SAFE_GLOBAL_NAMES]
        if forbidden:
            raise UnsafeCheckpointError(
                f"{path}: refused to load, the pickle references {', '.join(forbidden)}, which is not on the "
                f"data-only allow-list ({', '.join(SAFE_GLOBAL_NAMES[:4])}, ...). Loading it could run code. "
                "Use the official files from the model hub, or convert a trusted file yourself in a separate "
                "environment.")
    try:
        if use_fallback:
            obj = torch.serialization.load(str(path), map_location="cpu", pickle_module=_RestrictedPickleModule,
                                           weights_only=False)
        else:
            with torch.serialization.safe_globals(_safe_globals()):
                obj = torch.serialization.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if match is None and "weights_only" not in str(exc).lower():
            raise CheckpointError(f"{path}: cannot unpickle this file ({exc}). It is probably truncated or corrupt: "
                                  "download it again (vspbfr download).") from exc
        name = match.group(1) if match else "an object outside the allow-list"
        raise UnsafeCheckpointError(
            f"{path}: refused to load, the pickle needs {name}, which is not on the data-only allow-list. "
            "Loading it could run code.") from exc
    except Exception as exc:  # any other failure of the restricted unpickler means a damaged file
        raise CheckpointError(
            f"{path}: cannot read this file as a PyTorch checkpoint ({type(exc).__name__}: {exc}). It is probably "
            "truncated or corrupt: download it again (vspbfr download).") from exc
    if obj is None:
        raise CheckpointError(f"{path}: the file unpickled to None; it is not a checkpoint (or a host's torch.load "
                              "wrapper refused it)")
    return obj


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)") from exc
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError for bad headers
        raise CheckpointError(
            f"{path}: not a valid .safetensors file ({exc}). The header or data is damaged or the file is "
            "incomplete: convert or download it again.") from exc


@dataclass
class RawCheckpoint:
    path: Path
    kind: CheckpointKind
    state_dict: StateDict                       # canonical flat keys (e4e: encoder.*, decoder.*, latent_avg)
    metadata: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)   # e.g. e4e opts


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def detect_kind(keys: set[str] | list[str]) -> CheckpointKind | None:
    """The network a flat state dict belongs to, from its key names alone."""
    keys = set(keys)
    if "encoder.input_layer.0.weight" in keys and any(k.startswith("decoder.conv1.") for k in keys):
        return "style_encoder_decoder"
    if any(re.fullmatch(r"att_mapper\.\d+\.q_matrix\.weight", k) for k in keys):
        return "code_diffuser"
    if "conv1.ModulatedConv2ds.0.weight" in keys and any(k.startswith("encoder_convs.") for k in keys):
        return "restoration_net"
    return None


def _canonicalize(obj: Any, path: Path) -> tuple[StateDict, dict[str, Any]]:
    """Unwrap the official containers into one flat tensor dict."""
    extras: dict[str, Any] = {}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), dict) and "latent_avg" in obj:
        sd = dict(obj["state_dict"])
        if isinstance(obj["latent_avg"], torch.Tensor):
            sd["latent_avg"] = obj["latent_avg"]
        opts = obj.get("opts")
        extras["opts"] = vars(opts) if isinstance(opts, argparse.Namespace) else opts
    elif isinstance(obj.get("att_mapper"), dict):
        sd = dict(obj["att_mapper"])
    elif isinstance(obj.get("g_ema"), dict):
        sd = dict(obj["g_ema"])
    elif isinstance(obj.get("state_dict"), dict) and not _is_tensor_dict(obj):
        sd = dict(obj["state_dict"])
    else:
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors in the state dict: {bad[:5]}")
    return sd, extras


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read any supported file and return its canonical state dict and detected kind."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() == ".safetensors":
        sd, meta = _read_safetensors(path)
        extras: dict[str, Any] = {}
    else:
        sd, extras = _canonicalize(_torch_load(path), path)
        meta = {}
    kind = detect_kind(sd.keys())
    if kind is None:
        sample = sorted(sd)[:6]
        raise CheckpointError(
            f"{path}: not a VSPBFR network file. Expected the keys of style_encoder_decoder.pt "
            f"('encoder.*' + 'decoder.*' + latent_avg), code_diffuser.pt ('att_mapper.*') or restoration_net.pt "
            f"(g_ema: 'encoder_convs.*', 'conv1.*'); found {len(sd)} keys starting with {sample}.")
    declared = meta.get("vspbfr.kind")
    if declared and declared != kind:
        raise CheckpointError(f"{path}: metadata says kind {declared!r} but the keys are those of {kind!r}")
    return RawCheckpoint(path, kind, sd, meta, extras)


#----------------------------------------------------------------------------
# Config inference


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.fullmatch(k))})


def _shape(sd: StateDict, key: str, path: Path, kind: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{path}: {kind} file is missing the key {key!r} needed to infer its configuration")
    return sd[key].shape


def _channel_rule(channels: dict[int, int], path: Path, what: str) -> tuple[int, int]:
    """(channel_base, channel_max) reproducing ``channels[res] = min(max, base // res)``."""
    top = max(channels)
    cmax = max(channels.values())
    base = channels[top] * top
    if any(min(cmax, base // r) != c for r, c in channels.items()):
        raise CheckpointError(f"{path}: {what} channel widths {channels} do not follow min(max, base // res)")
    return base, cmax


def infer_encoder_config(sd: StateDict, path: Path, base: StyleEncoderConfig | None = None) -> StyleEncoderConfig:
    k = "style_encoder_decoder"
    first = _shape(sd, "encoder.input_layer.0.weight", path, k)
    n_units = _count(sd, r"encoder\.body\.(\d+)\.res_layer\.1\.weight")
    depths = [sd[f"encoder.body.{u}.res_layer.1.weight"].shape[0] for u in range(n_units)]
    widths: list[int] = []
    units: list[int] = []
    for d in depths:
        if widths and widths[-1] == d:
            units[-1] += 1
        else:
            widths.append(d)
            units.append(1)
    if len(widths) != 4:
        raise CheckpointError(f"{path}: cannot infer the IR-SE stages from unit widths {depths}")
    fc1 = _shape(sd, "encoder.body.0.res_layer.5.fc1.weight", path, k)
    num_ws = _count(sd, r"encoder\.styles\.(\d+)\.linear\.weight")
    n_convs = [_count(sd, rf"encoder\.styles\.{i}\.convs\.(\d+)\.weight") for i in range(num_ws)]
    n0 = n_convs[0]
    coarse = sum(1 for n in n_convs if n == n0)
    middle = coarse + sum(1 for n in n_convs if n == n0 + 1)
    cfg = StyleEncoderConfig(
        num_ws=num_ws, w_dim=_shape(sd, "encoder.styles.0.linear.weight", path, k)[0], widths=tuple(widths),
        units=tuple(units), coarse_ws=coarse, middle_ws=middle, input_resolution=16 * 2 ** n0,
        in_channels=first[1], se_reduction=fc1[1] // fc1[0])
    return _merge(cfg, base, ())


def infer_stylegan_config(sd: StateDict, path: Path, prefix: str = "decoder.") -> StyleGAN2Config:
    k = "style_encoder_decoder"
    n_convs = _count(sd, rf"{re.escape(prefix)}convs\.(\d+)\.conv\.weight")
    log_size = n_convs // 2 + 2
    channels = {4: _shape(sd, f"{prefix}conv1.conv.weight", path, k)[1]}
    for i in range(0, n_convs, 2):
        channels[2 ** (i // 2 + 3)] = sd[f"{prefix}convs.{i}.conv.weight"].shape[1]
    cbase, cmax = _channel_rule(channels, path, "StyleGAN2")
    return StyleGAN2Config(resolution=2 ** log_size, w_dim=_shape(sd, f"{prefix}conv1.conv.modulation.weight", path, k)[1],
                           channel_base=cbase, channel_max=cmax)


def infer_restoration_config(sd: StateDict, path: Path, base: RestorationConfig | None = None) -> RestorationConfig:
    k = "restoration_net"
    n_rgbs = _count(sd, r"to_rgbs\.(\d+)\.conv\.weight")
    log_size = n_rgbs + 2
    channels = {4: _shape(sd, "conv1.fusion.0.weight", path, k)[0]}
    for i in range(n_rgbs):
        channels[2 ** (i + 3)] = sd[f"convs.{2 * i}.conv.weight"].shape[1]
    cbase, cmax = _channel_rule(channels, path, "restoration")
    cfg = RestorationConfig(
        resolution=2 ** log_size, w_dim=_shape(sd, "style.1.weight", path, k)[0],
        n_mlp=_count(sd, r"style\.(\d+)\.weight"), channel_base=cbase, channel_max=cmax,
        in_channels=_shape(sd, "down_from_big.dilated_convs.0.weight", path, k)[1],
        global_dim=_shape(sd, "final_linear.0.weight", path, k)[0])
    return _merge(cfg, base, ("lr_mlp",))


def infer_code_diffuser_config(sd: StateDict, path: Path, base: CodeDiffuserConfig | None = None) -> CodeDiffuserConfig:
    cfg = CodeDiffuserConfig(w_dim=_shape(sd, "att_mapper.0.k_matrix.weight", path, "code_diffuser")[0],
                             num_blocks=_count(sd, r"att_mapper\.(\d+)\.q_matrix\.weight"))
    return _merge(cfg, base, ("timesteps", "attn_tokens", "linear_start", "linear_end"))


def _merge(inferred: Any, declared: Any, free_fields: tuple[str, ...]) -> Any:
    """Take fields that shapes cannot tell from ``declared`` (metadata); shapes win elsewhere."""
    if declared is None:
        return inferred
    return dataclasses.replace(inferred, **{f: getattr(declared, f) for f in free_fields})


#----------------------------------------------------------------------------
# Strict loading

_UNUSED_PATTERNS = (
    re.compile(r"(decoder\.)?noises\.noise_\d+"),     # fixed noise buffers: inference draws fresh noise
    re.compile(r"decoder\.style\.\d+\.(weight|bias)"),  # the StyleGAN2 mapping MLP: W+ is fed directly
)
_KERNEL_PATTERN = re.compile(r".*(\.blur\.kernel|\.upsample\.kernel)")


def _split_kernels_and_unused(sd: StateDict) -> tuple[StateDict, StateDict]:
    kept, kernels = {}, {}
    for key, value in sd.items():
        if any(p.fullmatch(key) for p in _UNUSED_PATTERNS):
            continue
        if _KERNEL_PATTERN.fullmatch(key):
            kernels[key] = value
        else:
            kept[key] = value
    return kept, kernels


def _strict_load(net: nn.Module, sd: StateDict, kernels: StateDict, path: Path, kind: str, prefix: str = "") -> None:
    expected = net.state_dict()
    own = {prefix + k: v for k, v in expected.items()}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape_bad = [f"{k}: file {tuple(sd[k].shape)} vs network {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
        if shape_bad:
            parts.append(f"{len(shape_bad)} shape mismatches (first: {shape_bad[:3]})")
        raise CheckpointError(f"{path}: does not fit the {kind} network: " + "; ".join(parts)
                              + ". The file is damaged, from another model, or needs a different configuration.")
    for key, value in kernels.items():
        if not key.startswith(prefix):
            continue
        try:
            ours = net.get_buffer(key[len(prefix):])
        except AttributeError as exc:
            raise CheckpointError(f"{path}: unexpected FIR kernel {key!r} for the {kind} network") from exc
        if ours.shape != value.shape or not torch.allclose(ours.float(), value.float().cpu(), atol=1e-7):
            raise CheckpointError(f"{path}: FIR kernel {key!r} differs from the [1,3,3,1] kernel this network uses")
    local = {}
    for k in expected:
        t = sd[prefix + k]
        local[k] = t.float() if t.is_floating_point() else t
    net.load_state_dict(local, strict=True, assign=True)
    left = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: internal error, tensors left uninitialised after loading: {left[:5]}")
    net.eval().requires_grad_(False)


def _build(cls: type[nn.Module], config: Any) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


@dataclass
class LoadedCheckpoint:
    """The networks of one file, loaded strictly, in float32 on CPU, in eval mode."""
    path: Path
    kind: CheckpointKind
    networks: dict[str, nn.Module]            # style_encoder + stylegan | code_diffuser | restoration_net
    configs: dict[str, Any]
    metadata: dict[str, str]


def _declared_configs(meta: dict[str, str]) -> dict[str, dict[str, Any]]:
    raw = meta.get("vspbfr.configs")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"invalid vspbfr.configs metadata: {exc}") from exc


def _config_from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    if data is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return cls(**kwargs)


def load_state_dict_kind(sd: StateDict, kind: CheckpointKind, path: str | os.PathLike[str] = "<memory>",
                         metadata: dict[str, str] | None = None) -> LoadedCheckpoint:
    """Build and strictly load the networks of ``kind`` from a canonical flat state dict."""
    path = Path(path)
    metadata = metadata or {}
    declared = _declared_configs(metadata)
    kept, kernels = _split_kernels_and_unused(sd)
    nets: dict[str, nn.Module] = {}
    if kind == "style_encoder_decoder":
        enc_cfg = infer_encoder_config(kept, path, _config_from_dict(StyleEncoderConfig, declared.get("style_encoder")))
        sg_cfg = infer_stylegan_config(kept, path)
        if enc_cfg.num_ws < sg_cfg.num_ws:
            raise CheckpointError(f"{path}: encoder gives {enc_cfg.num_ws} W+ rows, the decoder needs {sg_cfg.num_ws}")
        if "latent_avg" not in kept:
            raise CheckpointError(f"{path}: style_encoder_decoder file has no 'latent_avg' (needed: start_from_latent_avg)")
        avg = kept.pop("latent_avg")
        if avg.shape[-1] != enc_cfg.w_dim or avg.numel() not in (enc_cfg.w_dim, enc_cfg.num_ws * enc_cfg.w_dim):
            raise CheckpointError(f"{path}: latent_avg has shape {tuple(avg.shape)}, expected [{enc_cfg.num_ws}, "
                                  f"{enc_cfg.w_dim}], [1, {enc_cfg.w_dim}] or [{enc_cfg.w_dim}]")
        kept["encoder.latent_avg"] = avg.reshape(-1, enc_cfg.w_dim).expand(enc_cfg.num_ws, -1).contiguous()
        enc_sd = {k: v for k, v in kept.items() if k.startswith("encoder.")}
        dec_sd = {k: v for k, v in kept.items() if k.startswith("decoder.")}
        stray = [k for k in kept if not k.startswith(("encoder.", "decoder."))]
        if stray:
            raise CheckpointError(f"{path}: unexpected keys in a style_encoder_decoder file: {stray[:5]}")
        enc = _build(StyleEncoder, enc_cfg)
        _strict_load(enc, enc_sd, kernels, path, kind + " (encoder)", "encoder.")
        dec = _build(StyleGAN2Synthesis, sg_cfg)
        _strict_load(dec, dec_sd, kernels, path, kind + " (decoder)", "decoder.")
        nets = {"style_encoder": enc, "stylegan": dec}
    elif kind == "code_diffuser":
        cfg = infer_code_diffuser_config(kept, path, _config_from_dict(CodeDiffuserConfig, declared.get("code_diffuser")))
        net = _build(CodeDiffuser, cfg)
        _strict_load(net, kept, kernels, path, kind)
        nets = {"code_diffuser": net}
    elif kind == "restoration_net":
        cfg = infer_restoration_config(kept, path, _config_from_dict(RestorationConfig, declared.get("restoration_net")))
        net = _build(RestorationNet, cfg)
        _strict_load(net, kept, kernels, path, kind)
        nets = {"restoration_net": net}
    else:
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")
    return LoadedCheckpoint(path, kind, nets, {n: m.config for n, m in nets.items()}, metadata)


def load_checkpoint(path: str | os.PathLike[str], expect: CheckpointKind | None = None) -> LoadedCheckpoint:
    """Read, detect, infer and strictly load one model file (official ``.pt`` or converted ``.safetensors``)."""
    raw = read_checkpoint(path)
    if expect is not None and raw.kind != expect:
        raise CheckpointError(f"{raw.path}: this is a {raw.kind} file, but a {expect} file was expected "
                              f"(official name {OFFICIAL_FILES[expect]}). Check which file you selected.")
    if raw.kind == "style_encoder_decoder":
        opts = raw.extras.get("opts") or {}
        if isinstance(opts, dict) and opts.get("start_from_latent_avg") is False:
            raise CheckpointError(f"{raw.path}: opts.start_from_latent_avg is False; VSPBFR's encoder needs latent_avg")
    return load_state_dict_kind(raw.state_dict, raw.kind, raw.path, raw.metadata)


#----------------------------------------------------------------------------
# Conversion


def convert_checkpoint(src: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``<official stem>.safetensors`` with only the tensors inference loads, plus metadata.

    The file is checked by a strict load before it is written and written atomically.
    """
    from safetensors.torch import save_file

    loaded = load_checkpoint(src)
    tensors: StateDict = {}
    if loaded.kind == "style_encoder_decoder":
        for name, prefix in (("style_encoder", "encoder."), ("stylegan", "decoder.")):
            for k, v in loaded.networks[name].state_dict().items():
                tensors[prefix + k] = v
        tensors["latent_avg"] = tensors.pop("encoder.latent_avg")
    else:
        (net,) = loaded.networks.values()
        tensors = dict(net.state_dict())
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    configs = {n: dataclasses.asdict(c) for n, c in loaded.configs.items()}
    meta = {
        "format": FORMAT_TAG,
        "vspbfr.kind": loaded.kind,
        "vspbfr.configs": json.dumps(configs, sort_keys=True),
        "source_file": Path(src).name,
        "source_sha256": file_sha256(src),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / (Path(OFFICIAL_FILES[loaded.kind]).stem + ".safetensors")
    tmp = dst.with_name(dst.name + ".part")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, dst)
    return dst

"""Checkpoint reading, kind detection, config inference and strict loading.

Steps (spandrel's pipeline, made strict): read (safetensors, or ``torch.load(weights_only=True)``
with a data-only allow-list) -> canonicalize (unwrap the official containers) -> detect the kind
from the keys -> validate the ``vspbfr.configs`` metadata of converted files (types, ranges, known
fields) -> infer the config from tensor shapes (declared shape fields must agree) -> drop the keys
inference never uses after checking them (FIR kernels must equal the computed ones; noise buffers
and the decoder's mapping MLP are unused) -> build on the meta device -> check keys, shapes, dtypes
(floating where the network is floating, integer where it is integer) and values (no NaN / Inf, no
negative BatchNorm variance) -> strict ``load_state_dict(assign=True)`` -> assert nothing is left on
meta -> ``eval().requires_grad_(False)``.

Reading the files (safetensors, or PyTorch checkpoints through a data-only allow-list, zip checks, non-UTF-8
paths) and the tensor checks are :mod:`vspbfr_core.weights_file`.

A file is never unpickled with arbitrary globals and a mismatch never falls back to random weights.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .encoder import StyleEncoder, StyleEncoderConfig, stage_layout
from .errors import CheckpointError, OutputError
from .restorer import RestorationConfig, RestorationNet
from .stylegan2 import StyleGAN2Config, StyleGAN2Synthesis
from .weights_file import (  # noqa: F401  (re-exported: part of this module's API)
    SAFE_GLOBAL_NAMES, as_path, check_tensors, count_non_finite, file_sha256, read_weights_file, shown,
)
from .wplus_diffusion import CodeDiffuser, CodeDiffuserConfig

__all__ = [
    "CheckpointKind", "OFFICIAL_FILES", "LoadedCheckpoint", "read_checkpoint", "detect_kind", "load_checkpoint",
    "load_state_dict_kind", "convert_checkpoint", "file_sha256", "SAFE_GLOBAL_NAMES", "read_weights_file",
    "check_tensors", "count_non_finite", "validate_config_metadata", "as_path", "shown",
    "check_out_dir",
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
        raise CheckpointError(f"{shown(path)}: expected a dict of tensors, found {type(obj).__name__}")
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
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"{shown(path)}: state dict keys must be strings, found "
                              f"{[repr(k)[:40] for k in odd[:5]]}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{shown(path)}: entries that are not tensors in the state dict: {bad[:5]}")
    return sd, extras


def read_checkpoint(path: str | bytes | os.PathLike[str]) -> RawCheckpoint:
    """Read any supported file and return its canonical state dict and detected kind.

    A ``.safetensors`` file's ``vspbfr.kind`` must match its keys and its ``vspbfr.configs`` must pass
    :func:`validate_config_metadata`.
    """
    path = as_path(path)
    obj, meta = read_weights_file(path)
    if path.suffix.lower() == ".safetensors":
        sd: StateDict = obj
        extras: dict[str, Any] = {}
    else:
        sd, extras = _canonicalize(obj, path)
    kind = detect_kind(sd.keys())
    if kind is None:
        sample = sorted(sd)[:6]
        raise CheckpointError(
            f"{shown(path)}: not a VSPBFR network file. Expected the keys of style_encoder_decoder.pt "
            f"('encoder.*' + 'decoder.*' + latent_avg), code_diffuser.pt ('att_mapper.*') or restoration_net.pt "
            f"(g_ema: 'encoder_convs.*', 'conv1.*'); found {len(sd)} keys starting with {sample}.")
    declared = meta.get("vspbfr.kind")
    if declared and declared != kind:
        raise CheckpointError(f"{shown(path)}: metadata says kind {declared!r} but the keys are those of {kind!r}")
    validate_config_metadata(meta, path, kind)
    return RawCheckpoint(path, kind, sd, meta, extras)


#----------------------------------------------------------------------------
# Config inference


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.fullmatch(k))})


def _shape(sd: StateDict, key: str, path: Path, kind: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{shown(path)}: {kind} file is missing the key {key!r} needed to infer its "
                              "configuration")
    return sd[key].shape


def _channel_rule(channels: dict[int, int], path: Path, what: str) -> tuple[int, int]:
    """(channel_base, channel_max) reproducing ``channels[res] = min(max, base // res)``."""
    top = max(channels)
    cmax = max(channels.values())
    base = channels[top] * top
    if any(min(cmax, base // r) != c for r, c in channels.items()):
        raise CheckpointError(f"{shown(path)}: {what} channel widths {channels} do not follow min(max, base // res)")
    return base, cmax


def infer_encoder_config(sd: StateDict, path: Path, base: StyleEncoderConfig | None = None) -> StyleEncoderConfig:
    k = "style_encoder_decoder"
    first = _shape(sd, "encoder.input_layer.0.weight", path, k)
    n_units = _count(sd, r"encoder\.body\.(\d+)\.res_layer\.1\.weight")
    depths = [sd[f"encoder.body.{u}.res_layer.1.weight"].shape[0] for u in range(n_units)]
    widths, units = stage_layout(depths)
    if len(widths) != 4:
        raise CheckpointError(f"{shown(path)}: cannot infer the IR-SE stages from unit widths {depths}")
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
    """Take fields that shapes cannot tell from ``declared`` (a config object); shapes win elsewhere."""
    if declared is None:
        return inferred
    return dataclasses.replace(inferred, **{f: getattr(declared, f) for f in free_fields})


#----------------------------------------------------------------------------
# Configuration metadata of converted files (``vspbfr.configs``)

CONFIG_SECTIONS: dict[str, dict[str, type]] = {
    "style_encoder_decoder": {"style_encoder": StyleEncoderConfig, "stylegan": StyleGAN2Config},
    "code_diffuser": {"code_diffuser": CodeDiffuserConfig},
    "restoration_net": {"restoration_net": RestorationConfig},
}
_MAX_INT = 2 ** 31 - 1


def _power_of_two_from_8(v: int) -> bool:
    return v >= 8 and v & (v - 1) == 0


# Ranges beyond the defaults (integers 1 .. 2**31 - 1, floats finite and > 0): (test, what the value must be).
_CONFIG_RULES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("StyleEncoderConfig", "widths"): (lambda v: len(v) == 4, "a list of four stage widths"),
    ("StyleEncoderConfig", "units"): (lambda v: len(v) == 4, "a list of four unit counts"),
    ("StyleEncoderConfig", "input_resolution"): (lambda v: v >= 32 and v % 16 == 0, "a multiple of 16, at least 32"),
    ("StyleGAN2Config", "resolution"): (_power_of_two_from_8, "a power of two, at least 8"),
    ("RestorationConfig", "resolution"): (_power_of_two_from_8, "a power of two, at least 8"),
    ("CodeDiffuserConfig", "timesteps"): (lambda v: v <= 10_000, "between 1 and 10000 diffusion steps"),
    ("CodeDiffuserConfig", "attn_tokens"): (lambda v: v <= 1_000_000, "between 1 and 1000000 tokens"),
    ("CodeDiffuserConfig", "linear_start"): (lambda v: v <= 1.0, "a noise level in (0, 1]"),
    ("CodeDiffuserConfig", "linear_end"): (lambda v: v <= 1.0, "a noise level in (0, 1]"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_problem(cls: type, name: str, annotation: str, value: Any) -> str | None:
    """Why ``value`` is not valid for field ``name`` of config class ``cls`` (None when it is)."""
    if annotation == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if annotation == "int":
        if not _is_int(value):
            return "must be an integer"
        if not 1 <= value <= _MAX_INT:
            return f"must be a positive integer (1 .. {_MAX_INT})"
    elif annotation == "float":
        if not (_is_int(value) or isinstance(value, float)):
            return "must be a number"
        if not (math.isfinite(value) and value > 0):
            return "must be a finite number greater than 0"
    elif annotation.startswith("tuple[int"):
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            return "must be a list of integers"
        if not all(1 <= v <= _MAX_INT for v in value):
            return "must hold positive integers"
    rule = _CONFIG_RULES.get((cls.__name__, name))
    if rule is not None and not rule[0](value):
        return f"must be {rule[1]}"
    return None


def validate_config_metadata(metadata: dict[str, str], path: str | os.PathLike[str], kind: str
                             ) -> dict[str, dict[str, Any]]:
    """The checked ``vspbfr.configs`` metadata of a converted file: ``{section: {field: value}}``.

    The JSON must be an object whose sections are those of ``kind`` (``style_encoder`` + ``stylegan``,
    ``code_diffuser`` or ``restoration_net``), each an object of known fields with values of the field's type
    (integers, numbers, lists of integers, booleans) and in range: integers at least 1 (at least one diffusion
    step, positive token counts and widths), numbers finite and greater than 0 (learning-rate multipliers, noise
    levels, the latter at most 1), resolutions powers of two. Raises :class:`CheckpointError` naming the file,
    the field and the value; this runs before any network is built. Lists come back as tuples.
    """
    raw = metadata.get("vspbfr.configs")
    if raw is None or raw == "":
        return {}
    where = f"{shown(path)}: metadata 'vspbfr.configs'"
    advice = "The metadata is damaged or was edited: convert the official .pt file again (vspbfr convert)."
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{where} is not valid JSON ({exc}). {advice}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} must be a JSON object of configurations, found {type(data).__name__} "
                              f"{_short(data)}. {advice}")
    sections = CONFIG_SECTIONS.get(kind, {})
    out: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        cls = sections.get(section)
        if cls is None:
            raise CheckpointError(f"{where}: unknown section {section!r} = {_short(values)} for a {kind} file "
                                  f"(expected: {', '.join(sections) or 'none'}). {advice}")
        if not isinstance(values, dict):
            raise CheckpointError(f"{where}: section {section!r} must be a JSON object, found "
                                  f"{type(values).__name__} {_short(values)}. {advice}")
        fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if name not in fields:
                raise CheckpointError(f"{where}: unknown field {section}.{name} = {_short(value)} "
                                      f"(known: {', '.join(fields)}). {advice}")
            problem = _field_problem(cls, name, fields[name], value)
            if problem:
                raise CheckpointError(f"{where}: field {section}.{name} = {_short(value)} {problem}. {advice}")
            checked[name] = tuple(value) if isinstance(value, list) else value
        validate = getattr(cls(**checked), "validate", None)
        if validate is not None:
            try:
                validate()
            except ValueError as exc:
                raise CheckpointError(f"{where}: section {section!r} = {_short(values)}: {exc}. {advice}") from exc
        out[section] = checked
    return out


def _short(value: Any, limit: int = 80) -> str:
    """A JSON value for a message, cut to ``limit`` characters (tuples written as lists)."""
    text = json.dumps(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def _merge_declared(inferred: Any, declared: dict[str, Any] | None, free_fields: tuple[str, ...], path: Path,
           section: str) -> Any:
    """Take fields that shapes cannot tell from the declared metadata; the others must agree with the shapes."""
    if not declared:
        return inferred
    for name, value in declared.items():
        if name not in free_fields and getattr(inferred, name) != value:
            raise CheckpointError(
                f"{shown(path)}: metadata 'vspbfr.configs' field {section}.{name} = {_short(value)}, but the "
                f"tensors give {_short(getattr(inferred, name))}: the metadata does not describe this file. "
                "Convert the official .pt file again (vspbfr convert).")
    return dataclasses.replace(inferred, **{f: declared[f] for f in free_fields if f in declared})


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


def key_mismatch(found: StateDict, expected: dict[str, torch.Tensor]) -> str:
    """What keeps ``found`` from loading into a network whose state dict is ``expected`` (missing and unexpected
    keys, shape mismatches, the first few of each), or '' when keys and shapes fit."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shape_bad = [f"{k}: file {tuple(found[k].shape)} vs network {tuple(expected[k].shape)}"
                 for k in expected if k in found and found[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if shape_bad:
        parts.append(f"{len(shape_bad)} shape mismatches (first: {shape_bad[:3]})")
    return "; ".join(parts)


def _strict_load(net: nn.Module, sd: StateDict, kernels: StateDict, path: Path, kind: str, prefix: str = "") -> None:
    expected = net.state_dict()
    own = {prefix + k: v for k, v in expected.items()}
    problems = key_mismatch(sd, own)
    if problems:
        raise CheckpointError(f"{shown(path)}: does not fit the {kind} network: {problems}. The file is damaged, "
                              "from another model, or needs a different configuration.")
    for key, value in kernels.items():
        if not key.startswith(prefix):
            continue
        try:
            ours = net.get_buffer(key[len(prefix):])
        except AttributeError as exc:
            raise CheckpointError(f"{shown(path)}: unexpected FIR kernel {key!r} for the {kind} network") from exc
        if ours.shape != value.shape or not torch.allclose(ours.float(), value.float().cpu(), atol=1e-7):
            raise CheckpointError(f"{shown(path)}: FIR kernel {key!r} differs from the [1,3,3,1] kernel this network "
                                  "uses")
    local = check_tensors(sd, expected, path, kind, prefix)
    net.load_state_dict(local, strict=True, assign=True)
    left = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{shown(path)}: internal error, tensors left uninitialised after loading: {left[:5]}")
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


def load_state_dict_kind(sd: StateDict, kind: CheckpointKind, path: str | bytes | os.PathLike[str] = "<memory>",
                         metadata: dict[str, str] | None = None) -> LoadedCheckpoint:
    """Build and strictly load the networks of ``kind`` from a canonical flat state dict.

    Order: the ``vspbfr.configs`` metadata is validated (:func:`validate_config_metadata`) before anything is
    built; configs are inferred from the shapes (declared fields that shapes determine must agree with them);
    each network is built on the meta device and gets the file's tensors after the key, shape, dtype and
    NaN / Inf checks of :func:`check_tensors`.
    """
    path = as_path(path)
    metadata = metadata or {}
    declared = validate_config_metadata(metadata, path, kind)
    kept, kernels = _split_kernels_and_unused(sd)
    nets: dict[str, nn.Module] = {}
    if kind == "style_encoder_decoder":
        enc_cfg = _merge_declared(infer_encoder_config(kept, path), declared.get("style_encoder"), (), path,
                                  "style_encoder")
        sg_cfg = _merge_declared(infer_stylegan_config(kept, path), declared.get("stylegan"), (), path, "stylegan")
        if enc_cfg.num_ws < sg_cfg.num_ws:
            raise CheckpointError(f"{shown(path)}: encoder gives {enc_cfg.num_ws} W+ rows, the decoder needs "
                                  f"{sg_cfg.num_ws}")
        if "latent_avg" not in kept:
            raise CheckpointError(f"{shown(path)}: style_encoder_decoder file has no 'latent_avg' (needed: "
                                  "start_from_latent_avg)")
        avg = kept.pop("latent_avg")
        check_tensors({"latent_avg": avg}, {"latent_avg": torch.empty(0, device="meta")}, path, kind)
        if avg.shape[-1] != enc_cfg.w_dim or avg.numel() not in (enc_cfg.w_dim, enc_cfg.num_ws * enc_cfg.w_dim):
            raise CheckpointError(f"{shown(path)}: latent_avg has shape {tuple(avg.shape)}, expected "
                                  f"[{enc_cfg.num_ws}, "
                                  f"{enc_cfg.w_dim}], [1, {enc_cfg.w_dim}] or [{enc_cfg.w_dim}]")
        kept["encoder.latent_avg"] = avg.reshape(-1, enc_cfg.w_dim).expand(enc_cfg.num_ws, -1).contiguous()
        enc_sd = {k: v for k, v in kept.items() if k.startswith("encoder.")}
        dec_sd = {k: v for k, v in kept.items() if k.startswith("decoder.")}
        stray = [k for k in kept if not k.startswith(("encoder.", "decoder."))]
        if stray:
            raise CheckpointError(f"{shown(path)}: unexpected keys in a style_encoder_decoder file: {stray[:5]}")
        enc = _build(StyleEncoder, enc_cfg)
        _strict_load(enc, enc_sd, kernels, path, kind + " (encoder)", "encoder.")
        dec = _build(StyleGAN2Synthesis, sg_cfg)
        _strict_load(dec, dec_sd, kernels, path, kind + " (decoder)", "decoder.")
        nets = {"style_encoder": enc, "stylegan": dec}
    elif kind == "code_diffuser":
        cfg = _merge_declared(infer_code_diffuser_config(kept, path), declared.get("code_diffuser"),
                              ("timesteps", "attn_tokens", "linear_start", "linear_end"), path, "code_diffuser")
        net = _build(CodeDiffuser, cfg)
        _strict_load(net, kept, kernels, path, kind)
        nets = {"code_diffuser": net}
    elif kind == "restoration_net":
        cfg = _merge_declared(infer_restoration_config(kept, path), declared.get("restoration_net"), ("lr_mlp",), path,
                              "restoration_net")
        net = _build(RestorationNet, cfg)
        _strict_load(net, kept, kernels, path, kind)
        nets = {"restoration_net": net}
    else:
        raise CheckpointError(f"{shown(path)}: unknown checkpoint kind {kind!r}")
    return LoadedCheckpoint(path, kind, nets, {n: m.config for n, m in nets.items()}, metadata)


def load_checkpoint(path: str | bytes | os.PathLike[str], expect: CheckpointKind | None = None) -> LoadedCheckpoint:
    """Read, detect, infer and strictly load one model file (official ``.pt`` or converted ``.safetensors``).

    Every refusal is a :class:`CheckpointError` naming the file (and the tensor or metadata field): missing,
    unreadable, damaged (truncated, random bytes, a zip member whose CRC fails), a pickle naming a forbidden
    global (:class:`UnsafeCheckpointError`, raised for nothing else), wrong kind, wrong keys, shapes or dtypes,
    NaN / Inf values, invalid configuration metadata. Compressed (deflate) zip checkpoints load (without
    ``mmap``); paths may hold bytes that are not UTF-8. Nothing is ever left with random weights.
    """
    raw = read_checkpoint(path)
    if expect is not None and raw.kind != expect:
        raise CheckpointError(f"{shown(raw.path)}: this is a {raw.kind} file, but a {expect} file was expected "
                              f"(official name {OFFICIAL_FILES[expect]}). Check which file you selected.")
    if raw.kind == "style_encoder_decoder":
        opts = raw.extras.get("opts") or {}
        if isinstance(opts, dict) and opts.get("start_from_latent_avg") is False:
            raise CheckpointError(f"{shown(raw.path)}: opts.start_from_latent_avg is False; VSPBFR's encoder needs "
                                  "latent_avg")
    return load_state_dict_kind(raw.state_dict, raw.kind, raw.path, raw.metadata)


#----------------------------------------------------------------------------
# Conversion


def check_out_dir(out_dir: Path) -> None:
    """A clear :class:`OutputError` unless ``out_dir`` is a writable folder or can be created as one.

    An existing folder is probed by creating (exclusively) and removing a temporary file in it; for a folder that
    does not exist yet, its nearest existing ancestor must be a folder (nothing is written outside ``out_dir``).
    """
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise OutputError(f"output folder {shown(out_dir)} exists and is not a folder (a file?): give a folder "
                              "with -o")
        try:
            fd, probe = _exclusive_temp(out_dir, "probe")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"cannot write into the output folder {shown(out_dir)} ({exc.strerror or exc}): "
                              "check its permissions or choose another folder with -o") from exc
        return
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot create the output folder {shown(out_dir)}: {shown(parent)} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot create the output folder {shown(out_dir)}: {shown(parent)} is not "
                                  "writable (check its permissions or choose another folder with -o)")
            return


def _exclusive_temp(folder: Path, stem: str) -> tuple[int, Path]:
    """Create a new, short, hidden ``.part`` file in ``folder`` exclusively (never through an existing name or
    symlink); returns ``(fd, path)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(16):
        path = folder / f".{stem[:24]}-{secrets.token_hex(4)}.part"
        try:
            return os.open(path, flags, 0o644), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {shown(folder)}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _write_new_file(data: bytes, dst: Path) -> None:
    """Write ``data`` to ``dst`` through an exclusive temporary file in the same folder, then rename it into place
    (a symlink at ``dst`` is replaced, not followed); on any failure nothing is left behind."""
    folder = dst.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {shown(folder)} ({exc.strerror or exc}): check its "
                          "permissions or choose another folder with -o") from exc
    try:
        fd, tmp = _exclusive_temp(folder, dst.stem)
    except OSError as exc:
        raise OutputError(f"cannot write into the output folder {shown(folder)} ({exc.strerror or exc}): check its "
                          "permissions or choose another folder with -o") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {shown(dst)} in the output folder {shown(folder)} ({exc.strerror or exc}); "
                          "nothing was written") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def convert_checkpoint(src: str | bytes | os.PathLike[str], out_dir: str | bytes | os.PathLike[str], *,
                       protect: Collection[str | os.PathLike[str]] = ()) -> Path:
    """Write ``<official stem>.safetensors`` with only the tensors inference loads, plus metadata.

    The file is checked by a strict load before anything is written, and written atomically through an
    exclusive, short-named temporary file in ``out_dir`` (see :func:`_write_new_file`). Refused with
    :class:`OutputError` (nothing written): ``out_dir`` is an existing file, cannot be created or written; the
    output would replace ``src`` itself or one of ``protect`` (the other inputs and the outputs already written
    by a batch conversion).
    """
    from safetensors.torch import save

    src, out_dir = as_path(src), as_path(out_dir)
    check_out_dir(out_dir)
    loaded = load_checkpoint(src)
    dst = out_dir / (Path(OFFICIAL_FILES[loaded.kind]).stem + ".safetensors")
    if _same_file(dst, src):
        raise OutputError(f"{shown(src)}: converting it would overwrite the input file itself ({shown(dst)}); "
                          "choose another output folder with -o")
    clash = next((as_path(p) for p in protect if _same_file(dst, as_path(p))), None)
    if clash is not None:
        raise OutputError(f"{shown(src)}: converting it would overwrite {shown(clash)}, an input or an output of "
                          f"this conversion (two {loaded.kind} files?); convert them into separate folders")
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
        "source_file": shown(src.name),
        "source_sha256": file_sha256(src),
    }
    _write_new_file(save(tensors, metadata=meta), dst)
    return dst

"""Bad-input suite for the model-file surface: the loaders, ``vspbfr convert`` and ``vspbfr info``.

Table-driven; every case asserts one outcome class:

* clean error   -- the exception type, a message naming the file and the tensor / field, never
                   UnsafeCheckpointError (only real forbidden globals are "unsafe") and never PyTorch's advice to
                   set ``weights_only=False``; for the CLI: exit 1, the message on stderr, no traceback, nothing
                   half-written;
* correct load  -- the tensors equal the reference (the stored ``torch.save`` file);
* refused unsafe -- UnsafeCheckpointError naming the global, and the global did not run (a marker file).

Bad files are built from the tiny networks of tests/tiny_models.py and a randomly initialised RetinaFace
MobileNet-0.25 (no ../shared needed).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vspbfr_core.checkpoints as ckpt
import vspbfr_core.weights_file as weights_file
import vspbfr_core.commands.convert  # noqa: F401  (imported before any test drops privileges in a child)
import vspbfr_core.commands.info as info_cmd
import vspbfr_core.download  # noqa: F401  (idem)
from tiny_models import tiny_official_objects, write_tiny_checkpoints
from vspbfr_core import cli
from vspbfr_core.checkpoints import convert_checkpoint, load_checkpoint
from vspbfr_core.errors import CheckpointError, InputError, ModelNotFoundError, UnsafeCheckpointError
from vspbfr_core.face.detect import load_detector_file
from vspbfr_core.face.retinaface import MOBILENET_025, RetinaFaceDetector

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("style_encoder_decoder", "code_diffuser", "restoration_net")
INNER = {"style_encoder_decoder": "state_dict", "code_diffuser": "att_mapper", "restoration_net": "g_ema"}
DETECTOR = "retinaface_mobile0.25"
ADVICE = re.compile(r"weights_only", re.IGNORECASE)
cli.build_parser()   # import every command module now (a child without privileges could not read them)


@dataclass
class Refs:
    dir: Path
    pt: dict[str, Path]                       # tiny official-layout files (stored zip members)
    st: dict[str, Path]                       # their conversions
    objects: dict[str, dict]                  # the containers written into pt
    expected: dict[str, dict[str, torch.Tensor]]   # network tensors after a load of pt
    detector: Path                            # a RetinaFace MobileNet-0.25 file (random weights, torch.save zip)
    detector_sd: dict[str, torch.Tensor]


def _tensors(loaded: ckpt.LoadedCheckpoint) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n, net in loaded.networks.items() for k, v in net.state_dict().items()}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Refs:
    d = tmp_path_factory.mktemp("loader_refs")
    pt = write_tiny_checkpoints(d)
    st = {k: convert_checkpoint(p, d / "st") for k, p in pt.items()}
    expected = {k: _tensors(load_checkpoint(p)) for k, p in pt.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        det_sd = RetinaFaceDetector(MOBILENET_025).state_dict()
    det = d / "detector" / "detection_mobilenet0.25_Final.pth"
    det.parent.mkdir()
    torch.save(det_sd, det)
    return Refs(d, pt, st, tiny_official_objects(), expected, det, det_sd)


#----------------------------------------------------------------------------
# File builders


def _inner(obj: dict, kind: str) -> dict[str, torch.Tensor]:
    return obj[INNER[kind]]


def pt_with(kind: str, edit: Callable[[dict[str, torch.Tensor]], Any], name: str | None = None):
    """A builder: the tiny official container of ``kind`` with its state dict edited."""
    def build(r: Refs, tmp: Path) -> Path:
        obj = copy.deepcopy(r.objects[kind])
        edit(_inner(obj, kind))
        p = tmp / (name or f"{kind}.pt")
        torch.save(obj, p)
        return p
    return build


def st_with(kind: str, edit_tensors: Callable[[dict], Any] | None = None,
            edit_configs: Callable[[dict], Any] | None = None, raw_configs: str | None = None):
    """A builder: the converted ``kind`` file with its tensors or its ``vspbfr.configs`` JSON edited."""
    def build(r: Refs, tmp: Path) -> Path:
        tensors = load_file(str(r.st[kind]))
        with safe_open(str(r.st[kind]), framework="pt") as f:
            meta = dict(f.metadata())
        if edit_tensors:
            edit_tensors(tensors)
        if edit_configs:
            configs = json.loads(meta["vspbfr.configs"])
            edit_configs(configs)
            meta["vspbfr.configs"] = json.dumps(configs)
        if raw_configs is not None:
            meta["vspbfr.configs"] = raw_configs
        p = tmp / f"{kind}.safetensors"
        save_file(tensors, str(p), metadata=meta)
        return p
    return build


def rezip(src: Path, dst: Path, method: int = zipfile.ZIP_DEFLATED, replace: dict[str, bytes] | None = None,
          damage: str | None = None) -> Path:
    """Copy a zip checkpoint member by member with ``method``; ``replace`` swaps a member's bytes (valid CRC),
    ``damage`` flips bytes of a member after writing (its CRC then fails)."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", method) as zout:
        for info in zin.infolist():
            data = next((v for k, v in replace.items() if info.filename.endswith(k)), zin.read(info.filename))
            zout.writestr(info.filename, data, compress_type=method)
    if damage is not None:
        raw = bytearray(dst.read_bytes())
        with zipfile.ZipFile(dst) as z:
            info = next(i for i in z.infolist() if i.filename.endswith(damage))
        off = info.header_offset
        start = off + 30 + int.from_bytes(raw[off + 26:off + 28], "little") + int.from_bytes(raw[off + 28:off + 30],
                                                                                                "little")
        raw[start + 4] ^= 0xFF
        dst.write_bytes(bytes(raw))
    return dst


def _set(key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    return lambda sd: sd.__setitem__(key, fn(sd[key]))


def _poison(value: float, count: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[:count] = value
        return t
    return fn


def _det_with(edit: Callable[[dict[str, torch.Tensor]], Any]):
    def build(r: Refs, tmp: Path) -> Path:
        sd = {k: v.clone() for k, v in r.detector_sd.items()}
        edit(sd)
        p = tmp / "detection_mobilenet0.25_Final.pth"
        torch.save(sd, p)
        return p
    return build


def _bytes(data: bytes, name: str = "restoration_net.pt"):
    def build(r: Refs, tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(data)
        return p
    return build


def _truncated(r: Refs, tmp: Path) -> Path:
    data = r.pt["restoration_net"].read_bytes()
    return _bytes(data[: len(data) // 2])(r, tmp)


def _damaged_tensor_member(r: Refs, tmp: Path) -> Path:
    return rezip(r.pt["restoration_net"], tmp / "restoration_net.pt", zipfile.ZIP_STORED, damage="data/0")


def _garbage_pickle_member(r: Refs, tmp: Path) -> Path:
    return rezip(r.pt["restoration_net"], tmp / "restoration_net.pt", zipfile.ZIP_STORED,
                 replace={"data.pkl": b"\x80\x02}q\x00(X\x05\x00\x00\x00g_emaq\x01\xff\xfe\xfd garbage"})


def _bzip2_members(r: Refs, tmp: Path) -> Path:
    return rezip(r.pt["code_diffuser"], tmp / "code_diffuser.pt", zipfile.ZIP_BZIP2)


def _folder(r: Refs, tmp: Path) -> Path:
    (tmp / "restoration_net.pt").mkdir()
    return tmp / "restoration_net.pt"


def _unreadable_file(r: Refs, tmp: Path) -> Path:
    return tmp / "restoration_net.pt"   # opened by a patched os-level open (see test_clean_errors)


#----------------------------------------------------------------------------
# Clean errors of the loaders


@dataclass
class Bad:
    id: str
    build: Callable[[Refs, Path], Path]
    error: type[Exception]
    pattern: str                      # regex the message must match (after the file name)
    loader: str = "network"           # network | detector


W = "restoration_net"
CD = "code_diffuser"
SED = "style_encoder_decoder"
BAD: list[Bad] = [
    # damaged containers: never "could run code", never torch's advice
    Bad("truncated-zip", _truncated, CheckpointError, r"truncated or corrupt"),
    Bad("random-bytes", _bytes(bytes(range(256)) * 3), CheckpointError, r"cannot read this file"),
    Bad("zip-header-then-zeros", _bytes(b"PK\x03\x04" + b"\x00" * 60), CheckpointError, r"corrupt|damaged"),
    Bad("zip-member-crc", _damaged_tensor_member, CheckpointError, r"member '.*data/0' is damaged"),
    Bad("zip-garbage-pickle", _garbage_pickle_member, CheckpointError, r"cannot read this file as a PyTorch"),
    Bad("legacy-garbage", _bytes(b"\x80\x02garbage-not-a-pickle"), CheckpointError, r"cannot read this file"),
    Bad("legacy-random", _bytes(bytes((i * 7919) % 251 for i in range(2000))), CheckpointError, r"cannot read"),
    Bad("empty-file", _bytes(b""), CheckpointError, r"is empty"),
    Bad("folder", _folder, CheckpointError, r"is a folder"),
    Bad("missing", lambda r, tmp: tmp / "nope.pt", ModelNotFoundError, r"not found"),
    Bad("bzip2-members", _bzip2_members, CheckpointError, r"compression method"),
    Bad("non-str-keys", pt_with(W, lambda sd: sd.__setitem__(7, torch.zeros(1))), CheckpointError,
        r"keys must be strings"),
    # NaN / Inf, named with their count
    Bad("nan-weight", pt_with(W, _set("final_transfer.weight", _poison(float("nan"), 3))), CheckpointError,
        r"NaN or infinite.*'final_transfer\.weight' \(3 of \d+ values\)"),
    Bad("inf-code-diffuser", pt_with(CD, _set("att_mapper.0.q_matrix.weight", _poison(float("inf"), 2))),
        CheckpointError, r"'att_mapper\.0\.q_matrix\.weight' \(2 of"),
    Bad("nan-latent-avg", lambda r, tmp: _latent_avg_nan(r, tmp), CheckpointError, r"'latent_avg' \(1 of"),
    Bad("nan-decoder", pt_with(SED, _set("decoder.to_rgb1.bias", _poison(float("-inf"), 1))), CheckpointError,
        r"'decoder\.to_rgb1\.bias' \(1 of"),
    Bad("float64-overflow", pt_with(W, _set("style.1.weight", lambda t: t.double().fill_(1e300))),
        CheckpointError, r"'style\.1\.weight' \(\d+ of"),
    Bad("nan-safetensors", st_with(W, edit_tensors=_set("final_linear.0.weight", _poison(float("nan"), 5))),
        CheckpointError, r"'final_linear\.0\.weight' \(5 of"),
    Bad("negative-running-var", pt_with(SED, lambda sd: _bn_var(sd, -1.0)), CheckpointError,
        r"running_var.*negative variance"),
    # dtypes
    Bad("int-weight", pt_with(W, _set("final_transfer.weight", lambda t: t.long())), CheckpointError,
        r"wrong dtype.*'final_transfer\.weight' is int64, the network expects floating-point values"),
    Bad("bool-weight", pt_with(CD, _set("att_mapper.1.k_matrix.weight", lambda t: t > 0)), CheckpointError,
        r"'att_mapper\.1\.k_matrix\.weight' is bool"),
    Bad("complex-weight", pt_with(W, _set("final_transfer.bias", lambda t: t.to(torch.complex64))), CheckpointError,
        r"'final_transfer\.bias' is complex64"),
    Bad("float-counter", pt_with(SED, lambda sd: _bn_counter(sd)), CheckpointError,
        r"num_batches_tracked' is float32, the network expects integer values"),
    Bad("int-safetensors", st_with(CD, edit_tensors=_set("att_mapper.0.v_matrix.weight", lambda t: t.int())),
        CheckpointError, r"'att_mapper\.0\.v_matrix\.weight' is int32"),
    # configuration metadata of converted files
    Bad("cfg-zero-steps", st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(timesteps=0)),
        CheckpointError, r"code_diffuser\.timesteps = 0 must be a positive integer"),
    Bad("cfg-huge-steps", st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(timesteps=10 ** 9)),
        CheckpointError, r"code_diffuser\.timesteps = 1000000000 must be between 1 and 10000"),
    Bad("cfg-negative-tokens", st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(attn_tokens=-18)),
        CheckpointError, r"code_diffuser\.attn_tokens = -18 must be a positive integer"),
    Bad("cfg-zero-lr", st_with(W, edit_configs=lambda c: c["restoration_net"].update(lr_mlp=0)),
        CheckpointError, r"restoration_net\.lr_mlp = 0 must be a finite number greater than 0"),
    Bad("cfg-nan-lr", st_with(W, raw_configs='{"restoration_net": {"lr_mlp": NaN}}'), CheckpointError,
        r"restoration_net\.lr_mlp = NaN must be a finite number"),
    Bad("cfg-string-int", st_with(W, edit_configs=lambda c: c["restoration_net"].update(w_dim="16")),
        CheckpointError, r'restoration_net\.w_dim = "16" must be an integer'),
    Bad("cfg-bool-int", st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(num_blocks=True)),
        CheckpointError, r"code_diffuser\.num_blocks = true must be an integer"),
    Bad("cfg-negative-width", st_with(SED, edit_configs=lambda c: c["style_encoder"].update(widths=[16, -32, 48, 64])),
        CheckpointError, r"style_encoder\.widths = \[16, -32, 48, 64\] must hold positive integers"),
    Bad("cfg-float-in-list", st_with(SED, edit_configs=lambda c: c["style_encoder"].update(units=[1, 1.5, 1, 1])),
        CheckpointError, r"style_encoder\.units = .* must be a list of integers"),
    Bad("cfg-resolution", st_with(SED, edit_configs=lambda c: c["stylegan"].update(resolution=24)),
        CheckpointError, r"stylegan\.resolution = 24 must be a power of two"),
    Bad("cfg-noise-level", st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(linear_end=1.5)),
        CheckpointError, r"code_diffuser\.linear_end = 1\.5 must be a noise level in \(0, 1\]"),
    Bad("cfg-cross-field", st_with(SED, edit_configs=lambda c: c["style_encoder"].update(coarse_ws=5, middle_ws=4)),
        CheckpointError, r"section 'style_encoder' .*coarse_ws <= middle_ws"),
    Bad("cfg-unknown-field", st_with(W, edit_configs=lambda c: c["restoration_net"].update(dropout=0.5)),
        CheckpointError, r"unknown field restoration_net\.dropout = 0\.5"),
    Bad("cfg-unknown-section", st_with(CD, edit_configs=lambda c: c.update(restoration_net={})),
        CheckpointError, r"unknown section 'restoration_net' = \{\} for a code_diffuser file"),
    Bad("cfg-not-object", st_with(CD, raw_configs="[4, 18]"), CheckpointError,
        r"must be a JSON object of configurations, found list \[4, 18\]"),
    Bad("cfg-section-not-object", st_with(CD, raw_configs='{"code_diffuser": 4}'), CheckpointError,
        r"section 'code_diffuser' must be a JSON object, found int 4"),
    Bad("cfg-bad-json", st_with(CD, raw_configs='{"code_diffuser": {'), CheckpointError, r"is not valid JSON"),
    Bad("cfg-contradicts-shapes", st_with(W, edit_configs=lambda c: c["restoration_net"].update(w_dim=32)),
        CheckpointError, r"restoration_net\.w_dim = 32, but the tensors give 16"),
    # the detector: same reader, strict dtypes and values
    Bad("det-nan", _det_with(_set("fpn.output1.0.weight", _poison(float("nan"), 4))), CheckpointError,
        r"NaN or infinite.*'fpn\.output1\.0\.weight' \(4 of", "detector"),
    Bad("det-inf-bn", _det_with(_set("body.stage1.0.1.running_mean", _poison(float("inf"), 1))), CheckpointError,
        r"'body\.stage1\.0\.1\.running_mean' \(1 of", "detector"),
    Bad("det-negative-var", _det_with(_set("ssh1.conv3X3.1.running_var", lambda t: -t)), CheckpointError,
        r"'ssh1\.conv3X3\.1\.running_var'.*negative", "detector"),
    Bad("det-float-counter", _det_with(_set("fpn.merge1.1.num_batches_tracked", lambda t: t.float())),
        CheckpointError, r"'fpn\.merge1\.1\.num_batches_tracked' is float32", "detector"),
    Bad("det-int-weight", _det_with(_set("ClassHead.0.conv1x1.weight", lambda t: t.long())), CheckpointError,
        r"'ClassHead\.0\.conv1x1\.weight' is int64", "detector"),
    Bad("det-random-bytes", _bytes(bytes(range(256)) * 4, "detection_mobilenet0.25_Final.pth"), CheckpointError,
        r"cannot read this file", "detector"),
    Bad("det-legacy-garbage", _bytes(b"\x80\x02garbage", "detection_mobilenet0.25_Final.pth"), CheckpointError,
        r"cannot read this file", "detector"),
    Bad("det-empty-dict", _det_with(lambda sd: sd.clear()), CheckpointError, r"found an empty dict", "detector"),
]


def _latent_avg_nan(r: Refs, tmp: Path) -> Path:
    obj = copy.deepcopy(r.objects[SED])
    obj["latent_avg"].view(-1)[5] = float("nan")
    p = tmp / f"{SED}.pt"
    torch.save(obj, p)
    return p


def _bn_var(sd: dict[str, torch.Tensor], value: float) -> None:
    key = next(k for k in sd if k.endswith("running_var"))
    sd[key] = torch.full_like(sd[key], value)


def _bn_counter(sd: dict[str, torch.Tensor]) -> None:
    key = next(k for k in sd if k.endswith("num_batches_tracked"))
    sd[key] = sd[key].float()


def _load(loader: str, path: Path) -> Any:
    return load_detector_file(DETECTOR, path) if loader == "detector" else load_checkpoint(path)


def _messages(exc: BaseException) -> list[str]:
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__
    return out


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_clean_errors(case: Bad, refs: Refs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = case.build(refs, tmp_path)
    built: list[str] = []
    real_build = ckpt._build
    monkeypatch.setattr(ckpt, "_build", lambda cls, cfg: built.append(cls.__name__) or real_build(cls, cfg))
    with pytest.raises(case.error) as info:
        _load(case.loader, path)
    exc = info.value
    assert not isinstance(exc, UnsafeCheckpointError), "damaged data reported as unsafe"
    message = str(exc)
    assert ckpt.shown(path) in message
    assert re.search(case.pattern, message, re.S), message
    assert not any(ADVICE.search(m) for m in _messages(exc)), message
    if case.id.startswith("cfg-"):
        assert built == [], "a network was built before the configuration metadata was validated"


def test_unreadable_file_is_a_clean_error(refs: Refs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 does not stop root: the open is refused at the os level instead."""
    import builtins

    path = tmp_path / "restoration_net.pt"
    shutil.copy(refs.pt[W], path)
    real_open = builtins.open

    def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(CheckpointError, match=r"cannot open the model file \(Permission denied\)"):
        load_checkpoint(path)


#----------------------------------------------------------------------------
# Correct loads


def _deflated(kind: str):
    return lambda r, tmp: rezip(r.pt[kind], tmp / f"{kind}.pt")


def _mixed_members(r: Refs, tmp: Path) -> Path:
    """Only the tensor data deflated, the rest stored (what some zip tools do)."""
    dst = tmp / f"{W}.pt"
    with zipfile.ZipFile(r.pt[W]) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=method)
    return dst


def _fs_name(name: bytes) -> str:
    return os.fsdecode(name)


def _non_utf8(kind: str, suffix: str = ".pt", as_bytes: bool = False):
    def build(r: Refs, tmp: Path) -> Any:
        folder = tmp / _fs_name(b"models-\xff")
        folder.mkdir()
        src = r.pt[kind] if suffix == ".pt" else r.st[kind]
        p = folder / _fs_name(b"net-\xfe\xff" + suffix.encode())
        shutil.copy(src, p)
        return os.fsencode(p) if as_bytes else p
    return build


def _other_dtypes(r: Refs, tmp: Path) -> Path:
    """float64 / float16-exact values and an int32 counter: converted to the network's dtypes on load."""
    obj = copy.deepcopy(r.objects[SED])
    sd = obj["state_dict"]
    for k, v in list(sd.items()):
        if v.is_floating_point():
            sd[k] = v.double()
        elif k.endswith("num_batches_tracked"):
            sd[k] = v.int()
    p = tmp / f"{SED}.pt"
    torch.save(obj, p)
    return p


def _legacy_format(r: Refs, tmp: Path) -> Path:
    p = tmp / f"{CD}.pt"
    torch.save(r.objects[CD], p, _use_new_zipfile_serialization=False)
    return p


def _explicit_free_fields(r: Refs, tmp: Path) -> Path:
    return st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(timesteps=4, attn_tokens=18,
                                                                        linear_start=0.1, linear_end=0.99))(r, tmp)


@dataclass
class Good:
    id: str
    build: Callable[[Refs, Path], Any]
    kind: str


GOOD: list[Good] = [
    *[Good(f"deflated-{k}", _deflated(k), k) for k in KINDS],
    Good("deflated-tensor-members-only", _mixed_members, W),
    *[Good(f"non-utf8-path-{k}", _non_utf8(k), k) for k in KINDS],
    Good("non-utf8-bytes-path", _non_utf8(W, as_bytes=True), W),
    Good("non-utf8-safetensors", _non_utf8(CD, ".safetensors"), CD),
    Good("float64-and-int32-file", _other_dtypes, SED),
    Good("legacy-torch-format", _legacy_format, CD),
    Good("configs-with-free-fields", _explicit_free_fields, CD),
]


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_correct_loads(case: Good, refs: Refs, tmp_path: Path) -> None:
    path = case.build(refs, tmp_path)
    loaded = load_checkpoint(path)
    assert loaded.kind == case.kind
    _assert_same(_tensors(loaded), refs.expected[case.kind])


@pytest.mark.parametrize("kind", KINDS)
def test_convert_of_a_deflated_file_writes_the_right_tensors(kind: str, refs: Refs, tmp_path: Path) -> None:
    src = rezip(refs.pt[kind], tmp_path / f"{kind}.pt")
    with zipfile.ZipFile(src) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    dst = convert_checkpoint(src, tmp_path / "out")
    assert load_file(str(dst)).keys() == load_file(str(refs.st[kind])).keys()
    for k, v in load_file(str(refs.st[kind])).items():
        assert torch.equal(load_file(str(dst))[k], v), k
    _assert_same(_tensors(load_checkpoint(dst)), refs.expected[kind])


def test_convert_with_non_utf8_names(refs: Refs, tmp_path: Path) -> None:
    src = _non_utf8(W)(refs, tmp_path)
    out = tmp_path / _fs_name(b"out-\xff")
    dst = convert_checkpoint(src, out)
    assert dst.parent == out
    _assert_same(_tensors(load_checkpoint(dst)), refs.expected[W])
    with weights_file._native_name(dst) as name, safe_open(name, framework="pt") as f:
        assert f.metadata()["source_file"] == "net-\\xfe\\xff.pt"


@pytest.mark.parametrize("variant", ["deflated-zip", "legacy", "non-utf8-name", "safetensors"])
def test_detector_correct_loads(variant: str, refs: Refs, tmp_path: Path) -> None:
    if variant == "deflated-zip":
        path = rezip(refs.detector, tmp_path / "detection_mobilenet0.25_Final.pth")
    elif variant == "legacy":
        path = tmp_path / "detection_mobilenet0.25_Final.pth"
        torch.save(refs.detector_sd, path, _use_new_zipfile_serialization=False)
    elif variant == "non-utf8-name":
        path = tmp_path / _fs_name(b"det-\xff.pth")
        shutil.copy(refs.detector, path)
    else:
        path = tmp_path / "detection_mobilenet0.25_Final.safetensors"
        save_file({k: v.contiguous() for k, v in refs.detector_sd.items()}, str(path))
    det = load_detector_file(DETECTOR, path)
    for k, v in refs.detector_sd.items():
        assert torch.equal(det.state_dict()[k], v), k


#----------------------------------------------------------------------------
# Refused as unsafe: only real forbidden globals, and they never run


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _evil(fmt: str, target: str):
    def build(r: Refs, tmp: Path) -> tuple[Path, Path]:
        marker = tmp / "payload-ran"
        name = "detection_mobilenet0.25_Final.pth" if target == "detector" else f"{W}.pt"
        obj: dict = ({k: v for k, v in r.detector_sd.items()} if target == "detector"
                     else copy.deepcopy(r.objects[W]))
        obj["payload"] = _Payload(str(marker))
        p = tmp / name
        torch.save(obj, p, _use_new_zipfile_serialization=fmt != "legacy")
        if fmt == "deflated":
            p = rezip(p, tmp / ("deflated-" + name))
        return p, marker
    return build


UNSAFE = [(f"{fmt}-{target}", _evil(fmt, target), target)
          for fmt in ("zip", "legacy", "deflated") for target in ("network", "detector")]


@pytest.mark.parametrize("case_id,build,target", UNSAFE, ids=[c[0] for c in UNSAFE])
def test_refused_unsafe(case_id: str, build: Callable, target: str, refs: Refs, tmp_path: Path) -> None:
    path, marker = build(refs, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        _load(target, path)
    assert "os.makedirs" in str(info.value) or "posix.makedirs" in str(info.value)
    assert "could run code" in str(info.value)
    assert not any(ADVICE.search(m) for m in _messages(info.value))
    assert not marker.exists()


#----------------------------------------------------------------------------
# vspbfr info --check: NaN files are named with their tensor


def test_info_check_names_nan_tensors(refs: Refs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for kind in KINDS:
        shutil.copy(refs.pt[kind], models)
    pt_with(W, _set("convs.0.conv.weight", _poison(float("nan"), 2)))(refs, models)
    _det_with(_set("LandmarkHead.1.conv1x1.bias", _poison(float("inf"), 1)))(refs, models)
    st_with(CD, edit_configs=lambda c: c["code_diffuser"].update(timesteps=0))(refs, models)
    rows = {r.name: r for r in info_cmd.inspect_models_dir(models, check=True)}
    assert re.search(r"'convs\.0\.conv\.weight' \(2 of", rows["restoration_net.pt"].problem)
    det_problem = rows["detection_mobilenet0.25_Final.pth"].problem
    assert re.search(r"'LandmarkHead\.1\.conv1x1\.bias' \(1 values\)", det_problem)
    assert "code_diffuser.timesteps = 0" in rows["code_diffuser.safetensors"].problem
    unchecked = {r.name: r for r in info_cmd.inspect_models_dir(models)}
    assert "code_diffuser.timesteps = 0" in unchecked["code_diffuser.safetensors"].problem   # the header alone tells
    assert rows["style_encoder_decoder.pt"].checked
    assert cli.main(["info", str(models), "--check"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "convs.0.conv.weight" in out


#----------------------------------------------------------------------------
# CLI: convert -o and info DIR


@dataclass
class CliBad:
    id: str
    setup: Callable[[Refs, Path], list[str]]
    pattern: str
    untouched: Callable[[Refs, Path], None] | None = None


def _out_is_file(r: Refs, tmp: Path) -> list[str]:
    (tmp / "out").write_bytes(b"keep")
    return ["convert", str(r.pt[W]), "-o", str(tmp / "out")]


def _out_is_file_check(r: Refs, tmp: Path) -> None:
    assert (tmp / "out").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp.iterdir()) == ["out"]


def _out_under_file(r: Refs, tmp: Path) -> list[str]:
    (tmp / "plain").write_bytes(b"x")
    return ["convert", str(r.pt[W]), "-o", str(tmp / "plain" / "sub")]


def _out_in_proc(r: Refs, tmp: Path) -> list[str]:
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc (a folder nobody, not even root, can write into)")
    return ["convert", str(r.pt[W]), "-o", "/proc"]


def _overwrite_input(r: Refs, tmp: Path) -> list[str]:
    out = tmp / "out"
    out.mkdir()
    shutil.copy(r.st[CD], out)
    return ["convert", str(out / "code_diffuser.safetensors"), "-o", str(out)]


def _input_unchanged(r: Refs, tmp: Path) -> None:
    assert (tmp / "out" / "code_diffuser.safetensors").read_bytes() == r.st[CD].read_bytes()
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["code_diffuser.safetensors"]


def _later_input_would_be_replaced(r: Refs, tmp: Path) -> list[str]:
    out = tmp / "out"
    out.mkdir()
    shutil.copy(r.st[CD], out)
    return ["convert", str(r.pt[CD]), str(out / "code_diffuser.safetensors"), "-o", str(out)]


def _two_of_a_kind(r: Refs, tmp: Path) -> list[str]:
    other = tmp / "b" / "code_diffuser.pt"
    other.parent.mkdir()
    shutil.copy(r.pt[CD], other)
    return ["convert", str(r.pt[CD]), str(other), "-o", str(tmp / "out")]


def _only_first_written(r: Refs, tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["code_diffuser.safetensors"]


def _empty_out(r: Refs, tmp: Path) -> list[str]:
    return ["convert", str(r.pt[W]), "-o", ""]


def _corrupt_input(r: Refs, tmp: Path) -> list[str]:
    bad = _bytes(b"\x80\x02garbage")(r, tmp)
    return ["convert", str(bad), "-o", str(tmp / "out")]


def _nothing_written(r: Refs, tmp: Path) -> None:
    assert not (tmp / "out").exists()


def _info_on_file(r: Refs, tmp: Path) -> list[str]:
    (tmp / "models").write_bytes(b"not a folder")
    return ["info", str(tmp / "models")]


def _info_detector_dir_file(r: Refs, tmp: Path) -> list[str]:
    (tmp / "det").write_bytes(b"x")
    return ["info", str(r.dir), "--detector-dir", str(tmp / "det")]


CLI_BAD: list[CliBad] = [
    CliBad("convert-out-is-a-file", _out_is_file, r"output folder .*out exists and is not a folder",
           _out_is_file_check),
    CliBad("convert-out-under-a-file", _out_under_file, r"cannot create the output folder .*plain.*is a file"),
    CliBad("convert-out-unwritable-proc", _out_in_proc, r"cannot write into the output folder /proc"),
    CliBad("convert-onto-its-input", _overwrite_input, r"would overwrite the input file itself", _input_unchanged),
    CliBad("convert-onto-a-later-input", _later_input_would_be_replaced,
           r"would overwrite .*code_diffuser\.safetensors, an input", _input_unchanged),
    CliBad("convert-two-of-a-kind", _two_of_a_kind, r"two code_diffuser files", _only_first_written),
    CliBad("convert-empty-out", _empty_out, r"-o/--out is empty"),
    CliBad("convert-corrupt-input", _corrupt_input, r"cannot read this file", _nothing_written),
    CliBad("info-dir-is-a-file", _info_on_file, r"models folder .*models is not a folder"),
    CliBad("info-detector-dir-is-a-file", _info_detector_dir_file, r"detector folder .*det is not a folder"),
]


@pytest.mark.parametrize("case", CLI_BAD, ids=[c.id for c in CLI_BAD])
def test_cli_clean_errors(case: CliBad, refs: Refs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = case.setup(refs, tmp_path)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"^error: .*" + case.pattern, err, re.S | re.M), err
    assert "Traceback" not in err and not ADVICE.search(err)
    if case.untouched:
        case.untouched(refs, tmp_path)


@pytest.mark.parametrize("which", ["convert-out-is-a-file", "info-dir-is-a-file"])
def test_cli_subprocess_has_no_traceback(which: str, refs: Refs, tmp_path: Path) -> None:
    case = next(c for c in CLI_BAD if c.id == which)
    argv = case.setup(refs, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "vspbfr_core", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert re.search(case.pattern, proc.stderr) and "Traceback" not in proc.stderr, proc.stderr


def test_convert_ignores_planted_symlinks(refs: Refs, tmp_path: Path) -> None:
    """A symlink planted at ``<dst>.part`` is never followed; one at ``<dst>`` is replaced, not written through."""
    out = tmp_path / "out"
    out.mkdir()
    victim_part, victim_dst = tmp_path / "victim-part", tmp_path / "victim-dst"
    victim_part.write_bytes(b"precious")
    victim_dst.write_bytes(b"precious too")
    (out / "restoration_net.safetensors.part").symlink_to(victim_part)
    (out / "restoration_net.safetensors").symlink_to(victim_dst)
    assert cli.main(["convert", str(refs.pt[W]), "-o", str(out)]) == 0
    assert victim_part.read_bytes() == b"precious" and victim_dst.read_bytes() == b"precious too"
    dst = out / "restoration_net.safetensors"
    assert not dst.is_symlink()
    _assert_same(_tensors(load_checkpoint(dst)), refs.expected[W])
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers == ["restoration_net.safetensors", "restoration_net.safetensors.part"]   # only what was there


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_convert_write_failure_leaves_nothing(failing: str, refs: Refs, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    assert cli.main(["convert", str(refs.pt[W]), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {out / 'restoration_net.safetensors'} in the output folder {out}" in err
    assert "nothing was written" in err and "Traceback" not in err
    assert list(out.iterdir()) == []


def _refuse_in(folder: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """Make ``os.<call>`` fail with EACCES for paths inside ``folder`` (what chmod does to a non-root user)."""
    real = getattr(os, call)

    def refusing(path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(path, (str, bytes, os.PathLike)):
            target = Path(os.fsdecode(path))
            if folder in (target, target.parent):
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, call, refusing)


def test_convert_into_an_unwritable_folder_os_level(refs: Refs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    _refuse_in(out, monkeypatch, "open")
    assert cli.main(["convert", str(refs.pt[W]), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write into the output folder {out} (Permission denied)" in err and "Traceback" not in err
    monkeypatch.undo()
    assert list(out.iterdir()) == []


def test_info_on_an_unreadable_folder_os_level(refs: Refs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models"
    shutil.copytree(refs.dir / "st", models)
    _refuse_in(models, monkeypatch, "scandir")
    assert cli.main(["info", str(models)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read the models folder {models} (Permission denied)" in err and "Traceback" not in err
    with pytest.raises(InputError, match="cannot read the models folder"):
        info_cmd.inspect_models_dir(models)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores chmod")
@pytest.mark.parametrize("which", ["info", "convert"])
def test_chmod_as_a_normal_user(which: str, refs: Refs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o000 if which == "info" else 0o555)
    try:
        argv = ["info", str(folder)] if which == "info" else ["convert", str(refs.pt[W]), "-o", str(folder)]
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert ("cannot read the models folder" if which == "info" else "cannot write into the output folder") in err
    finally:
        folder.chmod(0o755)


def _as_nobody(fn: Callable[[], Any]) -> tuple[str, str]:
    """Run ``fn`` in a forked child that dropped root to uid/gid 65534: ``(exception class or 'ok', message)``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: no pytest machinery, only the already-imported vspbfr code
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                result = f"ok\n{fn()}"
            except Exception as exc:  # reported to the parent, which asserts on it
                result = f"{type(exc).__name__}\n{exc}"
            os.write(write_end, result.encode("utf-8", "backslashreplace"))
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    name, _, message = data.decode("utf-8").partition("\n")
    return name, message


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="drops root privileges in a child process (runs as root only)")
def test_real_permission_denial_as_root(refs: Refs) -> None:
    base = Path(tempfile.mkdtemp(prefix="vspbfr-perm-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o000)
        locked.chmod(0o000)
        readonly = base / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
        src = base / "restoration_net.pt"
        shutil.copy(refs.pt[W], src)
        src.chmod(0o644)
        name, message = _as_nobody(lambda: info_cmd.inspect_models_dir(locked))
        assert name == "InputError" and f"cannot read the models folder {locked} (Permission denied)" in message
        name, message = _as_nobody(lambda: ckpt.check_out_dir(readonly))
        assert name == "OutputError" and f"cannot write into the output folder {readonly}" in message
        assert list(readonly.iterdir()) == []
    finally:
        for p in (base / "locked", base / "readonly"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(base)

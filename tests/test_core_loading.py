"""Checkpoint loading: tiny round trips, detection by keys, config inference and every refusal."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vspbfr_core.checkpoints import OFFICIAL_FILES, convert_checkpoint, detect_kind, load_checkpoint, read_checkpoint
from vspbfr_core.encoder import StyleEncoder
from vspbfr_core.errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from vspbfr_core.restorer import RestorationNet
from vspbfr_core.stylegan2 import StyleGAN2Synthesis
from vspbfr_core.wplus_diffusion import CodeDiffuser

from tiny_models import TINY_CODE_DIFFUSER as TINY_CD
from tiny_models import TINY_ENCODER as TINY_ENC
from tiny_models import TINY_RESTORATION as TINY_RN
from tiny_models import TINY_STYLEGAN as TINY_SG


def _randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.is_floating_point() and "kernel" not in name:
                value = torch.randn(t.shape, generator=g) * 0.5
                t.copy_(value.abs() + 0.5 if "running_var" in name else value)
    return net.eval()


def official_containers(seed: int = 0) -> dict[str, dict]:
    enc = _randomize(StyleEncoder(TINY_ENC), seed)
    sg = _randomize(StyleGAN2Synthesis(TINY_SG), seed + 1)
    cd = _randomize(CodeDiffuser(TINY_CD), seed + 2)
    rn = _randomize(RestorationNet(TINY_RN), seed + 3)
    enc_sd = {f"encoder.{k}": v for k, v in enc.state_dict().items() if k != "latent_avg"}
    dec_sd = {f"decoder.{k}": v for k, v in sg.state_dict().items()}
    # the official files also carry the StyleGAN mapping MLP, noise buffers and FIR kernels
    for i in range(1, 3):
        dec_sd[f"decoder.style.{i}.weight"] = torch.randn(16, 16)
        dec_sd[f"decoder.style.{i}.bias"] = torch.zeros(16)
    dec_sd["decoder.noises.noise_0"] = torch.randn(1, 1, 4, 4)
    dec_sd["decoder.convs.0.conv.blur.kernel"] = sg.convs[0].conv.blur.kernel.clone()
    rn_sd = dict(rn.state_dict())
    rn_sd["encoder_convs.1.conv.blur.kernel"] = rn.encoder_convs[1].conv.blur.kernel.clone()
    rn_sd["noises.noise_0"] = torch.randn(1, 1, 4, 4)
    return {
        "style_encoder_decoder": {"state_dict": {**enc_sd, **dec_sd}, "latent_avg": torch.randn(6, 16),
                                  "opts": {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True}},
        "code_diffuser": {"att_mapper": cd.state_dict(), "args": argparse.Namespace(lr=0.002), "iter": 5},
        "restoration_net": {"g_ema": rn_sd, "args": argparse.Namespace(size=16), "iter": 1, "g_optim": {"state": {}}},
    }


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for kind, obj in official_containers().items():
        out[kind] = d / OFFICIAL_FILES[kind]
        torch.save(obj, out[kind])
    return out


def test_tiny_round_trip_pt_and_safetensors(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    expected = {"style_encoder_decoder": {"style_encoder": TINY_ENC, "stylegan": TINY_SG},
                "code_diffuser": {"code_diffuser": TINY_CD}, "restoration_net": {"restoration_net": TINY_RN}}
    containers = official_containers()
    for kind, path in tiny_files.items():
        loaded = load_checkpoint(path)
        assert loaded.kind == kind
        assert loaded.configs == expected[kind]
        for net in loaded.networks.values():
            assert not net.training
            assert all(not p.requires_grad and p.device.type == "cpu" for p in net.parameters())
        st = convert_checkpoint(path, tmp_path)
        assert st.name == Path(OFFICIAL_FILES[kind]).stem + ".safetensors"
        again = load_checkpoint(st)
        assert again.kind == kind and again.configs == expected[kind]
        for name, net in loaded.networks.items():
            for (k, a), (k2, b) in zip(net.state_dict().items(), again.networks[name].state_dict().items()):
                assert k == k2 and torch.equal(a, b)
        raw = read_checkpoint(st)
        assert raw.metadata["source_sha256"] and len(raw.metadata["source_sha256"]) == 64
        assert json.loads(raw.metadata["vspbfr.configs"])
    # the loaded values are the file's values, not a fresh init
    enc = load_checkpoint(tiny_files["style_encoder_decoder"]).networks["style_encoder"]
    ref = containers["style_encoder_decoder"]["state_dict"]
    assert torch.equal(enc.input_layer[0].weight, ref["encoder.input_layer.0.weight"])


def test_latent_avg_broadcast_and_shapes(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    obj = torch.load(tiny_files["style_encoder_decoder"], weights_only=False)
    for shape in ((16,), (1, 16)):
        obj["latent_avg"] = torch.arange(16.0).reshape(shape)
        p = tmp_path / "e.pt"
        torch.save(obj, p)
        enc = load_checkpoint(p).networks["style_encoder"]
        assert enc.latent_avg.shape == (6, 16) and torch.equal(enc.latent_avg[3], torch.arange(16.0))
    obj["latent_avg"] = torch.zeros(5, 16)
    torch.save(obj, p)
    with pytest.raises(CheckpointError, match="latent_avg"):
        load_checkpoint(p)


def test_kind_detected_from_keys_not_name(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    misnamed = tmp_path / "style_encoder_decoder.pt"
    misnamed.write_bytes(tiny_files["restoration_net"].read_bytes())
    assert load_checkpoint(misnamed).kind == "restoration_net"
    with pytest.raises(CheckpointError, match="restoration_net file, but a code_diffuser file was expected"):
        load_checkpoint(misnamed, expect="code_diffuser")
    assert detect_kind(["foo.weight"]) is None


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False])
def test_forbidden_global_refused_without_running(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "executed"
    p = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "payload": _Evil(str(marker))}, p, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="makedirs"):
        load_checkpoint(p)
    assert not marker.exists()


def test_allowed_data_globals_load(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    obj = torch.load(tiny_files["code_diffuser"], weights_only=False)
    obj["best_fid"] = np.float64(12.5)
    obj["step"] = np.int64(3)
    obj["args"] = argparse.Namespace(lr=np.float32(0.1))
    p = tmp_path / "cd.pt"
    torch.save(obj, p)
    assert load_checkpoint(p).kind == "code_diffuser"


def test_truncated_and_corrupt_files(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    data = tiny_files["restoration_net"].read_bytes()
    p = tmp_path / "restoration_net.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)
    s = tmp_path / "restoration_net.safetensors"
    s.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a valid .safetensors"):
        load_checkpoint(s)
    with pytest.raises(ModelNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    q = tmp_path / "other.pt"
    torch.save({"model": {"layer.weight": torch.zeros(2)}}, q)
    with pytest.raises(CheckpointError, match="not a VSPBFR network file"):
        load_checkpoint(q)


def _mutated(tiny_files: dict[str, Path], tmp_path: Path, mutate) -> Path:
    obj = torch.load(tiny_files["restoration_net"], weights_only=False)
    mutate(obj["g_ema"])
    p = tmp_path / "rn.pt"
    torch.save(obj, p)
    return p


def test_strict_key_and_shape_errors(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    p = _mutated(tiny_files, tmp_path, lambda sd: sd.pop("to_rgbs.1.bias"))
    with pytest.raises(CheckpointError, match=r"restoration_net.*missing keys.*to_rgbs\.1\.bias"):
        load_checkpoint(p)
    p = _mutated(tiny_files, tmp_path, lambda sd: sd.__setitem__("convs.1.extra.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*convs\.1\.extra\.weight"):
        load_checkpoint(p)
    p = _mutated(tiny_files, tmp_path, lambda sd: sd.__setitem__("final_transfer.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*final_transfer\.bias"):
        load_checkpoint(p)
    p = _mutated(tiny_files, tmp_path, lambda sd: sd.__setitem__("encoder_convs.1.conv.blur.kernel", torch.ones(4, 4)))
    with pytest.raises(CheckpointError, match="FIR kernel"):
        load_checkpoint(p)
    assert str(p) in _error_text(p)


def _error_text(p: Path) -> str:
    try:
        load_checkpoint(p)
    except CheckpointError as exc:
        return str(exc)
    return ""


def test_safetensors_metadata_kind_must_match_keys(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    st = convert_checkpoint(tiny_files["code_diffuser"], tmp_path)
    tensors = load_file(str(st))
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"vspbfr.kind": "restoration_net"})
    with pytest.raises(CheckpointError, match="metadata says kind"):
        load_checkpoint(bad)


def test_convert_cli(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    from vspbfr_core.cli import main

    out = tmp_path / "converted"
    assert main(["convert", *map(str, tiny_files.values()), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["code_diffuser.safetensors", "restoration_net.safetensors",
                                                      "style_encoder_decoder.safetensors"]
    assert main(["convert", str(tmp_path / "missing.pt"), "-o", str(out)]) == 1


def test_garbage_legacy_and_zip_bytes_are_checkpoint_errors(tmp_path: Path) -> None:
    for i, data in enumerate((b"\x80\x02garbage-not-a-pickle", b"PK\x03\x04" + b"\x00" * 40, b"")):
        p = tmp_path / f"junk{i}.pt"
        p.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_checkpoint(p)


@pytest.mark.parametrize("zip_format", [True, False])
def test_restricted_unpickler_fallback_for_old_torch(tiny_files: dict[str, Path], tmp_path: Path,
                                                     zip_format: bool) -> None:
    """PyTorch < 2.5 has no safe_globals: the restricted-unpickler path must load the same and refuse the same."""
    import numpy as np

    from vspbfr_core.weights_file import _torch_load

    obj = torch.load(tiny_files["restoration_net"], weights_only=False)
    obj["best_fid"] = np.float64(1.5)
    p = tmp_path / "rn.pt"
    torch.save(obj, p, _use_new_zipfile_serialization=zip_format)
    fast, slow = _torch_load(p, restricted_fallback=False), _torch_load(p, restricted_fallback=True)
    assert isinstance(slow["args"], argparse.Namespace) and float(slow["best_fid"]) == 1.5
    assert fast["g_ema"].keys() == slow["g_ema"].keys()
    assert all(torch.equal(fast["g_ema"][k], slow["g_ema"][k]) for k in fast["g_ema"])
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "x": _Evil(str(marker))}, evil, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="makedirs"):
        _torch_load(evil, restricted_fallback=True)
    assert not marker.exists()

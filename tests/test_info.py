"""``vspbfr info``: present, missing, converted and partial files, detected kinds, sizes, ``--check``."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tiny_models import write_tiny_checkpoints, write_tiny_detector
from vspbfr_core import cli
from vspbfr_core.checkpoints import convert_checkpoint
from vspbfr_core.commands.info import inspect_models_dir
from vspbfr_core.paths import MODELS_ENV


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Tiny networks (.pt), one converted to .safetensors, and a RetinaFace-like mobile0.25 file."""
    src = tmp_path_factory.mktemp("tiny_info")
    pts = write_tiny_checkpoints(src)
    convert_checkpoint(pts["code_diffuser"], src)
    write_tiny_detector(src / "detection_mobilenet0.25_Final.pth", "mobile0.25")
    return src


@pytest.fixture
def models(tiny_dir, tmp_path):
    dst = tmp_path / "models"
    shutil.copytree(tiny_dir, dst)
    return dst


def _row(rows, name):
    (row,) = [r for r in rows if r.name == name]
    return row


def test_inventory_lists_states_kinds_and_sizes(models):
    (models / "restoration_net.pt.part").write_bytes(b"\0" * 123)
    rows = inspect_models_dir(models)
    sed = _row(rows, "style_encoder_decoder.pt")
    assert (sed.state, sed.kind, sed.size) == ("present", "style_encoder_decoder",
                                               (models / "style_encoder_decoder.pt").stat().st_size)
    conv = _row(rows, "code_diffuser.safetensors")
    assert (conv.state, conv.kind) == ("converted", "code_diffuser")
    assert _row(rows, "restoration_net.safetensors").state == "missing"
    assert _row(rows, "detection_Resnet50_Final.pth").state == "missing"
    det = _row(rows, "detection_mobilenet0.25_Final.pth")
    assert (det.state, det.kind) == ("present", "retinaface mobile0.25")
    part = _row(rows, "restoration_net.pt.part")
    assert (part.state, part.size) == ("partial", 123)
    assert not any(r.problem for r in rows)
    assert not any(r.checked for r in rows)


def test_cli_ready_folder(models, capsys):
    assert cli.main(["info", str(models)]) == 0
    out = capsys.readouterr().out
    assert f"models folder: {models} (--models)" in out
    assert "code_diffuser: uses code_diffuser.safetensors" in out
    assert "restoration_net: uses restoration_net.pt" in out
    assert "ready: all 3 networks" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("code_diffuser.pt "))
    assert "present" in line and "kB" in line and line.rstrip().endswith("code_diffuser")


def test_cli_missing_files_exit_1_and_say_how_to_get_them(models, capsys):
    (models / "restoration_net.pt").unlink()
    (models / "detection_mobilenet0.25_Final.pth").unlink()
    assert cli.main(["info", str(models)]) == 1
    out = capsys.readouterr().out
    assert "missing or unusable: restoration_net, a face detector" in out
    assert f"vspbfr download --models {models}" in out


def test_env_folder_and_separate_detector_folder(models, tmp_path, monkeypatch, capsys):
    det_dir = tmp_path / "det"
    det_dir.mkdir()
    shutil.move(str(models / "detection_mobilenet0.25_Final.pth"), det_dir)
    monkeypatch.setenv(MODELS_ENV, str(models))
    assert cli.main(["info"]) == 1                                  # the detector is not in the models folder
    assert "$VSPBFR_MODELS" in capsys.readouterr().out
    assert cli.main(["info", "--detector-dir", str(det_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["origin"] == "environment" and data["models_dir"] == str(models)
    det = next(f for f in data["files"] if f["name"] == "detection_mobilenet0.25_Final.pth")
    assert det["path"] == str(det_dir / "detection_mobilenet0.25_Final.pth")


def test_wrong_kind_under_a_name_is_reported_without_check(models, capsys):
    shutil.copy(models / "restoration_net.pt", models / "style_encoder_decoder.pt")
    rows = inspect_models_dir(models)
    row = _row(rows, "style_encoder_decoder.pt")
    assert row.kind == "restoration_net" and "not style_encoder_decoder" in row.problem
    assert cli.main(["info", str(models)]) == 1
    assert "PROBLEM" in capsys.readouterr().out


def test_check_loads_strictly_and_catches_truncation(models, capsys, monkeypatch):
    from vspbfr_core import download as dl

    # The tiny detector is not the official file: the pinned size and sha256 tell.
    assert "expected 1789735" in _row(inspect_models_dir(models, check=True), "detection_mobilenet0.25_Final.pth").problem
    det = (models / "detection_mobilenet0.25_Final.pth").read_bytes()
    monkeypatch.setitem(dl._DETECTOR_FACTS, "mobile0.25", {"size": len(det), "sha256": hashlib.sha256(det).hexdigest()})

    assert cli.main(["info", str(models), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("[check ok]") == 5                              # 3 .pt + 1 .safetensors + 1 detector

    data = (models / "restoration_net.pt").read_bytes()
    (models / "restoration_net.pt").write_bytes(data[: len(data) // 2])
    assert cli.main(["info", str(models), "--check"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("restoration_net.pt "))
    assert "PROBLEM" in line and "check ok" not in line


def test_check_compares_with_the_download_record(models, capsys):
    from vspbfr_core.download import RECORD_FILE

    record = {"format": "vspbfr-downloads-v1",
              "files": {"code_diffuser.pt": {"url": "x", "size": (models / "code_diffuser.pt").stat().st_size,
                                             "sha256": "0" * 64, "time": "2025-01-01T00:00:00Z"}}}
    (models / RECORD_FILE).write_text(json.dumps(record))
    rows = inspect_models_dir(models, check=True)
    row = _row(rows, "code_diffuser.pt")
    assert not row.checked and "recorded when it was downloaded" in row.problem
    assert _row(rows, "restoration_net.pt").checked


def test_detector_check_rejects_a_misnamed_backbone(models):
    write_tiny_detector(models / "detection_Resnet50_Final.pth", "mobile0.25")
    rows = inspect_models_dir(models, check=True)
    row = _row(rows, "detection_Resnet50_Final.pth")
    # The pinned sha256 prefix/suffix of the real ResNet-50 file already tells it apart.
    assert row.problem and "6d1de9c2" in row.problem


def test_identity_file_is_an_optional_row(models, capsys, monkeypatch):
    from identity_models import write_tiny_arcface

    from vspbfr_core import download as dl

    name = "recognition_arcface_ir_se50.pth"
    row = _row(inspect_models_dir(models), name)
    assert (row.role, row.state, row.kind, row.problem) == ("identity", "missing", "arcface (optional)", None)
    assert cli.main(["info", str(models)]) == 0                      # its absence changes nothing
    out = capsys.readouterr().out
    assert "ready: all 3 networks" in out and "missing or unusable" not in out
    assert f"get it with `vspbfr download --models {models} --only identity`" in out
    assert cli.main(["info", str(models), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and any(f["name"] == name and f["state"] == "missing" for f in data["files"])

    data = write_tiny_arcface(models / name).read_bytes()
    row = _row(inspect_models_dir(models, check=True), name)
    assert row.state == "present" and "expected a035c768" in row.problem    # not the official file
    monkeypatch.setitem(dl._IDENTITY_FACTS, "arcface", {"sha256": hashlib.sha256(data).hexdigest()})
    row = _row(inspect_models_dir(models, check=True), name)
    assert row.checked and row.problem is None

    det = (models / "detection_mobilenet0.25_Final.pth").read_bytes()
    monkeypatch.setitem(dl._DETECTOR_FACTS, "mobile0.25", {"size": len(det), "sha256": hashlib.sha256(det).hexdigest()})
    assert cli.main(["info", str(models), "--check"]) == 0
    assert capsys.readouterr().out.count("[check ok]") == 6          # 3 .pt + 1 .safetensors + detector + ArcFace
    (models / name).write_bytes(data[: len(data) // 2])             # a damaged optional file is a problem
    monkeypatch.setitem(dl._IDENTITY_FACTS, "arcface", {})
    assert cli.main(["info", str(models), "--check"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(name))
    assert "PROBLEM" in line and "missing or unusable" not in out

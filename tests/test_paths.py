"""Models-folder resolution (argument, then VSPBFR_MODELS, then the per-user default) and model file lookup."""
from __future__ import annotations

from pathlib import Path

import pytest

from vspbfr_core import paths
from vspbfr_core.errors import CheckpointError, InputError, ModelNotFoundError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.MODELS_ENV, raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_resolution_order(clean_env, tmp_path):
    home = tmp_path / "home"
    assert paths.resolve_models_dir() == home / ".local" / "share" / "vspbfr" / "models"
    assert paths.locate_models_dir()[1] == "default"

    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.resolve_models_dir() == tmp_path / "xdg" / "vspbfr" / "models"

    clean_env.setenv(paths.MODELS_ENV, str(tmp_path / "env"))
    assert paths.locate_models_dir() == (tmp_path / "env", "environment")

    assert paths.locate_models_dir(tmp_path / "arg") == (tmp_path / "arg", "argument")
    assert paths.resolve_models_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_empty_values_fall_through_and_user_is_expanded(clean_env, tmp_path):
    clean_env.setenv(paths.MODELS_ENV, "  ")
    assert paths.locate_models_dir("")[1] == "default"
    assert paths.resolve_models_dir("~/m") == tmp_path / "home" / "m"
    clean_env.setenv(paths.MODELS_ENV, "~/from-env")
    assert paths.resolve_models_dir() == tmp_path / "home" / "from-env"


def test_windows_default_uses_localappdata(clean_env, tmp_path):
    clean_env.setattr(paths.sys, "platform", "win32")
    clean_env.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert paths.default_models_dir() == tmp_path / "Local" / "vspbfr" / "models"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_network_files_official_and_converted(tmp_path):
    pt = _touch(tmp_path / "restoration_net.pt")
    assert paths.find_model_file("restoration_net", tmp_path) == pt
    assert paths.find_model_file("restoration_net.safetensors", tmp_path) == pt   # the twin is accepted
    st = _touch(tmp_path / "restoration_net.safetensors")
    assert paths.find_model_file("restoration_net", tmp_path) == st                # converted wins
    assert paths.find_model_file("restoration_net.pt", tmp_path) == pt             # an explicit name wins


def test_folders_are_searched_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    in_b = _touch(b / "code_diffuser.pt")
    assert paths.find_model_file("code_diffuser", [a, b]) == in_b
    in_a = _touch(a / "code_diffuser.pt")
    assert paths.find_model_file("code_diffuser", [a, b]) == in_a


def test_default_folder_comes_from_the_environment(clean_env, tmp_path):
    clean_env.setenv(paths.MODELS_ENV, str(tmp_path / "env"))
    f = _touch(tmp_path / "env" / "style_encoder_decoder.pt")
    assert paths.find_model_file("style_encoder_decoder") == f


def test_detector_files_and_separate_detector_folder(tmp_path):
    models, det = tmp_path / "models", tmp_path / "det"
    in_models = _touch(models / "detection_Resnet50_Final.pth")
    assert paths.find_model_file("resnet50", models, detector_dir=det) == in_models
    in_det = _touch(det / "detection_Resnet50_Final.pth")
    for name in ("resnet50", "retinaface_resnet50", "detection_Resnet50_Final.pth"):
        assert paths.find_model_file(name, models, detector_dir=det) == in_det
    mobile = _touch(det / "detection_mobilenet0.25_Final.pth")
    assert paths.find_model_file("mobile0.25", models, detector_dir=det) == mobile
    assert paths.find_model_file("retinaface_mobile0.25", [], detector_dir=det) == mobile


def test_missing_network_names_files_folders_and_command(tmp_path):
    a, b = tmp_path / "a", tmp_path / "nope"
    a.mkdir()
    with pytest.raises(ModelNotFoundError) as info:
        paths.find_model_file("code_diffuser", [a, b])
    msg = str(info.value)
    assert "code_diffuser.safetensors or code_diffuser.pt" in msg
    assert str(a) in msg and f"{b} (folder does not exist)" in msg
    assert f"vspbfr download --models {a}" in msg
    assert paths.MODELS_ENV in msg
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)


def test_missing_detector_names_detector_folder_and_command(tmp_path):
    models, det = tmp_path / "models", tmp_path / "det"
    with pytest.raises(ModelNotFoundError) as info:
        paths.find_model_file("mobile0.25", models, detector_dir=det)
    msg = str(info.value)
    assert "detection_mobilenet0.25_Final.pth" in msg
    assert str(models) in msg and str(det) in msg
    assert "--only detector --detector mobile0.25" in msg


def test_unknown_kind_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown model 'gfpgan'"):
        paths.find_model_file("gfpgan", tmp_path)
    assert paths.model_file_candidates("my_restorer.safetensors") == (("my_restorer.safetensors",), False)


def test_importing_paths_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, vspbfr_core.paths, vspbfr_core.download; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

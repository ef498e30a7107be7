"""`vspbfr restore` end to end: tiny networks on every real photo, and one run at full size."""
from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_path
from vspbfr_core.cli import main

EXPECTED_FACES = 2 + 3 + 4 + 4 + 1 + 1


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_run_outputs_sizes_faces_and_seed(models_dir: Path, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    whole = shared_path("faces", "whole")
    out = tmp_path / "out"
    args = ["restore", str(whole), "-o", str(out), "--models", str(models_dir), "--detector", "mobile0.25"]
    assert main(args + ["--compare", "--save-faces", "--seed", "4"]) == 0
    err = capfd.readouterr().err
    assert f"done: 6/6 files, {EXPECTED_FACES} faces" in err and "s/face" in err
    for src in whole.iterdir():
        dst = out / src.name
        with Image.open(src) as a, Image.open(dst) as b:
            assert a.size == b.size and b.format == a.format
        assert (out / "compare" / (src.stem + ".png")).is_file()
    assert len(list((out / "faces").glob("*_before.png"))) == EXPECTED_FACES
    assert len(list((out / "faces").glob("*_after.png"))) == EXPECTED_FACES
    # same seed, same bytes; another seed, other bytes
    again = tmp_path / "again"
    assert main(["restore", str(whole), "-o", str(again), "--models", str(models_dir), "--detector", "mobile0.25",
                 "--compare", "--save-faces", "--seed", "4"]) == 0
    assert digest(out) == digest(again)
    other = tmp_path / "other"
    assert main(args[:3] + [str(other)] + args[4:] + ["--seed", "5"]) == 0
    assert (out / "cf_02.png").read_bytes() != (other / "cf_02.png").read_bytes()


def test_default_detector_is_the_file_that_is_there(models_dir: Path, tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """Only mobile0.25 in the models folder (as after `download --detector mobile0.25`): no --detector needed, the
    first line says what loads, and the result is the one an explicit --detector mobile0.25 gives."""
    src = shared_path("faces", "whole", "cf_04.jpg")
    assert main(["restore", str(src), "-o", str(tmp_path / "auto"), "--models", str(models_dir)]) == 0
    first = capfd.readouterr().err.splitlines()[0]
    assert first.startswith(f"loading the VSPBFR networks from {models_dir} and face detector retinaface_mobile0.25")
    assert main(["restore", str(src), "-o", str(tmp_path / "explicit"), "--models", str(models_dir),
                 "--detector", "mobile0.25"]) == 0
    assert (tmp_path / "auto" / "cf_04.jpg").read_bytes() == (tmp_path / "explicit" / "cf_04.jpg").read_bytes()
    # an explicit choice whose file is missing is honoured: a clear error, not the other detector
    assert main(["restore", str(src), "-o", str(tmp_path / "r50"), "--models", str(models_dir),
                 "--detector", "resnet50"]) == 1
    err = capfd.readouterr().err
    assert "detection_Resnet50_Final.pth" in err and "--only detector --detector resnet50" in err


def test_pixels_outside_faces_unchanged(models_dir: Path, tmp_path: Path) -> None:
    src = shared_path("faces", "whole", "skimage_astronaut.png")
    assert main(["restore", str(src), "-o", str(tmp_path), "--models", str(models_dir), "--detector", "mobile0.25"]) == 0
    a = np.asarray(Image.open(src).convert("RGB")).astype(int)
    b = np.asarray(Image.open(tmp_path / src.name).convert("RGB")).astype(int)
    changed = np.abs(a - b).max(axis=-1) > 0
    assert changed.any() and changed.mean() < 0.25           # one face changed, the rest of the photo did not
    assert (b[-200:] == a[-200:]).all() and (b[:, -150:] == a[:, -150:]).all()   # body and background


def test_failed_file_does_not_stop_the_run(models_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_path("faces", "whole", "cf_04.jpg"), folder / "a.jpg")
    (folder / "b.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["restore", str(folder), "-o", str(out), "--models", str(models_dir), "--detector", "mobile0.25"])
    err = capfd.readouterr().err
    assert code == 1
    assert (out / "a.jpg").is_file() and not (out / "b.png").exists()
    assert "b.png: FAILED" in err and "1 file(s) failed" in err


def test_alpha_exif_and_globs(models_dir: Path, tmp_path: Path) -> None:
    src = Image.open(shared_path("faces", "whole", "cf_04.jpg")).convert("RGB")
    rgba = src.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(src.size))
    rgba.save(tmp_path / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                          # rotate 90 degrees clockwise on display
    src.save(tmp_path / "rotated.jpg", exif=exif)
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "*.png"), str(tmp_path / "rotated.jpg"), "-o", str(out),
                 "--models", str(models_dir), "--detector", "mobile0.25"]) == 0
    with Image.open(out / "alpha.png") as im:
        assert im.mode == "RGBA"
        assert np.array_equal(np.asarray(im)[..., 3], np.asarray(rgba)[..., 3])
    with Image.open(out / "rotated.jpg") as im:
        assert im.size == (src.size[1], src.size[0])
    assert main(["restore", str(tmp_path / "*.tif"), "-o", str(out), "--models", str(models_dir)]) == 1


def test_missing_models_message(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    src = shared_path("faces", "whole", "cf_04.jpg")
    assert main(["restore", str(src), "-o", str(tmp_path / "o"), "--models", str(tmp_path / "empty")]) == 1
    err = capfd.readouterr().err
    assert "style_encoder_decoder" in err and "vspbfr download" in err


@pytest.mark.slow
def test_full_size_run_is_reproducible(tmp_path: Path) -> None:
    """The real loading path at full size: official-layout files regenerated from the parity manifest."""
    manifest = shared_path("parity", "manifest.json")
    models = tmp_path / "models"
    subprocess.run([sys.executable, "-m", "vspbfr_core.parity", "--write-weights", str(manifest), "-o", str(models)],
                   cwd=ROOT, check=True, capture_output=True, timeout=900)
    shutil.copy(shared_path("weights", "detection_mobilenet0.25_Final.pth"), models)
    src = shared_path("faces", "whole", "cf_04.jpg")
    outs = []
    for run in ("a", "b"):
        proc = subprocess.run([sys.executable, "-m", "vspbfr_core", "restore", str(src), "-o", str(tmp_path / run),
                               "--models", str(models), "--detector", "mobile0.25", "--save-faces", "--seed", "1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        assert "done: 1/1 files, 1 faces" in proc.stderr
        outs.append(digest(tmp_path / run))
    assert outs[0] == outs[1] and len(outs[0]) == 3
    with Image.open(tmp_path / "a" / "faces" / "cf_04_00_after.png") as im:
        assert im.size == (512, 512)


def test_speed_options_reach_the_pipeline(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vspbfr_core.model import VSPBFRModel
    from vspbfr_core.pipeline import VSPBFRPipeline

    src = shared_path("faces", "whole", "skimage_astronaut.png")
    seen: dict[str, object] = {}
    init = VSPBFRPipeline.__init__

    @functools.wraps(init)                                   # from_dir checks its keywords against the signature
    def spy(self: VSPBFRPipeline, *args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        init(self, *args, **kwargs)
        seen["model_tf32"] = self.model.allow_tf32
        seen["threads"] = torch.get_num_threads()

    monkeypatch.setattr(VSPBFRPipeline, "__init__", spy)
    # compiling itself is tested in test_core_model / test_pipeline; here only that the flag gets there
    monkeypatch.setattr(VSPBFRModel, "compile_networks",
                        lambda self, enable=True, **o: seen.setdefault("compiled", enable))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["restore", str(src), "-o", str(tmp_path / "plain"), "--models", str(models_dir),
                     "--detector", "mobile0.25", "--threads", "1"]) == 0
        assert seen["threads"] == 1 and not seen["model_tf32"]
        assert torch.get_num_threads() == 2                   # the caller's thread count comes back
        assert main(["restore", str(src), "-o", str(tmp_path / "fast"), "--models", str(models_dir),
                     "--detector", "mobile0.25", "--threads", "1", "--tf32", "--compile"]) == 0
        assert seen["threads"] == 1
    finally:
        torch.set_num_threads(threads)
    assert seen["compile"] is True and seen["compiled"] is True and seen["model_tf32"] is True
    # on CPU the TF32 flags change nothing (and compiling is stubbed here)
    assert (tmp_path / "fast" / src.name).read_bytes() == (tmp_path / "plain" / src.name).read_bytes()


def test_gray_photo_stays_gray_unless_colour_is_asked_for(models_dir: Path, tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(shared_path("faces", "whole", "cf_04.jpg")).convert("L"))
    src = tmp_path / "bw.png"
    Image.fromarray(np.dstack([rgb] * 3)).save(src)            # a black-and-white photo stored as RGB
    base = ["restore", str(src), "--models", str(models_dir), "--detector", "mobile0.25", "-o"]
    assert main(base + [str(tmp_path / "gray")]) == 0
    out = np.asarray(Image.open(tmp_path / "gray" / "bw.png")).astype(int)
    assert out.shape[-1] == 3 and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (out[..., 0] != rgb).any()                          # the face was restored
    assert main(base + [str(tmp_path / "colour"), "--colorize-gray"]) == 0
    colour = np.asarray(Image.open(tmp_path / "colour" / "bw.png")).astype(int)
    assert (colour[..., 0] != colour[..., 2]).any()

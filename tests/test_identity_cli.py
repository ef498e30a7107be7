"""`vspbfr restore` identity options end to end: best-of-N, references, --only-matching and the JSON report.

Tiny networks throughout (a copy of the tiny models folder plus a tiny ArcFace file; the session fixture is never
written into); the --only-matching test uses dlib on a real group photo with 128 px tiny networks, since dlib
needs crops of at least 32 px.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from identity_models import write_tiny_arcface
from vspbfr_core.cli import build_parser, main

ARCFACE_FILE = "recognition_arcface_ir_se50.pth"
FACE_KEYS = {"image", "index", "box", "landmarks", "score", "size", "identity_input", "identity_reference",
             "candidates", "chosen", "restored"}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def arc_models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models folder plus a tiny ArcFace file (a copy: the session fixture is shared)."""
    d = tmp_path_factory.mktemp("arc_models")
    for f in tiny_models_dir.iterdir():
        shutil.copy(f, d / f.name)
    write_tiny_arcface(d / ARCFACE_FILE)
    return d


@pytest.fixture(scope="module")
def group_photo() -> Path:
    return shared_path("faces", "whole", "cf_02.png")                 # 4 faces of ~130 px, RGBA PNG


@pytest.fixture(scope="module")
def group_small(group_photo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The group photo at half size (faces of ~65 px; less to paste and write)."""
    path = tmp_path_factory.mktemp("small") / "group.png"
    photo = Image.open(group_photo).convert("RGB")
    photo.resize((photo.width // 2, photo.height // 2), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def plain(arc_models: Path, group_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small group photo restored without any identity option (crops saved)."""
    out = tmp_path_factory.mktemp("plain")
    assert run(arc_models, group_small, out, "--save-faces") == 0
    return out


def run(models: Path, src: Path, out: Path, *extra: str) -> int:
    return main(["restore", str(src), "-o", str(out), "--models", str(models), "--threads", "1", *extra])


def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the VSPBFR networks fail loudly: what is checked must be checked before."""
    from vspbfr_core.pipeline import VSPBFRPipeline

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the VSPBFR networks were loaded")
    monkeypatch.setattr(VSPBFRPipeline, "from_dir", refuse)


# -- best-of-N ---------------------------------------------------------------------------------------------------

def test_candidates(arc_models: Path, group_small: Path, plain: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from vspbfr_core.commands.restore import FileProgress
    from vspbfr_core.identity import identity, load_embedder

    src = group_small
    # --candidates 1 is the plain restoration, also with the embedder loaded (for the report's scores)
    assert run(arc_models, src, tmp_path / "c1", "--candidates", "1", "--save-faces",
               "--report", str(tmp_path / "c1.json")) == 0
    assert digest(tmp_path / "c1") == digest(plain)
    one = json.loads((tmp_path / "c1.json").read_text())
    assert all(f["chosen"] == 0 and len(f["candidates"]) == 1 and f["identity_input"] is not None
               for f in one["files"][0]["faces"])
    capfd.readouterr()
    # best of 3, with the progress of each file running to its end
    seen: list[tuple[int, int]] = []
    draw = FileProgress.draw
    monkeypatch.setattr(FileProgress, "draw", lambda self, d, t, s: (seen.append((d, t)), draw(self, d, t, s)))
    report = tmp_path / "c3.json"
    assert run(arc_models, src, tmp_path / "c3", "--candidates", "3", "--save-faces", "--seed", "0",
               "--report", str(report)) == 0
    err = capfd.readouterr().err
    assert all(d <= t for d, t in seen) and seen[-1][0] == seen[-1][1] and seen[-1][1] > 4 * 4 * 3
    assert "; identity embedder arcface" in err and "best of 3: candidate" in err and f"report: {report}" in err
    doc = json.loads(report.read_text())
    assert doc["format"] == "vspbfr-report/1"
    assert doc["options"] == {"seed": 0, "candidates": 3, "identity": "arcface", "identity_error": None,
                              "match_threshold": 0.3, "only_matching": False, "reference": [], "reference_mix": 0.0,
                              "reference_layers": "middle"}
    (entry,) = doc["files"]
    assert entry["input"] == str(src) and entry["output"] == str(tmp_path / "c3" / src.name)
    faces = entry["faces"]
    assert len(faces) == 4 and all(set(f) == FACE_KEYS for f in faces)
    embedder = load_embedder("arcface", dirs=[arc_models])

    def embed(path: Path) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float() / 255
        return embedder.embed_crops(pixels.permute(2, 0, 1)[None])

    chosen_other = 0
    for k, face in enumerate(faces):
        scores = [c["identity"] for c in face["candidates"]]
        assert [c["index"] for c in face["candidates"]] == [0, 1, 2]
        assert face["restored"] is True and face["identity_reference"] is None
        assert all(c["identity_reference"] is None and c["identity"] == c["identity_input"]
                   for c in face["candidates"])
        assert face["chosen"] == int(np.argmax(scores))                # argmax; a tie keeps the lower index
        assert face["identity_input"] == scores[face["chosen"]]
        after = tmp_path / "c3" / "faces" / f"group_{k:02d}_after.png"
        plain_after = (plain / "faces" / f"group_{k:02d}_after.png").read_bytes()
        if face["chosen"] == 0:                                         # candidate 0 is the plain restoration
            assert after.read_bytes() == plain_after
        else:
            chosen_other += 1
            assert after.read_bytes() != plain_after
        # the face written is the chosen candidate: its identity to the input, recomputed from the saved 8-bit
        # crops, is the chosen candidate's score and nearer to it than to any other candidate's
        score = float(identity(embed(after), embed(tmp_path / "c3" / "faces" / f"group_{k:02d}_before.png")))
        assert abs(score - scores[face["chosen"]]) < 0.02
        assert int(np.argmin([abs(score - s) for s in scores])) == face["chosen"]
    assert chosen_other                                                 # some face kept a candidate other than 0
    # the same seed gives the same bytes and the same report
    assert run(arc_models, src, tmp_path / "again", "--candidates", "3", "--save-faces",
               "--report", str(tmp_path / "again.json")) == 0
    assert digest(tmp_path / "again") == digest(tmp_path / "c3")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["files"][0]["faces"] == faces


def test_aligned_candidates_and_report(arc_models: Path, plain: Path, tmp_path: Path) -> None:
    """--aligned: the identity options go to restore_aligned; the report gives each crop as one whole face."""
    src = tmp_path / "crop.png"
    shutil.copy(plain / "faces" / "group_01_before.png", src)
    assert run(arc_models, src, tmp_path / "a0", "--aligned") == 0
    assert run(arc_models, src, tmp_path / "a1", "--aligned", "--report", str(tmp_path / "a1.json")) == 0
    assert (tmp_path / "a1" / src.name).read_bytes() == (tmp_path / "a0" / src.name).read_bytes()
    assert run(arc_models, src, tmp_path / "a4", "--aligned", "--candidates", "4", "--report",
               str(tmp_path / "a4.json")) == 0
    (face,) = json.loads((tmp_path / "a4.json").read_text())["files"][0]["faces"]
    side = float(Image.open(src).size[0])
    assert face["box"] == [0.0, 0.0, side, side] and face["landmarks"] is None and face["size"] == side
    scores = [c["identity"] for c in face["candidates"]]
    assert len(scores) == 4 and face["chosen"] == int(np.argmax(scores))
    changed = (tmp_path / "a4" / src.name).read_bytes() != (tmp_path / "a0" / src.name).read_bytes()
    assert changed == (face["chosen"] != 0)


# -- missing identity weights ------------------------------------------------------------------------------------

def test_report_without_identity_weights(tiny_models_dir: Path, group_small: Path, plain: Path, tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    """Only --report wants the embedder: one warning, nulls in the report, the restoration unchanged; a failed
    file is listed with its error."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(group_small, folder / group_small.name)
    (folder / "broken.png").write_bytes(b"not an image")
    report = tmp_path / "sub" / "report.json"                             # its folder is created
    assert run(tiny_models_dir, folder, tmp_path / "out", "--save-faces", "--report", str(report)) == 1
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert ARCFACE_FILE in warnings[0] and "--only identity" in warnings[0] and "not affected" in warnings[0]
    assert digest(tmp_path / "out") == digest(plain)
    doc = json.loads(report.read_text())
    assert doc["options"]["identity_error"] and doc["options"]["match_threshold"] is None
    good = next(f for f in doc["files"] if f["input"].endswith(group_small.name))
    bad = next(f for f in doc["files"] if f["input"].endswith("broken.png"))
    assert good["output"] == str(tmp_path / "out" / group_small.name) and "error" not in good
    assert len(good["faces"]) == 4
    for face in good["faces"]:
        assert face["identity_input"] is None and face["identity_reference"] is None
        assert face["candidates"] == [{"index": 0, "identity": None, "identity_input": None,
                                       "identity_reference": None}]
        assert face["chosen"] == 0 and face["restored"] is True and len(face["box"]) == 4
    assert bad["output"] is None and bad["faces"] == [] and bad["error"]
    assert not list(report.parent.glob(".vspbfr-*"))                       # no temporary file left behind


def test_missing_identity_weights_are_an_error_when_needed(tiny_models_dir: Path, group_photo: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    no_loading(monkeypatch)
    assert run(tiny_models_dir, group_photo, tmp_path / "out", "--candidates", "2") == 1
    err = capfd.readouterr().err
    assert "--candidates 2 needs the arcface identity embedder" in err and ARCFACE_FILE in err
    assert f"vspbfr download --models {tiny_models_dir} --only identity" in err
    assert not (tmp_path / "out").exists()
    pytest.importorskip("dlib")
    import vspbfr_core.identity.dlib as dlib_module
    from vspbfr_core.identity import MissingPackageError

    def missing() -> None:
        raise MissingPackageError(f"dlib is not installed. Install it with {dlib_module.DLIB_INSTALL_HINT}.")
    monkeypatch.setattr(dlib_module, "import_dlib", missing)
    assert run(tiny_models_dir, group_photo, tmp_path / "out", "--identity", "dlib", "--only-matching",
               "--reference", str(group_photo)) == 1
    err = capfd.readouterr().err
    assert "--reference needs the dlib identity embedder" in err and 'pip install "vspbfr[dlib]"' in err


# -- options checked before anything loads -----------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--only-matching"], "--only-matching needs --reference PHOTO"),
    (["--reference-mix", "0.5"], "--reference-mix 0.5 needs --reference PHOTO"),
    (["--match-threshold", "0.5"], "--match-threshold is the threshold of --only-matching"),
    (["--reference-layers", "coarse"], "--reference-layers chooses the layers of --reference-mix"),
    (["--reference-mix", "0.3", "--reference", "REF", "--reference-layers", "eyes"], "reference_layers: cannot read"),
    (["--report", "DIR"], "is a folder"),
    (["--report", "INPUT"], "refusing to replace an input"),
    (["--report", "OUT/cf_02.png"], "is where a restored image goes"),
    (["--report", "report.png"], "give it a .json name"),
    (["--report", ""], "the file name is empty"),
    (["--reference", "MISSING"], "no such file"),
])
def test_option_errors(arc_models: Path, group_photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capfd: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    no_loading(monkeypatch)
    src = tmp_path / "in" / "cf_02.png"
    src.parent.mkdir()
    shutil.copy(group_photo, src)
    names = {"DIR": str(tmp_path), "INPUT": str(src), "REF": str(src), "MISSING": str(tmp_path / "nope.png"),
             "OUT/cf_02.png": str(tmp_path / "out" / "cf_02.png")}
    assert run(arc_models, src, tmp_path / "out", *[names.get(a, a) for a in extra]) == 1
    assert message in capfd.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", [["--candidates", "0"], ["--candidates", "65"], ["--match-threshold", "1.5"],
                                   ["--reference-mix", "-0.1"], ["--identity", "facenet"]])
def test_out_of_range_values_are_usage_errors(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["restore", "x.png", "-o", "out", *extra])
    assert exc.value.code == 2 and extra[0] in capsys.readouterr().err


def test_cli_constants_match_the_core() -> None:
    """The CLI keeps copies of a few core constants (so --help does not import torch): they must agree."""
    from vspbfr_core.commands import restore_identity
    from vspbfr_core.identity import EMBEDDERS
    from vspbfr_core.identity.arcface import ArcFaceEmbedder
    from vspbfr_core.identity.dlib import DlibEmbedder
    from vspbfr_core.pipeline import MAX_CANDIDATES, RestoreOptions

    assert restore_identity.MAX_CANDIDATES == MAX_CANDIDATES and restore_identity.EMBEDDER_NAMES == EMBEDDERS
    assert restore_identity.DEFAULT_LAYERS == RestoreOptions().reference_layers
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = " ".join(sub.choices["restore"].format_help().split())
    assert f"arcface {ArcFaceEmbedder.match_threshold:g}, dlib {DlibEmbedder.match_threshold:g}" in text


# -- references ----------------------------------------------------------------------------------------------------

def test_reference_without_a_face(arc_models: Path, group_photo: Path, tmp_path: Path,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((160, 160, 3), 128, dtype=np.uint8)).save(blank)
    assert run(arc_models, group_photo, tmp_path / "out", "--reference", str(blank)) == 1
    err = capfd.readouterr().err
    assert f"reference image {str(blank)!r}: no face found" in err
    assert not (tmp_path / "out" / group_photo.name).exists()


def test_reference_and_reference_mix(arc_models: Path, group_small: Path, plain: Path, tmp_path: Path,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    """A reference alone changes no pixel (candidate 0 is kept) but gives every face its identity to it; the mix
    changes the faces; layers this model lacks are an error before any file."""
    name = group_small.name
    report = tmp_path / "ref.json"
    assert run(arc_models, group_small, tmp_path / "r", "--reference", str(group_small), "--report", str(report)) == 0
    assert (tmp_path / "r" / name).read_bytes() == (plain / name).read_bytes()
    doc = json.loads(report.read_text())
    assert doc["options"]["reference"] == [str(group_small)] and doc["options"]["reference_mix"] == 0.0
    for face in doc["files"][0]["faces"]:
        (candidate,) = face["candidates"]
        assert face["identity_reference"] is not None and candidate["identity"] == candidate["identity_reference"]
    assert "identity to reference" in capfd.readouterr().err
    assert run(arc_models, group_small, tmp_path / "mix", "--reference", str(group_small), "--reference-mix",
               "0.5") == 0
    assert (tmp_path / "mix" / name).read_bytes() != (plain / name).read_bytes()
    capfd.readouterr()
    assert run(arc_models, group_small, tmp_path / "bad", "--reference", str(group_small), "--reference-mix", "0.5",
               "--reference-layers", "4-9") == 1
    assert "--reference-layers 4-9: layer 9 does not exist" in capfd.readouterr().err
    assert not (tmp_path / "bad" / name).exists()


@pytest.fixture(scope="module")
def models_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny networks at 128 px (dlib embeds crops of at least 32 px) plus the real mobilenet0.25 detector."""
    import tiny_models

    detector = shared_path("weights", "detection_mobilenet0.25_Final.pth")
    names = ("TINY_ENCODER", "TINY_STYLEGAN", "TINY_RESTORATION")
    saved = {n: getattr(tiny_models, n) for n in names}
    d = tmp_path_factory.mktemp("models_128")
    try:
        tiny_models.TINY_ENCODER = dataclasses.replace(saved["TINY_ENCODER"], num_ws=12)      # 2 * log2(128) - 2
        tiny_models.TINY_STYLEGAN = dataclasses.replace(saved["TINY_STYLEGAN"], resolution=128, channel_base=2048)
        tiny_models.TINY_RESTORATION = dataclasses.replace(saved["TINY_RESTORATION"], resolution=128,
                                                           channel_base=2048)
        tiny_models.write_tiny_checkpoints(d)
    finally:
        for n, v in saved.items():
            setattr(tiny_models, n, v)
    shutil.copy(detector, d)
    return d


def test_only_matching_restores_only_the_reference_person(models_128: Path, group_photo: Path, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """dlib on the group photo: the reference is face 1 cut from a half-size copy of the photo; only that face
    changes, every other face's box keeps the input's pixels."""
    pytest.importorskip("dlib")
    from vspbfr_core.face import detect_faces, load_detector
    from vspbfr_core.imagefile import read_image

    k = 1
    detector = load_detector("retinaface_mobile0.25", [models_128])
    boxes = detect_faces(detector, read_image(group_photo).pixels).boxes.tolist()
    assert len(boxes) == 4
    photo = Image.open(group_photo).convert("RGB")
    half = photo.resize((photo.width // 2, photo.height // 2), Image.LANCZOS)
    x1, y1, x2, y2 = (v / 2 for v in boxes[k])
    w, h = x2 - x1, y2 - y1
    reference = tmp_path / "reference.png"
    half.crop((int(max(0, x1 - 0.6 * w)), int(max(0, y1 - 0.6 * h)), int(min(half.width, x2 + 0.6 * w)),
               int(min(half.height, y2 + 0.6 * h)))).save(reference)
    report = tmp_path / "report.json"
    assert run(models_128, group_photo, tmp_path / "out", "--identity", "dlib", "--reference", str(reference),
               "--only-matching", "--report", str(report)) == 0
    err = capfd.readouterr().err
    assert "1 of 4 matching" in err
    doc = json.loads(report.read_text())
    assert doc["options"]["identity"] == "dlib" and doc["options"]["match_threshold"] == 0.94
    assert doc["options"]["reference"] == [str(reference)] and doc["options"]["only_matching"] is True
    faces = doc["files"][0]["faces"]
    assert [f["restored"] for f in faces] == [i == k for i in range(4)]
    for i, f in enumerate(faces):
        assert f["identity_reference"] is not None
        assert (f["candidates"] != []) == (i == k) and (f["chosen"] is not None) == (i == k)
    a = np.asarray(Image.open(group_photo))
    b = np.asarray(Image.open(tmp_path / "out" / group_photo.name))
    assert a.shape == b.shape
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        same = np.array_equal(a[y1:y2, x1:x2], b[y1:y2, x1:x2])
        assert same == (i != k), f"face {i}"

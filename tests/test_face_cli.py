"""``vspbfr faces``: the table, the stable JSON document and the error paths."""
from __future__ import annotations

import json

import pytest

from conftest import shared_path
from vspbfr_core.cli import main

EXPECTED = {"gfpgan_00.jpg": 2, "gfpgan_10045.png": 3, "cf_00.jpg": 4, "cf_02.png": 4, "cf_04.jpg": 1,
            "skimage_astronaut.png": 1}


@pytest.fixture(scope="module")
def weights() -> str:
    return str(shared_path("weights"))


def test_json_lists_every_face_of_every_photo(weights, capsys):
    whole = shared_path("faces", "whole")
    files = [str(whole / name) for name in sorted(EXPECTED)]
    rc = main(["faces", *files, "--detector", "mobile0.25", "--detector-dir", weights, "--models", weights, "--json",
               "--device", "cpu"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "vspbfr-faces-v1"
    assert doc["detector"] == "retinaface_mobile0.25"
    assert doc["options"] == {"threshold": 0.97, "min_size": 0.0, "max_faces": 0, "selection": "all",
                              "order": "left-right", "detect_size": 640}
    assert [img["path"] for img in doc["images"]] == files
    for img in doc["images"]:
        name = img["path"].rsplit("/", 1)[-1]
        assert len(img["faces"]) == EXPECTED[name]
        assert set(img) == {"path", "width", "height", "faces"}
        for i, face in enumerate(img["faces"]):
            assert list(face) == ["index", "box", "landmarks", "score", "size"]
            assert face["index"] == i and len(face["box"]) == 4 and len(face["landmarks"]) == 5
        xs = [(f["box"][0] + f["box"][2]) / 2 for f in img["faces"]]
        assert xs == sorted(xs)                                              # left to right


def test_table_and_selection(weights, capsys):
    photo = str(shared_path("faces", "whole", "cf_00.jpg"))
    assert main(["faces", photo, "--detector", "retinaface_mobile0.25", "--detector-dir", weights,
                 "--models", weights, "--select", "1,3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(491x310): 2 faces")
    assert out[1].split() == ["index", "x1", "y1", "x2", "y2", "score", "size"]
    assert [line.split()[0] for line in out[2:]] == ["1", "3"]


def test_missing_weights_and_bad_options(tmp_path, capsys):
    photo = str(shared_path("faces", "whole", "cf_04.jpg"))
    assert main(["faces", photo, "--detector", "mobile0.25", "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "detection_mobilenet0.25_Final.pth" in err and str(tmp_path) in err and "vspbfr download" in err
    assert main(["faces", photo, "--select", "first", "--models", str(tmp_path)]) == 1
    assert "selection" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["faces", photo, "--detector", "yolov5"])


def test_unreadable_file_is_reported_and_the_rest_go_on(weights, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = str(shared_path("faces", "whole", "cf_04.jpg"))
    rc = main(["faces", str(bad), good, "--detector", "mobile0.25", "--detector-dir", weights, "--models", weights,
               "--json", "--device", "cpu"])
    assert rc == 1
    doc = json.loads(capsys.readouterr().out)
    assert "error" in doc["images"][0] and len(doc["images"][1]["faces"]) == 1


def test_folders_and_globs_like_restore_and_auto_detector(weights, tmp_path, capsys):
    """`vspbfr faces FOLDER` walks the folder (sorted, sub-folders too) as `vspbfr restore` does; a glob works; the
    default detector `auto` takes the only RetinaFace file there (mobile0.25 in ../shared/weights)."""
    import shutil

    whole = shared_path("faces", "whole")
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(whole / "cf_04.jpg", folder / "cf_04.jpg")
    shutil.copy(whole / "cf_00.jpg", folder / "sub" / "cf_00.jpg")
    rc = main(["faces", str(folder), "--models", weights, "--json", "--device", "cpu"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["detector"] == "retinaface_mobile0.25"
    assert [img["path"] for img in doc["images"]] == [str(folder / "cf_04.jpg"), str(folder / "sub" / "cf_00.jpg")]
    assert [len(img["faces"]) for img in doc["images"]] == [1, 4]
    rc = main(["faces", str(folder / "**" / "*.jpg"), "--models", weights, "--json", "--device", "cpu"])
    assert rc == 0 and len(json.loads(capsys.readouterr().out)["images"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["faces", str(empty), "--models", weights]) == 1
    assert "no image found for" in capsys.readouterr().err

"""Identity features of the A1111 adapter (scripts/vspbfr_a1111.py) against the A1111 1.10.1 stand-in.

Covers: default settings give the plain restoration byte for byte (no identity model loaded, nothing new in the
infotext or the API answer); the ``vspbfr_candidates`` setting (best-of-N) in txt2img's infotext, deterministic, the
identity model loaded once; validation of the route's identity fields; a reference photo with ``only_matching`` on a
real group photo with dlib; a missing ArcFace file named with the webui's download command.

Networks: the tiny VSPBFR (16 px) with a tiny ArcFace file in models/VSPBFR, the real RetinaFace mobilenet0.25 from
../shared; the dlib test uses a 128 px variant of the tiny networks (dlib cannot describe 16 px faces).
"""
from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny_models
from conftest import ROOT, shared_path
from identity_models import write_tiny_arcface

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

STANDIN = Path(__file__).resolve().parent / "a1111_standin"
if str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

import standin  # noqa: E402  (the stand-in folder must be on sys.path first)
from test_a1111 import start  # noqa: E402  (a started stand-in webui with a models folder)

ROUTE = "/vspbfr/v1/restore"
ARCFACE = "recognition_arcface_ir_se50.pth"
MOBILE = {"vspbfr_detector": "retinaface_mobile0.25"}
ONE_FACE = "cf_04.jpg"                  # 225 x 225, one face: small and quick


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Tiny VSPBFR networks, the real RetinaFace mobilenet0.25 (skips without ../shared); no ArcFace file."""
    mobile = shared_path("weights", "detection_mobilenet0.25_Final.pth")
    folder = tmp_path_factory.mktemp("weights")
    tiny_models.write_tiny_checkpoints(folder)
    shutil.copy(mobile, folder)
    return folder


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory, weights_dir) -> Path:
    """:func:`weights_dir` plus a tiny ArcFace file under the released name."""
    folder = tmp_path_factory.mktemp("identity")
    for f in weights_dir.iterdir():
        shutil.copy(f, folder)
    write_tiny_arcface(folder / ARCFACE)
    return folder


def restorer():
    from modules import shared

    found = [r for r in shared.face_restorers if r.name() == "VSPBFR"]
    assert len(found) == 1
    return found[0]


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_path("faces", "whole", name)).convert("RGB"))


def b64_png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def from_b64(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def infotext_params(infotext: str) -> dict[str, str]:
    """The "key: value" pairs of a generation infotext's parameter line (values here hold no commas)."""
    return dict(part.split(": ", 1) for part in infotext.splitlines()[1].split(", "))


def as_sample(image: np.ndarray) -> np.ndarray:
    """``image`` as a decoded txt2img sample: float [3, H, W] in [0, 1]."""
    return image.astype(np.float32).transpose(2, 0, 1) / 255.0


def decoded(image: np.ndarray) -> np.ndarray:
    """What "Restore faces" receives for :func:`as_sample` (``image`` after the webui's float -> uint8 cast)."""
    return (255.0 * np.moveaxis(as_sample(image), 0, 2)).astype(np.uint8)


def txt2img(client, image: np.ndarray, **settings) -> tuple[np.ndarray, dict[str, str]]:
    from modules import processing

    processing.fake_samples = lambda p: [as_sample(image)]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "restore_faces": True, "override_settings": {
        "face_restoration_model": "VSPBFR", **MOBILE, **settings}})
    assert r.status_code == 200, r.text
    body = r.json()
    return from_b64(body["images"][0]), infotext_params(json.loads(body["info"])["infotexts"][0])


IDENTITY_KEYS = ("VSPBFR candidates", "VSPBFR embedder", "VSPBFR identity", "VSPBFR matched", "VSPBFR references")


# -- defaults: the plain restoration --------------------------------------------------------------


def test_default_settings_restore_exactly_as_without_identity(tmp_path, identity_dir):
    """Defaults (candidates 1): the pipeline runs without an embedder, byte for byte; nothing identity is
    loaded or written, even with the ArcFace file present."""
    import torch
    from modules import shared
    from vspbfr_core.pipeline import RestoreOptions, VSPBFRPipeline

    webui = start(tmp_path, identity_dir, config=MOBILE)
    assert shared.opts.vspbfr_candidates == 1 and shared.opts.vspbfr_identity == "arcface"
    assert shared.opts.data_labels["vspbfr_candidates"].infotext == "VSPBFR candidates"
    image = photo(ONE_FACE)
    r = restorer()
    out = r.restore(image)
    assert r.embedder is None and r.last_run.identity is None and r.last_run.report is None
    assert not set(IDENTITY_KEYS) & set(r.last_run.infotext())
    # the same networks called directly, without any identity argument
    assert isinstance(r.net, VSPBFRPipeline)
    plain = r.net(torch.from_numpy(image.copy()).float().div(255.0)[None], RestoreOptions(seed=0, threshold=0.97))
    expected = (plain.images[0] * 255.0).round().clamp(0, 255).byte().numpy()
    assert plain.identity is None
    assert np.array_equal(out, expected)
    # txt2img's infotext and our route's answer carry nothing new
    _, params = txt2img(webui.client(), image)
    assert not set(IDENTITY_KEYS) & set(params)
    body = webui.client().post(ROUTE, json={"image": b64_png(image)}).json()
    assert "identity" not in body and not set(IDENTITY_KEYS) & set(body["info"])
    assert np.array_equal(from_b64(body["image"]), expected)
    assert r.embedder is None


# -- best-of-N from the settings ------------------------------------------------------------------


def test_candidates_setting_writes_scores_and_is_deterministic(tmp_path, identity_dir):
    from modules import postprocessing, scripts, shared

    webui = start(tmp_path, identity_dir, config=MOBILE)
    client = webui.client()
    image = photo(ONE_FACE)
    first, params = txt2img(client, image, vspbfr_candidates=3)
    assert params["VSPBFR candidates"] == "3" and params["VSPBFR embedder"] == "arcface"
    score = float(params["VSPBFR identity"])                    # one face: one score
    assert -1.0 <= score <= 1.0
    r = restorer()
    run = r.last_run
    assert run.faces == 1 and len(run.report) == 1
    row = run.report[0]
    assert len(row["candidates"]) == 3 and row["chosen"] in (0, 1, 2) and row["restored"] is True
    # the score written is the chosen candidate's identity to the input face (rounded to 3 decimals)
    assert f"{row['candidates'][row['chosen']]['identity']:.3f}" == params["VSPBFR identity"]
    assert max(c["identity"] for c in row["candidates"]) == row["candidates"][row["chosen"]]["identity"]
    embedder = r.embedder
    assert embedder is not None and embedder.name == "arcface"
    # the same settings again: the same bytes and infotext, the identity model not loaded again
    again, params_again = txt2img(client, image, vspbfr_candidates=3)
    assert np.array_equal(again, first) and params_again == params
    assert r.embedder is embedder
    # override_settings are restored after the request: the next job is the plain one and says nothing of identity
    assert shared.opts.vspbfr_candidates == 1
    plain, plain_params = txt2img(client, image)
    assert not set(IDENTITY_KEYS) & set(plain_params)
    assert plain_params["VSPBFR seed"] == params["VSPBFR seed"]
    # the Extras tab follows the setting too (it has no candidates control), with the scores in its infotext
    shared.opts.vspbfr_candidates = 3
    args = scripts.scripts_postproc.create_args_for_run({"VSPBFR": {"enable": True, "seed": 0}})
    images, infotext, _ = postprocessing.run_postprocessing(0, Image.fromarray(decoded(image)), None, "", "", True,
                                                            *args)
    assert "VSPBFR candidates: 3" in infotext and f"VSPBFR identity: {params['VSPBFR identity']}" in infotext
    assert np.array_equal(np.asarray(images[0]), first)


# -- the route's identity fields ------------------------------------------------------------------


def test_route_identity_fields_are_validated(tmp_path, identity_dir):
    from modules import scripts
    from vspbfr_core import identity, pipeline

    webui = start(tmp_path, identity_dir, config=MOBILE)
    module = [d.module for d in scripts.postprocessing_scripts_data if d.path.endswith("vspbfr_a1111.py")][0]
    # the adapter's copies of core constants (it must not import torch at start) agree with the core
    assert module.EMBEDDERS == identity.EMBEDDERS and module.MAX_CANDIDATES == pipeline.MAX_CANDIDATES
    client = webui.client()
    image = b64_png(np.full((96, 96, 3), 128, np.uint8))
    reference = image
    cases = (
        ({"candidates": 0}, "candidates"), ({"candidates": 65}, "candidates"), ({"candidates": 2.5}, "candidates"),
        ({"candidates": "many"}, "candidates"), ({"identity": "facenet"}, "identity"),
        ({"only_matching": "yes", "reference": reference}, "only_matching"),
        ({"match_threshold": 2, "reference": reference}, "match_threshold"),
        ({"reference_mix": -0.1, "reference": reference}, "reference_mix"),
        ({"reference_mix": 0.5, "reference_layers": "eyes", "reference": reference}, "reference_layers"),
        ({"reference_layers": "7-4", "reference": reference}, "reference_layers"),
        ({"reference": 5}, "reference"), ({"reference": []}, "reference"), ({"reference": [reference, 3]}, "reference"),
        ({"reference": "not an image"}, "reference"), ({"reference": [reference, "not an image"]}, "reference 2"),
        ({"reference": [reference] * 17}, "at most 16"),
        ({"only_matching": True}, "only_matching"),            # needs a reference
        ({"reference_mix": 0.5}, "reference_mix"),             # needs a reference
        ({"candidate": 3}, "candidate"),                       # unknown field
    )
    for fields, words in cases:
        r = client.post(ROUTE, json={"image": image, **fields})
        assert r.status_code == 422, (fields, r.status_code, r.text)
        assert words in r.json()["detail"], (fields, r.json()["detail"])
    # a reference photo without a face: 422 naming it
    r = client.post(ROUTE, json={"image": image, "reference": [b64_png(photo(ONE_FACE)), reference]})
    assert r.status_code == 422 and "reference 2" in r.json()["detail"] and "no face" in r.json()["detail"]
    # valid fields are accepted; identity named alone reports the scores of the plain candidate
    r = client.post(ROUTE, json={"image": b64_png(photo(ONE_FACE)), "identity": "arcface",
                                 "only_matching": False, "reference_layers": "4-5", "match_threshold": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["identity"]) == 1 and body["identity"][0]["chosen"] == 0
    assert body["identity"][0]["identity_input"] is not None and body["identity"][0]["box"] == \
        body["detections"][0]["box"]
    assert body["info"]["VSPBFR embedder"] == "arcface" and "VSPBFR identity" in body["info"]
    assert "face 0" in body["identity_summary"]


# -- a reference photo and only_matching on a group photo (dlib) ----------------------------------


@pytest.fixture(scope="module")
def small_weights_dir(tmp_path_factory) -> Path:
    """The tiny networks at 128 px (crops large enough for dlib) plus the real RetinaFace mobilenet0.25."""
    mobile = shared_path("weights", "detection_mobilenet0.25_Final.pth")
    folder = tmp_path_factory.mktemp("small")
    res = 128
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_models, "TINY_ENCODER",
                   dataclasses.replace(tiny_models.TINY_ENCODER, num_ws=2 * int(math.log2(res)) - 2))
        mp.setattr(tiny_models, "TINY_STYLEGAN",
                   dataclasses.replace(tiny_models.TINY_STYLEGAN, resolution=res, channel_base=2048))
        mp.setattr(tiny_models, "TINY_RESTORATION",
                   dataclasses.replace(tiny_models.TINY_RESTORATION, resolution=res, channel_base=2048))
        tiny_models.write_tiny_checkpoints(folder)
    shutil.copy(mobile, folder)
    return folder


@pytest.fixture(scope="module")
def only_matching_run(tmp_path_factory, small_weights_dir):
    """Our route on cf_02.png (4 people) with a reference cut around face 1 and only_matching, with dlib."""
    pytest.importorskip("dlib", reason='the dlib embedder needs pip install "vspbfr[dlib]" (dlib-bin)')
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip('the dlib embedder needs pip install "vspbfr[dlib]" (face_recognition_models)')
    import torch
    from modules import shared
    from vspbfr_core.pipeline import RestoreOptions

    group = photo("cf_02.png")
    webui = start(tmp_path_factory.mktemp("only_matching"), small_weights_dir, config=MOBILE)
    r = restorer()
    dets = r.load_net().detect(torch.from_numpy(group.copy()).float().div(255.0)[None], RestoreOptions())
    boxes = [[float(v) for v in b] for b in dets.boxes.tolist()]
    assert len(boxes) == 4
    x1, y1, x2, y2 = boxes[1]
    side, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
    top, left = int(max(0, cy - side)), int(max(0, cx - side))
    reference = group[top:int(cy + side), left:int(cx + side)]
    shared.opts.vspbfr_identity = "dlib"                        # the setting, used by the next run
    response = webui.client().post(ROUTE, json={"image": b64_png(group), "reference": [b64_png(reference)],
                                                "only_matching": True})
    return group, boxes, response, r.embedder


def test_reference_and_only_matching_choose_exactly_the_matching_face(only_matching_run):
    group, boxes, response, embedder = only_matching_run
    assert response.status_code == 200, response.text
    body = response.json()
    assert embedder is not None and embedder.name == "dlib"
    assert [row["restored"] for row in body["identity"]] == [False, True, False, False]
    assert body["faces"] == 1 and body["info"]["VSPBFR matched"] == "1/4" and body["info"]["VSPBFR references"] == 1
    assert body["info"]["VSPBFR only matching"] is True and body["info"]["VSPBFR embedder"] == "dlib"
    assert len(body["info"]["VSPBFR identity"].split()) == 4
    assert "not restored (no match)" in body["identity_summary"]
    # the other three faces are left exactly as they were
    out = from_b64(body["image"])
    assert out.shape == group.shape
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        if k != 1:
            box = (slice(int(y1), int(math.ceil(y2))), slice(int(x1), int(math.ceil(x2))))
            assert np.array_equal(out[box], group[box]), f"face {k} changed"


def test_only_matching_restores_the_matching_face(only_matching_run):
    group, boxes, response, _ = only_matching_run
    out = from_b64(response.json()["image"])
    x1, y1, x2, y2 = (int(v) for v in boxes[1])
    assert np.any(out[y1:y2, x1:x2] != group[y1:y2, x1:x2]), "the matching face was not restored"


# -- the ArcFace file missing ---------------------------------------------------------------------


def test_missing_arcface_file_is_named_with_the_webui_command(tmp_path, weights_dir, caplog):
    from modules import processing, shared
    from vspbfr_core.errors import ModelNotFoundError

    caplog.set_level("WARNING", logger="vspbfr.a1111")
    webui = start(tmp_path, weights_dir, config={**MOBILE, "vspbfr_candidates": 3})
    folder = str(Path(shared.models_path) / "VSPBFR")
    image = photo(ONE_FACE)
    with pytest.raises(ModelNotFoundError) as info:
        restorer().restore(image)
    message = str(info.value)
    for part in (ARCFACE, folder, "candidates = 3", f'-m vspbfr_core download --models "{folder}" --only identity',
                 f'cd "{ROOT}"', "'VSPBFR identity model'"):
        assert part in message, part
    assert "vspbfr download" not in message                    # the webui has no vspbfr script on its PATH
    client = webui.client()
    r = client.post(ROUTE, json={"image": b64_png(image)})
    assert r.status_code == 503 and ARCFACE in r.json()["detail"]
    status = client.get("/vspbfr/v1/status").json()
    assert status["ready"] is True and status["identity"]["ready"] is False and ARCFACE in status["identity"]["message"]
    assert ARCFACE in standin.settings_page()["vspbfr_status"].page_load()      # the Settings note says so
    # txt2img: logged before sampling, then the restore fails loudly (never a silent no-op)
    caplog.clear()
    processing.fake_samples = lambda p: [as_sample(image)]
    r = client.post("/sdapi/v1/txt2img", json={"restore_faces": True,
                                               "override_settings": {"face_restoration_model": "VSPBFR"}})
    assert r.status_code == 500 and ARCFACE in r.json()["errors"]
    assert any(ARCFACE in rec.getMessage() for rec in caplog.records)
    # the file copied in: the next restore works without a restart
    write_tiny_arcface(Path(folder) / ARCFACE)
    restorer().restore(image)
    assert restorer().last_run.identity is not None and len(restorer().last_run.report[0]["candidates"]) == 3

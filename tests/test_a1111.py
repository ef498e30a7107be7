"""The A1111 adapter (scripts/vspbfr_a1111.py) against the A1111 1.10.1 stand-in in tests/a1111_standin.

Covers: registration (twice, UI reload, pre-1.8 base class, settings section, Extras order), restore on the
real photos of ../shared/faces/whole with tiny VSPBFR weights and the real RetinaFace mobilenet0.25, face
selection, the settings path (txt2img API with override_settings, seed in infotext), RGBA in Extras, the
extras API's all-None arguments, missing weights (start, settings, Extras, txt2img, our route), our route,
Forge's memory hook, and loading in a fresh interpreter whose sys.path does not hold the repository.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_path
from tiny_models import KINDS, tiny_official_objects, write_tiny_checkpoints, write_tiny_detector

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

STANDIN = Path(__file__).resolve().parent / "a1111_standin"
if str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

import standin  # noqa: E402  (the stand-in folder must be on sys.path first)

# face counts of ../shared/faces/whole with RetinaFace mobilenet0.25 (../shared/weights/README.md)
PHOTOS = {"gfpgan_00.jpg": 2, "gfpgan_10045.png": 3, "cf_00.jpg": 4, "cf_02.png": 4, "cf_04.jpg": 1,
          "skimage_astronaut.png": 1}
MOBILE = {"vspbfr_detector": "retinaface_mobile0.25"}
ROUTE = "/vspbfr/v1/restore"


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_checkpoints(folder)
    return folder


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, tiny_dir) -> Path:
    """Tiny VSPBFR networks plus the real RetinaFace mobilenet0.25 (skips without ../shared)."""
    mobile = shared_path("weights", "detection_mobilenet0.25_Final.pth")
    folder = tmp_path_factory.mktemp("weights")
    for f in tiny_dir.iterdir():
        shutil.copy(f, folder)
    shutil.copy(mobile, folder)
    return folder


def start(tmp_path: Path, weights: Path | None = None, **kwargs):
    """A started stand-in webui whose models/VSPBFR holds a copy of ``weights``."""
    data = tmp_path / "webui"
    models = data / "models" / "VSPBFR"
    models.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        for f in weights.iterdir():
            shutil.copy(f, models)
    return standin.start(str(data), [str(ROOT)], **kwargs)


def adapter():
    """The module A1111 executed last (the one holding the registered restorer)."""
    from modules import scripts

    mods = [d.module for d in scripts.postprocessing_scripts_data if d.path.endswith("vspbfr_a1111.py")]
    assert len(mods) == 1
    return mods[0]


def restorers(name: str = "VSPBFR") -> list:
    from modules import shared

    return [r for r in shared.face_restorers if r.name() == name]


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_path("faces", "whole", name)).convert("RGB"))


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def from_b64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def far_from_faces(shape: tuple[int, ...], detections: list[dict], factor: float = 3.0) -> np.ndarray:
    """True where a pixel lies outside every face box grown ``factor`` times around its centre."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    far = np.ones((h, w), bool)
    for det in detections:
        x1, y1, x2, y2 = det["box"]
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, factor * max(x2 - x1, y2 - y1) / 2
        far &= ~((abs(xx - cx) <= r) & (abs(yy - cy) <= r))
    return far


def find_block(block, elem_id: str):
    if getattr(block, "elem_id", None) == elem_id:
        return block
    for child in getattr(block, "children", []):
        found = find_block(child, elem_id)
        if found is not None:
            return found
    return None


# -- registration ---------------------------------------------------------------------------------


class FakeNet:
    def __init__(self):
        self.moves = []

    def to(self, *args):
        self.moves.append(args)
        return self


def test_registration_is_idempotent_across_reloads(tmp_path, tiny_dir):
    from modules import face_restoration_utils, script_callbacks, scripts, shared

    webui = start(tmp_path, tiny_dir)
    assert [r.name() for r in shared.face_restorers] == ["CodeFormer", "VSPBFR"]
    first = restorers()[0]
    assert isinstance(first, face_restoration_utils.CommonFaceRestoration)
    models = os.path.join(shared.models_path, "VSPBFR")
    assert first.cmd_dir == models and first.model_path == models
    client = webui.client()
    assert {"name": "VSPBFR", "cmd_dir": models} in client.get("/sdapi/v1/face-restorers").json()
    # registered script classes: ours only, never a base class (A1111 registers every class in the namespace)
    assert [d.script_class.name for d in scripts.postprocessing_scripts_data] == ["CodeFormer", "VSPBFR"]
    assert [d.script_class.__name__ for d in scripts.scripts_data] == ["VSPBFRGenerationInfo"]
    # the Extras order puts us after CodeFormer
    assert [s.name for s in scripts.scripts_postproc.scripts_in_preferred_order()] == ["CodeFormer", "VSPBFR"]
    # settings sit in the Face restoration section and the model radio lists us
    info = shared.opts.data_labels["vspbfr_seed"]
    assert info.section == ("face-restoration", "Face restoration") and info.category_id == "postprocessing"
    assert info.infotext == "VSPBFR seed"
    assert "VSPBFR" in shared.opts.data_labels["face_restoration_model"].component_args()["choices"]

    first.net = FakeNet()                       # as if weights were loaded
    for _ in range(2):                          # "Reload UI" twice
        standin.reload_ui(webui)
    assert [r.name() for r in shared.face_restorers] == ["CodeFormer", "VSPBFR"]
    current = restorers()[0]
    assert current is not first and first.net is None            # the old instance let go of its weights
    assert adapter()._restorer is current
    assert [r.path for r in webui.app.router.routes].count(ROUTE) == 1
    assert [r.path for r in webui.app.router.routes].count("/vspbfr/v1/status") == 1
    ours = [c for c in script_callbacks.callback_map["callbacks_app_started"] if c.script.endswith("vspbfr_a1111.py")]
    assert len(ours) == 1
    assert client.get("/vspbfr/v1/status").json()["models_dir"] == models


def test_registration_replaces_an_entry_left_by_another_module(tmp_path, tiny_dir):
    """Even without the unload callback (e.g. an older copy of the extension), a second run keeps one entry."""
    from modules import script_callbacks, scripts, shared

    start(tmp_path, tiny_dir)
    old = restorers()[0]
    old.net = FakeNet()
    script_callbacks.clear_callbacks()          # no script_unloaded callback this time
    scripts.load_scripts()
    assert len(restorers()) == 1 and restorers()[0] is not old and old.net is None
    assert [r.name() for r in shared.face_restorers] == ["CodeFormer", "VSPBFR"]


def test_before_1_8_the_plain_base_class_is_used(tmp_path, monkeypatch):
    import modules
    from modules import face_restoration

    monkeypatch.delattr(modules, "face_restoration_utils", raising=False)
    monkeypatch.setitem(sys.modules, "modules.face_restoration_utils", None)     # as if the module did not exist
    start(tmp_path)
    restorer = restorers()[0]
    assert isinstance(restorer, face_restoration.FaceRestoration)
    assert type(restorer).__mro__[1] is face_restoration.FaceRestoration
    assert restorer.net is None and os.path.isdir(restorer.model_path)


def test_nowebui_settings_are_in_the_options_api(tmp_path, tiny_dir):
    """--nowebui builds GET /sdapi/v1/options' model before the settings callbacks: ours must exist earlier."""
    from modules import shared

    webui = start(tmp_path, tiny_dir, nowebui=True)
    options = webui.client().get("/sdapi/v1/options").json()
    assert options["vspbfr_seed"] == 0 and options["vspbfr_detector"] == "auto"
    assert "vspbfr_status" in shared.opts.data_labels            # the settings callback still ran (status line)
    assert list(shared.opts.data_labels).index("vspbfr_status") < list(shared.opts.data_labels).index("vspbfr_seed")


def test_use_cpu_vspbfr_puts_us_on_the_cpu(tmp_path):
    import torch

    start(tmp_path, use_cpu=("vspbfr",))
    assert restorers()[0].get_device() == torch.device("cpu")


# -- restoring ------------------------------------------------------------------------------------


def test_restore_faces_on_real_photos(tmp_path, weights_dir):
    """The txt2img call site: uint8 RGB (H, W, 3) in and out, our detection/alignment/paste, nothing else touched."""
    from modules import devices, face_restoration, shared

    start(tmp_path, weights_dir, config=MOBILE)
    shared.opts.face_restoration_model = "VSPBFR"
    restorer = restorers()[0]
    for name, expected in PHOTOS.items():
        image = photo(name)
        before = image.copy()
        out = face_restoration.restore_faces(image)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == image.shape, name
        assert np.array_equal(image, before), f"{name}: the input was modified"
        run = restorer.last_run
        assert run.faces == expected, name
        assert len(run.detections) == expected
        changed = np.any(out != image, axis=2)
        assert changed.any(), f"{name}: no pixel changed"
        assert not changed[far_from_faces(image.shape, run.detections)].any(), f"{name}: changed away from faces"
    assert restorer.net is not None and restorer.net.device.type == "cpu"
    # "unload after use": the networks go to devices.cpu and torch_gc runs
    shared.opts.face_restoration_unload = True
    gc_before = devices.gc_calls
    restorer.restore(photo("skimage_astronaut.png"))
    assert devices.gc_calls > gc_before
    assert next(restorer.net.model.parameters()).device.type == "cpu"


def test_face_selection_settings(tmp_path, weights_dir):
    from modules import shared

    start(tmp_path, weights_dir, config=MOBILE)
    restorer = restorers()[0]
    image = photo("cf_00.jpg")                     # 4 faces
    for setting, value, faces in (("vspbfr_selection", "0,2", 2), ("vspbfr_max_faces", 3, 3),
                                  ("vspbfr_min_size", 2000, 0)):
        for key in ("vspbfr_selection", "vspbfr_max_faces", "vspbfr_min_size"):
            setattr(shared.opts, key, shared.opts.data_labels[key].default)
        setattr(shared.opts, setting, value)
        out = restorer.restore(image)
        assert restorer.last_run.faces == faces, (setting, value)
        if faces == 0:
            assert np.array_equal(out, image)
    # keyword overrides win over the settings; visibility 0 returns the image untouched without loading anything
    restorer.restore(image, selection="center", min_size=0)
    assert restorer.last_run.faces == 1
    assert np.array_equal(restorer.restore(image, visibility=0.0), image)
    shared.opts.vspbfr_selection = "first"
    with pytest.raises(ValueError, match="vspbfr_selection"):
        restorer.restore(image)


def test_mask_shape_settings(tmp_path, weights_dir):
    from modules import shared

    start(tmp_path, weights_dir, config=MOBILE)
    restorer = restorers()[0]
    image = photo("skimage_astronaut.png")
    assert shared.opts.data_labels["vspbfr_mask_shape"].default == "landmarks"
    changed = {}
    for shape in ("square", "landmarks"):
        shared.opts.vspbfr_mask_shape = shape
        changed[shape] = int(np.any(restorer.restore(image) != image, axis=-1).sum())
    assert 0 < changed["landmarks"] < changed["square"]
    shared.opts.vspbfr_mask_shape = "landmarks"
    assert restorer.last_run.options.infotext().get("VSPBFR mask") is None        # the default is not recorded
    # parsing: the network file is looked for in models/VSPBFR and models/GFPGAN, and named when missing
    with pytest.raises(Exception, match="parsing_parsenet.pth"):
        restorer.restore(image, mask_shape="parsing")
    with pytest.raises(Exception, match="'hair' cannot be pasted"):
        restorer.restore(image, mask_parts="skin,hair")
    shared.opts.vspbfr_mask_shape = shared.opts.data_labels["vspbfr_mask_shape"].default


def test_settings_path_through_txt2img_override_settings(tmp_path, weights_dir):
    """restore_faces + override_settings: our options apply, the seed used lands in the infotext, options come back."""
    from modules import processing, shared

    webui = start(tmp_path, weights_dir, config=MOBILE)
    sample = photo("skimage_astronaut.png").astype(np.float32).transpose(2, 0, 1) / 255.0
    processing.fake_samples = lambda p: [sample]
    client = webui.client()
    decoded = (255.0 * sample.transpose(1, 2, 0)).astype(np.uint8)

    def txt2img(**settings):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "restore_faces": True, "override_settings": {
            "face_restoration_model": "VSPBFR", **settings}})
        assert r.status_code == 200, r.text
        body = r.json()
        return np.asarray(from_b64(body["images"][0])), json.loads(body["info"])["infotexts"][0]

    image, infotext = txt2img(vspbfr_seed=-1, vspbfr_visibility=0.8, vspbfr_prompt_mix=0.5, vspbfr_bank_scale=0.75)
    params = dict(part.split(": ", 1) for part in infotext.splitlines()[1].split(", "))
    assert params["Face restoration"] == "VSPBFR"
    seed = int(params["VSPBFR seed"])
    assert 0 <= seed < 2**32 - 1
    assert (params["VSPBFR visibility"], params["VSPBFR prompt mix"], params["VSPBFR bank scale"]) == \
        ("0.8", "0.5", "0.75")
    assert not np.array_equal(image, decoded)
    # settings are restored after the request, the job's seed is unpinned
    assert shared.opts.vspbfr_seed == 0 and shared.opts.face_restoration_model == "CodeFormer"
    assert restorers()[0].pinned_seed is None
    # the recorded seed reproduces the image; another seed changes it
    again, infotext2 = txt2img(vspbfr_seed=seed, vspbfr_visibility=0.8, vspbfr_prompt_mix=0.5, vspbfr_bank_scale=0.75)
    assert np.array_equal(again, image) and f"VSPBFR seed: {seed}" in infotext2
    other, _ = txt2img(vspbfr_seed=seed + 1, vspbfr_visibility=0.8, vspbfr_prompt_mix=0.5, vspbfr_bank_scale=0.75)
    assert not np.array_equal(other, image)
    # the options API sets them too (and refuses nothing A1111 would accept)
    assert client.post("/sdapi/v1/options", json={"vspbfr_seed": 5, "vspbfr_selection": "largest"}).status_code == 200
    assert shared.opts.vspbfr_seed == 5 and client.get("/sdapi/v1/options").json()["vspbfr_selection"] == "largest"
    # without restore_faces nothing of ours is recorded
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "restore_faces": False})
    assert "VSPBFR" not in json.loads(r.json()["info"])["infotexts"][0]


def test_extras_rgba_keeps_alpha_and_records_infotext(tmp_path, weights_dir):
    from modules import postprocessing, scripts

    webui = start(tmp_path, weights_dir, config=MOBILE)
    rgb = photo("skimage_astronaut.png")
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    ours = [s for s in scripts.scripts_postproc.scripts if s.name == "VSPBFR"][0]
    assert set(ours.controls) == {"enable", "visibility", "prompt_mix", "bank_scale", "seed", "selection", "order",
                                  "max_faces", "min_size", "threshold", "color_correction", "mask_shape", "mask_parts",
                                  "detector", "keep_gray"}
    assert ours.controls["enable"].value is False and ours.controls["detector"].value == "from settings"
    assert ours.controls["seed"].value == 0 and ours.controls["visibility"].value == 1.0
    assert "weights found" in find_block(webui.demo, "extras_vspbfr_status").page_load()

    args = scripts.scripts_postproc.create_args_for_run({"VSPBFR": {"enable": True, "seed": 7, "visibility": 0.9}})
    images, infotext, _ = postprocessing.run_postprocessing(0, rgba, None, "", "", True, *args)
    out = images[0]
    assert out.mode == "RGBA" and out.size == rgba.size
    out_a = np.asarray(out)
    assert np.array_equal(out_a[..., 3], alpha)
    assert np.any(out_a[..., :3] != rgb)
    for part in ("VSPBFR seed: 7", "VSPBFR visibility: 0.9", "VSPBFR faces: 1",
                 "VSPBFR detector: retinaface_mobile0.25"):
        assert part in infotext
    assert out.info["postprocessing"] == infotext
    # not enabled: untouched, nothing recorded
    args = scripts.scripts_postproc.create_args_for_run({"VSPBFR": {"enable": False}})
    images, infotext, _ = postprocessing.run_postprocessing(0, rgba, None, "", "", True, *args)
    assert np.array_equal(np.asarray(images[0]), np.asarray(rgba)) and "VSPBFR" not in infotext


def test_extras_api_passes_none_and_we_do_nothing(tmp_path, tiny_dir):
    """/sdapi/v1/extra-single-image gives third-party scripts None for every control: treated as disabled."""
    webui = start(tmp_path, tiny_dir)
    image = Image.fromarray(np.full((64, 64, 3), 120, np.uint8))
    r = webui.client().post("/sdapi/v1/extra-single-image", json={"image": b64_png(image), "codeformer_visibility": 0})
    assert r.status_code == 200, r.text
    assert "VSPBFR" not in r.json()["html_info"]
    assert np.array_equal(np.asarray(from_b64(r.json()["image"])), np.asarray(image))


@pytest.fixture
def forge(monkeypatch):
    """Forge's modules_forge importable for one test (and gone from sys.modules afterwards)."""
    monkeypatch.syspath_prepend(standin.FORGE_DIR)
    yield
    for name in [m for m in sys.modules if m == "modules_forge" or m.startswith("modules_forge.")]:
        del sys.modules[name]


def test_forge_memory_hook_runs_before_restoring(tmp_path, weights_dir, forge):
    from modules_forge import utils as forge_utils

    start(tmp_path, weights_dir, config=MOBILE)
    calls = forge_utils.calls
    restorers()[0].restore(photo("skimage_astronaut.png"))
    assert forge_utils.calls == calls + 1


@pytest.mark.parametrize("webui_folder, host", [("stable-diffusion-webui-forge", "Forge"),
                                                ("stable-diffusion-webui-reForge", "reForge")])
def test_messages_name_the_forks_folders(tmp_path, forge, monkeypatch, webui_folder, host):
    from modules import paths

    root = tmp_path / webui_folder
    root.mkdir()
    monkeypatch.setattr(paths, "script_path", str(root))
    start(tmp_path)                                             # no weights
    restorer = restorers()[0]
    message = restorer.missing_weights_message(restorer.missing_files())
    assert f"({host}'s models/VSPBFR folder)" in message and "A1111" not in message
    assert adapter().status()["host"] == host


def test_a1111_message_and_core_errors_give_the_webui_command(tmp_path):
    from modules import shared
    from vspbfr_core import paths as core_paths
    from vspbfr_core.errors import ModelNotFoundError

    start(tmp_path)
    restorer = restorers()[0]
    assert "(A1111's models/VSPBFR folder)" in restorer.missing_weights_message(restorer.missing_files())
    # a file the core looks up itself (e.g. one named in a custom folder) gives the webui's command and setting too
    folder = Path(shared.models_path) / "VSPBFR"
    with pytest.raises(ModelNotFoundError) as info:
        core_paths.find_model_file("restoration_net", [folder])
    message = str(info.value)
    assert f'-m vspbfr_core download --models "{folder}"' in message and f'cd "{ROOT}"' in message
    assert "'VSPBFR models folder'" in message and "vspbfr download" not in message


def test_a1111_pickle_check(tmp_path, weights_dir, monkeypatch):
    """A1111 replaces torch.load with a pickle check that returns None on refusal (modules/safe.py)."""
    import argparse

    import torch
    from modules import safe

    # official-style files: the legacy container and an argparse.Namespace in 'opts' (allowed through safe.Extra)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    objects = tiny_official_objects()
    objects["style_encoder_decoder"]["opts"] = argparse.Namespace(**objects["style_encoder_decoder"]["opts"])
    for kind in KINDS:
        torch.save(objects[kind], legacy / f"{kind}.pt", _use_new_zipfile_serialization=False)
    shutil.copy(weights_dir / "detection_mobilenet0.25_Final.pth", legacy)
    start(tmp_path / "a", legacy, config=MOBILE)
    safe.install(monkeypatch)
    restorer = restorers()[0]
    restorer.restore(photo("skimage_astronaut.png"))
    assert restorer.last_run.faces == 1 and safe.global_extra_handler is None
    # files written by a recent PyTorch carry entries A1111's check refuses; vspbfr_core reads them with
    # torch.serialization.load and its own allow-list, so the check is not in the way
    start(tmp_path / "b", weights_dir, config=MOBILE)
    restorer = restorers()[0]
    restorer.restore(photo("skimage_astronaut.png"))
    assert restorer.last_run.faces == 1


def test_waits_for_the_webui_checkpoint_load(tmp_path, weights_dir, monkeypatch):
    """While A1111 loads its checkpoint it patches nn.Module.load_state_dict (no ``assign=``); we load after it."""
    import threading
    import time

    import torch
    from modules import sd_models

    start(tmp_path, weights_dir, config=MOBILE)
    restorer = restorers()[0]
    original = torch.nn.Module.load_state_dict

    def patched(self, state_dict, strict=True):          # A1111's LoadStateDictOnMeta replacement
        return original(self, state_dict, strict=strict)

    done: list = []
    sd_models.model_data.lock.acquire()                   # the startup load is running
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", patched)
    worker = threading.Thread(target=lambda: done.append(restorer.restore(photo("skimage_astronaut.png"))))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive() and not done                 # waiting for the lock, not failing
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", original)
    sd_models.model_data.lock.release()                   # the startup load finished
    worker.join(120)
    assert done and restorer.last_run.faces == 1


# -- missing weights ------------------------------------------------------------------------------


def test_missing_weights_are_loud_everywhere(tmp_path, caplog):
    from modules import face_restoration, postprocessing, processing, scripts, shared
    from vspbfr_core.errors import ModelNotFoundError

    caplog.set_level("WARNING", logger="vspbfr.a1111")
    webui = start(tmp_path)                                     # models/VSPBFR is empty
    folder = os.path.join(shared.models_path, "VSPBFR")
    start_message = " ".join(r.getMessage() for r in caplog.records)
    for part in (folder, "models/VSPBFR", "-m vspbfr_core download --models", "style_encoder_decoder.pt",
                 "detection_Resnet50_Final.pth"):
        assert part in start_message
    assert "missing" in standin.settings_page()["vspbfr_status"].page_load()        # Settings > Face restoration
    assert "vspbfr_core download" in find_block(webui.demo, "extras_vspbfr_status").page_load()   # Extras

    image = np.zeros((64, 64, 3), np.uint8)
    shared.opts.face_restoration_model = "VSPBFR"
    with pytest.raises(ModelNotFoundError, match="models/VSPBFR"):
        face_restoration.restore_faces(image)                   # never a silent no-op
    args = scripts.scripts_postproc.create_args_for_run({"VSPBFR": {"enable": True}})
    with pytest.raises(ModelNotFoundError, match="vspbfr_core download"):
        postprocessing.run_postprocessing(0, Image.fromarray(image), None, "", "", True, *args)

    client = webui.client()
    r = client.post(ROUTE, json={"image": b64_png(Image.fromarray(image))})
    assert r.status_code == 503 and "vspbfr_core download" in r.json()["detail"]
    body = client.get("/vspbfr/v1/status").json()
    assert body["ready"] is False and len(body["missing"]) == 4
    processing.fake_samples = lambda p: [np.zeros((3, 64, 64), np.float32)]
    caplog.clear()
    r = client.post("/sdapi/v1/txt2img", json={"restore_faces": True,
                                               "override_settings": {"face_restoration_model": "VSPBFR"}})
    assert r.status_code == 500 and "models/VSPBFR" in r.json()["errors"]
    assert any("missing" in rec.getMessage() for rec in caplog.records)    # also logged before sampling


def test_status_notes_are_current_at_every_page_load(tmp_path, tiny_dir):
    """Settings and Extras compute the weights note when the page loads (and Extras on request), not once."""
    from modules import scripts, shared

    webui = start(tmp_path, tiny_dir)                           # the three networks, no detector yet
    settings_note = standin.settings_page()["vspbfr_status"]
    extras_note = find_block(webui.demo, "extras_vspbfr_status")
    for note in (settings_note, extras_note):
        assert "missing: detection_Resnet50_Final.pth (or detection_mobilenet0.25_Final.pth" in note.page_load()
    folder = Path(shared.models_path) / "VSPBFR"
    write_tiny_detector(folder / "detection_mobilenet0.25_Final.pth", "mobile0.25")   # the user copies it in
    for note in (settings_note, extras_note):
        text = note.page_load()
        assert "weights found" in text and "retinaface_mobile0.25 (auto)" in text
    ours = [s for s in scripts.scripts_postproc.scripts if s.name == "VSPBFR"][0]
    detector = ours.controls["detector"]
    detector.value = "retinaface_resnet50"                      # an explicit choice in the Extras controls
    detector.fire("change")
    assert "missing: detection_Resnet50_Final.pth" in extras_note.value
    shared.opts.vspbfr_detector = "retinaface_resnet50"         # the same choice in Settings
    assert "missing: detection_Resnet50_Final.pth" in settings_note.page_load()
    write_tiny_detector(folder / "detection_Resnet50_Final.pth", "resnet50")
    find_block(webui.demo, "extras_vspbfr_recheck").fire("click")
    assert "weights found" in extras_note.value and "retinaface_resnet50" in extras_note.value


def test_auto_detector_uses_the_file_that_is_there(tmp_path, weights_dir, caplog):
    """Only mobile0.25 installed (as after `download --detector mobile0.25`): the default setting uses it and says
    so; an explicit choice of the other detector is still honoured, with a clear error."""
    from modules import shared
    from vspbfr_core.errors import ModelNotFoundError

    caplog.set_level("INFO", logger="vspbfr.a1111")
    webui = start(tmp_path, weights_dir)                        # default settings: detector auto
    assert shared.opts.vspbfr_detector == "auto"
    restorer = restorers()[0]
    assert restorer.missing_files() == []
    restorer.restore(photo("skimage_astronaut.png"))
    assert restorer.last_run.faces == 1
    assert restorer.last_run.infotext()["VSPBFR detector"] == "retinaface_mobile0.25"
    assert any("retinaface_mobile0.25" in r.getMessage() for r in caplog.records)
    status = webui.client().get("/vspbfr/v1/status").json()
    assert status["detector"] == "retinaface_mobile0.25" and status["detector_choice"] == "auto" and status["ready"]
    with pytest.raises(ModelNotFoundError, match="detection_Resnet50_Final.pth"):
        restorer.restore(photo("skimage_astronaut.png"), detector="retinaface_resnet50")


@pytest.mark.parametrize("nowebui", [False, True])
def test_options_api_lists_our_settings_when_modules_api_was_imported_first(tmp_path, tiny_dir, nowebui):
    """Forge / reForge, or an extension loading before ours (sd-webui-controlnet), import modules.api before our
    settings exist: GET /sdapi/v1/options must list them anyway."""
    from modules import shared

    webui = start(tmp_path, tiny_dir, nowebui=nowebui, api_imported_early=True)
    client = webui.client()
    shared.opts.add_option("late_option", shared.OptionInfo("x", "added after the API"))
    options = client.get("/sdapi/v1/options").json()
    assert "late_option" not in options                         # the stand-in filters like the webui does
    ours = [k for k in shared.opts.data_labels if k.startswith("vspbfr_") and k != "vspbfr_status"]
    assert len(ours) == 17 and set(ours) <= set(options)
    assert options["vspbfr_detector"] == "auto" and options["vspbfr_seed"] == 0
    assert client.post("/sdapi/v1/options", json={"vspbfr_prompt_mix": 0.5}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["vspbfr_prompt_mix"] == 0.5
    standin.reload_ui(webui)                                    # the route is fixed once, not stacked
    assert [getattr(r, "path", None) for r in webui.app.router.routes].count("/sdapi/v1/options") == 2
    assert client.get("/sdapi/v1/options").json()["vspbfr_prompt_mix"] == 0.5


def test_only_the_detector_missing_and_gfpgan_fallback(tmp_path, tiny_dir):
    from modules import shared

    start(tmp_path, tiny_dir)
    restorer = restorers()[0]
    assert restorer.missing_files() == ["detection_Resnet50_Final.pth"]
    message = restorer.missing_weights_message(restorer.missing_files())
    assert "--only detector --detector resnet50" in message
    write_tiny_detector(Path(shared.models_path) / "GFPGAN" / "detection_Resnet50_Final.pth", "resnet50")
    assert restorer.missing_files() == []                       # A1111 keeps facexlib's copy in models/GFPGAN
    other = tmp_path / "elsewhere"
    shared.opts.vspbfr_models_path = str(other)                 # the models-folder setting
    assert restorer.models_dir() == str(other) and len(restorer.missing_files()) == 3
    assert "'VSPBFR models folder' setting" in restorer.missing_weights_message(restorer.missing_files())


# -- our route ------------------------------------------------------------------------------------


def test_restore_route(tmp_path, weights_dir):
    webui = start(tmp_path, weights_dir, config=MOBILE)
    client = webui.client()
    astronaut = Image.fromarray(photo("skimage_astronaut.png"))
    payload = {"image": b64_png(astronaut), "seed": 3, "visibility": 0.7}
    r = client.post(ROUTE, json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    out = from_b64(body["image"])
    assert out.mode == "RGB" and out.size == astronaut.size
    assert body["faces"] == 1 and body["seed"] == 3 and len(body["detections"]) == 1
    assert body["info"]["VSPBFR faces"] == 1 and body["info"]["VSPBFR visibility"] == 0.7
    assert not np.array_equal(np.asarray(out), np.asarray(astronaut))
    assert np.array_equal(np.asarray(from_b64(client.post(ROUTE, json=payload).json()["image"])), np.asarray(out))
    # seed -1: a random seed, returned, which reproduces the image; a data: URL is accepted
    r1 = client.post(ROUTE, json={"image": "data:image/png;base64," + b64_png(astronaut), "seed": -1}).json()
    assert 0 <= r1["seed"] < 2**32 - 1
    r2 = client.post(ROUTE, json={"image": b64_png(astronaut), "seed": r1["seed"]}).json()
    assert r2["image"] == r1["image"]
    # RGBA keeps its alpha
    alpha = np.full(astronaut.size[::-1], 77, np.uint8)
    rgba = Image.fromarray(np.dstack([np.asarray(astronaut), alpha]), "RGBA")
    out = from_b64(client.post(ROUTE, json={"image": b64_png(rgba)}).json()["image"])
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], alpha)
    # client errors are 422 with a message that says what is wrong
    for bad, words in (({"image": payload["image"], "strength": 1}, "strength"),
                       ({"image": payload["image"], "selection": "first"}, "selection"),
                       ({"image": payload["image"], "visibility": 2}, "visibility"),
                       ({"image": payload["image"], "detector": "yolo"}, "detector"),
                       ({"image": "not an image"}, "image"), ({"seed": 1}, "image")):
        r = client.post(ROUTE, json=bad)
        assert r.status_code == 422 and words in r.json()["detail"], (bad.keys(), r.text)
    status = client.get("/vspbfr/v1/status").json()
    assert status["ready"] and status["loaded"] and status["detector"] == "retinaface_mobile0.25"


# -- loading as A1111 does, in a fresh interpreter ------------------------------------------------


def test_loads_and_restores_without_the_repository_on_sys_path(tmp_path, weights_dir):
    """A1111 puts the extension folder on sys.path only while the script file runs; later lazy imports must work."""
    data = tmp_path / "webui"
    (data / "models").mkdir(parents=True)
    shutil.copytree(weights_dir, data / "models" / "VSPBFR")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(STANDIN)!r})
        import numpy as np
        from PIL import Image
        import standin
        standin.start({str(data)!r}, [{str(ROOT)!r}], config={MOBILE!r})
        assert {str(ROOT)!r} not in sys.path, "the extension folder stayed on sys.path"
        assert "vspbfr_core.pipeline" not in sys.modules, "the pipeline was imported at start"
        from modules import face_restoration, shared
        shared.opts.face_restoration_model = "VSPBFR"
        image = np.asarray(Image.open({str(shared_path("faces", "whole", "skimage_astronaut.png"))!r}).convert("RGB"))
        out = face_restoration.restore_faces(image)
        restorer = [r for r in shared.face_restorers if r.name() == "VSPBFR"][0]
        print("faces", restorer.last_run.faces, out.shape, bool((out != image).any()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "faces 1 (512, 512, 3) True" in done.stdout

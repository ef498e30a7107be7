"""The ComfyUI node pack without ComfyUI: stand-in ``comfy``/``folder_paths`` modules
(tests/comfyui/comfyui_stubs.py), tiny VSPBFR networks and the real RetinaFace mobilenet0.25 on a real photo.

Covers the node table (ids, category, descriptions, tooltips), append-safe model folders, no network at import or
graph build, the loader (memory manager wrapping, precision, missing-file message), detection/selection/zero faces,
split chain == all-in-one, video batches, seeds, progress and interrupts, LATENT + VAE, paste options, previews,
install.py, the example workflows and the metadata.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, shared_path

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
import comfyui_stubs as stubs  # noqa: E402

DETECTOR = "retinaface_mobile0.25"
NODE_IDS = ("VSPBFRModelLoader", "VSPBFRDetectFaces", "VSPBFRStylePrompt", "VSPBFRRestoreFaces", "VSPBFRPasteFaces",
            "VSPBFRFaceRestore", "VSPBFRIdentityScore", "VSPBFRFacesToSEGS", "VSPBFRSEGSToFaces")
PHOTO_FACES = 4
CUSTOM_TYPES = {"VSPBFR_MODEL", "VSPBFR_FACES", "VSPBFR_STYLE"}


class NoNetwork:
    """Any socket connection attempt fails the test."""

    def __enter__(self):
        self.saved = socket.socket.connect, socket.create_connection

        def refuse(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args[1:] or kwargs}")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        return self

    def __exit__(self, *exc):
        socket.socket.connect, socket.create_connection = self.saved


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    photo = shared_path("faces", "whole", "cf_00.jpg")
    models, temp = stubs.models_folder(tmp_path_factory.mktemp("nodes"),
                                       shared_path("weights", "detection_mobilenet0.25_Final.pth"))
    with NoNetwork():
        pack = stubs.load_pack(models, temp)
    image = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB")).astype(np.float32) / 255.0)[None]
    yield stubs.pack_env(pack, models=models, temp=temp, photo=image)
    stubs.unload_pack()


@pytest.fixture
def state():
    yield stubs.reset_state()
    stubs.STATE.interrupt_after = None


def detect(env, image=None, size=16, **kw):
    args = dict(facedetection=DETECTOR, threshold=0.97, min_size=0, max_faces=0, selection="all", order="left-right",
                face_size=size)
    args.update(kw)
    return env.nodes["VSPBFRDetectFaces"].detect(**args, image=env.photo if image is None else image)


def split_chain(env, image, seed=3, size=16, fidelity=1.0, **detect_kw):
    faces, crops, _, count, source = detect(env, image, size, **detect_kw)["result"]
    (style,) = env.nodes["VSPBFRStylePrompt"].prompt(env.model, crops, seed, faces)
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, seed, fidelity, 1.0, style, faces)["result"][0]
    out, mask, _ = env.nodes["VSPBFRPasteFaces"].paste(source, faces, restored, 1.0, 50.0, "landmarks", "none", 1.0)
    return out, mask, count


def all_in_one(env, image, seed=3, **kw):
    args = dict(facedetection=DETECTOR, fidelity=1.0, visibility=1.0, only_center_face=False, selection="all",
                upscale=1.0, seed=seed)
    args.update(kw)
    return env.nodes["VSPBFRFaceRestore"].restore(env.model, image=image, **args)


# -- import, table, folders ------------------------------------------------------------------------------------------

def test_importing_outside_comfyui_registers_nothing_and_stays_light():
    code = (f"import importlib.util, sys; root = {str(ROOT)!r}\n"
            "spec = importlib.util.spec_from_file_location('vspbfr_pack', root + '/__init__.py', "
            "submodule_search_locations=[root])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['vspbfr_pack'] = m; spec.loader.exec_module(m)\n"
            "assert m.NODE_CLASS_MAPPINGS == {} and m.NODE_DISPLAY_NAME_MAPPINGS == {} and m.WEB_DIRECTORY == './web'\n"
            "assert 'torch' not in sys.modules and 'vspbfr_pack.nodes' not in sys.modules\nprint('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "ok", run.stderr


def test_node_table(env):
    assert set(env.pack.NODE_CLASS_MAPPINGS) == set(NODE_IDS) == set(env.pack.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in env.pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("VSPBFR") and cls.CATEGORY == "VSPBFR" and len(cls.DESCRIPTION) > 40
        assert callable(getattr(cls, cls.FUNCTION))
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, options) in spec.get(section, {}).items():
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
                assert not (isinstance(kind, str) and kind.startswith("VSPBFR")) or kind in CUSTOM_TYPES, kind
        assert len(inspect.getsource(cls).splitlines()) <= 50, f"{node_id} is not a thin node class"
    custom = {t for cls in env.pack.NODE_CLASS_MAPPINGS.values() for t in cls.RETURN_TYPES if t.startswith("VSPBFR")}
    assert custom == CUSTOM_TYPES


def test_model_folders_are_registered_append_safely(env):
    table = env.host.folder_paths.folder_names_and_paths
    assert table["vspbfr"][0] == [str(env.models / "vspbfr")]          # registered at import
    saved = dict(table)
    try:
        table.clear()
        table.update({"vspbfr": (["/yaml/vspbfr"], set()), "facedetection": (["/other/facedetection"], {".pth"}),
                      "checkpoints": (["/ck"], {".safetensors"})})
        env.host.register_model_folders()
        env.host.register_model_folders()
        ours = os.path.join(str(env.models), "vspbfr")
        assert table["vspbfr"] == (["/yaml/vspbfr", ours], set())        # yaml entry first, "all files" kept
        assert table["facedetection"][0] == ["/other/facedetection", os.path.join(str(env.models), "facedetection")]
        assert table["facedetection"][1] >= {".pth", ".safetensors", ".pt"}
        assert table["checkpoints"] == (["/ck"], {".safetensors"})
        assert env.host.detector_dirs()[:2] == ["/other/facedetection", os.path.join(str(env.models), "facedetection")]
    finally:
        table.clear()
        table.update(saved)


def test_graph_build_never_touches_the_network(env):
    with NoNetwork():
        for cls in env.pack.NODE_CLASS_MAPPINGS.values():
            cls.INPUT_TYPES()


# -- loader ----------------------------------------------------------------------------------------------------------

def test_loader_lists_files_and_wraps_the_networks_for_the_memory_manager(env, state):
    spec = env.pack.NODE_CLASS_MAPPINGS["VSPBFRModelLoader"].INPUT_TYPES()["required"]
    for kind in ("style_encoder_decoder", "code_diffuser", "restoration_net"):
        choices, options = spec[kind]
        assert choices[0] == options["default"] == f"{kind}.pt" and len(choices) == 3
    patcher = env.model.patcher
    assert isinstance(patcher, stubs.ModelPatcher) and patcher.model is env.model.pipeline.model
    assert patcher.load_device == torch.device("cpu") and patcher.size > 0 and env.model.dtype == torch.float32
    state.fp16 = True
    assert env.host.choose_dtype("auto", torch.device("cpu"), 10) == torch.float16
    state.fp16, state.bf16 = False, True
    assert env.host.choose_dtype("auto", torch.device("cpu"), 10) == torch.bfloat16
    assert env.host.choose_dtype("fp32", torch.device("cpu"), 10) == torch.float32


def test_a_missing_model_file_names_the_file_the_folder_and_the_download_command(env):
    path = env.models / "vspbfr" / "restoration_net.pt"
    hidden = path.with_suffix(".hidden")
    path.rename(hidden)
    try:
        with pytest.raises(env.errors.ModelNotFoundError) as info:
            env.nodes["VSPBFRModelLoader"].load("style_encoder_decoder.pt", "code_diffuser.pt", "restoration_net.pt",
                                                "auto")
    finally:
        hidden.rename(path)
    message = str(info.value)
    assert "restoration_net.pt" in message and str(env.models / "vspbfr") in message
    # the command that works there: ComfyUI's own Python, from the pack's folder (no `vspbfr` script on its PATH)
    assert f'-m vspbfr_core download --models "{env.models / "vspbfr"}"' in message and "vspbfr download" not in message
    assert "extra_model_paths.yaml" in message


# -- detection -------------------------------------------------------------------------------------------------------

def test_detect_outputs_faces_crops_masks_count_and_a_preview(env, state):
    out = detect(env, size=512)
    faces, crops, masks, count, image = out["result"]
    assert count == len(faces) == PHOTO_FACES and faces.face_keys == [0, 1, 2, 3]
    assert crops.shape == (PHOTO_FACES, 512, 512, 3) and masks.shape == (PHOTO_FACES, 512, 512)
    assert 0 <= float(masks.min()) and float(masks.max()) == 1.0 and image is env.photo
    preview = out["ui"]["vspbfr_faces"][0]
    assert (preview["width"], preview["height"], preview["count"]) == (491, 310, PHOTO_FACES)
    assert [f["index"] for f in preview["faces"]] == [0, 1, 2, 3] and all(len(f["box"]) == 4 for f in preview["faces"])
    assert (env.temp / preview["image"]["filename"]).is_file()
    assert any(state.loads)                                     # the detector went through load_models_gpu


def test_selection_by_index(env):
    faces, crops, _, count, _ = detect(env, selection="0,2")["result"]
    assert count == 2 and faces.face_keys == [0, 2] and crops.shape[0] == 2


def test_zero_faces_pass_through_unchanged_with_count_zero(env, state):
    blank = torch.full((1, 96, 128, 3), 0.5)
    faces, crops, masks, count, _ = detect(env, blank)["result"]
    assert count == 0 and crops.shape == (1, 16, 16, 3) and not crops.any() and not masks.any()
    state.loads.clear()
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0)["result"][0]
    assert not state.loads                                      # the placeholder crop is not restored
    out, mask, _ = env.nodes["VSPBFRPasteFaces"].paste(blank, faces, restored, 1.0, 50.0, "landmarks", "none", 1.0)
    assert torch.equal(out, blank) and not mask.any()
    result = all_in_one(env, blank)["result"]
    assert result[2] == 0 and torch.equal(result[0], blank)
    gray = blank[..., :1]                                       # a one-channel IMAGE keeps its layout
    assert torch.equal(all_in_one(env, gray)["result"][0], gray) and detect(env, gray)["result"][3] == 0


# -- restoration -----------------------------------------------------------------------------------------------------

def test_split_chain_gives_the_all_in_one_pixels(env):
    out, mask, count = split_chain(env, env.photo)
    single, single_mask, single_count, latent, _ = all_in_one(env, env.photo)["result"]
    assert count == single_count == PHOTO_FACES and latent is None
    assert torch.equal(out, single) and torch.equal(mask, single_mask)
    outside = mask[..., None].expand_as(out) == 0
    assert torch.equal(out[outside], env.photo[outside]) and not torch.equal(out, env.photo)


def test_video_frames_have_their_own_faces_and_the_same_result_in_any_position(env):
    blank = torch.full_like(env.photo, 0.25)
    batch = torch.cat([env.photo, blank, env.photo])
    out, mask, count, _, _ = all_in_one(env, batch)["result"]
    assert count == 2 * PHOTO_FACES and out.shape == batch.shape and mask.shape == batch.shape[:3]
    assert torch.equal(out[1], blank[0]) and torch.equal(out[0], out[2])
    assert torch.equal(out[:1], all_in_one(env, env.photo)["result"][0])


def test_style_prompt_seeds_and_fidelity(env):
    faces, crops, _, _, _ = detect(env)["result"]
    restore = env.nodes["VSPBFRRestoreFaces"].restore
    (style,) = env.nodes["VSPBFRStylePrompt"].prompt(env.model, crops, 9, faces)
    assert len(style) == PHOTO_FACES and style.style.encoder_ws.shape == style.style.prompts.shape
    given = restore(env.model, crops, 9, 1.0, 1.0, style, faces)["result"][0]
    computed = restore(env.model, crops, 9, 1.0, 1.0, None, faces)["result"][0]
    assert given.shape == (PHOTO_FACES, 16, 16, 3) and torch.equal(given, computed)
    assert not torch.equal(given, restore(env.model, crops, 10, 1.0, 1.0, None, faces)["result"][0])
    assert not torch.equal(given, restore(env.model, crops, 9, 0.0, 1.0, style, faces)["result"][0])
    # a face keeps its seed key (its index in its image) when it is selected alone
    picked, crops_13 = detect(env, selection="1,3")["result"][:2]
    alone = restore(env.model, crops_13, 9, 1.0, 1.0, None, picked)["result"][0]
    assert torch.allclose(alone, given[[1, 3]], atol=1e-6)
    with pytest.raises(env.errors.InputError, match="2 face"):
        restore(env.model, crops, 9, 1.0, 1.0, None, picked)


def test_progress_per_face_step_and_interrupt_within_one_face(env, state):
    faces, crops, _, _, _ = detect(env)["result"]
    calls = []
    pipeline = env.model.pipeline
    original = pipeline.restore_faces
    pipeline.restore_faces = lambda *a, **k: (calls.append(a[0].shape[0]), original(*a, **k))[1]
    try:
        state.progress.clear()
        env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, None, faces)
        assert calls == [1, 1, 1, 1]                            # one face per call on the CPU
        # four steps per face: encode, diffuse, feature bank, restore
        assert state.progress[-1] == (4 * PHOTO_FACES, 4 * PHOTO_FACES) and len(state.progress) == 4 * PHOTO_FACES
        calls.clear()
        state.progress.clear()
        state.interrupt_after = 5                               # Cancel pressed during the second face
        with pytest.raises(stubs.InterruptProcessingException):
            env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, None, faces)
        assert len(state.progress) == 5 and calls == [1, 1]     # stopped at the next step of that face
    finally:
        del pipeline.restore_faces


def test_auto_detector_uses_the_file_that_is_there(env, state):
    """Only mobile0.25 installed: the default `auto` uses it (in both nodes), an explicit resnet50 is honoured with
    a clear error; `auto` gives the same pixels as naming mobile0.25."""
    for node in ("VSPBFRDetectFaces", "VSPBFRFaceRestore"):
        spec = env.pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]["facedetection"]
        assert spec[0][0] == "auto" and spec[1]["default"] == "auto"
    faces = detect(env, facedetection="auto")["result"][0]
    assert faces.detector == "retinaface_mobile0.25" and len(faces) == PHOTO_FACES
    with pytest.raises(env.errors.ModelNotFoundError, match="detection_Resnet50_Final.pth"):
        detect(env, facedetection="retinaface_resnet50")
    auto = all_in_one(env, env.photo, facedetection="auto")["result"][0]
    assert torch.equal(auto, all_in_one(env, env.photo, facedetection=DETECTOR)["result"][0])


def test_the_detector_lives_as_long_as_what_uses_it(env, state):
    """No module-level strong cache: once ComfyUI has unloaded the detector and dropped the cached outputs that
    hold it ("Free model and node cache"), its memory is freed; while something holds it, it is loaded once."""
    import gc

    faces = detect(env)["result"][0]
    again = detect(env)["result"][0]
    assert again.keep is faces.keep                          # one detector, shared while alive
    all_in_one(env, env.photo)
    assert env.model.detector is faces.keep                  # the model handle holds the one it used
    ref = __import__("weakref").ref(faces.keep.net)
    del faces, again
    env.model.detector = None
    stubs.STATE.loads.clear()
    env.host.model_management.unload_all_models()             # ComfyUI's "Unload models" (and the cache dropped)
    gc.collect()
    assert ref() is None and len(env.ops._DETECTORS) == 0


def test_keep_gray_widget(env, state):
    gray = env.photo.mean(dim=-1, keepdim=True).expand(-1, -1, -1, 3).contiguous()
    out = all_in_one(env, gray)["result"][0]
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])
    colored = all_in_one(env, gray, keep_gray=False)["result"][0]
    assert not torch.equal(colored[..., 0], colored[..., 2])
    faces, crops = detect(env, image=gray)["result"][:2]
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, None, faces)["result"][0]
    assert torch.equal(restored[..., 0], restored[..., 2])
    for node in ("VSPBFRRestoreFaces", "VSPBFRFaceRestore"):
        spec = env.pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["optional"]["keep_gray"]
        assert spec[0] == "BOOLEAN" and spec[1]["default"] is True      # optional: saved workflows load as before


def test_networks_are_loaded_through_the_memory_manager_and_can_be_unloaded(env, state):
    all_in_one(env, env.photo, seed=1)
    patchers = [p for call, _ in state.loads for p in call]
    assert env.model.patcher in patchers and any(isinstance(p.model, torch.nn.Module) and p is not env.model.patcher
                                                 for p in patchers)   # and the detector's
    assert all(memory > 0 for _, memory in state.loads)
    sys.modules["comfy.model_management"].unload_all_models()          # the UI's "Unload models"
    state.loads.clear()
    out = all_in_one(env, env.photo, seed=1)["result"][0]
    assert state.loads and out.shape == env.photo.shape


# -- LATENT + VAE, paste options, previews ---------------------------------------------------------------------------

class FakeVAE:
    downscale_ratio = 8

    def decode(self, samples):
        rgb = torch.sigmoid(samples[:, :3])
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest").permute(0, 2, 3, 1)

    def encode(self, images):
        assert images.shape[1] % 8 == 0 and images.shape[2] % 8 == 0 and images.shape[3] == 3
        x = images.permute(0, 3, 1, 2)
        return torch.nn.functional.avg_pool2d(torch.cat([x, x[:, :1]], 1), 8)


def test_latent_in_latent_out(env):
    vae, latent = FakeVAE(), {"samples": torch.zeros(2, 4, 8, 12)}
    result = env.nodes["VSPBFRDetectFaces"].detect(DETECTOR, 0.97, 0, 0, "all", "left-right", 16, latent=latent,
                                                   vae=vae)["result"]
    assert result[3] == 0 and result[4].shape == (2, 64, 96, 3)
    out, mask, count, lat, _ = env.nodes["VSPBFRFaceRestore"].restore(
        env.model, DETECTOR, 1.0, 1.0, False, "all", 1.0, 0, latent=latent, vae=vae)["result"]
    assert out.shape == (2, 64, 96, 3) and lat["samples"].shape == (2, 4, 8, 12)
    paste = env.nodes["VSPBFRPasteFaces"].paste
    faces, crops = detect(env)["result"][:2]
    _, _, lat = paste(env.photo, faces, crops, 1.0, 50.0, "landmarks", "none", 1.0, vae=vae)
    assert lat["samples"].shape == (1, 4, 310 // 8, 491 // 8)     # cropped to a multiple of 8, as VAEEncode does
    with pytest.raises(env.errors.InputError, match="VAE"):
        env.ops.input_images(None, latent, None)
    linked = {"9": {"inputs": {"samples": ["5", 3]}}}
    with pytest.raises(env.errors.InputError, match="LATENT output"):
        env.ops.latent_output(None, out, linked, "5", 3)
    assert env.ops.latent_output(None, out, linked, "5", 0) is None
    video = type("VideoVAE", (FakeVAE,), {"decode": lambda self, s: FakeVAE.decode(self, s)[None]})()
    assert env.ops.input_images(None, latent, video).shape == (2, 64, 96, 3)


def test_paste_options_and_errors(env):
    faces, crops, _, _, image = detect(env)["result"]
    paste = env.nodes["VSPBFRPasteFaces"].paste
    out, mask, lat = paste(image, faces, crops, 0.0, 50.0, "ellipse", "wavelet", 2.0)
    assert out.shape == (1, 620, 982, 3) and mask.shape == (1, 620, 982) and lat is None
    same, _, _ = paste(image, faces, crops, 1.0, 50.0, "landmarks", "meanstd", 1.0)
    assert torch.allclose(same, image, atol=1e-5)               # unchanged crops paste back as they were
    with pytest.raises(env.errors.InputError, match="3 restored crop"):
        paste(image, faces, crops[:3], 1.0, 50.0, "landmarks", "none", 1.0)


def test_comparison_previews_are_written_for_the_web_extension(env):
    faces, crops = detect(env)["result"][:2]
    result = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, None, faces)
    refs = result["ui"]["vspbfr_compare"][0]
    before = Image.open(env.temp / refs["before"]["filename"])
    after = Image.open(env.temp / refs["after"]["filename"])
    assert before.size == after.size == (16 * PHOTO_FACES, 16)
    ui = all_in_one(env, env.photo)["ui"]["vspbfr_compare"][0]
    assert Image.open(env.temp / ui["after"]["filename"]).size == (491, 310)


# -- packaging -------------------------------------------------------------------------------------------------------

def load_install():
    spec = importlib.util.spec_from_file_location("vspbfr_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_py_is_quiet_when_nothing_is_missing_and_never_touches_torch(tmp_path):
    install = load_install()
    names = [n.lower() for n, _ in install.read_requirements()]
    assert names and not {"torch", "torchvision", "torchaudio"} & set(names)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# comment\ntorch>=99\nnumpy>=1.0\nsafetensors >= 0.4\nno-such-package-vspbfr>=1\n"
                    "pillow>=999 ; python_version >= '3'\n")
    assert install.missing(install.read_requirements(str(reqs))) == ["no-such-package-vspbfr>=1", "pillow>=999"]
    run = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == ""


def test_example_workflows_use_existing_inputs(env):
    classes = env.pack.NODE_CLASS_MAPPINGS
    for api_file in sorted((ROOT / "example_workflows" / "api").glob("*.json")):
        prompt = json.loads(api_file.read_text())
        for node in prompt.values():
            cls = classes.get(node["class_type"])
            if cls is None:
                continue
            spec = cls.INPUT_TYPES()
            known = set(spec["required"]) | set(spec.get("optional", {}))
            assert set(node["inputs"]) <= known and set(spec["required"]) <= set(node["inputs"]), api_file.name
        ui = json.loads((api_file.parent.parent / api_file.name).read_text())
        graph_nodes = [n for n in ui["nodes"] if n["type"] != "Note"]             # the Note is front-end only
        assert sorted(n["type"] for n in graph_nodes) == sorted(n["class_type"] for n in prompt.values())
        links = sum(isinstance(v, list) for n in prompt.values() for v in n["inputs"].values())
        assert len(ui["links"]) == links
        # what a new user gets: a detector that works with either RetinaFace file, an image every ComfyUI has,
        # nodes wide enough for their labels, and a note saying what to change
        assert all(n["inputs"].get("facedetection", "auto") == "auto" for n in prompt.values())
        assert [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"] == ["example.png"]
        assert all(n["size"][0] >= 360 for n in graph_nodes if n["type"].startswith("VSPBFR"))
        notes = [n for n in ui["nodes"] if n["type"] == "Note"]
        assert len(notes) == 1 and "auto" in notes[0]["widgets_values"][0]


def test_registry_metadata_and_web_directory(env):
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "web" not in comfy     # WEB_DIRECTORY registers web/
    assert {m["location"] for m in comfy["Models"]} >= {"/vspbfr/restoration_net.pt", "/vspbfr/code_diffuser.pt",
                                                        "/vspbfr/style_encoder_decoder.pt"}
    js = (ROOT / env.pack.WEB_DIRECTORY / "js" / "vspbfr.js").read_text()
    for key in ("vspbfr_compare", "vspbfr_faces", "VSPBFRRestoreFaces", "VSPBFRFaceRestore"):   # what ops.py sends
        assert key in js

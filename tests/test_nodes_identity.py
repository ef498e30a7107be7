"""The identity features of the ComfyUI node pack, without ComfyUI (stand-in ``comfy`` / ``folder_paths`` modules of
tests/comfyui/comfyui_stubs.py), with the tiny VSPBFR networks, a tiny ArcFace in ``models/facexlib`` and the real
RetinaFace mobilenet0.25 on real photos.

Covers: defaults unchanged (same pixels as the core's plain restoration, no identity network loaded), best-of-N
(deterministic, reported, same seeds in the split chain and the all-in-one node), the Identity Score node (pairs,
a batch of one against many, mismatches, whole images), the ArcFace file's folders and missing-file message, the
embedder cache, bad requests, only_matching with a dlib reference, and the new widgets / output being optional /
last so saved workflows keep working.
"""
from __future__ import annotations

import dataclasses
import gc
import re
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from identity_models import write_tiny_arcface
import tiny_models
from tiny_models import write_tiny_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
import comfyui_stubs as stubs  # noqa: E402

DETECTOR = "retinaface_mobile0.25"
ARCFACE = "recognition_arcface_ir_se50.pth"
PHOTO_FACES = 4
WHOLE = "whole images (largest face)"
CROPS = "aligned crops"


def write_tiny_checkpoints_32(folder: Path) -> None:
    """The tiny networks at 32 px (dlib embeds crops of 32 px and more; the standard tiny ones are 16 px)."""
    saved = tiny_models.TINY_ENCODER, tiny_models.TINY_STYLEGAN, tiny_models.TINY_RESTORATION
    try:
        tiny_models.TINY_ENCODER = dataclasses.replace(saved[0], num_ws=8, coarse_ws=3, middle_ws=5)
        tiny_models.TINY_STYLEGAN = dataclasses.replace(saved[1], resolution=32)
        tiny_models.TINY_RESTORATION = dataclasses.replace(saved[2], resolution=32)
        write_tiny_checkpoints(folder)
    finally:
        tiny_models.TINY_ENCODER, tiny_models.TINY_STYLEGAN, tiny_models.TINY_RESTORATION = saved


def load_rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # the tiny networks run fastest on one thread
    models, temp = stubs.models_folder(tmp_path_factory.mktemp("nodes_identity"),
                                       shared_path("weights", "detection_mobilenet0.25_Final.pth"))
    (models / "facexlib").mkdir()
    write_tiny_arcface(models / "facexlib" / ARCFACE)                 # where other face packs keep facexlib's files
    pack = stubs.load_pack(models, temp)
    yield stubs.pack_env(pack, "fp32", models=models, photo=load_rgb(shared_path("faces", "whole", "cf_00.jpg")),
                         identity_ops=sys.modules[stubs.PACK + ".nodes.identity_ops"],
                         core=sys.modules[stubs.PACK + ".vspbfr_core.pipeline"])
    stubs.unload_pack()
    torch.set_num_threads(saved_threads)


@pytest.fixture
def state():
    yield stubs.reset_state()
    stubs.STATE.interrupt_after = None


def all_in_one(env, image=None, seed=3, model=None, **kw):
    args = dict(facedetection=DETECTOR, fidelity=1.0, visibility=1.0, only_center_face=False, selection="all",
                upscale=1.0, seed=seed)
    args.update(kw)
    return env.nodes["VSPBFRFaceRestore"].restore(model or env.model, image=env.photo if image is None else image,
                                                  **args)["result"]


def detect(env, image=None, size=16, selection="all"):
    return env.nodes["VSPBFRDetectFaces"].detect(DETECTOR, 0.97, 0, 0, selection, "left-right", size,
                                                 image=env.photo if image is None else image)["result"]


def score(env, a, b, inputs=CROPS, identity="arcface"):
    return env.nodes["VSPBFRIdentityScore"].score(a, b, inputs, identity, DETECTOR)


# -- sockets: optional, appended, last ----------------------------------------------------------------------------

def test_new_widgets_are_optional_and_after_the_saved_ones_and_the_new_output_is_last(env):
    classes = env.pack.NODE_CLASS_MAPPINGS
    spec = classes["VSPBFRFaceRestore"].INPUT_TYPES()
    assert list(spec["required"]) == ["model", "facedetection", "fidelity", "visibility", "only_center_face",
                                      "selection", "upscale", "seed"]
    assert list(spec["optional"]) == ["image", "latent", "vae", "keep_gray", "candidates", "identity",
                                      "only_matching", "use_default_threshold", "match_threshold", "reference_mix",
                                      "reference", "temporal", "smooth_alignment", "smooth_wplus", "mask_shape",
                                      "mask", "mask_parts", "parser"]
    opt = spec["optional"]
    assert opt["candidates"] == ("INT", opt["candidates"][1]) and (opt["candidates"][1]["default"],
                                                                   opt["candidates"][1]["min"],
                                                                   opt["candidates"][1]["max"]) == (1, 1, 64)
    assert opt["identity"][0] == ["arcface", "dlib"] and opt["identity"][1]["default"] == "arcface"
    assert opt["only_matching"][0] == "BOOLEAN" and opt["only_matching"][1]["default"] is False
    assert opt["use_default_threshold"][0] == "BOOLEAN" and opt["use_default_threshold"][1]["default"] is True
    assert (opt["match_threshold"][0], opt["match_threshold"][1]["min"], opt["match_threshold"][1]["max"]) == \
        ("FLOAT", -1.0, 1.0)
    assert "use_default_threshold" in opt["match_threshold"][1]["tooltip"]
    assert opt["reference_mix"][0] == "FLOAT" and opt["reference_mix"][1]["default"] == 0.0
    assert opt["reference"][0] == "IMAGE"
    node = classes["VSPBFRFaceRestore"]
    assert node.RETURN_TYPES == ("IMAGE", "MASK", "INT", "LATENT", "STRING")
    assert node.RETURN_NAMES == ("image", "mask", "count", "latent", "identity")
    restore = classes["VSPBFRRestoreFaces"].INPUT_TYPES()
    assert list(restore["optional"]) == ["style", "faces", "keep_gray", "candidates", "identity", "reference_mix",
                                        "reference"]
    assert classes["VSPBFRRestoreFaces"].RETURN_TYPES == ("IMAGE",)
    score_node = classes["VSPBFRIdentityScore"]
    assert env.pack.NODE_DISPLAY_NAME_MAPPINGS["VSPBFRIdentityScore"] == "VSPBFR Identity Score"
    assert score_node.RETURN_TYPES == ("FLOAT", "STRING") and score_node.OUTPUT_IS_LIST == (True, False)
    assert list(score_node.INPUT_TYPES()["required"]) == ["image_a", "image_b", "inputs", "identity",
                                                          "facedetection"]


# -- defaults: today's pixels, no identity network ----------------------------------------------------------------

def test_defaults_give_the_plain_restoration_byte_for_byte_and_load_no_identity_network(env, state, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an identity network was loaded with the default settings")
    monkeypatch.setattr(env.ops, "get_embedder", refuse)
    out, mask, count, latent, report = all_in_one(env)
    explicit = all_in_one(env, keep_gray=True, candidates=1, identity="dlib", only_matching=False,
                          use_default_threshold=False, match_threshold=0.9, reference_mix=0.0, reference=None)
    assert count == PHOTO_FACES and latent is None and report == env.identity_ops.IDENTITY_OFF
    assert torch.equal(out, explicit[0]) and torch.equal(mask, explicit[1]) and explicit[2] == count
    # the plain restoration through the core alone (what the node did before identity existed)
    faces = env.ops.find_faces(env.photo, DETECTOR, size=16)
    pipeline = env.model.pipeline
    options = env.core.RestoreOptions(seed=3)
    crops = faces.aligned.crops
    restored = torch.cat([pipeline.restore_faces(crops[i:i + 1], options=options, face_keys=[k])[0]
                          for i, k in enumerate(faces.face_keys)])
    plain, plain_mask = env.ops.paste(env.photo, faces, restored.permute(0, 2, 3, 1))
    assert torch.equal(out, plain) and torch.equal(mask, plain_mask)
    # the restore node: its defaults are the same call as before too
    _, node_crops = detect(env)[:2]
    node = env.nodes["VSPBFRRestoreFaces"].restore(env.model, node_crops, 3, 1.0, 1.0, None, faces)["result"][0]
    assert torch.equal(node, restored.permute(0, 2, 3, 1))


# -- best-of-N ----------------------------------------------------------------------------------------------------

def test_candidates_are_deterministic_reported_and_seeded_as_in_the_split_chain(env, state):
    out, mask, count, _, report = all_in_one(env, candidates=3)
    again = all_in_one(env, candidates=3)
    assert torch.equal(out, again[0]) and report == again[4] and count == PHOTO_FACES
    chosen = re.findall(r"^face (\d), identity to input (-?[\d.]+), candidate (\d) of 3$", report, re.M)
    assert [int(face) for face, _, _ in chosen] == list(range(PHOTO_FACES)), report
    assert report.startswith("identity: arcface, best of 3 candidates by identity to the input face")
    assert "image 1 of 1: 4 face(s)" in report
    # each face's score is that of its kept candidate and is the best of the three (ties keep the first)
    plain = all_in_one(env)[0]
    assert not torch.equal(out, plain) or all(c == "1" for _, _, c in chosen)
    # split chain: detect -> restore (candidates 3, faces connected) -> paste gives the same pixels
    faces, crops, _, _, source = detect(env)
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, None, faces, True, 3,
                                                       "arcface")["result"][0]
    split, _, _ = env.nodes["VSPBFRPasteFaces"].paste(source, faces, restored, 1.0, 50.0, "landmarks", "none", 1.0)
    assert torch.equal(split, out)
    # the scores in the report are the Identity Score node's scores of input crop vs kept crop
    scores, _ = score(env, crops, restored)
    assert [f"{s:.3f}" for s in scores] == [value for _, value, _ in chosen]


def test_progress_and_cancel_with_candidates(env, state):
    faces, crops = detect(env)[:2]
    env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, None, faces, True, 2, "arcface")
    units = 1 + 3 * 2 + (2 + 1)                 # encode, 3 per candidate, embed the input and each candidate
    assert state.progress[-1] == (units * PHOTO_FACES, units * PHOTO_FACES)
    state.progress.clear()
    state.interrupt_after = 3
    with pytest.raises(stubs.InterruptProcessingException):
        env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, None, faces, True, 2, "arcface")
    assert len(state.progress) <= units                    # stopped within the first face


# -- Identity Score node ------------------------------------------------------------------------------------------

def test_identity_score_on_crops_pairs_broadcasts_and_refuses_mismatches(env):
    crops = detect(env)[1]
    scores, report = score(env, crops, crops)
    assert isinstance(scores, list) and len(scores) == PHOTO_FACES and all(type(s) is float for s in scores)
    assert all(abs(s - 1.0) < 1e-5 for s in scores)                 # each crop with itself
    one_to_many, text = score(env, crops[1:2], crops)
    assert len(one_to_many) == PHOTO_FACES and abs(one_to_many[1] - 1.0) < 1e-5
    assert max(one_to_many[0], one_to_many[2], one_to_many[3]) < 0.999
    many_to_one, _ = score(env, crops, crops[1:2])
    assert many_to_one == pytest.approx(one_to_many, abs=1e-6)
    assert text.splitlines()[0].startswith("identity (arcface, cosine similarity")
    assert text.splitlines()[1:] == [f"a 0 - b {j}: {s:.3f}" + ("  match" if s >= 0.3 else "")
                                     for j, s in enumerate(one_to_many)]
    with pytest.raises(env.errors.InputError, match="image_a holds 2 image.* image_b 3"):
        score(env, crops[:2], crops[:3])
    with pytest.raises(env.errors.InputError, match="square"):
        score(env, env.photo, env.photo)
    blank = detect(env, image=torch.full((1, 64, 64, 3), 0.5))[1]   # the detect node's "no face" placeholder
    with pytest.raises(env.errors.InputError, match="no face"):
        score(env, blank, crops)


def test_identity_score_on_whole_images_uses_the_largest_face(env):
    scores, _ = score(env, env.photo, env.photo, WHOLE)
    assert scores == [pytest.approx(1.0, abs=1e-5)]
    batch = torch.cat([env.photo, torch.flip(env.photo, dims=[2])])
    two, report = score(env, batch, env.photo, WHOLE)
    assert len(two) == 2 and two[0] == pytest.approx(1.0, abs=1e-5) and two[1] < 0.999 and len(report.splitlines()) == 3
    # = the largest face of each image, aligned at 512, scored as aligned crops
    largest = [env.ops.find_faces(x[None], DETECTOR, selection="largest", size=512).aligned.crops for x in batch]
    crops = torch.cat(largest).permute(0, 2, 3, 1)
    assert score(env, crops, crops[:1])[0] == pytest.approx(two, abs=1e-6)
    with pytest.raises(env.errors.InputError, match=r"image_b: no face found in image 2 of 2"):
        score(env, env.photo, torch.cat([env.photo, torch.full_like(env.photo, 0.5)]), WHOLE)


# -- the ArcFace file ---------------------------------------------------------------------------------------------

def test_identity_folders_facexlib_first_registered_append_safely(env):
    table = env.host.folder_paths.folder_names_and_paths
    ours = str(env.models / "facexlib")
    assert table["facexlib"][0] == [ours]
    saved = dict(table)
    try:
        table.clear()
        table.update({"facexlib": (["/pulid/facexlib"], {".pth"}), "vspbfr": (["/yaml/vspbfr"], set())})
        env.host.register_model_folders()
        env.host.register_model_folders()
        assert table["facexlib"][0] == ["/pulid/facexlib", ours] and table["facexlib"][1] >= {".pth", ".safetensors"}
        assert env.host.identity_dirs() == ["/pulid/facexlib", ours, "/yaml/vspbfr", str(env.models / "vspbfr")]
    finally:
        table.clear()
        table.update(saved)


def test_a_missing_arcface_file_names_the_file_the_folders_and_the_command(env, state):
    path = env.models / "facexlib" / ARCFACE
    hidden = path.with_suffix(".hidden")
    path.rename(hidden)
    try:
        with pytest.raises(env.errors.ModelNotFoundError) as info:
            all_in_one(env, candidates=2)
        assert not state.loads                                      # refused before any detection work
        with pytest.raises(env.errors.ModelNotFoundError):
            score(env, env.photo, env.photo, WHOLE)
        faces, crops = detect(env)[:2]
        with pytest.raises(env.errors.ModelNotFoundError):
            env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, None, faces, True, 2, "arcface")
    finally:
        hidden.rename(path)
    message = str(info.value)
    assert ARCFACE in message and str(env.models / "facexlib") in message and str(env.models / "vspbfr") in message
    assert f'-m vspbfr_core download --models "{env.models / "facexlib"}" --only identity' in message
    # and it is there again: the same settings now run (the file is looked up on every run)
    assert all_in_one(env, candidates=2)[2] == PHOTO_FACES


def test_the_embedder_is_loaded_once_through_the_memory_manager_and_freed_with_what_holds_it(env, state):
    all_in_one(env, candidates=2)
    loaded = env.model.embedder
    assert loaded is env.ops.get_embedder("arcface") and loaded.name == "arcface"
    assert any(loaded.patcher in call for call, _ in state.loads)
    assert loaded.embedder.device == env.model.pipeline.device
    ref = weakref.ref(loaded.embedder.net)
    del loaded
    env.model.embedder = None
    state.loads.clear()                                             # the stubs' record of load_models_gpu calls
    env.host.model_management.unload_all_models()                   # ComfyUI's "Unload models" (and the cache dropped)
    gc.collect()
    assert ref() is None and not [k for k in env.ops._EMBEDDERS.keys() if k[0] == "arcface"]


# -- bad requests -------------------------------------------------------------------------------------------------

def test_identity_requests_that_cannot_work_are_clear_errors(env, state):
    errors = env.errors
    with pytest.raises(errors.InputError, match="only_matching needs the reference input"):
        all_in_one(env, only_matching=True)
    with pytest.raises(errors.InputError, match="reference_mix > 0 needs the reference input"):
        all_in_one(env, reference_mix=0.5)
    with pytest.raises(errors.InputError, match="candidates must lie in"):
        all_in_one(env, candidates=65)
    with pytest.raises(errors.InputError, match="identity"):
        all_in_one(env, identity="facenet", candidates=2)
    assert not state.loads                                          # all refused before any model was used
    with pytest.raises(errors.InputError, match=r"reference: no face found in photo 2 of 2"):
        all_in_one(env, candidates=2, reference=torch.cat([env.photo, torch.full_like(env.photo, 0.5)]))
    faces, crops = detect(env)[:2]
    (style,) = env.nodes["VSPBFRStylePrompt"].prompt(env.model, crops, 0, faces)
    with pytest.raises(errors.InputError, match="style prompt cannot be combined"):
        env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 0, 1.0, 1.0, style, faces, True, 2, "arcface")


def test_a_reference_scores_every_face_and_no_face_images_pass_through(env):
    reference = env.photo[:, :, :150]                  # the left part of the photo: one of its faces
    out, _, count, _, report = all_in_one(env, reference=reference, reference_mix=0.5)
    assert count == PHOTO_FACES and report.count("to reference") == PHOTO_FACES
    assert "best of" not in report                    # one candidate: the plain noise, scored
    blank = torch.full((1, 64, 64, 3), 0.5)
    out, _, count, _, report = all_in_one(env, image=blank, candidates=2)
    assert count == 0 and torch.equal(out, blank) and "image 1 of 1: no face" in report


def test_the_restore_node_takes_a_reference_as_the_target_and_for_the_mix(env, state):
    faces, crops = detect(env)[:2]
    node = env.nodes["VSPBFRRestoreFaces"]
    reference = env.photo[:, :, :150]                  # the left part of the photo: one of its faces
    plain = node.restore(env.model, crops, 3, 1.0, 1.0, None, faces, True, 1, "arcface")["result"][0]
    scored = node.restore(env.model, crops, 3, 1.0, 1.0, None, faces, True, 1, "arcface", 0.0,
                          reference)["result"][0]
    assert torch.equal(scored, plain)                  # one candidate, no mix: the plain faces
    best = node.restore(env.model, crops, 3, 1.0, 1.0, None, faces, True, 3, "arcface", 0.0, reference)["result"][0]
    # the split chain with the reference keeps the same candidates as the all-in-one node with it
    out = all_in_one(env, candidates=3, reference=reference)[0]
    _, _, _, _, source = detect(env)
    split, _, _ = env.nodes["VSPBFRPasteFaces"].paste(source, faces, best, 1.0, 50.0, "landmarks", "none", 1.0)
    assert torch.equal(split, out)
    mixed = node.restore(env.model, crops, 3, 1.0, 1.0, None, faces, True, 1, "arcface", 0.5,
                         reference)["result"][0]
    assert not torch.equal(mixed, plain)
    with pytest.raises(env.errors.InputError, match="reference: no face found in photo 1 of 1"):
        node.restore(env.model, crops, 3, 1.0, 1.0, None, faces, True, 2, "arcface", 0.0, torch.full((1, 64, 64, 3), 0.5))


# -- only the matching face (dlib, a real group photo) ------------------------------------------------------------

def test_only_matching_restores_only_the_reference_persons_face(env, state):
    pytest.importorskip("dlib")
    group = load_rgb(shared_path("faces", "whole", "cf_02.png"))       # four people side by side
    write_tiny_checkpoints_32(env.models / "vspbfr" / "tiny32")
    (model,) = env.nodes["VSPBFRModelLoader"].load("tiny32/style_encoder_decoder.pt", "tiny32/code_diffuser.pt",
                                                   "tiny32/restoration_net.pt", "fp32")
    reference = group[:, :300, 100:340]              # a crop of the photo around the leftmost face only
    # dlib's default threshold (0.94): the reference (aligned at 512) against the faces the tiny networks see (32 px)
    out, mask, count, _, report = all_in_one(env, image=group, model=model, identity="dlib", reference=reference,
                                             only_matching=True)
    assert count == 1, report
    assert report.count("not restored (no match)") == 3 and re.search(r"^face 0, identity to input", report, re.M)
    assert "only the faces matching the reference (identity to it at least 0.94 (dlib's default))" in report
    faces = env.ops.find_faces(group, DETECTOR, size=32)
    boxes = faces.detections.boxes.round().int().tolist()
    changed = (out != group).any(dim=-1)[0]
    x1, y1, x2, y2 = boxes[0]
    assert changed[y1:y2, x1:x2].any()                                # the reference person was restored
    for x1, y1, x2, y2 in boxes[1:]:                                  # the others keep their pixels exactly
        assert not changed[y1:y2, x1:x2].any() and not mask[0, y1:y2, x1:x2].any()
    assert torch.equal(out[0][mask[0] == 0], group[0][mask[0] == 0])
    # the face that matched is restored as a run without identity restores it (one candidate: the plain noise;
    # pasting one face instead of four rounds differently, by a few 1e-6)
    everyone = all_in_one(env, image=group, model=model)
    x1, y1, x2, y2 = boxes[0]
    assert everyone[2] == PHOTO_FACES
    assert torch.allclose(out[0, y1:y2, x1:x2], everyone[0][0, y1:y2, x1:x2], atol=1e-5)

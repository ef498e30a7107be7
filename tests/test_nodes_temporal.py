"""The nodes' temporal mode (issue 14): an IMAGE batch as video frames, face tracks as seed keys, smoothing.

Stand-in ComfyUI (tests/comfyui/comfyui_stubs.py), tiny VSPBFR networks (16 px crops) and the real RetinaFace
mobilenet0.25 on short clips cut from cf_02.png (two faces in a 300x200 window; the left one hidden in some
frames).  torch runs on one thread: on the shared 2-core machine that is much faster.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
import comfyui_stubs as stubs  # noqa: E402

DETECTOR = "retinaface_mobile0.25"
TEMPORAL = ("temporal", "smooth_alignment", "smooth_wplus")


pytestmark = pytest.mark.usefixtures("one_torch_thread")        # see conftest


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models, temp = stubs.models_folder(tmp_path_factory.mktemp("nodes_temporal"),
                                       shared_path("weights", "detection_mobilenet0.25_Final.pth"))
    pack = stubs.load_pack(models, temp)
    with Image.open(shared_path("faces", "whole", "cf_02.png")) as im:
        im = im.convert("RGB").resize((602, 322), Image.BICUBIC)
        scene = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
    yield stubs.pack_env(pack, scene=scene)
    stubs.unload_pack()


@pytest.fixture
def state():
    yield stubs.reset_state()
    stubs.STATE.interrupt_after = None


def frame(env, dx: int = 0, hide_left: bool = False) -> torch.Tensor:
    f = env.scene[:, 0:200, 30 + dx:330 + dx].clone()         # two faces, boxes x 44-112 and 173-236
    if hide_left:
        f[:, :, :125] = 0.5
    return f


def entering(env) -> torch.Tensor:
    """Six frames panning right; the left face is hidden in the first three (it enters in frame 3)."""
    return torch.cat([frame(env, 4 * i, hide_left=i < 3) for i in range(6)])


def detect(env, image, temporal=None, **kw):
    args = dict(facedetection=DETECTOR, threshold=0.97, min_size=0, max_faces=0, selection="all", order="left-right",
                face_size=16, image=image)
    args.update(kw)
    if temporal is not None:
        args["temporal"] = temporal
    return env.nodes["VSPBFRDetectFaces"].detect(**args)


def split_graph(env, clip, seed=3, fidelity=1.0, style_node=False, **detect_kw):
    faces, crops, _, count, source = detect(env, clip, **detect_kw)["result"]
    style = env.nodes["VSPBFRStylePrompt"].prompt(env.model, crops, seed, faces)[0] if style_node else None
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, seed, fidelity, 1.0, style,
                                                       faces)["result"][0]
    out, mask, _ = env.nodes["VSPBFRPasteFaces"].paste(source, faces, restored, 1.0, 50.0, "landmarks", "none", 1.0)
    return out, mask, count, faces


def all_in_one(env, clip, seed=3, **kw):
    args = dict(facedetection=DETECTOR, fidelity=1.0, visibility=1.0, only_center_face=False, selection="all",
                upscale=1.0, seed=seed)
    args.update(kw)
    return env.nodes["VSPBFRFaceRestore"].restore(env.model, image=clip, **args)["result"]


class KeySpy:
    """Records the face keys of every restore_faces call of the pack's pipeline."""

    def __init__(self, env, monkeypatch):
        self.keys: list[list[int]] = []
        pipe = env.model.pipeline
        original = pipe.restore_faces

        def spy(crops, style=None, **kwargs):
            self.keys.append(list(kwargs["face_keys"]))
            return original(crops, style, **kwargs)
        monkeypatch.setattr(pipe, "restore_faces", spy)


# -- sockets ---------------------------------------------------------------------------------------------------------

def test_temporal_widgets_are_optional_last_with_documented_defaults(env):
    for node in ("VSPBFRDetectFaces", "VSPBFRFaceRestore"):
        spec = env.pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
        names = list(spec["optional"])
        at = names.index("temporal")
        assert names[at:at + 3] == list(TEMPORAL)
        assert names[at + 3:] == ([] if node == "VSPBFRDetectFaces" else ["mask_shape", "mask", "mask_parts", "parser"])
        assert not set(TEMPORAL) & set(spec["required"])
        opt = spec["optional"]
        assert opt["temporal"][0] == "BOOLEAN" and opt["temporal"][1]["default"] is False
        assert "VHS Load Video" in opt["temporal"][1]["tooltip"] and "frames" in opt["temporal"][1]["tooltip"]
        for name in TEMPORAL[1:]:
            kind, o = opt[name]
            assert (kind, o["default"], o["min"], o["max"], o["step"]) == ("FLOAT", 2.0, 0.0, 10.0, 0.1)
            assert "sigma in frames" in o["tooltip"] and "no lag" in o["tooltip"] and "0: off" in o["tooltip"]


# -- temporal off: today's results -----------------------------------------------------------------------------------

def test_temporal_off_gives_the_per_image_results_byte_for_byte(env):
    clip = entering(env)[:4]
    plain = detect(env, clip)["result"]
    off = detect(env, clip, temporal=False, smooth_alignment=7.0, smooth_wplus=7.0)["result"]
    assert off[0].track_ids is None and off[0].face_keys == plain[0].face_keys
    assert off[0].face_keys == off[0].detections.order_index.tolist()          # per-image index, as before
    assert torch.equal(off[1], plain[1]) and off[3] == plain[3]
    assert torch.equal(off[0].detections.landmarks, plain[0].detections.landmarks)
    base = all_in_one(env, clip)
    for a, b in zip(all_in_one(env, clip, temporal=False, smooth_alignment=7.0, smooth_wplus=0.0)[:3], base[:3]):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


# -- temporal on -----------------------------------------------------------------------------------------------------

def test_split_graph_carries_track_ids_as_seed_keys(env, state):
    result = detect(env, entering(env), temporal=True)
    faces, crops, _, count, _ = result["result"]
    assert faces.track_ids == [0, 0, 0, 0, 1, 0, 1, 0, 1] and count == 9 == crops.shape[0]
    assert faces.face_keys == faces.track_ids and faces.smooth_wplus == 2.0
    assert faces.detections.order_index.tolist() == [0, 0, 0, 0, 1, 0, 1, 0, 1]
    x = faces.detections.centers[:, 0].tolist()
    assert x[3] > x[4]                                          # track 0 is the right face, the newcomer is left
    (style,) = env.nodes["VSPBFRStylePrompt"].prompt(env.model, crops, 3, faces)
    assert style.face_keys == faces.track_ids and style.smoothed
    preview = result["ui"]["vspbfr_faces"][0]
    assert [f["index"] for f in preview["faces"]] == [0]


def test_the_same_person_keeps_its_noise_key_when_another_enters_or_leaves(env, monkeypatch):
    clip = torch.cat([frame(env, hide_left=True), frame(env), frame(env), frame(env, hide_left=True)])

    def right_face_keys(faces):
        return [k for k, x in zip(faces.face_keys, faces.detections.centers[:, 0].tolist()) if x > 125]
    tracked = detect(env, clip, temporal=True)["result"][0]
    per_image = detect(env, clip)["result"][0]
    assert right_face_keys(tracked) == [0, 0, 0, 0]            # track 0 in every frame
    assert right_face_keys(per_image) == [0, 1, 1, 0]          # per image its index changes when the left one enters
    spy = KeySpy(env, monkeypatch)
    all_in_one(env, clip, temporal=True, smooth_wplus=0.0)     # the all-in-one node seeds by the same track ids
    assert [k for ks in spy.keys for k in ks] == tracked.face_keys == [0, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("fidelity", [1.0, 0.6])
def test_split_graph_equals_the_all_in_one_node(env, fidelity):
    clip = entering(env)
    expected, mask, count, _ = split_graph(env, clip, fidelity=fidelity, temporal=True)
    out, out_mask, out_count = all_in_one(env, clip, fidelity=fidelity, temporal=True)[:3]
    assert torch.equal(out, expected) and torch.equal(out_mask, mask) and out_count == count == 9
    # smoothing changes the result (else this test could not tell the paths apart)
    rough = all_in_one(env, clip, fidelity=fidelity, temporal=True, smooth_wplus=0.0, smooth_alignment=0.0)[0]
    assert not torch.equal(rough, out)
    if fidelity == 1.0:        # the style node smooths too (once: the restore node does not smooth it again)
        with_style = split_graph(env, clip, fidelity=fidelity, style_node=True, temporal=True)[0]
        assert torch.equal(with_style, expected)
        # a style prompt computed unsmoothed (faces with smooth_wplus 0) is smoothed by the restore node
        faces, crops, _, _, source = detect(env, clip, temporal=True)["result"]
        rough_faces = detect(env, clip, temporal=True, smooth_wplus=0.0)["result"][0]
        (style,) = env.nodes["VSPBFRStylePrompt"].prompt(env.model, crops, 3, rough_faces)
        assert not style.smoothed
        restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, style, faces)["result"][0]
        out = env.nodes["VSPBFRPasteFaces"].paste(source, faces, restored, 1.0, 50.0, "landmarks", "none", 1.0)[0]
        assert torch.equal(out, expected)


def test_all_in_one_equals_restore_sequence(env, monkeypatch):
    from importlib import import_module

    core = stubs.PACK + ".vspbfr_core"
    pipeline_mod, temporal = import_module(core + ".pipeline"), import_module(core + ".temporal")
    clip = entering(env)
    loaded = env.ops.get_detector(DETECTOR)
    pipe = pipeline_mod.VSPBFRPipeline(env.model.pipeline.model, loaded.net, chunk_size=1)
    expected = torch.cat(list(temporal.restore_sequence(pipe, clip, pipeline_mod.RestoreOptions(seed=3, prompt_mix=0.6),
                                                        smooth_alignment=2.0, smooth_wplus=2.0)))
    out = all_in_one(env, clip, fidelity=0.6, temporal=True)[0]
    # the paste-back groups the warps of a batch's faces by size, so pasting 16 frames at once rounds differently
    # from restore_sequence's frame by frame (measured 1.7e-6, far below an 8-bit step) ...
    assert (out - expected).abs().max() <= 1e-5
    monkeypatch.setattr(env.ops, "TEMPORAL_WINDOW", 1)
    # ... and pasting frame by frame too, everything else (tracks, smoothing, noise, restoration) is the same
    assert torch.equal(all_in_one(env, clip, fidelity=0.6, temporal=True)[0], expected)


def test_selection_and_max_faces_refer_to_tracks(env, monkeypatch):
    clip = entering(env)
    spy = KeySpy(env, monkeypatch)
    out = all_in_one(env, clip, temporal=True, selection="1")[0]
    assert spy.keys == [[1]] * 3                                # only the newcomer, in frames 3-5
    assert torch.equal(out[:3], clip[:3]) and torch.equal(out[3:, :, 150:], clip[3:, :, 150:])
    faces = detect(env, clip, temporal=True, max_faces=1)["result"][0]
    assert faces.track_ids == [0] * 6                           # the first person to appear
    faces = detect(env, clip, temporal=True, selection="0,1", max_faces=1)["result"][0]
    assert faces.track_ids == [0] * 6


def test_zero_faces_pass_through_unchanged(env):
    clip = torch.full((3, 64, 64, 3), 0.5)
    out, mask, count = all_in_one(env, clip, temporal=True)[:3]
    assert torch.equal(out, clip) and count == 0 and not mask.any()
    out, mask, count, faces = split_graph(env, clip, temporal=True)
    assert torch.equal(out, clip) and count == 0 and faces.track_ids == []


def test_deterministic_per_seed(env):
    clip = entering(env)[2:5]
    a = all_in_one(env, clip, seed=5, temporal=True)[0]
    assert torch.equal(a, all_in_one(env, clip, seed=5, temporal=True)[0])
    assert not torch.equal(a, all_in_one(env, clip, seed=6, temporal=True)[0])


def test_bounded_memory_all_in_one_aligns_one_window_at_a_time(env, monkeypatch):
    clip = torch.cat([frame(env, 2 * i) for i in range(8)])    # 8 frames x 2 faces
    monkeypatch.setattr(env.ops, "TEMPORAL_WINDOW", 2)
    sizes, batches = [], []
    original_align, original_restore = env.ops._align_crops, env.model.pipeline.restore_faces

    def align(rgb, dets, size):
        sizes.append(len(dets))
        return original_align(rgb, dets, size)

    def restore(crops, style=None, **kwargs):
        batches.append(crops.shape[0])
        return original_restore(crops, style, **kwargs)
    monkeypatch.setattr(env.ops, "_align_crops", align)
    monkeypatch.setattr(env.model.pipeline, "restore_faces", restore)
    out, _, count = all_in_one(env, clip, temporal=True)[:3]
    assert count == 16 and max(sizes) <= 4 and len(sizes) == 8   # 4 windows, aligned in pass 1 and pass 2
    assert max(batches) == 1 and len(batches) == 16
    monkeypatch.undo()
    monkeypatch.setattr(env.ops, "TEMPORAL_WINDOW", 2)
    # a clip longer than the window: the split graph (its paste node pastes window by window too) gives the same
    assert torch.equal(split_graph(env, clip, temporal=True)[0], out)
    monkeypatch.setattr(env.ops, "TEMPORAL_WINDOW", 16)
    # another window only regroups the paste-back's warps: float rounding (measured 2e-6), not 8-bit pixels
    assert (all_in_one(env, clip, temporal=True)[0] - out).abs().max() <= 1e-5


BAD = [({"temporal": "yes"}, r"temporal: expected True or False"),
       ({"smooth_alignment": -1.0}, r"smooth_alignment must lie in \[0, 10\]"),
       ({"smooth_alignment": 11.0}, r"smooth_alignment must lie in \[0, 10\]"),
       ({"smooth_wplus": math.nan}, r"smooth_wplus: expected a finite number"),
       ({"smooth_wplus": "2"}, r"smooth_wplus: expected a number")]


@pytest.mark.parametrize("node", ["detect", "all-in-one"])
@pytest.mark.parametrize("bad, message", BAD, ids=[next(iter(b)) + "-" + str(next(iter(b.values()))) for b, _ in BAD])
def test_bad_temporal_widgets_are_clear_errors_before_any_model_is_loaded(env, state, node, bad, message):
    clip = frame(env)
    with pytest.raises(env.errors.InputError, match=message):
        if node == "detect":
            detect(env, clip, **{"temporal": True, **bad})
        else:
            all_in_one(env, clip, **{"temporal": True, **bad})
    assert state.loads == []


def test_identity_on_temporal_batches_is_refused_clearly(env, state):
    clip = entering(env)[3:5]
    with pytest.raises(env.errors.InputError, match="not supported on temporal batches yet"):
        all_in_one(env, clip, temporal=True, candidates=2)
    assert state.loads == []
    faces, crops = detect(env, clip, temporal=True)["result"][:2]
    with pytest.raises(env.errors.InputError, match="not supported on temporal batches yet"):
        env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, None, faces, candidates=2)


def test_progress_steps_per_face_and_cancel_between_faces(env, state, monkeypatch):
    clip = entering(env)                                        # 6 frames, 9 faces
    spy = KeySpy(env, monkeypatch)
    all_in_one(env, clip, temporal=True)
    # detection: one step per frame; then 6 units per face: encode + diffuse (pass 1), style (the smoothed codes,
    # 2 units), feature bank and restore (pass 2), in 5 updates
    assert state.progress[:6] == [(i, 6) for i in range(1, 7)]
    assert state.progress[-1] == (6 * 9, 6 * 9) and len(state.progress) == 6 + 5 * 9
    state.progress.clear()
    spy.keys.clear()
    state.interrupt_after = 6 + 2 * 9 + 4                       # Cancel pressed during the second face of pass 2
    with pytest.raises(stubs.InterruptProcessingException):
        all_in_one(env, clip, temporal=True)
    assert len(spy.keys) == 2 and len(state.progress) == 6 + 2 * 9 + 4


def test_temporal_on_a_single_image_gives_the_per_image_result(env):
    image = frame(env)                                           # one frame: nothing to track or smooth over
    off = all_in_one(env, image)
    on = all_in_one(env, image, temporal=True)
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1]) and on[2] == off[2] == 2


def test_rgba_frames_and_upscale_split_graph_equals_all_in_one_across_windows(env, monkeypatch):
    monkeypatch.setattr(env.ops, "TEMPORAL_WINDOW", 2)
    clip = entering(env)[2:5]
    rgba = torch.cat([clip, torch.linspace(0, 1, 300).expand(3, 200, 300)[..., None]], dim=-1)
    faces, crops, _, _, source = detect(env, rgba, temporal=True)["result"]
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, None, faces)["result"][0]
    expected, mask, _ = env.nodes["VSPBFRPasteFaces"].paste(source, faces, restored, 1.0, 50.0, "landmarks", "none", 2.0)
    out, out_mask = all_in_one(env, rgba, temporal=True, upscale=2.0)[:2]
    assert out.shape == (3, 400, 600, 4) and torch.equal(out, expected) and torch.equal(out_mask, mask)

"""Table-driven bad-input suite of the ComfyUI node functions (issue 11): every case asserts one outcome class.

* ``clean error``: the exception type (the pack's own VSPBFRError subclasses) and a message regex;
* ``correct output``: the node returns the right shapes / values;
* ``pass-through``: the images come back unchanged and a warning is logged.

The node classes are called the way ComfyUI calls them (keyword widgets), against the stand-in ``comfy`` /
``folder_paths`` modules of tests/comfyui/comfyui_stubs.py, with the tiny networks.  Cases that need RetinaFace and a
real photo skip without ../shared; the others use synthetic crops and a synthetic alignment.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, shared_path

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
import comfyui_stubs as stubs  # noqa: E402

DETECTOR = "retinaface_mobile0.25"
DETECTOR_FILE = SHARED / "weights" / "detection_mobilenet0.25_Final.pth"
NAN, INF = float("nan"), float("inf")
POISON = {"style_encoder": "input_layer.0.weight", "code_diffuser": "att_mapper.0.q_matrix.weight",
          "stylegan": "input.input", "restoration_net": "conv1.modulation.weight"}
STAGE = {"style_encoder": "encode", "code_diffuser": "diffuse", "stylegan": "feature_bank",
         "restoration_net": "restore"}
FILE = {"style_encoder": "style_encoder_decoder.pt", "code_diffuser": "code_diffuser.pt",
        "stylegan": "style_encoder_decoder.pt", "restoration_net": "restoration_net.pt"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # the tiny networks run fastest on one thread
    models, temp = stubs.models_folder(tmp_path_factory.mktemp("nodes_reliability"),
                                       DETECTOR_FILE if DETECTOR_FILE.is_file() else None)
    pack = stubs.load_pack(models, temp)
    e = stubs.pack_env(pack, "fp32", models=models, memory=sys.modules[stubs.PACK + ".vspbfr_core.memory"])
    face = importlib.import_module(stubs.PACK + ".vspbfr_core.face")
    importlib.import_module(stubs.PACK + ".vspbfr_core.face.paste")
    g = torch.Generator().manual_seed(0)
    e.crops = torch.rand(2, 16, 16, 3, generator=g)                 # aligned crops IMAGE [F, S, S, 3]
    # one 64 x 64 image with one "face" (landmarks = the FFHQ template at 32 px) and its FaceSet
    e.image = torch.rand(1, 64, 64, 3, generator=g)
    landmarks = (importlib.import_module(stubs.PACK + ".vspbfr_core.face.align").face_template(32) + 16).float()[None]
    dets = face.Detections(torch.zeros(1, dtype=torch.long), torch.tensor([[16.0, 16.0, 48.0, 48.0]]), landmarks,
                           torch.ones(1), torch.zeros(1, dtype=torch.long), 1, (64, 64))
    aligned = face.align_faces(e.image.permute(0, 3, 1, 2), dets, size=16)
    e.faces = e.handles.FaceSet(dets, aligned, DETECTOR)
    e.face_crop = aligned.crops.permute(0, 2, 3, 1).contiguous()
    yield e
    stubs.unload_pack()
    torch.set_num_threads(saved_threads)


@pytest.fixture
def state():
    yield stubs.reset_state()


def photo() -> torch.Tensor:
    from PIL import Image

    with Image.open(shared_path("faces", "whole", "cf_04.jpg")) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def needs_detector() -> None:
    shared_path("weights", "detection_mobilenet0.25_Final.pth")


def with_value(x: torch.Tensor, value: float) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[5] = value
    return y


# -- how each node is called (ComfyUI passes every widget by keyword) ------------------------------------------------

def detect(e, **kw):
    args = dict(facedetection=DETECTOR, threshold=0.97, min_size=0, max_faces=0, selection="all",
                order="left-right", face_size=16, image=e.image)
    args.update(kw)
    return e.nodes["VSPBFRDetectFaces"].detect(**args)


def style(e, **kw):
    args = dict(model=e.model, crops=e.crops, seed=0)
    args.update(kw)
    return e.nodes["VSPBFRStylePrompt"].prompt(**args)


def restore(e, **kw):
    args = dict(model=e.model, crops=e.crops, seed=0, fidelity=1.0, bank_scale=1.0)
    args.update(kw)
    return e.nodes["VSPBFRRestoreFaces"].restore(**args)


def paste(e, **kw):
    args = dict(image=e.image, faces=e.faces, restored=e.face_crop, visibility=1.0, feather=50.0,
                mask_shape="square", color_correction="none", upscale=1.0)
    args.update(kw)
    return e.nodes["VSPBFRPasteFaces"].paste(**args)


def all_in_one(e, **kw):
    args = dict(model=e.model, facedetection=DETECTOR, fidelity=1.0, visibility=1.0, only_center_face=False,
                selection="all", upscale=1.0, seed=0, image=e.image)
    args.update(kw)
    return e.nodes["VSPBFRFaceRestore"].restore(**args)


def load(e, **kw):
    args = dict(style_encoder_decoder="style_encoder_decoder.pt", code_diffuser="code_diffuser.pt",
                restoration_net="restoration_net.pt", precision="fp32")
    args.update(kw)
    return e.nodes["VSPBFRModelLoader"].load(**args)


def other_faces(e):
    """A FaceSet aligned from a 32 x 48 image (does not match e.image)."""
    return e.handles.FaceSet(e.faces.detections, dataclasses.replace(e.faces.aligned, image_size=(32, 48)), DETECTOR)


def no_faces(e, batch: int):
    """The FaceSet of a batch of ``batch`` 64 x 64 images where no face was found."""
    aligned = dataclasses.replace(e.faces.aligned, crops=e.faces.aligned.crops[:0], affine=e.faces.aligned.affine[:0],
                                  inverse=e.faces.aligned.inverse[:0], image_index=e.faces.aligned.image_index[:0],
                                  num_images=batch)
    return e.handles.FaceSet(type(e.faces.detections).empty(batch, (64, 64)), aligned, DETECTOR)


def in_unit_range(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1)


def two_style(e):
    (s,) = style(e)
    return e.handles.StyleSet(type(s.style)(s.style.encoder_ws[:1], s.style.prompts[:1]), 0, [0])


# -- clean errors ----------------------------------------------------------------------------------------------------

NODE_ERRORS = [
    # detect node: widgets (checked before the detector is loaded) and IMAGE inputs
    ("detect-threshold-high", lambda e: detect(e, threshold=1.5), "InputError", r"threshold must lie in \[0, 1\]"),
    ("detect-threshold-str", lambda e: detect(e, threshold="0.9"), "InputError", r"threshold: expected a number"),
    ("detect-threshold-nan", lambda e: detect(e, threshold=NAN), "InputError", r"threshold: expected a finite"),
    ("detect-min-size-negative", lambda e: detect(e, min_size=-1), "InputError", r"min_size must be at least 0"),
    ("detect-max-faces-negative", lambda e: detect(e, max_faces=-1), "InputError", r"max_faces must be at least 0"),
    ("detect-max-faces-float", lambda e: detect(e, max_faces=2.5), "InputError", r"max_faces: expected an int"),
    ("detect-selection-words", lambda e: detect(e, selection="first"), "InputError", r"selection 'first': use 'all'"),
    ("detect-selection-int", lambda e: detect(e, selection=2), "InputError", r"selection: expected a string"),
    ("detect-order", lambda e: detect(e, order="random"), "InputError", r"order: expected one of 'left-right'"),
    ("detect-face-size-small", lambda e: detect(e, face_size=4), "InputError", r"face_size must lie in \[8, 4096\]"),
    ("detect-face-size-str", lambda e: detect(e, face_size="512"), "InputError", r"face_size: expected an int"),
    ("detect-detector-name", lambda e: detect(e, facedetection="retinaface_vgg"), "InputError",
     r"facedetection: expected one of 'auto', 'retinaface_resnet50', 'retinaface_mobile0.25'"),
    ("detect-image-nan", lambda e: detect(e, image=with_value(e.image, NAN)), "InputError",
     r"image: contains 1 NaN or infinite value"),
    ("detect-image-inf", lambda e: detect(e, image=with_value(e.image, INF)), "InputError", r"NaN or infinite"),
    ("detect-image-uint8", lambda e: detect(e, image=(e.image * 255).to(torch.uint8)), "InputError",
     r"divide 8-bit images by 255"),
    ("detect-image-0..255", lambda e: detect(e, image=e.image * 255), "InputError", r"looks like 0\.\.255 data"),
    ("detect-image-3d", lambda e: detect(e, image=e.image[0]), "InputError", r"needs a batch dimension"),
    ("detect-image-bchw", lambda e: detect(e, image=e.image.permute(0, 3, 1, 2)), "InputError", r"\[B, C, H, W\]"),
    ("detect-image-numpy", lambda e: detect(e, image=e.image.numpy()), "InputError", r"got ndarray"),
    ("detect-nothing-connected", lambda e: detect(e, image=None), "InputError", r"connect an IMAGE"),
    ("detect-latent-not-a-dict", lambda e: detect(e, image=None, latent=torch.zeros(1, 4, 8, 8)), "InputError",
     r"latent: expected a LATENT \(a dict with a 'samples' tensor\)"),
    ("detect-latent-without-vae", lambda e: detect(e, image=None, latent={"samples": torch.zeros(1, 4, 8, 8)}),
     "InputError", r"needs the VAE input"),
    # style prompt node
    ("style-seed-str", lambda e: style(e, seed="1"), "InputError", r"seed: expected an int, got str '1'"),
    ("style-seed-float", lambda e: style(e, seed=1.0), "InputError", r"seed: expected an int, got float"),
    ("style-crops-nan", lambda e: style(e, crops=with_value(e.crops, NAN)), "InputError", r"crops: contains 1 NaN"),
    ("style-crops-uint8", lambda e: style(e, crops=(e.crops * 255).to(torch.uint8)), "InputError", r"divide 8-bit"),
    ("style-crops-numpy", lambda e: style(e, crops=e.crops.numpy()), "InputError",
     r"crops: expected an IMAGE \(a float tensor \[F, H, W, C\] in \[0, 1\]\), got ndarray"),
    ("style-model-wrong", lambda e: style(e, model="VSPBFR"), "InputError", r"expected the VSPBFR_MODEL output"),
    ("style-faces-wrong", lambda e: style(e, faces={"faces": 2}), "InputError", r"expected the VSPBFR_FACES output"),
    ("style-faces-mismatch", lambda e: style(e, faces=e.faces), "InputError",
     r"'faces' holds 1 face\(s\) but 2 crop\(s\) arrived"),
    # restore node
    ("restore-fidelity", lambda e: restore(e, fidelity=1.5), "InputError", r"prompt_mix must lie in \[0, 1\]"),
    ("restore-bank-scale", lambda e: restore(e, bank_scale=5.0), "InputError", r"bank_scale must lie in \[0, 4\]"),
    ("restore-bank-scale-nan", lambda e: restore(e, bank_scale=NAN), "InputError", r"bank_scale: expected a finite"),
    ("restore-seed-float", lambda e: restore(e, seed=2.5), "InputError", r"seed: expected an int"),
    ("restore-crops-nan", lambda e: restore(e, crops=with_value(e.crops, NAN)), "InputError", r"crops: contains"),
    ("restore-crops-0..255", lambda e: restore(e, crops=e.crops * 255), "InputError", r"0\.\.255"),
    ("restore-crops-list", lambda e: restore(e, crops=[e.crops]), "InputError", r"crops: expected an IMAGE"),
    ("restore-style-wrong", lambda e: restore(e, style="style"), "InputError", r"expected the VSPBFR_STYLE output"),
    ("restore-style-mismatch", lambda e: restore(e, style=two_style(e)), "InputError",
     r"the style holds 1 face\(s\) but 2 crop\(s\) arrived"),
    ("restore-faces-mismatch", lambda e: restore(e, faces=e.faces), "InputError", r"'faces' holds 1 face\(s\)"),
    # paste node
    ("paste-visibility", lambda e: paste(e, visibility=2.0), "InputError", r"visibility must lie in \[0, 1\]"),
    ("paste-feather-negative", lambda e: paste(e, feather=-1.0), "InputError", r"feather must lie in \[0, 230\]"),
    ("paste-feather-large", lambda e: paste(e, feather=500.0), "InputError", r"feather must lie in \[0, 230\]"),
    ("paste-mask-shape", lambda e: paste(e, mask_shape="circle"), "InputError", r"mask_shape: expected one of"),
    ("paste-color-correction", lambda e: paste(e, color_correction="adain"), "InputError",
     r"color_correction: expected one of 'none', 'meanstd', 'wavelet'"),
    ("paste-color-correction-None", lambda e: paste(e, color_correction=None), "InputError",
     r"color_correction: expected one of 'none'"),
    ("paste-upscale-low", lambda e: paste(e, upscale=0.5), "InputError", r"upscale must lie in \[1, 8\]"),
    ("paste-upscale-nan", lambda e: paste(e, upscale=NAN), "InputError", r"upscale: expected a finite number"),
    ("paste-restored-count", lambda e: paste(e, restored=torch.cat([e.face_crop] * 3)), "InputError",
     r"3 restored crop\(s\) for 1 face\(s\)"),
    ("paste-restored-nan", lambda e: paste(e, restored=with_value(e.face_crop, NAN)), "InputError",
     r"restored: contains 1 NaN"),
    ("paste-restored-0..255", lambda e: paste(e, restored=e.face_crop * 255), "InputError", r"0\.\.255"),
    ("paste-image-nan", lambda e: paste(e, image=with_value(e.image, NAN)), "InputError", r"image: contains 1 NaN"),
    ("paste-faces-missing", lambda e: paste(e, faces=None), "InputError", r"expected the VSPBFR_FACES output"),
    ("paste-faces-other-image", lambda e: paste(e, faces=other_faces(e)), "InputError",
     r"aligned from 32x48 images, but the images are 64x64"),
    ("paste-batch-mismatch", lambda e: paste(e, image=torch.cat([e.image] * 2)), "InputError",
     r"aligned from a batch of 1 images, but 2 images were given"),
    # all-in-one node
    ("all-in-one-upscale", lambda e: all_in_one(e, upscale=9.0), "InputError", r"upscale must lie in \[1, 8\]"),
    ("all-in-one-selection", lambda e: all_in_one(e, selection="0;1"), "InputError", r"selection '0;1'"),
    ("all-in-one-only-center-str", lambda e: all_in_one(e, only_center_face="yes"), "InputError",
     r"only_center_face: expected True or False"),
    ("all-in-one-detector-name", lambda e: all_in_one(e, facedetection="yolo"), "InputError",
     r"facedetection: expected one of"),
    ("all-in-one-seed-str", lambda e: all_in_one(e, seed="3"), "InputError", r"seed: expected an int"),
    ("all-in-one-fidelity", lambda e: all_in_one(e, fidelity=-0.5), "InputError", r"prompt_mix must lie"),
    ("all-in-one-model-wrong", lambda e: all_in_one(e, model=None), "InputError", r"VSPBFR_MODEL"),
    # loader node
    ("load-precision", lambda e: load(e, precision="fp64"), "InputError",
     r"precision: expected one of 'auto', 'fp32', 'fp16', 'bf16'"),
    ("load-file-none", lambda e: load(e, code_diffuser=None), "InputError",
     r"code_diffuser: expected a file name from the 'vspbfr' model folder"),
    ("load-fp16-on-cpu", lambda e: load(e, precision="fp16"), "UnsupportedDtypeError",
     r"float16 is not supported on CPU"),
    ("load-file-missing", lambda e: load(e, restoration_net="nope.pt"), "ModelNotFoundError", r"nope\.pt"),
]


@pytest.mark.parametrize("call, error, message", [pytest.param(*c[1:], id=c[0]) for c in NODE_ERRORS])
def test_clean_error(env, state, call, error, message):
    with pytest.raises(getattr(env.errors, error), match=message) as info:
        call(env)
    assert isinstance(info.value, env.errors.VSPBFRError)


@pytest.mark.parametrize("call", [pytest.param(c[1], id=c[0]) for c in NODE_ERRORS
                                  if c[0].startswith(("detect-", "all-in-one-")) and "image" not in c[0]
                                  and "connected" not in c[0] and "latent" not in c[0]])
def test_clean_error_for_bad_widgets_comes_before_any_model_is_loaded(env, state, call):
    with pytest.raises(env.errors.InputError):
        call(env)
    assert state.loads == []


# -- clean errors: NaN weights and memory ----------------------------------------------------------------------------

def poisoned(e, network: str, value: float):
    handle = copy.deepcopy(e.model)            # pipeline, networks and their patcher, together
    param = dict(getattr(handle.pipeline.model, network).named_parameters())[POISON[network]]
    with torch.no_grad():
        param[(0,) * param.dim()] = value
    return handle


NAN_NODE_CASES = [(net, value, node) for net in POISON for value in (NAN, INF) for node in ("restore", "style")
                  if node == "restore" or net in ("style_encoder", "code_diffuser")]


@pytest.mark.parametrize("network, value, node", NAN_NODE_CASES, ids=[f"{n}-{v}-{k}" for n, v, k in NAN_NODE_CASES])
def test_clean_error_for_non_finite_weights(env, network, value, node):
    handle = poisoned(env, network, value)
    with pytest.raises(env.errors.NonFiniteError, match=rf"stage '{STAGE[network]}'.*{FILE[network]}.*re-download"):
        (restore if node == "restore" else style)(env, model=handle)


@pytest.mark.parametrize("network", list(POISON))
def test_clean_error_for_non_finite_weights_in_the_all_in_one_node(env, network):
    needs_detector()
    with pytest.raises(env.errors.NonFiniteError, match=rf"stage '{STAGE[network]}'.*{FILE[network]}"):
        all_in_one(env, model=poisoned(env, network, NAN), image=photo())


MEMORY_CASES = [
    ("all-in-one-upscale8-before-detection", lambda e: all_in_one(e, upscale=8.0),
     r"pasting into 1 image\(s\) of 64x64 at upscale 8 \(512x512\) would need about"),
    ("paste-upscale8", lambda e: paste(e, upscale=8.0), r"pasting into 1 image\(s\) of 64x64 at upscale 8 \(512x512\) "
     r"would need about \d+\.\d MB of memory at once, but only 1\.0 MB is available on cpu\. Use a lower upscale"),
    ("paste-batch", lambda e: paste(e, image=torch.rand(8, 64, 64, 3), faces=no_faces(e, 8), upscale=4.0),
     r"pasting into 8 image\(s\) of 64x64 at upscale 4 \(256x256\) would need about"),
]


@pytest.mark.parametrize("call, message", [pytest.param(*c[1:], id=c[0]) for c in MEMORY_CASES])
def test_clean_error_for_work_larger_than_the_memory(env, monkeypatch, call, message):
    monkeypatch.setattr(env.memory, "available_bytes", lambda device="cpu": 1_000_000)
    monkeypatch.setattr(sys.modules[stubs.PACK + ".vspbfr_core.face.paste"], "_paste_faces",
                        lambda *a, **k: pytest.fail("refused too late"))
    monkeypatch.setattr(env.ops, "find_faces", lambda *a, **k: pytest.fail("refused after detection"))
    with pytest.raises(env.errors.InsufficientMemoryError, match=message):
        call(env)


def test_clean_error_for_an_out_of_memory_in_paste(env, monkeypatch):
    def oom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(sys.modules[stubs.PACK + ".vspbfr_core.face.paste"], "face_mask", oom)
    with pytest.raises(env.errors.InsufficientMemoryError, match=r"ran out of memory on cpu.*lower upscale"):
        paste(env)


# -- correct output --------------------------------------------------------------------------------------------------

CORRECT = [
    ("paste-upscale2-shape", lambda e: tuple(paste(e, upscale=2.0)[0].shape), (1, 128, 128, 3)),
    ("paste-hard-edge", lambda e: tuple(paste(e, feather=0.0)[1].shape), (1, 64, 64)),
    ("paste-unchanged-crop-is-identity", lambda e: bool(torch.allclose(paste(e)[0], e.image, atol=1e-5)), True),
    ("paste-int-widgets", lambda e: torch.equal(paste(e, visibility=1, upscale=2)[0], paste(e, upscale=2.0)[0]), True),
    ("restore-int-widgets", lambda e: torch.equal(restore(e, fidelity=1, bank_scale=1)["result"][0],
                                                  restore(e)["result"][0]), True),
    ("restore-numpy-seed", lambda e: torch.equal(restore(e, seed=np.int64(4))["result"][0],
                                                 restore(e, seed=4)["result"][0]), True),
    ("restore-big-seed", lambda e: tuple(restore(e, seed=0xFFFFFFFFFFFFFFFF)["result"][0].shape), (2, 16, 16, 3)),
    ("restore-rgba-crops", lambda e: tuple(restore(e, crops=torch.cat([e.crops, e.crops[..., :1]], -1))["result"][0]
                                           .shape), (2, 16, 16, 3)),
    ("restore-output-in-range", lambda e: in_unit_range(restore(e)["result"][0]), True),
]


@pytest.mark.parametrize("call, expected", [pytest.param(*c[1:], id=c[0]) for c in CORRECT])
def test_correct_output(env, call, expected):
    assert call(env) == expected


def test_correct_output_all_in_one_keeps_the_alpha_of_an_rgba_image(env):
    needs_detector()
    rgb = photo()
    alpha = torch.linspace(0, 1, rgb.shape[2]).expand(1, rgb.shape[1], -1)[..., None]
    out, mask, count, _, _ = all_in_one(env, image=torch.cat([rgb, alpha], -1))["result"]
    assert count == 1 and out.shape[-1] == 4 and torch.equal(out[..., 3:], alpha) and mask.any()


# -- pass-through with a warning -------------------------------------------------------------------------------------

BLANK = torch.full((1, 48, 64, 3), 0.5)

PASS_THROUGH = [
    ("detect-blank", lambda e: detect(e, image=BLANK)["result"][3], 0),
    ("detect-missing-index", lambda e: detect(e, image=photo(), selection="7")["result"][3], 0),
    ("detect-faces-too-small", lambda e: detect(e, image=photo(), min_size=5000)["result"][3], 0),
    ("chain-blank", lambda e: torch.equal(chain(e, BLANK), BLANK), True),
    ("all-in-one-blank", lambda e: torch.equal(all_in_one(e, image=BLANK)["result"][0], BLANK), True),
    ("all-in-one-blank-gray", lambda e: torch.equal(all_in_one(e, image=BLANK[..., :1])["result"][0], BLANK[..., :1]),
     True),
    ("all-in-one-blank-batch", lambda e: all_in_one(e, image=torch.cat([BLANK] * 3))["result"][2], 0),
]


def chain(e, image):
    faces, crops, _, _, source = detect(e, image=image)["result"]
    restored = restore(e, crops=crops, faces=faces)["result"][0]
    assert torch.equal(restored, crops)                        # the placeholder crop is passed through
    return paste(e, image=source, faces=faces, restored=restored)[0]


@pytest.mark.parametrize("call, expected", [pytest.param(*c[1:], id=c[0]) for c in PASS_THROUGH])
def test_pass_through_with_a_warning(env, caplog, call, expected):
    needs_detector()
    with caplog.at_level(logging.WARNING):
        assert call(env) == expected
    assert "no face selected" in caplog.text and "pass through unchanged" in caplog.text

"""Table-driven bad-input suite of the Python API (issue 11): every case asserts one outcome class.

* ``clean error``: the exception type and a message regex (what is wrong and what to do);
* ``correct output``: the call succeeds and the result is checked against what it must be;
* ``pass-through``: the input comes back unchanged (resized where asked) and a warning is logged.

Tiny networks (tests/tiny_models.py) written to a temporary folder, so the model-file paths are real and show up in
the messages; the cases that need the real RetinaFace detector and photos skip cleanly without ../shared.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from tiny_models import write_tiny_checkpoints
from vspbfr_core import memory
from vspbfr_core.errors import (InputError, InsufficientMemoryError, NonFiniteError, UnsupportedDtypeError,
                                VSPBFRError)
from vspbfr_core.face import Detections, align_faces, paste_faces
from vspbfr_core.face.align import face_template
from vspbfr_core.model import IN_MEMORY, VSPBFRModel
from vspbfr_core.pipeline import RestoreOptions, StylePrompts, VSPBFRPipeline, load_pipeline

NAN, INF = float("nan"), float("inf")
# one weight per network that reaches the output (names of the real architectures, tiny configs)
POISON = {"style_encoder": "input_layer.0.weight", "code_diffuser": "att_mapper.0.q_matrix.weight",
          "stylegan": "input.input", "restoration_net": "conv1.modulation.weight"}
STAGE = {"style_encoder": "encode", "code_diffuser": "diffuse", "stylegan": "feature_bank",
         "restoration_net": "restore"}
FILE = {"style_encoder": "style_encoder_decoder.pt", "code_diffuser": "code_diffuser.pt",
        "stylegan": "style_encoder_decoder.pt", "restoration_net": "restoration_net.pt"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")        # see conftest


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_api")
    write_tiny_checkpoints(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(models) -> VSPBFRPipeline:
    return VSPBFRPipeline.from_dir(models, detector=None).to("cpu")


class Ctx:
    """What the case lambdas work on."""

    def __init__(self, pipe: VSPBFRPipeline):
        self.pipe = pipe
        g = torch.Generator().manual_seed(0)
        self.faces = torch.rand(2, 16, 16, 3, generator=g)                 # host IMAGE of aligned faces
        self.crops = self.faces.permute(0, 3, 1, 2).contiguous()           # [F, 3, H, W]
        self.noise = pipe.noise_for([0, 1], 0)
        self.images, self.aligned = synthetic_aligned()


def synthetic_aligned() -> tuple[torch.Tensor, object]:
    """One 64 x 64 image with one 'face' whose landmarks are the FFHQ template at 32 px, aligned to 16 px."""
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    landmarks = (face_template(32) + 16).float()[None]
    dets = Detections(torch.zeros(1, dtype=torch.long), torch.tensor([[16.0, 16.0, 48.0, 48.0]]), landmarks,
                      torch.ones(1), torch.zeros(1, dtype=torch.long), 1, (64, 64))
    return images, align_faces(images, dets, size=16)


@pytest.fixture(scope="module")
def ctx(pipe) -> Ctx:
    return Ctx(pipe)


def with_value(x: torch.Tensor, value: float) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[3] = value
    return y


# -- clean errors: options -------------------------------------------------------------------------------------------

OPTION_ERRORS = [
    ("seed", "5", r"seed: expected an int, got str '5'"),
    ("seed", 5.0, r"seed: expected an int, got float"),
    ("seed", True, r"seed: expected an int, got bool"),
    ("seed", None, r"seed: expected an int"),
    ("threshold", 0.0, r"threshold must lie in \(0, 1\]"),
    ("threshold", 1.5, r"threshold must lie in \(0, 1\]"),
    ("threshold", NAN, r"threshold: expected a finite number"),
    ("threshold", "0.9", r"threshold: expected a number"),
    ("min_size", -1.0, r"min_size must be at least 0"),
    ("min_size", INF, r"min_size: expected a finite number"),
    ("max_faces", -1, r"max_faces must be at least 0"),
    ("max_faces", 2.5, r"max_faces: expected an int"),
    ("selection", "first", r"selection 'first': use 'all', 'largest', 'center' or face indices"),
    ("selection", "-1", r"selection '-1'"),
    ("selection", 3, r"selection: expected a string"),
    ("order", "random", r"order: expected one of 'left-right', 'top-bottom', 'area', 'score'"),
    ("detect_size", -5, r"detect_size must be at least 0"),
    ("detect_size", 640.0, r"detect_size: expected an int"),
    ("prompt_mix", 1.5, r"prompt_mix must lie in \[0, 1\]"),
    ("prompt_mix", NAN, r"prompt_mix: expected a finite number"),
    ("prompt_mix", "1", r"prompt_mix: expected a number"),
    ("bank_scale", 4.5, r"bank_scale must lie in \[0, 4\]"),
    ("bank_scale", -0.1, r"bank_scale must lie in \[0, 4\]"),
    ("visibility", -0.1, r"visibility must lie in \[0, 1\]"),
    ("visibility", INF, r"visibility: expected a finite number"),
    ("color_correction", "adain", r"color_correction: expected one of 'meanstd', 'wavelet' or None"),
    ("color_correction", "none", r"color_correction: expected one of 'meanstd', 'wavelet' or None"),
    ("mask_shape", "circle", r"mask_shape: expected one of 'square', 'ellipse'"),
    ("feather", -1.0, r"feather must lie in \[0, 230\]"),
    ("feather", 300.0, r"feather must lie in \[0, 230\]"),
    ("upscale", 0.5, r"upscale must lie in \[1, 8\]"),
    ("upscale", 9, r"upscale must lie in \[1, 8\]"),
    ("upscale", NAN, r"upscale: expected a finite number"),
    ("upscale", "2", r"upscale: expected a number"),
]


@pytest.mark.parametrize("field, value, message", OPTION_ERRORS,
                         ids=[f"{f}={v!r}" for f, v, _ in OPTION_ERRORS])
def test_clean_error_for_every_option_field(ctx, field, value, message):
    options = RestoreOptions(**{field: value})
    with pytest.raises(InputError, match=message):
        options.validate()
    with pytest.raises(InputError, match=message):                 # the API entry points validate as well
        ctx.pipe.restore_aligned(ctx.faces, options)
    with pytest.raises(InputError, match=message):
        ctx.pipe.restore_aligned(ctx.faces, **{field: value})


# -- clean errors: calls ---------------------------------------------------------------------------------------------

CROPS_EXPECTED = r"expected a float torch\.Tensor \[F, 3, H, W\] in \[0, 1\]"

CALL_ERRORS = [
    # options objects
    ("options-dict", lambda c: c.pipe.restore_aligned(c.faces, {"seed": 1}), InputError,
     r"expected a vspbfr_core\.pipeline\.RestoreOptions or None, got dict .*RestoreOptions\(\*\*your_dict\)"),
    ("options-str", lambda c: c.pipe.restore_aligned(c.faces, "seed=1"), InputError,
     r"RestoreOptions or None, got str"),
    ("options-dict-call", lambda c: c.pipe(c.faces, {"upscale": 2}), InputError, r"RestoreOptions or None, got dict"),
    ("options-dict-restore_faces", lambda c: c.pipe.restore_faces(c.crops, options={"seed": 1}), InputError,
     r"restore_faces: options: expected a vspbfr_core\.pipeline\.RestoreOptions"),
    ("unknown-override", lambda c: c.pipe.restore_aligned(c.faces, seeed=3), InputError,
     r"unknown option\(s\) seeed; RestoreOptions fields are seed, threshold"),
    ("two-bad-fields", lambda c: c.pipe.restore_aligned(c.faces, seed="x", upscale=0), InputError,
     r"invalid restore options: seed: expected an int.*; upscale must lie in"),
    ("restore_faces-seed-str", lambda c: c.pipe.restore_faces(c.crops, seed="7"), InputError, r"seed: expected an int"),
    ("noise_for-seed-float", lambda c: c.pipe.noise_for([0], 1.5), InputError, r"seed: expected an int, got float"),
    ("noise_for-keys-str", lambda c: c.pipe.noise_for("01", 0), InputError, r"face_keys: expected a sequence of ints"),
    ("callback-not-callable", lambda c: c.pipe.restore_aligned(c.faces, callback="print"), InputError,
     r"callback must be callable"),
    # crops: 0..255, uint8, wrong types and layouts, NaN
    ("restore_faces-uint8", lambda c: c.pipe.restore_faces((c.crops * 255).to(torch.uint8)), InputError,
     CROPS_EXPECTED + r", got shape .*uint8.*divide 8-bit images by 255"),
    ("restore_faces-0..255", lambda c: c.pipe.restore_faces(c.crops * 255), InputError,
     r"restore_faces: crops: values must lie in \[0, 1\].*looks like 0\.\.255 data: divide by 255"),
    ("restore_faces-[-1,1]", lambda c: c.pipe.restore_faces(c.crops * 2 - 1), InputError, r"looks like \[-1, 1\] data"),
    ("restore_faces-numpy", lambda c: c.pipe.restore_faces(c.crops.numpy()), InputError,
     CROPS_EXPECTED + r", got ndarray \(convert a NumPy array with torch\.from_numpy"),
    ("restore_faces-list", lambda c: c.pipe.restore_faces(list(c.crops)), InputError,
     CROPS_EXPECTED + r", got list \(stack the images"),
    ("restore_faces-host-layout", lambda c: c.pipe.restore_faces(c.faces), InputError,
     r"expected 3 channels in dimension 1 of \[F, 3, H, W\].*host IMAGE"),
    ("restore_faces-3d", lambda c: c.pipe.restore_faces(c.crops[0]), InputError,
     r"expected a 4-d tensor \[F, 3, H, W\]"),
    ("restore_faces-nan", lambda c: c.pipe.restore_faces(with_value(c.crops, NAN)), InputError,
     r"restore_faces: crops: contains 1 NaN or infinite value"),
    ("restore_faces-inf", lambda c: c.pipe.restore_faces(with_value(c.crops, INF)), InputError,
     r"contains 1 NaN or infinite value"),
    ("encode-uint8", lambda c: c.pipe.encode((c.crops * 255).to(torch.uint8)), InputError,
     r"encode: crops: " + CROPS_EXPECTED),
    ("encode-numpy", lambda c: c.pipe.encode(c.crops.numpy()), InputError, r"encode: crops: " + CROPS_EXPECTED),
    ("style_prompts-0..255", lambda c: c.pipe.style_prompts(c.crops * 255, c.noise), InputError,
     r"style_prompts: crops: values must lie in \[0, 1\]"),
    ("style_prompts-noise-count", lambda c: c.pipe.style_prompts(c.crops[:1], c.noise), InputError,
     r"the noise is for 2 face\(s\) but 1 arrived"),
    ("diffuse-ws-shape", lambda c: c.pipe.diffuse(torch.zeros(2, 3, 16), c.noise), InputError,
     r"diffuse: ws must be a float tensor \[F, 6, 16\]"),
    ("diffuse-ws-numpy", lambda c: c.pipe.diffuse(np.zeros((2, 6, 16)), c.noise), InputError, r"got ndarray"),
    ("diffuse-noise-type", lambda c: c.pipe.diffuse(torch.zeros(2, 6, 16), {"x_T": 0}), InputError,
     r"expected RestoreNoise from noise_for"),
    ("restore_faces-style-type", lambda c: c.pipe.restore_faces(c.crops, {"prompts": 0}), InputError,
     r"style must be StylePrompts"),
    ("restore_faces-style-count", lambda c: c.pipe.restore_faces(
        c.crops, StylePrompts(torch.zeros(1, 6, 16), torch.zeros(1, 6, 16))), InputError,
     r"the style holds 1 face\(s\) but 2 crop\(s\)"),
    ("restore_faces-keys-count", lambda c: c.pipe.restore_faces(c.crops, face_keys=[0]), InputError,
     r"1 face key\(s\) for 2 crop\(s\)"),
    ("restore_faces-keys-negative", lambda c: c.pipe.restore_faces(c.crops, face_keys=[0, -1]), InputError,
     r"face_keys\[i\] must be at least 0"),
    ("paste-restored-uint8", lambda c: c.pipe.paste(c.images, (c.aligned.crops * 255).to(torch.uint8), c.aligned),
     InputError, r"paste: restored crops: expected a float torch\.Tensor \[F, C, R, R\] in \[0, 1\].*uint8"),
    ("paste-restored-0..255", lambda c: c.pipe.paste(c.images, c.aligned.crops * 255, c.aligned), InputError,
     r"paste: restored crops: values must lie in \[0, 1\].*0\.\.255"),
    ("paste-restored-numpy", lambda c: c.pipe.paste(c.images, c.aligned.crops.numpy(), c.aligned), InputError,
     r"paste: restored crops: expected a float torch\.Tensor .*got ndarray"),
    ("paste-restored-nan", lambda c: c.pipe.paste(c.images, with_value(c.aligned.crops, NAN), c.aligned), InputError,
     r"NaN or infinite"),
    ("paste-aligned-dict", lambda c: c.pipe.paste(c.images, c.aligned.crops, {"crops": c.aligned.crops}), InputError,
     r"expected AlignedFaces from align_faces, got dict"),
    ("paste-count-mismatch", lambda c: c.pipe.paste(c.images, torch.cat([c.aligned.crops] * 2), c.aligned),
     InputError, r"restored must be \[1, 3, R, R\]"),
    ("paste-images-mismatch", lambda c: c.pipe.paste(c.images[..., :32], c.aligned.crops, c.aligned), InputError,
     r"aligned from 64x64 images, but the images are 64x32"),
    ("paste_faces-upscale-str", lambda c: paste_faces(c.images, c.aligned.crops, c.aligned, upscale="2"), InputError,
     r"paste_faces: upscale: expected a number"),
    ("paste_faces-feather-nan", lambda c: paste_faces(c.images, c.aligned.crops, c.aligned, feather=NAN), InputError,
     r"feather: expected a finite number"),
    ("align-detections-dict", lambda c: c.pipe.align(c.images, {}), InputError, r"align: expected Detections"),
    ("align-nan-landmarks", lambda c: align_faces(c.images, Detections(
        torch.zeros(1, dtype=torch.long), torch.zeros(1, 4), torch.full((1, 5, 2), NAN), torch.ones(1),
        torch.zeros(1, dtype=torch.long), 1, (64, 64))), InputError, r"NaN or infinite landmarks"),
    # whole images / aligned faces
    ("call-numpy", lambda c: c.pipe(c.faces.numpy()), InputError, r"expected a float torch\.Tensor \[B, H, W, C\]"),
    ("call-uint8", lambda c: c.pipe((c.faces * 255).to(torch.uint8)), InputError, r"divide 8-bit images by 255"),
    ("call-nan", lambda c: c.pipe(with_value(c.faces, NAN)), InputError, r"NaN or infinite"),
    ("call-no-detector", lambda c: c.pipe(c.faces), VSPBFRError, r"this pipeline has no face detector"),
    ("restore_aligned-not-square", lambda c: c.pipe.restore_aligned(c.faces[:, :, :12]), InputError,
     r"aligned faces must be square, got 16x12"),
    ("restore_aligned-list", lambda c: c.pipe.restore_aligned(c.faces.tolist()), InputError,
     r"restore_aligned: faces: expected a float torch\.Tensor"),
    ("restore_aligned-0..255", lambda c: c.pipe.restore_aligned(c.faces * 255), InputError, r"0\.\.255"),
    # devices and precision
    pytest.param("to-mps", lambda c: c.pipe.to("mps"), InputError, r"'mps': Apple MPS is not available",
                 marks=pytest.mark.skipif(bool(getattr(torch.backends, "mps", None)
                                               and torch.backends.mps.is_available()), reason="MPS exists here")),
    pytest.param("to-cuda", lambda c: c.pipe.to("cuda"), InputError, r"'cuda': CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA exists here")),
    pytest.param("to-cuda3", lambda c: c.pipe.to(torch.device("cuda:3")), InputError, r"cuda:3",
                 marks=pytest.mark.skipif(torch.cuda.device_count() > 3, reason="4 GPUs here")),
    ("to-typo", lambda c: c.pipe.to("cpuu"), InputError, r"VSPBFRPipeline\.to: device: unknown device 'cpuu'"),
    ("to-int", lambda c: c.pipe.to(3), InputError, r"expected a device name such as 'cpu'.*got int 3"),
    ("to-dtype-str", lambda c: c.pipe.to("cpu", "float32"), UnsupportedDtypeError, r"expected a torch\.dtype"),
    ("to-dtype-int8", lambda c: c.pipe.to("cpu", torch.int8), UnsupportedDtypeError, r"unsupported dtype torch\.int8"),
    ("to-fp16-cpu", lambda c: c.pipe.to("cpu", torch.float16), UnsupportedDtypeError,
     r"float16 is not supported on CPU"),
    ("load_pipeline-typo-before-files", lambda c: load_pipeline("/nonexistent/vspbfr", device="gpu"), InputError,
     r"load_pipeline: device: unknown device 'gpu'"),
    pytest.param("load_pipeline-cuda-before-files", lambda c: load_pipeline("/nonexistent/vspbfr", device="cuda:0"),
                 InputError, r"CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA exists here")),
    ("load_pipeline-dtype-before-files", lambda c: load_pipeline("/nonexistent/vspbfr", dtype=torch.float16),
     UnsupportedDtypeError, r"float16 is not supported on CPU"),
    ("pipeline-chunk-size-0", lambda c: VSPBFRPipeline(c.pipe.model, chunk_size=0), InputError,
     r"chunk_size must be at least 1, got 0"),
    ("pipeline-chunk-size-str", lambda c: VSPBFRPipeline(c.pipe.model, chunk_size="4"), InputError,
     r"chunk_size: expected an int"),
    ("pipeline-model-type", lambda c: VSPBFRPipeline({"style_encoder": None}), InputError,
     r"expected a VSPBFRModel, got dict"),
    ("pipeline-offload-typo", lambda c: VSPBFRPipeline(c.pipe.model, offload_device="cpu0"), InputError,
     r"offload_device: unknown device 'cpu0'"),
    ("pipeline-compile-str", lambda c: VSPBFRPipeline(c.pipe.model, compile="yes"), InputError,
     r"compile: expected True, False or a dict"),
    ("pipeline-low-memory-str", lambda c: VSPBFRPipeline(c.pipe.model, low_memory="no"), InputError,
     r"low_memory: expected True or False"),
    ("from_dir-files-typo", lambda c: VSPBFRPipeline.from_dir(None, files={"restoration": "x.pt"}), InputError,
     r"files: unknown kind\(s\) restoration; use style_encoder_decoder, code_diffuser, restoration_net"),
    ("from_dir-models-dir-int", lambda c: VSPBFRPipeline.from_dir(5), InputError, r"models_dir: expected a folder path"),
    ("from_dir-unknown-kwarg", lambda c: load_pipeline("/nonexistent", chunk=2), InputError,
     r"unknown pipeline option\(s\) chunk; accepted: allow_tf32, chunk_size"),
    ("from_dir-detector-type", lambda c: VSPBFRPipeline.from_dir(None, detector=True), InputError,
     r"detector: expected a detector name"),
]


def _case(case):
    if hasattr(case, "values"):
        return pytest.param(*case.values[1:], marks=case.marks, id=case.values[0])
    return pytest.param(*case[1:], id=case[0])


@pytest.mark.parametrize("call, error, message", [_case(c) for c in CALL_ERRORS])
def test_clean_error(ctx, call, error, message):
    before = (ctx.pipe.device, ctx.pipe.dtype)
    with pytest.raises(error, match=message) as info:
        call(ctx)
    assert isinstance(info.value, VSPBFRError)
    assert (ctx.pipe.device, ctx.pipe.dtype) == before            # a refused move leaves the pipeline as it was


# -- clean errors: NaN / inf from the networks -----------------------------------------------------------------------

def poisoned(pipe: VSPBFRPipeline, network: str, value: float) -> VSPBFRPipeline:
    p = copy.deepcopy(pipe)
    param = dict(getattr(p.model, network).named_parameters())[POISON[network]]
    with torch.no_grad():
        param[(0,) * param.dim()] = value
    return p


def run_restore_aligned(p, c):
    return p.restore_aligned(c.faces, seed=1)


def run_stage(network):
    """The stage API call whose output is the network's (encode, diffuse, restore_faces for the last two)."""
    def run(p, c):
        if network == "style_encoder":
            return p.encode(c.crops)
        if network == "code_diffuser":
            return p.diffuse(torch.zeros(2, 6, 16), c.noise)
        return p.restore_faces(c.crops, seed=1)
    return run


def run_model_forward(p, c):
    """VSPBFRModel as the public entry: aligned faces in [-1, 1] -> restored faces."""
    with torch.inference_mode():
        return p.model(c.crops * 2 - 1, p.model.draw_noise_per_face([torch.Generator().manual_seed(k)
                                                                     for k in range(2)]))


NAN_WEIGHT_CASES = [(net, value, entry, runner)
                    for net in POISON for value in (NAN, INF)
                    for entry, runner in (("restore_aligned", run_restore_aligned), ("stage-api", run_stage(net)),
                                          ("model-forward", run_model_forward))]


@pytest.mark.parametrize("network, value, entry, runner", NAN_WEIGHT_CASES,
                         ids=[f"{n}-{v}-{e}" for n, v, e, _ in NAN_WEIGHT_CASES])
def test_clean_error_for_non_finite_weights(ctx, pipe, network, value, entry, runner):
    p = poisoned(pipe, network, value)
    c = copy.copy(ctx)
    c.noise = p.noise_for([0, 1], 0)
    with pytest.raises(NonFiniteError) as info:
        runner(p, c)
    err = info.value
    assert err.stage == STAGE[network] and err.network == network
    assert err.source.endswith(FILE[network])
    assert f"stage '{STAGE[network]}'" in str(err) and FILE[network] in str(err) and "re-download" in str(err)


def test_clean_error_for_weights_given_in_memory_names_them(pipe, ctx):
    src = poisoned(pipe, "restoration_net", NAN).model
    p = VSPBFRPipeline(VSPBFRModel(src.style_encoder, src.stylegan, src.code_diffuser, src.restoration_net))
    with pytest.raises(NonFiniteError, match=r"stage 'restore'.*\(weights: \(weights given in memory\)\)") as info:
        p.restore_aligned(ctx.faces)
    assert info.value.source == IN_MEMORY


def test_clean_error_for_a_half_precision_overflow_says_try_float32(pipe, ctx):
    p = copy.deepcopy(pipe).to("cpu", torch.bfloat16)
    with torch.no_grad():      # finite but huge: the restoration network overflows (bfloat16 saturates to inf)
        dict(p.model.stylegan.named_parameters())[POISON["stylegan"]].fill_(1e38)
    with pytest.raises(NonFiniteError, match=r"Under bfloat16 the values may have overflowed: try float32 first"):
        p.restore_aligned(ctx.faces)


def test_clean_error_for_non_finite_stage_inputs_of_the_model(pipe):
    ws = torch.full((1, 6, 16), NAN)
    with pytest.raises(InputError, match=r"diffuse: the input W\+ codes contains 96 NaN"):
        pipe.model.diffuse(ws, torch.zeros(1, 6, 16))


# -- clean errors: memory --------------------------------------------------------------------------------------------

def small_machine(monkeypatch, free: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": free)


MEMORY_ERRORS = [
    ("call-upscale8-before-detection", 20_000_000,
     lambda c: c.pipe(torch.rand(1, 200, 300, 3), upscale=8.0),
     r"restoring 1 image\(s\) of 300x200 at upscale 8 \(2400x1600\) would need about 1\d\d\.\d MB of memory at "
     r"once, but only 20\.0 MB is available on cpu\. Use a lower upscale, a smaller image"),
    ("restore_aligned-upscale8", 1_000_000,
     lambda c: c.pipe.restore_aligned(torch.rand(4, 64, 64, 3), upscale=8.0),
     r"restoring 4 aligned face\(s\) of 64x64 at upscale 8 \(512x512\) would need about"),
    ("paste-upscale", 1_000_000,
     lambda c: c.pipe.paste(c.images, c.aligned.crops, c.aligned, RestoreOptions(upscale=8)),
     r"paste_faces \(1 image\(s\) of 64x64 -> 512x512, 1 face\(s\)\) would need about \d+\.\d MB"),
    ("paste_faces-upscale16", 1_000_000, lambda c: paste_faces(c.images, c.aligned.crops, c.aligned, upscale=16),
     r"would need about .* but only 1\.0 MB is available"),
    ("paste_faces-6000x4000-upscale8", 16_000_000_000, lambda c: paste_faces(*huge_photo_without_faces(), upscale=8),
     r"paste_faces \(1 image\(s\) of 6000x4000 -> 48000x32000, 0 face\(s\)\) would need about 24\.6 GB of memory "
     r"at once, but only 16\.0 GB is available on cpu"),
]


def huge_photo_without_faces() -> tuple[torch.Tensor, torch.Tensor, object]:
    """A 6000 x 4000 photo that takes no memory (one value, expanded) and its (empty) alignment."""
    image = torch.full((1, 1, 1, 1), 0.5).expand(1, 3, 4000, 6000)
    return image, torch.zeros(0, 3, 16, 16), align_faces(image, Detections.empty(1, (4000, 6000)), size=16)


@pytest.mark.parametrize("free, call, message", [pytest.param(*c[1:], id=c[0]) for c in MEMORY_ERRORS])
def test_clean_error_for_work_larger_than_the_memory(ctx, monkeypatch, free, call, message):
    small_machine(monkeypatch, free)
    monkeypatch.setattr(VSPBFRPipeline, "restore_faces", lambda *a, **k: pytest.fail("refused too late"))
    with pytest.raises(InsufficientMemoryError, match=message):
        call(ctx)


def raise_memory_error(*args, **kwargs):
    raise MemoryError()


def raise_cpu_allocator(*args, **kwargs):
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 18432000000 bytes. Error code 12 (Cannot allocate memory)")


OOM_CASES = [
    ("paste-MemoryError", "vspbfr_core.face.paste.face_mask", raise_memory_error,
     lambda c: c.pipe.paste(c.images, c.aligned.crops, c.aligned), r"paste_faces ran out of memory on cpu"),
    ("paste_faces-cpu-allocator", "vspbfr_core.face.paste.face_mask", raise_cpu_allocator,
     lambda c: paste_faces(c.images, c.aligned.crops, c.aligned), r"ran out of memory .*can't allocate memory"),
    ("restore_aligned-MemoryError", "vspbfr_core.pipeline.VSPBFRPipeline.restore_faces", raise_memory_error,
     lambda c: c.pipe.restore_aligned(c.faces, upscale=2.0), r"restoring the aligned faces ran out of memory"),
    ("restore-cpu-allocator-every-chunk", "vspbfr_core.model.VSPBFRModel.restore", raise_cpu_allocator,
     lambda c: c.pipe.restore_faces(c.crops), r"out of memory on cpu even with one face at a time"),
]


@pytest.mark.parametrize("target, fake, call, message", [pytest.param(*c[1:], id=c[0]) for c in OOM_CASES])
def test_clean_error_for_an_out_of_memory_that_still_happens(ctx, monkeypatch, target, fake, call, message):
    monkeypatch.setattr(target, fake)
    with pytest.raises(InsufficientMemoryError, match=message + r".*(lower upscale|low-memory mode)"):
        call(ctx)


# -- correct output --------------------------------------------------------------------------------------------------

def test_correct_output_restore_aligned_upscale_scales_the_face(ctx):
    one = ctx.pipe.restore_aligned(ctx.faces, seed=4)
    two = ctx.pipe.restore_aligned(ctx.faces, seed=4, upscale=2.0)
    assert one.images.shape == (2, 16, 16, 3) and two.images.shape == (2, 32, 32, 3)
    assert two.masks.shape == (2, 32, 32) and torch.equal(two.restored_crops, one.restored_crops)
    expected = F.interpolate(one.restored_crops, size=(32, 32), mode="bicubic", antialias=True,
                             align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.equal(two.images, expected)
    odd = ctx.pipe.restore_aligned(ctx.faces, seed=4, upscale=1.5, visibility=0.5)
    assert odd.images.shape == (2, 24, 24, 3) and torch.isfinite(odd.images).all()


CORRECT_OUTPUT = [
    ("ints-for-floats", dict(seed=3, visibility=1, prompt_mix=1, bank_scale=1, upscale=1, min_size=0),
     dict(seed=3)),
    ("numpy-int-seed", dict(seed=np.int64(3)), dict(seed=3)),
    ("threshold-upper-bound", dict(seed=3, threshold=1.0), dict(seed=3)),
    ("feather-bounds", dict(seed=3, feather=230.0), dict(seed=3)),
    ("options-object-and-override", dict(options=RestoreOptions(seed=9), seed=3), dict(seed=3)),
]


@pytest.mark.parametrize("given, reference", [pytest.param(*c[1:], id=c[0]) for c in CORRECT_OUTPUT])
def test_correct_output_for_accepted_values(ctx, given, reference):
    given = dict(given)
    options = given.pop("options", None)
    got = ctx.pipe.restore_aligned(ctx.faces, options, **given).images
    assert torch.equal(got, ctx.pipe.restore_aligned(ctx.faces, **reference).images)


CORRECT_STAGE_OUTPUT = [
    ("empty-crops", lambda c: c.pipe.restore_faces(torch.zeros(0, 3, 16, 16))[0].shape, (0, 3, 16, 16)),
    ("keys-as-tensor", lambda c: torch.equal(c.pipe.restore_faces(c.crops, face_keys=torch.tensor([0, 1]))[0],
                                             c.pipe.restore_faces(c.crops, face_keys=[0, 1])[0]), True),
    ("crops-within-tolerance", lambda c: in_unit_range(c.pipe.restore_faces(c.crops + 1 / 512)[0]), True),
    ("to-torch-device", lambda c: c.pipe.to(torch.device("cpu")).device, torch.device("cpu")),
    ("to-auto-on-cpu-machine", lambda c: c.pipe.to("auto").device.type,
     "cuda" if torch.cuda.is_available() else "mps" if getattr(torch.backends, "mps", None)
     and torch.backends.mps.is_available() else "cpu"),
    ("paste-upscale-shape", lambda c: tuple(c.pipe.paste(c.images, c.aligned.crops, c.aligned,
                                                         RestoreOptions(upscale=2))[0].shape), (1, 3, 128, 128)),
    ("estimate-6000x4000-upscale8", lambda c: round(memory.image_bytes(1, 3, 32000, 48000, torch.float32) / 1e9, 1),
     18.4),
]


def in_unit_range(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1)


@pytest.mark.parametrize("call, expected", [pytest.param(*c[1:], id=c[0]) for c in CORRECT_STAGE_OUTPUT])
def test_correct_output_of_stage_calls(ctx, call, expected):
    try:
        assert call(ctx) == expected
    finally:
        ctx.pipe.to("cpu", torch.float32)


def test_correct_output_load_pipeline_accepts_a_torch_device(models):
    p = load_pipeline(models, device=torch.device("cpu"), detector=None)
    assert p.device == torch.device("cpu") and p.model.weight_files["code_diffuser"].endswith("code_diffuser.pt")


def test_correct_output_finite_runs_are_bit_identical_with_and_without_the_checks(ctx, monkeypatch):
    """The checks only read: with every check switched off the outputs are the same bytes."""
    checked = ctx.pipe.restore_aligned(ctx.faces, seed=2, visibility=0.7)
    pasted = ctx.pipe.paste(ctx.images, ctx.aligned.crops.flip(-1), ctx.aligned, RestoreOptions(upscale=1.5))
    monkeypatch.setattr(VSPBFRModel, "check_finite", lambda *a, **k: None)
    monkeypatch.setattr(memory, "ensure_available", lambda *a, **k: None)
    monkeypatch.setattr(torch, "isfinite", lambda x: torch.ones_like(x, dtype=torch.bool))
    unchecked = ctx.pipe.restore_aligned(ctx.faces, seed=2, visibility=0.7)
    assert torch.equal(checked.images, unchecked.images)
    assert torch.equal(checked.restored_crops, unchecked.restored_crops)
    again = ctx.pipe.paste(ctx.images, ctx.aligned.crops.flip(-1), ctx.aligned, RestoreOptions(upscale=1.5))
    assert all(torch.equal(a, b) for a, b in zip(pasted, again))


# -- pass-through with a warning -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector_pipe(tiny_models_dir) -> VSPBFRPipeline:
    return VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25").to("cpu")


def photo(name: str = "cf_04.jpg") -> torch.Tensor:
    from PIL import Image

    with Image.open(shared_path("faces", "whole", name)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


PASS_THROUGH = [
    ("blank-image", lambda: torch.full((1, 48, 64, 3), 0.5), {}, (1, 48, 64, 3)),
    ("blank-batch-rgba", lambda: torch.full((2, 40, 40, 4), 0.25), {}, (2, 40, 40, 4)),
    ("blank-upscaled", lambda: torch.full((1, 40, 60, 3), 0.5), dict(upscale=2.0), (1, 80, 120, 3)),
    ("missing-index", lambda: photo(), dict(selection="5"), None),
    ("faces-below-min-size", lambda: photo(), dict(min_size=5000.0), None),
    ("strict-threshold", lambda: photo(), dict(threshold=1.0), None),
]


@pytest.mark.parametrize("make, options, shape", [pytest.param(*c[1:], id=c[0]) for c in PASS_THROUGH])
def test_pass_through_with_a_warning(detector_pipe, caplog, make, options, shape):
    image = make()
    with caplog.at_level(logging.WARNING, logger="vspbfr_core.pipeline"):
        res = detector_pipe(image, **options)
    assert res.faces_found == 0 and not res.masks.any()
    assert "no face selected" in caplog.text
    if options.get("upscale", 1.0) == 1.0:
        assert torch.equal(res.images, image)
    else:
        assert res.images.shape == shape
        expected = F.interpolate(image.permute(0, 3, 1, 2), size=shape[1:3], mode="bicubic",
                                 align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
        assert torch.equal(res.images, expected)


# -- whole images: NaN weights and detectors through __call__ --------------------------------------------------------

@pytest.mark.parametrize("network", list(POISON))
def test_clean_error_for_non_finite_weights_in_a_whole_image_run(detector_pipe, network):
    p = poisoned(detector_pipe, network, NAN)
    with pytest.raises(NonFiniteError, match=rf"stage '{STAGE[network]}'.*{FILE[network]}"):
        p(photo())


def test_clean_error_for_a_detector_with_nan_weights_instead_of_zero_faces(detector_pipe):
    p = copy.deepcopy(detector_pipe)
    with torch.no_grad():
        next(p.detector.parameters()).view(-1)[0] = NAN
    message = r"stage 'detect'.*detection_mobilenet0\.25_Final\.pth.*re-download"
    with pytest.raises(NonFiniteError, match=message) as info:
        p(photo())
    assert info.value.stage == "detect" and info.value.source.endswith("detection_mobilenet0.25_Final.pth")

"""The ArcFace identity embedder: parity with facexlib's own network, strict safe loading, input handling, the
identity score, the registry and what happens without the file or the dlib package.

The full-size parity runs facexlib's IR-SE-50 with random weights (about 44 M parameters) once per module; the
loader's refusals use a tiny IR-SE layout (4 units, 8 to 32 channels).
"""
from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TEST_DEVICE
from identity_models import TINY_ARCFACE, randomise as _randomise, tiny_arcface_state_dict as _tiny_state_dict
from vspbfr_core.errors import CheckpointError, InputError, ModelNotFoundError, UnsafeCheckpointError, VSPBFRError
from vspbfr_core.identity import (
    ARCFACE_TEMPLATE_112, ArcFaceConfig, ArcFaceEmbedder, MissingPackageError, identity,
    identity_matrix, load_arcface, load_embedder, mean_embedding,
)
from vspbfr_core.identity.arcface import align_arcface, arcface_input, infer_arcface_config
from vspbfr_core.paths import IDENTITY_FILES

ARCFACE_FILE = IDENTITY_FILES["arcface"]
TINY = TINY_ARCFACE


@pytest.fixture(scope="module")
def facexlib_arcface(tmp_path_factory):
    """facexlib's IR-SE-50 ArcFace with random weights, and its state dict saved as facexlib's file name."""
    arch = pytest.importorskip("facexlib.recognition.arcface_arch", reason="facexlib is a test extra")
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    ref = _randomise(arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se"), 1234)
    torch.set_rng_state(state)
    folder = tmp_path_factory.mktemp("arcface")
    torch.save(ref.state_dict(), folder / ARCFACE_FILE)
    return ref, folder


@pytest.fixture(scope="module")
def arcface_embedder(facexlib_arcface) -> ArcFaceEmbedder:
    _, folder = facexlib_arcface
    return load_embedder("arcface", folder, TEST_DEVICE)


#----------------------------------------------------------------------------
# Parity with facexlib (random weights, float32)


def test_network_matches_facexlib_on_random_weights(facexlib_arcface, arcface_embedder):
    ref, _ = facexlib_arcface
    net = arcface_embedder.net
    assert net.config == ArcFaceConfig()                          # IR-SE-50, 512-D, 112 px, read from the shapes
    g = torch.Generator().manual_seed(5)
    faces = torch.rand(3, 3, 112, 112, generator=g) * 2 - 1
    with torch.no_grad():
        expected = ref(faces)
        got = net(faces.to(TEST_DEVICE)).cpu()
    assert got.dtype == torch.float32 and got.shape == (3, 512)
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)


def test_embed_crops_is_facexlib_on_the_arcface_input(facexlib_arcface, arcface_embedder):
    ref, _ = facexlib_arcface
    g = torch.Generator().manual_seed(6)
    crops = torch.rand(2, 3, 512, 512, generator=g)
    with torch.no_grad():
        expected = ref(arcface_input(crops))
    got = arcface_embedder.embed_crops(crops)
    assert got.device.type == TEST_DEVICE.type
    assert (got.cpu() - expected).abs().max().item() <= 1e-5


def test_warp_matches_facexlibs_warp_and_crop_face():
    """The 112 crop of a face: the ArcFace template and facexlib's fit direction, pixel for pixel."""
    align_trans = pytest.importorskip("facexlib.detection.align_trans", reason="facexlib is a test extra")
    reference = align_trans.get_reference_facial_points(default_square=True)
    assert np.abs(reference - np.array(ARCFACE_TEMPLATE_112)).max() < 1e-9
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 20, 25, generator=g), size=(200, 250), mode="bicubic",
                                            align_corners=False).clamp(0, 1)
    angle = math.radians(12)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    points = (torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64) - 56) @ rot.T * 1.3 + torch.tensor([120.0, 90.0])
    points = points + torch.randn(5, 2, generator=g, dtype=torch.float64) * 1.5          # not an exact similarity
    ours = align_arcface(image, points[None].float())[0]
    source = (image[0].permute(1, 2, 0).numpy() * 255).astype(np.float32)
    theirs = align_trans.warp_and_crop_face(source, points.numpy().copy(), reference.copy(), crop_size=(112, 112))
    theirs = torch.from_numpy(np.ascontiguousarray(theirs)).permute(2, 0, 1) / 255
    assert (ours - theirs).abs().max().item() < 1e-4


def test_crop_input_puts_the_ffhq_landmarks_on_the_arcface_template():
    """A crop that is white only around its 5 FFHQ landmarks: each blob lands where the least-squares fit of the two
    templates puts it (within 3 px of the ArcFace point: the templates differ slightly, mostly at the mouth)."""
    from vspbfr_core.face import face_template
    from vspbfr_core.face.align import estimate_similarity, invert_affine

    crop = torch.zeros(1, 3, 512, 512)
    ffhq = face_template(512)
    for x, y in ffhq.round().long().tolist():
        crop[0, :, y - 6:y + 7, x - 6:x + 7] = 1.0
    face = (arcface_input(crop)[0, 0] + 1) / 2                    # [112, 112] in [0, 1]
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    scale = 151 / 512                                             # the crop is first resized to 151 px
    small = (ffhq + 0.5) * scale - 0.5
    forward = invert_affine(estimate_similarity(template[None], small))[0]       # crop pixel -> ArcFace pixel
    expected = small @ forward[:, :2].T + forward[:, 2]
    ys, xs = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    for (tx, ty), (ex, ey) in zip(template.tolist(), expected.tolist()):
        blob = face * (((xs - ex) ** 2 + (ys - ey) ** 2) < 64)
        cx, cy = float((blob * xs).sum() / blob.sum()), float((blob * ys).sum() / blob.sum())
        assert abs(cx - ex) < 0.5 and abs(cy - ey) < 0.5
        assert math.hypot(cx - tx, cy - ty) < 3.0
        assert float(blob.max()) > 0.99
    assert face[:20, :20].max() < 0.01 and face[-20:, -20:].max() < 0.01      # nothing lands in the corners


#----------------------------------------------------------------------------
# Loading: what loads, and every refusal


def _save(sd: dict, path: Path) -> Path:
    torch.save(sd, path)
    return path


def test_file_variants_load_to_the_same_network(tmp_path):
    sd = _tiny_state_dict()
    faces = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = load_arcface(_save(sd, tmp_path / "plain.pth"))(faces)
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "a.safetensors")
    variants = {
        "module. prefix": _save({"module." + k: v for k, v in sd.items()}, tmp_path / "module.pth"),
        "state_dict wrapper": _save({"state_dict": sd}, tmp_path / "wrapped.pth"),
        "no num_batches_tracked (PyTorch 0.4.0)": _save({k: v for k, v in sd.items()
                                                          if not k.endswith("num_batches_tracked")},
                                                         tmp_path / "old.pth"),
        "float16 tensors": _save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
                                 tmp_path / "half.pth"),
        "safetensors": tmp_path / "a.safetensors",
    }
    for label, path in variants.items():
        net = load_arcface(path)
        assert net.config == TINY, label
        assert not net.training and not any(p.requires_grad for p in net.parameters()), label
        with torch.no_grad():
            tol = 5e-3 if label == "float16 tensors" else 0.0
            assert (net(faces) - expected).abs().max().item() <= tol, label


def test_config_is_read_back_from_the_shapes():
    assert infer_arcface_config(_tiny_state_dict()) == TINY


class _Payload:
    """A pickled object whose class is not on the data-only allow-list."""

    def __reduce__(self):
        return (print, ("this must never run",))


def _write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _mutate(fn):
    def write(path: Path) -> None:
        sd = _tiny_state_dict()
        fn(sd)
        torch.save(sd, path)
    return write


def _set(key, value):
    def fn(sd):
        sd[key] = value
    return fn


REFUSALS = [
    # (case, how the file is written, error class, message pattern)
    ("missing file", None, ModelNotFoundError, r"model file not found"),
    ("empty file", _write_bytes(b""), CheckpointError, r"empty"),
    ("garbage bytes", _write_bytes(b"\x00garbage" * 100), CheckpointError, r"cannot read this file"),
    ("pickle naming a global", lambda p: torch.save({"x": _Payload()}, p), UnsafeCheckpointError, r"could run code"),
    ("not a dict", lambda p: torch.save([torch.zeros(1)], p), CheckpointError, r"expected an ArcFace state dict"),
    ("a RetinaFace-like dict", lambda p: torch.save({"body.conv1.weight": torch.zeros(8, 3, 3, 3)}, p),
     CheckpointError, r"not an IR-SE ArcFace file .*input_layer\.0\.weight"),
    ("missing tensor", _mutate(lambda sd: sd.pop("body.1.res_layer.3.weight")), CheckpointError,
     r"1 missing keys .*body\.1\.res_layer\.3\.weight"),
    ("unexpected tensor", _mutate(_set("output_layer.9.weight", torch.zeros(3))), CheckpointError,
     r"1 unexpected keys .*output_layer\.9\.weight"),
    ("wrong shape", _mutate(_set("body.2.res_layer.1.weight", torch.zeros(16, 16, 1, 1))), CheckpointError,
     r"shape mismatches .*body\.2\.res_layer\.1\.weight"),
    ("head of no square map", _mutate(_set("output_layer.3.weight", torch.zeros(24, 32 * 5))), CheckpointError,
     r"not 32 x a square feature map"),
    ("NaN value", _mutate(lambda sd: sd["body.0.res_layer.1.weight"].view(-1).__setitem__(3, float("nan"))),
     CheckpointError, r"NaN or infinite values .*body\.0\.res_layer\.1\.weight"),
    ("integer weights", _mutate(lambda sd: sd.__setitem__("input_layer.0.weight",
                                                          sd["input_layer.0.weight"].long())),
     CheckpointError, r"wrong dtype .*input_layer\.0\.weight"),
    ("negative variance", _mutate(lambda sd: sd["output_layer.0.running_var"].__setitem__(0, -1.0)),
     CheckpointError, r"negative variance"),
    ("gray-input network", _mutate(_set("input_layer.0.weight", torch.zeros(8, 1, 3, 3))), CheckpointError,
     r"1-channel faces"),
    ("without squeeze-excitation ('ir')", _mutate(lambda sd: [sd.pop(k) for k in list(sd) if ".res_layer.5." in k]),
     CheckpointError, r"body\.0\.res_layer\.5\.fc1\.weight"),
]


@pytest.mark.parametrize("case,write,error,pattern", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_clear_errors(tmp_path, capsys, case, write, error, pattern):
    path = tmp_path / ARCFACE_FILE
    if write is not None:
        write(path)
    with pytest.raises(error, match=pattern) as info:
        load_embedder("arcface", file=path)
    assert str(path) in str(info.value) or case == "missing file" and ARCFACE_FILE in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_file_names_the_file_and_the_download_command(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        load_embedder("arcface", [tmp_path / "a", tmp_path / "b"])
    message = str(info.value)
    assert ARCFACE_FILE in message and str(tmp_path / "a") in message and str(tmp_path / "b") in message
    assert "--only identity" in message and "optional" in message
    from vspbfr_core.paths import find_model_file, model_file_candidates

    assert model_file_candidates("arcface") == model_file_candidates(ARCFACE_FILE) == ((ARCFACE_FILE,), False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ARCFACE_FILE).write_bytes(b"x")
    assert find_model_file("arcface", [tmp_path / "a", tmp_path / "b"]) == tmp_path / "b" / ARCFACE_FILE


def test_unknown_embedder_name():
    with pytest.raises(InputError, match=r"unknown identity embedder 'facenet'.*arcface or dlib"):
        load_embedder("facenet")


#----------------------------------------------------------------------------
# Inputs, dtypes, devices, randomness


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory) -> ArcFaceEmbedder:
    path = tmp_path_factory.mktemp("tiny_arcface") / ARCFACE_FILE
    torch.save(_tiny_state_dict(3), path)
    return load_embedder("arcface", file=path, device=TEST_DEVICE)


BAD_CROPS = [
    ("not a tensor", np.zeros((1, 3, 64, 64), np.float32), r"expected a torch\.Tensor"),
    ("3-d", torch.zeros(3, 64, 64), r"\[F, C, S, S\]"),
    ("BHWC", torch.zeros(1, 64, 64, 3), r"C = 1, 3 or 4"),
    ("not square", torch.zeros(1, 3, 64, 48), r"square"),
    ("too small", torch.zeros(1, 3, 8, 8), r"too small"),
    ("uint8", torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"divide 8-bit images by 255"),
    ("0..255 floats", torch.full((1, 3, 64, 64), 200.0), r"looks like 0\.\.255"),
    ("NaN", torch.full((1, 3, 64, 64), float("nan")), r"NaN"),
]


@pytest.mark.parametrize("case,crops,pattern", BAD_CROPS, ids=[c[0] for c in BAD_CROPS])
def test_bad_crops_are_input_errors(tiny_embedder, case, crops, pattern):
    with pytest.raises(InputError, match=pattern):
        tiny_embedder.embed_crops(crops)


def test_dtypes_channels_and_empty_batches(tiny_embedder):
    g = torch.Generator().manual_seed(2)
    rgb = torch.rand(3, 3, 96, 96, generator=g)
    base = tiny_embedder.embed_crops(rgb)
    assert base.shape == (3, 24) and base.dtype == torch.float32 and not base.requires_grad
    base.mul_(1.0)                                           # an ordinary tensor (not an inference tensor): in place works
    assert torch.allclose(base.norm(dim=1), torch.ones(3, device=base.device), atol=1e-5)
    assert torch.allclose(tiny_embedder.embed_crops(rgb.double()), base, atol=1e-6)
    assert torch.allclose(tiny_embedder.embed_crops(rgb.half()), base, atol=2e-2)
    rgba = torch.cat([rgb, torch.rand(3, 1, 96, 96, generator=g)], dim=1)
    assert torch.equal(tiny_embedder.embed_crops(rgba), base)                  # alpha is ignored
    gray = rgb[:, :1]
    assert torch.equal(tiny_embedder.embed_crops(gray), tiny_embedder.embed_crops(gray.expand(-1, 3, -1, -1)))
    assert tiny_embedder.embed_crops(torch.zeros(0, 3, 96, 96)).shape == (0, 24)
    tiny_embedder.batch_size = 2                                               # chunks give the same vectors
    try:
        assert torch.allclose(tiny_embedder.embed_crops(rgb), base, atol=1e-6)
    finally:
        tiny_embedder.batch_size = 16


def test_global_random_state_is_untouched(tiny_embedder):
    g = torch.Generator().manual_seed(9)
    crops, image = torch.rand(2, 3, 64, 64, generator=g), torch.rand(1, 3, 100, 120, generator=g)
    points = torch.tensor([[[40.0, 40.0], [70.0, 40.0], [55.0, 55.0], [45.0, 70.0], [66.0, 70.0]]])
    torch.manual_seed(77)
    np.random.seed(77)
    random.seed(77)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    tiny_embedder.embed_crops(crops)
    tiny_embedder.embed_faces(image, points)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist() and random.getstate() == py_state
    torch.rand(1)
    assert not torch.equal(torch.get_rng_state(), torch_state)   # the check sees a draw


def test_embed_faces_aligns_like_the_pipeline_and_keeps_the_face_order(tiny_embedder):
    from vspbfr_core.face.align import align_faces
    from vspbfr_core.face.detect import Detections

    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 90, 110, generator=g)
    base = torch.tensor([[38.0, 40.0], [62.0, 41.0], [50.0, 55.0], [40.0, 68.0], [60.0, 68.0]])
    landmarks = torch.stack([base, base * 0.8 + 15, base + 10])          # faces of images 1, 0, 1 (unsorted)
    index = torch.tensor([1, 0, 1])
    got = tiny_embedder.embed_faces(images, landmarks, index)
    order = torch.tensor([1, 0, 2])
    dets = Detections(index[order], torch.zeros(3, 4), landmarks[order], torch.ones(3),
                      torch.zeros(3, dtype=torch.long), 2, (90, 110))
    expected = tiny_embedder.embed_crops(align_faces(images, dets, 512).crops)
    assert torch.allclose(got[order], expected, atol=1e-6)
    assert torch.allclose(tiny_embedder.embed_faces(images[1:], landmarks[:1]), got[:1], atol=1e-6)   # B == 1: no index
    assert tiny_embedder.embed_faces(images, torch.zeros(0, 5, 2), torch.zeros(0)).shape == (0, 24)


BAD_FACES = [
    ("landmarks [F, 10]", torch.zeros(1, 10), None, r"landmarks must be a tensor \[F, 5, 2\]"),
    ("NaN landmarks", torch.full((1, 5, 2), float("nan")), None, r"NaN"),
    ("two images, no index", torch.rand(1, 5, 2) * 50, None, r"pass image_index"),
    ("index too long", torch.rand(1, 5, 2) * 50, torch.tensor([0, 1]), r"2 entries for 1 faces"),
    ("index outside", torch.rand(1, 5, 2) * 50, torch.tensor([2]), r"outside the batch of 2"),
    ("coinciding points", torch.full((1, 5, 2), 30.0), torch.tensor([0]), r"coincide"),
]


@pytest.mark.parametrize("case,landmarks,index,pattern", BAD_FACES, ids=[c[0] for c in BAD_FACES])
def test_bad_faces_are_input_errors(tiny_embedder, case, landmarks, index, pattern):
    with pytest.raises(InputError, match=pattern):
        tiny_embedder.embed_faces(torch.rand(2, 3, 60, 60), landmarks, index)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_vectors(tmp_path):
    path = tmp_path / ARCFACE_FILE
    torch.save(_tiny_state_dict(8), path)
    crops = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(8))
    cpu = load_embedder("arcface", file=path).embed_crops(crops)
    cuda = load_embedder("arcface", file=path, device="cuda")
    out = cuda.embed_crops(crops.half().cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.allclose(out.cpu(), cpu, atol=2e-2)
    assert torch.allclose(cuda.embed_crops(crops.cuda()).cpu(), cpu, atol=1e-4)
    assert torch.allclose(cuda.to("cpu").embed_crops(crops), cpu, atol=1e-6)


#----------------------------------------------------------------------------
# The identity score


def test_identity_scores():
    e = torch.eye(4)
    assert identity(e, e).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert identity(e[0], -e[0]).item() == -1.0
    assert identity(e[0], e[1]).item() == 0.0
    assert torch.allclose(identity(e * 3.0, torch.tensor([1.0, 1.0, 0.0, 0.0])),              # raw rows, broadcast
                          torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0]))
    assert identity_matrix(e[:2], e).tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert torch.allclose(mean_embedding(e[:2]), torch.tensor([1.0, 1.0, 0.0, 0.0]) / math.sqrt(2))
    assert identity(e.double(), e).dtype == torch.float32
    for bad in (lambda: identity(torch.zeros(2, 4), torch.zeros(2, 3)),
                lambda: identity(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4)),
                lambda: identity_matrix(torch.zeros(4), torch.zeros(2, 4)),
                lambda: mean_embedding(torch.zeros(0, 4))):
        with pytest.raises(InputError):
            bad()


#----------------------------------------------------------------------------
# Optional packages: dlib is imported only by its embedder


def test_importing_the_core_and_the_identity_api_never_imports_dlib():
    code = ("import sys, vspbfr_core, vspbfr_core.identity as I\n"
            "assert 'torch' not in sys.modules, 'identity package imports torch'\n"
            "from vspbfr_core.identity import load_embedder, identity, ArcFaceEmbedder\n"
            "from vspbfr_core import pipeline, download, paths\n"
            "from vspbfr_core.commands import info\n"
            "assert 'dlib' not in sys.modules and 'face_recognition_models' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_missing_dlib_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)              # makes `import dlib` fail like an absent package
    with pytest.raises(MissingPackageError, match=r'dlib-bin.*pip install "vspbfr\[dlib\]"') as info:
        load_embedder("dlib")
    assert isinstance(info.value, VSPBFRError) and isinstance(info.value, ImportError)


def test_missing_dlib_model_package_is_a_clear_error(monkeypatch):
    import importlib.util

    import vspbfr_core.identity.dlib as dlib_embedder

    real = importlib.util.find_spec
    monkeypatch.setattr(dlib_embedder, "import_dlib", lambda: object())
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r'face_recognition_models.*pip install "vspbfr\[dlib\]"'):
        load_embedder("dlib")

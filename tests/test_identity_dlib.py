"""The dlib identity embedder on real faces (../shared/faces): the two photos of Einstein are more alike than the
pairs of different people, with dlib's own detector and with the fixed template box, on raw distances and on the
identity score. Skips without the optional packages of ``vspbfr[dlib]`` or without ../shared.
"""
from __future__ import annotations

import importlib.util
import itertools
import random

import numpy as np
import pytest
import torch

from conftest import TEST_DEVICE, shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.identity import identity, identity_matrix, load_embedder

pytest.importorskip("dlib", reason='the dlib embedder needs pip install "vspbfr[dlib]" (dlib-bin)')
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip('the dlib embedder needs pip install "vspbfr[dlib]" (face_recognition_models)',
                allow_module_level=True)

EINSTEIN = ("cf_Einstein01.png", "cf_Einstein02.png")


def _read(path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()             # [3, H, W] in [0, 1]


@pytest.fixture(scope="module")
def crops() -> tuple[list[str], torch.Tensor]:
    """The 12 FFHQ-aligned 512 crops (11 people: Einstein twice), sorted by name."""
    folder = shared_path("faces", "cropped")
    names = sorted(p.name for p in folder.glob("*.png"))
    assert len(names) == 12 and set(EINSTEIN) <= set(names)
    return names, torch.stack([_read(folder / n) for n in names])


def _same_and_different(names: list[str], scores: torch.Tensor) -> tuple[float, list[float]]:
    """The Einstein pair's value and the 65 values of pairs of different people (scores: [12, 12])."""
    same = float(scores[names.index(EINSTEIN[0]), names.index(EINSTEIN[1])])
    different = [float(scores[i, j]) for i, j in itertools.combinations(range(len(names)), 2)
                 if {names[i], names[j]} != set(EINSTEIN)]
    assert len(different) == 65
    return same, different


@pytest.mark.parametrize("face_box", ["detector", "template"])
def test_the_two_einstein_photos_are_more_alike_than_different_people(crops, face_box):
    from vspbfr_core.identity.dlib import DlibEmbedder

    names, faces = crops
    embedder = DlibEmbedder(TEST_DEVICE, face_box=face_box)
    raw = embedder.descriptors(faces)                                       # [12, 128], dlib's own vectors
    assert raw.shape == (12, 128) and raw.dtype == torch.float32
    same, different = _same_and_different(names, torch.cdist(raw, raw))
    assert same < 0.6                                                       # dlib's own same-person threshold
    assert sum(d > same for d in different) >= 0.95 * 65                    # dlib's distance: smaller = closer

    vectors = embedder.embed_crops(faces)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(12, device=vectors.device), atol=1e-5)
    same_id, different_id = _same_and_different(names, identity_matrix(vectors, vectors).cpu())
    assert sum(d < same_id for d in different_id) >= 0.95 * 65              # identity: higher = more alike
    assert identity(vectors[names.index(EINSTEIN[0])], vectors[names.index(EINSTEIN[1])]).item() == \
        pytest.approx(same_id, abs=1e-6)


def test_the_registry_gives_the_template_box_embedder_and_it_is_deterministic(crops):
    _, faces = crops
    embedder = load_embedder("dlib", device=TEST_DEVICE)
    assert (embedder.name, embedder.dim, embedder.face_box) == ("dlib", 128, "template")
    sample = faces[:2]
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    states = torch.get_rng_state(), np.random.get_state()[1].tolist(), random.getstate()
    first = embedder.embed_crops(sample)
    assert torch.equal(embedder.embed_crops(sample.double()), first)      # dlib reads 8-bit RGB: same bytes
    assert torch.equal(states[0], torch.get_rng_state())
    assert states[1:] == (np.random.get_state()[1].tolist(), random.getstate())
    assert first.device.type == TEST_DEVICE.type and first.dtype == torch.float32
    # a smaller crop of the same faces (the template box scales with it) still points the same way
    small = torch.nn.functional.interpolate(sample, size=(256, 256), mode="bilinear", antialias=True,
                                            align_corners=False)
    assert identity(embedder.embed_crops(small), first).min().item() > 0.95
    with pytest.raises(InputError, match="too small"):
        embedder.embed_crops(sample[:, :, :16, :16])


def test_a_whole_photo_face_matches_its_own_degraded_copy_best(tiny_models_dir):
    """embed_faces on the real RetinaFace landmarks of a family photo (3 people): each face is closer to a blurred,
    down-sized copy of itself than to either other person."""
    from vspbfr_core.face import detect_faces, load_detector

    image = _read(shared_path("faces", "whole", "gfpgan_10045.png"))[None]     # [1, 3, H, W]
    detector = load_detector("retinaface_mobile0.25", tiny_models_dir)
    dets = detect_faces(detector, image.permute(0, 2, 3, 1))
    assert len(dets) == 3
    embedder = load_embedder("dlib", device=TEST_DEVICE)
    faces = embedder.embed_faces(image, dets.landmarks)
    small = torch.nn.functional.interpolate(image, scale_factor=0.35, mode="bilinear", antialias=True,
                                            align_corners=False)
    scale = small.shape[-1] / image.shape[-1]
    degraded = embedder.embed_faces(small, (dets.landmarks + 0.5) * scale - 0.5)       # pixel centres kept
    scores = identity_matrix(faces, degraded)                                 # [3, 3]
    for i in range(3):
        assert int(scores[i].argmax()) == i, scores

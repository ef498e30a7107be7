"""Identity in restoration (vspbfr_core.identity.select): best-of-N, references, only-matching, the reference mix.

Tiny VSPBFR networks and the real RetinaFace mobilenet0.25; a scripted embedder makes the choice of candidate
known in advance, the real dlib descriptor (when installed) checks only-matching on a real group photo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.identity import FaceEmbedder, face_report, identity_summary, parse_layers
from vspbfr_core.identity.select import LAYER_GROUPS, progress_units
from vspbfr_core.pipeline import RestoreOptions, VSPBFRPipeline
from vspbfr_core.rng import make_generator


@pytest.fixture(scope="module")
def pipe(tiny_models_dir: Path) -> VSPBFRPipeline:
    return VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25").to("cpu", torch.float32)


def load(name: str) -> torch.Tensor:
    with Image.open(shared_path("faces", "whole", name)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


class ScriptedEmbedder(FaceEmbedder):
    """Records every batch of crops it is given and answers with the next vectors of a script (or, past the end of
    the script, with a fixed function of the crop's mean colour)."""

    name = "scripted"
    dim = 3
    match_threshold = 0.5

    def __init__(self, script: list[torch.Tensor] | None = None):
        super().__init__("cpu")
        self.script = list(script or [])
        self.seen: list[torch.Tensor] = []

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        self.seen.append(crops.clone())
        if len(self.seen) <= len(self.script):
            return F.normalize(self.script[len(self.seen) - 1].float(), dim=1)
        return F.normalize(crops.mean(dim=(2, 3)) - 0.4, dim=1)


def unit(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# -- noise keys ------------------------------------------------------------------------------------------------

def test_candidate_zero_is_todays_noise_and_candidates_are_independent_draws():
    a = torch.randn(8, generator=make_generator(7, 2))
    assert torch.equal(a, torch.randn(8, generator=make_generator(7, 2, 0)))
    draws = [torch.randn(8, generator=make_generator(7, 2, c)) for c in range(4)]
    assert all(not torch.equal(draws[i], draws[j]) for i in range(4) for j in range(i + 1, 4))
    assert torch.equal(draws[3], torch.randn(8, generator=make_generator(7, 2, 3)))
    assert not torch.equal(draws[1], torch.randn(8, generator=make_generator(7, 3, 1)))    # other face, same c
    with pytest.raises(ValueError):
        make_generator(7, None, 1)


# -- best-of-N -------------------------------------------------------------------------------------------------

def test_best_of_n_keeps_the_argmax_candidate_and_n_1_is_unchanged(pipe):
    img = load("cf_00.jpg")                                        # 4 small faces
    plain = pipe(img, seed=4)
    n = plain.faces_found
    assert n == 4
    # with an embedder but one candidate: the same bytes, and a score per face
    one = pipe(img, seed=4, embedder=ScriptedEmbedder())
    assert torch.equal(one.images, plain.images) and torch.equal(one.restored_crops, plain.restored_crops)
    assert [f.chosen for f in one.identity] == [0] * n and all(f.restored for f in one.identity)
    # three candidates; the input crops get e0, candidate c of face i the scripted vector below
    e0 = unit((1, 0, 0))
    target = e0.expand(n, -1)
    cand = [unit((0.2, 1, 0), (0.9, 0.1, 0), (0.5, 0.5, 0), (0.7, 0.7, 0)),      # candidate 0
            unit((0.9, 0.2, 0), (0.1, 1, 0), (0.5, 0.5, 0), (0.3, 0.9, 0)),      # candidate 1
            unit((1, 0.1, 0), (0.2, 0.9, 0), (0.5, 0.5, 0), (0.7, 0.7, 0))]      # candidate 2
    emb = ScriptedEmbedder([target, *cand])
    got = pipe(img, seed=4, candidates=3, embedder=emb)
    scores = torch.stack([(F.normalize(c, dim=1) * target).sum(1) for c in cand], dim=1)     # [F, 3]
    assert [f.chosen for f in got.identity] == [2, 0, 0, 0]        # ties (faces 2 and 3) keep the lower index
    for i, f in enumerate(got.identity):
        assert [c["index"] for c in f.candidates] == [0, 1, 2]
        torch.testing.assert_close(torch.tensor([c["identity"] for c in f.candidates]), scores[i])
        assert f.identity_input == pytest.approx(f.candidates[f.chosen]["identity"])       # target = the input
        assert f.identity_reference is None
    # the kept face is exactly the chosen candidate's restoration, which the embedder saw
    assert len(emb.seen) == 4                                      # the input crops, then one batch per candidate
    for i, f in enumerate(got.identity):
        torch.testing.assert_close(got.restored_crops[i], emb.seen[1 + f.chosen][i], rtol=0, atol=0)
    torch.testing.assert_close(emb.seen[1], plain.restored_crops, rtol=0, atol=0)   # candidate 0 = plain restoration
    assert not torch.equal(emb.seen[1], emb.seen[2])
    # faces that kept candidate 0 are pasted exactly as before; the image differs only where face 0 is
    assert not torch.equal(got.images, plain.images)
    again = pipe(img, seed=4, candidates=3, embedder=ScriptedEmbedder([target, *cand]))
    assert torch.equal(again.images, got.images)
    # the report: detection fields plus the identity record
    rows = face_report(got.detections, got.identity)
    assert [r["chosen"] for r in rows] == [2, 0, 0, 0] and rows[0]["box"] == got.detections.to_json()[0]["box"]
    assert set(rows[0]) >= {"index", "box", "score", "identity_input", "identity_reference", "candidates", "chosen",
                            "restored"}
    assert "candidate 3 of 3" in identity_summary(got.identity).splitlines()[0]


def test_progress_counts_every_candidate_and_ends_at_the_total(pipe):
    img = load("cf_04.jpg")                                        # one face
    calls = []
    pipe(img, seed=1, candidates=2, embedder=ScriptedEmbedder(), callback=lambda d, t, s: calls.append((d, t, s)))
    total = progress_units(RestoreOptions(candidates=2), True) + 2
    assert {t for _, t, _ in calls} == {total} and calls[-1][0] == total
    done = [d for d, _, _ in calls]
    assert done == sorted(done)
    stages = [s for _, _, s in calls]
    assert stages.count("diffuse") == 2 and stages.count("identity") == 3


# -- references, only-matching, reference mix ------------------------------------------------------------------

def test_a_reference_is_the_target_and_gets_a_score_for_every_face(pipe):
    img = load("cf_00.jpg")
    emb = ScriptedEmbedder()
    ref = pipe.make_reference(load("cf_04.jpg"), emb)
    assert len(ref) == 1 and ref.embedder == "scripted" and ref.ws.shape == (6, 16)
    got = pipe(img, seed=2, candidates=2, embedder=emb, reference=ref)
    for f in got.identity:
        for c in f.candidates:
            assert c["identity"] == pytest.approx(c["identity_reference"])
        best = max(range(2), key=lambda c: (f.candidates[c]["identity"], -c))
        assert f.chosen == best and f.identity_reference == pytest.approx(f.candidates[best]["identity"])
    # several references are averaged; a photo without a face is named
    two = pipe.make_reference([load("cf_04.jpg"), load("skimage_astronaut.png")], emb)
    assert len(two) == 2 and float(two.embedding.norm()) == pytest.approx(1.0)
    with pytest.raises(InputError, match="reference image 'blank.png': no face found"):
        pipe.make_reference(torch.full((1, 64, 64, 3), 0.5), emb, names=["blank.png"])


def test_reference_mix_moves_only_the_chosen_layers(pipe):
    img = load("cf_04.jpg")
    emb = ScriptedEmbedder()
    ref = pipe.make_reference(load("skimage_astronaut.png"), emb)
    base = pipe(img, seed=3, embedder=emb, reference=ref)
    full = pipe(img, seed=3, embedder=emb, reference=ref, reference_mix=1.0)       # default layers: "middle"
    layers = list(parse_layers("middle", 6))
    assert layers == [4, 5]
    torch.testing.assert_close(full.style.prompts[0, layers], ref.ws[layers])
    others = [i for i in range(6) if i not in layers]
    torch.testing.assert_close(full.style.prompts[0, others], base.style.prompts[0, others], rtol=0, atol=0)
    half = pipe(img, seed=3, embedder=emb, reference=ref, reference_mix=0.5, reference_layers="0-1")
    torch.testing.assert_close(half.style.prompts[0, :2], (base.style.prompts[0, :2] + ref.ws[:2]) / 2)
    assert not torch.equal(half.images, base.images)


def test_only_matching_restores_exactly_the_reference_face_of_a_group_photo(tiny_models_dir):
    """dlib's real descriptor: the reference is face k of the photo, down-sized (0.5x) and cut out with a margin;
    only face k is restored, every other face's pixels stay the input's."""
    pytest.importorskip("dlib")
    from vspbfr_core.identity import load_embedder

    pipe = VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25")
    img = load("cf_02.png")
    dets = pipe.detect(img)
    assert len(dets) == 4
    emb = load_embedder("dlib")
    for k in (1, 3):
        x1, y1, x2, y2 = dets.boxes[k].tolist()
        m = 0.6 * (x2 - x1)
        crop = img[:, max(0, int(y1 - m)):int(y2 + m), max(0, int(x1 - m)):int(x2 + m)]
        small = F.interpolate(crop.permute(0, 3, 1, 2), scale_factor=0.5, mode="bilinear", antialias=True,
                              align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
        ref = pipe.make_reference(small, emb)
        got = pipe(img, seed=0, embedder=emb, reference=ref, only_matching=True)
        assert [f.restored for f in got.identity] == [i == k for i in range(4)], [f.identity_reference
                                                                                 for f in got.identity]
        assert all(f.identity_reference is not None for f in got.identity)
        # a face left alone is scored as it is (the input face): below the threshold
        assert all(f.identity_reference < emb.match_threshold for i, f in enumerate(got.identity) if i != k)
        # the same pixels as restoring that face alone by its index (same seed and face key)
        alone = pipe(img, seed=0, selection=str(k))
        assert torch.equal(got.images, alone.images)
        for i in range(4):
            bx1, by1, bx2, by2 = (int(v) for v in dets.boxes[i].tolist())
            q, r = (bx2 - bx1) // 4, (by2 - by1) // 4                          # the inner half of the box
            same = torch.equal(got.images[0, by1 + r:by2 - r, bx1 + q:bx2 - q], img[0, by1 + r:by2 - r, bx1 + q:bx2 - q])
            assert same == (i != k)
    # a threshold nobody reaches restores nothing and returns the image unchanged
    none = pipe(img, seed=0, embedder=emb, reference=ref, only_matching=True, match_threshold=1.0)
    assert not any(f.restored for f in none.identity) and torch.equal(none.images, img)


def test_restore_aligned_with_identity_leaves_unmatched_faces_as_they_were(pipe):
    faces = torch.rand(2, 64, 64, 3)
    script = [unit((1, 0, 0)), unit((1, 0, 0), (0, 1, 0))]         # the reference crop, then the input crops
    emb = ScriptedEmbedder(script)
    ref = pipe.make_reference(faces[:1], emb, aligned=True)
    got = pipe.restore_aligned(faces, embedder=emb, reference=ref, only_matching=True)
    assert [f.restored for f in got.identity] == [True, False]
    assert torch.equal(got.images[1], faces[1]) and not torch.equal(got.images[0], faces[0])
    alone = pipe.restore_aligned(faces[:1], seed=0)
    assert torch.equal(got.images[0], alone.images[0])


def test_half_precision_candidates(tiny_models_dir):
    pipe = VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25").to("cpu", torch.bfloat16)
    img = load("cf_04.jpg")
    a = pipe(img, seed=9, candidates=2, embedder=ScriptedEmbedder())
    b = pipe(img, seed=9, candidates=2, embedder=ScriptedEmbedder())
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.float32 and len(a.identity) == 1
    assert torch.isfinite(a.images).all()


# -- checks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": 2}, "candidates > 1 needs an identity embedder"),
    ({"only_matching": True, "embedder": "E"}, "only_matching needs a reference"),
    ({"reference_mix": 0.3, "embedder": "E"}, "reference_mix > 0 needs a reference"),
    ({"reference": "R"}, "a reference photo needs an identity embedder"),
    ({"embedder": "arcface"}, "embedder must be an identity embedder"),
    ({"embedder": "E", "reference": {"embedding": 1}}, "reference must be an IdentityReference"),
    ({"candidates": 0}, "candidates must lie in"),
    ({"candidates": 65}, "candidates must lie in"),
    ({"candidates": True}, "candidates"),
    ({"match_threshold": 1.5}, "match_threshold must lie in"),
    ({"reference_mix": -0.1}, "reference_mix must lie in"),
    ({"reference_layers": "eyes"}, "reference_layers: cannot read 'eyes'"),
    ({"reference_layers": "5-2"}, "runs backwards"),
])
def test_identity_requests_that_cannot_work_are_refused_before_any_work(pipe, kwargs, match):
    emb = ScriptedEmbedder()
    ref = pipe.make_reference(torch.rand(1, 32, 32, 3), emb, aligned=True)
    kwargs = {k: (emb if v == "E" else ref if v == "R" else v) for k, v in kwargs.items()}
    calls = []
    with pytest.raises(InputError, match=match):
        pipe(torch.rand(1, 64, 64, 3), callback=lambda *a: calls.append(a), **kwargs)
    assert calls == []


def test_a_reference_from_another_embedder_is_refused(pipe):
    class Other(ScriptedEmbedder):
        name = "other"

    ref = pipe.make_reference(torch.rand(1, 32, 32, 3), Other(), aligned=True)
    with pytest.raises(InputError, match="embedded with 'other' but the embedder is 'scripted'"):
        pipe(torch.rand(1, 64, 64, 3), embedder=ScriptedEmbedder(), reference=ref)


def test_layer_specifications():
    assert parse_layers("middle") == (4, 5, 6, 7)
    assert parse_layers("coarse+fine", 10) == (0, 1, 2, 3, 8, 9)
    assert parse_layers("all", 6) == tuple(range(6))
    assert parse_layers(" 3, 5 ,8-9") == (3, 5, 8, 9)
    assert set(LAYER_GROUPS) == {"coarse", "middle", "fine", "all"}
    with pytest.raises(InputError, match="layer 9 does not exist; this model's W\\+ has 6 layers"):
        parse_layers("8-9", 6)
    with pytest.raises(InputError, match="selects no layer"):
        parse_layers("fine", 6)
    with pytest.raises(InputError, match="expected a layer group"):
        parse_layers("")


def test_restore_faces_refuses_identity_options_it_would_ignore(pipe):
    crops = torch.rand(1, 3, 16, 16)
    for options in (RestoreOptions(candidates=2), RestoreOptions(only_matching=True), RestoreOptions(reference_mix=0.5)):
        with pytest.raises(InputError, match="restore_faces restores one candidate"):
            pipe.restore_faces(crops, options=options)

"""detect_faces on the real photos and on synthetic inputs: exact counts, selection, ordering, the
Detections helpers, and clean behaviour on awkward inputs (RGBA, gray, 1x1, 4096x4096, batches, 30 faces)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.face import Detections, align_faces, detect_faces, load_detector

EXPECTED = {"gfpgan_00.jpg": 2, "gfpgan_10045.png": 3, "cf_00.jpg": 4, "cf_02.png": 4, "cf_04.jpg": 1,
            "skimage_astronaut.png": 1}


def read(name: str, folder: str = "whole", mode: str | None = None) -> torch.Tensor:
    from PIL import Image

    with Image.open(shared_path("faces", folder, name)) as im:
        if mode:
            im = im.convert(mode)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy())[None]                  # [1, H, W, C]


@pytest.fixture(scope="module")
def detector():
    return load_detector("retinaface_mobile0.25", shared_path("weights"))


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    return {name: read(name) for name in EXPECTED}


@pytest.fixture(scope="module")
def found(detector, photos) -> dict[str, Detections]:
    return {name: detect_faces(detector, x) for name, x in photos.items()}


@pytest.fixture(scope="module")
def tiled_faces() -> torch.Tensor:
    """30 real faces: a 128 px FFHQ crop tiled 5 x 6 (640 x 768)."""
    face = read("gfpgan_ffhq_gt_00000000.png", "cropped", "RGB").permute(0, 3, 1, 2)
    face = F.interpolate(face, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    return face.repeat(1, 1, 5, 6).permute(0, 2, 3, 1).contiguous()


#----------------------------------------------------------------------------
# Real photos


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_face_count_on_real_photos(found, name):
    dets = found[name]
    assert len(dets) == EXPECTED[name]
    assert dets.counts() == [EXPECTED[name]]
    assert (dets.scores > 0.97).all()


def test_no_false_positive_every_face_re_detects_in_its_aligned_crop(detector, photos, found):
    """A false positive would not look like a face once aligned; every detection must."""
    for name, x in photos.items():
        aligned = align_faces(x.permute(0, 3, 1, 2), found[name], size=256)
        crops = aligned.crops[:, :3].permute(0, 2, 3, 1)
        again = detect_faces(detector, crops, threshold=0.9)
        assert again.counts() == [1] * len(found[name]), name


def test_known_false_positive_is_rejected_by_the_default_threshold(detector, photos):
    """gfpgan_10045 has a face-like patch near (605, 448) scoring about 0.9: RetinaFace's own 0.8 accepts it."""
    x = photos["gfpgan_10045.png"]
    loose = detect_faces(detector, x, threshold=0.8, detect_size=0)
    assert len(loose) == 4
    strict = detect_faces(detector, x, detect_size=0)
    assert len(strict) == 3
    centres = strict.centers
    assert not ((centres[:, 0] - 605).abs() < 20).logical_and((centres[:, 1] - 448).abs() < 20).any()


def test_coordinates_are_mapped_back_from_the_detection_copy(detector, photos, found):
    x = photos["gfpgan_00.jpg"]                                  # 1297 x 1920: detected at 432 x 640
    full = detect_faces(detector, x, detect_size=0)
    small = found["gfpgan_00.jpg"]
    assert len(full) == len(small) == 2
    eye_dist = (full.landmarks[:, 0] - full.landmarks[:, 1]).norm(dim=-1)
    err = (full.landmarks - small.landmarks).norm(dim=-1).max(dim=1).values
    assert (err < 0.15 * eye_dist).all()                         # same faces, same place, input pixels


def test_rgba_and_gray_inputs_find_the_same_faces(detector, photos, found):
    rgba = photos["cf_02.png"]
    assert rgba.shape[-1] == 4
    rgb_only = detect_faces(detector, rgba[..., :3].contiguous())
    assert torch.equal(found["cf_02.png"].boxes, rgb_only.boxes)
    gray = read("skimage_astronaut.png", mode="L")
    assert gray.shape[-1] == 1
    assert len(detect_faces(detector, gray)) == 1


#----------------------------------------------------------------------------
# Selection and ordering


def test_orders(detector, photos):
    x = photos["cf_00.jpg"]
    lr = detect_faces(detector, x, order="left-right")
    cx = lr.centers[:, 0]
    assert (cx[1:] > cx[:-1]).all()
    assert lr.order_index.tolist() == [0, 1, 2, 3]
    tb = detect_faces(detector, x, order="top-bottom")
    assert (tb.centers[1:, 1] >= tb.centers[:-1, 1]).all()
    area = detect_faces(detector, x, order="area")
    a = (area.boxes[:, 2] - area.boxes[:, 0]) * (area.boxes[:, 3] - area.boxes[:, 1])
    assert (a[1:] <= a[:-1]).all()
    score = detect_faces(detector, x, order="score")
    assert (score.scores[1:] <= score.scores[:-1]).all()
    with pytest.raises(InputError, match="left-right"):
        detect_faces(detector, x, order="random")  # type: ignore[arg-type]


def test_selection(detector, photos):
    x = photos["cf_00.jpg"]
    every = detect_faces(detector, x)
    picked = detect_faces(detector, x, selection="0,2")
    assert picked.order_index.tolist() == [0, 2]
    assert torch.equal(picked.boxes, every.boxes[[0, 2]])
    assert detect_faces(detector, x, selection=" 3 , 1,9").order_index.tolist() == [1, 3]   # 9 does not exist
    largest = detect_faces(detector, x, selection="largest")
    areas = (every.boxes[:, 2:] - every.boxes[:, :2]).prod(dim=1)
    assert len(largest) == 1 and largest.order_index.item() == int(areas.argmax())
    centre = detect_faces(detector, x, selection="center")
    d = (every.centers - torch.tensor([491 / 2, 310 / 2])).norm(dim=1)
    assert len(centre) == 1 and centre.order_index.item() == int(d.argmin())
    for bad in ("", "first", "-1", "1;2"):
        with pytest.raises(InputError, match="selection"):
            detect_faces(detector, x, selection=bad)


def test_max_faces_keeps_the_largest_in_order(detector, photos):
    x = photos["cf_00.jpg"]
    every = detect_faces(detector, x)
    two = detect_faces(detector, x, max_faces=2)
    areas = (every.boxes[:, 2:] - every.boxes[:, :2]).prod(dim=1)
    keep = sorted(torch.argsort(areas, descending=True)[:2].tolist())
    assert two.order_index.tolist() == keep


def test_min_size(detector, photos):
    x = photos["gfpgan_10045.png"]
    every = detect_faces(detector, x)
    cut = float(every.sizes.sort().values[1])
    bigger = detect_faces(detector, x, min_size=cut)
    assert len(bigger) == 2 and (bigger.sizes >= cut).all()
    assert len(detect_faces(detector, x, min_size=10_000)) == 0


def test_bad_options(detector, photos):
    x = photos["cf_04.jpg"]
    with pytest.raises(InputError, match="threshold"):
        detect_faces(detector, x, threshold=1.5)
    with pytest.raises(InputError, match="negative"):
        detect_faces(detector, x, max_faces=-1)


#----------------------------------------------------------------------------
# Detections helpers


def test_detections_helpers(found):
    dets = found["cf_02.png"]
    assert len(dets) == 4 and dets.num_images == 1 and dets.image_size == (645, 1204)
    assert dets.boxes.dtype == torch.float32 and dets.image_index.dtype == torch.long
    assert dets.landmarks.shape == (4, 5, 2)
    wh = dets.boxes[:, 2:] - dets.boxes[:, :2]
    assert torch.equal(dets.sizes, wh.min(dim=1).values)
    assert len(dets.for_image(0)) == 4
    with pytest.raises(InputError):
        dets.for_image(1)
    moved = dets.to("cpu")
    assert torch.equal(moved.boxes, dets.boxes)
    doc = dets.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert list(doc[0]) == ["image", "index", "box", "landmarks", "score", "size"]
    assert doc[2]["index"] == 2 and len(doc[2]["landmarks"]) == 5
    # landmarks: eyes above the nose, nose above the mouth, left before right
    lm = dets.landmarks
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 2, 1] > lm[:, 0, 1]).all()
    assert (lm[:, 3, 1] > lm[:, 2, 1]).all()
    with pytest.raises(Exception):
        dets.boxes = torch.zeros(0)  # type: ignore[misc]       # frozen


#----------------------------------------------------------------------------
# Awkward inputs


def test_batch_of_different_frames(detector, photos):
    a = photos["skimage_astronaut.png"][0]
    frames = torch.stack([a, a.flip(1), torch.rand_like(a), a.roll(100, dims=1), torch.zeros_like(a)])
    dets = detect_faces(detector, frames)
    assert dets.counts() == [1, 1, 0, 1, 0]
    assert dets.image_index.tolist() == [0, 1, 3]
    single = detect_faces(detector, a[None])
    assert torch.allclose(dets.boxes[0], single.boxes[0], atol=1e-3)
    flipped_cx = 512 - dets.centers[1, 0]
    assert abs(float(flipped_cx - single.centers[0, 0])) < 4


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 1, 1, 1), (1, 2, 3, 4), (3, 7, 5, 3), (1, 4, 900, 3)])
def test_tiny_images_have_no_faces(detector, shape):
    dets = detect_faces(detector, torch.rand(shape))
    assert len(dets) == 0 and dets.counts() == [0] * shape[0]
    assert dets.boxes.shape == (0, 4) and dets.landmarks.shape == (0, 5, 2)


def test_zero_faces_in_a_real_photo_region(detector, photos):
    sky = photos["skimage_astronaut.png"][:, 300:, :200].contiguous()     # suit and flag
    assert len(detect_faces(detector, sky)) == 0


def test_thirty_faces(detector, tiled_faces):
    dets = detect_faces(detector, tiled_faces)
    assert len(dets) == 30
    rows = (dets.centers[:, 1] // 128).long()
    cols = (dets.centers[:, 0] // 128).long()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 30             # one per tile
    assert detect_faces(detector, tiled_faces, max_faces=5).order_index.numel() == 5


def test_4096_image(detector, photos):
    a = photos["skimage_astronaut.png"].permute(0, 3, 1, 2)
    big = F.interpolate(a, size=(4096, 4096), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    dets = detect_faces(detector, big)
    small = detect_faces(detector, photos["skimage_astronaut.png"])
    assert len(dets) == 1
    assert torch.allclose(dets.boxes / 8, small.boxes, atol=3.0)


def test_nan_input_is_refused(detector, photos):
    x = photos["cf_04.jpg"].clone()
    x[0, 3, 4, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        detect_faces(detector, x)
    with pytest.raises(InputError, match="4-d"):
        detect_faces(detector, x[0])


def test_plain_torch_nms_matches_torchvision():
    tv = pytest.importorskip("torchvision.ops")
    from vspbfr_core.face.detect import nms_reference

    g = torch.Generator().manual_seed(3)
    for n in (0, 1, 5, 200):
        xy = torch.rand(n, 2, generator=g) * 100
        wh = torch.rand(n, 2, generator=g) * 40 + 1
        boxes = torch.cat([xy, xy + wh], dim=1)
        scores = torch.rand(n, generator=g)
        groups = torch.randint(0, 3, (n,), generator=g)
        for iou in (0.2, 0.4, 0.7):
            ours = nms_reference(boxes, scores, groups, iou)
            ref = tv.batched_nms(boxes, scores, groups, iou)
            assert ours.tolist() == ref.tolist()


def test_detection_without_torchvision(detector, photos, found, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision.ops", None)           # import fails -> plain torch NMS
    dets = detect_faces(detector, photos["cf_00.jpg"])
    assert torch.equal(dets.boxes, found["cf_00.jpg"].boxes)


def test_detections_concat_offsets_images_and_keeps_empty_ones() -> None:
    def one(n_faces: int, num_images: int, image: int = 0) -> Detections:
        return Detections(torch.full((n_faces,), image, dtype=torch.long), torch.rand(n_faces, 4),
                          torch.rand(n_faces, 5, 2), torch.rand(n_faces), torch.arange(n_faces), num_images, (32, 48))
    a, empty, c = one(2, 1), Detections.empty(1, (32, 48)), one(1, 2, image=1)
    d = Detections.concat([a, empty, c])
    assert d.num_images == 4 and d.image_size == (32, 48)
    assert d.image_index.tolist() == [0, 0, 3] and d.counts() == [2, 0, 0, 1]
    assert torch.equal(d.boxes, torch.cat([a.boxes, c.boxes]))

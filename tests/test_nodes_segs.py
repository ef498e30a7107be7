"""Impact-Pack SEGS in and out of the node pack (nodes/segs.py, nodes/segs_nodes.py), without ComfyUI or Impact-Pack
(stand-in ``comfy`` / ``folder_paths`` of tests/comfyui/comfyui_stubs.py), with the tiny VSPBFR networks and the
real RetinaFace mobilenet0.25 on real photos (skipped without ../shared).

Covers: the round trip detect -> Faces to SEGS -> SEGS to Faces (every box and landmark within a pixel), the SEG
fields Impact's nodes read, SEGS as a box-only detector gives them (the right faces, pixels outside the SEG masks
untouched by the paste), SEGs without a face, empty SEGS, and the InputErrors for bad SEGS and image batches.
"""
from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))
import comfyui_stubs as stubs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DETECTOR = "retinaface_mobile0.25"
# Impact-Pack's SEG (ltdrdata/ComfyUI-Impact-Pack, modules/impact/core.py): these names in this order
IMPACT_FIELDS = ("cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label", "control_net_wrapper")
ROUND_TRIP = ("skimage_astronaut.png", "gfpgan_10045.png", "cf_02.png", "gfpgan_00.jpg")
MULTI = "cf_00.jpg"            # four faces


def load_rgb(name: str) -> torch.Tensor:
    path = shared_path("faces", "whole", name)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models, temp = stubs.models_folder(tmp_path_factory.mktemp("nodes_segs"),
                                       shared_path("weights", "detection_mobilenet0.25_Final.pth"))
    pack = stubs.load_pack(models, temp)
    env = stubs.pack_env(pack, models=models, temp=temp)
    env.segs = sys.modules[stubs.PACK + ".nodes.segs"]
    yield env
    stubs.unload_pack()


def detect(env, image, size=16, **kw):
    args = dict(facedetection=DETECTOR, threshold=0.97, min_size=0, max_faces=0, selection="all", order="left-right",
                face_size=size)
    args.update(kw)
    return env.nodes["VSPBFRDetectFaces"].detect(**args, image=image)["result"]


def to_segs(env, image, faces, crop_factor=3.0, mask_shape="ellipse", feather=50.0):
    return env.nodes["VSPBFRFacesToSEGS"].convert(image, faces, crop_factor, mask_shape, feather)[0]


def to_faces(env, image, segs, threshold=0.5, size=16):
    return env.nodes["VSPBFRSEGSToFaces"].convert(image, segs, DETECTOR, threshold, size)


def plain_seg(**fields):
    """A SEG that is not our namedtuple (any object with the fields is accepted)."""
    values = dict.fromkeys(IMPACT_FIELDS)
    values.update(fields)
    return types.SimpleNamespace(**values)


def box_seg(env, box, height, width, crop_factor=3.0):
    """A SEG as a box-only detector (YOLO face) makes it: float bbox, rectangular mask = the bbox, numpy score."""
    region = env.segs.crop_region(box, crop_factor, height, width)
    x1, y1, x2, y2 = region
    mask = np.zeros((y2 - y1, x2 - x1), np.float32)
    bx1, by1, bx2, by2 = (int(round(v)) for v in box)
    mask[by1 - y1:by2 - y1, bx1 - x1:bx2 - x1] = 1.0
    return plain_seg(cropped_mask=mask, confidence=np.array([0.9], np.float32), crop_region=region,
                     bbox=np.array(box, np.float32), label="face")


# -- the node table ----------------------------------------------------------------------------------------------------

def test_nodes_registered_with_tooltips(env):
    names = env.pack.NODE_DISPLAY_NAME_MAPPINGS
    assert names["VSPBFRFacesToSEGS"] == "VSPBFR Faces to SEGS" and names["VSPBFRSEGSToFaces"] == "VSPBFR SEGS to Faces"
    for node_id, outputs in (("VSPBFRFacesToSEGS", ("SEGS",)),
                             ("VSPBFRSEGSToFaces", ("VSPBFR_FACES", "IMAGE", "MASK", "INT", "INT"))):
        cls = env.pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.RETURN_TYPES == outputs and cls.CATEGORY == "VSPBFR" and len(cls.DESCRIPTION) > 40
        assert len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS) == len(outputs) and all(cls.OUTPUT_TOOLTIPS)
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional"}
        for name, (_, options) in [*spec["required"].items(), *spec.get("optional", {}).items()]:
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert callable(getattr(cls, cls.FUNCTION))
    spec = env.pack.NODE_CLASS_MAPPINGS["VSPBFRSEGSToFaces"].INPUT_TYPES()["required"]
    assert spec["segs"][0] == "SEGS" and spec["facedetection"][1]["default"] == "auto"
    assert spec["threshold"][1]["default"] < env.ops.DEFAULT_THRESHOLD
    spec = env.pack.NODE_CLASS_MAPPINGS["VSPBFRFacesToSEGS"].INPUT_TYPES()["required"]
    assert spec["crop_factor"][1]["default"] == 3.0 and tuple(spec["mask_shape"][0]) == env.ops.MASK_SHAPES
    assert spec["mask_shape"][1]["default"] == "landmarks"
    optional = env.pack.NODE_CLASS_MAPPINGS["VSPBFRFacesToSEGS"].INPUT_TYPES()["optional"]
    assert list(optional) == ["mask_parts", "parser"]


# -- Faces -> SEGS -----------------------------------------------------------------------------------------------------

def test_faces_to_segs_fields(env):
    image = load_rgb(MULTI)
    faces, _, _, count, _ = detect(env, image)
    assert count == 4
    (height, width), items = to_segs(env, image, faces)
    assert (height, width) == tuple(image.shape[1:3]) and len(items) == count
    dets = faces.detections
    for k, seg in enumerate(items):
        assert type(seg)._fields == IMPACT_FIELDS and tuple(seg) == tuple(getattr(seg, f) for f in IMPACT_FIELDS)
        x1, y1, x2, y2 = seg.crop_region
        assert all(type(v) is int for v in (*seg.crop_region, *seg.bbox))
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        box = dets.boxes[k].tolist()
        bx1, by1, bx2, by2 = seg.bbox
        assert bx1 == max(0, int(np.floor(box[0]))) and by2 == min(height, int(np.ceil(box[3])))
        assert x1 <= bx1 and y1 <= by1 and bx2 <= x2 and by2 <= y2
        # 3x the face box around its centre, unless the image border clips it
        bw = box[2] - box[0]
        if 0 < x1 and x2 < width:
            assert abs((x2 - x1) - 3 * bw) <= 2
        assert torch.equal(seg.cropped_image, image[:, y1:y2, x1:x2]) and seg.cropped_image.shape[-1] == 3
        mask = seg.cropped_mask
        assert isinstance(mask, np.ndarray) and mask.dtype == np.float32 and mask.shape == (y2 - y1, x2 - x1)
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        assert mask[int(cy) - y1, int(cx) - x1] > 0.5
        assert mask[0, 0] == 0.0 or x1 == 0 or y1 == 0       # the ellipse does not reach the region's corner
        assert seg.confidence == pytest.approx(float(dets.scores[k])) and seg.label == "face"
        assert seg.control_net_wrapper is None


def test_face_masks_are_the_paste_masks(env):
    image = load_rgb(MULTI)
    faces, crops, _, _, _ = detect(env, image)
    height, width = image.shape[1:3]
    for shape, feather in (("ellipse", 50.0), ("square", 20.0), ("landmarks", 50.0)):
        masks = env.segs.face_masks(faces, height, width, mask_shape=shape, feather=feather)
        assert masks.shape == (4, height, width) and masks.dtype == torch.float32
        _, union = env.ops.paste(image, faces, crops, feather=feather, mask_shape=shape)
        expected = 1 - torch.prod(1 - masks, dim=0)
        assert torch.allclose(union[0].cpu(), expected, atol=1e-5)
        assert all(float(m.max()) > 0.99 for m in masks)


def test_faces_to_segs_refuses_batches_and_gives_empty_segs(env):
    image = load_rgb(MULTI)
    faces = detect(env, image)[0]
    with pytest.raises(env.errors.InputError, match="one image.*Image Batch to Image List"):
        to_segs(env, image.expand(2, -1, -1, -1), faces)
    with pytest.raises(env.errors.InputError, match="connect the image these faces were found in"):
        to_segs(env, image[:, :200], faces)
    blank = torch.full((1, 64, 80, 3), 0.5)
    none = detect(env, blank)[0]
    assert len(none) == 0 and to_segs(env, blank, none) == ((64, 80), [])
    with pytest.raises(env.errors.InputError, match="crop_factor"):
        to_segs(env, image, faces, crop_factor=0.5)


# -- SEGS -> Faces -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_keeps_boxes_and_landmarks(env, name):
    image = load_rgb(name)
    faces, _, _, count, _ = detect(env, image)
    assert count >= 1
    segs = to_segs(env, image, faces)
    # as plain objects: nothing of ours travels in the SEGs but what Impact's SEG holds
    plain = (segs[0], [plain_seg(**s._asdict()) for s in segs[1]])
    back, crops, masks, n, dropped = to_faces(env, image, plain)
    assert (n, dropped) == (count, 0) and crops.shape == (count, 16, 16, 3) and masks.shape == (count, 16, 16)
    a, b = faces.detections, back.detections
    box_err = float((a.boxes - b.boxes).abs().max())
    landmark_err = float((a.landmarks - b.landmarks).abs().max())
    assert box_err < 0.5 and landmark_err < 0.5, (box_err, landmark_err)     # measured: at most 0.01 px
    assert torch.equal(b.order_index, torch.arange(count)) and torch.equal(b.image_index, torch.zeros(count).long())
    assert torch.allclose(a.scores, b.scores, atol=0.01)
    assert back.detector == DETECTOR and back.limit.shape == (1, *image.shape[1:3])


def test_box_only_segs_restore_only_those_faces(env):
    image = load_rgb(MULTI)
    height, width = image.shape[1:3]
    faces = detect(env, image)[0]
    dets = faces.detections
    picked = [0, 2]
    items = []
    for k in picked:                   # a YOLO-like box: a little wider and taller than RetinaFace's
        x1, y1, x2, y2 = dets.boxes[k].tolist()
        dx, dy = 0.08 * (x2 - x1), 0.08 * (y2 - y1)
        items.append(box_seg(env, [max(0.0, x1 - dx), max(0.0, y1 - dy), min(width, x2 + dx), min(height, y2 + dy)],
                             height, width))
    found, crops, _, count, dropped = to_faces(env, image, ((height, width), items))
    assert (count, dropped) == (2, 0)
    lm_err = float((found.detections.landmarks - dets.landmarks[picked]).abs().max())
    assert lm_err < 1.5, lm_err
    # the limit is the union of the rectangular SEG masks, zero elsewhere
    limit = found.limit
    expected = torch.zeros(1, height, width)
    for seg in items:
        x1, y1, x2, y2 = seg.crop_region
        expected[0, y1:y2, x1:x2] = torch.maximum(expected[0, y1:y2, x1:x2], torch.from_numpy(seg.cropped_mask))
    assert torch.equal(limit, expected) and 0 < float(limit.mean()) < 0.5
    # restore + paste: nothing changes outside the SEG masks
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, None, found)["result"][0]
    out = env.nodes["VSPBFRPasteFaces"].paste(image, found, restored, 1.0, 50.0, "square", "none", 1.0)[0]
    probe = env.ops.paste(image, env.handles.FaceSet(found.detections, found.aligned, found.detector,
                                                     limit=torch.zeros(1, height, width)), restored)[0]
    assert torch.equal(probe, image)                                   # a zero limit: nothing pasted at all
    outside = limit[0] == 0
    assert torch.equal(out[0][outside], image[0][outside])
    assert not torch.equal(out[0][~outside], image[0][~outside])


def test_seg_without_a_face_is_dropped_and_counted(env, caplog):
    image = load_rgb(MULTI)
    height, width = image.shape[1:3]
    faces = detect(env, image)[0]
    boxes = faces.detections.boxes
    empty = [float(width) - 60, float(height) - 60, float(width) - 4, float(height) - 4]   # a corner: no face
    lo = torch.maximum(boxes[:, :2], torch.tensor(empty[:2]))
    hi = torch.minimum(boxes[:, 2:], torch.tensor(empty[2:]))
    assert not bool(((hi - lo) > 0).all(dim=1).any())          # no face box overlaps it
    face = boxes[1].tolist()
    segs = ((height, width), [box_seg(env, empty, height, width, crop_factor=1.0), box_seg(env, face, height, width)])
    with caplog.at_level(logging.WARNING):
        found, _, _, count, dropped = to_faces(env, image, segs)
    assert (count, dropped) == (1, 1)
    assert torch.allclose(found.detections.boxes[0], boxes[1], atol=1.5)
    assert any("1 of 2 SEG" in r.getMessage() and "SEG 0" in r.getMessage() for r in caplog.records)
    # a SEG around one face whose crop also shows its neighbour: the neighbour is not taken
    segs = ((height, width), [box_seg(env, face, height, width, crop_factor=6.0)])
    found = to_faces(env, image, segs)[0]
    assert len(found) == 1 and torch.allclose(found.detections.boxes[0], boxes[1], atol=1.5)


def test_empty_segs_pass_the_image_through(env, caplog):
    image = load_rgb(MULTI)
    height, width = image.shape[1:3]
    with caplog.at_level(logging.WARNING):
        faces, crops, masks, count, dropped = to_faces(env, image, ((height, width), []))
    assert (count, dropped, len(faces)) == (0, 0, 0) and any("no SEG" in r.getMessage() for r in caplog.records)
    assert crops.shape == (1, 16, 16, 3) and not bool(crops.any()) and not bool(masks.any())
    restored = env.nodes["VSPBFRRestoreFaces"].restore(env.model, crops, 3, 1.0, 1.0, None, faces)["result"][0]
    out, mask, _ = env.nodes["VSPBFRPasteFaces"].paste(image, faces, restored, 1.0, 50.0, "square", "none", 1.0)
    assert torch.equal(out, image) and not bool(mask.any())


def test_mask_types_impact_uses_are_accepted(env):
    image = load_rgb(MULTI)
    height, width = image.shape[1:3]
    faces = detect(env, image)[0]
    base = box_seg(env, faces.detections.boxes[3].tolist(), height, width)
    x1, y1, x2, y2 = base.crop_region
    variants = {
        "torch [1, h, w]": torch.from_numpy(base.cropped_mask)[None],
        "torch [h, w]": torch.from_numpy(base.cropped_mask),
        "numpy bool": base.cropped_mask > 0.5,
        "numpy float64": base.cropped_mask.astype(np.float64),
    }
    for what, mask in variants.items():
        bbox = tuple(np.int64(v) for v in np.round(base.bbox))          # as Impact's mask detectors give it
        seg = plain_seg(**{**vars(base), "cropped_mask": mask, "bbox": bbox, "crop_region": list(base.crop_region)})
        found = to_faces(env, image, ((height, width), [seg]))[0]
        assert len(found) == 1 and torch.equal(found.limit[0, y1:y2, x1:x2], torch.from_numpy(base.cropped_mask)), what
    # no mask: the bbox rectangle limits the paste
    found = to_faces(env, image, ((height, width), [plain_seg(**{**vars(base), "cropped_mask": None})]))[0]
    bx1, by1, bx2, by2 = env.segs._int_box(base.bbox, height, width)
    assert len(found) == 1 and float(found.limit.sum()) == (bx2 - bx1) * (by2 - by1)
    assert float(found.limit[0, by1:by2, bx1:bx2].min()) == 1.0


def _bad_cases(h, w, seg):
    x1, y1, x2, y2 = seg.crop_region
    mask = seg.cropped_mask

    def with_(**kw):
        return ((h, w), [seg, plain_seg(**{**vars(seg), **kw})])

    return [
        ("abc", "expected SEGS"),
        (((h, w),), "expected SEGS"),
        (((h, w), "x"), "expected SEGS"),
        (((0, w), []), "two positive ints"),
        ((("a", w), []), "two positive ints"),
        (((h, w, 3), []), "two positive ints"),
        (((h + 1, w), []), "connect the image the SEGS were detected in"),
        (((h, w), [seg, types.SimpleNamespace(crop_region=seg.crop_region, cropped_mask=mask)]), "SEG 1 has no bbox"),
        (with_(crop_region=[x1, y1, x2]), "SEG 1: crop_region: expected 4 numbers"),
        (with_(crop_region=["a", y1, x2, y2]), "SEG 1: crop_region: expected 4 numbers"),
        (with_(crop_region=[x1 - 10_000, y1, x2, y2]), "SEG 1: crop_region .* outside"),
        (with_(crop_region=[x1, y1, w + 1, y2]), "SEG 1: crop_region .* outside"),
        (with_(crop_region=[x1, y1, x1, y2]), "SEG 1: crop_region .* empty"),
        (with_(crop_region=[x1 + 0.5, y1, x2, y2]), "SEG 1: crop_region .* whole pixels"),
        (with_(bbox=[1.0, 2.0]), "SEG 1: bbox: expected 4 numbers"),
        (with_(bbox=[0, 0, w + 5, 10]), "SEG 1: bbox .* outside"),
        (with_(bbox=[5, 5, 5, 9]), "SEG 1: bbox .* empty"),
        (with_(bbox=[float("nan"), 0, 5, 5]), "SEG 1: bbox: expected 4 numbers"),
        (with_(cropped_mask=np.stack([mask, mask])), "SEG 1: cropped_mask: expected a 2-D mask"),
        (with_(cropped_mask=mask[:-1]), "SEG 1: cropped_mask: the mask is .* crop region"),
        (with_(cropped_mask=np.where(mask > 0, np.nan, 0).astype(np.float32)), "SEG 1: cropped_mask: .*NaN"),
        (with_(cropped_mask="mask"), "SEG 1: cropped_mask: expected a numpy array"),
    ]


def test_bad_segs_are_input_errors(env):
    image = load_rgb(MULTI)
    height, width = image.shape[1:3]
    faces = detect(env, image)[0]
    seg = box_seg(env, faces.detections.boxes[0].tolist(), height, width)
    for segs, message in _bad_cases(height, width, seg):
        with pytest.raises(env.errors.InputError, match=message):
            to_faces(env, image, segs)
    with pytest.raises(env.errors.InputError, match="one image.*Image Batch to Image List"):
        to_faces(env, image.expand(2, -1, -1, -1), ((height, width), [seg]))
    with pytest.raises(env.errors.InputError, match="threshold"):
        to_faces(env, image, ((height, width), [seg]), threshold=1.5)


def test_a_face_too_small_for_the_whole_image_detection_is_found(env):
    # a 96 px face in a 2048 px image: 24 px at the scale the whole image is detected at, too small for RetinaFace;
    # its SEG's crop is looked at again at its own resolution
    small = torch.nn.functional.interpolate(load_rgb("skimage_astronaut.png").permute(0, 3, 1, 2), size=(96, 96),
                                            mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    image = torch.full((1, 2048, 2048, 3), 0.5)
    image[:, 900:996, 700:796] = small
    assert detect(env, image, threshold=0.5)[3] == 0
    alone = detect(env, small, threshold=0.5)[0].detections
    assert len(alone) == 1
    box = (alone.boxes[0] + torch.tensor([700.0, 900.0, 700.0, 900.0])).tolist()
    found, _, _, count, dropped = to_faces(env, image, ((2048, 2048), [box_seg(env, box, 2048, 2048)]))
    assert (count, dropped) == (1, 0)
    iou, _ = env.segs._iou(found.detections.boxes, torch.tensor(box))    # a 15 px face: a few px of jitter
    assert float(iou[0]) > 0.7

"""Paste masks that follow the face (vspbfr_core.face.masks) and the user / occlusion mask (paste_faces limit=,
pipeline mask=, restore --mask, the nodes' MASK input and FaceSet.limit)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.face import (DEFAULT_MASK_SHAPE, MASK_SHAPES, Detections, align_faces, detect_faces, face_mask,
                              face_template, load_detector, paste_faces)
from vspbfr_core.face.masks import crop_landmarks, landmark_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTOS = ("skimage_astronaut.png", "gfpgan_10045.png", "cf_02.png")


def load_photo(name: str) -> torch.Tensor:
    path = shared_path("faces", "whole", name)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def detector():
    return load_detector("retinaface_mobile0.25", [shared_path("weights")])


@pytest.fixture(scope="module")
def real_faces(detector):
    """(image BHWC, AlignedFaces at 512) for each real photo."""
    out = []
    for name in PHOTOS:
        image = load_photo(name)
        dets = detect_faces(detector, image)
        out.append((image, align_faces(image.permute(0, 3, 1, 2), dets)))
    return out


def template_faces(size: int = 128, count: int = 1, batch: int = 1, height: int = 160, width: int = 200,
                   scale: float = 0.35) -> tuple[torch.Tensor, Detections]:
    """A smooth random image batch and detections whose landmarks are the FFHQ template placed in it."""
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(batch, 3, height // 8, width // 8, generator=gen),
                                             size=(height, width), mode="bilinear", align_corners=False)
    t = face_template(512).float() * scale
    landmarks, index = [], []
    for b in range(batch):
        for k in range(count):
            landmarks.append(t + torch.tensor([10.0 + 70.0 * k, 12.0]))
            index.append(b)
    lm = torch.stack(landmarks)
    boxes = torch.cat([lm.min(dim=1).values - 10, lm.max(dim=1).values + 10], dim=1)
    dets = Detections(boxes=boxes, scores=torch.ones(len(index)), landmarks=lm,
                      image_index=torch.tensor(index), order_index=torch.arange(len(index)) % count,
                      num_images=batch, image_size=(height, width))
    return images, dets


# -- the landmark mask ---------------------------------------------------------------------------------------------

def test_shapes_and_default():
    assert MASK_SHAPES == ("square", "ellipse", "landmarks", "parsing")
    assert DEFAULT_MASK_SHAPE == "landmarks"            # decided by benchmarks/bench_faces.py --seams (RESULTS.md)


def test_landmark_mask_on_real_photos_covers_the_landmarks_with_a_soft_edge(real_faces):
    faces = 0
    for _, aligned in real_faces:
        masks = landmark_masks(crop_landmarks(aligned, 512), 512, 50.0)
        assert masks.shape == (len(aligned), 512, 512) and masks.dtype == torch.float32
        for m, points in zip(masks, aligned.landmarks):
            faces += 1
            for x, y in points.tolist():                                   # the five landmarks are inside
                assert float(m[round(y), round(x)]) > 0.99
            assert float(m.min()) == 0.0 and float(m.max()) == 1.0
            ramp = ((m > 0.02) & (m < 0.98)).float().mean()
            assert 0.03 < float(ramp) < 0.4                                 # a soft edge, not a hard one
            steps = max(float((m[:, 1:] - m[:, :-1]).abs().max()), float((m[1:] - m[:-1]).abs().max()))
            assert steps < 0.06         # smootherstep over 50 px rises by at most 1.9 / 50 per pixel: no jump
            edge = torch.cat([m[:2].flatten(), m[-2:].flatten(), m[:, :2].flatten(), m[:, -2:].flatten()])
            assert float(edge.max()) == 0.0                                 # zero at the crop border: no step there
            for y, x in ((5, 5), (5, 506), (506, 5), (506, 506), (20, 256)):   # corners and the hair above
                assert float(m[y, x]) == 0.0
    assert faces >= 8


def test_landmark_mask_follows_the_landmarks():
    t = face_template(256).unsqueeze(0)
    base = landmark_masks(t, 256, 20.0)[0]
    moved = landmark_masks(t + torch.tensor([30.0, 10.0]), 256, 20.0)[0]
    ys, xs = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")

    def centre(m):
        return float((m * xs).sum() / m.sum()), float((m * ys).sum() / m.sum())

    (x0, y0), (x1, y1) = centre(base), centre(moved)
    assert abs(x1 - x0 - 30.0) < 2.0 and abs(y1 - y0 - 10.0) < 2.0
    # a turned head: the nose moves right of the eye / mouth midline, the outline's cheeks move with the face
    turned = t.clone()
    turned[0, 2, 0] += 25.0
    m = landmark_masks(turned, 256, 20.0)[0]
    assert centre(m)[0] < x0 - 3.0
    # a face turned in the picture (rotated landmarks): so is the mask
    angle = math.radians(30.0)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=t.dtype)
    middle = t.mean(dim=1, keepdim=True)
    rotated = landmark_masks((t - middle) @ rot.T + middle, 256, 20.0)[0]
    assert abs(float(rotated.sum() - base.sum())) / float(base.sum()) < 0.03
    assert not torch.allclose(rotated, base, atol=0.5)


def test_landmark_mask_hard_edge_and_sizes():
    t = face_template(512).unsqueeze(0)
    hard = landmark_masks(t, 512, 0.0)[0]
    assert set(torch.unique(hard).tolist()) == {0.0, 1.0}
    big = landmark_masks(t, 512, 50.0)
    small = landmark_masks(face_template(128).unsqueeze(0), 128, 50.0)
    down = torch.nn.functional.avg_pool2d(big[:, None], 4)[:, 0]
    assert float((down - small).abs().max()) < 0.05                  # the same shape at every crop size
    assert landmark_masks(torch.zeros(0, 5, 2), 64, 50.0).shape == (0, 64, 64)


def test_crop_landmarks_fall_back_to_the_template_and_scale():
    images, dets = template_faces()
    aligned = align_faces(images, dets, size=128)
    assert torch.allclose(crop_landmarks(aligned, 128), face_template(128).expand(1, 5, 2), atol=1e-3)
    assert torch.allclose(crop_landmarks(aligned, 512), face_template(512).expand(1, 5, 2), atol=1e-2)
    from dataclasses import replace
    assert torch.equal(crop_landmarks(replace(aligned, landmarks=None), 64), face_template(64).expand(1, 5, 2))


def test_paste_with_landmarks_keeps_the_hair_and_background_square_does_not(real_faces):
    image, aligned = real_faces[0]                                       # the astronaut
    bchw = image.permute(0, 3, 1, 2)
    changed = (aligned.crops + 0.25).clamp(0, 1)
    square, _ = paste_faces(bchw, changed, aligned, mask_shape="square")
    ours, mask = paste_faces(bchw, changed, aligned, mask_shape="landmarks")
    m = landmark_masks(crop_landmarks(aligned, 512), 512, 50.0)[0]
    hair = (slice(None), slice(None), slice(0, 20), slice(None))          # hair above the forehead in the crop
    # map the crop's top rows to the image: every pixel the landmark paste changed lies where its mask is > 0
    diff = (ours - bchw).abs().amax(dim=1)[0]
    assert bool(((diff > 0) <= (mask[0] > 0)).all())
    assert float((square - bchw).abs().amax(dim=1).gt(0).float().sum()) > 1.5 * float(diff.gt(0).float().sum())
    assert float(m[hair[2:]].max()) == 0.0


def test_square_and_ellipse_stay_as_they_were():
    images, dets = template_faces(count=2)
    aligned = align_faces(images, dets, size=64)
    restored = (aligned.crops * 0.5 + 0.3).clamp(0, 1)
    for shape in ("square", "ellipse"):
        out, mask = paste_faces(images, restored, aligned, mask_shape=shape)
        again, mask2 = paste_faces(images, restored, aligned, mask_shape=shape, limit=torch.ones(160, 200))
        assert torch.equal(out, again) and torch.equal(mask, mask2)      # an all-ones limit changes nothing
    with pytest.raises(InputError, match="mask_shape 'hexagon'"):
        paste_faces(images, restored, aligned, mask_shape="hexagon")
    with pytest.raises(InputError, match="face-parsing network"):
        paste_faces(images, restored, aligned, mask_shape="parsing")


# -- the user / occlusion mask -------------------------------------------------------------------------------------

def test_user_mask_leaves_every_pixel_outside_it_identical():
    images, dets = template_faces(count=2, batch=2)
    aligned = align_faces(images, dets, size=64)
    restored = torch.rand(aligned.crops.shape, generator=torch.Generator().manual_seed(1))
    limit = torch.zeros(2, 160, 200)
    limit[0, :, :60] = 1.0                                    # image 0: only its left part may change
    limit[1, 40:120, 20:150] = torch.linspace(0, 1, 130)      # image 1: a soft region
    for shape in ("square", "landmarks"):
        out, mask = paste_faces(images, restored, aligned, mask_shape=shape, limit=limit)
        outside = (limit == 0).unsqueeze(1).expand_as(images)
        assert torch.equal(out[outside], images[outside])
        assert float(mask[limit == 0].max()) == 0.0
        assert float((out - images).abs()[~outside].max()) > 0.1           # inside it the faces were pasted
    one, _ = paste_faces(images, restored, aligned, limit=limit[0])        # one [H, W] mask for every image
    both, _ = paste_faces(images, restored, aligned, limit=limit[:1].expand(2, -1, -1))
    assert torch.equal(one, both)


def test_user_mask_with_upscale_keeps_the_resized_background():
    images, dets = template_faces()
    aligned = align_faces(images, dets, size=64)
    restored = torch.rand(aligned.crops.shape, generator=torch.Generator().manual_seed(2))
    limit = torch.zeros(160, 200)
    limit[:, 100:] = 1.0
    out, _ = paste_faces(images, restored, aligned, limit=limit, upscale=2.0)
    background, _ = paste_faces(images, restored, aligned, visibility=0.0, upscale=2.0)
    assert out.shape[-2:] == (320, 400)
    assert torch.equal(out[..., :200], background[..., :200])
    assert not torch.equal(out[..., 200:], background[..., 200:])


@pytest.mark.parametrize("limit, message", [
    (torch.ones(10, 10), "the mask is"),
    (torch.ones(3, 160, 200), "the mask is"),
    (torch.full((160, 200), float("nan")), "NaN"),
    (torch.full((160, 200), 2.0), r"\[0, 1\]"),
    (np.ones((160, 200)), "float tensor"),
    (torch.ones(160, 200, dtype=torch.int64), "float tensor"),
])
def test_bad_user_masks_are_refused(limit, message):
    images, dets = template_faces()
    aligned = align_faces(images, dets, size=64)
    with pytest.raises(InputError, match=message):
        paste_faces(images, aligned.crops, aligned, limit=limit)


# -- pipeline, CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tiny_models_dir):
    from vspbfr_core.pipeline import VSPBFRPipeline

    return VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25")


def test_pipeline_mask_and_shapes(pipeline):
    from vspbfr_core.pipeline import RestoreOptions

    image = load_photo("gfpgan_10045.png")
    h, w = image.shape[1:3]
    mask = torch.zeros(h, w)
    mask[:, : w // 2] = 1.0
    result = pipeline(image, RestoreOptions(), mask=mask)
    assert result.faces_found == 3
    assert torch.equal(result.images[..., w // 2:, :], image[..., w // 2:, :])
    assert bool((result.images[..., : w // 2, :] != image[..., : w // 2, :]).any())
    changed = {}
    for shape in ("square", "ellipse", "landmarks"):
        out = pipeline(image, RestoreOptions(mask_shape=shape)).images
        changed[shape] = float((out != image).any(dim=-1).float().mean())
    assert changed["landmarks"] < changed["ellipse"] < changed["square"]
    with pytest.raises(InputError, match="mask is"):
        pipeline(image, mask=torch.ones(5, 5))
    with pytest.raises(InputError, match="load_parser"):
        pipeline(image, RestoreOptions(mask_shape="parsing"))
    with pytest.raises(InputError, match="'hair' cannot be pasted"):
        RestoreOptions(mask_parts="skin,hair").validate()


def write_mask(path: Path, size: tuple[int, int], left: float) -> Path:
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint8)
    arr[:, : int(w * left)] = 255
    Image.fromarray(arr, mode="L").save(path)
    return path


def test_cli_mask_file(tiny_models_dir, tmp_path, capfd):
    from vspbfr_core.cli import main

    src = shared_path("faces", "whole", "gfpgan_10045.png")
    w, h = Image.open(src).size
    mask = write_mask(tmp_path / "mask.png", (w, h), 0.5)
    out = tmp_path / "out"
    common = ["--models", str(tiny_models_dir), "--detector", "mobile0.25"]
    assert main(["restore", str(src), "-o", str(out), "--mask", str(mask), *common]) == 0
    a = np.asarray(Image.open(src).convert("RGB"))
    b = np.asarray(Image.open(out / src.name).convert("RGB"))
    assert (a[:, w // 2:] == b[:, w // 2:]).all() and (a[:, : w // 2] != b[:, : w // 2]).any()
    # a mask of another size: that file fails with the reason, nothing is written
    small = write_mask(tmp_path / "small.png", (w // 2, h), 0.5)
    assert main(["restore", str(src), "-o", str(tmp_path / "o2"), "--mask", str(small), *common]) == 1
    assert "mask is" in capfd.readouterr().err and not (tmp_path / "o2" / src.name).exists()
    # refused before anything loads
    assert main(["restore", str(src), "-o", str(tmp_path / "o3"), "--mask", str(mask), "--aligned", *common]) == 1
    err = capfd.readouterr().err
    assert "--mask: --aligned" in err and "loading" not in err
    assert main(["restore", str(src), "-o", str(tmp_path / "o4"), "--mask", str(tmp_path / "no.png"), *common]) == 1
    err = capfd.readouterr().err
    assert "--mask" in err and "no.png" in err and "loading" not in err


def test_cli_mask_shapes(tiny_models_dir, tmp_path, capfd):
    from vspbfr_core.cli import main

    src = shared_path("faces", "whole", "skimage_astronaut.png")
    common = ["--models", str(tiny_models_dir), "--detector", "mobile0.25"]
    outs = {}
    for shape in ("square", "landmarks"):
        assert main(["restore", str(src), "-o", str(tmp_path / shape), "--mask-shape", shape, *common]) == 0
        outs[shape] = np.asarray(Image.open(tmp_path / shape / src.name).convert("RGB"))
    assert main(["restore", str(src), "-o", str(tmp_path / "default"), *common]) == 0
    default = np.asarray(Image.open(tmp_path / "default" / src.name).convert("RGB"))
    assert (default == outs["landmarks"]).all() and (default != outs["square"]).any()
    # parsing without its file: an error naming the file and the download command, before any network loads
    capfd.readouterr()
    assert main(["restore", str(src), "-o", str(tmp_path / "p"), "--mask-shape", "parsing", *common]) == 1
    err = capfd.readouterr().err
    assert "parsing_parsenet.pth" in err and "--only parsing" in err and "loading" not in err


def test_sequence_mask(pipeline):
    from vspbfr_core.pipeline import RestoreOptions
    from vspbfr_core.temporal import restore_sequence

    image = load_photo("skimage_astronaut.png")
    frames = image.expand(3, -1, -1, -1).contiguous()
    mask = torch.zeros(image.shape[1:3])
    mask[:, 256:] = 1.0
    out = torch.cat(list(restore_sequence(pipeline, frames, RestoreOptions(), mask=mask)))
    assert out.shape == frames.shape
    assert torch.equal(out[:, :, :256], frames[:, :, :256]) and bool((out[:, :, 256:] != frames[:, :, 256:]).any())


# -- the nodes -------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import comfyui_stubs as stubs

    models, temp = stubs.models_folder(tmp_path_factory.mktemp("masks"),
                                       shared_path("weights", "detection_mobilenet0.25_Final.pth"))
    pack = stubs.load_pack(models, temp)
    yield stubs.pack_env(pack, models=models, temp=temp, photo=load_photo("gfpgan_10045.png"))
    stubs.unload_pack()


def test_nodes_mask_input_and_shapes(env):
    photo = env.photo
    h, w = photo.shape[1:3]
    detect = env.nodes["VSPBFRDetectFaces"].detect
    faces, crops, _, count, source = detect(facedetection="retinaface_mobile0.25", threshold=0.97, min_size=0,
                                            max_faces=0, selection="all", order="left-right", face_size=64,
                                            image=photo)["result"]
    assert count == 3
    paste = env.nodes["VSPBFRPasteFaces"]
    assert paste.INPUT_TYPES()["required"]["mask_shape"][1]["default"] == "landmarks"
    changed = (crops * 0.5).contiguous()
    mask = torch.zeros(1, h, w)
    mask[:, : h // 4] = 1.0                                       # cuts through the faces
    out, out_mask, _ = paste.paste(source, faces, changed, 1.0, 50.0, "landmarks", "none", 1.0, mask=mask)
    assert torch.equal(out[:, h // 4:], photo[:, h // 4:]) and bool((out[:, : h // 4] != photo[:, : h // 4]).any())
    assert float(out_mask[:, h // 4:].max()) == 0.0
    plain, _, _ = paste.paste(source, faces, changed, 1.0, 50.0, "landmarks", "none", 1.0)
    # FaceSet.limit (SEGS masks) and the MASK input multiply
    from dataclasses import replace
    limited = replace(faces, limit=mask.clone())
    again, _, _ = paste.paste(source, limited, changed, 1.0, 50.0, "landmarks", "none", 1.0)
    assert torch.equal(again, out)
    cross = torch.zeros(1, h, w)
    cross[..., : w // 2] = 1.0
    both, _, _ = paste.paste(source, limited, changed, 1.0, 50.0, "landmarks", "none", 1.0, mask=cross)
    assert torch.equal(both[:, :, w // 2:], photo[:, :, w // 2:]) and torch.equal(both[:, h // 4:], photo[:, h // 4:])
    assert not torch.equal(plain, out)
    with pytest.raises(Exception, match="the mask is"):           # the pack's own InputError class
        paste.paste(source, faces, changed, 1.0, 50.0, "landmarks", "none", 1.0, mask=torch.ones(1, 8, 8))
    with pytest.raises(Exception, match="'hair' cannot be pasted"):
        paste.paste(source, faces, changed, 1.0, 50.0, "parsing", "none", 1.0, mask_parts="hair")


def test_all_in_one_mask_widgets(env):
    photo = env.photo
    h, w = photo.shape[1:3]
    node = env.nodes["VSPBFRFaceRestore"]
    optional = node.INPUT_TYPES()["optional"]
    assert optional["mask_shape"][1]["default"] == "landmarks" and optional["mask"][0] == "MASK"
    args = dict(facedetection="retinaface_mobile0.25", fidelity=1.0, visibility=1.0, only_center_face=False,
                selection="all", upscale=1.0, seed=1, image=photo)
    mask = torch.zeros(h, w)
    mask[:, w // 2:] = 1.0
    out = node.restore(env.model, **args, mask=mask)["result"][0]
    assert torch.equal(out[:, :, : w // 2], photo[:, :, : w // 2])
    square = node.restore(env.model, **args, mask_shape="square")["result"][0]
    default = node.restore(env.model, **args)["result"][0]
    assert not torch.equal(square, default)
    assert float((square != photo).any(dim=-1).float().mean()) > float((default != photo).any(dim=-1).float().mean())


# -- the parsing mask ------------------------------------------------------------------------------------------------

class LeftHalfParser:
    """Stands in for a FaceParser's part probabilities: 'face' on the left 60 % of every crop whose mean is below
    0.9 (the restored crops are made brighter: the original and restored crops then disagree on the right)."""

    def __new__(cls, net):
        from vspbfr_core.face.parsing import FaceParser

        class Stub(FaceParser):
            calls: list = []

            def part_probability(self, crops, parts=None):
                self.calls.append(tuple(parts))
                size = crops.shape[-1]
                out = torch.zeros(crops.shape[0], size, size)
                out[:, :, : int(0.6 * size)] = 1.0
                bright = crops.mean(dim=(1, 2, 3)) > 0.9
                out[bright, :, int(0.4 * size):] = 0.0                    # a restored crop: only the left 40 %
                return out.to(crops.device)

        return Stub("bisenet", net, size=32)


def test_parsing_mask_pastes_only_where_both_crops_are_face():
    from vspbfr_core.face.parsing import build_parser_network
    from vspbfr_core.face.masks import parsing_masks

    parser = LeftHalfParser(build_parser_network("bisenet"))
    images, dets = template_faces()
    aligned = align_faces(images, dets, size=128)
    restored = torch.full_like(aligned.crops, 0.95)
    masks = parsing_masks(parser, restored, aligned.crops, 50.0, "skin,eyes")
    assert parser.calls[-2:] == [("skin", "eyes"), ("skin", "eyes")]
    assert masks.shape == (1, 128, 128)
    assert float(masks[0, :, int(0.4 * 128):].max()) == 0.0              # the restored crop says: not face
    assert float(masks[0, 64, 20]) > 0.99 and float(masks[0, :1].max()) == 0.0 and float(masks[0, :, :1].max()) == 0.0
    out, mask = paste_faces(images, restored, aligned, mask_shape="parsing", parser=parser, mask_parts="skin")
    ref = paste_faces(images, restored, aligned, mask_shape="square")[1]
    assert float(mask.sum()) < 0.5 * float(ref.sum())
    changed = (out != images).any(dim=1)
    assert bool(changed.any()) and bool((changed <= (mask > 0)).all())
    with pytest.raises(InputError, match="FaceParser"):
        paste_faces(images, restored, aligned, mask_shape="parsing", parser=object())
    with pytest.raises(InputError, match="'hat' cannot be pasted"):
        paste_faces(images, restored, aligned, mask_shape="parsing", parser=parser, mask_parts="hat")


def test_parsing_paste_through_the_pipeline_with_a_real_network_file(pipeline, tmp_path):
    from vspbfr_core.face.parsing import FaceParser, build_parser_network
    from vspbfr_core.pipeline import RestoreOptions

    torch.manual_seed(0)
    net = build_parser_network("bisenet")
    path = tmp_path / "parsing_bisenet.pth"
    torch.save(net.state_dict(), path)
    try:
        parser = pipeline.load_parser("bisenet", file=path)
        assert isinstance(parser, FaceParser) and pipeline.parser is parser
        image = load_photo("skimage_astronaut.png")
        result = pipeline(image, RestoreOptions(mask_shape="parsing"))
        assert result.faces_found == 1 and torch.isfinite(result.images).all()
        assert 0.0 <= float(result.masks.min()) and float(result.masks.max()) <= 1.0
        changed = (result.images != image).any(dim=-1)[0]
        assert bool((changed <= (result.masks[0] > 0)).all())
    finally:
        pipeline.parser = None

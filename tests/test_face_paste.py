"""paste_faces: masks, visibility, colour correction, upscale, overlaps, channel layouts, refusals."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.face import Detections, align_faces, detect_faces, load_detector, paste_faces
from vspbfr_core.face.paste import FEATHER_DEFAULT, color_correct, face_mask


def read(name: str, folder: str = "whole") -> torch.Tensor:
    from PIL import Image

    with Image.open(shared_path("faces", folder, name)) as im:
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]


@pytest.fixture(scope="module")
def detector():
    return load_detector("retinaface_mobile0.25", shared_path("weights"))


@pytest.fixture(scope="module")
def astronaut(detector):
    x = read("skimage_astronaut.png")
    dets = detect_faces(detector, x)
    images = x.permute(0, 3, 1, 2).contiguous()
    return images, dets, align_faces(images, dets)


@pytest.fixture(scope="module")
def family(detector):
    x = read("gfpgan_10045.png")
    dets = detect_faces(detector, x)
    images = x.permute(0, 3, 1, 2).contiguous()
    return images, dets, align_faces(images, dets)


def smooth_image(x: torch.Tensor) -> torch.Tensor:
    for _ in range(3):
        x = F.avg_pool2d(x, 9, 1, 4, count_include_pad=False)
    return x


def tint(crops: torch.Tensor, rgb=(0.10, 0.03, -0.05)) -> torch.Tensor:
    return (crops + torch.tensor(rgb).view(1, 3, 1, 1)).clamp(0, 1)


#----------------------------------------------------------------------------
# Masks


@pytest.mark.parametrize("shape", ["square", "ellipse"])
def test_mask_is_zero_at_the_border_and_one_in_the_middle(shape):
    m = face_mask(512, shape)
    assert m.shape == (512, 512) and m.min() == 0 and m.max() == 1
    assert (m[0] == 0).all() and (m[:, -1] == 0).all()
    assert m[256, 256] == 1 and m[240, 193] == 1 and m[371, 201] == 1     # eyes and mouth of the template
    assert torch.allclose(m, m.flip(1), atol=1e-6)
    row = m[256, :256]
    assert (row[1:] >= row[:-1] - 1e-7).all()                              # rises monotonically
    if shape == "ellipse":
        assert m[10, 10] == 0 and m[501, 501] == 0


def test_feather_sets_the_ramp_width():
    hard = face_mask(512, "square", 0)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    soft = face_mask(512, "square", FEATHER_DEFAULT)
    ramp = ((soft[256] > 0) & (soft[256] < 1)).sum().item()
    assert 2 * 45 <= ramp <= 2 * 52                                        # 50 crop px on each side
    wide = face_mask(512, "square", 150)
    assert ((wide[256] > 0) & (wide[256] < 1)).sum() > 2 * 140
    assert torch.allclose(face_mask(256, "square", 50), F.avg_pool2d(soft[None, None], 2)[0, 0],
                          atol=0.05)                                       # same shape at another crop size


def test_paste_mask_matches_the_crop_mask(astronaut):
    images, _, aligned = astronaut
    _, mask = paste_faces(images, aligned.crops, aligned)
    # warp the image-space mask into the crop with the face's own affine: it is the crop mask
    crop_mask = _warp_to_crop(mask[:, None], aligned)
    assert (crop_mask - face_mask(512)).abs()[16:-16, 16:-16].max() < 0.05


def _warp_to_crop(img: torch.Tensor, aligned) -> torch.Tensor:
    from vspbfr_core.face.align import _to3x3, normalized_to_pixel, pixel_to_normalized

    h, w = img.shape[-2:]
    theta = (pixel_to_normalized(h, w) @ _to3x3(aligned.inverse.double()) @ normalized_to_pixel(512, 512))[:, :2]
    grid = F.affine_grid(theta.float(), [1, 1, 512, 512], align_corners=False)
    return F.grid_sample(img, grid, align_corners=False)[0, 0]


#----------------------------------------------------------------------------
# Blending


def test_visibility(astronaut):
    images, _, aligned = astronaut
    restored = tint(aligned.crops)
    zero, mask0 = paste_faces(images, restored, aligned, visibility=0.0)
    assert torch.equal(zero, images) and mask0.max() == 0
    full, mask = paste_faces(images, restored, aligned)
    half, _ = paste_faces(images, restored, aligned, visibility=0.5)
    assert torch.allclose(half, (full + images) / 2, atol=2e-6)
    centre = mask[0] == 1
    change = (full - images)[0][:, centre].mean(dim=1)
    assert torch.allclose(change, torch.tensor([0.10, 0.03, -0.05]), atol=0.02)


def test_pasted_change_follows_the_mask(astronaut):
    images, dets, _ = astronaut
    smooth = smooth_image(images) * 0.8                  # no clipping, no resampling loss to speak of
    aligned = align_faces(smooth, dets)
    out, mask = paste_faces(smooth, aligned.crops + 0.1, aligned, feather=100)
    assert torch.allclose((out - smooth)[0], 0.1 * mask[0].expand(3, -1, -1), atol=2 / 255)


def test_keep_detail_keeps_untouched_pixels_and_drops_the_residual_where_restored(astronaut):
    """Half the crop restored (+0.1), half left alone: the untouched half pastes back exactly, the
    restored half is the resampled restored crop without the original's residual."""
    images, _, aligned = astronaut
    half = aligned.crops.clone()
    half[..., 256:, :] = (half[..., 256:, :] * 0.8 + 0.1)                 # the lower half changes
    out, mask = paste_faces(images, half, aligned, feather=0)
    plain, _ = paste_faces(images, half, aligned, feather=0, keep_detail=False)
    lm = aligned.inverse[0] @ torch.tensor([[256.0, 100.0, 1.0], [256.0, 420.0, 1.0]]).T   # image points
    (xt, yt), (xb, yb) = lm.T.round().long().tolist()
    top = (slice(None), slice(yt - 8, yt + 8), slice(xt - 8, xt + 8))
    bottom = (slice(None), slice(yb - 8, yb + 8), slice(xb - 8, xb + 8))
    assert torch.allclose(out[0][top], images[0][top], atol=1e-6)                 # untouched: the original
    assert torch.allclose(out[0][bottom], plain[0][bottom], atol=1e-6)            # restored: pasted as is


def test_keep_detail_false_pastes_the_restored_pixels(astronaut):
    images, _, aligned = astronaut
    grey = torch.full_like(aligned.crops, 0.5)
    out, mask = paste_faces(images, grey, aligned, keep_detail=False, feather=0)
    inside = mask[0] == 1
    assert torch.allclose(out[0][:, inside], torch.full_like(out[0][:, inside], 0.5), atol=1e-6)
    assert torch.equal(out[0][:, mask[0] == 0], images[0][:, mask[0] == 0])


def test_feathering_leaves_no_seam(astronaut):
    """A 0.1 colour cast pasted with a hard edge jumps by 0.1 at the border; feathered, it ramps."""
    images, dets, _ = astronaut
    images = smooth_image(images) * 0.8                   # no clipping: the change is 0.1 * mask
    aligned = align_faces(images, dets)
    restored = aligned.crops + 0.1
    hard, _ = paste_faces(images, restored, aligned, feather=0)
    soft, _ = paste_faces(images, restored, aligned)

    def max_step(out):
        d = (out - images)[0].abs().amax(0)
        return max(float((d[1:] - d[:-1]).abs().max()), float((d[:, 1:] - d[:, :-1]).abs().max()))

    assert max_step(hard) > 0.09
    assert max_step(soft) < 0.015                         # < 4/255 between neighbours


def test_overlapping_faces_do_not_add_up(astronaut):
    images, dets, aligned = astronaut
    twice = Detections(dets.image_index.repeat(2), dets.boxes.repeat(2, 1), dets.landmarks.repeat(2, 1, 1),
                       dets.scores.repeat(2), dets.order_index.repeat(2), dets.num_images, dets.image_size)
    aligned2 = align_faces(images, twice)
    restored = (aligned2.crops + 0.2).clamp(0, 1)
    out, mask = paste_faces(images, restored, aligned2)
    single_out, single_mask = paste_faces(images, restored[:1], aligned)
    centre = single_mask[0] == 1
    assert torch.allclose(out[0][:, centre], single_out[0][:, centre], atol=1e-5)   # not +0.4
    a = single_mask
    assert torch.allclose(mask, 2 * a - a * a, atol=1e-5)                           # union of the two masks


def test_restored_crops_at_another_resolution(astronaut):
    images, _, aligned = astronaut
    up = F.interpolate(aligned.crops, size=(1024, 1024), mode="bilinear", align_corners=False)
    out, mask = paste_faces(images, up, aligned)
    assert float((out - images).abs().max()) <= 1 / 255       # the crop, only resampled: nothing changes
    out2, _ = paste_faces(images, tint(up), aligned)
    centre = mask[0] == 1
    assert torch.allclose((out2 - images)[0][:, centre].mean(1), torch.tensor([0.10, 0.03, -0.05]), atol=0.02)


def test_upscale(astronaut):
    images, _, aligned = astronaut
    out, mask = paste_faces(images, aligned.crops, aligned, upscale=2.0)
    assert out.shape == (1, 3, 1024, 1024) and mask.shape == (1, 1024, 1024)
    bg = F.interpolate(images, size=(1024, 1024), mode="bicubic", align_corners=False).clamp(0, 1)
    assert float((out - bg).abs().max()) <= 1 / 255                  # unmodified faces: just the resized image
    assert mask.max() == 1 and (mask > 0).float().mean() > 0.05
    sharp = F.interpolate(aligned.crops, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    out, mask = paste_faces(images, tint(sharp), aligned, upscale=2.0)
    assert torch.allclose((out - bg)[0][:, mask[0] == 1].mean(1), torch.tensor([0.10, 0.03, -0.05]), atol=0.02)
    down, mask = paste_faces(images, aligned.crops, aligned, upscale=0.5)
    assert down.shape == (1, 3, 256, 256)


def test_channel_layouts(astronaut, detector):
    images, dets, _ = astronaut
    gray = images.mean(1, keepdim=True)
    aligned = align_faces(gray, dets)
    out, _ = paste_faces(gray, aligned.crops, aligned, color_correction="meanstd")
    assert out.shape == gray.shape and float((out - gray).abs().max()) <= 1 / 255
    rgba = torch.cat([images, torch.rand_like(images[:, :1])], 1)
    aligned = align_faces(rgba, dets)
    out, _ = paste_faces(rgba, aligned.crops, aligned)
    assert out.shape == rgba.shape and float((out - rgba).abs().max()) <= 1 / 255


#----------------------------------------------------------------------------
# Colour correction


@pytest.mark.parametrize("method", ["meanstd", "wavelet"])
def test_color_correction_is_the_identity_on_unchanged_faces(astronaut, method):
    _, _, aligned = astronaut
    assert float((color_correct(aligned.crops, aligned.crops, method) - aligned.crops).abs().max()) < 1e-5


@pytest.mark.parametrize("method", ["meanstd", "wavelet"])
def test_color_correction_removes_a_colour_cast_and_keeps_detail(family, method):
    images, _, aligned = family
    crops = aligned.crops
    sharp = (crops + 0.8 * (crops - F.avg_pool2d(crops, 5, 1, 2, count_include_pad=False))).clamp(0, 1)
    cast = tint(sharp)
    fixed = color_correct(cast, crops, method)
    weight = face_mask(512, "ellipse")
    shift_before = ((cast - crops) * weight).sum((2, 3)) / weight.sum()
    shift_after = ((fixed - crops) * weight).sum((2, 3)) / weight.sum()
    assert shift_after.abs().max() < 0.25 * shift_before.abs().max()
    detail = (fixed - F.avg_pool2d(fixed, 5, 1, 2, count_include_pad=False)).abs().mean()
    plain = (crops - F.avg_pool2d(crops, 5, 1, 2, count_include_pad=False)).abs().mean()
    assert detail > 1.3 * plain                           # the restorer's sharpening survives
    out, _ = paste_faces(images, cast, aligned, color_correction=method)
    assert float((out - images).abs().mean()) < 0.01


#----------------------------------------------------------------------------
# Pass-through and refusals


def test_no_faces_comes_back_unchanged(astronaut):
    images, _, aligned = astronaut
    none = align_faces(images, Detections.empty(1, tuple(images.shape[-2:])))
    out, mask = paste_faces(images, images.new_zeros(0, 3, 512, 512), none)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()
    assert mask.shape == (1, 512, 512) and mask.max() == 0
    out, mask = paste_faces(images, images.new_zeros(0, 3, 512, 512), none, upscale=1.5)
    assert out.shape == (1, 3, 768, 768) and mask.max() == 0


def test_batch_with_faces_in_some_images(detector):
    a = read("skimage_astronaut.png")
    frames = torch.cat([a, torch.rand_like(a), a.flip(2)])
    dets = detect_faces(detector, frames)
    images = frames.permute(0, 3, 1, 2).contiguous()
    aligned = align_faces(images, dets)
    out, mask = paste_faces(images, tint(aligned.crops), aligned)
    assert dets.counts() == [1, 0, 1]
    assert torch.equal(out[1], images[1]) and mask[1].max() == 0
    assert mask[0].max() == 1 and mask[2].max() == 1
    assert abs(float(mask[0].sum() / mask[2].sum()) - 1) < 0.15
    xs = torch.arange(512.0)
    cx0 = float((mask[0].sum(0) * xs).sum() / mask[0].sum())
    cx2 = float((mask[2].sum(0) * xs).sum() / mask[2].sum())
    assert abs(cx0 - (511 - cx2)) < 3                         # the mirrored face, mirrored mask


def test_thirty_faces_and_a_4096_image(detector):
    face = read("gfpgan_ffhq_gt_00000000.png", "cropped").permute(0, 3, 1, 2)
    face = F.interpolate(face, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    tiles = face.repeat(1, 1, 5, 6)
    dets = detect_faces(detector, tiles.permute(0, 2, 3, 1))
    aligned = align_faces(tiles, dets)
    out, mask = paste_faces(tiles, tint(aligned.crops), aligned, color_correction="meanstd")
    assert len(dets) == 30 and float((out - tiles).abs().mean()) < 0.01
    big = F.interpolate(read("skimage_astronaut.png").permute(0, 3, 1, 2), size=(4096, 4096), mode="bilinear",
                        align_corners=False)
    dets = detect_faces(detector, big.permute(0, 2, 3, 1))
    aligned = align_faces(big, dets)                    # a face larger than the crop: downsampled into it
    out, mask = paste_faces(big, aligned.crops, aligned)
    assert len(dets) == 1 and float((out - big).abs().max()) <= 1 / 255
    assert torch.equal(out[0][:, mask[0] == 0], big[0][:, mask[0] == 0])


def test_refusals(astronaut):
    images, _, aligned = astronaut
    crops = aligned.crops
    cases = [
        (dict(restored=crops[:, :1]), "channels"),
        (dict(restored=torch.cat([crops, crops])), "one square crop per"),
        (dict(restored=crops[..., :500]), "one square crop per"),
        (dict(restored=crops.permute(0, 2, 3, 1)), "channels"),
        (dict(visibility=1.5), "visibility"),
        (dict(feather=-1), "feather"),
        (dict(feather=300), "feather"),
        (dict(mask_shape="circle"), "mask_shape"),
        (dict(color_correction="adain"), "color_correction"),
        (dict(upscale=0), "upscale"),
    ]
    for kwargs, message in cases:
        args = dict(restored=crops)
        args.update(kwargs)
        restored = args.pop("restored")
        with pytest.raises(InputError, match=message):
            paste_faces(images, restored, aligned, **args)
    nan = crops.clone()
    nan[0, 0, 5, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        paste_faces(images, nan, aligned)
    with pytest.raises(InputError, match="batch of 1"):
        paste_faces(torch.cat([images, images]), crops, aligned)
    with pytest.raises(InputError, match="512x512"):
        paste_faces(images[..., :300], crops, aligned)
    with pytest.raises(InputError, match="AlignedFaces"):
        paste_faces(images, crops, dataclasses.asdict(aligned))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(astronaut, dtype):
    images, dets, _ = astronaut
    x = images.to(dtype)
    aligned = align_faces(x, dets)
    assert aligned.crops.dtype == dtype and aligned.affine.dtype == torch.float32
    out, mask = paste_faces(x, tint(aligned.crops), aligned, color_correction="wavelet")
    assert out.dtype == dtype and mask.dtype == dtype
    same, _ = paste_faces(x, aligned.crops, aligned)
    assert torch.allclose(same.double(), x.double(), atol=1e-6)
    big, mask = paste_faces(x, aligned.crops, aligned, upscale=1.5, color_correction="meanstd")
    assert big.shape == (1, 3, 768, 768) and big.dtype == dtype and mask.shape == (1, 768, 768)

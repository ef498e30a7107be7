"""Alignment to the FFHQ template and the align -> paste round trip on the real photos."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_DEVICE, shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.face import FFHQ_TEMPLATE_512, AlignedFaces, Detections, align_faces, detect_faces, load_detector, \
    paste_faces
from vspbfr_core.face.align import estimate_similarity, face_template, invert_affine

WHOLE = ["gfpgan_00.jpg", "gfpgan_10045.png", "cf_00.jpg", "cf_02.png", "cf_04.jpg", "skimage_astronaut.png"]


def read(name: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(shared_path("faces", "whole", name)) as im:
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]                  # [1, H, W, C], C = 3 or 4


@pytest.fixture(scope="module")
def detector():
    return load_detector("retinaface_mobile0.25", shared_path("weights"))


@pytest.fixture(scope="module")
def cases(detector) -> dict[str, tuple[torch.Tensor, Detections]]:
    """name -> (images [1, C, H, W] on the test device, detections)."""
    out = {}
    for name in WHOLE:
        x = read(name)
        out[name] = (x.permute(0, 3, 1, 2).contiguous().to(TEST_DEVICE), detect_faces(detector, x))
    return out


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


#----------------------------------------------------------------------------
# Transforms


def test_ffhq_template_values():
    assert FFHQ_TEMPLATE_512[0] == (192.98138, 239.94708)
    assert FFHQ_TEMPLATE_512[4] == (313.08905, 371.15118)
    assert torch.allclose(face_template(512), torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64))
    t256 = face_template(256)
    assert torch.allclose(t256, (torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64) + 0.5) / 2 - 0.5)


def test_similarity_recovers_a_known_transform():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(4, 5, 2, generator=g, dtype=torch.float64) * 100
    angle = torch.tensor([0.0, 0.3, -1.2, 3.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 2.5, 0.4, 7.0], dtype=torch.float64)
    rot = torch.stack([torch.stack([torch.cos(angle), -torch.sin(angle)], -1),
                       torch.stack([torch.sin(angle), torch.cos(angle)], -1)], 1) * scale.view(-1, 1, 1)
    shift = torch.tensor([[3.0, -4.0], [100.0, 7.0], [-50.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
    dst = src @ rot.transpose(1, 2) + shift[:, None]
    m = estimate_similarity(src, dst)
    assert torch.allclose(m[:, :, :2], rot, atol=1e-9) and torch.allclose(m[:, :, 2], shift, atol=1e-7)
    inv = invert_affine(m)
    pts = torch.cat([dst, torch.ones(4, 5, 1, dtype=torch.float64)], -1) @ inv.transpose(1, 2)
    assert torch.allclose(pts, src, atol=1e-8)


def test_similarity_is_least_squares_and_never_reflects():
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 5, 2, generator=g, dtype=torch.float64) * 50
    mirrored = src * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    m = estimate_similarity(src, mirrored[0])
    det = torch.linalg.det(m[0, :, :2])
    assert det >= 0                                          # rotation + scale only
    noisy = src + torch.randn(1, 5, 2, generator=g, dtype=torch.float64)
    m = estimate_similarity(noisy, src[0])
    homogeneous = torch.cat([noisy, torch.ones(1, 5, 1, dtype=torch.float64)], -1)
    base = ((homogeneous @ m.transpose(1, 2) - src) ** 2).sum()
    for eps in (1e-3, -1e-3):                                # any perturbation of the 4 parameters is worse
        for i, j in ((0, 0), (0, 2), (1, 2)):
            p = m.clone()
            p[0, i, j] += eps
            if (i, j) == (0, 0):
                p[0, 1, 1] += eps
            err = ((homogeneous @ p.transpose(1, 2) - src) ** 2).sum()
            assert err >= base
    with pytest.raises(InputError, match="coincide"):
        estimate_similarity(torch.ones(1, 5, 2), face_template(512))


#----------------------------------------------------------------------------
# Crops


def test_crops_put_the_landmarks_on_the_template(cases):
    for name, (x, dets) in cases.items():
        aligned = align_faces(x, dets)
        assert isinstance(aligned, AlignedFaces) and len(aligned) == len(dets)
        assert aligned.crops.shape == (len(dets), x.shape[1], 512, 512)
        assert aligned.crops.dtype == x.dtype and aligned.crops.device == x.device
        assert aligned.crops.min() >= 0 and aligned.crops.max() <= 1
        lm = torch.cat([dets.landmarks, torch.ones(len(dets), 5, 1)], -1).to(x.device)
        mapped = lm @ aligned.affine.transpose(1, 2)                              # [F, 5, 2] crop pixels
        residual = (mapped - face_template(512, torch.float32, x.device)).norm(dim=-1)
        assert residual.max() < 45, name                                         # faces are not the template
        assert residual.mean() < 20, name
        eye = torch.eye(3, device=x.device)[:2]
        bottom = torch.tensor([[[0.0, 0.0, 1.0]]], device=x.device).expand(len(dets), 1, 3)
        composed = aligned.affine @ torch.cat([aligned.inverse, bottom], 1)
        assert torch.allclose(composed, eye.expand_as(composed), atol=1e-3)


def test_re_detected_landmarks_sit_on_the_template(detector, cases):
    x, dets = cases["cf_02.png"]
    aligned = align_faces(x, dets)
    again = detect_faces(detector, aligned.crops[:, :3].permute(0, 2, 3, 1).cpu(), detect_size=0)
    assert again.counts() == [1] * len(dets)
    err = (again.landmarks - face_template(512, torch.float32)).norm(dim=-1)
    assert err.mean() < 10 and err.max() < 25


def test_crops_match_opencv_warp_affine(cases):
    cv2 = pytest.importorskip("cv2")
    x, dets = cases["gfpgan_10045.png"]
    aligned = align_faces(x, dets, padding_mode="zeros")
    img = x[0].permute(1, 2, 0).cpu().numpy()
    for k in range(len(dets)):
        ref = cv2.warpAffine(img, aligned.affine[k].cpu().double().numpy(), (512, 512), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        ours = aligned.crops[k].permute(1, 2, 0).cpu().numpy()
        diff = np.abs(ref - ours)[4:-4, 4:-4]
        assert diff.mean() < 0.01 / 255 and diff.max() < 0.1 / 255


def test_smaller_crops_are_consistent(cases):
    x, dets = cases["skimage_astronaut.png"]
    big = align_faces(x, dets, 512).crops
    small = align_faces(x, dets, 256).crops
    down = F.avg_pool2d(big, 2)
    assert (down - small).abs().mean() < 2 / 255


def test_padding_modes(detector, cases):
    x = cases["skimage_astronaut.png"][0][..., 40:300, 160:400].contiguous()   # face near the top-left corner
    dets = detect_faces(detector, x.permute(0, 2, 3, 1).cpu())
    assert len(dets) == 1
    zeros = align_faces(x, dets, padding_mode="zeros").crops
    refl = align_faces(x, dets, padding_mode="reflection").crops
    assert (zeros[..., 0, 0] == 0).all() and (refl[..., 0, 0] > 0).any()
    with pytest.raises(InputError, match="padding_mode"):
        align_faces(x, dets, padding_mode="wrap")


def test_no_faces_and_mismatches(cases):
    x, dets = cases["cf_04.jpg"]
    empty = Detections.empty(1, tuple(x.shape[-2:]))
    aligned = align_faces(x, empty)
    assert aligned.crops.shape == (0, 3, 512, 512) and aligned.affine.shape == (0, 2, 3)
    with pytest.raises(InputError, match="batch of 1"):
        align_faces(torch.cat([x, x]), dets)
    with pytest.raises(InputError, match="225x225"):
        align_faces(x[..., :200, :], dets)
    with pytest.raises(InputError, match="Detections"):
        align_faces(x, "faces")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="host IMAGE|channels|4-d"):
        align_faces(x.permute(0, 2, 3, 1)[0], dets)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        align_faces(nan, dets)


#----------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("name", WHOLE)
@pytest.mark.parametrize("feather", [0.0, 50.0])
def test_round_trip_within_one_level_on_real_photos(cases, name, feather):
    x, dets = cases[name]
    aligned = align_faces(x, dets)
    out, mask = paste_faces(x, aligned.crops, aligned, feather=feather)
    assert out.shape == x.shape and mask.shape == (1, *x.shape[-2:])
    inside = mask > 0
    assert int(inside.sum()) > 500 * len(dets)
    err = (out - x).abs().amax(dim=1)
    assert float(err[inside].max()) <= 1 / 255
    assert torch.equal(out[:, :, ~inside[0]], x[:, :, ~inside[0]])            # untouched outside, bit for bit


def test_warp_geometry_without_detail_transfer(cases):
    """Pasting the crop pixels themselves (keep_detail=False): exact on linear content, and only the
    interpolation loss of two bilinear warps on smooth photo content (it is what keep_detail removes)."""
    x, dets = cases["skimage_astronaut.png"]
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ramp = torch.stack([xx, yy, (xx + yy) / 2])[None].to(x.device)
    aligned = align_faces(ramp, dets)
    out, mask = paste_faces(ramp, aligned.crops, aligned, feather=0, keep_detail=False)
    assert float((out - ramp).abs().amax(1)[mask > 0].max()) < 1e-4
    smooth = blur(x, 1.5)
    aligned = align_faces(smooth, dets)
    out, mask = paste_faces(smooth, aligned.crops, aligned, feather=0, keep_detail=False)
    err = (out - smooth).abs().amax(1)[mask > 0]
    assert float(err.mean()) < 0.5 / 255 and float(err.max()) < 4 / 255


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(cases):
    x, dets = cases["cf_02.png"]
    cpu = align_faces(x.cpu(), dets)
    gpu = align_faces(x.cuda(), dets.to("cuda"))
    assert gpu.crops.is_cuda
    assert torch.allclose(gpu.crops.cpu(), cpu.crops, atol=2e-3)
    out, mask = paste_faces(x.cuda(), gpu.crops, gpu, color_correction="wavelet")
    assert out.is_cuda and float((out.cpu() - x.cpu()).abs().max()) <= 1 / 255

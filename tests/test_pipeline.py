"""VSPBFRPipeline on real photos with tiny networks and the real RetinaFace mobilenet0.25 detector."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from vspbfr_core.errors import InputError, VSPBFRError
from vspbfr_core.pipeline import RestoreOptions, VSPBFRPipeline

EXPECTED = {"gfpgan_00.jpg": 2, "gfpgan_10045.png": 3, "cf_00.jpg": 4, "cf_02.png": 4, "cf_04.jpg": 1,
            "skimage_astronaut.png": 1}


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir


@pytest.fixture(scope="module")
def pipe(models_dir: Path) -> VSPBFRPipeline:
    return VSPBFRPipeline.from_dir(models_dir, detector="retinaface_mobile0.25").to("cpu", torch.float32)


def load(name: str) -> torch.Tensor:
    with Image.open(shared_path("faces", "whole", name)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_face_restored_and_outside_untouched(pipe: VSPBFRPipeline, name: str) -> None:
    img = load(name)
    res = pipe(img, RestoreOptions(seed=3))
    assert res.faces_found == EXPECTED[name]
    assert res.images.shape == img.shape and res.masks.shape == img.shape[:3]
    outside = res.masks[0] == 0
    assert outside.any() and (res.masks[0] > 0).any()
    assert torch.equal(res.images[0][outside], img[0][outside])
    inside = res.masks[0] > 0.99
    assert (res.images[0][inside] - img[0][inside]).abs().mean() > 1e-3     # the faces did change
    assert res.style is not None and res.style.prompts.shape == (EXPECTED[name], 6, 16)


def test_same_seed_same_output_and_batch_composition(pipe: VSPBFRPipeline) -> None:
    img = load("cf_02.png")
    a = pipe(img, seed=5).images
    assert torch.equal(a, pipe(img, seed=5).images)
    assert not torch.equal(a, pipe(img, seed=6).images)
    other = torch.flip(img, dims=[2])                       # a different frame of the same size
    both = pipe(torch.cat([other, img]), seed=5).images
    torch.testing.assert_close(both[1:], a, rtol=0, atol=1e-5)


def test_stages_one_by_one_equal_the_whole_call(pipe: VSPBFRPipeline) -> None:
    img = load("gfpgan_10045.png")
    opts = RestoreOptions(seed=9)
    whole = pipe(img, opts)
    dets = pipe.detect(img, opts)
    aligned = pipe.align(img.permute(0, 3, 1, 2), dets)
    keys = dets.order_index.tolist()
    style = pipe.style_prompts(aligned.crops, pipe.noise_for(keys, 9))
    restored, _ = pipe.restore_faces(aligned.crops, style, options=opts, face_keys=keys)
    out, masks = pipe.paste(img.permute(0, 3, 1, 2), restored, aligned, opts)
    torch.testing.assert_close(out.permute(0, 2, 3, 1), whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(masks, whole.masks, rtol=0, atol=1e-6)


def test_no_face_comes_back_unchanged(pipe: VSPBFRPipeline) -> None:
    blank = torch.full((2, 64, 80, 3), 0.5)
    res = pipe(blank)
    assert res.faces_found == 0 and torch.equal(res.images, blank) and not res.masks.any()
    up = pipe(blank, upscale=2.0)
    assert up.images.shape == (2, 128, 160, 3)


def test_rgba_keeps_alpha_and_gray_stays_gray(pipe: VSPBFRPipeline) -> None:
    img = load("cf_04.jpg")
    alpha = torch.linspace(0, 1, img.shape[2]).expand(1, img.shape[1], -1)[..., None]
    res = pipe(torch.cat([img, alpha], dim=-1))
    assert res.images.shape[-1] == 4 and torch.equal(res.images[..., 3:], alpha)
    gray = img.mean(dim=-1, keepdim=True)
    res = pipe(gray)
    assert res.images.shape == gray.shape and res.faces_found == 1


def test_bad_options_and_inputs(pipe: VSPBFRPipeline) -> None:
    img = load("cf_04.jpg")
    with pytest.raises(InputError):
        pipe(img, visibility=1.5)
    with pytest.raises(InputError):
        pipe(img, upscale=0.5)
    with pytest.raises(InputError):
        pipe(img * 255)
    nan = img.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        pipe(nan)


def test_visibility_zero_gives_the_original(pipe: VSPBFRPipeline) -> None:
    img = load("cf_04.jpg")
    res = pipe(img, visibility=0.0)
    torch.testing.assert_close(res.images, img, rtol=0, atol=1e-6)


def test_out_of_memory_halves_the_chunk(pipe: VSPBFRPipeline, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    img = load("cf_00.jpg")                                  # 4 faces, one chunk of 4
    expected = pipe(img, seed=1).images
    real_restore = pipe.model.restore
    sizes: list[int] = []

    def flaky(faces, *args, **kwargs):
        sizes.append(faces.shape[0])
        if faces.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_restore(faces, *args, **kwargs)

    monkeypatch.setattr(pipe.model, "restore", flaky)
    with caplog.at_level(logging.WARNING):
        got = pipe(img, seed=1).images
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert "out of memory" in caplog.text

    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipe.model, "restore", always)
    with pytest.raises(VSPBFRError, match="even with one face at a time"):
        pipe(img)


def test_callback_reports_progress_and_can_interrupt(pipe: VSPBFRPipeline) -> None:
    img = load("cf_00.jpg")
    seen: list[tuple[int, int, str]] = []
    pipe(img, callback=lambda d, t, s: seen.append((d, t, s)))
    assert seen[-1][0] == seen[-1][1] and {"detect", "encode", "restore", "paste"} <= {s for _, _, s in seen}
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)

    class Stop(Exception):
        pass

    def stop_at_restore(done: int, total: int, stage: str) -> None:
        if stage == "diffuse":
            raise Stop

    with pytest.raises(Stop):
        pipe(img, callback=stop_at_restore)


def test_progress_moves_per_face_and_stage_inside_a_chunk(pipe: VSPBFRPipeline) -> None:
    """4 faces in one chunk: the feature bank and the restoration report each face on the CPU (a 4-face chunk
    used to sit on one number for the whole chunk), and the total is 4 steps per face plus detect and paste."""
    img = load("cf_00.jpg")                                  # 4 faces, one chunk (chunk_size 4)
    assert pipe.chunk_size >= 4
    seen: list[tuple[int, int, str]] = []
    pipe(img, callback=lambda d, t, s: seen.append((d, t, s)))
    stages = [s for _, _, s in seen]
    assert stages == ["detect", "encode", "diffuse"] + ["feature bank"] * 4 + ["restore"] * 4 + ["paste"]
    assert [d for d, _, _ in seen] == [1, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18] and seen[-1][1] == 18


def test_grayscale_photos_get_gray_faces(pipe: VSPBFRPipeline) -> None:
    """A photo whose channels are equal (how ComfyUI and A1111 hand over a black-and-white picture) gets gray faces
    back unless colour is asked for; colour photos are not affected by the option."""
    color = load("cf_04.jpg")
    gray3 = color.mean(dim=-1, keepdim=True).expand(-1, -1, -1, 3).contiguous()
    res = pipe(gray3, seed=2)
    assert res.faces_found == 1
    out = res.images[0]
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])
    assert torch.equal(res.restored_crops[:, 0], res.restored_crops[:, 1])
    colored_res = pipe(gray3, seed=2, keep_gray=False)
    colored = colored_res.images[0]
    inside = res.masks[0] > 0.99
    assert (colored[..., 0] - colored[..., 2]).abs()[inside].max() > 0.01       # the network's own colours
    # the gray face is the BT.601 luma of the face the network gave
    from vspbfr_core.image import rgb_to_gray
    luma = rgb_to_gray(colored_res.restored_crops).clamp(0, 1)[:, 0]
    assert torch.equal(res.restored_crops[:, 0], luma)
    assert torch.equal(pipe(color, seed=2).images, pipe(color, seed=2, keep_gray=False).images)
    # one gray channel in, one out (to_host), as before
    assert pipe(color.mean(dim=-1, keepdim=True), seed=2).images.shape[-1] == 1


def test_low_memory_mode_same_result(models_dir: Path, pipe: VSPBFRPipeline) -> None:
    low = VSPBFRPipeline.from_dir(models_dir, detector="retinaface_mobile0.25", low_memory=True).to("cpu")
    img = load("gfpgan_00.jpg")
    torch.testing.assert_close(low(img, seed=2).images, pipe(img, seed=2).images, rtol=0, atol=1e-6)


def test_restore_aligned_crops(pipe: VSPBFRPipeline) -> None:
    with Image.open(shared_path("faces", "cropped", "gfpgan_Adele_crop.png")) as im:
        crop = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
    res = pipe.restore_aligned(crop, seed=0)
    assert res.images.shape == crop.shape and res.faces_found == 1
    assert not torch.equal(res.images, crop)
    with pytest.raises(InputError, match="square"):
        pipe.restore_aligned(crop[:, :, :500])


def test_half_precision_keeps_fragile_parts_exact_float32(models_dir: Path) -> None:
    p = VSPBFRPipeline.from_dir(models_dir, detector=None)
    cd = {k: v.clone() for k, v in p.model.code_diffuser.state_dict().items()}
    mlp = {k: v.clone() for k, v in p.model.restoration_net.style.state_dict().items()}
    p.to("cpu", torch.bfloat16)
    assert all(torch.equal(v, cd[k]) for k, v in p.model.code_diffuser.state_dict().items())
    assert all(torch.equal(v, mlp[k]) for k, v in p.model.restoration_net.style.state_dict().items())
    assert p.model.restoration_net.conv1.modulation.weight.dtype == torch.bfloat16
    assert p.model.style_encoder.input_layer[1].num_batches_tracked.dtype == torch.long
    faces = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    out = p.restore_aligned(faces, seed=1).images
    ref = VSPBFRPipeline.from_dir(models_dir, detector=None).restore_aligned(faces, seed=1).images
    # tiny random networks are chaotic, so only a loose agreement is meaningful here
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and (out - ref).abs().mean() < 0.2
    with pytest.raises(Exception, match="float16 is not supported on CPU"):
        p.to("cpu", torch.float16)


def test_compile_option_reaches_the_networks(models_dir: Path, pipe: VSPBFRPipeline) -> None:
    # the graph-capturing "eager" backend keeps this quick; inductor itself is tested in test_core_model
    p = VSPBFRPipeline.from_dir(models_dir, detector="retinaface_mobile0.25", compile={"backend": "eager"}).to("cpu")
    assert p.model.compiled
    img = load("gfpgan_00.jpg")
    torch.testing.assert_close(p(img, seed=2).images, pipe(img, seed=2).images, rtol=0, atol=1e-6)

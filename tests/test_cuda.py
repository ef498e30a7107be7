"""CUDA paths (skipped without a GPU): parity in float32 / float16 / bfloat16 on the golden fixtures, no
host-device synchronisation inside the networks, the whole pipeline on CUDA, and torch.compile there."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED, shared_path
from test_core_loading import TINY_CD, TINY_ENC, TINY_RN, TINY_SG, _randomize
from vspbfr_core.encoder import StyleEncoder
from vspbfr_core.model import VSPBFRModel, exact_float32
from vspbfr_core.parity import HALF_TOLERANCE, check_fixture
from vspbfr_core.pipeline import VSPBFRPipeline
from vspbfr_core.restorer import RestorationNet
from vspbfr_core.rng import make_generator
from vspbfr_core.stylegan2 import StyleGAN2Synthesis
from vspbfr_core.wplus_diffusion import CodeDiffuser

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FIXTURES = sorted(p.parent.name for p in (SHARED / "parity").glob("*/golden_f64.safetensors")) if SHARED.exists() else []


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """float32 comparisons with TF32 off (PyTorch turns TF32 convolutions on by default)."""
    with exact_float32():
        yield


def tiny_model() -> VSPBFRModel:
    return VSPBFRModel(_randomize(StyleEncoder(TINY_ENC), 1), _randomize(StyleGAN2Synthesis(TINY_SG), 2),
                       _randomize(CodeDiffuser(TINY_CD), 3), _randomize(RestorationNet(TINY_RN), 4)).eval()


@pytest.mark.parametrize("name", FIXTURES or ["<none>"])
def test_cuda_float32_parity(name: str) -> None:
    results, _ = check_fixture(shared_path("parity", name), torch.float32, device="cuda")
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["restoration_alone", "case_a"])
def test_cuda_half_restored_within_documented_tolerance(name: str, dtype: torch.dtype) -> None:
    results, kind = check_fixture(shared_path("parity", name), dtype, device="cuda")
    restored = next(r for r in results if r.name == "restored")
    assert restored.tolerance == HALF_TOLERANCE[dtype][kind]
    assert restored.ok, restored.line()
    assert restored.max_abs > 1e-5          # it really ran in half precision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
def test_no_host_device_sync_inside_the_networks(dtype: torch.dtype, no_tf32: None) -> None:
    m = tiny_model()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = m.draw_noise_per_face([make_generator(4, i) for i in range(3)])
    with torch.inference_mode():
        ref = m(x, noise)
        m.set_precision(dtype, "cuda")
        xc, nc = x.cuda(), noise.to("cuda", dtype)          # host-to-device copies before the checked region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")             # any synchronising call inside raises
        try:
            out = m(xc, nc)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out.is_cuda and out.dtype == m.compute_dtype
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert (out.float().cpu() - ref).abs().max() < tol


def test_pipeline_on_cuda_matches_cpu(tiny_models_dir: Path, no_tf32: None) -> None:
    with Image.open(shared_path("faces", "whole", "cf_00.jpg")) as im:
        img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
    cpu = VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25")(img, seed=1)
    gpu_pipe = VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25").to("cuda")
    gpu = gpu_pipe(img, seed=1)
    assert gpu.faces_found == cpu.faces_found == 4
    assert (gpu.images - cpu.images).abs().max() < 2e-3      # same detections, same noise, same result
    half = gpu_pipe.to("cuda", torch.float16)(img, seed=1)
    assert half.faces_found == 4 and torch.isfinite(half.images).all()
    assert (half.images - cpu.images).abs().mean() < 0.05


def test_torch_compile_on_cuda(no_tf32: None) -> None:
    m = tiny_model().to("cuda")
    x = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    noise = m.draw_noise_per_face([make_generator(6, i) for i in range(2)]).to("cuda", torch.float32)
    with torch.inference_mode():
        eager = m(x, noise)
        m.compile_networks()
        try:
            compiled = m(x, noise)
        finally:
            m.compile_networks(False)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-3)


def test_host_tf32_setting_does_not_change_the_result() -> None:
    """A host that turns TF32 on (A1111) gets the same float32 result as one that leaves it off."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    m = tiny_model().to("cuda")
    x = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    noise = m.draw_noise_per_face([make_generator(8, i) for i in range(2)]).to("cuda", torch.float32)
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic
    cudnn.deterministic = True
    try:
        with torch.inference_mode():
            cudnn.allow_tf32 = matmul.allow_tf32 = False
            off = m(x, noise)
            cudnn.allow_tf32 = matmul.allow_tf32 = True
            on = m(x, noise)
            assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic = saved
    assert torch.equal(on, off)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_identity_best_of_n_and_only_matching_on_cuda(tiny_models_dir: Path, tmp_path: Path, dtype: torch.dtype,
                                                      no_tf32: None) -> None:
    """Best-of-N with a (tiny, random) ArcFace on the GPU: deterministic, one record per face, the embedder's vectors
    on the GPU; a reference of one face with a threshold only it reaches restores that face alone."""
    from identity_models import write_tiny_arcface
    from vspbfr_core.identity import load_embedder

    pipe = VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25").to("cuda", dtype)
    embedder = load_embedder("arcface", file=write_tiny_arcface(tmp_path / "arcface.pth"), device="cuda")
    with Image.open(shared_path("faces", "whole", "cf_02.png")) as im:
        img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
    a = pipe(img, seed=2, candidates=3, embedder=embedder)
    b = pipe(img, seed=2, candidates=3, embedder=embedder)
    assert torch.equal(a.images, b.images) and len(a.identity) == 4
    assert all(f.chosen == max(range(3), key=lambda c: (f.candidates[c]["identity"], -c)) for f in a.identity)
    assert embedder.embed_crops(a.restored_crops[:1]).device.type == "cuda"
    ref = pipe.make_reference(img[:, :, :330], embedder)           # the leftmost face
    one = pipe(img, seed=2, embedder=embedder, reference=ref, only_matching=True, match_threshold=0.999)
    assert sum(f.restored for f in one.identity) <= 1

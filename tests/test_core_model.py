"""The wired model on tiny configs: seeded determinism, no global RNG, per-face noise, knobs."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from test_core_loading import TINY_CD, TINY_ENC, TINY_RN, TINY_SG, _randomize
from vspbfr_core.encoder import StyleEncoder
from vspbfr_core.model import VSPBFRModel
from vspbfr_core.restorer import RestorationNet
from vspbfr_core.rng import make_generator
from vspbfr_core.stylegan2 import StyleGAN2Synthesis
from vspbfr_core.wplus_diffusion import CodeDiffuser


@pytest.fixture(scope="module")
def model() -> VSPBFRModel:
    return VSPBFRModel(_randomize(StyleEncoder(TINY_ENC), 1), _randomize(StyleGAN2Synthesis(TINY_SG), 2),
                       _randomize(CodeDiffuser(TINY_CD), 3), _randomize(RestorationNet(TINY_RN), 4)).eval()


def faces(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.inference_mode()
def run(model: VSPBFRModel, x: torch.Tensor, seed: int, **kw) -> torch.Tensor:
    noise = model.draw_noise_per_face([make_generator(seed, i) for i in range(x.shape[0])])
    return model(x, noise, **kw)


def test_same_seed_bit_identical_and_seeds_differ(model: VSPBFRModel) -> None:
    x = faces()
    a, b = run(model, x, 7), run(model, x, 7)
    assert torch.equal(a, b)
    c = run(model, x, 8)
    assert (a - c).abs().max() > 1e-3


def test_no_global_rng_touched(model: VSPBFRModel) -> None:
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    run(model, faces(), 3)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert py_state == random.getstate()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(np_state, np.random.get_state()))


def test_face_result_independent_of_batch(model: VSPBFRModel) -> None:
    x = faces(3)
    together = run(model, x, 11)
    # face 1 alone, with the generator of its index in the batch
    with torch.inference_mode():
        alone = model(x[1:2], model.draw_noise_per_face([make_generator(11, 1)]))
    torch.testing.assert_close(alone, together[1:2], rtol=0, atol=1e-5)


def test_mixing_distribution_and_explicit_noise(model: VSPBFRModel) -> None:
    draws = [model.draw_noise(1, make_generator(5, i)) for i in range(200)]
    mixed = sum(d.z2 is not None for d in draws)
    assert 70 < mixed < 130              # official mixing probability 0.5
    injects = {int(d.inject_index[0]) for d in draws if d.inject_index is not None}
    assert injects <= set(range(1, TINY_RN.n_latent)) and len(injects) > 3
    never = [model.draw_noise(1, make_generator(5, i), mixing_probability=0.0) for i in range(20)]
    assert all(d.z2 is None for d in never)
    # explicit noise: changing one noise map changes the output; the same tensors reproduce it
    noise = model.draw_noise(2, make_generator(1))
    x = faces()
    with torch.inference_mode():
        a = model(x, noise)
        noise.decoder[-1] = noise.decoder[-1] + 1.0
        b = model(x, noise)
    assert (a - b).abs().max() > 1e-4


def test_mixed_batch_of_mixing_and_plain_faces(model: VSPBFRModel) -> None:
    gens = [make_generator(0, i) for i in range(12)]
    noise = model.draw_noise_per_face(gens)
    assert noise.z2 is not None and noise.inject_index is not None
    plain = [i for i in range(12) if model.draw_noise(1, make_generator(0, i)).z2 is None]
    assert plain and all(int(noise.inject_index[i]) == TINY_RN.n_latent for i in plain)


def test_style_sample_only_on_request(model: VSPBFRModel) -> None:
    noise = model.draw_noise(1, make_generator(2), style_sample=True)
    assert noise.stylegan_extra
    with torch.inference_mode():
        ws = model.encode(faces(1))
        bank, img = model.feature_bank(ws, noise.stylegan)
        assert img is None and len(bank) == model.num_bank_features
        bank2, img2 = model.feature_bank(ws, noise.stylegan, noise.stylegan_extra, style_sample=True)
    assert img2 is not None and img2.shape == (1, 3, TINY_SG.resolution, TINY_SG.resolution)
    assert all(torch.equal(a, b) for a, b in zip(bank, bank2))
    plain = model.draw_noise(1, make_generator(2))
    assert not plain.stylegan_extra
    assert all(torch.equal(a, b) for a, b in zip(plain.stylegan, noise.stylegan))


def test_fidelity_knobs(model: VSPBFRModel) -> None:
    x = faces(1)
    base = run(model, x, 4)
    assert torch.equal(base, run(model, x, 4, prompt_mix=1.0, bank_scale=1.0))
    assert (base - run(model, x, 4, bank_scale=0.0)).abs().max() > 1e-4
    assert (base - run(model, x, 4, prompt_mix=0.0)).abs().max() > 1e-4


def test_cpu_generator_noise_independent_of_target_device(model: VSPBFRModel) -> None:
    a = model.draw_noise(1, make_generator(9)).to("cpu", torch.float64)
    b = model.draw_noise(1, make_generator(9)).to("cpu", torch.float32)
    assert torch.equal(a.x_T.float(), b.x_T)


def test_torch_compile_opt_in_matches_eager() -> None:
    """Inductor (the default torch.compile backend) on all four networks: same result as eager to float
    rounding, weights untouched, and switching it off gives back the bit-exact eager output."""
    m = VSPBFRModel(_randomize(StyleEncoder(TINY_ENC), 1), _randomize(StyleGAN2Synthesis(TINY_SG), 2),
                    _randomize(CodeDiffuser(TINY_CD), 3), _randomize(RestorationNet(TINY_RN), 4)).eval()
    x = faces(2)
    eager = run(m, x, 5)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.compile_networks()
    try:
        assert m.compiled and all(getattr(m, n)._compiled_call_impl is not None for n in m.COMPILED)
        compiled = run(m, x, 5)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
        assert torch.equal(run(m, x, 5), compiled)                   # the compiled graph is reused, deterministic
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    finally:
        m.compile_networks(False)
    assert not m.compiled and torch.equal(run(m, x, 5), eager)


def test_w_plus_path_never_runs_in_tf32(model: VSPBFRModel) -> None:
    """Hosts turn TF32 on (A1111 does, cuDNN convolutions default to it); the networks see it off, except the
    feature bank and restoration network when allow_tf32 opts in, and the caller's flags come back afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    seen: dict[str, list[tuple[bool, bool]]] = {}
    names = ("style_encoder", "code_diffuser", "stylegan", "restoration_net")
    handles = [getattr(model, n).register_forward_pre_hook(
        lambda mod, args, n=n: seen.setdefault(n, []).append((cudnn.allow_tf32, matmul.allow_tf32))) for n in names]
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        run(model, faces(1), 1)
        default = dict(seen)
        seen.clear()
        model.allow_tf32 = True
        run(model, faces(1), 1)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
        model.allow_tf32 = False
        for h in handles:
            h.remove()
    assert all(default[n] and set(default[n]) == {(False, False)} for n in names)
    assert set(seen["style_encoder"]) == set(seen["code_diffuser"]) == {(False, False)}
    assert set(seen["stylegan"]) == set(seen["restoration_net"]) == {(True, True)}


def test_feature_bank_runs_in_the_compute_dtype_whatever_the_prompts_dtype() -> None:
    m = VSPBFRModel(_randomize(StyleEncoder(TINY_ENC), 1), _randomize(StyleGAN2Synthesis(TINY_SG), 2),
                    _randomize(CodeDiffuser(TINY_CD), 3), _randomize(RestorationNet(TINY_RN), 4)).eval()
    m.set_precision(torch.bfloat16)
    noise = m.draw_noise_per_face([make_generator(1, 0)]).to("cpu", torch.bfloat16)
    with torch.inference_mode():
        prompts = m.diffuse(m.encode(faces(1)), noise.x_T)
        assert prompts.dtype == torch.float32                 # the W+ path stays float32
        bank, _ = m.feature_bank(prompts, noise.stylegan)
    assert all(f.dtype == torch.bfloat16 for f in bank)


def test_one_face_per_call_on_cpu_gives_the_batched_result(model: VSPBFRModel) -> None:
    x = faces(3)
    noise = model.draw_noise_per_face([make_generator(2, i) for i in range(3)])
    assert model.cpu_faces_per_call == 1
    with torch.inference_mode():
        split = model(x, noise)
        model.cpu_faces_per_call = 0          # the whole batch in one call
        try:
            whole = model(x, noise)
        finally:
            model.cpu_faces_per_call = 1
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)

"""smooth_landmarks / smooth_sequence / CenteredSmoother: identity at strength 0, jitter reduction, no lag on a
step (and symmetric around it), no bias on linear motion at the clip ends, outlier rejection, absent frames,
streaming == offline (bit for bit), a direct reference of the plain Gaussian, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from vspbfr_core.errors import InputError
from vspbfr_core.temporal import CenteredSmoother, smooth_landmarks, smooth_sequence, smoothing_radius

FACE = torch.tensor([[-20.0, -20.0], [20.0, -20.0], [0.0, 0.0], [-16.0, 20.0], [16.0, 20.0]]) + 200   # ~100 px face
SCALE = float((FACE - FACE.mean(0)).square().sum(1).mean().sqrt())    # the face scale smooth_landmarks uses


def moving(t: int, speed: tuple[float, float] = (0.5, 0.2)) -> torch.Tensor:
    steps = torch.arange(t, dtype=torch.float32)[:, None, None]
    return FACE[None] + steps * torch.tensor(speed)                    # [T, 5, 2] linear motion


def jitter(shape: tuple[int, ...], std: float, seed: int = 0) -> torch.Tensor:
    return std * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_strength_zero_is_the_exact_identity():
    x = moving(30) + jitter((30, 5, 2), 2.0)
    x[7] += 80                                                          # even an outlier is kept
    present = torch.rand(30, generator=torch.Generator().manual_seed(1)) > 0.3
    out = smooth_landmarks(x, present, 0.0)
    assert torch.equal(out, x) and out is not x
    w = torch.randn(6, 18, 512, dtype=torch.float64)
    assert torch.equal(smooth_sequence(w, None, 0), w)
    assert smoothing_radius(0) == 0 and smoothing_radius(1) == 3 and smoothing_radius(1.5) == 5


def test_jitter_is_reduced_at_least_three_times():
    clean = moving(160)
    noisy = clean + jitter((160, 5, 2), 0.6)
    out = smooth_landmarks(noisy, None, 5.0)
    inner = slice(20, -20)                                 # away from the one-sided windows at the clip ends
    before = (noisy - clean)[inner].std()
    after = (out - clean)[inner].std()
    assert before / after >= 3.0, (before, after)
    assert (out - clean).std() < (noisy - clean).std() / 2.5           # the ends are smoothed too
    assert out.dtype == noisy.dtype and out.shape == noisy.shape


def test_linear_motion_passes_without_bias_even_at_the_ends():
    clean = moving(40, (2.0, -1.0))
    for strength in (1.0, 3.0):
        out = smooth_landmarks(clean, None, strength)
        assert torch.allclose(out, clean, atol=1e-3)      # a plain mean would pull the ends by ~sigma frames
        present = torch.ones(40, dtype=torch.bool)
        present[15:22] = False
        out = smooth_landmarks(clean, present, strength)
        assert torch.allclose(out[present], clean[present], atol=1e-3)


@pytest.mark.parametrize("strength", [1.0, 3.0])
def test_a_step_is_followed_at_once_and_symmetrically(strength):
    t, jump = 20, torch.tensor([1.0 * SCALE, 0.5 * SCALE])      # a cut: the face jumps by ~a face scale
    x = FACE[None].repeat(40, 1, 1)
    x[t:] += jump
    out = smooth_landmarks(x, None, strength)
    old, new = FACE, FACE + jump
    assert torch.allclose(out[:t], old.expand(t, 5, 2), atol=0.05)    # no pre-echo before the step
    assert torch.allclose(out[t:], new.expand(40 - t, 5, 2), atol=0.05)   # the new level from frame t on
    before = out[t - 1 - torch.arange(5)] - old                       # t-1, t-2, ...
    after = out[t + torch.arange(5)] - new                             # t, t+1, ...
    assert torch.allclose(before, -after, atol=1e-3)                   # mirror images: centred, not delayed
    # with jitter on top the step is still followed within one frame
    noisy = x + jitter((40, 5, 2), 0.5, seed=4)
    out = smooth_landmarks(noisy, None, strength)
    err_old = (out[:t] - old).norm(dim=-1).mean(dim=-1)
    err_new = (out[t:] - new).norm(dim=-1).mean(dim=-1)
    assert err_old.max() < 1.0 and err_new.max() < 1.0, (err_old, err_new)


def test_a_plain_gaussian_lags_on_the_step():
    # the same step through the filter without the edge term smears over several frames (what edge prevents)
    x = FACE[None].repeat(40, 1, 1)
    x[20:] += 20.0
    plain = smooth_landmarks(x, None, 3.0, edge=None)
    assert (plain[20] - FACE - 20).abs().max() > 5


def test_outliers_are_rejected():
    clean = moving(60)
    x = clean + jitter((60, 5, 2), 0.3, seed=2)
    x[10] += torch.tensor([40.0, -25.0])                  # one detector glitch
    x[30, 2] += torch.tensor([0.0, 60.0])                 # one wild landmark
    x[44:46] += 35.0                                      # a two-frame glitch
    out = smooth_landmarks(x, None, 2.0)
    err = (out - clean).norm(dim=-1).max(dim=-1).values   # [T] worst point per frame
    assert err.max() < 1.5, err
    off = smooth_landmarks(x, None, 2.0, outlier=None)    # without rejection the glitches leak
    err_off = (off - clean).norm(dim=-1).max(dim=-1).values
    assert err_off[10] > 10 and err_off[30] > 10


def test_absent_frames_are_skipped_and_returned_unchanged():
    clean = moving(50)
    x = clean + jitter((50, 5, 2), 0.4, seed=5)
    present = torch.ones(50, dtype=torch.bool)
    present[[3, 4, 20, 21, 22, 23, 40]] = False
    x[~present] = 1e4                                     # garbage where the face is not detected
    out = smooth_landmarks(x, present, 2.0)
    assert torch.equal(out[~present], x[~present])
    assert (out[present] - clean[present]).abs().max() < 1.5        # the garbage never leaks in
    all_absent = torch.zeros(50, dtype=torch.bool)
    assert torch.equal(smooth_landmarks(x, all_absent, 2.0), x)


def _plain_gaussian_reference(values: torch.Tensor, present: torch.Tensor, sigma: float) -> torch.Tensor:
    """Direct per-frame weighted local linear fit with a truncated Gaussian (no edge, no outliers)."""
    radius = math.ceil(3 * sigma)
    out = values.clone().double()
    v = values.double()
    for t in range(len(values)):
        if not present[t]:
            continue
        lo, hi = max(0, t - radius), min(len(values), t + radius + 1)
        s = torch.arange(lo, hi, dtype=torch.float64)
        w = torch.exp(-0.5 * ((s - t) / sigma) ** 2) * present[lo:hi].double()
        design = torch.stack([torch.ones_like(s), s - t], dim=1)       # a + b (s - t)
        keep = w > 0
        if int(keep.sum()) < 2:
            out[t] = v[t]
            continue
        wd = design[keep] * w[keep, None]
        coef = torch.linalg.lstsq(wd.T @ design[keep], wd.T @ v[lo:hi][keep].flatten(1)).solution
        out[t] = coef[0].view(v.shape[1:])
    return out.to(values.dtype)


def test_sequence_matches_a_direct_reference():
    w = torch.randn(25, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    present = torch.ones(25, dtype=torch.bool)
    present[[0, 9, 10, 11, 24]] = False
    got = smooth_sequence(w, present, 1.5)
    ref = _plain_gaussian_reference(w, present, 1.5)
    assert torch.allclose(got, ref, atol=1e-9)
    assert torch.equal(got[~present], w[~present])


@pytest.mark.parametrize("landmarks,strength", [(True, 2.0), (True, 0.7), (False, 1.5), (False, 0.0)])
def test_streaming_equals_offline_exactly(landmarks, strength):
    t = 37
    if landmarks:
        x = moving(t) + jitter((t, 5, 2), 0.5, seed=7)
        x[12] += 50.0                                     # an outlier, so the median look-ahead is exercised
        x[25:] += 30.0                                    # and a step
    else:
        x = torch.randn(t, 18, 8, generator=torch.Generator().manual_seed(8))
    present = torch.ones(t, dtype=torch.bool)
    present[[2, 3, 17, 30]] = False
    offline = (smooth_landmarks(x, present, strength) if landmarks else smooth_sequence(x, present, strength))
    smoother = CenteredSmoother(strength, landmarks=landmarks)
    assert smoother.delay == smoother.radius + (2 if landmarks and strength > 0 else 0)
    streamed: list[torch.Tensor | None] = []
    for k in range(t):
        got = smoother.push(x[k] if present[k] else None)
        if k >= smoother.delay:
            assert len(got) == 1                          # one frame out per frame in, a fixed delay behind
        else:
            assert got == []
        streamed += got
        assert len(smoother._engine.values) <= 2 * smoother.delay + 2     # a bounded buffer, not the whole clip
    streamed += smoother.flush()
    assert smoother.flush() == []
    assert len(streamed) == t
    for k in range(t):
        if present[k]:
            assert torch.equal(streamed[k], offline[k]), k
        else:
            assert streamed[k] is None


def test_streaming_clip_shorter_than_the_delay():
    x = moving(3)
    smoother = CenteredSmoother(4.0, landmarks=True)
    assert [smoother.push(f) for f in x] == [[], [], []]
    out = smoother.flush()
    assert torch.equal(torch.stack(out), smooth_landmarks(x, None, 4.0))


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError, match=r"\[T, 5, 2\]"):
        smooth_landmarks(torch.zeros(4, 68, 2), None, 1.0)
    with pytest.raises(InputError, match="present"):
        smooth_landmarks(torch.zeros(4, 5, 2), torch.ones(3, dtype=torch.bool), 1.0)
    with pytest.raises(InputError, match="strength"):
        smooth_sequence(torch.zeros(4, 2), None, -1.0)
    with pytest.raises(InputError, match="NaN"):
        smooth_sequence(torch.full((4, 2), float("nan")), None, 1.0)
    with pytest.raises(InputError, match="floating"):
        smooth_sequence(torch.zeros(4, 2, dtype=torch.long), None, 1.0)
    with pytest.raises(InputError, match="edge"):
        smooth_landmarks(torch.zeros(4, 5, 2), None, 1.0, edge=0.0)
    smoother = CenteredSmoother(1.0)
    smoother.push(torch.zeros(3))
    with pytest.raises(InputError, match="shape"):
        smoother.push(torch.zeros(4))
    smoother.flush()
    with pytest.raises(InputError, match="flushed"):
        smoother.push(torch.zeros(3))
    with pytest.raises(InputError, match=r"\[5, 2\]"):
        CenteredSmoother(1.0, landmarks=True).push(torch.zeros(3))

"""restore_sequence (vspbfr_core.temporal.sequence): tracks as noise keys, steady alignment, smoothed W+, streaming.

Tiny VSPBFR networks and the real RetinaFace mobilenet0.25 on short synthetic clips cut from cf_02.png (two
faces in a 300x200 window).  The tests run torch on one thread: on the shared 2-core machine this is ~50x
faster than two threads fighting over the cores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.pipeline import RestoreOptions, VSPBFRPipeline
from vspbfr_core.temporal import restore_sequence
from vspbfr_core.temporal.smooth import CenteredSmoother, smooth_landmarks, smooth_sequence


pytestmark = pytest.mark.usefixtures("one_torch_thread")        # see conftest


@pytest.fixture(scope="module")
def pipe(tiny_models_dir: Path) -> VSPBFRPipeline:
    return VSPBFRPipeline.from_dir(tiny_models_dir, detector="retinaface_mobile0.25").to("cpu", torch.float32)


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    """cf_02.png at half size, [1, 322, 602, 3]."""
    with Image.open(shared_path("faces", "whole", "cf_02.png")) as im:
        im = im.convert("RGB").resize((602, 322), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]


def static_frame(scene: torch.Tensor) -> torch.Tensor:
    return scene[:, 0:200, 30:330].clone()                   # two faces, boxes x 44-112 and 173-236


def pan(scene: torch.Tensor, n: int = 6) -> torch.Tensor:
    return torch.cat([scene[:, 0:200, 30 + 4 * i:330 + 4 * i] for i in range(n)])


def run(pipe, frames, **kwargs) -> torch.Tensor:
    return torch.cat(list(restore_sequence(pipe, frames, **kwargs)))


def singles(clip: torch.Tensor) -> list[torch.Tensor]:
    return [clip[i:i + 1] for i in range(clip.shape[0])]


class RestoreSpy:
    """Wraps pipe.restore_faces: records (face keys, restored crops) of every call."""

    def __init__(self, pipe, monkeypatch):
        self.calls: list[tuple[list[int], torch.Tensor]] = []
        original = pipe.restore_faces

        def spy(crops, style=None, **kwargs):
            restored, st = original(crops, style, **kwargs)
            self.calls.append((list(kwargs.get("face_keys") or range(crops.shape[0])), restored.clone()))
            return restored, st
        monkeypatch.setattr(pipe, "restore_faces", spy)


def test_strengths_zero_equal_the_per_frame_pipeline_byte_for_byte(pipe, scene):
    frame = static_frame(scene)
    clip = frame.repeat(4, 1, 1, 1)
    seen = []
    out = run(pipe, singles(clip), options=RestoreOptions(seed=3),
              callback=lambda d, t, s: seen.append((d, t, s)))
    expected = pipe(frame, RestoreOptions(seed=3))
    assert expected.faces_found == 2
    assert out.shape == clip.shape
    for i in range(4):
        assert torch.equal(out[i], expected.images[0])
    assert not torch.equal(out[0], frame[0])                 # the faces were restored
    assert seen == [(1, 1, "frame"), (2, 2, "frame"), (3, 3, "frame"), (4, 4, "frame")]


def test_deterministic_per_seed(pipe, scene):
    clip = pan(scene, 4)
    a = run(pipe, clip, options=RestoreOptions(seed=1), smooth_wplus=1.0)
    b = run(pipe, clip, options=RestoreOptions(seed=1), smooth_wplus=1.0)
    c = run(pipe, clip, options=RestoreOptions(seed=2), smooth_wplus=1.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def steady_detect(pipe, monkeypatch, reference: torch.Tensor):
    """A detector that reports a face found in ``reference`` at exactly its reference place (the real one moves a
    static face's landmarks by up to ~0.4 px when the rest of the frame changes, as its receptive field spans the
    frame), so what is under test (which noise a face gets) is not hidden by detector noise."""
    original = pipe.detect
    ref = original(reference)

    def detect(images, options=None):
        d = original(images, options)
        boxes, lms = d.boxes.clone(), d.landmarks.clone()
        for i in range(len(d)):
            dist = (ref.boxes - boxes[i]).abs().amax(dim=1)
            j = int(dist.argmin())
            if float(dist[j]) < 3.0:
                boxes[i], lms[i] = ref.boxes[j], ref.landmarks[j]
        return type(d)(d.image_index, boxes, lms, d.scores, d.order_index, d.num_images, d.image_size)
    monkeypatch.setattr(pipe, "detect", detect)


def test_track_keys_keep_a_face_s_noise_when_another_enters_from_the_left(pipe, scene, monkeypatch):
    frame = static_frame(scene)
    hidden = frame.clone()
    hidden[:, :, :125] = 0.5                                  # the left face is not there yet
    clip = torch.cat([hidden] * 3 + [frame] * 3)
    steady_detect(pipe, monkeypatch, hidden)
    monkeypatch.setattr(pipe, "chunk_size", 1)                 # one face per batch: no batch-size rounding
    spy = RestoreSpy(pipe, monkeypatch)
    run(pipe, singles(clip))
    keys = [k for k, _ in spy.calls]
    assert keys == [[0]] * 3 + [[1, 0]] * 3                   # right face = track 0, the newcomer = track 1
    right = [r[k.index(0)] for k, r in spy.calls]
    for crop in right[1:]:
        assert torch.equal(crop, right[0])
    # the per-frame pipeline keys faces by their index: the right face becomes face 1 and its noise changes
    spy.calls.clear()
    pipe(hidden)
    pipe(frame)
    assert [k for k, _ in spy.calls] == [[0], [0, 1]]
    assert not torch.equal(spy.calls[1][1][1], spy.calls[0][1][0])


def test_max_faces_and_selection_refer_to_tracks(pipe, scene, monkeypatch):
    frame = static_frame(scene)
    hidden = frame.clone()
    hidden[:, :, :125] = 0.5
    clip = torch.cat([hidden, frame, frame])
    spy = RestoreSpy(pipe, monkeypatch)
    out = run(pipe, clip, options=RestoreOptions(max_faces=1))
    assert [k for k, _ in spy.calls] == [[0]] * 3             # only the first person to appear
    assert torch.equal(out[1, :, :100], frame[0, :, :100])    # the newcomer (leftmost) is left alone
    spy.calls.clear()
    run(pipe, clip, options=RestoreOptions(selection="1"))
    assert [k for k, _ in spy.calls] == [[1], [1]]            # frame 0 has no track 1: passed through


def jittered_detect(pipe, monkeypatch, amount: float = 2.0) -> list[int]:
    """Detections shifted by a random offset of up to ``amount`` px per face, the same for the n-th call of every
    run (reset the returned counter to 0 before a run)."""
    calls = [0]
    original = pipe.detect

    def detect(images, options=None):
        dets = original(images, options)
        gen = torch.Generator().manual_seed(calls[0])
        calls[0] += 1
        offset = (torch.rand(dets.landmarks.shape[0], 1, 2, generator=gen) * 2 - 1) * amount
        return type(dets)(dets.image_index, dets.boxes + offset.repeat(1, 2, 1).flatten(1), dets.landmarks + offset,
                          dets.scores, dets.order_index, dets.num_images, dets.image_size)
    monkeypatch.setattr(pipe, "detect", detect)
    return calls


def test_landmark_smoothing_steadies_the_aligned_crops(pipe, scene, monkeypatch):
    clip = static_frame(scene).repeat(8, 1, 1, 1)
    calls = jittered_detect(pipe, monkeypatch)
    crops: list[torch.Tensor] = []
    original = pipe.align

    landmarks: list[torch.Tensor] = []

    def align(images, dets):
        aligned = original(images, dets)
        crops.append(aligned.crops.clone())
        landmarks.append(dets.landmarks.clone())
        return aligned
    monkeypatch.setattr(pipe, "align", align)

    def change(strength: float) -> float:
        crops.clear()
        calls[0] = 0
        run(pipe, clip, smooth_alignment=strength)
        stack = torch.stack(crops)                            # [T, 2, 3, R, R]
        return float((stack[1:] - stack[:-1]).abs().mean())
    raw, raw_lms = change(0.0), torch.stack(landmarks)        # [T, 2, 5, 2] jittered detections
    landmarks.clear()
    smoothed = change(2.0)
    assert smoothed < 0.6 * raw, (raw, smoothed)
    for track in (0, 1):                                      # aligned with the offline smoothed landmarks
        expected = smooth_landmarks(raw_lms[:, track].double(), None, 2.0)
        torch.testing.assert_close(torch.stack(landmarks)[:, track].double(), expected, rtol=0, atol=1e-4)


def test_wplus_smoothing_restores_with_each_track_s_centred_smoothed_prompts(pipe, scene, monkeypatch):
    clip = pan(scene, 6)
    o = RestoreOptions(seed=4)
    styles: list[tuple[list[int], torch.Tensor]] = []
    original = pipe.restore_faces

    def spy(crops, style=None, **kwargs):
        styles.append((list(kwargs["face_keys"]), style.prompts.clone()))
        return original(crops, style, **kwargs)
    monkeypatch.setattr(pipe, "restore_faces", spy)
    smoothed = run(pipe, clip, options=o, smooth_wplus=1.0)
    assert [k for k, _ in styles] == [[0, 1]] * 6
    # expected: per frame, the prompts of its aligned faces with the track's noise, smoothed offline per track
    raw = []
    for i in range(6):
        dets = pipe.detect(clip[i:i + 1], o)
        crops = pipe.align(clip[i:i + 1].permute(0, 3, 1, 2), dets).crops
        raw.append(pipe.diffuse(pipe.encode(crops), pipe.noise_for([0, 1], o.seed)))
    raw_t = torch.stack(raw)                                  # [T, 2, num_ws, w_dim]
    got = torch.stack([p for _, p in styles])
    for track in (0, 1):
        expected = smooth_sequence(raw_t[:, track].float(), None, 1.0)
        torch.testing.assert_close(got[:, track].float(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, raw_t.to(got.dtype))       # the smoothing did something
    monkeypatch.undo()
    assert not torch.equal(smoothed, run(pipe, clip, options=o))


def test_streaming_windows_of_1_and_5_give_the_same_output(pipe, scene):
    clip = pan(scene, 7)
    kwargs = dict(options=RestoreOptions(seed=5), smooth_alignment=1.0, smooth_wplus=1.0)
    one = list(restore_sequence(pipe, singles(clip), window=1, **kwargs))
    five = list(restore_sequence(pipe, [clip[:5], clip[5:]], window=5, **kwargs))
    assert all(b.shape[0] == 1 for b in one) and len(one) == 7
    assert all(b.shape[0] <= 5 for b in five)
    assert torch.equal(torch.cat(one), torch.cat(five))
    assert torch.equal(torch.cat(one), run(pipe, clip, **kwargs))   # one tensor, window 16


def test_lookahead_is_bounded_by_the_smoothing_delay(pipe, scene):
    clip = pan(scene, 12)
    lookahead = CenteredSmoother(1.0, landmarks=True).delay + CenteredSmoother(1.0).delay   # 5 + 3
    read = [0]

    def frames():
        for i in range(clip.shape[0]):
            read[0] += 1
            yield clip[i:i + 1]

    ahead, produced = [], 0
    for batch in restore_sequence(pipe, frames(), smooth_alignment=1.0, smooth_wplus=1.0):
        produced += batch.shape[0]
        ahead.append(read[0] - produced)
    assert produced == 12
    assert max(ahead) == lookahead                             # frame t comes out when t + lookahead was read
    ahead, produced = [], 0
    for batch in restore_sequence(pipe, frames()):
        produced += batch.shape[0]
        ahead.append(read[0] - 12 - produced)
    assert max(ahead) == 0                                     # no smoothing: no look-ahead


def test_frames_without_faces_pass_through_unchanged(pipe, scene):
    blank = torch.rand(1, 200, 300, 3, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.45
    frame = static_frame(scene)
    clip = torch.cat([blank, frame, blank, frame])
    out = run(pipe, clip, smooth_alignment=1.0, smooth_wplus=1.0)
    assert torch.equal(out[0], blank[0]) and torch.equal(out[2], blank[0])
    assert not torch.equal(out[1], frame[0])


def test_callback_interrupts(pipe, scene):
    class Stop(Exception):
        pass

    def callback(done, total, stage):
        if done == 2:
            raise Stop
    gen = restore_sequence(pipe, pan(scene, 4), callback=callback, total_frames=4)
    with pytest.raises(Stop):
        list(gen)


def test_bad_inputs_are_clear_input_errors(pipe, scene):
    frame = static_frame(scene)
    with pytest.raises(InputError, match="same size"):
        run(pipe, [frame, scene[:, :100, :100]])
    with pytest.raises(InputError, match="iterable"):
        restore_sequence(pipe, 3)
    with pytest.raises(InputError, match="smooth_alignment"):
        restore_sequence(pipe, [frame], smooth_alignment=-1)
    with pytest.raises(InputError, match="window"):
        restore_sequence(pipe, [frame], window=0)
    with pytest.raises(InputError, match="candidates"):
        restore_sequence(pipe, [frame], RestoreOptions(candidates=2))
    with pytest.raises(InputError, match="RestoreOptions"):
        restore_sequence(pipe, [frame], {"seed": 1})
    with pytest.raises(InputError):
        run(pipe, [frame[0]])                                  # [H, W, C]: not a batch
    with pytest.raises(InputError, match="detector"):
        restore_sequence(VSPBFRPipeline(pipe.model, None), [frame])


def test_track_smoothers_follow_tracks_with_gaps_and_retire_them():
    from vspbfr_core.temporal.sequence import _TrackSmoothers

    values = torch.randn(9, 3, 4, generator=torch.Generator().manual_seed(0))
    present = torch.tensor([1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)   # absent 4 frames at the end
    smoothers = _TrackSmoothers(1.0, False, max_gap=1)
    out = []
    for t in range(9):
        frame = {0: values[t]} if present[t] else {}
        if t >= 2:
            frame[1] = values[t] + 1                                          # a second track from frame 2 on
        out += smoothers.push(t, frame)
        if t == 7:
            assert 0 not in smoothers._items                                  # absent > max_gap + 1: retired
    out += smoothers.flush()
    got0 = {f: v for f, tid, v in out if tid == 0}
    got1 = {f: v for f, tid, v in out if tid == 1}
    assert sorted(got0) == [0, 1, 3, 4] and sorted(got1) == list(range(2, 9))
    expected0 = smooth_sequence(values, present, 1.0)
    expected1 = smooth_sequence(values[2:] + 1, None, 1.0)
    for f, v in got0.items():
        torch.testing.assert_close(v, expected0[f], rtol=0, atol=1e-6)
    for f, v in got1.items():
        torch.testing.assert_close(v, expected1[f - 2], rtol=0, atol=1e-6)

"""vspbfr_core.temporal.batch: tracks, track selection and per-track smoothing of a whole frame batch.

Synthetic detections only (no network): faces are boxes with five landmarks at given centres per frame.
"""
from __future__ import annotations

import pytest
import torch

from vspbfr_core.errors import InputError
from vspbfr_core.face import Detections
from vspbfr_core.temporal import (FaceTracker, TrackSelection, assign_tracks, smooth_landmarks, smooth_sequence,
                                  smooth_track_codes, track_batch)

SIZE = 40.0
PATTERN = torch.tensor([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.25], [0.15, 0.25]])


def clip(frames: list[list[tuple[float, float]]], jitter: float = 0.0, seed: int = 0) -> Detections:
    """Detections of a clip: ``frames[t]`` lists the face centres (x, y) of frame t, in the order listed."""
    gen = torch.Generator().manual_seed(seed)
    index, boxes, lms = [], [], []
    for t, centres in enumerate(frames):
        for x, y in centres:
            c = torch.tensor([x, y]) + (torch.rand(2, generator=gen) * 2 - 1) * jitter
            index.append(t)
            boxes.append(torch.cat([c - SIZE / 2, c + SIZE / 2]))
            lms.append(c + PATTERN * SIZE)
    n = len(index)
    if n == 0:
        return Detections.empty(len(frames), (200, 400))
    return Detections(torch.tensor(index), torch.stack(boxes), torch.stack(lms), torch.ones(n),
                      torch.zeros(n, dtype=torch.long), len(frames), (200, 400))


def per_frame(tracked) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(tracked.detections.num_images)]
    for f, t in zip(tracked.detections.image_index.tolist(), tracked.track_ids.tolist()):
        out[f].append(t)
    return out


def test_crossing_faces_keep_their_tracks_and_faces_are_ordered_by_track():
    # face A moves right, face B moves left; they cross around frame 5; listed in changing order
    frames = [[(100 + 20 * t, 100), (300 - 20 * t, 100)][::(1 if t % 2 else -1)] for t in range(11)]
    tracked = track_batch(clip(frames))
    assert per_frame(tracked) == [[0, 1]] * 11
    xs = tracked.detections.centers[:, 0].tolist()
    assert [xs[2 * t] for t in range(11)] == pytest.approx([100 + 20 * t for t in range(11)])  # track 0 = A
    assert tracked.detections.order_index.tolist() == [0, 1] * 11                      # rank in its frame
    assert torch.equal(tracked.detections.landmarks, tracked.raw_landmarks)            # strength 0: raw


def test_a_face_that_leaves_and_comes_back_keeps_its_id_and_a_newcomer_gets_the_next():
    frames = [[(100, 100), (300, 100)]] * 3 + [[(300, 100)]] * 3 + [[(100, 100), (300, 100)]] * 2 \
        + [[(100, 100), (200, 150), (300, 100)]] * 2
    tracked = track_batch(clip(frames))
    assert per_frame(tracked) == [[0, 1]] * 3 + [[1]] * 3 + [[0, 1]] * 2 + [[0, 1, 2]] * 2
    # rank in frame follows the track order, not the x position
    assert tracked.detections.order_index.tolist()[-3:] == [0, 1, 2]
    assert tracked.detections.centers[-3:, 0].tolist() == pytest.approx([100, 300, 200])


def test_max_faces_and_index_selection_refer_to_tracks():
    frames = [[(300, 100)]] * 2 + [[(100, 100), (300, 100)]] * 2     # the left face appears in frame 2: track 1
    dets = clip(frames)
    assert per_frame(track_batch(dets, max_faces=1)) == [[0]] * 4
    assert per_frame(track_batch(dets, selection="1")) == [[], [], [1], [1]]
    assert per_frame(track_batch(dets, selection="0,1", max_faces=1)) == [[0]] * 4
    sel = TrackSelection.parse("largest", 3)
    assert (sel.per_frame, sel.max_faces, sel.tracks) == ("largest", 3, None)
    assert TrackSelection.parse("2, 0").tracks == frozenset({0, 2}) and TrackSelection.parse("all").per_frame == "all"
    with pytest.raises(InputError, match="selection 'first'"):
        TrackSelection.parse("first")
    with pytest.raises(InputError, match="max_faces must be at least 0"):
        track_batch(dets, max_faces=-1)


def test_zero_faces_and_frames_without_faces():
    empty = track_batch(clip([[], [], []]), smooth_alignment=2.0)
    assert len(empty) == 0 and empty.detections.num_images == 3 and empty.track_ids.shape == (0,)
    tracked = track_batch(clip([[], [(100, 100)], []]), smooth_alignment=2.0)
    assert per_frame(tracked) == [[], [0], []]


def test_landmarks_are_smoothed_per_track_with_the_offline_filter_over_its_frames():
    frames = [[(100 + 3 * t, 100), (300, 100)] for t in range(12)]
    frames[4] = [(300, 100)]                                           # track 0 missing in frame 4
    dets = clip(frames, jitter=0.7, seed=1)
    tracked = track_batch(dets, smooth_alignment=2.0)
    ids = tracked.track_ids
    for tid in (0, 1):
        mine = torch.nonzero(ids == tid, as_tuple=True)[0]
        frames_of = tracked.detections.image_index[mine]
        track = torch.zeros(12, 5, 2)
        present = torch.zeros(12, dtype=torch.bool)
        track[frames_of] = tracked.raw_landmarks[mine]
        present[frames_of] = True
        expected = smooth_landmarks(track, present, 2.0)[frames_of]
        assert torch.equal(tracked.detections.landmarks[mine], expected)
    assert not torch.equal(tracked.detections.landmarks, tracked.raw_landmarks)
    # jitter goes down: frame-to-frame change of the static track 1
    still = tracked.detections.landmarks[ids == 1]
    raw = tracked.raw_landmarks[ids == 1]
    assert (still[1:] - still[:-1]).abs().mean() < 0.7 * (raw[1:] - raw[:-1]).abs().mean()


def test_track_ids_equal_assign_tracks_and_a_used_tracker_is_refused():
    frames = [[(100 + 10 * t, 100), (250, 100 + 5 * t)] for t in range(6)]
    dets = clip(frames, jitter=1.0)
    expected = [sorted(ids.tolist()) for ids in assign_tracks(dets)]
    assert per_frame(track_batch(dets)) == expected
    used = FaceTracker()
    used.update(dets.for_image(0))
    with pytest.raises(InputError, match="has not seen any frame"):
        track_batch(dets, tracker=used)
    with pytest.raises(InputError, match="expected the Detections"):
        track_batch([dets])


def test_codes_are_smoothed_per_track_along_frames():
    gen = torch.Generator().manual_seed(0)
    frame_index = torch.tensor([0, 0, 1, 2, 2, 3, 5, 5])
    track_ids = torch.tensor([0, 1, 1, 0, 1, 1, 0, 1])
    codes = torch.randn(8, 3, 4, generator=gen)
    out = smooth_track_codes(codes, frame_index, track_ids, 1.5)
    for tid in (0, 1):
        mine = torch.nonzero(track_ids == tid, as_tuple=True)[0]
        f = frame_index[mine]
        track = torch.zeros(int(f.max()) - int(f.min()) + 1, 3, 4)
        present = torch.zeros(track.shape[0], dtype=torch.bool)
        track[f - f.min()], present[f - f.min()] = codes[mine], True
        assert torch.equal(out[mine], smooth_sequence(track, present, 1.5)[f - f.min()])
    assert not torch.allclose(out, codes)
    assert torch.equal(smooth_track_codes(codes, frame_index, track_ids, 0.0), codes)
    assert smooth_track_codes(codes[:0], frame_index[:0], track_ids[:0], 2.0).shape == (0, 3, 4)
    with pytest.raises(InputError, match="two faces in one frame"):
        smooth_track_codes(codes[:2], [0, 0], [1, 1], 1.0)
    with pytest.raises(InputError, match="give one of each per face"):
        smooth_track_codes(codes, frame_index[:3], track_ids, 1.0)
    with pytest.raises(InputError, match="smooth_wplus must be at least 0"):
        smooth_track_codes(codes, frame_index, track_ids, -1.0)


"""FaceTracker / assign_tracks on synthetic Detections (crossing faces, gaps, new faces, numbering, empty frames,
determinism, bad input), the exact assignment solver against brute force, and one run on real RetinaFace
detections of a slow pan over a group photo."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import shared_path
from vspbfr_core.errors import InputError
from vspbfr_core.face import Detections
from vspbfr_core.temporal import FaceTracker, assign_tracks, box_iou, solve_assignment

TEMPLATE = torch.tensor([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])   # in box units


def faces(*centers: tuple[float, float], size: float = 60.0, image: int = 0) -> Detections:
    """Detections of one frame: a face box of side ``size`` around each centre, template landmarks."""
    if not centers:
        return Detections.empty(1, (480, 640))
    c = torch.tensor(centers, dtype=torch.float32)
    boxes = torch.cat([c - size / 2, c + size / 2], dim=1)
    landmarks = boxes[:, None, :2] + TEMPLATE[None] * size
    f = len(centers)
    return Detections(torch.full((f,), image, dtype=torch.long), boxes, landmarks, torch.ones(f),
                      torch.arange(f), 1, (480, 640))


def run(frames: list[Detections], **kw) -> list[list[int]]:
    return [ids.tolist() for ids in assign_tracks(frames, **kw)]


def test_crossing_faces_keep_their_ids():
    # two faces moving past each other horizontally over 11 frames; they overlap heavily in the middle, and
    # between frames 5 and 6 each face lands closer to where the *other* one was
    frames = []
    for k in range(11):
        a = (100.0 + 20 * k, 200.0)           # left -> right
        b = (310.0 - 20 * k, 205.0)           # right -> left
        frames.append(faces(a, b))
    ids = run(frames)
    assert ids[0] == [0, 1]
    assert all(row == [0, 1] for row in ids), ids
    mid = frames[5]
    assert box_iou(mid.boxes[:1], mid.boxes[1:]).item() > 0.6     # they really overlap at the crossing


def test_crossing_needs_the_prediction():
    # without a velocity (constant position model) the tracker swaps ids after the crossing point
    frames = [faces((100.0 + 20 * k, 200.0), (310.0 - 20 * k, 205.0)) for k in range(11)]
    tracker = FaceTracker()
    ids = []
    for d in frames:
        for t in tracker._tracks:                    # drop the velocity every frame
            t.box_velocity.zero_()
            t.landmark_velocity.zero_()
            t.hits = 1
        ids.append(tracker.update(d).tolist())
    assert any(row != [0, 1] for row in ids)


def test_listing_order_does_not_matter():
    frames = [faces((100.0 + 20 * k, 200.0), (310.0 - 20 * k, 205.0)) for k in range(11)]
    flipped = [d.index(torch.tensor([1, 0])) for d in frames]
    assert run(flipped) == [[1, 0]] * 11


def test_leaving_and_coming_back_within_max_gap_keeps_the_id():
    frames = []
    for k in range(12):
        still = (500.0, 300.0)
        mover = (100.0 + 10 * k, 200.0)
        frames.append(faces(still, mover) if not 4 <= k < 7 else faces(still))   # mover hidden 3 frames
    ids = run(frames, max_gap=3)
    assert ids[0] == [1, 0]            # left to right: the mover (x=100) is 0, the still face 1
    assert ids[5] == [1]
    assert ids[7] == [1, 0] and ids[-1] == [1, 0]


def test_after_max_gap_a_new_id():
    frames = []
    for k in range(12):
        mover = (100.0 + 10 * k, 200.0)
        frames.append(faces(mover) if not 4 <= k < 8 else faces())                 # hidden 4 frames
    assert run(frames, max_gap=4)[8] == [0]
    assert run(frames, max_gap=3)[8] == [1]
    assert run(frames, max_gap=3)[-1] == [1]


def test_reappearing_far_from_the_prediction_is_a_new_face():
    frames = [faces((100.0, 200.0)), faces((100.0, 200.0)), faces(), faces((500.0, 200.0))]
    assert run(frames, max_gap=5) == [[0], [0], [], [1]]


def test_new_face_mid_clip_gets_the_next_id_and_numbering_is_left_to_right():
    frames = [faces((400.0, 100.0), (100.0, 100.0)),                      # listed right first
              faces((400.0, 100.0), (100.0, 100.0)),
              faces((400.0, 100.0), (250.0, 300.0), (100.0, 100.0), (550.0, 300.0)),   # two newcomers
              faces((400.0, 100.0), (250.0, 300.0), (100.0, 100.0), (550.0, 300.0))]
    ids = run(frames)
    assert ids[0] == [1, 0]                          # the left face is 0
    assert ids[2] == [1, 2, 0, 3]                    # newcomers get 2 (left) and 3 (right)
    assert ids[3] == ids[2]
    same_x = [faces((300.0, 400.0), (300.0, 100.0))]  # equal x: the upper one first
    assert run(same_x) == [[1, 0]]


def test_zero_faces_and_zero_frames():
    assert assign_tracks([]) == []
    assert run([faces(), faces()]) == [[], []]
    out = assign_tracks(Detections.empty(0))
    assert out == []
    ids = assign_tracks([faces(), faces((10.0, 10.0)), faces()])
    assert [i.dtype for i in ids] == [torch.long] * 3
    assert [i.tolist() for i in ids] == [[], [0], []]


def test_batch_detections_are_split_per_frame():
    per_frame = [faces((100.0 + 10 * k, 100.0), (400.0, 100.0)) for k in range(5)]
    batch = Detections.concat(per_frame)
    assert batch.num_images == 5
    assert [i.tolist() for i in assign_tracks(batch)] == run(per_frame)
    with_empty = Detections.concat([faces((100.0, 100.0)), faces(), faces((102.0, 100.0))])
    assert [i.tolist() for i in assign_tracks(with_empty)] == [[0], [], [0]]


def test_deterministic():
    gen = torch.Generator().manual_seed(3)
    frames = []
    for k in range(20):
        n = int(torch.randint(0, 6, (1,), generator=gen))
        cs = (torch.rand(n, 2, generator=gen) * torch.tensor([600.0, 400.0])).tolist()
        frames.append(faces(*[tuple(c) for c in cs]))
    first = run(frames)
    assert first == run(frames) == run(frames)
    counts = [len(r) for r in first]
    assert counts == [len(d) for d in frames]
    for row in first:
        assert len(set(row)) == len(row)             # no id twice in one frame


def test_streaming_equals_batch():
    frames = [faces((100.0 + 15 * k, 200.0), (300.0 - 15 * k, 210.0)) for k in range(8)]
    tracker = FaceTracker(max_gap=2)
    streamed = [tracker.update(d).tolist() for d in frames]
    assert streamed == run(frames, max_gap=2)
    assert tracker.num_tracks == 2 and tracker.live_ids == [0, 1]


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError):
        FaceTracker(iou_min=2.0)
    with pytest.raises(InputError):
        FaceTracker(max_gap=-1)
    with pytest.raises(InputError):
        FaceTracker().update(torch.zeros(2, 4))                          # type: ignore[arg-type]
    two_images = Detections.concat([faces((10.0, 10.0)), faces((20.0, 20.0))])
    with pytest.raises(InputError, match="one frame"):
        FaceTracker().update(two_images)
    bad = faces((10.0, 10.0))
    nan = Detections(bad.image_index, bad.boxes * float("nan"), bad.landmarks, bad.scores, bad.order_index, 1)
    with pytest.raises(InputError, match="NaN"):
        FaceTracker().update(nan)
    with pytest.raises(InputError):
        assign_tracks("frames")                                          # type: ignore[arg-type]


def test_solve_assignment_is_optimal():
    rng = np.random.default_rng(0)
    for n, m in [(1, 1), (2, 3), (3, 2), (4, 4), (5, 3), (3, 6), (6, 6)]:
        for _ in range(5):
            cost = rng.random((n, m)).round(3).tolist()
            got = solve_assignment(cost)
            assert len(got) == n
            used = [j for j in got if j >= 0]
            assert len(used) == len(set(used)) == min(n, m)
            total = sum(cost[i][j] for i, j in enumerate(got) if j >= 0)
            if n <= m:
                best = min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
            else:
                best = min(sum(cost[p[j]][j] for j in range(m)) for p in itertools.permutations(range(n), m))
            assert total == pytest.approx(best, abs=1e-9)
    assert solve_assignment([]) == []
    assert solve_assignment([[], []]) == [-1, -1]
    assert solve_assignment(torch.tensor([[5.0, 1.0], [1.0, 5.0]])) == [1, 0]
    with pytest.raises(InputError):
        solve_assignment([[1.0, float("nan")]])


def test_real_detections_of_a_slow_pan_keep_their_ids():
    from PIL import Image

    from vspbfr_core.face import detect_faces, load_detector

    with Image.open(shared_path("faces", "whole", "cf_02.png")) as im:
        photo = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)   # [645, 1204, 3]
    detector = load_detector("retinaface_mobile0.25", [shared_path("weights")])
    h, w = 600, 1100
    frames = torch.stack([photo[6 * k:6 * k + h, 12 * k:12 * k + w] for k in range(8)])      # slow diagonal pan
    dets = detect_faces(detector, frames, detect_size=640)
    ids = assign_tracks(dets)
    assert len(ids) == 8
    counts = dets.counts()
    assert counts[0] >= 3 and len(set(counts)) == 1, counts          # the same faces in every frame
    first = ids[0].tolist()
    assert first == sorted(first) == list(range(counts[0]))          # left-right order = first-appearance order
    for k in range(1, 8):
        # the same face (by its position in the photo: crop offset added back) keeps its id
        prev = dets.for_image(k - 1).centers + torch.tensor([12.0 * (k - 1), 6.0 * (k - 1)])
        cur = dets.for_image(k).centers + torch.tensor([12.0 * k, 6.0 * k])
        nearest = torch.cdist(cur, prev).argmin(dim=1)
        assert ids[k].tolist() == ids[k - 1][nearest].tolist()
        assert sorted(ids[k].tolist()) == first

"""Face tracks: the faces of consecutive video frames linked into identities (issue 14, video support).

A *track* is one face followed through a clip.  Its id is what ``--select`` / ``--max-faces`` refer to on a
video, so ids are small ints numbered in order of first appearance, ties within one frame broken left to right
(box centre x, then y).  The per-frame steps of :meth:`FaceTracker.update`:

1. Predict every live track to the current frame with a constant-velocity model of its box and landmarks
   (``last + velocity * frames_since_seen``).  The prediction is what lets two faces that cross keep their ids:
   in the frame where their boxes overlap, each face is still closest to its *own* predicted place.
2. Cost of pairing track ``i`` with detection ``j``: ``(1 - IoU(predicted box, box)) + d``, where ``d`` is the
   mean distance of the five predicted landmarks to the detected ones divided by the face size (mean short box
   side of prediction and detection).  A pair is allowed only when ``IoU >= iou_min`` or ``d <= max_distance``.
3. Exact optimal assignment (:func:`solve_assignment`, Hungarian method with potentials, ``O(n^2 m)``; scipy is
   not a dependency).  Forbidden pairs get a prohibitive cost, so the solution first matches as many allowed
   pairs as possible, then minimises the total cost; forbidden pairs in the solution are dropped.
4. Matched tracks take the detection and update their velocity (the first match sets it, later ones average the
   new per-frame displacement with the old velocity, ``velocity_smoothing``).  Unmatched detections start new
   tracks, numbered left to right.  A track unseen for more than ``max_gap`` frames is retired for good; one that
   comes back within ``max_gap`` frames near its predicted place keeps its id.

Everything runs on CPU in float64 Python / torch; the matrices are tiny (faces per frame), the result is
deterministic and does not depend on the order in which a frame's detections are listed (except for exact ties).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..checks import check_float, check_int
from ..errors import InputError
from ..face.detect import Detections

__all__ = ["FaceTracker", "assign_tracks", "solve_assignment", "box_iou"]

FORBIDDEN = 1e9     # cost of a pair the gate refuses (larger than any sum of allowed costs)


def solve_assignment(cost: Sequence[Sequence[float]]) -> list[int]:
    """Exact minimum-cost assignment of a rectangular cost matrix (Hungarian method with potentials).

    Args:
        cost: ``n x m`` finite costs (a list of rows or a 2-D tensor).

    Returns:
        ``col[i]`` for every row ``i``: the column assigned to row ``i``, or ``-1`` when ``n > m`` and the row
        is left out.  Every column is used at most once and ``min(n, m)`` pairs are made, with the smallest
        possible total cost.
    """
    rows = [[float(v) for v in row] for row in (cost.tolist() if isinstance(cost, torch.Tensor) else cost)]
    n = len(rows)
    m = len(rows[0]) if n else 0
    if any(len(r) != m for r in rows):
        raise InputError("solve_assignment: the cost matrix rows have different lengths")
    if n == 0 or m == 0:
        return [-1] * n
    if any(not math.isfinite(v) for r in rows for v in r):
        raise InputError("solve_assignment: the cost matrix holds NaN or infinite values")
    transposed = n > m
    if transposed:                                   # the method below needs rows <= columns
        rows = [list(col) for col in zip(*rows)]
        n, m = m, n
    inf = float("inf")
    u = [0.0] * (n + 1)                              # row potentials (1-based; 0 is the virtual start)
    v = [0.0] * (m + 1)                              # column potentials
    match = [0] * (m + 1)                            # match[j] = row matched to column j (0 = free)
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:                                  # grow an alternating tree until a free column is reached
            used[j0] = True
            i0 = match[j0]
            delta = inf
            j1 = 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = rows[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:                                    # flip the augmenting path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    row_to_col = [-1] * n
    for j in range(1, m + 1):
        if match[j]:
            row_to_col[match[j] - 1] = j - 1
    if not transposed:
        return row_to_col
    out = [-1] * m                                   # original rows = current columns
    for i, j in enumerate(row_to_col):
        if j >= 0:
            out[j] = i
    return out


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] intersection over union of boxes ``a`` [N, 4] and ``b`` [M, 4] (x1, y1, x2, y2)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


@dataclass
class _Track:
    """State of one live track (float64, CPU)."""

    track_id: int
    box: torch.Tensor             # [4] last seen box
    landmarks: torch.Tensor       # [5, 2] last seen landmarks
    box_velocity: torch.Tensor    # [4] pixels per frame
    landmark_velocity: torch.Tensor   # [5, 2] pixels per frame
    last_frame: int
    hits: int = 1

    def predict(self, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        dt = frame - self.last_frame
        return self.box + self.box_velocity * dt, self.landmarks + self.landmark_velocity * dt


def _frame_arrays(dets: Detections, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(dets, Detections):
        raise InputError(f"{where}: expected a Detections object for one frame, got {type(dets).__name__}")
    boxes = dets.boxes.detach().to("cpu", torch.float64)
    landmarks = dets.landmarks.detach().to("cpu", torch.float64)
    f = len(dets)
    if tuple(boxes.shape) != (f, 4) or tuple(landmarks.shape) != (f, 5, 2):
        raise InputError(f"{where}: Detections with boxes {tuple(boxes.shape)} and landmarks "
                         f"{tuple(landmarks.shape)}; expected [F, 4] and [F, 5, 2]")
    if f and dets.image_index.unique().numel() > 1:
        raise InputError(f"{where}: the Detections hold faces of {dets.image_index.unique().numel()} images; "
                         "pass one frame at a time (Detections.for_image(i)) or use assign_tracks for a batch")
    if not (torch.isfinite(boxes).all() and torch.isfinite(landmarks).all()):
        raise InputError(f"{where}: boxes or landmarks hold NaN or infinite values")
    return boxes, landmarks


class FaceTracker:
    """Streaming tracker: call :meth:`update` once per frame, in order; it keeps the tracks between calls.

    Args:
        iou_min: a detection may continue a track when the IoU of its box with the track's predicted box is at
            least this (default 0.1) ...
        max_distance: ... or when the mean landmark distance to the prediction is at most this many face sizes
            (default 0.5).
        max_gap: frames a track may be missing and still get its id back (default 10; 0 = must be seen in
            every frame).
        velocity_smoothing: weight of the old velocity when a track is matched again, in [0, 1) (default 0.5;
            0 = the last displacement only).
    """

    def __init__(self, iou_min: float = 0.1, max_gap: int = 10, *, max_distance: float = 0.5,
                 velocity_smoothing: float = 0.5) -> None:
        self.iou_min = check_float(iou_min, "iou_min", minimum=0.0, maximum=1.0)
        self.max_gap = check_int(max_gap, "max_gap", minimum=0)
        self.max_distance = check_float(max_distance, "max_distance", minimum=0.0)
        self.velocity_smoothing = check_float(velocity_smoothing, "velocity_smoothing", minimum=0.0, maximum=1.0)
        if self.velocity_smoothing >= 1.0:
            raise InputError("velocity_smoothing must be below 1 (1 would never update the velocity)")
        self.frame = -1                   # index of the last frame given to update
        self.next_id = 0
        self._tracks: list[_Track] = []

    @property
    def num_tracks(self) -> int:
        """Number of ids handed out so far."""
        return self.next_id

    @property
    def live_ids(self) -> list[int]:
        """Ids of the tracks that can still be continued (seen within the last ``max_gap`` frames)."""
        return [t.track_id for t in self._tracks]

    def _costs(self, boxes: torch.Tensor, landmarks: torch.Tensor) -> list[list[float]]:
        pred = [t.predict(self.frame) for t in self._tracks]
        pred_boxes = torch.stack([p[0] for p in pred])                       # [N, 4]
        pred_lms = torch.stack([p[1] for p in pred])                         # [N, 5, 2]
        iou = box_iou(pred_boxes, boxes)                                     # [N, M]
        size_p = (pred_boxes[:, 2:] - pred_boxes[:, :2]).abs().min(dim=1).values
        size_d = (boxes[:, 2:] - boxes[:, :2]).abs().min(dim=1).values
        size = ((size_p[:, None] + size_d[None, :]) / 2).clamp(min=1e-6)
        dist = (pred_lms[:, None] - landmarks[None]).norm(dim=-1).mean(dim=-1) / size   # [N, M]
        allowed = (iou >= self.iou_min) | (dist <= self.max_distance)
        cost = torch.where(allowed, (1 - iou) + dist, torch.full_like(iou, FORBIDDEN))
        return cost.tolist()

    def update(self, frame_dets: Detections) -> torch.Tensor:
        """Track ids ``[F]`` (long) of the faces of the next frame, in the order of ``frame_dets``."""
        boxes, landmarks = _frame_arrays(frame_dets, "FaceTracker.update")
        self.frame += 1
        self._tracks = [t for t in self._tracks if self.frame - t.last_frame <= self.max_gap + 1]
        f = boxes.shape[0]
        ids = [-1] * f
        if f and self._tracks:
            cost = self._costs(boxes, landmarks)
            for i, j in enumerate(solve_assignment(cost)):
                if j < 0 or cost[i][j] >= FORBIDDEN:
                    continue
                self._continue(self._tracks[i], boxes[j], landmarks[j])
                ids[j] = self._tracks[i].track_id
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        new = sorted((j for j in range(f) if ids[j] < 0),
                     key=lambda j: (float(centers[j, 0]), float(centers[j, 1]), j))
        for j in new:
            ids[j] = self.next_id
            self._tracks.append(_Track(self.next_id, boxes[j].clone(), landmarks[j].clone(),
                                       torch.zeros(4, dtype=torch.float64),
                                       torch.zeros(5, 2, dtype=torch.float64), self.frame))
            self.next_id += 1
        self._tracks.sort(key=lambda t: t.track_id)
        return torch.tensor(ids, dtype=torch.long)

    def _continue(self, track: _Track, box: torch.Tensor, landmarks: torch.Tensor) -> None:
        dt = self.frame - track.last_frame
        box_v = (box - track.box) / dt
        lm_v = (landmarks - track.landmarks) / dt
        if track.hits == 1:
            track.box_velocity, track.landmark_velocity = box_v, lm_v
        else:
            a = self.velocity_smoothing
            track.box_velocity = a * track.box_velocity + (1 - a) * box_v
            track.landmark_velocity = a * track.landmark_velocity + (1 - a) * lm_v
        track.box, track.landmarks = box.clone(), landmarks.clone()
        track.last_frame = self.frame
        track.hits += 1


def assign_tracks(detections: Detections | Sequence[Detections], *, iou_min: float = 0.1, max_gap: int = 10,
                  max_distance: float = 0.5, velocity_smoothing: float = 0.5) -> list[torch.Tensor]:
    """Track ids for a whole clip: one ``[F_t]`` long tensor per frame (a fresh :class:`FaceTracker`).

    Args:
        detections: one :class:`Detections` per frame, or one :class:`Detections` over a batch of frames
            (``image_index`` = frame, ``num_images`` = number of frames).
        iou_min, max_gap, max_distance, velocity_smoothing: see :class:`FaceTracker`.
    """
    if isinstance(detections, Detections):
        if len(detections) and int(detections.image_index.max()) >= detections.num_images:
            raise InputError(f"assign_tracks: faces refer to image {int(detections.image_index.max())} of a "
                             f"batch of {detections.num_images} (num_images must count the frames)")
        frames = [detections.for_image(i) for i in range(detections.num_images)]
    elif isinstance(detections, Sequence) and not isinstance(detections, (str, bytes)):
        frames = list(detections)
    else:
        raise InputError(f"assign_tracks: expected Detections or a list of Detections, got "
                         f"{type(detections).__name__}")
    tracker = FaceTracker(iou_min, max_gap, max_distance=max_distance, velocity_smoothing=velocity_smoothing)
    return [tracker.update(d) for d in frames]

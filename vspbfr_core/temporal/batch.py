"""A batch of consecutive frames as a whole (issue 14): tracks, track selection, smoothed landmarks and codes.

:func:`~vspbfr_core.temporal.sequence.restore_sequence` streams a clip frame by frame; a host that already holds
the whole clip as one batch (a ComfyUI IMAGE batch from a video loader) works on the batch's detections instead,
which are tiny next to the frames:

1. :class:`TrackSelection`: which faces a frame keeps.  ``"largest"`` / ``"center"`` choose per frame, at
   detection; ``max_faces = N`` keeps tracks ``0..N-1`` (the first N people to appear) and index selections such
   as ``"0,2"`` keep tracks 0 and 2.  The sequence driver uses the same rules (one function, not two copies).
2. :func:`track_batch`: the per-frame :class:`~vspbfr_core.face.Detections` of the batch (detected with
   ``max_faces=0`` and :attr:`TrackSelection.per_frame`) -> track ids (:func:`~.tracks.assign_tracks`), the kept
   faces ordered by frame then track id (``order_index`` = rank within the frame), each track's landmarks
   smoothed along time (:func:`~.smooth.smooth_landmarks`, centred, outliers rejected).
3. :func:`smooth_track_codes`: per-face codes ``[F, ...]`` (encoder W+ and style prompts) smoothed per track
   along frames (:func:`~.smooth.smooth_sequence`, centred Gaussian).

A track's smoothing runs over the frames from its first to its last appearance, the frames where it is absent
taking no part, as the streaming smoothers of the sequence driver do.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..checks import check_float, check_int, describe_value
from ..errors import InputError
from ..face.detect import Detections, parse_selection
from .smooth import smooth_landmarks, smooth_sequence
from .tracks import FaceTracker

__all__ = ["TrackSelection", "TrackedFaces", "track_batch", "smooth_track_codes"]


@dataclass(frozen=True)
class TrackSelection:
    """Which faces of a clip are kept: the per-frame part (at detection) and the per-track part."""

    per_frame: str                          # "all", "largest" or "center": the selection to detect with
    max_faces: int = 0                      # keep tracks 0..max_faces-1 (0: no limit)
    tracks: frozenset[int] | None = None    # keep only these track ids (None: all)

    @classmethod
    def parse(cls, selection: str, max_faces: int = 0) -> TrackSelection:
        """From the per-image options: ``selection`` ("all", "largest", "center", "0,2") and ``max_faces``."""
        if not isinstance(selection, str):
            raise InputError(f"selection: expected a string ('all', 'largest', 'center' or track ids such as "
                             f"'0,2'), got {describe_value(selection)}")
        max_faces = check_int(max_faces, "max_faces", minimum=0)
        chosen = parse_selection(selection)
        per_frame = chosen if chosen in ("largest", "center") else "all"
        tracks = frozenset(chosen) if isinstance(chosen, list) else None
        return cls(str(per_frame), max_faces, tracks)

    def keeps(self, track_id: int) -> bool:
        """Whether the faces of track ``track_id`` are kept."""
        if self.max_faces and track_id >= self.max_faces:
            return False
        return self.tracks is None or track_id in self.tracks


@dataclass(frozen=True)
class TrackedFaces:
    """The kept faces of a frame batch with their tracks (all on the CPU)."""

    detections: Detections        # ordered by frame, then track id; order_index = rank in its frame;
                                  # landmarks smoothed per track (raw with smooth_alignment 0)
    track_ids: torch.Tensor       # [F] long: the track of each face
    raw_landmarks: torch.Tensor   # [F, 5, 2] the detected landmarks of the kept faces

    def __len__(self) -> int:
        return len(self.detections)


def _check_detections(detections: Detections, where: str) -> None:
    if not isinstance(detections, Detections):
        raise InputError(f"{where}: expected the Detections of a frame batch, got {describe_value(detections)}")
    if len(detections) and int(detections.image_index.max()) >= detections.num_images:
        raise InputError(f"{where}: faces refer to frame {int(detections.image_index.max())} of a batch of "
                         f"{detections.num_images} (num_images must count the frames)")


def track_batch(detections: Detections, *, selection: TrackSelection | str = "all", max_faces: int = 0,
                smooth_alignment: float = 0.0, tracker: FaceTracker | None = None) -> TrackedFaces:
    """Tracks of a batch of consecutive frames, the selected tracks' faces and their smoothed landmarks.

    Args:
        detections: every face of every frame (``image_index`` = frame), detected with ``max_faces=0`` and the
            per-frame selection (:attr:`TrackSelection.per_frame`).
        selection: a :class:`TrackSelection`, or the selection string (then ``max_faces`` applies too).
        smooth_alignment: landmark smoothing strength (Gaussian sigma in frames; 0 = the detected landmarks).
        tracker: a fresh, configured :class:`FaceTracker` (default: one with its defaults).

    Returns:
        :class:`TrackedFaces`.
    """
    _check_detections(detections, "track_batch")
    if not isinstance(selection, TrackSelection):
        selection = TrackSelection.parse(selection, max_faces)
    smooth_alignment = check_float(smooth_alignment, "smooth_alignment", minimum=0.0)
    if tracker is None:
        tracker = FaceTracker()
    elif not isinstance(tracker, FaceTracker) or tracker.frame >= 0:
        raise InputError(f"track_batch: tracker must be a FaceTracker that has not seen any frame yet, got "
                         f"{describe_value(tracker)}")
    picked: list[int] = []                  # face indices into detections, in output order
    picked_ids: list[int] = []
    ranks: list[int] = []
    for frame in range(detections.num_images):
        where = torch.nonzero(detections.image_index == frame, as_tuple=True)[0]
        ids = tracker.update(detections.index(where)).tolist()
        kept = sorted((t, int(j)) for t, j in zip(ids, where.tolist()) if selection.keeps(int(t)))
        for rank, (t, j) in enumerate(kept):
            picked.append(j)
            picked_ids.append(int(t))
            ranks.append(rank)
    index = torch.tensor(picked, dtype=torch.long)
    dets = detections.index(index)
    dets = replace(dets, order_index=torch.tensor(ranks, dtype=torch.long))
    track_ids = torch.tensor(picked_ids, dtype=torch.long)
    raw = dets.landmarks
    if smooth_alignment > 0 and len(dets):
        smoothed = _per_track(raw, dets.image_index, track_ids,
                              lambda values, present: smooth_landmarks(values, present, smooth_alignment))
        dets = replace(dets, landmarks=smoothed)
    return TrackedFaces(dets, track_ids, raw)


def _per_track(values: torch.Tensor, frame_index: torch.Tensor, track_ids: torch.Tensor, smooth) -> torch.Tensor:
    """Apply ``smooth(track values [T, ...], present [T])`` to each track over its first..last frame."""
    out = values.clone()
    frames = frame_index.tolist()
    for tid in sorted(set(track_ids.tolist())):
        mine = torch.nonzero(track_ids == tid, as_tuple=True)[0]
        f = [frames[k] for k in mine.tolist()]
        if len(set(f)) != len(f):
            raise InputError(f"track {tid} has two faces in one frame; each track has at most one face per frame")
        first, last = min(f), max(f)
        track = values.new_zeros((last - first + 1, *values.shape[1:]))
        present = torch.zeros(last - first + 1, dtype=torch.bool)
        rows = torch.tensor([x - first for x in f], dtype=torch.long)
        track[rows] = values[mine]
        present[rows] = True
        out[mine] = smooth(track, present)[rows]
    return out


def smooth_track_codes(codes: torch.Tensor, frame_index: Sequence[int] | torch.Tensor,
                       track_ids: Sequence[int] | torch.Tensor, strength: float) -> torch.Tensor:
    """Per-face codes smoothed per track along frames (centred Gaussian, sigma = ``strength`` frames).

    Args:
        codes: ``[F, ...]`` float, one row per face (e.g. W+ ``[F, num_ws, w_dim]``, or encoder W+ and style
            prompt stacked ``[F, 2, num_ws, w_dim]``).
        frame_index: ``[F]`` the frame of each face.
        track_ids: ``[F]`` the track of each face (at most one face per track and frame).
        strength: 0 = the codes unchanged (a copy).

    Returns:
        ``[F, ...]``, the input dtype and device.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() < 1 or not codes.is_floating_point():
        raise InputError(f"smooth_track_codes: codes must be a float tensor [F, ...], got {describe_value(codes)}")
    strength = check_float(strength, "smooth_wplus", minimum=0.0)
    frames = torch.as_tensor(frame_index, dtype=torch.long).flatten()
    ids = torch.as_tensor(track_ids, dtype=torch.long).flatten()
    if frames.shape[0] != codes.shape[0] or ids.shape[0] != codes.shape[0]:
        raise InputError(f"smooth_track_codes: {codes.shape[0]} code(s), {frames.shape[0]} frame index(es) and "
                         f"{ids.shape[0]} track id(s); give one of each per face")
    if strength == 0 or codes.shape[0] == 0:
        return codes.clone()
    return _per_track(codes, frames, ids, lambda values, present: smooth_sequence(values, present, strength))

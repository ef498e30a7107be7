"""Temporal building blocks for video (issue 14): face tracks across frames and centred smoothing along time.

* :mod:`.tracks`: :class:`FaceTracker` (streaming, frame by frame) and :func:`assign_tracks` (a whole clip) link
  the faces of consecutive frames into tracks with stable ids numbered by first appearance, left to right.
* :mod:`.smooth`: zero-phase (centred, lag-free) smoothing of a track's landmarks (:func:`smooth_landmarks`,
  edge-preserving with outlier rejection) and of per-frame codes such as W+ (:func:`smooth_sequence`), plus
  :class:`CenteredSmoother`, the streaming form with a fixed delay that gives the offline values exactly.

* :mod:`.sequence`: :func:`restore_sequence`, the per-sequence restoration driver (tracks as noise keys,
  steady alignment, smoothed W+), streaming.
* :mod:`.batch`: the same rules for a whole batch of frames at once (a ComfyUI IMAGE batch):
  :class:`TrackSelection`, :func:`track_batch` (tracks, selection, smoothed landmarks) and
  :func:`smooth_track_codes` (W+ / style prompts per track).

The per-image pipeline does not use this package; :func:`restore_sequence` (streaming) and the ComfyUI nodes
(:mod:`.batch`, a whole IMAGE batch) compose it with the pipeline's stages.  Importing this package does not
import torch; the submodules load on first use of a name.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "FaceTracker": ".tracks", "assign_tracks": ".tracks", "solve_assignment": ".tracks", "box_iou": ".tracks",
    "smooth_landmarks": ".smooth", "smooth_sequence": ".smooth", "CenteredSmoother": ".smooth",
    "smoothing_radius": ".smooth", "restore_sequence": ".sequence", "SequenceStats": ".sequence",
    "TrackSelection": ".batch", "TrackedFaces": ".batch", "track_batch": ".batch", "smooth_track_codes": ".batch",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

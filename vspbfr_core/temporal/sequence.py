"""Per-sequence restoration driver: consecutive video frames with face tracks, steady alignment, smoothed W+.

The per-image :class:`~vspbfr_core.pipeline.VSPBFRPipeline` restores every frame on its own, so a face's noise
key (its index in the frame) changes when another face enters, and detector jitter makes the aligned crop, and
with it the restored face, flicker.  :func:`restore_sequence` composes the pipeline's stage methods per frame:

1. ``detect`` (the options' threshold, min_size, detect_size; ``selection`` "largest"/"center" stay per frame)
   and :class:`~vspbfr_core.temporal.tracks.FaceTracker`: track ids, numbered by first appearance, then left to
   right.  ``max_faces`` and index selections such as ``"0,2"`` refer to these ids: ``max_faces = N`` keeps tracks
   ``0..N-1`` (the first N people to appear), ``"0,2"`` keeps tracks 0 and 2.
2. ``smooth_alignment > 0``: each track's landmarks go through a centred
   :class:`~vspbfr_core.temporal.smooth.CenteredSmoother` (the landmark filter); ``align`` and ``paste`` use the
   smoothed landmarks.
3. ``encode`` + ``diffuse`` with the noise of ``noise_for([track ids], seed)``: one person keeps the same noise
   in every frame.  ``smooth_wplus > 0``: each track's encoder W+ and style prompt are smoothed (centred
   Gaussian, the sequence filter) before the feature bank and restoration.
4. ``restore_faces`` + ``paste``: the frame comes out.

Streaming: frames are pulled from the iterable as needed; frame ``t`` comes out once frame ``t + lookahead`` has
been read (``lookahead`` = the landmark smoother's delay + the W+ smoother's delay, 0 with both strengths 0) or
the clip ended.  The state held is the current input slice (at most ``window`` frames) plus ``lookahead`` frames,
whatever the clip length.  With both strengths 0 and faces whose track ids equal their per-frame indices (e.g.
a static shot), every frame equals ``pipeline(frame, options)`` byte for byte.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..checks import check_float, check_int, describe_value
from ..errors import InputError, VSPBFRError
from .batch import TrackSelection
from .smooth import CenteredSmoother
from .tracks import FaceTracker

__all__ = ["restore_sequence", "SequenceStats"]


@dataclass
class SequenceStats:
    """What :func:`restore_sequence` did so far (pass one as ``stats=``; it is updated as frames come out)."""

    frames: int = 0                    # output frames
    faces: int = 0                     # faces restored, summed over the output frames
    tracks: int = 0                    # face tracks found (ids handed out, before max_faces / selection)

class _TrackSmoothers:
    """One :class:`CenteredSmoother` per track id; outputs come back as ``(frame, track id, value)``."""

    def __init__(self, strength: float, landmarks: bool, max_gap: int) -> None:
        self.strength, self.landmarks, self.max_gap = strength, landmarks, max_gap
        self._items: dict[int, list[Any]] = {}     # id -> [smoother, next output frame, frames absent in a row]

    def delay(self) -> int:
        return CenteredSmoother(self.strength, landmarks=self.landmarks).delay

    def push(self, frame: int, values: dict[int, torch.Tensor]) -> list[tuple[int, int, torch.Tensor]]:
        out: list[tuple[int, int, torch.Tensor]] = []
        for tid in values:
            if tid not in self._items:
                self._items[tid] = [CenteredSmoother(self.strength, landmarks=self.landmarks), frame, 0]
        for tid, item in list(self._items.items()):
            value = values.get(tid)
            item[2] = 0 if value is not None else item[2] + 1
            self._collect(tid, item, item[0].push(value, value is not None), out)
            if item[2] > self.max_gap + 1:          # the tracker retired this id: it never comes back
                self._collect(tid, item, item[0].flush(), out)
                del self._items[tid]
        return out

    def flush(self) -> list[tuple[int, int, torch.Tensor]]:
        out: list[tuple[int, int, torch.Tensor]] = []
        for tid, item in self._items.items():
            self._collect(tid, item, item[0].flush(), out)
        self._items.clear()
        return out

    @staticmethod
    def _collect(tid: int, item: list[Any], emitted: list[torch.Tensor | None],
                 out: list[tuple[int, int, torch.Tensor]]) -> None:
        for value in emitted:
            if value is not None:
                out.append((item[1], tid, value))
            item[1] += 1


@dataclass
class _Frame:
    """One frame on its way through the stages."""

    index: int
    rgb: torch.Tensor                  # [1, 3, H, W] float32 on the pipeline's device
    layout: Any                        # vspbfr_core.image.ImageLayout
    dets: Any                          # Detections of the kept faces (raw landmarks)
    ids: list[int]                     # track id of each kept face
    landmarks: dict[int, torch.Tensor] = field(default_factory=dict)   # id -> smoothed [5, 2]
    codes: dict[int, torch.Tensor] = field(default_factory=dict)       # id -> smoothed [2, num_ws, w_dim]
    aligned: Any = None
    ws: torch.Tensor | None = None     # [F, num_ws, w_dim] encoder W+ (unsmoothed)
    prompts: torch.Tensor | None = None


def restore_sequence(pipeline: Any, frames: Iterable[torch.Tensor] | torch.Tensor, options: Any = None, *,
                     smooth_alignment: float = 0.0, smooth_wplus: float = 0.0, window: int = 16,
                     callback: Callable[[int, int, str], None] | None = None, total_frames: int | None = None,
                     tracker: FaceTracker | None = None, stats: SequenceStats | None = None,
                     mask: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Restore consecutive frames; yields IMAGE batches ``[n, H, W, C]``, one output frame per input frame.

    Args:
        pipeline: a :class:`~vspbfr_core.pipeline.VSPBFRPipeline` with a face detector.
        frames: an iterable of IMAGE batches ``[n, H, W, C]`` in [0, 1] (consecutive windows of one clip, e.g.
            ``media.VideoReader.frames()``), or one such tensor; every frame must have the same size.
        options: :class:`~vspbfr_core.pipeline.RestoreOptions` (None: defaults); best-of-N and reference options
            are not supported here.  ``max_faces`` / index ``selection`` apply to track ids (module docstring).
        smooth_alignment: landmark smoothing strength (Gaussian sigma in frames; 0 = off).
        smooth_wplus: W+ / style prompt smoothing strength (sigma in frames; 0 = off).
        window: input batches are processed in slices of at most this many frames; output batches have at most
            this many frames (default 16).
        callback: ``callback(done, total, stage)`` after each output frame (stage ``"frame"``); ``total`` is
            ``total_frames`` when given, else the frames read so far.  Raise from it to interrupt.
        total_frames: the clip length, when known (progress only).
        tracker: a configured :class:`FaceTracker` (default: a fresh one with its defaults).
        stats: a :class:`SequenceStats` to fill in (frames, faces restored, tracks) as frames come out.
        mask: ``[H, W]`` in [0, 1] at the frames' size, for every frame: pixels where it is 0 are never changed
            (see :meth:`~vspbfr_core.pipeline.VSPBFRPipeline.paste`).
    """
    from ..pipeline import resolve_options

    o = resolve_options(options, where="restore_sequence: options")
    if o.candidates > 1 or o.only_matching or o.reference_mix > 0:
        raise InputError("restore_sequence: candidates, only_matching and reference_mix are not supported on "
                         "sequences yet; restore frames one by one with the pipeline for those")
    if getattr(pipeline, "detector", None) is None or not hasattr(pipeline, "restore_faces"):
        raise InputError(f"restore_sequence: expected a VSPBFRPipeline with a face detector, got "
                         f"{describe_value(pipeline)}")
    smooth_alignment = check_float(smooth_alignment, "smooth_alignment", minimum=0.0)
    smooth_wplus = check_float(smooth_wplus, "smooth_wplus", minimum=0.0)
    window = check_int(window, "window", minimum=1)
    if total_frames is not None:
        total_frames = check_int(total_frames, "total_frames", minimum=0)
    if callback is not None and not callable(callback):
        raise InputError(f"restore_sequence: callback must be callable as callback(done, total, stage) or None, "
                         f"got {describe_value(callback)}")
    if tracker is None:
        tracker = FaceTracker()
    elif not isinstance(tracker, FaceTracker):
        raise InputError(f"restore_sequence: tracker must be a FaceTracker, got {describe_value(tracker)}")
    if isinstance(frames, torch.Tensor):
        frames = [frames]
    elif isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise InputError(f"restore_sequence: frames must be an iterable of IMAGE batches [n, H, W, C], got "
                         f"{describe_value(frames)}")
    if stats is not None and not isinstance(stats, SequenceStats):
        raise InputError(f"restore_sequence: stats must be a SequenceStats or None, got {describe_value(stats)}")
    driver = _Driver(pipeline, o, smooth_alignment, smooth_wplus, window, callback, total_frames,
                     tracker, stats if stats is not None else SequenceStats())
    driver.mask = mask
    return driver.run(frames)


class _Driver:
    def __init__(self, pipe: Any, o: Any, smooth_alignment: float, smooth_wplus: float, window: int,
                 callback: Callable[[int, int, str], None] | None, total: int | None, tracker: FaceTracker,
                 stats: SequenceStats) -> None:
        self.pipe, self.o, self.window, self.callback, self.total = pipe, o, window, callback, total
        self.tracker, self.stats = tracker, stats
        self.selection = TrackSelection.parse(o.selection, o.max_faces)
        self.detect_options = replace(o, max_faces=0, selection=self.selection.per_frame)
        self.lm = _TrackSmoothers(smooth_alignment, True, tracker.max_gap) if smooth_alignment > 0 else None
        self.wp = _TrackSmoothers(smooth_wplus, False, tracker.max_gap) if smooth_wplus > 0 else None
        self.lookahead = (self.lm.delay() if self.lm else 0) + (self.wp.delay() if self.wp else 0)
        self.to_align: deque[_Frame] = deque()
        self.to_render: deque[_Frame] = deque()
        self.pending: dict[int, _Frame] = {}       # frames waiting for smoothed values, by index
        self.mask: torch.Tensor | None = None      # the user mask every frame's paste is limited by
        self.read = self.done = 0
        self.size: tuple[int, ...] | None = None

    def run(self, frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for k, batch in enumerate(frames):
            self._check_batch(batch, k)
            for a in range(0, batch.shape[0], self.window):
                ready: list[torch.Tensor] = []
                for i in range(a, min(a + self.window, batch.shape[0])):
                    ready += self._push(batch[i:i + 1])
                yield from self._batches(ready)
        yield from self._batches(self._finish())

    def _batches(self, ready: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        for a in range(0, len(ready), self.window):
            yield torch.cat(ready[a:a + self.window])

    def _check_batch(self, batch: Any, k: int) -> None:
        from ..image import check_image

        check_image(batch, f"restore_sequence: frames batch {k}")
        size = tuple(batch.shape[1:])
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise InputError(f"restore_sequence: frames batch {k} holds frames of {size[1]}x{size[0]} with "
                             f"{size[2]} channel(s), but the clip started with {self.size[1]}x{self.size[0]} with "
                             f"{self.size[2]}; every frame of a sequence must have the same size")

    # -- stages ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _push(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Stage 1 for one frame ``[1, H, W, C]``; returns the frames that became final."""
        from ..image import from_host

        rgb, layout = from_host(image)
        dets = self.pipe.detect(image, self.detect_options)
        ids = self.tracker.update(dets)
        keep = [self.selection.keeps(int(t)) for t in ids]
        dets = dets.index(torch.tensor(keep, dtype=torch.bool))
        frame = _Frame(self.read, rgb.to(self.pipe.device, torch.float32), layout, dets,
                       [int(t) for t, k in zip(ids, keep) if k])
        self.read += 1
        self.to_align.append(frame)
        if self.lm is not None:
            self.pending[frame.index] = frame
            self._deliver(self.lm.push(frame.index, dict(zip(frame.ids, dets.landmarks))), "landmarks")
        return self._advance(final=False)

    def _deliver(self, outputs: list[tuple[int, int, torch.Tensor]], what: str) -> None:
        for index, tid, value in outputs:
            frame = self.pending.get(index)
            if frame is not None:
                getattr(frame, what)[tid] = value

    def _finish(self) -> list[torch.Tensor]:
        with torch.inference_mode():
            if self.lm is not None:
                self._deliver(self.lm.flush(), "landmarks")
            out = self._advance(final=False)
            if self.wp is not None:
                self._deliver(self.wp.flush(), "codes")
            return out + self._advance(final=True)

    def _advance(self, final: bool) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        while self.to_align and (self.lm is None or all(t in self.to_align[0].landmarks for t in self.to_align[0].ids)):
            self._align(self.to_align.popleft())
        while self.to_render and (final or self.wp is None
                                  or all(t in self.to_render[0].codes for t in self.to_render[0].ids)):
            frame = self.to_render.popleft()
            self.pending.pop(frame.index, None)
            out.append(self._render(frame))
            self.done += 1
            self.stats.frames, self.stats.tracks = self.done, self.tracker.num_tracks
            self.stats.faces += len(frame.ids)
            if self.callback is not None:
                self.callback(self.done, self.total if self.total is not None else self.read, "frame")
        return out

    def _align(self, frame: _Frame) -> None:
        """Stage 2-3: align (smoothed landmarks), encode and diffuse; W+ smoothing input."""
        if frame.ids:
            dets = frame.dets
            if self.lm is not None:
                lms = torch.stack([frame.landmarks[t] for t in frame.ids]).to(dets.landmarks.dtype)
                dets = replace(dets, landmarks=lms)
            frame.aligned = self.pipe.align(frame.rgb, dets)
            if self.wp is not None:
                crops = frame.aligned.crops
                noise = self.pipe.noise_for(frame.ids, self.o.seed)
                frame.ws = self.pipe.encode(crops)
                frame.prompts = self.pipe.diffuse(frame.ws, noise)
                if self.o.prompt_mix != 1.0:
                    frame.prompts = torch.lerp(frame.ws.to(frame.prompts.dtype), frame.prompts, self.o.prompt_mix)
        self.to_render.append(frame)
        if self.wp is not None:
            self.pending[frame.index] = frame
            codes = {}
            if frame.ids:
                both = torch.stack([frame.ws.float(), frame.prompts.float()], dim=1)   # [F, 2, num_ws, w_dim]
                codes = dict(zip(frame.ids, both.cpu()))
            self._deliver(self.wp.push(frame.index, codes), "codes")

    def _render(self, frame: _Frame) -> torch.Tensor:
        """Stage 4: feature bank + restoration with the track's noise, paste -> IMAGE [1, H', W', C]."""
        from ..image import to_host
        from ..pipeline import StylePrompts

        pipe, o, rgb = self.pipe, self.o, frame.rgb
        if not frame.ids:
            out = rgb
            if o.upscale != 1.0:
                r = pipe.model.resolution
                out, _ = pipe.paste(rgb, rgb.new_zeros(0, 3, r, r), pipe.align(rgb, frame.dets), o)
            return to_host(out, frame.layout).cpu()
        style = None
        if self.wp is not None:
            codes = torch.stack([frame.codes[t] for t in frame.ids])         # [F, 2, num_ws, w_dim]
            style = StylePrompts(codes[:, 0].to(frame.ws.dtype), codes[:, 1].to(frame.prompts.dtype))
        restored, _ = pipe.restore_faces(frame.aligned.crops, style, options=o, face_keys=frame.ids)
        out, _ = pipe.paste(rgb, restored, frame.aligned, o, self.mask)
        if not torch.isfinite(out).all():
            raise VSPBFRError(f"restore_sequence: frame {frame.index} came out with non-finite values")
        return to_host(out, frame.layout).cpu()

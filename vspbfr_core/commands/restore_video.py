"""Video files and frame sequences in ``vspbfr restore`` (the CLI side of :mod:`vspbfr_core.temporal`).

Inputs:

* A file named on the command line (or matched by a glob pattern) whose name ends in one of
  :data:`vspbfr_core.media.VIDEO_EXTENSIONS` is a video; it is read and written through PyAV (``pip install
  "vspbfr[video]"``; without it the run stops with that command before any model is loaded).  Videos inside an input
  folder are not restored (a note counts them): name them, or a pattern such as ``clips/*.mp4``.
* ``--sequence``: every folder named on the command line is one frame sequence, its image files
  (:func:`vspbfr_core.media.read_sequence`: natural name order, ``f2.png`` before ``f10.png``) the frames.  Every
  frame must have the first one's size and channels: checked from the file headers before any model is loaded.

Outputs: a video goes to ``OUT_DIR/<its name>`` in the same container with the same frame count (or the
``--frames`` range), frame size (times ``--upscale``) and frame rate; its first audio stream is copied packet by
packet (cut to the written frames).  H.264 (``libx264``, VP9 in .webm) at ``--crf``; odd sizes are stored as
``yuv444p``.  Nothing appears at the final name until the whole video is written.  A sequence goes to
``OUT_DIR/<folder name>/``, one file per frame under its own name and format.

Temporal mode (``--temporal``, the default for videos and sequences; ``--no-temporal`` turns it off): faces are
tracked across frames and the track id is the face's noise key and its number for ``--select`` / ``--max-faces``
(numbered by first appearance, then left to right); each track's landmarks are smoothed with a centred (lag-free)
filter of strength ``--smooth-alignment`` and its encoder W+ and style prompt with ``--smooth-wplus`` (Gaussian
sigmas in frames; 0 = off); see :func:`vspbfr_core.temporal.restore_sequence`.  With ``--no-temporal`` every frame is
restored on its own exactly as an image file is (identical pixels; the identity options then work per frame).

Memory: frames stream through in windows of :data:`WINDOW` frames (decode, restore, encode), so what is held does
not grow with the clip's length; the temporal filters add their look-ahead (``3 * strength`` frames per filter).
"""
from __future__ import annotations

import argparse
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli import number
from ..errors import InputError
from ..media import VIDEO_EXTENSIONS, parse_frame_range

log = logging.getLogger(__name__)

WINDOW = 16                    # frames decoded, restored and encoded at a time
DEFAULT_SMOOTHING = 2.0        # both strengths (the values benchmarks/bench_temporal.py measures)
MAX_SMOOTHING = 10.0


def _frame_range(text: str) -> slice:
    try:
        return parse_frame_range(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_video_options(group: argparse._ActionsContainer) -> None:
    """``--sequence``, ``--temporal`` / ``--no-temporal``, ``--smooth-alignment``, ``--smooth-wplus``, ``--frames``
    and ``--crf``."""
    group.add_argument("--sequence", action="store_true",
                       help="each folder named as INPUT is one frame sequence (its images in natural name order), "
                            "written to OUT_DIR/<folder name>/ under the same file names")
    group.add_argument("--temporal", action=argparse.BooleanOptionalAction, default=None,
                       help="track faces across frames (the track is the face's seed and its --select number), steady "
                            "their alignment and smooth their W+ codes; on by default for video files and --sequence "
                            "folders; --no-temporal restores every frame on its own, exactly as an image file")
    group.add_argument("--smooth-alignment", metavar="X", type=number(float, low=0, high=MAX_SMOOTHING),
                       default=DEFAULT_SMOOTHING,
                       help="temporal: landmark smoothing (Gaussian sigma in frames, centred: no lag; outliers "
                            "rejected; 0 = off)")
    group.add_argument("--smooth-wplus", metavar="X", type=number(float, low=0, high=MAX_SMOOTHING),
                       default=DEFAULT_SMOOTHING,
                       help="temporal: smoothing of each face's W+ code and style prompt (Gaussian sigma in frames, "
                            "centred; 0 = off)")
    group.add_argument("--frames", metavar="A:B", type=_frame_range, default=None,
                       help="restore only frames A to B-1 of each video / sequence (a Python slice: 100:200, 50:, "
                            ":-1, -30: for the last 30)")
    group.add_argument("--crf", metavar="N", type=number(int, low=0, high=51), default=18,
                       help="quality of written videos (x264 / VP9 constant rate factor: lower is better and larger)")


# -- jobs ------------------------------------------------------------------------------------------------------------

@dataclass
class VideoJob:
    """One video file or frame sequence of a run."""

    src: Path                          # the video file or the sequence folder
    dst: Path                          # the output video file or folder
    kind: str                          # "video" or "sequence"
    frames: slice                      # the --frames range
    total: int = 0                     # frames in the range
    reader: Any = None                 # media.VideoReader (videos)
    paths: list[Path] = field(default_factory=list)    # the frame files in the range (sequences)
    rel: Path = Path()                 # the output path relative to OUT_DIR

    @property
    def name(self) -> str:
        return self.src.name or str(self.src)

    def frame_outputs(self) -> list[tuple[Path, Path]]:
        """(frame file, output path relative to OUT_DIR) of a sequence, for the collision checks."""
        return [(p, self.rel / p.name) for p in self.paths]


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def split_inputs(items: list[str], sequence: bool) -> tuple[list[str], list[Path]]:
    """The INPUT arguments -> (arguments collected as files, sequence folders)."""
    if not sequence:
        return items, []
    files, folders = [], []
    for item in items:
        (folders if item and Path(item).is_dir() else files).append(item)
    if not folders:
        raise InputError("--sequence: no folder among the inputs; name the folders that hold the frames")
    return files, [Path(f) for f in folders]


def temporal_on(args: argparse.Namespace) -> bool:
    return args.temporal is not False


def check_video_args(args: argparse.Namespace, has_video: bool) -> None:
    """Options that cannot apply to the inputs: an ``InputError`` naming them (before any model is loaded); video
    options given for images only: a warning."""
    if not has_video:
        given = [flag for flag, value, default in (
            ("--frames", args.frames, None), ("--smooth-alignment", args.smooth_alignment, DEFAULT_SMOOTHING),
            ("--smooth-wplus", args.smooth_wplus, DEFAULT_SMOOTHING), ("--crf", args.crf, 18)) if value != default]
        if args.temporal is not None:
            given.append("--temporal" if args.temporal else "--no-temporal")
        if given:
            log.warning("%s appl%s to video files and --sequence folders only; the inputs are images, restored one "
                        "by one", ", ".join(given), "ies" if len(given) == 1 else "y")
        return
    unsupported = [flag for flag, on in (("--aligned", args.aligned), ("--save-faces", args.save_faces),
                                         ("--compare", args.compare)) if on]
    if unsupported:
        raise InputError(f"{', '.join(unsupported)}: not supported for video files and --sequence folders; restore "
                         "them without it, or extract the frames you want as images first")
    if temporal_on(args):
        identity = [flag for flag, on in (("--candidates", args.candidates > 1), ("--reference", bool(args.reference)),
                                          ("--only-matching", args.only_matching),
                                          ("--reference-mix", args.reference_mix > 0)) if on]
        if identity:
            raise InputError(f"{', '.join(identity)}: not supported with temporal mode (the default for videos and "
                             "--sequence folders) yet; add --no-temporal to restore every frame on its own with them")


def _range_length(frames: slice, count: int) -> int:
    return len(range(*frames.indices(count)))


def open_jobs(video_files: list[tuple[Path, Path]], folders: list[Path], out_dir: Path,
              frames: slice | None) -> tuple[list[VideoJob], list[tuple[Path, str]]]:
    """Open every video (header and first frame) and list every sequence (sizes from the file headers) before any
    model is loaded; returns the jobs and the (input, reason) of those that cannot be read."""
    from .. import media

    rng = frames if frames is not None else slice(None)
    jobs: list[VideoJob] = []
    failures: list[tuple[Path, str]] = []
    for src, rel in video_files:
        try:
            reader = media.open_video(src)             # without PyAV: MissingPackageError, the run stops here
            total = _range_length(rng, reader.count_frames())
        except InputError as exc:
            failures.append((src, str(exc).removeprefix(f"{src}: ")))
            continue
        if total == 0:
            failures.append((src, f"--frames {_show_range(rng)} selects none of its {reader.frame_count} frames"))
            continue
        jobs.append(VideoJob(src, out_dir / rel, "video", rng, total, reader=reader, rel=rel))
    names: dict[str, Path] = {}
    for folder in folders:
        name = Path(os.path.abspath(folder)).name
        if name in names:
            raise InputError(f"--sequence: {names[name]} and {folder} would both be written to {out_dir / name}; "
                             "restore them into different -o folders")
        names[name] = folder
        try:
            seq = media.read_sequence(folder)
            paths = seq.paths[rng]
            _check_sizes(paths)
        except InputError as exc:
            failures.append((folder, str(exc).removeprefix(f"{folder}: ")))
            continue
        if not paths:
            failures.append((folder, f"--frames {_show_range(rng)} selects none of its {seq.frame_count} frames"))
            continue
        jobs.append(VideoJob(folder, out_dir / name, "sequence", rng, len(paths), paths=paths, rel=Path(name)))
    return jobs, failures


def _show_range(rng: slice) -> str:
    return f"{'' if rng.start is None else rng.start}:{'' if rng.stop is None else rng.stop}"


def _check_sizes(paths: list[Path]) -> None:
    """Every frame file has the first frame's size and mode (read from the headers, no decoding)."""
    from PIL import Image, UnidentifiedImageError

    first: tuple[Path, tuple[int, int], str] | None = None
    for path in paths:
        try:
            with Image.open(path) as im:
                size, mode = im.size, im.mode
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: cannot read the frame: {exc}") from exc
        if first is None:
            first = (path, size, mode)
            continue
        if size != first[1]:
            raise InputError(f"{path}: the frame is {size[0]}x{size[1]}, the sequence's first frame "
                             f"({first[0].name}) is {first[1][0]}x{first[1][1]}; all frames must have the same size")
        if mode != first[2]:
            raise InputError(f"{path}: the frame is of mode {mode}, the sequence's first frame ({first[0].name}) is "
                             f"{first[2]}; all frames must have the same channels (convert them alike)")


# -- running ---------------------------------------------------------------------------------------------------------

@dataclass
class VideoResult:
    frames: int = 0
    faces: int = 0                     # faces restored, summed over the frames
    tracks: int = 0                    # temporal: face tracks found (before --select / --max-faces)


def run_job(job: VideoJob, pipe: Any, options: Any, args: argparse.Namespace, writer: Any,
            draw: Callable[[int, int, str], None], identity: dict[str, Any]) -> VideoResult:
    """Restore one video or sequence; ``writer`` is the run's :class:`~vspbfr_core.commands.restore.OutputWriter`
    (sequence frames go through it)."""
    if job.kind == "video":
        return _run_video(job, pipe, options, args, writer, draw, identity)
    return _run_sequence(job, pipe, options, args, writer, draw, identity)


def _frames_out(pipe: Any, frames: Iterator[Any], options: Any, args: argparse.Namespace, job: VideoJob,
                draw: Callable[[int, int, str], None], identity: dict[str, Any], result: VideoResult) -> Iterator[Any]:
    """Restored IMAGE batches for the input batches ``frames``: through :func:`restore_sequence` (temporal) or
    frame by frame through the pipeline."""
    import torch

    if temporal_on(args):
        from ..temporal import SequenceStats, restore_sequence

        stats = SequenceStats()
        try:
            yield from restore_sequence(pipe, frames, options, smooth_alignment=args.smooth_alignment,
                                        smooth_wplus=args.smooth_wplus, window=WINDOW, callback=draw,
                                        total_frames=job.total, stats=stats, mask=identity.get("mask"))
        finally:
            result.faces, result.tracks = stats.faces, stats.tracks
        return
    done = 0
    for batch in frames:
        outs = []
        for i in range(batch.shape[0]):
            restored = pipe(batch[i:i + 1], options, **identity)
            result.faces += restored.faces_found
            outs.append(restored.images)
            done += 1
            draw(done, job.total, "frame")
        yield torch.cat(outs)


def _run_video(job: VideoJob, pipe: Any, options: Any, args: argparse.Namespace, writer: Any,
               draw: Callable[[int, int, str], None], identity: dict[str, Any]) -> VideoResult:
    from .. import media

    reader = job.reader
    result = VideoResult()
    frames = reader.frames(job.frames.start, job.frames.stop, window=WINDOW)
    start = job.frames.indices(reader.frame_count)[0]
    codec = "libvpx-vp9" if job.dst.suffix.lower() == ".webm" else "libx264"
    writer.check(job.dst)
    out = None
    try:
        for batch in _frames_out(pipe, frames, options, args, job, draw, identity, result):
            if out is None:
                height, width = int(batch.shape[1]), int(batch.shape[2])
                out = media.VideoWriter(job.dst, reader.fps, width, height,
                                        audio_from=job.src if reader.has_audio else None,
                                        audio_start=float(start / reader.fps), codec=codec, crf=args.crf)
            out.write(batch)
            result.frames += int(batch.shape[0])
        if out is None:
            raise InputError(f"{job.src}: no frame was decoded in the range")
        out.close()
    except BaseException:
        if out is not None:
            out.abort()
        raise
    writer.record(job.dst, job.src)
    return result


def _run_sequence(job: VideoJob, pipe: Any, options: Any, args: argparse.Namespace, writer: Any,
                  draw: Callable[[int, int, str], None], identity: dict[str, Any]) -> VideoResult:
    from ..imagefile import output_format, read_image

    result = VideoResult()
    pending: deque[tuple[Path, Any]] = deque()

    def frames() -> Iterator[Any]:
        for path in job.paths:
            loaded = read_image(path)
            pending.append((path, loaded))
            yield loaded.pixels

    for batch in _frames_out(pipe, frames(), options, args, job, draw, identity, result):
        for image in batch:
            path, loaded = pending.popleft()
            dst = job.dst / path.name
            writer.write(image, dst, path, format=output_format(dst, loaded.format), sample=loaded.sample,
                         params=loaded.params)
            result.frames += 1
    return result

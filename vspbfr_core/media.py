"""Video files and image sequences: streaming frame reading and safe writing (the I/O layer of video restoration).

PyAV (``pip install "vspbfr[video]"``, i.e. the ``av`` package, which brings its own FFmpeg) is imported only by
the functions that need it; without it they raise :class:`~vspbfr_core.errors.MissingPackageError` naming
that command.  Image sequences need only Pillow (through :mod:`vspbfr_core.imagefile`).

Frames are float32 tensors ``[n, H, W, 3]`` in [0, 1], RGB, on the CPU.

Reading a video (:func:`open_video`):

* The first video stream is used.  Its size is checked against :data:`vspbfr_core.imagefile.MAX_PIXELS` from the
  container header, before any frame is decoded, and the first frame is decoded once when the file is opened, so a
  file that is not a video, has no video stream, an unsupported codec or no frame at all is refused up front with
  an :class:`~vspbfr_core.errors.InputError` naming the file.
* :meth:`VideoReader.frames` streams windows of at most ``window`` frames; only the current window is held.
  ``start``/``stop`` follow Python slice rules on frame indices (negative indices count from the end, which needs
  the frame count: it is taken from the header when the container records it, else counted once by reading the
  packets, without decoding).  Frames before ``start`` are decoded and dropped (exact, no keyframe seeking).
* A file that breaks mid-stream (corrupt or truncated): the windows already yielded stay with the caller, the
  frames of the window being filled are dropped, and an ``InputError`` names the frame index where decoding failed.
  A stream that holds fewer packets than the frame count its header records is treated the same way
  ("truncated").
  Damage that FFmpeg's decoder conceals without reporting it (garbled bytes inside a frame's data) cannot be
  detected here: such frames come out with visible artefacts, not as an error.
* Colours: frames are converted to RGB by FFmpeg's scaler (``to_ndarray(format="rgb24")``); 8 bits per channel
  (10-bit sources are reduced to 8 bits).
* Rotation: a file whose display matrix asks for a rotation (phone videos shot upright) is read as it is shown:
  the frames are turned by :attr:`VideoReader.rotation` (90, 180 or 270 degrees) and ``width``/``height`` are the
  shown size; written back, the frames are stored upright, with no rotation to apply.  Mirroring in the display
  matrix is not applied; rotations that are not multiples of 90 degrees are refused.

Writing a video (:class:`VideoWriter`):

* Written through an exclusive temporary file in the destination folder, renamed onto the final name by
  :meth:`VideoWriter.close` (:func:`vspbfr_core.imagefile.atomic_output`); on an error, or when the writer is used
  as a context manager and the block raises, the temporary file is removed and nothing appears at the final name.
* Constant frame rate: frame ``i`` gets the time ``i / fps`` exactly.
* ``audio_from``: the first audio stream of that file is copied packet by packet (no re-encoding), interleaved with
  the video, from ``audio_start`` seconds (default 0: its start; for a clip cut from frame A of a video,
  ``A / fps``), and cut at the end of the written video (packet granularity: a packet that starts before
  ``audio_start`` is left out, and the copied packets are shifted to start at time 0).
* Odd sizes: chroma-subsampled pixel formats (``yuv420p`` and the like) need an even width and height; when the
  size is odd such a ``pix_fmt`` is replaced by ``yuv444p`` (no subsampling, same encoder) and
  :attr:`VideoWriter.pix_fmt` says which one was used.  Nothing is padded or cropped.

Image sequences: :func:`read_sequence` (a folder of image files in natural order: ``f2.png`` before ``f10.png``;
every frame must have the first one's size) and :func:`write_sequence` (one file per frame, the format following
each name's extension, each written safely by :func:`vspbfr_core.imagefile.write_image`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import imagefile
from ._lazy import optional_import
from .errors import InputError, MissingPackageError, OutputError

if TYPE_CHECKING:
    import torch

__all__ = ["open_video", "VideoReader", "VideoWriter", "parse_frame_range", "read_sequence", "ImageSequence",
           "write_sequence", "MissingPackageError", "VIDEO_EXTENSIONS"]

# container format of each output extension (the temporary file has no telling name, so the format is explicit)
VIDEO_EXTENSIONS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
                    ".avi": "avi"}
DEFAULT_WINDOW = 16                    # frames per window of frames()
# chroma-subsampled pixel formats (yuv420p, yuvj420p, yuv422p10le, nv12, ...): they need an even width and height
_SUBSAMPLED = re.compile(r"^(yuvj?4(20|22|11|10|40)p|nv(12|21|16|20|24|42))")


def _import_av() -> Any:
    """The ``av`` module, or :class:`MissingPackageError` saying what to install."""
    return optional_import("av", 'video files need the Python package PyAV (av): pip install "vspbfr[video]" '
                                 "(or pip install av)")


def parse_frame_range(text: str) -> slice:
    """``"A:B"`` (``--frames``) -> ``slice(A, B)``: Python slice semantics on frame indices; either side may be
    empty (``"10:"``, ``":50"``, ``":"``) or negative (``"-30:"`` = the last 30 frames).  No step."""
    found = re.fullmatch(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*", text) if isinstance(text, str) else None
    if found is None:
        raise InputError(f"frame range {text!r}: expected START:STOP with whole numbers, either side optional "
                         "(e.g. 0:100, 50:, :-1), as a Python slice of frame indices")
    start, stop = (int(g) if g is not None else None for g in found.groups())
    return slice(start, stop)


def _to_frames(arrays: list[Any]) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


def _resolve(start: int | None, stop: int | None, count: Any) -> tuple[int, int | None]:
    """Slice bounds -> (first index, end index or None = to the end); ``count()`` gives the frame count, called
    only for negative bounds."""
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        lo, hi, _ = slice(start, stop).indices(int(count()))
        return lo, max(lo, hi)
    return (start or 0), stop


class VideoReader:
    """An open video file (see the module for the rules); made by :func:`open_video`.

    The container is reopened for each :meth:`frames` call, so the reader holds no decoder between calls.
    """

    path: Path
    width: int                  # frame width in pixels
    height: int                 # frame height in pixels
    fps: Fraction               # frame rate (the stream's average rate, else its guessed rate)
    frame_count: int            # number of frames: from the header when recorded, else estimated (see exact)
    frame_count_exact: bool     # False when frame_count is estimated from the duration
    has_audio: bool             # the file holds an audio stream (VideoWriter(audio_from=...) copies the first)
    codec: str                  # the video codec's name ("h264", "ffv1", ...)
    rotation: int               # display rotation the file asks for (0, 90, 180, 270: counter-clockwise degrees)

    def __init__(self, path: str | os.PathLike[str]):
        av = _import_av()
        self.path = Path(path)
        imagefile._check_file(self.path)
        with self._open(av) as container:
            stream = self._video_stream(container)
            ctx = stream.codec_context
            self.width, self.height = int(ctx.width), int(ctx.height)
            if self.width * self.height > imagefile.MAX_PIXELS:
                raise InputError(f"{self.path}: the video frames are too large ({self.width}x{self.height} = "
                                 f"{self.width * self.height:,} pixels): at most {imagefile.MAX_PIXELS:,} pixels "
                                 "are accepted; downscale the video first")
            if self.width < 1 or self.height < 1:
                raise InputError(f"{self.path}: the video stream has no frame size ({self.width}x{self.height})")
            rate = stream.average_rate or stream.guessed_rate
            if not rate or rate <= 0:
                raise InputError(f"{self.path}: the video stream has no frame rate")
            self.fps = Fraction(rate)
            self.codec = str(ctx.name)
            self.has_audio = any(s.type == "audio" for s in container.streams)
            self._stream_frames = int(stream.frames or 0)
            if self._stream_frames > 0:
                self.frame_count, self.frame_count_exact = self._stream_frames, True
            else:
                seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                           else (container.duration or 0) / 1_000_000)
                self.frame_count, self.frame_count_exact = max(1, round(seconds * self.fps)), False
            first = next(self._decode(container, stream), None)
            if first is None:
                raise InputError(f"{self.path}: the video holds no frames")
            self._coded = (self.width, self.height)
            self.rotation = self._rotation(first)
            if self.rotation in (90, 270):
                self.width, self.height = self.height, self.width

    def _rotation(self, frame: Any) -> int:
        """The display rotation of a decoded frame (its display matrix), as 0, 90, 180 or 270."""
        try:
            degrees = float(getattr(frame, "rotation", 0) or 0)
        except (TypeError, ValueError):
            degrees = 0.0
        k = round(degrees / 90.0)
        if abs(degrees - 90.0 * k) > 1.0:
            raise InputError(f"{self.path}: the video asks to be shown rotated by {degrees:g} degrees; only "
                             "multiples of 90 are supported (rotate it with a video editor first)")
        return int(90 * (k % 4))

    def _open(self, av: Any) -> Any:
        try:
            return av.open(str(self.path), mode="r")
        except av.FFmpegError as exc:
            raise InputError(f"{self.path}: not a video file, or a broken one: {exc}") from exc

    def _video_stream(self, container: Any) -> Any:
        if not container.streams.video:
            raise InputError(f"{self.path}: the file holds no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.name:
            raise InputError(f"{self.path}: the video codec is not supported by this FFmpeg build (PyAV)")
        stream.thread_type = "AUTO"
        return stream

    def _decode(self, container: Any, stream: Any) -> Iterator[Any]:
        """Decoded video frames; FFmpeg errors become an ``InputError`` naming the frame index."""
        av = _import_av()
        index = packets = 0
        try:
            for packet in container.demux(stream):
                packets += packet.size > 0
                for frame in packet.decode():
                    yield frame
                    index += 1
        except av.FFmpegError as exc:
            raise InputError(f"{self.path}: cannot decode frame {index} (corrupt or truncated file?): {exc}") from exc
        # fewer packets than the header records: the file was cut.  (Fewer frames than packets is not an error:
        # an MP4 edit list may tell the decoder to drop some.)
        if self._stream_frames and packets < self._stream_frames:
            raise InputError(f"{self.path}: the video ends after {index} frames, its header records "
                             f"{self._stream_frames} (truncated file?): cannot decode frame {index}")

    def _count_packets(self) -> int:
        """The exact frame count, by reading the packets (no decoding); for negative slice bounds."""
        if self.frame_count_exact:
            return self.frame_count
        av = _import_av()
        with self._open(av) as container:
            stream = self._video_stream(container)
            try:
                n = sum(1 for p in container.demux(stream) if p.size > 0)
            except av.FFmpegError as exc:
                raise InputError(f"{self.path}: cannot read the video packets (corrupt file?): {exc}") from exc
        self.frame_count, self.frame_count_exact = n, True
        return n

    def count_frames(self) -> int:
        """The exact frame count: :attr:`frame_count` when the header records it, else counted once from the
        packets (no decoding); :attr:`frame_count` is then exact too."""
        return self._count_packets()

    def frames(self, start: int | None = None, stop: int | None = None,
               window: int = DEFAULT_WINDOW) -> Iterator[torch.Tensor]:
        """Windows of at most ``window`` frames ``[n, H, W, 3]`` float32 in [0, 1] of ``frames[start:stop]``."""
        if not isinstance(window, int) or window < 1:
            raise InputError(f"window: expected a whole number of frames >= 1, got {window!r}")
        lo, hi = _resolve(start, stop, self._count_packets)
        if hi is not None and hi <= lo:
            return
        import numpy as np

        av = _import_av()
        with self._open(av) as container:
            stream = self._video_stream(container)
            batch: list[Any] = []
            for index, frame in enumerate(self._decode(container, stream)):
                if hi is not None and index >= hi:
                    break
                if index < lo:
                    continue
                if (frame.width, frame.height) != self._coded:
                    raise InputError(f"{self.path}: frame {index} is {frame.width}x{frame.height}, the video is "
                                     f"{self._coded[0]}x{self._coded[1]}; videos that change size are not supported")
                array = frame.to_ndarray(format="rgb24")
                batch.append(np.rot90(array, self.rotation // 90) if self.rotation else array)
                if len(batch) == window:
                    yield _to_frames(batch)
                    batch = []
            if batch:
                yield _to_frames(batch)

    def __repr__(self) -> str:
        count = self.frame_count if self.frame_count_exact else f"~{self.frame_count}"
        turned = f", rotation={self.rotation}" if self.rotation else ""
        return (f"VideoReader({str(self.path)!r}, {self.width}x{self.height}, {count} frames at {self.fps} fps, "
                f"codec={self.codec}, audio={self.has_audio}{turned})")


def open_video(path: str | os.PathLike[str]) -> VideoReader:
    """Open a video file for streaming reads (see the module); every failure is an ``InputError``."""
    return VideoReader(path)


class VideoWriter:
    """Frames -> a video file at ``path`` with a constant frame rate ``fps`` (see the module for the rules).

    ``codec`` is an FFmpeg encoder (``libx264`` by default, ``libx264rgb`` with ``pix_fmt="rgb24"`` and ``crf=0``
    for a lossless RGB file), ``crf`` its quality setting (x264/x265/VP9 ``crf``; None = the encoder's default),
    ``pix_fmt`` the stored pixel format.  Call :meth:`write` with windows of frames and :meth:`close` at the end
    (or use ``with``); until then nothing exists at ``path``.  A writer dropped without :meth:`close` is
    aborted when it is garbage-collected (its temporary file is removed, nothing is saved).
    """

    path: Path
    pix_fmt: str                 # the pixel format used (yuv444p when an odd size ruled out the one asked for)
    frames_written: int

    def __init__(self, path: str | os.PathLike[str], fps: Fraction | int | float | str, width: int, height: int, *,
                 audio_from: str | os.PathLike[str] | None = None, audio_start: float = 0.0, codec: str = "libx264",
                 crf: int | None = 18, pix_fmt: str = "yuv420p"):
        av = _import_av()
        self.path = Path(path)
        fmt = VIDEO_EXTENSIONS.get(self.path.suffix.lower())
        if fmt is None:
            raise OutputError(f"{self.path}: cannot tell the video container from the name; use one of "
                              f"{', '.join(sorted(VIDEO_EXTENSIONS))}")
        try:
            self.fps = Fraction(fps).limit_denominator(1_000_000)
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise InputError(f"fps: expected a positive frame rate, got {fps!r}") from exc
        if self.fps <= 0:
            raise InputError(f"fps: expected a positive frame rate, got {fps!r}")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise InputError(f"video size: expected positive whole numbers, got {width!r}x{height!r}")
        if width * height > imagefile.MAX_PIXELS:
            raise InputError(f"video size {width}x{height}: at most {imagefile.MAX_PIXELS:,} pixels per frame")
        if not isinstance(audio_start, (int, float)) or isinstance(audio_start, bool) or not \
                0 <= float(audio_start) < float("inf"):
            raise InputError(f"audio_start: expected seconds >= 0, got {audio_start!r}")
        self.audio_start = float(audio_start)
        self.width, self.height = width, height
        odd = width % 2 or height % 2
        self.pix_fmt = "yuv444p" if odd and _SUBSAMPLED.match(pix_fmt) else pix_fmt
        self.frames_written = 0
        self._closed = False
        self._audio_in: Any = None
        self._audio_packets: Iterator[Any] | None = None
        self._pending: Any = None
        self._cm = imagefile.atomic_output(self.path)
        file = self._cm.__enter__()
        try:
            self._out = av.open(file, mode="w", format=fmt)
            try:
                self._video = self._out.add_stream(codec, rate=self.fps)
            except (av.FFmpegError, ValueError) as exc:
                if codec not in av.codecs_available:
                    raise InputError(f"codec {codec!r}: no such video encoder in this FFmpeg build (PyAV)") from exc
                raise OutputError(f"{self.path}: a {self.path.suffix} file cannot hold {codec} video: {exc}") \
                    from exc
            self._video.width, self._video.height = width, height
            self._video.pix_fmt = self.pix_fmt
            self._video.time_base = Fraction(1) / self.fps
            self._video.codec_context.time_base = Fraction(1) / self.fps
            if crf is not None:
                self._video.options = {"crf": str(crf)}
            if audio_from is not None:
                self._open_audio(av, Path(audio_from))
            try:
                self._out.start_encoding()          # opens the encoder and writes the header: fails here, not later
            except (av.FFmpegError, ValueError) as exc:
                raise OutputError(f"{self.path}: cannot write a {self.path.suffix} file with the {codec} encoder "
                                  f"(pix_fmt {self.pix_fmt}){' and the copied audio' if self._audio_in else ''}: "
                                  f"{exc}") from exc
        except BaseException as exc:
            self._abort(exc)
            raise

    def _open_audio(self, av: Any, source: Path) -> None:
        imagefile._check_file(source)
        try:
            self._audio_in = av.open(str(source), mode="r")
        except av.FFmpegError as exc:
            raise InputError(f"{source}: cannot read the audio to copy (not a media file?): {exc}") from exc
        if not self._audio_in.streams.audio:
            self._audio_in.close()
            self._audio_in = None
            return
        in_stream = self._audio_in.streams.audio[0]
        try:
            self._audio = self._out.add_stream_from_template(in_stream)
        except (av.FFmpegError, ValueError) as exc:
            raise OutputError(f"{self.path}: the audio of {source} ({in_stream.codec_context.name}) cannot be "
                              f"copied into a {self.path.suffix} file: {exc}; try .mkv") from exc
        self._audio_source = source
        self._audio_packets = iter(self._audio_in.demux(in_stream))

    def _mux_audio(self, until: float | None) -> None:
        """Copy audio packets that start before ``until`` seconds (None: before the end of the video)."""
        if self._audio_packets is None:
            return
        av = _import_av()
        end = float(self.frames_written / self.fps)
        limit = end if until is None else min(until, end)
        try:
            while True:
                packet = self._pending if self._pending is not None else next(self._audio_packets, None)
                self._pending = None
                if packet is None:
                    self._audio_packets = None
                    return
                if packet.dts is None or packet.pts is None or packet.size == 0:
                    continue
                start = float(packet.pts * packet.time_base)
                if self.audio_start and start < self.audio_start:
                    continue
                if start - self.audio_start >= limit:
                    self._pending = packet
                    return
                if self.audio_start:
                    shift = round(self.audio_start / packet.time_base)
                    packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
                packet.stream = self._audio
                self._out.mux(packet)
        except av.FFmpegError as exc:
            raise OutputError(f"{self.path}: cannot copy the audio of {self._audio_source}: {exc}") from exc

    def write(self, frames: torch.Tensor) -> None:
        """Append frames ``[n, H, W, 3]`` (or one frame ``[H, W, 3]``) float in [0, 1] (values outside are clamped)."""
        import torch

        av = _import_av()
        if self._closed:
            raise OutputError(f"{self.path}: the writer is closed")
        if not isinstance(frames, torch.Tensor):
            raise InputError(f"frames: expected a torch.Tensor [n, H, W, 3], got {type(frames).__name__}")
        if frames.dim() == 3:
            frames = frames.unsqueeze(0)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (self.height, self.width, 3):
            raise InputError(f"frames: expected shape [n, {self.height}, {self.width}, 3], got "
                             f"{tuple(frames.shape)}")
        if not frames.dtype.is_floating_point:
            raise InputError(f"frames: expected float values in [0, 1], got {frames.dtype}")
        if not torch.isfinite(frames).all():
            raise InputError("frames: NaN or infinite values")
        data = frames.detach().float().clamp(0, 1).mul(255.0).add(0.5).floor().to(torch.uint8).cpu().numpy()
        with self._aborting(lambda: f"cannot encode frame {self.frames_written}"):
            for arr in data:
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = self.frames_written
                frame.time_base = Fraction(1) / self.fps
                for packet in self._video.encode(frame):
                    self._out.mux(packet)
                self.frames_written += 1
                self._mux_audio(float(self.frames_written / self.fps))

    @contextmanager
    def _aborting(self, what: Callable[[], str]) -> Iterator[None]:
        """Any error in the block aborts the writer (nothing is saved); an FFmpeg error becomes an ``OutputError``
        saying ``what()`` failed."""
        av = _import_av()
        try:
            yield
        except av.FFmpegError as exc:
            self._abort(exc)
            raise OutputError(f"{self.path}: {what()}: {exc}") from exc
        except BaseException as exc:
            self._abort(exc)
            raise

    def close(self) -> None:
        """Flush the encoder, copy the rest of the audio and rename the file onto ``path``; a writer that got no
        frame raises ``OutputError`` and leaves nothing (the temporary file is removed)."""
        if self._closed:
            return
        if self.frames_written == 0:
            error = OutputError(f"{self.path}: no frames were written; nothing is saved (a video needs at least one "
                                "frame)")
            self._abort(error)
            raise error
        with self._aborting(lambda: "cannot finish the video file"):
            for packet in self._video.encode(None):
                self._out.mux(packet)
            self._mux_audio(None)
            self._out.close()
        self._close_audio()
        self._closed = True
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        """Stop without writing anything at ``path`` (the temporary file is removed)."""
        self._abort(None)

    def _abort(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if hasattr(self, "_out"):
                self._out.close()
        except Exception:  # noqa: BLE001 - the container is discarded; the first error is what the caller sees
            pass
        self._close_audio()
        error = exc if exc is not None else OutputError("aborted")
        try:
            self._cm.__exit__(type(error), error, error.__traceback__)
        except BaseException as again:   # the context manager re-raises what it was given
            if again is not error:
                raise

    def _close_audio(self) -> None:
        if self._audio_in is not None:
            self._audio_in.close()
            self._audio_in = None
        self._audio_packets = None

    def __del__(self) -> None:
        # a writer dropped without close() or abort(): remove its temporary file (nothing appears at ``path``)
        if not getattr(self, "_closed", True) and hasattr(self, "_cm"):
            try:
                self._abort(None)
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                pass

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self._abort(exc)


# ---------------------------------------------------------------------------------------------------------------
# image sequences


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


class ImageSequence:
    """A folder of image files read as frames (see :func:`read_sequence`); same :meth:`frames` as a video."""

    folder: Path
    paths: list[Path]           # the frame files in natural order
    width: int                  # size of the first frame; every frame must have it
    height: int

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: not a folder of image files")
        self.paths = sorted((p for p in self.folder.iterdir() if not p.name.startswith(".")
                             and p.suffix.lower() in imagefile.EXTENSION_FORMATS and p.is_file()),
                            key=lambda p: _natural_key(p.name))
        if not self.paths:
            raise InputError(f"{self.folder}: no image files ({', '.join(sorted(imagefile.EXTENSION_FORMATS))})")
        first = imagefile.read_image(self.paths[0])
        self.width, self.height = first.width, first.height

    @property
    def frame_count(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """The file names, for :func:`write_sequence`."""
        return [p.name for p in self.paths]

    def frames(self, start: int | None = None, stop: int | None = None,
               window: int = DEFAULT_WINDOW) -> Iterator[torch.Tensor]:
        """Windows of at most ``window`` frames ``[n, H, W, 3]`` float32 in [0, 1] of ``frames[start:stop]``;
        gray frames are replicated to RGB and an alpha channel is dropped."""
        import torch

        if not isinstance(window, int) or window < 1:
            raise InputError(f"window: expected a whole number of frames >= 1, got {window!r}")
        batch: list[torch.Tensor] = []
        for path in self.paths[slice(start, stop)]:
            pixels = imagefile.read_image(path).pixels[0]
            if pixels.shape[0] != self.height or pixels.shape[1] != self.width:
                raise InputError(f"{path}: the frame is {pixels.shape[1]}x{pixels.shape[0]}, the sequence's first "
                                 f"frame ({self.paths[0].name}) is {self.width}x{self.height}; all frames must have "
                                 "the same size")
            batch.append(pixels.expand(-1, -1, 3) if pixels.shape[-1] == 1 else pixels[..., :3])
            if len(batch) == window:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)


def read_sequence(folder: str | os.PathLike[str]) -> ImageSequence:
    """A folder of image files (the extensions of :data:`vspbfr_core.imagefile.EXTENSION_FORMATS`, hidden files
    skipped) as a frame source in natural name order; read with :meth:`ImageSequence.frames`."""
    return ImageSequence(folder)


def write_sequence(folder: str | os.PathLike[str], frames: torch.Tensor, names: Sequence[str]) -> list[Path]:
    """Frames ``[n, H, W, C]`` in [0, 1] -> ``folder/names[i]``, each in the format of its extension (e.g. the
    input's :attr:`ImageSequence.names`); returns the paths written."""
    import torch

    if not isinstance(frames, torch.Tensor) or frames.dim() != 4:
        raise InputError(f"frames: expected a torch.Tensor [n, H, W, C], got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if len(names) != frames.shape[0]:
        raise InputError(f"write_sequence: {frames.shape[0]} frames but {len(names)} names")
    for name in names:
        if not name or Path(name).name != name or name.startswith("."):
            raise InputError(f"write_sequence: {name!r} is not a plain file name")
    if len(set(names)) != len(names):
        raise InputError("write_sequence: the names repeat")
    folder = Path(folder)
    written = []
    for frame, name in zip(frames, names):
        path = folder / name
        imagefile.write_image(frame, path)
        written.append(path)
    return written

"""Image files for the command line (``vspbfr restore``, ``vspbfr faces``): reading, and writing them safely.

Reading (:func:`read_image`) -- the rules every command follows:

* Formats: PNG, JPEG (MPO camera files: their primary picture), WebP, BMP, TIFF and GIF.  Pillow is only asked to
  try these decoders, so a file of another kind (or one disguised with a wrong extension) is refused before any
  other decoder looks at it.
* Size: at most :data:`MAX_PIXELS` pixels (100 megapixels, e.g. 12000 x 8000), checked from the file header
  before anything is decoded; larger images and decompression bombs are an :class:`~vspbfr_core.errors.InputError`
  (Pillow's own bomb warning is never shown).
* Frames: an animated GIF, WebP or PNG (APNG) or a multi-page TIFF is refused (frames are not cut to the first one;
  video input is a separate feature).
* EXIF orientation is applied; the result is written upright (no EXIF is written back).
* Pixel types: 8-bit modes become float in [0, 1] (palette and 1-bit images as RGB / gray, CMYK and YCbCr as RGB,
  images with transparency as RGBA).  16-bit gray (``I;16`` variants) is divided by 65535.  16-bit colour PNG /
  TIFF files are given by Pillow at 8 bits per channel and are treated as 8-bit.  32-bit float (``F``) images must
  hold finite values in [0, 1] (values within 1/255 outside are clamped); NaN, infinity or another range is
  refused.  32-bit integer (``I``) images are refused: they have no standard white level.
* A missing file, a folder, a broken symbolic link, a pipe or device, a file that cannot be read (permissions) or
  decoded (truncated, not an image) is an ``InputError`` naming the file.

Writing (:func:`write_image`):

* The output format follows the output name's extension: ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.bmp``,
  ``.tif``/``.tiff``; a name with another extension or none is written in the input's own format when that is one
  of these.  GIF is never written (a 256-colour palette would throw away the restored detail): such an input is
  refused with that reason.  No file ever gets bytes of another format than its name says.
* JPEG at quality 95 without chroma subsampling (alpha dropped), WebP at quality 95, PNG / BMP lossless, TIFF with
  the input's lossless compression (LZW for inputs that used JPEG or fax compression).
* Sample depth: 16-bit gray inputs are written as 16-bit PNG / TIFF; float inputs as 32-bit float TIFF (values in
  [0, 1]) or 16-bit PNG; everything else, and every format without deeper samples, as 8 bits per channel.
* Safety: the picture is first written to a new temporary file created exclusively (``O_CREAT | O_EXCL``, which
  never follows a symbolic link) in the destination folder with a short name (``.vspbfr-XXXXXXXX.part``, so a long
  final name that the file system accepts still works), then renamed onto the final path.  The rename replaces
  only that directory entry: a symbolic link placed at the final path is replaced, its target is never written.
  The file gets the usual permissions (0666 minus the umask).  On any error the temporary file is removed.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_PIXELS", "READ_FORMATS", "WRITE_FORMATS", "EXTENSION_FORMATS", "LoadedImage", "read_image",
    "read_image_bytes", "output_format", "write_image", "encode_image", "fit_name", "write_bytes_atomic",
    "atomic_output",
]

MAX_PIXELS = 100_000_000                      # width * height above this is refused before decoding
READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")     # JPEG includes MPO camera files
WRITE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                     ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF"}
NAME_MAX = 255                                # bytes in one file name on common file systems
FLOAT_TOLERANCE = 1.0 / 255.0
_LOSSLESS_TIFF = ("raw", "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits")
_GIF_REASON = ("GIF output is not supported (its 256-colour palette would throw away the restored detail); "
               "convert the file to PNG first")
# What Pillow's decoders raise on broken or hostile files (besides OSError): turned into one InputError.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, struct.error,
                                                  IndexError, KeyError, TypeError, ZeroDivisionError, RuntimeError,
                                                  MemoryError)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image file and what is needed to write a result back the same way."""

    pixels: torch.Tensor            # IMAGE [1, H, W, C] float32 in [0, 1], C = 1, 3 or 4, upright
    format: str                     # Pillow's name of the content's format ("PNG", "JPEG", "MPO", "TIFF", ...)
    sample: str                     # "uint8" | "uint16" | "float32": how the samples were stored
    mode: str                       # Pillow mode of the file ("RGB", "I;16", "F", "P", ...)
    params: dict[str, Any] = field(default_factory=dict)   # format details kept for writing (TIFF compression)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])


def _check_file(path: Path) -> None:
    """A regular file (or a link to one), else an ``InputError`` saying what the path is."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)") from None
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot access the file: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a pipe or device?)")


def _bomb_message(path: Path, exc: BaseException) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(found.group(1)):,} pixels)" if found else ""
    return (f"{path}: the image is too large{size}: at most {MAX_PIXELS:,} pixels are accepted "
            "(a decompression bomb or a huge picture); crop or downscale it first")


def _register_plugins() -> None:
    """Load the decoders of :data:`READ_FORMATS` (``Image.open(formats=...)`` only knows loaded plugins)."""
    from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin,  # noqa: F401
                     TiffImagePlugin, WebPImagePlugin)


def read_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Decode one image file following the rules of this module; every failure is an ``InputError``."""
    path = Path(path)
    _check_file(path)
    return _decode(path, path)


def read_image_bytes(data: bytes, name: str | os.PathLike[str]) -> LoadedImage:
    """:func:`read_image` of a file's contents (read from a URI, say); ``name`` labels the messages."""
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{name}: expected the file's bytes, got {type(data).__name__}")
    return _decode(io.BytesIO(bytes(data)), Path(name))


def _decode(source: Any, path: Path) -> LoadedImage:
    """Decode ``source`` (a path or a binary file object); ``path`` names it in the messages."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    _register_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our own limit is checked below
            with Image.open(source, formats=READ_FORMATS) as im:
                fmt = str(im.format)
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise InputError(f"{path}: the image is too large ({width}x{height} = {width * height:,} "
                                     f"pixels): at most {MAX_PIXELS:,} pixels are accepted; crop or downscale it "
                                     "first")
                if width < 1 or height < 1:
                    raise InputError(f"{path}: the image is empty ({width}x{height})")
                frames = 1 if fmt == "MPO" else int(getattr(im, "n_frames", 1))
                if frames > 1:
                    kind = "pages" if fmt == "TIFF" else "frames"
                    raise InputError(f"{path}: {fmt} file with {frames} {kind}: animated and multi-page images "
                                     "are not supported (only the first would be used); extract the frames as "
                                     "separate images first")
                mode = im.mode
                params: dict[str, Any] = {}
                if fmt == "TIFF":
                    params["compression"] = im.info.get("compression", "raw")
                im.load()
                im = ImageOps.exif_transpose(im)
                arr, sample = _to_array(im, mode, path)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file ({exc.strerror})") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: cannot read the file: permission denied") from exc
    except Image.UnidentifiedImageError as exc:
        raise InputError(f"{path}: not an image in a supported format "
                         f"({', '.join(READ_FORMATS)})") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(_bomb_message(path, exc)) from exc
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to decode the image") from exc
    except _DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot decode the image (broken or truncated file?): {reason}") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    pixels = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(0)
    return LoadedImage(pixels, fmt, sample, mode, params)


def _to_array(im: Any, mode: str, path: Path) -> tuple[Any, str]:
    """Pillow image -> (float32 array [H, W] or [H, W, C] in [0, 1], sample kind)."""
    import numpy as np

    if im.mode.startswith("I;16"):
        if im.mode.startswith("I;16S"):
            raise InputError(f"{path}: signed 16-bit images are not supported; convert to unsigned 16-bit or 8-bit")
        return np.asarray(im).astype(np.float32) / 65535.0, "uint16"
    if im.mode in ("I", "I;32", "I;32B", "I;32L"):
        raise InputError(f"{path}: 32-bit integer images (mode {mode}) are not supported: they have no standard "
                         "white level; convert the image to 8- or 16-bit first")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise InputError(f"{path}: the float image holds {bad} NaN or infinite value(s)")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
            raise InputError(f"{path}: float image values must lie in [0, 1], found {lo:.4g} to {hi:.4g}; "
                             "normalise or tone-map the image first")
        return np.clip(arr, 0.0, 1.0), "float32"
    if im.mode not in ("L", "RGB", "RGBA") or "transparency" in im.info:
        has_alpha = "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info
        try:
            im = im.convert("RGBA" if has_alpha else ("L" if im.mode == "1" else "RGB"))
        except ValueError as exc:
            raise InputError(f"{path}: images of mode {mode} cannot be converted to RGB; convert the file to "
                             "8-bit RGB first") from exc
    return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0, "uint8"


def output_format(path: str | os.PathLike[str], content_format: str | None = None) -> str:
    """The Pillow format a result written to ``path`` gets (see the module rules), or an ``InputError``."""
    suffix = Path(path).suffix.lower()
    fmt = EXTENSION_FORMATS.get(suffix)
    if fmt is None:
        fmt = "JPEG" if content_format == "MPO" else content_format
        if fmt is None or fmt not in WRITE_FORMATS + ("GIF",):
            raise InputError(f"{path}: cannot tell the output format from the name (extension {suffix or 'none'}); "
                             "rename the file with .png, .jpg, .webp, .bmp or .tif")
    if fmt == "GIF":
        raise InputError(f"{path}: {_GIF_REASON}")
    return fmt


def fit_name(stem: str, tail: str, limit: int = NAME_MAX) -> str:
    """``stem + tail`` when it fits in ``limit`` bytes, else a shortened stem plus a hash of the full one."""
    import hashlib

    name = stem + tail
    if len(os.fsencode(name)) <= limit:
        return name
    digest = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    room = limit - len(os.fsencode(tail + digest))
    short = stem
    while short and len(os.fsencode(short)) > room:
        short = short[:-1]
    return short + digest + tail


def write_image(image: torch.Tensor, path: str | os.PathLike[str], *, format: str | None = None,
                sample: str = "uint8", params: dict[str, Any] | None = None) -> None:
    """IMAGE ``[H, W, C]`` in [0, 1] -> an image file at ``path``, written through an exclusive temporary file.

    ``format`` defaults to :func:`output_format` of ``path``; ``sample`` ("uint8", "uint16" or "float32") is the
    input's sample kind, used where the format can hold it; ``params`` are :attr:`LoadedImage.params`.
    """
    path = Path(path)
    im, fmt, options = _prepare(image, path, format or output_format(path), sample, params)
    save_atomic(im, path, fmt, **options)


def encode_image(image: torch.Tensor, format: str, *, sample: str = "uint8", params: dict[str, Any] | None = None,
                 name: str | os.PathLike[str] = "image") -> bytes:
    """The bytes :func:`write_image` would write (same encoder and settings), for outputs that are not local
    files; ``name`` labels the messages."""
    import io

    im, fmt, options = _prepare(image, Path(name), format, sample, params)
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _prepare(image: torch.Tensor, path: Path, fmt: str, sample: str, params: dict[str, Any] | None
             ) -> tuple[Any, str, dict[str, Any]]:
    """IMAGE -> (Pillow image, format, save options) as files of ``fmt`` are written."""
    import numpy as np
    import torch
    from PIL import Image

    if fmt not in WRITE_FORMATS:
        raise InputError(f"{path}: cannot write {fmt} files ({_GIF_REASON if fmt == 'GIF' else 'unsupported'})")
    x = image.detach().float().clamp(0, 1)
    gray = x.shape[-1] == 1
    if gray and sample == "float32" and fmt == "TIFF":
        im = Image.fromarray(np.ascontiguousarray(x[..., 0].cpu().numpy(), dtype=np.float32))
    elif gray and sample in ("uint16", "float32") and fmt in ("PNG", "TIFF"):
        arr = x[..., 0].mul(65535.0).add(0.5).floor().cpu().numpy().astype(np.uint16)
        im = Image.fromarray(np.ascontiguousarray(arr))
    else:
        arr = x.mul(255.0).add(0.5).floor().to(dtype=torch.uint8).cpu().numpy()
        im = Image.fromarray(np.ascontiguousarray(arr[..., 0] if gray else arr))
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        if im.mode == "RGBA":
            im = im.convert("RGB")
        options = {"quality": 95, "subsampling": 0}
    elif fmt == "WEBP":
        options = {"quality": 95, "method": 4}
    elif fmt == "TIFF":
        compression = (params or {}).get("compression", "raw")
        options = {"compression": compression if compression in _LOSSLESS_TIFF else "tiff_lzw"}
    return im, fmt, options


_UMASK: int | None = None


def _file_mode() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def save_atomic(im: Any, path: Path, fmt: str, **options: Any) -> None:
    """Pillow image -> ``path`` through an exclusively created temporary file in the same folder."""
    _write_atomic(path, lambda f: im.save(f, format=fmt, **options))


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> None:
    """``data`` -> ``path`` the way images are written (see the module): an exclusive temporary file in the same
    folder, renamed onto ``path``; used for the JSON report of ``vspbfr restore``."""
    _write_atomic(Path(path), lambda f: f.write(data))


def _write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    with atomic_output(path) as f:
        write(f)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """An exclusively created temporary file in ``path``'s folder (``.vspbfr-XXXXXXXX.part``), open for binary
    writing; renamed onto ``path`` when the ``with`` block ends normally, removed when it raises (see the module).
    Also used by :class:`vspbfr_core.media.VideoWriter`, which writes a whole clip through one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".vspbfr-", suffix=".part", dir=path.parent)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _file_mode())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

"""Bad input on the command line (``vspbfr restore`` / ``vspbfr faces``), table-driven by outcome class.

Outcome classes (each case asserts exactly one):

* ``usage-error``: refused when the command line is parsed: exit status 2, the option and its range named.
* ``parsed``: an edge value that must be accepted by the parser.
* ``clean-error``: refused before any model is loaded: exit status 1, one ``error: ...`` line matching the case's
  pattern, no traceback, nothing written (OUT_DIR not even created).
* ``failed-file``: the file is reported on one ``FAILED`` line (``restore``) or as an ``"error"`` entry
  (``faces --json``), the good file of the same run is still written, the exit status is 1, no traceback.
* ``pass-through``: a face-less image comes back in its own format (checked by magic bytes) at its own size with
  the same pixel values (lossy formats: close), in the bit depth the rules promise.
* ``correct-output``: file-system edge cases (long names, symbolic links in OUT_DIR, OUT_DIR inside the input
  folder, colliding stems without extra outputs) give the right files and touch nothing else.
* ``safe-print``: file names that are not valid UTF-8 are printed as ``\\xNN`` on UTF-8 and ASCII streams.

Runs are in-process (``cli.main``) except one subprocess for the real interpreter's stream set-up.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_path
from vspbfr_core.cli import main

MAGIC = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff", "WEBP": b"RIFF", "BMP": b"BM", "TIFF": (b"II*\0",
                                                                                                     b"MM\0*")}


def magic_format(path: Path) -> str:
    head = path.read_bytes()[:12]
    for fmt, magic in MAGIC.items():
        if any(head.startswith(m) for m in (magic if isinstance(magic, tuple) else (magic,))):
            if fmt == "WEBP" and head[8:12] != b"WEBP":
                continue
            return fmt
    return "unknown"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(args)`` -> (exit status, stdout, stderr); argparse exits become their status."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "DecompressionBomb" not in text, text


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".vspbfr-") or p.name.endswith(".part")]


# -- image makers ------------------------------------------------------------------------------------------------

def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=-1).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def handmade_png(width: int, height: int, depth: int, color: int, raw: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def bomb_png(width: int, height: int) -> bytes:
    """A header promising ``width x height`` gray pixels followed by a little data: decoding would explode."""
    return handmade_png(width, height, 8, 0, b"\0" * 4096)


def save(path: Path, im: Image.Image, **kw: object) -> Path:
    im.save(path, **kw)
    return path


def frames(n: int = 2) -> list[Image.Image]:
    return [Image.fromarray(np.roll(gradient(), 7 * i, axis=1)) for i in range(n)]


def _half_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    data = save(io.BytesIO(), Image.fromarray(noise), format="PNG").getvalue()   # type: ignore[attr-defined]
    return data[:len(data) // 2]


def make_good(folder: Path) -> Path:
    return save(folder / "good.png", Image.fromarray(gradient()))


def rgb16() -> tuple[bytes, np.ndarray]:
    values = (np.arange(8 * 4 * 3, dtype=np.uint32).reshape(4, 8, 3) * 2711 % 65536).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in values)
    return handmade_png(8, 4, 16, 2, raw), values.astype(np.uint16)


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> Path:
    return tiny_models_dir


# == usage-error / parsed: numeric options ====================================================================

USAGE_ERRORS = [
    ("restore", "--chunk-size", "0", r"integer >= 1"), ("restore", "--chunk-size", "-3", r"integer >= 1"),
    ("restore", "--chunk-size", "1.5", r"integer >= 1"), ("restore", "--chunk-size", "nan", r"integer >= 1"),
    ("restore", "--threads", "-1", r"integer in \[0, "), ("restore", "--threads", "100000", r"integer in \[0, "),
    ("restore", "--threshold", "0", r"number in \(0, 1\]"), ("restore", "--threshold", "1.01", r"\(0, 1\]"),
    ("restore", "--threshold", "nan", r"not a finite number"), ("restore", "--threshold", "-0.5", r"\(0, 1\]"),
    ("restore", "--min-size", "-1", r"number >= 0"), ("restore", "--min-size", "inf", r"not a finite"),
    ("restore", "--max-faces", "-1", r"integer >= 0"), ("restore", "--max-faces", "2.5", r"integer >= 0"),
    ("restore", "--feather", "-2", r"number >= 0"), ("restore", "--feather", "nan", r"not a finite"),
    ("restore", "--upscale", "0.5", r"\[1, 8\]"), ("restore", "--upscale", "9", r"\[1, 8\]"),
    ("restore", "--upscale", "inf", r"not a finite"), ("restore", "--upscale", "NaN", r"not a finite"),
    ("restore", "--prompt-mix", "1.5", r"\[0, 1\]"), ("restore", "--prompt-mix", "-0.1", r"\[0, 1\]"),
    ("restore", "--prompt-mix", "nan", r"not a finite"), ("restore", "--visibility", "2", r"\[0, 1\]"),
    ("restore", "--visibility", "-inf", r"not a finite"), ("restore", "--bank-scale", "4.5", r"\[0, 4\]"),
    ("restore", "--bank-scale", "-1", r"\[0, 4\]"), ("restore", "--bank-scale", "nan", r"not a finite"),
    ("restore", "--seed", "abc", r"integer, got"), ("restore", "--seed", "1.5", r"integer, got"),
    ("faces", "--threshold", "0", r"\(0, 1\]"), ("faces", "--threshold", "nan", r"not a finite"),
    ("faces", "--min-size", "-1", r">= 0"), ("faces", "--max-faces", "-2", r"integer >= 0"),
    ("faces", "--detect-size", "-1", r"integer >= 0"), ("faces", "--detect-size", "big", r"integer >= 0"),
]


@pytest.mark.parametrize("command,option,value,pattern", USAGE_ERRORS)
def test_usage_error(command: str, option: str, value: str, pattern: str, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    args = [command, "x.png", f"{option}={value}"] + (["-o", str(tmp_path / "out")] if command == "restore" else [])
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert re.search(rf"argument {option}: expected .*{pattern}", err), err
    no_traceback(err)
    assert not (tmp_path / "out").exists()


PARSED = [
    ("restore", "--seed", "-5", -5), ("restore", "--seed", str(2 ** 70), 2 ** 70), ("restore", "--threshold", "1", 1.0),
    ("restore", "--upscale", "8", 8.0), ("restore", "--upscale", "1", 1.0), ("restore", "--bank-scale", "4", 4.0),
    ("restore", "--threads", "0", 0), ("restore", "--chunk-size", "1", 1), ("restore", "--feather", "0", 0.0),
    ("restore", "--visibility", "0", 0.0), ("restore", "--device", "cuda:1", "cuda:1"),
    ("faces", "--detect-size", "0", 0), ("faces", "--max-faces", "0", 0), ("faces", "--device", "cuda:7", "cuda:7"),
]


@pytest.mark.parametrize("command,option,value,expected", PARSED)
def test_parsed(command: str, option: str, value: str, expected: object) -> None:
    from vspbfr_core.cli import build_parser

    args = build_parser().parse_args([command, "x.png", option, value] + (["-o", "o"] if command == "restore" else []))
    assert getattr(args, option[2:].replace("-", "_")) == expected


# == clean-error: refused before any model is loaded ==========================================================

def _inputs_ab(tmp: Path) -> list[str]:
    for sub in ("a", "b"):
        (tmp / sub).mkdir()
        make_good(tmp / sub).rename(tmp / sub / "x.png")
    return [str(tmp / "a" / "x.png"), str(tmp / "b" / "x.png")]


def _stems(tmp: Path) -> list[str]:
    Image.fromarray(gradient()).save(tmp / "x.jpg")
    make_good(tmp).rename(tmp / "x.png")
    return [str(tmp / "x.jpg"), str(tmp / "x.png")]


def _fifo(tmp: Path) -> list[str]:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp / "pipe.png")
    return [str(tmp / "pipe.png")]


def _hardlinked_output(tmp: Path) -> list[str]:
    (tmp / "in").mkdir()
    src = make_good(tmp / "in")
    (tmp / "out").mkdir()
    os.link(src, tmp / "out" / "good.png")
    return [str(src)]


# (name, inputs maker -> INPUT args, extra args, -o value or None for tmp/out, pattern of the error line)
CLEAN_ERRORS: list[tuple[str, Callable[[Path], list[str]], list[str], str | None, str]] = [
    ("empty -o", lambda t: [str(make_good(t))], [], "", r"output folder name is empty"),
    ("-o is a file", lambda t: [str(make_good(t))], [], "FILE", r"exists and is not a folder"),
    ("-o is the input folder", lambda t: [str(make_good(t).parent)], [], "SELF", r"is the input folder .* itself"),
    ("missing input", lambda t: [str(t / "nope.png")], [], None, r"no image found for: .*nope\.png \(no such file"),
    ("empty argument", lambda t: [""], [], None, r"empty argument"),
    ("folder without images", lambda t: [str((t / "empty").mkdir() or t / "empty")], [], None,
     r"folder without png/jpg"),
    ("glob matches nothing", lambda t: [str(t / "*.tif")], [], None, r"pattern matches no image"),
    ("named broken symlink", lambda t: [(os.symlink(t / "gone.png", t / "link.png"), str(t / "link.png"))[1]], [],
     None, r"link\.png \(broken symbolic link\)"),
    ("named FIFO", _fifo, [], None, r"pipe\.png \(not a regular file\)"),
    ("same name from two folders", _inputs_ab, [], None,
     r"same output name: .*a/x\.png and .*b/x\.png would both write .*x\.png"),
    ("same stem with --compare", _stems, ["--compare"], None, r"x\.jpg and .*x\.png would both write .*compare/x\.png"),
    ("same stem with --save-faces", _stems, ["--save-faces"], None, r"would both write .*faces/x_NN_before\.png"),
    ("output is an input file", lambda t: [str(make_good(t))], [], "PARENT",
     r"refusing to overwrite inputs: the result of .*good\.png would replace the input"),
    ("output hard-linked to an input", _hardlinked_output, [], None, r"would replace the input .*in/good\.png"),
    ("unknown device", lambda t: [str(make_good(t))], ["--device", "gpu9"], None, r"--device.*'gpu9'"),
    ("absent CUDA device", lambda t: [str(make_good(t))], ["--device", "cuda:3"], None, r"--device 'cuda:3'"),
    ("bad selection", lambda t: [str(make_good(t))], ["--select", "first"], None, r"selection 'first'"),
]


@pytest.mark.parametrize("case", CLEAN_ERRORS, ids=[c[0] for c in CLEAN_ERRORS])
def test_restore_clean_error(case: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    name, make, extra, out, pattern = case
    if name == "absent CUDA device" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    work = tmp_path / "work"
    work.mkdir()
    inputs = make(work)
    if out == "FILE":
        out = str(work / "afile.txt")
        Path(out).write_text("x")
    elif out == "SELF":
        out = inputs[0]
    elif out == "PARENT":
        out = str(Path(inputs[0]).parent)
    elif out is None:
        out = str(work / "out")
    before = sorted(p for p in tmp_path.rglob("*"))
    code, _, err = run_cli(["restore", *inputs, "-o", out, "--models", str(tmp_path / "no-models"), *extra], capsys)
    assert code == 1, err
    assert re.search(r"^error: .*" + pattern, err, re.M), err
    assert "style_encoder_decoder" not in err          # it failed before looking for models
    no_traceback(err)
    assert sorted(p for p in tmp_path.rglob("*")) == before   # nothing written, no folder created


FACES_CLEAN_ERRORS = [
    (["--device", "gpu9"], r"^error: --device.*'gpu9'"),
    (["--device", "cuda:3"], r"^error: --device 'cuda:3'"),
    (["--select", "-1"], r"^error: selection"),
]


@pytest.mark.parametrize("extra,pattern", FACES_CLEAN_ERRORS)
def test_faces_clean_error(extra: list[str], pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if "cuda:3" in extra and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    code, out, err = run_cli(["faces", str(make_good(tmp_path)), "--models", str(tmp_path / "none"), *extra], capsys)
    assert code == 1 and out == ""
    assert re.search(pattern, err, re.M), err
    assert "detection_mobilenet" not in err
    no_traceback(err)


# == failed-file: every bad file reported, the good one still written =========================================

def _multipage(p: Path) -> Path:
    a, b = frames()
    return save(p, a, save_all=True, append_images=[b])


# (file name, maker(path) -> path, restore FAILED pattern, faces error pattern or None when faces reads it fine)
BAD_FILES: list[tuple[str, Callable[[Path], object], str, str | None]] = [
    ("bomb.png", lambda p: p.write_bytes(bomb_png(20000, 20000)), r"too large \(400,000,000 pixels\)", "too large"),
    ("big.png", lambda p: p.write_bytes(bomb_png(11000, 10000)), r"too large \(11000x10000 = 110,000,000 pixels\)",
     "too large"),
    ("anim.gif", lambda p: _multipage(p), r"GIF file with 2 frames: animated", "animated"),
    ("anim.webp", lambda p: _multipage(p), r"WEBP file with 2 frames: animated", "animated"),
    ("anim.png", lambda p: _multipage(p), r"PNG file with 2 frames: animated", "animated"),
    ("pages.tif", lambda p: _multipage(p), r"TIFF file with 2 pages", "multi-page"),
    ("int32.tif", lambda p: save(p, Image.fromarray(np.full((8, 8), 70000, np.int32))), r"32-bit integer", "32-bit"),
    ("nan.tif", lambda p: save(p, Image.fromarray(np.full((8, 8), np.nan, np.float32))), r"NaN or infinite", "NaN"),
    ("hdr.tif", lambda p: save(p, Image.fromarray(np.linspace(0, 4, 64, dtype=np.float32).reshape(8, 8))),
     r"values must lie in \[0, 1\], found 0 to 4", r"\[0, 1\]"),
    ("truncated.png", lambda p: p.write_bytes(_half_png()), r"cannot decode the image", "decode"),
    ("text.png", lambda p: p.write_text("not an image"), r"not an image in a supported format", "supported format"),
    ("empty.jpg", lambda p: p.write_bytes(b""), r"not an image in a supported format", "supported format"),
    ("still.gif", lambda p: save(p, Image.fromarray(gradient()).convert("P")), r"GIF output is not supported", None),
    ("notes.txt", lambda p: p.write_text("hello"), r"not an image in a supported format", "supported format"),
    ("image.ppm", lambda p: save(p, Image.fromarray(gradient())), r"not an image in a supported format",
     "supported format"),
    ("broken-link.png", lambda p: os.symlink(p.with_name("gone.png"), p), r"broken symbolic link", "broken symbolic"),
    ("pipe.png", lambda p: os.mkfifo(p), r"not a regular file", "not a regular file"),
]
NAMED = ("anim.gif", "still.gif", "notes.txt", "image.ppm")     # not collected from a folder by extension


def _bad_folder(tmp: Path) -> tuple[Path, list[str]]:
    folder = tmp / "bad"
    folder.mkdir()
    for name, make, _, _ in BAD_FILES:
        make(folder / name)
    make_good(folder)
    return folder, [str(folder / n) for n in NAMED]


@pytest.fixture(scope="module")
def restore_bad_run(models: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    tmp = tmp_path_factory.mktemp("bad_restore")
    folder, named = _bad_folder(tmp)
    out = tmp / "out"
    proc_err = io.StringIO()
    old = sys.stderr
    sys.stderr = proc_err
    try:
        code = main(["restore", str(folder), *named, "-o", str(out), "--models", str(models),
                     "--detector", "mobile0.25", "--threads", "1"])
    finally:
        sys.stderr = old
    return code, proc_err.getvalue(), out


@pytest.mark.parametrize("name,pattern", [(c[0], c[2]) for c in BAD_FILES])
def test_restore_failed_file(name: str, pattern: str, restore_bad_run: tuple[int, str, Path]) -> None:
    code, err, out = restore_bad_run
    assert code == 1
    lines = [line for line in err.splitlines() if re.search(rf"/{re.escape(name)}: FAILED: ", line)]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].count(f"bad/{name}") == 1             # the input path is not repeated inside the reason
    no_traceback(err)
    assert (out / "good.png").is_file() and not (out / name).exists()
    assert f"done: 1/{len(BAD_FILES) + 1} files" in err and f"{len(BAD_FILES)} file(s) failed" in err
    assert not leftovers(out)


@pytest.fixture(scope="module")
def faces_bad_run(models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    import json

    tmp = tmp_path_factory.mktemp("bad_faces")
    folder, named = _bad_folder(tmp)
    files = [str(folder), *named]                         # the folder is walked as `restore` walks it
    buf = io.StringIO()
    old = sys.stdout
    sys.stdout = buf
    try:
        code = main(["faces", *files, "--models", str(models), "--detector", "mobile0.25", "--device", "cpu", "--json"])
    finally:
        sys.stdout = old
    assert code == 1
    return {Path(img["path"]).name: img for img in json.loads(buf.getvalue())["images"]}


@pytest.mark.parametrize("name,pattern", [(c[0], c[3]) for c in BAD_FILES] + [("good.png", None)])
def test_faces_failed_file(name: str, pattern: str | None, faces_bad_run: dict[str, dict]) -> None:
    assert len(faces_bad_run) == len(BAD_FILES) + 1        # every file of the folder has exactly one entry
    entry = faces_bad_run[name]
    if pattern is None:                                   # faces reads it (a still GIF too): 0 faces, no error
        assert "error" not in entry and entry["faces"] == [] and entry["width"] == 64
    else:
        assert re.search(pattern, entry["error"]), entry
        assert entry["error"].startswith("InputError: ") and "Traceback" not in entry["error"]


def test_unreadable_folder_is_a_failure(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """failed-file: a sub-folder that cannot be listed is reported and counted (os.walk would skip it silently)."""
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    make_good(folder / "locked")
    make_good(folder)
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, _, err = run_cli(["restore", str(folder), "-o", str(tmp_path / "out"), "--models", str(models),
                            "--detector", "mobile0.25"], capsys)
    assert code == 1
    assert re.search(r"locked: FAILED: cannot read the folder: Permission denied", err), err
    assert "done: 1/2 files" in err and (tmp_path / "out" / "good.png").is_file()
    no_traceback(err)


def test_only_failures_load_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """failed-file: a folder whose only image is a broken link fails without loading models."""
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(folder / "gone.png", folder / "x.png")
    code, _, err = run_cli(["restore", str(folder), "-o", str(tmp_path / "out"), "--models", str(tmp_path)], capsys)
    assert code == 1 and "x.png: FAILED: broken symbolic link" in err and "style_encoder" not in err
    assert "done: 0/1 files" in err
    no_traceback(err)


# == pass-through: face-less images round-trip in their own format ===========================================

def _gray16(p: Path) -> np.ndarray:
    arr = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21 % 65536).astype(np.uint16)
    Image.fromarray(arr).save(p)
    return arr


def _float(p: Path) -> np.ndarray:
    arr = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(arr).save(p)
    return arr


def _rgb16(p: Path) -> np.ndarray:
    data, values = rgb16()
    p.write_bytes(data)
    return (values >> 8).astype(np.uint8)                 # Pillow reads 16-bit colour at 8 bits per channel


def _rgb16_tiff(p: Path) -> np.ndarray:
    """A baseline little-endian TIFF, 16 bits per RGB sample (Pillow cannot write one)."""
    h, w = 4, 8
    values = (np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3) * 2711 % 65536).astype("<u2")
    data = values.tobytes()
    extra = 8 + 2 + 10 * 12 + 4                       # header + IFD: the bits-per-sample triple, then the pixels
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, extra), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, extra + 6),
            (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                  else struct.pack("<I", value)) for tag, kind, count, value in tags)
    p.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)
    return (values >> 8).astype(np.uint8)


def _plain(fmt: str, mode: str = "RGB", **kw: object) -> Callable[[Path], np.ndarray]:
    def make(p: Path) -> np.ndarray:
        im = Image.fromarray(gradient()).convert(mode)
        im.save(p, format=fmt, **kw)
        with Image.open(p) as back:
            expected = back.convert("RGBA" if "transparency" in back.info or "A" in back.getbands() else
                                    ("L" if back.mode in ("1", "L") else "RGB"))
            return np.asarray(expected)
    return make


def _mpo(p: Path) -> np.ndarray:
    a, b = frames()
    a.save(p, format="MPO", save_all=True, append_images=[b])
    with Image.open(p) as im:
        assert im.format == "MPO"
        return np.asarray(im.convert("RGB"))


# (file name, maker(path) -> expected array, output format, output mode, max abs difference allowed)
PASS_THROUGH: list[tuple[str, Callable[[Path], np.ndarray], str, str, float]] = [
    ("rgb.png", _plain("PNG"), "PNG", "RGB", 0),
    ("photo.jpg", _plain("JPEG", quality=95), "JPEG", "RGB", 6),
    ("photo.webp", _plain("WEBP", quality=95), "WEBP", "RGB", 8),
    ("lossless.webp", _plain("WEBP", lossless=True), "WEBP", "RGB", 8),
    ("plain.bmp", _plain("BMP"), "BMP", "RGB", 0),
    ("lzw.tif", _plain("TIFF", compression="tiff_lzw"), "TIFF", "RGB", 0),
    ("gray16.png", _gray16, "PNG", "I;16", 1),
    ("gray16.tif", _gray16, "TIFF", "I;16", 1),
    ("float.tif", _float, "TIFF", "F", 1e-6),
    ("rgb16.png", _rgb16, "PNG", "RGB", 0),
    ("rgb16.tif", _rgb16_tiff, "TIFF", "RGB", 0),
    ("palette.png", _plain("PNG", "P"), "PNG", "RGB", 0),
    ("palette-alpha.png", _plain("PNG", "P", transparency=3), "PNG", "RGBA", 0),
    ("bilevel.png", _plain("PNG", "1"), "PNG", "L", 0),
    ("gray-alpha.png", _plain("PNG", "LA"), "PNG", "RGBA", 0),
    ("rgb-trns.png", _plain("PNG", "RGB", transparency=(0, 0, 0)), "PNG", "RGBA", 0),
    ("cmyk.jpg", _plain("JPEG", "CMYK", quality=95), "JPEG", "RGB", 8),
    ("camera.jpg", _mpo, "JPEG", "RGB", 8),
    ("no-extension", _plain("PNG"), "PNG", "RGB", 0),
    ("jpeg-inside.png", _plain("JPEG", quality=95), "PNG", "RGB", 0),
]


@pytest.mark.parametrize("name,make,fmt,mode,tol", PASS_THROUGH, ids=[c[0] for c in PASS_THROUGH])
def test_pass_through(name: str, make: Callable[[Path], np.ndarray], fmt: str, mode: str, tol: float, models: Path,
                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / name
    expected = make(src)
    out = tmp_path / "out"
    code, _, err = run_cli(["restore", str(src), "-o", str(out), "--models", str(models), "--detector", "mobile0.25",
                            "--threads", "1"], capsys)
    assert code == 0, err
    dst = out / name
    assert magic_format(dst) == fmt
    with Image.open(dst) as im:
        assert im.mode == mode and im.size == (expected.shape[1], expected.shape[0])
        got = np.asarray(im)
    assert got.shape == expected.shape
    assert np.abs(got.astype(np.float64) - expected.astype(np.float64)).max() <= tol
    if tol == 0 or mode in ("I;16", "F"):
        assert got.std() > 0                               # not a flat white / black picture
    assert not leftovers(out)
    assert (dst.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# == correct-output: file-system edge cases =====================================================================

def _face(folder: Path, name: str = "face.jpg") -> Path:
    return Path(shutil.copy(shared_path("faces", "whole", "cf_04.jpg"), folder / name))


def test_long_names_with_extra_outputs(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """correct-output: a 250-byte name works; face-crop names that would pass 255 bytes are shortened."""
    src = _face(tmp_path, "n" * 246 + ".jpg")
    out = tmp_path / "out"
    code, _, err = run_cli(["restore", str(src), "-o", str(out), "--models", str(models), "--detector", "mobile0.25",
                            "--save-faces", "--compare"], capsys)
    assert code == 0, err
    assert magic_format(out / src.name) == "JPEG"
    assert (out / "compare" / ("n" * 246 + ".png")).is_file()
    crops = sorted(p.name for p in (out / "faces").iterdir())
    assert len(crops) == 2 and all(len(n) <= 255 and "~" in n for n in crops)
    assert crops[0].endswith("_00_after.png") and crops[1].endswith("_00_before.png")
    assert not leftovers(out)


@pytest.mark.parametrize("planted", ["good.png.part", "good.png"])
def test_symlink_in_out_dir_is_not_followed(planted: str, models: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """correct-output: a link planted at OUT/<name>.part or OUT/<name> never writes to its target."""
    src = make_good(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / planted)
    code, _, err = run_cli(["restore", str(src), "-o", str(out), "--models", str(models), "--detector", "mobile0.25"],
                           capsys)
    assert code == 0, err
    assert victim.read_text() == "keep me"
    assert (out / "good.png").is_file() and not (out / "good.png").is_symlink()
    assert magic_format(out / "good.png") == "PNG"


def test_symlinked_sub_folder_leading_outside(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """failed-file: OUT/faces planted as a link to another folder: nothing is written there."""
    src = _face(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "faces")
    code, _, err = run_cli(["restore", str(src), "-o", str(out), "--models", str(models), "--detector", "mobile0.25",
                            "--save-faces"], capsys)
    assert code == 1
    assert re.search(r"face\.jpg: FAILED: .*leads outside .*out", err), err
    assert list(elsewhere.iterdir()) == []
    no_traceback(err)


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_out_dir_inside_input_folder(how: str, models: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """correct-output: results under OUT_DIR inside the input folder are never collected again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    make_good(folder)
    out = folder / "restored"
    target = str(folder) if how == "folder" else str(folder / "**" / "*.png")
    for _ in range(2):
        code, _, err = run_cli(["restore", target, "-o", str(out), "--models", str(models), "--detector",
                                "mobile0.25"], capsys)
        assert code == 0, err
        assert "done: 1/1 files" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["good.png"]


def test_same_stem_without_extra_outputs(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """correct-output: x.jpg and x.png only collide through --compare / --save-faces; alone both are written."""
    inputs = _stems(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(["restore", *inputs, "-o", str(out), "--models", str(models), "--detector", "mobile0.25"],
                           capsys)
    assert code == 0, err
    assert magic_format(out / "x.jpg") == "JPEG" and magic_format(out / "x.png") == "PNG"


def test_sub_folders_are_kept_for_every_output(models: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """correct-output: a folder input keeps its sub-folders in the result, compare/ and faces/ trees."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    _face(folder / "sub", "x.jpg")
    _face(folder, "x.jpg")
    out = tmp_path / "out"
    code, _, err = run_cli(["restore", str(folder), "-o", str(out), "--models", str(models), "--detector",
                            "mobile0.25", "--compare", "--save-faces"], capsys)
    assert code == 0, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "compare/sub/x.png", "compare/x.png", "faces/sub/x_00_after.png", "faces/sub/x_00_before.png",
        "faces/x_00_after.png", "faces/x_00_before.png", "sub/x.jpg", "x.jpg"]
    with Image.open(out / "compare" / "sub" / "x.png") as im, Image.open(folder / "x.jpg") as src:
        assert im.size == (2 * src.size[0], src.size[1])


# == safe-print: names that are not UTF-8 =====================================================================

def _latin1_name(folder: Path) -> Path:
    if sys.platform == "darwin" or os.name == "nt":
        pytest.skip("the file system refuses names that are not UTF-8")
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    Image.fromarray(gradient()).save(os.fsdecode(raw))
    return Path(os.fsdecode(raw))


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "latin-1"])
@pytest.mark.parametrize("command", ["restore", "faces"])
def test_non_utf8_names_print_safely(command: str, encoding: str, models: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = _latin1_name(tmp_path)
    raw_out, raw_err = io.BytesIO(), io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw_out, encoding=encoding, errors="strict"))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw_err, encoding=encoding, errors="strict"))
    args = ["--models", str(models), "--detector", "mobile0.25", "--device", "cpu"]
    if command == "restore":
        args = ["restore", str(src.parent), "-o", str(tmp_path / "out"), *args]
    else:
        args = ["faces", str(src), *args]
    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    text = raw_out.getvalue().decode(encoding) + raw_err.getvalue().decode(encoding)
    assert code == 0, text
    assert "caf\\xe9.png" in text and "Traceback" not in text
    if command == "restore":
        assert os.path.exists(os.fsencode(tmp_path / "out") + b"/caf\xe9.png")


def test_non_utf8_name_in_a_real_process(models: Path, tmp_path: Path) -> None:
    """safe-print: the interpreter's own streams (strict ASCII stdout) print a non-UTF-8 name in the faces table."""
    src = _latin1_name(tmp_path)
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"vspbfr_core", b"faces", os.fsencode(src),
                           b"--models", os.fsencode(models), b"--detector", b"mobile0.25", b"--device", b"cpu"],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr and b"caf\\xe9.png (64x48): 0 faces" in proc.stdout

"""vspbfr_core.media: video reading/writing through PyAV and image sequences (tiny clips made here with PyAV)."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from vspbfr_core import imagefile, media  # noqa: E402
from vspbfr_core.errors import InputError, OutputError, VSPBFRError  # noqa: E402

FPS = Fraction(24000, 1001)
W, H, N = 64, 48, 12
RATE = 48000


def _pattern(n: int = N, h: int = H, w: int = W) -> torch.Tensor:
    """Smooth, distinct frames (a moving gradient), so lossy codecs keep them close."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    out = []
    for i in range(n):
        t = i / max(1, n - 1)
        out.append(torch.stack([(x * 0.6 + 0.3 * t).expand(h, w) + 0.05, y.expand(h, w) * 0.8 + 0.1,
                                torch.full((h, w), 0.2 + 0.6 * t)], dim=-1))
    return torch.stack(out).float() if out else torch.zeros(0, h, w, 3)


def _make_clip(path: Path, *, frames: int = N, audio: bool = True, video: bool = True, faststart: bool = False,
               w: int = W, h: int = H) -> Path:
    """A test clip written by PyAV directly (not by the code under test): H.264 + AAC sine."""
    out = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    if video:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    if audio:
        a = out.add_stream("aac", rate=RATE)
        a.layout = "mono"
    data = (_pattern(frames, h, w) * 255 + 0.5).floor().to(torch.uint8).numpy()
    if video:
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(data[i], format="rgb24")
            f.pts = i
            for p in v.encode(f):
                out.mux(p)
    if audio:
        n = int(RATE * max(frames, N) / FPS)
        s = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / RATE)).astype(np.float32)[None]
        af = av.AudioFrame.from_ndarray(s, format="flt", layout="mono")
        af.sample_rate, af.pts = RATE, 0
        for p in a.encode(af):
            out.mux(p)
        for p in a.encode(None):
            out.mux(p)
    if video:
        for p in v.encode(None):
            out.mux(p)
    out.close()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_clip(tmp_path_factory.mktemp("media") / "clip.mp4")


def _all(reader, **kw) -> torch.Tensor:
    return torch.cat(list(reader.frames(**kw)))


def _audio_info(path: Path) -> tuple[int, float]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return s.codec_context.sample_rate, float(s.duration * s.time_base)


def _no_part_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# -- reading ----------------------------------------------------------------------------------------------------

def test_open_video_metadata(clip: Path) -> None:
    r = media.open_video(clip)
    assert (r.width, r.height, r.frame_count, r.frame_count_exact) == (W, H, N, True)
    assert r.fps == FPS and isinstance(r.fps, Fraction)
    assert r.has_audio and r.codec == "h264"
    assert not media.open_video(_make_clip(clip.parent / "mute.mp4", audio=False)).has_audio


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_rotated_phone_video_is_read_as_it_is_shown(tmp_path: Path, degrees: int) -> None:
    path = tmp_path / f"rot{degrees}.mp4"
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = 64, 32, "yuv444p"
    v.set_display_rotation(degrees)                        # what a phone writes for a clip shot upright
    coded = np.zeros((32, 64, 3), np.uint8)
    coded[:, :16] = 255                                    # a white band on the left of the stored frame
    for i in range(3):
        f = av.VideoFrame.from_ndarray(coded, format="rgb24")
        f.pts = i
        for p in v.encode(f):
            out.mux(p)
    for p in v.encode(None):
        out.mux(p)
    out.close()
    r = media.open_video(path)
    assert r.rotation == degrees and (r.width, r.height) == ((32, 64) if degrees != 180 else (64, 32))
    shown = _all(r)
    assert shown.shape == (3, r.height, r.width, 3)
    expected = torch.from_numpy(np.rot90(coded, degrees // 90).copy()).float() / 255   # turned counter-clockwise
    assert (shown[0] - expected).abs().amax() < 0.1
    with media.VideoWriter(tmp_path / "back.mkv", FPS, r.width, r.height) as w:       # written upright
        w.write(shown)
    back = media.open_video(tmp_path / "back.mkv")
    assert back.rotation == 0 and (back.width, back.height) == (r.width, r.height)


def test_windows_and_values(clip: Path) -> None:
    r = media.open_video(clip)
    windows = list(r.frames(window=5))
    assert [w.shape[0] for w in windows] == [5, 5, 2]
    frames = torch.cat(windows)
    assert frames.shape == (N, H, W, 3) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert (frames - _pattern()).abs().mean() < 0.03      # H.264 4:2:0 of a smooth pattern


def test_start_stop_slicing(clip: Path) -> None:
    r = media.open_video(clip)
    full = _all(r)
    part = list(r.frames(3, 9, window=4))
    assert [w.shape[0] for w in part] == [4, 2]
    assert torch.equal(torch.cat(part), full[3:9])
    assert torch.equal(_all(r, start=-4), full[-4:])
    assert torch.equal(_all(r, stop=-10), full[:-10])
    assert list(r.frames(8, 3)) == [] and list(r.frames(20, None)) == []
    with pytest.raises(InputError, match="window"):
        list(r.frames(window=0))


def test_negative_slice_with_estimated_count(tmp_path: Path, clip: Path) -> None:
    mkv = tmp_path / "c.mkv"
    with media.VideoWriter(mkv, FPS, W, H, codec="libx264rgb", crf=0, pix_fmt="rgb24") as w:
        w.write(_pattern())
    r = media.open_video(mkv)
    assert not r.frame_count_exact and abs(r.frame_count - N) <= 1
    assert torch.equal(_all(r, start=-3), _all(r)[-3:])
    assert (r.frame_count, r.frame_count_exact) == (N, True)


def test_parse_frame_range() -> None:
    assert media.parse_frame_range("2:5") == slice(2, 5)
    assert media.parse_frame_range(" 10 : ") == slice(10, None)
    assert media.parse_frame_range(":-1") == slice(None, -1)
    assert media.parse_frame_range(":") == slice(None, None)
    for bad in ("a:b", "1:2:3", "5", "", "1.5:3", None, 3):
        with pytest.raises(InputError, match="START:STOP"):
            media.parse_frame_range(bad)


# -- broken inputs ----------------------------------------------------------------------------------------------

def test_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError, match="notes.mp4.*not a video"):
        media.open_video(text)
    with pytest.raises(InputError, match="no such file"):
        media.open_video(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="folder"):
        media.open_video(tmp_path)


def test_audio_only_file(tmp_path: Path) -> None:
    path = _make_clip(tmp_path / "sound.mp4", video=False)
    with pytest.raises(InputError, match="sound.mp4.*no video stream"):
        media.open_video(path)


def test_unsupported_codec(tmp_path: Path) -> None:
    data = _make_clip(tmp_path / "ok.mkv", audio=False).read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1                  # Matroska's codec id of H.264, renamed below
    bad = tmp_path / "odd_codec.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    with pytest.raises(InputError, match="odd_codec.mkv.*codec is not supported"):
        media.open_video(bad)


def test_zero_frames(tmp_path: Path) -> None:
    path = _make_clip(tmp_path / "empty.mkv", frames=0, audio=True)       # a video track without packets
    with av.open(str(path)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
    with pytest.raises(InputError, match="empty.mkv: the video holds no frames"):
        media.open_video(path)


def test_writer_refuses_zero_frames(tmp_path: Path) -> None:
    w = media.VideoWriter(tmp_path / "none.mp4", FPS, W, H)
    with pytest.raises(OutputError, match="no frames"):
        w.close()
    assert not (tmp_path / "none.mp4").exists()
    _no_part_files(tmp_path)


def test_corrupt_header(tmp_path: Path, clip: Path) -> None:
    data = bytearray(clip.read_bytes())
    data[:256] = bytes(range(256))
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt.mp4"):
        media.open_video(bad)


def test_truncated_index_at_end(tmp_path: Path, clip: Path) -> None:
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(clip.read_bytes()[: clip.stat().st_size * 2 // 3])      # PyAV puts the index (moov) last
    with pytest.raises(InputError, match="cut.mp4: not a video file, or a broken one"):
        media.open_video(bad)


def test_truncated_mid_stream_names_the_frame(tmp_path: Path) -> None:
    whole = _make_clip(tmp_path / "fast.mp4", frames=60, audio=False, faststart=True)   # index first
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    r = media.open_video(bad)
    assert r.frame_count == 60                                  # what the header says
    got = []
    with pytest.raises(InputError, match=r"cut.mp4.*frame (\d+)") as info:
        for w in r.frames(window=2):
            got.append(w)
    index = int(info.value.args[0].split("frame ")[-1].split()[0].rstrip(":"))
    assert 0 < index < 60 and sum(w.shape[0] for w in got) <= index


def test_huge_size_refused_before_decoding(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    monkeypatch.setattr(imagefile, "MAX_PIXELS", 1000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(media.VideoReader, "_decode", no_decoding)
    with pytest.raises(InputError, match=r"clip.mp4.*too large \(64x48 = 3,072 pixels\).*1,000"):
        media.open_video(clip)


def test_missing_pyav(monkeypatch: pytest.MonkeyPatch, clip: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)           # makes `import av` raise ImportError
    with pytest.raises(media.MissingPackageError, match=r'pip install "vspbfr\[video\]"') as info:
        media.open_video(clip)
    assert isinstance(info.value, VSPBFRError) and isinstance(info.value, ImportError)
    with pytest.raises(media.MissingPackageError):
        media.VideoWriter(tmp_path / "o.mp4", FPS, W, H)
    _no_part_files(tmp_path)


def test_package_import_does_not_load_av() -> None:
    code = "import sys, vspbfr_core, vspbfr_core.media; assert 'av' not in sys.modules, 'av imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# -- writing ----------------------------------------------------------------------------------------------------

def test_round_trip_with_audio(tmp_path: Path, clip: Path) -> None:
    src = media.open_video(clip)
    out = tmp_path / "out.mp4"
    writer = media.VideoWriter(out, src.fps, src.width, src.height, audio_from=clip)
    assert not out.exists()
    for window in src.frames(window=5):
        writer.write(window)
    writer.close()
    assert writer.frames_written == N
    _no_part_files(tmp_path)
    r = media.open_video(out)
    assert (r.width, r.height, r.frame_count, r.fps, r.has_audio) == (W, H, N, FPS, True)
    rate, seconds = _audio_info(out)
    src_rate, src_seconds = _audio_info(clip)
    assert rate == src_rate == RATE and abs(seconds - src_seconds) < 1e-3
    assert (_all(r) - _all(src)).abs().mean() < 0.02
    with av.open(str(out)) as c, av.open(str(clip)) as s:                    # copied, not re-encoded
        assert [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size][:5] == \
               [bytes(p) for p in s.demux(s.streams.audio[0]) if p.size][:5]
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        pts = [p.pts for p in c.demux(v) if p.size]
        assert sorted(float(t * v.time_base) for t in pts) == pytest.approx([i / float(FPS) for i in range(N)])


def test_audio_cut_at_the_end_of_the_video(tmp_path: Path, clip: Path) -> None:
    out = tmp_path / "short.mkv"
    with media.VideoWriter(out, FPS, W, H, audio_from=clip) as w:
        w.write(_pattern(5))
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        ends = [float((p.pts + p.duration) * p.time_base) for p in c.demux(a) if p.size]
    video_end = 5 / float(FPS)
    assert video_end - 0.03 < max(ends) < video_end + 0.03      # one AAC packet is 1024 / 48000 s


def test_audio_start_cuts_and_shifts_the_copied_audio(tmp_path: Path, clip: Path) -> None:
    start = 4 / float(FPS)                                   # a clip cut from frame 4 (--frames 4:)
    out = tmp_path / "cut.mkv"
    with media.VideoWriter(out, FPS, W, H, audio_from=clip, audio_start=start) as w:
        w.write(_pattern(5))
    with av.open(str(out)) as c, av.open(str(clip)) as s:
        a = c.streams.audio[0]
        got = [(float(p.pts * p.time_base), float((p.pts + p.duration) * p.time_base), bytes(p))
               for p in c.demux(a) if p.size]
        src = [(float(p.pts * p.time_base), bytes(p)) for p in s.demux(s.streams.audio[0]) if p.size]
    first_kept = next(i for i, (t, _) in enumerate(src) if t >= start)
    assert got[0][2] == src[first_kept][1] and got[1][2] == src[first_kept + 1][1]     # copied from there on
    assert 0 <= got[0][0] < 0.03                                 # and shifted to start at time 0
    assert 5 / float(FPS) - 0.03 < max(e for _, e, _ in got) < 5 / float(FPS) + 0.03
    for bad in (-1.0, float("nan"), "0"):
        with pytest.raises(InputError, match="audio_start"):
            media.VideoWriter(tmp_path / "bad.mkv", FPS, W, H, audio_from=clip, audio_start=bad)
    _no_part_files(tmp_path)


def test_audio_from_a_silent_file(tmp_path: Path) -> None:
    mute = _make_clip(tmp_path / "mute.mp4", audio=False)
    out = tmp_path / "o.mp4"
    with media.VideoWriter(out, FPS, W, H, audio_from=mute) as w:
        w.write(_pattern(3))
    r = media.open_video(out)
    assert (r.frame_count, r.has_audio) == (3, False)


def test_lossless_exact(tmp_path: Path) -> None:
    frames = _pattern()
    out = tmp_path / "exact.mkv"
    with media.VideoWriter(out, 25, W, H, codec="libx264rgb", crf=0, pix_fmt="rgb24") as w:
        w.write(frames[:7])
        w.write(frames[7])                                   # one frame [H, W, 3]
        w.write(frames[8:])
    got = _all(media.open_video(out))
    assert torch.equal(got, (frames * 255 + 0.5).floor() / 255)
    assert media.open_video(out).fps == 25


def test_odd_size_uses_yuv444p(tmp_path: Path) -> None:
    frames = _pattern(4, 47, 63)
    out = tmp_path / "odd.mp4"
    with media.VideoWriter(out, FPS, 63, 47) as w:
        assert w.pix_fmt == "yuv444p"
        w.write(frames)
    r = media.open_video(out)
    assert (r.width, r.height, r.frame_count) == (63, 47, 4)
    assert (_all(r) - frames).abs().mean() < 0.02
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
    even = media.VideoWriter(tmp_path / "even.mp4", FPS, 64, 48)
    assert even.pix_fmt == "yuv420p"
    even.abort()
    _no_part_files(tmp_path)


def test_writer_errors_leave_nothing(tmp_path: Path, clip: Path) -> None:
    out = tmp_path / "o.mp4"
    with pytest.raises(RuntimeError):
        with media.VideoWriter(out, FPS, W, H, audio_from=clip) as w:
            w.write(_pattern(3))
            raise RuntimeError("stop")
    with pytest.raises(InputError, match="codec"):
        media.VideoWriter(out, FPS, W, H, codec="no-such-codec")
    notes = tmp_path / "notes.txt"
    notes.write_text("no media here")
    with pytest.raises(InputError, match="notes.txt"):
        media.VideoWriter(out, FPS, W, H, audio_from=notes)
    with pytest.raises(OutputError, match=r"o.webm: a .webm file cannot hold libx264 video"):
        media.VideoWriter(tmp_path / "o.webm", FPS, W, H)                  # WebM holds VP8/VP9/AV1 only
    with pytest.raises(OutputError, match=r"o.mp4: cannot write a .mp4 file with the libx264 encoder \(pix_fmt bgr8\)"):
        media.VideoWriter(out, FPS, W, H, pix_fmt="bgr8")
    with pytest.raises(OutputError, match="container"):
        media.VideoWriter(tmp_path / "o.xyz", FPS, W, H)
    for fps in (0, -1, "x"):
        with pytest.raises(InputError, match="fps"):
            media.VideoWriter(out, fps, W, H)
    w = media.VideoWriter(out, FPS, W, H)
    for bad in (torch.zeros(2, H, W + 1, 3), torch.zeros(2, H, W, 4), torch.zeros(2, H, W, 3, dtype=torch.uint8),
                torch.full((1, H, W, 3), float("nan")), np.zeros((1, H, W, 3))):
        with pytest.raises(InputError, match="frames"):
            w.write(bad)
    w.abort()
    with pytest.raises(OutputError, match="closed"):
        w.write(_pattern(1))
    assert not out.exists()
    _no_part_files(tmp_path)


# -- image sequences --------------------------------------------------------------------------------------------

def test_sequence_round_trip_natural_order(tmp_path: Path) -> None:
    frames = _pattern(11, 16, 20)
    names = [f"f{i}.png" for i in range(11)]
    src = tmp_path / "in"
    written = media.write_sequence(src, frames, names)
    assert [p.name for p in written] == names
    (src / ".hidden.png").write_bytes(b"not read")
    (src / "readme.txt").write_text("skipped")
    seq = media.read_sequence(src)
    assert seq.names == names                       # f2 before f10
    assert (seq.frame_count, seq.width, seq.height) == (11, 20, 16)
    windows = list(seq.frames(window=4))
    assert [w.shape[0] for w in windows] == [4, 4, 3]
    assert torch.equal(torch.cat(windows), (frames * 255 + 0.5).floor() / 255)
    assert torch.equal(torch.cat(list(seq.frames(-3, None))), torch.cat(windows)[-3:])
    out = tmp_path / "out"
    media.write_sequence(out, torch.cat(windows), seq.names)
    assert media.read_sequence(out).names == names
    _no_part_files(out)


def test_sequence_gray_and_jpeg(tmp_path: Path) -> None:
    media.write_sequence(tmp_path, torch.rand(2, 8, 8, 1), ["a1.png", "a2.jpg"])
    frames = torch.cat(list(media.read_sequence(tmp_path).frames()))
    assert frames.shape == (2, 8, 8, 3) and torch.equal(frames[..., 0], frames[..., 2])
    assert imagefile.read_image(tmp_path / "a2.jpg").format == "JPEG"


def test_sequence_errors(tmp_path: Path) -> None:
    media.write_sequence(tmp_path, torch.rand(2, 8, 8, 3), ["img01.png", "img02.png"])
    media.write_sequence(tmp_path, torch.rand(1, 9, 8, 3), ["img03.png"])
    seq = media.read_sequence(tmp_path)
    with pytest.raises(InputError, match=r"img03.png.*8x9.*img01.png.*8x8"):
        list(seq.frames())
    assert len(list(seq.frames(0, 2))) == 1
    with pytest.raises(InputError, match="no image files"):
        media.read_sequence(tmp_path / "void" if (tmp_path / "void").mkdir() is None else tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        media.read_sequence(tmp_path / "img01.png")
    for names in (["a.png"], ["../x.png", "b.png"], ["a.png", "a.png"], [".a.png", "b.png"]):
        with pytest.raises(InputError, match="write_sequence"):
            media.write_sequence(tmp_path / "w", torch.rand(2, 4, 4, 3), names)


def test_atomic_output(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    with pytest.raises(RuntimeError):
        with imagefile.atomic_output(target) as f:
            f.write(b"half")
            raise RuntimeError("stop")
    assert not target.exists()
    _no_part_files(target.parent)
    with imagefile.atomic_output(target) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    _no_part_files(target.parent)


def test_dropped_writer_leaves_nothing(tmp_path: Path) -> None:
    import gc

    w = media.VideoWriter(tmp_path / "o.mp4", FPS, W, H)
    w.write(_pattern(2))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    del w
    gc.collect()
    assert list(tmp_path.iterdir()) == []

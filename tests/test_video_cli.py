"""`vspbfr restore` on video files and frame sequences (vspbfr_core.commands.restore_video).

Tiny VSPBFR networks and the real RetinaFace mobilenet0.25 on short clips panned across cf_02.png (two people),
written by PyAV directly (H.264 + AAC).  torch runs on one thread (see tests/test_temporal_sequence.py).
"""
from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from vspbfr_core.cli import main

av = pytest.importorskip("av")

from vspbfr_core import media  # noqa: E402
from vspbfr_core.commands import restore_video  # noqa: E402

FPS = Fraction(25)
RATE = 48000
N = 12
W, H = 300, 200


pytestmark = pytest.mark.usefixtures("one_torch_thread")        # see conftest


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    with Image.open(shared_path("faces", "whole", "cf_02.png")) as im:
        return np.asarray(im.convert("RGB").resize((602, 322), Image.BICUBIC))


def pan(scene: np.ndarray, n: int = N) -> list[np.ndarray]:
    """``n`` frames of W x H sliding 1 px per frame across the two faces."""
    return [np.ascontiguousarray(scene[40:40 + H, 100 + i:100 + i + W]) for i in range(n)]


def make_clip(path: Path, frames: list[np.ndarray], audio: bool = True) -> Path:
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=FPS)
    v.width, v.height, v.pix_fmt = frames[0].shape[1] if frames else W, frames[0].shape[0] if frames else H, "yuv420p"
    if audio:
        a = out.add_stream("aac", rate=RATE)
        a.layout = "mono"
    for i, arr in enumerate(frames):
        f = av.VideoFrame.from_ndarray(arr, format="rgb24")
        f.pts = i
        for p in v.encode(f):
            out.mux(p)
    if audio:
        n = int(RATE * max(len(frames), 1) / FPS)
        s = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / RATE)).astype(np.float32)[None]
        af = av.AudioFrame.from_ndarray(s, format="flt", layout="mono")
        af.sample_rate, af.pts = RATE, 0
        for p in [*a.encode(af), *a.encode(None)]:
            out.mux(p)
    for p in v.encode(None):
        out.mux(p)
    out.close()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, scene: np.ndarray) -> Path:
    return make_clip(tmp_path_factory.mktemp("video") / "clip.mp4", pan(scene))


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory, scene: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("seq") / "shot"
    folder.mkdir()
    for i, arr in enumerate(pan(scene, 8)):
        Image.fromarray(arr).save(folder / f"f{i + 1}.png")           # f1 .. f8: natural order, f10 would sort last
    return folder


def run(models: Path, *args: str) -> int:
    return main(["restore", *args, "--models", str(models), "--detector", "mobile0.25", "--threads", "1"])


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def audio_span(path: Path) -> tuple[float, float]:
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        times = [(float(p.pts * p.time_base), float((p.pts + p.duration) * p.time_base)) for p in c.demux(a) if p.size]
    return min(t for t, _ in times), max(e for _, e in times)


def no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(".vspbfr")]


# -- round trips -----------------------------------------------------------------------------------------------------

def test_video_round_trip_keeps_frames_size_rate_and_audio(tiny_models_dir: Path, clip: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[int, int, str]] = []
    from vspbfr_core.commands import restore as restore_cmd

    original = restore_cmd.FileProgress.draw

    def record(self, done, total, stage):
        drawn.append((done, total, stage))
        original(self, done, total, stage)

    monkeypatch.setattr(restore_cmd.FileProgress, "draw", record)
    report = tmp_path / "report.json"
    assert run(tiny_models_dir, str(clip), "-o", str(tmp_path / "out"), "--report", str(report)) == 0
    out = tmp_path / "out" / "clip.mp4"
    r = media.open_video(out)
    assert (r.width, r.height, r.frame_count, r.fps, r.has_audio) == (W, H, N, FPS, True)
    lo, hi = audio_span(out)
    assert lo < 0.03 and abs(hi - N / float(FPS)) < 0.03
    assert [d for d in drawn if d[2] == "frame"] == [(i, N, "frame") for i in range(1, N + 1)]    # per frame
    got = torch.cat(list(r.frames()))
    src = torch.cat(list(media.open_video(clip).frames()))
    assert (got - src).abs().amax() > 0.1                          # faces were restored
    entry = json.loads(report.read_text())["files"][0]
    assert entry["frames"] == N and entry["face_tracks"] >= 2 and entry["faces_restored"] >= 2 * N
    no_leftovers(tmp_path)


def test_frame_range_cuts_the_video_and_its_audio(tiny_models_dir: Path, clip: Path, tmp_path: Path) -> None:
    assert run(tiny_models_dir, str(clip), "-o", str(tmp_path), "--frames", "4:-3") == 0
    out = tmp_path / "clip.mp4"
    assert media.open_video(out).count_frames() == N - 7
    lo, hi = audio_span(out)
    assert lo < 0.03 and abs(hi - (N - 7) / float(FPS)) < 0.03      # starts with frame 4's audio, at 0


def test_no_temporal_sequence_equals_restoring_the_frames_as_images(tiny_models_dir: Path, frames_dir: Path,
                                                                      tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert run(tiny_models_dir, str(frames_dir), "-o", str(tmp_path / "images"), "--temporal") == 0
    assert "--temporal applies to video files and --sequence folders only" in caplog.text
    assert run(tiny_models_dir, str(frames_dir), "-o", str(tmp_path / "seq"), "--sequence", "--no-temporal") == 0
    images, seq = digests(tmp_path / "images"), digests(tmp_path / "seq" / "shot")
    assert len(seq) == 8 and seq == images                          # byte for byte


def test_temporal_sequence_is_smoothed_and_reproducible_per_seed(tiny_models_dir: Path, frames_dir: Path,
                                                                 tmp_path: Path) -> None:
    for name, extra in (("a", []), ("b", []), ("seed", ["--seed", "5"]), ("off", ["--no-temporal"]),
                        ("raw", ["--smooth-alignment", "0", "--smooth-wplus", "0"])):
        assert run(tiny_models_dir, str(frames_dir), "-o", str(tmp_path / name), "--sequence", *extra) == 0
    a, b, seed, off, raw = (digests(tmp_path / n / "shot") for n in ("a", "b", "seed", "off", "raw"))
    assert a == b and len(a) == 8                                    # same seed: same bytes
    assert all(a[k] != seed[k] for k in a)                           # another seed: other noise
    assert all(a[k] != off[k] for k in a)                            # temporal changes every frame
    assert any(raw[k] != a[k] for k in a)                            # the strengths do something


@pytest.mark.parametrize("extra, restored", [
    (["--max-faces", "1"], 1),      # track 0: a face cut by the left edge, detected in frame 0 only
    (["--select", "2"], N),         # track 2: the right-hand person, in every frame
    (["--select", "1,2"], 2 * N),
])
def test_max_faces_and_select_refer_to_tracks(tiny_models_dir: Path, clip: Path, tmp_path: Path,
                                              extra: list[str], restored: int) -> None:
    report = tmp_path / "r.json"
    assert run(tiny_models_dir, str(clip), "-o", str(tmp_path), *extra, "--report", str(report)) == 0
    entry = json.loads(report.read_text())["files"][0]
    assert entry["face_tracks"] == 3 and entry["faces_restored"] == restored


def test_frames_stream_through_in_windows(tiny_models_dir: Path, scene: np.ndarray, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The first frames are written before the clip has been read: memory does not grow with its length."""
    long_clip = make_clip(tmp_path / "long.mp4", pan(scene, 48) , audio=False)
    read = {"frames": 0}
    first_write: list[int] = []
    frames, write = media.VideoReader.frames, media.VideoWriter.write

    def counting_frames(self, *args, **kwargs):
        for batch in frames(self, *args, **kwargs):
            read["frames"] += batch.shape[0]
            yield batch

    def noting_write(self, batch):
        if not first_write:
            first_write.append(read["frames"])
        write(self, batch)

    monkeypatch.setattr(media.VideoReader, "frames", counting_frames)
    monkeypatch.setattr(media.VideoWriter, "write", noting_write)
    assert run(tiny_models_dir, str(long_clip), "-o", str(tmp_path / "out"), "--smooth-alignment", "1",
               "--smooth-wplus", "1") == 0
    assert first_write and first_write[0] <= 2 * restore_video.WINDOW < 48
    assert media.open_video(tmp_path / "out" / "long.mp4").frame_count == 48


# -- bad input -------------------------------------------------------------------------------------------------------

def test_broken_videos_fail_cleanly_and_the_others_go_on(tiny_models_dir: Path, clip: Path, tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    data = clip.read_bytes()
    (tmp_path / "in").mkdir()
    truncated = tmp_path / "in" / "cut.mp4"
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / "in" / "noise.mkv"
    garbage.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    empty = make_clip(tmp_path / "in" / "empty.mp4", [], audio=True)
    good = tmp_path / "in" / "good.mp4"
    good.write_bytes(data)
    capfd.readouterr()
    code = run(tiny_models_dir, str(truncated), str(garbage), str(empty), str(good), "-o", str(tmp_path / "out"))
    err = capfd.readouterr().err
    assert code == 1
    for bad in (truncated, garbage, empty):
        assert f"{bad}: FAILED" in err
        assert not (tmp_path / "out" / bad.name).exists()
    assert "done: 1/4 files" in err and media.open_video(tmp_path / "out" / "good.mp4").frame_count == N
    no_leftovers(tmp_path / "out")


def test_sequence_frames_of_different_sizes_are_refused_before_loading(frames_dir: Path, tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(frames_dir.iterdir())[:3]:
        (mixed / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (W + 2, H)).save(mixed / "f9.png")
    code = main(["restore", str(mixed), "--sequence", "-o", str(tmp_path / "out"), "--models", str(tmp_path / "none")])
    err = capfd.readouterr().err
    assert code == 1
    assert "f9.png: the frame is 302x200" in err and "same size" in err
    assert "loading the VSPBFR networks" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--compare"], "--compare: not supported for video files"),
    (["--candidates", "2"], "--candidates: not supported with temporal mode"),
    (["--aligned"], "--aligned: not supported for video files"),
])
def test_options_that_cannot_apply_to_videos(clip: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                             extra: list[str], message: str) -> None:
    assert main(["restore", str(clip), "-o", str(tmp_path), "--models", str(tmp_path / "none"), *extra]) == 1
    assert message in capfd.readouterr().err


def test_a_video_output_never_replaces_its_input(clip: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["restore", str(clip), "-o", str(clip.parent), "--models", str(clip.parent / "none")]) == 1
    assert "refusing to overwrite inputs" in capfd.readouterr().err


def test_bad_frame_range_and_sequence_without_a_folder(clip: Path, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["restore", str(clip), "-o", str(tmp_path), "--frames", "a:b"])
    assert exc.value.code == 2 and "START:STOP" in capfd.readouterr().err
    assert main(["restore", str(clip), "-o", str(tmp_path), "--sequence"]) == 1
    assert "--sequence: no folder among the inputs" in capfd.readouterr().err


def test_without_pyav_a_clear_message_before_anything_loads(clip: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def missing():
        raise media.MissingPackageError('video files need the Python package PyAV (av): pip install "vspbfr[video]"')

    monkeypatch.setattr(media, "_import_av", missing)
    assert main(["restore", str(clip), "-o", str(tmp_path / "out"), "--models", str(tmp_path / "none")]) == 1
    err = capfd.readouterr().err
    assert 'pip install "vspbfr[video]"' in err and "loading the VSPBFR networks" not in err


def test_videos_in_a_folder_are_counted_not_restored(tiny_models_dir: Path, clip: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    with Image.open(shared_path("faces", "whole", "cf_02.png")) as im:
        im.convert("RGB").resize((301, 161)).save(folder / "photo.png")
    with caplog.at_level("WARNING"):
        assert run(tiny_models_dir, str(folder), "-o", str(tmp_path / "out")) == 0
    assert "1 video file(s) inside the folder are not restored" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.png"]
    assert run(tiny_models_dir, str(folder / "*.mp4"), "-o", str(tmp_path / "glob")) == 0       # a pattern does
    assert (tmp_path / "glob" / "clip.mp4").is_file()

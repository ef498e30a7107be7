"""`vspbfr batch` with the local engine: outputs equal `vspbfr restore`'s, the manifest, resume, retries, lists and
URIs, bad inputs, a driver killed mid-run.  Tiny networks with the real RetinaFace mobilenet0.25 on small copies of
the real photos; torch on one thread."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, shared_path
from vspbfr_core.cli import main

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from vspbfr_core.batch import files as batch_files  # noqa: E402
from vspbfr_core.batch.manifest import FOLDER, Manifest  # noqa: E402

PHOTOS = ("cf_00.jpg", "cf_02.png", "gfpgan_00.jpg", "skimage_astronaut.png")


pytestmark = pytest.mark.usefixtures("one_torch_thread")        # see conftest


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/ with a sub-folder, 8 small real photos in their own formats."""
    root = tmp_path_factory.mktemp("archive") / "photos"
    for k, name in enumerate(PHOTOS * 2):
        folder = root / ("2019" if k >= len(PHOTOS) else "")
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(shared_path("faces", "whole", name)) as im:
            im = im.convert("RGB")
            im = im.resize((240, round(240 * im.height / im.width)), Image.BICUBIC)
            im.save(folder / name)
    return root


def batch(models: Path, *args: str) -> int:
    return main(["batch", *args, "--models", str(models), "--detector", "mobile0.25", "--threads", "1"])


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and FOLDER not in p.parts}


def last_rows(location: Path) -> dict[str, dict]:
    return Manifest(str(location)).load()


@pytest.fixture(scope="module")
def reference(tiny_models_dir: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("restored")
    assert main(["restore", str(archive), "-o", str(out), "--models", str(tiny_models_dir), "--detector",
                 "mobile0.25", "--threads", "1", "--seed", "3"]) == 0
    return files(out)


@pytest.fixture(scope="module")
def uninterrupted(tiny_models_dir: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch")
    assert batch(tiny_models_dir, str(archive), "-o", str(out), "--seed", "3") == 0
    return out


def stable(rows: dict[str, dict]) -> dict[str, tuple]:
    """The manifest fields that do not depend on timing or on which process did the work."""
    keys = ("output", "options", "status", "input_sha256", "faces", "identity_input", "identity_reference", "error")
    return {k: tuple(str(r[f]) for f in keys) for k, r in rows.items()}


def test_outputs_equal_restore_and_the_manifest_has_a_row_per_input(archive: Path, reference: dict[str, bytes],
                                                                      uninterrupted: Path) -> None:
    tmp_path = uninterrupted
    assert files(tmp_path) == reference and len(reference) == 8          # names, sub-folders, formats, bytes
    rows = Manifest(str(tmp_path / FOLDER)).rows()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    for row in rows:
        src = Path(row["input"])
        assert row["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert Path(row["output"]) == tmp_path / src.relative_to(archive)
        assert row["faces"] >= 1 and row["written"] and row["attempts"] == 1 and row["error"] is None
        assert row["worker"] and row["seconds"] > 0


def test_rerun_skips_what_is_done_and_redoes_what_changed(tiny_models_dir: Path, archive: Path, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    for p in archive.rglob("*.*"):
        (inputs / p.relative_to(archive)).parent.mkdir(parents=True, exist_ok=True)
        (inputs / p.relative_to(archive)).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    assert batch(tiny_models_dir, str(inputs), "-o", str(out)) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if FOLDER not in p.parts}
    capfd.readouterr()
    assert batch(tiny_models_dir, str(inputs), "-o", str(out)) == 0
    assert "done: 8/8 inputs (8 already done)" in capfd.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps                      # nothing rewritten
    with Image.open(inputs / "cf_02.png") as im:                                     # one input changes
        im.transpose(Image.FLIP_LEFT_RIGHT).save(inputs / "cf_02.png")
    assert batch(tiny_models_dir, str(inputs), "-o", str(out)) == 0
    assert "(7 already done)" in capfd.readouterr().err
    changed = [p for p in stamps if p.stat().st_mtime_ns != stamps[p]]
    assert changed == [out / "cf_02.png"]
    assert batch(tiny_models_dir, str(inputs), "-o", str(out), "--seed", "9") == 0    # other options: all redone
    assert "(0 already done)" in capfd.readouterr().err
    rows = last_rows(out / FOLDER)
    assert len(rows) == 8 and len({r["options"] for r in rows.values()}) == 1


def test_bad_files_fail_alone_and_are_not_retried(tiny_models_dir: Path, archive: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.png").write_bytes((archive / "cf_02.png").read_bytes())
    (inputs / "text.png").write_text("not an image")
    data = (archive / "cf_00.jpg").read_bytes()
    (inputs / "cut.jpg").write_bytes(data[:len(data) // 3])
    code = batch(tiny_models_dir, str(inputs), "-o", str(tmp_path / "out"), "--retries", "3")
    err = capfd.readouterr().err
    assert code == 1 and "done: 1/3 inputs" in err and "2 input(s) failed" in err
    rows = last_rows(tmp_path / "out" / FOLDER)
    bad = {Path(k).name: r for k, r in rows.items() if r["status"] == "failed"}
    assert sorted(bad) == ["cut.jpg", "text.png"]
    assert all(r["attempts"] == 1 and r["error"] for r in bad.values())             # a bad file: no retry
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == ["good.png"]


def test_a_failure_that_is_not_the_file_is_retried(tiny_models_dir: Path, archive: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    restore = batch_files.FileRestorer._restore

    def flaky(self, item, row):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return restore(self, item, row)

    monkeypatch.setattr(batch_files.FileRestorer, "_restore", flaky)
    assert batch(tiny_models_dir, str(archive / "cf_02.png"), "-o", str(tmp_path), "--retries", "2") == 0
    row = next(iter(last_rows(tmp_path / FOLDER).values()))
    assert row["status"] == "done" and row["attempts"] == 3
    calls["n"] = 0
    assert batch(tiny_models_dir, str(archive / "cf_00.jpg"), "-o", str(tmp_path / "b"), "--retries", "1") == 1
    row = next(iter(last_rows(tmp_path / "b" / FOLDER).values()))
    assert row["status"] == "failed" and row["attempts"] == 2 and "RuntimeError" in row["error"]


def test_lists_and_uris(tiny_models_dir: Path, archive: Path, reference: dict[str, bytes], tmp_path: Path) -> None:
    names = ["cf_02.png", "2019/gfpgan_00.jpg"]
    (tmp_path / "list.txt").write_text("# two photos\n" + "\n".join(str(archive / n) for n in names) + "\n\n")
    (tmp_path / "list.csv").write_text("id,path\n" + "".join(f"{k},{archive / n}\n" for k, n in enumerate(names)))
    pq.write_table(pa.table({"path": [str(archive / n) for n in names]}), tmp_path / "list.parquet")
    for listing in ("list.txt", "list.csv", "list.parquet"):
        out = tmp_path / listing.replace(".", "_")
        assert batch(tiny_models_dir, str(tmp_path / listing), "-o", str(out), "--seed", "3") == 0
        assert files(out) == {n: reference[n] for n in names}                   # relative to the common folder
    uri_out = tmp_path / "uri_out"
    assert batch(tiny_models_dir, f"file://{archive}", "-o", f"file://{uri_out}", "--seed", "3") == 0
    assert files(uri_out) == reference                                          # through pyarrow's file system
    assert len(last_rows(uri_out / FOLDER)) == 8
    assert not [p for p in uri_out.rglob("*") if p.name.endswith(".part")]


def test_refusals(archive: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    none = str(tmp_path / "none")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.png").write_bytes((archive / "cf_02.png").read_bytes())
    assert main(["batch", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "-o", str(tmp_path / "o"),
                 "--models", none]) == 1
    assert "would both write" in capfd.readouterr().err
    assert main(["batch", str(tmp_path / "a"), "-o", str(tmp_path / "a"), "--models", none]) == 1
    assert "input folder" in capfd.readouterr().err
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert main(["batch", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "o"), "--models", none]) == 1
    assert "the input list is empty" in capfd.readouterr().err
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["batch", str(tmp_path / "a"), "-o", str(tmp_path / "o"), "--engine", "ray", "--models", none]) == 1
    err = capfd.readouterr().err
    assert 'pip install "vspbfr[ray]"' in err and "input(s)" not in err                 # before anything is read


def test_driver_killed_mid_run_then_rerun_equals_an_uninterrupted_run(tiny_models_dir: Path, archive: Path,
                                                                     reference: dict[str, bytes], uninterrupted: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vspbfr_core", "batch", str(archive), "-o", str(out), "--models",
           str(tiny_models_dir), "--detector", "mobile0.25", "--threads", "1", "--seed", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(files(out) if out.exists() else {}) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = files(out)
    assert 3 <= len(written) < 8                                     # killed mid-run
    assert all(reference[k] == v for k, v in written.items())        # no partial output under a final name
    assert batch(tiny_models_dir, str(archive), "-o", str(out), "--seed", "3") == 0
    assert files(out) == reference
    expected = stable(last_rows(uninterrupted / FOLDER))
    got = stable(last_rows(out / FOLDER))
    assert len(got) == 8 and {k: v[1:] for k, v in got.items()} == {k: v[1:] for k, v in expected.items()}
    assert {Path(v[0]).relative_to(out) for v in got.values()} == \
           {Path(v[0]).relative_to(uninterrupted) for v in expected.values()}
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_identity_scores_go_into_the_manifest(tiny_models_dir: Path, archive: Path, tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    flags = ["--candidates", "2", "--identity", "dlib"]
    assert batch(tiny_models_dir, str(archive / "cf_02.png"), "-o", str(tmp_path / "b"), *flags) == 0
    assert main(["restore", str(archive / "cf_02.png"), "-o", str(tmp_path / "r"), "--models", str(tiny_models_dir),
                 "--detector", "mobile0.25", "--threads", "1", *flags]) == 0
    assert (tmp_path / "b" / "cf_02.png").read_bytes() == (tmp_path / "r" / "cf_02.png").read_bytes()
    row = next(iter(last_rows(tmp_path / "b" / FOLDER).values()))
    assert row["faces"] >= 2 and len(row["identity_input"]) == row["faces"]
    assert all(-1 <= v <= 1 for v in row["identity_input"]) and row["identity_reference"] == [None] * row["faces"]

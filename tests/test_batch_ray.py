"""`vspbfr batch --engine ray`: one local Ray cluster (2 CPUs, fractional-CPU actors) for the module, tiny networks,
`--threads 1`; every output must be the bytes `vspbfr restore` writes for the same file and options."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, shared_path
from vspbfr_core.cli import main

ray = pytest.importorskip("ray")

KILL_DIR_ENV = "VSPBFR_TEST_KILL_DIR"
OPTS = ["--detector", "mobile0.25", "--threads", "1"]
RAY_OPTS = ["--engine", "ray", "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "3"]


def _kill_hook() -> None:
    """Runs in every Ray worker process when it starts: when KILL_DIR/target names an input, the first worker that
    restores it (no KILL_DIR/killed yet) records that it did and ends its own process, as a crash would."""
    kill_dir = os.environ.get(KILL_DIR_ENV)
    if not kill_dir:
        return
    if str(ROOT) not in sys.path:                    # the hook runs before Ray gives the worker the driver's path
        sys.path.insert(0, str(ROOT))
    from vspbfr_core.batch import files

    original = files.FileRestorer.__call__

    def call(self, item, attempts=1):
        target = os.path.join(kill_dir, "target")
        marker = os.path.join(kill_dir, "killed")
        if os.path.exists(target) and Path(target).read_text() == item.input and not os.path.exists(marker):
            Path(marker).write_text(f"{os.getpid()}\n")
            os._exit(1)
        return original(self, item, attempts)

    files.FileRestorer.__call__ = call


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray_kill")


@pytest.fixture(scope="module")
def cluster(kill_dir: Path):
    pytest.importorskip("ray.data")
    if ray.is_initialized():
        ray.shutdown()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])    # the hook travels by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {KILL_DIR_ENV: str(kill_dir)}, "worker_process_setup_hook": _kill_hook})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """36 good inputs (the real photos shrunk to 120-230 px wide, JPEG and PNG) and 4 bad ones in one folder."""
    whole = shared_path("faces", "whole")
    folder = tmp_path_factory.mktemp("ray_inputs")
    sources = sorted(p for p in whole.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    good = []
    for i in range(36):
        src = sources[i % len(sources)]
        width = 120 + 5 * i
        with Image.open(src) as im:
            im = im.convert("RGB")
            im = im.resize((width, max(8, round(im.height * width / im.width))), Image.LANCZOS)
            ext = ".jpg" if i % 2 else ".png"
            dst = folder / f"{i:02d}_{src.stem}{ext}"
            im.save(dst, quality=90) if ext == ".jpg" else im.save(dst)
        good.append(dst)
    bad = [folder / "text.png", folder / "truncated.jpg", folder / "noise.jpg", folder / "empty.png"]
    bad[0].write_text("this is not a picture\n")
    data = good[1].read_bytes()
    bad[1].write_bytes(data[: len(data) // 3])
    bad[2].write_bytes(hashlib.sha256(b"x").digest() * 64)
    bad[3].write_bytes(b"")
    return {"good": good, "bad": bad, "folder": [folder]}


@pytest.fixture(scope="module")
def restored(photos: dict[str, list[Path]], tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vspbfr restore` of every good input with the options of the batch runs."""
    out = tmp_path_factory.mktemp("ray_restore")
    args = ["restore", *map(str, photos["good"]), "-o", str(out), "--models", str(tiny_models_dir), *OPTS]
    assert main(args) == 0
    return out


def manifest_rows(out: Path) -> list[dict]:
    from vspbfr_core.batch.manifest import FOLDER, Manifest

    return Manifest(str(out / FOLDER)).rows()


def test_importing_batch_does_not_import_ray() -> None:
    code = ("import sys, vspbfr_core.batch as b; b.run_ray; "
            "assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_without_ray_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from vspbfr_core.batch.ray_engine import run_ray
    from vspbfr_core.errors import MissingPackageError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingPackageError, match=r'pip install "vspbfr\[ray\]"'):
        run_ray(None, [])


def test_threads_zero_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from vspbfr_core.batch import ray_engine
    from vspbfr_core.batch.files import BatchConfig

    monkeypatch.setattr(ray_engine, "_warned_threads", False)
    with caplog.at_level(logging.WARNING, logger=ray_engine.__name__):
        list(ray_engine.run_ray(BatchConfig(options=None, models_dir="m", threads=1), []))
        assert not caplog.records
        for _ in range(2):
            list(ray_engine.run_ray(BatchConfig(options=None, models_dir="m", threads=0), []))
    warnings = [r for r in caplog.records if "--threads" in r.getMessage()]
    assert len(warnings) == 1 and "byte-identical" in warnings[0].getMessage()


def test_rows_keep_lists_and_none_through_ray(cluster) -> None:
    """Result rows as the actors return them, across Ray blocks: empty and None-holding identity lists, None
    errors and hashes come back as they went in."""
    from dataclasses import asdict

    from vspbfr_core.batch.files import ItemResult
    from vspbfr_core.batch.ray_engine import result_from_row, rows_table

    a = [ItemResult("a.png", "o/a.png", "k", status="done", input_sha256="ab" * 32, faces=2,
                    identity_input=[0.5, None], identity_reference=[None, 0.25], seconds=1.5, worker="w:1",
                    attempts=1, written=True),
         ItemResult("b.png", "o/b.png", "k", status="failed", error="not an image", attempts=3, retry=True)]
    b = [ItemResult("c.png", "o/c.png", "k", status="done", input_sha256=None, faces=0)]
    ds = cluster.data.from_arrow([rows_table(a), rows_table(b)])
    back = [result_from_row(r) for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow")
            for r in batch.to_pylist()]
    assert sorted(map(asdict, back), key=lambda r: r["input"]) == [asdict(r) for r in a + b]


def test_retries_inside_the_actor(cluster, photos, tiny_models_dir: Path, tmp_path: Path) -> None:
    """An output that cannot be written (not a bad input) is tried 1 + retries times; a bad input once."""
    from vspbfr_core.batch.files import BatchConfig, BatchItem
    from vspbfr_core.batch.ray_engine import run_ray
    from vspbfr_core.pipeline import RestoreOptions

    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    items = [BatchItem(str(photos["good"][0]), str(blocker / "x.png"), "x.png"),
             BatchItem(str(photos["bad"][0]), str(tmp_path / "bad.png"), "bad.png"),
             BatchItem(str(photos["good"][1]), str(tmp_path / "ok.jpg"), "ok.jpg")]
    config = BatchConfig(options=RestoreOptions(), models_dir=str(tiny_models_dir), detector="mobile0.25",
                         device="cpu", threads=1)
    rows = {r.input: r for r in run_ray(config, items, retries=2, workers=1, cpus_per_worker=0.5, batch_size=2)}
    assert cluster.is_initialized()                                 # not ours to shut down
    assert set(rows) == {i.input for i in items}
    unwritable, bad, ok = (rows[i.input] for i in items)
    assert (unwritable.status, unwritable.attempts, unwritable.retry) == ("failed", 3, True) and unwritable.error
    assert (bad.status, bad.attempts, bad.retry) == ("failed", 1, False) and bad.error
    assert (ok.status, ok.attempts, ok.written) == ("done", 1, True) and (tmp_path / "ok.jpg").is_file()


def test_archive_with_bad_files(cluster, photos, restored: Path, tiny_models_dir: Path, tmp_path: Path,
                                capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["batch", str(photos["folder"][0]), "-o", str(out), "--models", str(tiny_models_dir),
                 *RAY_OPTS, *OPTS])
    err = capfd.readouterr().err
    assert code == 1, err
    assert "40 input(s)" in err and "4 failed" in err
    rows = manifest_rows(out)
    by_input = {r["input"]: r for r in rows}
    assert len(rows) == len(by_input) == 40                          # each input exactly once
    for p in photos["good"]:
        row = by_input[str(p)]
        assert row["status"] == "done" and row["error"] is None and row["written"], row
        assert row["input_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert (out / p.name).read_bytes() == (restored / p.name).read_bytes(), p.name
    for p in photos["bad"]:
        row = by_input[str(p)]
        assert row["status"] == "failed" and row["error"] and row["attempts"] == 1, row
        assert not (out / p.name).exists()
    assert sum(r["faces"] for r in rows) > 0


@pytest.fixture(scope="module")
def killed_run(cluster, photos, restored: Path, tiny_models_dir: Path, kill_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], int]:
    """A run of 12 good inputs in which the worker restoring the 5th ends its process the first time."""
    good = photos["good"][:12]
    out = tmp_path_factory.mktemp("ray_killed") / "out"
    (kill_dir / "target").write_text(str(good[4]))
    try:
        code = main(["batch", *map(str, good), "-o", str(out), "--models", str(tiny_models_dir), *RAY_OPTS, *OPTS])
    finally:
        (kill_dir / "target").unlink()
    return out, good, code


def test_a_killed_worker_loses_nothing(killed_run, restored: Path, kill_dir: Path) -> None:
    out, good, code = killed_run
    assert (kill_dir / "killed").is_file()                          # the worker did die
    assert code == 0
    rows = manifest_rows(out)
    assert sorted(r["input"] for r in rows) == sorted(map(str, good))
    assert all(r["status"] == "done" for r in rows)
    for p in good:
        assert (out / p.name).read_bytes() == (restored / p.name).read_bytes(), p.name


def test_rerun_skips_everything(killed_run, tiny_models_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out, good, _ = killed_run
    before = {p.name: os.stat(out / p.name).st_mtime_ns for p in good}
    rows_before = manifest_rows(out)
    capfd.readouterr()
    code = main(["batch", *map(str, good), "-o", str(out), "--models", str(tiny_models_dir), *RAY_OPTS, *OPTS])
    err = capfd.readouterr().err
    assert code == 0, err
    assert f"({len(good)} already done)" in err and f"{len(good)} done before" in err
    assert {p.name: os.stat(out / p.name).st_mtime_ns for p in good} == before
    assert manifest_rows(out) == rows_before                        # skipped inputs add no rows


def test_a_worker_that_cannot_load_its_pipeline_is_a_clear_error(cluster, photos, tmp_path: Path) -> None:
    """A models folder without the networks: the job stops with the loader's message, not a hang or a bare Ray
    error."""
    import shutil

    from vspbfr_core.batch.files import BatchConfig, BatchItem
    from vspbfr_core.batch.ray_engine import run_ray
    from vspbfr_core.errors import VSPBFRError
    from vspbfr_core.pipeline import RestoreOptions

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(shared_path("weights", "detection_mobilenet0.25_Final.pth"), models)
    config = BatchConfig(options=RestoreOptions(), models_dir=str(models), detector="mobile0.25", threads=1)
    items = [BatchItem(str(photos["good"][0]), str(tmp_path / "out.png"), "out.png")]
    with pytest.raises(VSPBFRError, match=r"could not start.*model file not found"):
        list(run_ray(config, items, workers=1, cpus_per_worker=0.5))
    assert cluster.is_initialized() and not (tmp_path / "out.png").exists()


def test_the_driver_killed_mid_run_then_rerun_equals_an_uninterrupted_run(cluster, photos, restored: Path,
                                                                          tiny_models_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A `vspbfr batch --engine ray` driver on this cluster is killed with SIGKILL mid-run; the command run again
    completes the archive: the outputs are restore's, and each input has one `done` row with its sha256."""
    import signal
    import time

    good = photos["good"][:12]
    out = tmp_path / "out"
    gcs = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "vspbfr_core", "batch", *map(str, good), "-o", str(out), "--models",
           str(tiny_models_dir), *RAY_OPTS, *OPTS, "--address", gcs]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 180
    done = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in out.glob("*.*") if not p.name.endswith(".part")] if out.exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len([p for p in out.glob("*.*") if not p.name.endswith(".part")]) < len(good)
    code = main(["batch", *map(str, good), "-o", str(out), "--models", str(tiny_models_dir), *RAY_OPTS, *OPTS])
    assert code == 0
    for src in good:
        assert (out / src.name).read_bytes() == (restored / src.name).read_bytes()
    from vspbfr_core.batch.manifest import FOLDER, Manifest

    last = Manifest(str(out / FOLDER)).load()
    assert sorted(last) == sorted(map(str, good))
    for src in good:
        row = last[str(src)]
        assert row["status"] == "done" and row["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]

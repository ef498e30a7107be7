"""benchmarks/profile_stages.py (issue 17's per-stage profile) on the CPU with the tiny networks, and the GPU script.

The CUDA half of the profile reading (kernels linked to a stage's operators, the GPU-side range annotation left
out, the time-window fallback) is checked on hand-built profiler events, since no GPU is needed for that.
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import profile_stages as ps  # noqa: E402

SUMMED = ("wall_s", "wall_profiled_s", "range_s", "device_s", "kernels", "ops", "gflop")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict:
    out = tmp_path_factory.mktemp("prof")
    t0 = time.perf_counter()
    rc = ps.main(["--device", "cpu", "--weights", "tiny", "--weights-dir", str(out / "w"), "--faces", "1", "2",
                  "--dtypes", "float32", "--repeats", "1", "--json", str(out / "prof.json"),
                  "--trace", str(out / "traces")])
    elapsed = time.perf_counter() - t0
    assert rc == 0
    data = json.loads((out / "prof.json").read_text())
    data["_elapsed"] = elapsed
    data["_dir"] = str(out)
    return data


def test_cpu_tiny_profile_has_every_stage_with_consistent_numbers(tiny_run: dict) -> None:
    assert tiny_run["_elapsed"] < 30
    assert tiny_run["failed"] == []
    results = tiny_run["results"]
    assert [(r["device"], r["dtype"], r["faces"]) for r in results] == [("cpu", "float32", 1), ("cpu", "float32", 2)]
    for r in results:
        assert r["resolution"] == 16 and r["device_time"] == "CPU operator time"
        assert set(r["stages"]) == set(ps.STAGES)
        for s, st in r["stages"].items():
            assert st["profiled_runs"] == 1
            assert st["wall_s"] > 0 and st["range_s"] > 0 and st["device_s"] > 0, s
            # operator time is part of the stage's profiled range
            assert st["device_s"] <= st["range_s"] * 1.001, s
            assert st["kernels"] > 0 and st["ops"] >= st["kernels"], s
            assert 0.0 <= st["launch_share"] <= 1.0 and 0.0 <= st["launch_share_profiled"] <= 1.0
            assert st["launch_share"] == pytest.approx(1 - st["device_s"] / st["range_s"], abs=1e-9)
            assert 1 <= len(st["top"]) <= ps.TOP_N
            times = [t["time_s"] for t in st["top"]]
            assert times == sorted(times, reverse=True) and times[0] > 0
            assert sum(times) <= st["device_s"] * 1.001
            assert st["gflop"] > 0
        for k in SUMMED:
            assert r["total"][k] == pytest.approx(sum(r["stages"][s][k] for s in ps.STAGES)), k
        assert 0.0 <= r["total"]["launch_share"] <= 1.0
    one, two = results
    # the encoder's convolutions do twice the work for two faces; the operator count of a stage does not depend on
    # the crops' values, and the CPU bank / restoration run face by face (twice the calls)
    assert two["stages"]["encode"]["gflop"] == pytest.approx(2 * one["stages"]["encode"]["gflop"], rel=1e-6)
    assert two["stages"]["restore"]["kernels"] > one["stages"]["restore"]["kernels"]
    md = tiny_run["markdown"]
    assert md.count("| total |") == 2 and "encoder (e4e)" in md and "restoration" in md


def test_traces_written_per_configuration(tiny_run: dict) -> None:
    traces = sorted(Path(tiny_run["_dir"], "traces").glob("*"))
    assert [t.name for t in traces] == ["trace_cpu_float32_1faces.json.gz", "trace_cpu_float32_2faces.json.gz"]
    trace = json.loads(gzip.decompress(traces[0].read_bytes()))
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"vspbfr/" + s for s in ps.STAGES} <= names


def _fake_cuda_profile(link_kernels: bool) -> list:
    """Per stage: the CPU range, one op that launched a 30 us kernel (and, as newer torch does, the GPU-side
    annotation of the range, 90 us, linked to it), the device events; one stray kernel after the range."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEvent

    events = []
    for k, s in enumerate(ps.STAGES):
        base = 1000.0 * k
        events.append(FunctionEvent(id=10 + k, name="vspbfr/" + s, thread=1, start_us=base, end_us=base + 100,
                                    use_device="cuda"))
        op = FunctionEvent(id=20 + k, name="aten::conv2d", thread=1, start_us=base + 10, end_us=base + 40,
                           use_device="cuda")
        launch = FunctionEvent(id=30 + k, name="cudaLaunchKernel", thread=1, start_us=base + 12, end_us=base + 14,
                               use_device="cuda")
        if link_kernels:
            op.append_kernel("conv_kernel", 0, 30.0)
            op.append_kernel("mul_kernel", 0, 10.0)
            op.append_kernel("vspbfr/" + s, 0, 90.0)
        events += [op, launch]
        for name, a, b in (("conv_kernel", 20, 50), ("mul_kernel", 45, 55), ("vspbfr/" + s, 5, 95),
                           ("stray_kernel", 150, 160)):
            events.append(FunctionEvent(id=40 + k, name=name, thread=7, start_us=base + a, end_us=base + b,
                                        device_type=DeviceType.CUDA, use_device="cuda"))
    el = EventList(events, use_device="cuda")
    el._build_tree()
    return el


@pytest.mark.parametrize("linked", [True, False])
def test_cuda_reading_counts_the_stage_kernels_only(linked: bool) -> None:
    out = ps.analyse(_fake_cuda_profile(linked), torch.device("cuda"))
    assert set(out) == set(ps.STAGES)
    for st in out.values():
        # 30 + 10 us of kernels (linked, or by the window fallback); the annotation and the stray kernel left out
        assert st["device_s"] == pytest.approx(40e-6)
        assert st["kernels"] == 2
        assert st["ops"] == 1                      # aten::conv2d, not the runtime call
        assert st["device_window_s"] == pytest.approx(40e-6)
        assert st["device_busy_s"] == pytest.approx(35e-6)    # the two kernels overlap by 5 us
        assert st["range_s"] == pytest.approx(100e-6)
        assert [t["name"] for t in st["top"]] == ["conv_kernel", "mul_kernel"]


def test_missing_stage_range_is_an_error() -> None:
    from torch.autograd.profiler_util import EventList
    with pytest.raises(RuntimeError, match="vspbfr/encode"):
        ps.analyse(EventList([]), torch.device("cpu"))


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        ps.parse_args(["--device", "cpu", "--dtypes", "float16"])
    with pytest.raises(SystemExit):
        ps.parse_args(["--faces", "0"])
    with pytest.raises(FileNotFoundError, match="restoration_net.pt"):
        ps.prepare_weights(str(tmp_path), None, tmp_path / "m.json", tmp_path)


def test_noise_crops_when_no_images(tmp_path: Path) -> None:
    faces, source = ps.make_crops(3, 16, str(tmp_path / "none"))
    assert faces.shape == (3, 3, 16, 16) and "noise" in source
    assert faces.min() >= -1 and faces.max() <= 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_script_parses() -> None:
    script = BENCH / "gpu_issue17.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "profile_stages.py" in text and "gpu_checks.sh" in text and "timeout" in text

"""VSPBFR (this repository) against the official VSPBFR code: same weights, same input, same noise.

Usage:
    python benchmarks/bench_official.py [--official-repo /tmp/vspbfr_official] [--batch 1 4 [16]]
        [--repeats 3] [--warmup 1] [--threads N] [--input DIR|FILE|case_a] [--json OUT.json]
        [--official-upfirdn native|depthwise] [--count-flops] [--devices cpu cuda] [--dtypes ...] [--compile]

Ours alone (no ``--official-repo``), on every device and precision, 1, 4 and 16 faces::

    python benchmarks/bench_official.py --devices cpu cuda --batch 1 4 16

What one run does:

1. Regenerates the full-size weights from ``../shared/parity/manifest.json``
   (``vspbfr_core.parity.write_official_checkpoints``: the three official-layout ``.pt`` files, in a
   temporary folder unless ``--weights-dir`` names one to keep and reuse).  Ours is loaded from those
   files by ``vspbfr_core.checkpoints.load_checkpoint`` (the user's load path) into
   ``VSPBFRModel``.  With ``--official-repo PATH`` (an extracted checkout of LonglongaaaGo/VSPBFR,
   kept outside this repository; nothing of it is committed here) the official models are built from
   the same files exactly as ``restoration_test.py`` builds them (see ``official_shim.py``: our own
   pure-PyTorch stand-ins for the official CUDA ops are put into ``sys.modules`` first; its files are
   not patched; the checkout goes first on ``sys.path`` in the official worker process only).
   ``--official-upfirdn native`` (default) computes the official ``upfirdn2d`` the way the official
   code's own CPU branch does (every channel as a one-channel image); this is slow and memory-hungry
   (on a 2-core EPYC: feature bank 5.5 s instead of 2.6 s, 2.6 GiB instead of 1.0 GiB per face at
   batch 1).  ``--official-upfirdn depthwise`` runs the official networks with an equivalent grouped
   convolution instead: a stronger baseline than the official code itself; report both.
2. Feeds both the same aligned 512 faces (``../shared/faces/cropped``, cycled to fill the batch)
   and the same noise: ours gets a ``RestoreNoise`` drawn by ``VSPBFRModel.draw_noise`` (style mixing
   on, as in the parity case_a, unless ``--mixing off``); the official forward (the body of
   ``tester_restore_ddpm``) gets the identical tensors through ``official_shim.NoiseTape``, which
   replaces ``torch.randn`` / ``Tensor.normal_`` / ``random.random`` / ``random.randint`` during the
   forward and makes any other draw raise.  The restored faces must agree (max abs difference at most
   ``--tol``, default 5e-3; the parity README measured 3.2e-4 between official fp32 and fp64); the
   script prints the differences of W+, the diffused W+ and the feature bank too, and exits 1 on
   a disagreement.
3. Times every stage (encoder, DDPM, feature bank, restoration; total = median of the per-run sums)
   as the median of ``--repeats`` runs after ``--warmup`` runs.  Ours and the official code run in
   two separate processes that take turns, run by run (interleaved), so that a change in the load of
   this shared machine hits both alike; for each run the CPU time used by *other* processes during
   the run is measured from ``/proc/stat`` and reported ("other load", in cores).
4. Peak memory: every (implementation, batch) is measured in its own fresh process.  After the
   models are loaded and the inputs prepared, every page of every parameter and buffer is read (ours
   memory-maps the checkpoint files, so untouched weights would otherwise become resident during the
   first forward and be counted as activations), then the process's resident set size is read: the
   *post-load baseline*.  Before every stage of every run the kernel's peak-RSS counter is reset to
   the current RSS (``echo 5 > /proc/self/clear_refs``) and after the stage ``VmHWM`` is read, outside
   the timed region: exact peaks (no sampling) per stage, whose maximum is the peak of the runs.
   The previous run's outputs are released before a run starts.  Reported: the peak above the
   baseline (per face: divided by the batch; it includes activations, convolution workspaces and
   what the allocator keeps cached), per stage, and the total peak RSS of the process; the baseline
   and the peak while loading (before the first reset) separately.  A parent thread watches
   ``MemAvailable``; a worker
   that would exhaust the machine's memory (less than ``--mem-reserve-gib`` left) is killed and
   reported as OOM, as is one the kernel kills.  On CUDA: ``max_memory_allocated`` above the
   allocated memory after loading.
5. For ours: latency per stage and per face, faces per second, achieved GFLOP/s (FLOPs per face from
   docs/vspbfr-architecture.md §10: e4e 144.96, DDPM 1.82, feature bank 100.84 for the truncated
   bank ours computes (the official renders the full 1024 decoder: 150.77), restoration 410.28;
   ``--count-flops`` counts them with ``torch.utils.flop_counter.FlopCounterMode`` instead) and the
   fraction of the machine's peak, measured in the same run as the best of several
   4096x4096 @ 4096x4096 float32 matmuls (before and after the benchmark; the larger is used).
   With a GPU and ``--devices cuda``, ours runs in float32, float16 and bfloat16 and the official
   code in float32.
6. Prints Markdown tables (paste into the README) and writes everything to ``--json``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

STAGES = ("encode", "diffuse", "feature_bank", "restore")
STAGE_NAMES = {"encode": "encoder (e4e)", "diffuse": "DDPM (4 steps)", "feature_bank": "feature bank (StyleGAN2)",
               "restore": "restoration"}
# GFLOP per face, docs/vspbfr-architecture.md §10 (FlopCounterMode on the official classes)
GFLOP_OURS = {"encode": 144.96, "diffuse": 1.82, "feature_bank": 100.84, "restore": 410.28}
GFLOP_OFFICIAL = {"encode": 144.96, "diffuse": 1.82, "feature_bank": 150.77, "restore": 410.28}
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 2 ** 20

#----------------------------------------------------------------------------
# /proc helpers


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def cpu_busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)      # all but idle and iowait


def proc_cpu_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])               # utime + stime (all threads)
    except (OSError, IndexError):
        return 0


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

#----------------------------------------------------------------------------
# Inputs


def load_face(path: Path, size: int = 512) -> torch.Tensor:
    """``[1, 3, size, size]`` in [-1, 1], float32: the official test preprocessing (§1.1)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            ratio = max(size / h, size / w)
            im = im.resize((int(ratio * w), int(ratio * h)), Image.LANCZOS)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8).copy()
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)
    return ((x - 0.5) / 0.5)[None]


def input_files(spec: str) -> list[Path]:
    if spec == "case_a":
        return [ROOT.parent / "shared" / "parity" / "case_a" / "input.png"]
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise FileNotFoundError(f"no images in {p}")
        return files
    if p.is_file():
        return [p]
    raise FileNotFoundError(f"--input {spec}: no such file or folder")

#----------------------------------------------------------------------------
# Worker process: one implementation, one device/dtype, one batch size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StageClock:
    """Times the stages of one run and records each stage's peak memory.

    CPU: the kernel's peak-RSS counter is reset to the current RSS before every stage and read after
    it (outside the timed region), so the per-stage peaks are exact and their maximum is the run's
    peak.  CUDA: ``max_memory_allocated`` reset per stage.
    """

    def __init__(self, device: torch.device, peaks: dict[str, int], start: dict[str, int]):
        self.device, self.times, self.peaks, self.start = device, {}, peaks, start

    def __call__(self, name: str, fn: Any) -> Any:
        dev = self.device
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = proc_status()["VmRSS"]
            reset_peak_rss()
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        self.times[name] = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else proc_status()["VmHWM"]
        if peak > self.peaks.get(name, -1):
            self.peaks[name], self.start[name] = peak, before
        return out

    def result(self) -> dict[str, float]:
        return dict(self.times, total=sum(self.times[s] for s in STAGES))


def touch(tensors: Any) -> None:
    """Read every page of ``tensors`` (memory-mapped weights become resident before the baseline)."""
    with torch.inference_mode():
        for t in tensors:
            if t.device.type == "cpu" and t.numel():
                t.detach().reshape(-1)[:: max(1, 4096 // t.element_size())].sum()


class OursRunner:
    def __init__(self, spec: dict[str, Any]):
        from vspbfr_core.checkpoints import load_checkpoint
        from vspbfr_core.model import VSPBFRModel
        from vspbfr_core.pipeline import VSPBFRPipeline

        wd = Path(spec["weights_dir"])
        loaded = {k: load_checkpoint(wd / f"{k}.pt", expect=k)  # type: ignore[arg-type]
                  for k in ("style_encoder_decoder", "code_diffuser", "restoration_net")}
        model = VSPBFRModel(loaded["style_encoder_decoder"].networks["style_encoder"],
                            loaded["style_encoder_decoder"].networks["stylegan"],
                            loaded["code_diffuser"].networks["code_diffuser"],
                            loaded["restoration_net"].networks["restoration_net"])
        del loaded
        self.device, self.dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
        # the pipeline's placement: half precision never rounds the W+ diffuser or the mapping MLP
        pipe = VSPBFRPipeline(model, None, allow_tf32=bool(spec.get("tf32")))
        self.model = pipe.to(self.device, self.dtype).model.eval()
        if spec.get("compile"):
            self.model.compile_networks()     # compiled during the warm-up run(s)

    def make_noise(self, batch: int, seed: int, mixing: bool) -> dict[str, Any]:
        from vspbfr_core.rng import make_generator
        g = make_generator(seed)
        n = self.model.draw_noise(batch, g, mixing_probability=1.0 if mixing else 0.0, style_sample=True)
        unused = [torch.randn(n.x_T.shape, generator=g) for _ in range(4)]     # the official discarded draws
        return {"noise": n, "unused": unused}

    def prepare(self, faces: torch.Tensor, noise: dict[str, Any]) -> None:
        self.faces = faces.to(self.device, self.dtype)
        self.noise = noise["noise"].to(self.device, self.dtype)

    def tensors(self) -> list[torch.Tensor]:
        return list(self.model.parameters()) + list(self.model.buffers())

    def run(self, clock: StageClock) -> dict[str, float]:
        m, n = self.model, self.noise
        self.last = None                              # the previous run's outputs do not count against this one
        with torch.inference_mode():
            ws = clock("encode", lambda: m.encode(self.faces))
            prompts = clock("diffuse", lambda: m.diffuse(ws, n.x_T))
            bank = clock("feature_bank", lambda: m.feature_bank(prompts, n.stylegan)[0])
            out = clock("restore", lambda: m.restore(self.faces, bank, prompts, n))
        self.last = {"w_plus": ws, "prompts": prompts, "bank": bank, "restored": out}
        return clock.result()

    def count_flops(self) -> dict[str, float]:
        from torch.utils.flop_counter import FlopCounterMode
        m, n = self.model, self.noise
        out = {}
        with torch.inference_mode():
            fc = FlopCounterMode(display=False)
            with fc:
                prev = 0
                ws = m.encode(self.faces)
                out["encode"], prev = fc.get_total_flops() - prev, fc.get_total_flops()
                prompts = m.diffuse(ws, n.x_T)
                out["diffuse"], prev = fc.get_total_flops() - prev, fc.get_total_flops()
                bank, _ = m.feature_bank(prompts, n.stylegan)
                out["feature_bank"], prev = fc.get_total_flops() - prev, fc.get_total_flops()
                m.restore(self.faces, bank, prompts, n)
                out["restore"] = fc.get_total_flops() - prev
        return out


class OfficialRunner:
    def __init__(self, spec: dict[str, Any]):
        import official_shim
        self.shim = official_shim
        self.device, self.dtype = torch.device(spec["device"]), torch.float32      # the official code is fp32 only
        self.off = official_shim.build_official(spec["official_repo"], spec["weights_dir"], str(self.device),
                                                spec["official_upfirdn"])

    def prepare(self, faces: torch.Tensor, noise: dict[str, Any]) -> None:
        n = noise["noise"]
        self.faces = faces.to(self.device, torch.float32)
        inject = None if n.inject_index is None else int(n.inject_index[0])
        if n.inject_index is not None and not bool((n.inject_index == inject).all()):
            raise ValueError("the official code uses one inject index per batch")
        f32 = lambda t: t.to(torch.float32)  # noqa: E731
        self.tape = self.shim.official_tape(f32(n.z1), None if n.z2 is None else f32(n.z2), inject, f32(n.x_T),
                                            [f32(t) for t in n.stylegan + n.stylegan_extra],
                                            [f32(t) for t in n.encoder], [f32(t) for t in n.decoder],
                                            [f32(t) for t in noise["unused"]])

    def tensors(self) -> list[torch.Tensor]:
        return [t for mod in (self.off.psp_embedding, self.off.diffusion, self.off.g_ema)
                for t in list(mod.parameters()) + list(mod.buffers())]

    def run(self, clock: StageClock) -> dict[str, float]:
        off, dev, lq = self.off, self.device, self.faces
        self.last = None
        with torch.no_grad(), self.shim.NoiseTape(self.tape):
            # the body of tester_restore_ddpm (mixing_noise only serves two taped draws: counted with the encoder)
            noise, low_latent = clock("encode", lambda: (off.mixing_noise(lq.shape[0], 512, 0.5, dev),
                                                         off.psp_embedding.get_w_plus(lq)))
            pre = clock("diffuse", lambda: off.diffusion(x=low_latent, condi_in=low_latent, training=False))
            style_sample, feats = clock("feature_bank", lambda: off.psp_embedding.get_stylegan_feats(pre))
            restored = clock("restore", lambda: off.g_ema(lq, feats, pre, noise))
        self.last = {"w_plus": low_latent, "prompts": pre, "bank": feats, "restored": restored}
        return clock.result()

    def count_flops(self) -> dict[str, float]:
        from torch.utils.flop_counter import FlopCounterMode
        off, lq = self.off, self.faces
        out = {}
        with torch.no_grad(), self.shim.NoiseTape(self.tape):
            fc = FlopCounterMode(display=False)
            with fc:
                noise = off.mixing_noise(lq.shape[0], 512, 0.5, self.device)
                w = off.psp_embedding.get_w_plus(lq)
                out["encode"], prev = fc.get_total_flops(), fc.get_total_flops()
                pre = off.diffusion(x=w, condi_in=w, training=False)
                out["diffuse"], prev = fc.get_total_flops() - prev, fc.get_total_flops()
                _, feats = off.psp_embedding.get_stylegan_feats(pre)
                out["feature_bank"], prev = fc.get_total_flops() - prev, fc.get_total_flops()
                off.g_ema(lq, feats, pre, noise)
                out["restore"] = fc.get_total_flops() - prev
        return out


def _summaries(last: dict[str, Any], n_bank: int) -> dict[str, torch.Tensor]:
    import torch.nn.functional as F
    out = {k: last[k].float().cpu().contiguous() for k in ("restored", "w_plus", "prompts")}
    for k, f in enumerate(last["bank"][:n_bank]):
        f = f.float()
        out[f"bank{k}.pool16"] = (F.adaptive_avg_pool2d(f, 16) if f.shape[-1] > 16 else f).cpu().contiguous()
    return out


def worker_main(spec: dict[str, Any]) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                    # everything printed (the official code prints a lot) goes to the log
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        t0 = time.perf_counter()
        runner: Any = OursRunner(spec) if spec["impl"] == "ours" else OfficialRunner(spec)
        load_s = time.perf_counter() - t0
        batch = int(spec["batch"])
        noise_path = Path(spec["noise_path"])
        if spec["impl"] == "ours" and not noise_path.exists():
            files = input_files(spec["input"])
            faces = torch.cat([load_face(files[i % len(files)]) for i in range(batch)])
            noise = runner.make_noise(batch, int(spec["seed"]), bool(spec["mixing"]))
            torch.save({"faces": faces, "files": [str(files[i % len(files)]) for i in range(batch)], **noise},
                       noise_path)
        data = torch.load(noise_path, weights_only=False)
        runner.prepare(data["faces"], data)
        del data
        touch(runner.tensors())      # weights resident (ours memory-maps the checkpoint files) before the baseline
        gc.collect()
        dev = runner.device
        st = proc_status()
        load_hwm, baseline = st["VmHWM"], st["VmRSS"]
        reset_ok = reset_peak_rss()
        if not reset_ok:
            print("warning: cannot reset the peak RSS (/proc/self/clear_refs); peaks include loading", file=sys.stderr)
        cuda_base = 0
        if dev.type == "cuda":
            torch.cuda.synchronize()
            cuda_base = torch.cuda.memory_allocated()
        peaks: dict[str, int] = {}
        starts: dict[str, int] = {}
        send({"ready": True, "load_s": load_s, "baseline_rss": baseline, "load_hwm": load_hwm, "reset_ok": reset_ok,
              "threads": torch.get_num_threads(), "stubbed": getattr(getattr(runner, "off", None), "stubbed", []),
              "pid": os.getpid()})
        for line in sys.stdin:
            cmd = json.loads(line)
            c = cmd["cmd"]
            if c == "run":
                send({"times": runner.run(StageClock(dev, peaks, starts))})
            elif c == "mem":
                res = {"stage_peak": peaks, "stage_start": starts, "baseline_rss": baseline, "load_hwm": load_hwm,
                       "rss": proc_status()["VmRSS"], "kind": "cuda" if dev.type == "cuda" else "rss"}
                if dev.type == "cuda":
                    res["baseline"] = cuda_base
                send(res)
            elif c == "save":
                from safetensors.torch import save_file
                save_file(_summaries(runner.last, int(cmd["n_bank"])), cmd["path"])
                send({"saved": cmd["path"]})
            elif c == "flops":
                send({"flops": runner.count_flops()})
            elif c == "quit":
                send({"bye": True})
                return 0
            else:
                send({"error": f"unknown command {c}"})
    except BaseException as exc:                   # noqa: BLE001 - reported to the parent, then re-raised
        import traceback
        traceback.print_exc()
        with contextlib.suppress(Exception):
            send({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0

#----------------------------------------------------------------------------
# Parent side


class WorkerDied(RuntimeError):
    pass


class Worker:
    """A worker process spoken to with JSON lines; watched for memory exhaustion."""

    def __init__(self, spec: dict[str, Any], log_path: Path, reserve: int):
        self.spec, self.log_path, self.reserve = spec, log_path, reserve
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=str(ROOT))
        self.killed_for_memory = False
        self.active = True          # loading or executing a command (an idle worker allocates nothing)
        self.max_rss = 0
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            try:
                self.max_rss = max(self.max_rss, proc_status(self.proc.pid)["VmRSS"])
            except (OSError, KeyError):
                pass
            if self.active and mem_available() < self.reserve:
                self.killed_for_memory = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise WorkerDied(self.death())
        self.active = True
        try:
            if cmd:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait()
            raise WorkerDied(self.death())
        self.active = False
        msg = json.loads(line)
        if "error" in msg:
            self.close()
            raise WorkerDied(f"error: {msg['error']} (log: {self.log_path})")
        return msg

    def death(self) -> str:
        rc = self.proc.wait()
        if self.killed_for_memory:
            return (f"OOM: killed by the benchmark when free memory fell below {self.reserve / 2**30:.1f} GiB "
                    f"(worker RSS {self.max_rss / 2**30:.1f} GiB)")
        if rc == -signal.SIGKILL:
            return f"OOM: killed by SIGKILL (kernel OOM killer?) at RSS {self.max_rss / 2**30:.1f} GiB"
        return f"exited with status {rc}; log {self.log_path}:\n" + tail(self.log_path)

    def close(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def peak_matmul(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an ``n x n @ n x n`` matmul: best and median of ``repeats`` after a warm-up."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
    flop = 2.0 * n ** 3
    return {"n": n, "best_gflops": flop / min(times) / 1e9, "median_gflops": flop / statistics.median(times) / 1e9,
            "runs": len(times), "loadavg": loadavg()}


MATMUL_SAMPLES: list[dict[str, Any]] = []


def sample_peak(device: torch.device, repeats: int = 2) -> None:
    """A few more 4096³ matmuls (between rounds of runs, while the workers are idle): the machine's load
    changes, and the best of all samples is the peak used."""
    if device.type == "cpu":
        MATMUL_SAMPLES.append(peak_matmul(device, torch.float32, repeats=repeats))


def timed_run(w: Worker) -> dict[str, Any]:
    """One run; adds the wall time and the CPU used by all other processes meanwhile (in cores)."""
    busy0, own0, t0 = cpu_busy_jiffies(), proc_cpu_jiffies(w.proc.pid), time.perf_counter()
    msg = w.request({"cmd": "run"})
    wall = time.perf_counter() - t0
    busy, own = cpu_busy_jiffies() - busy0, proc_cpu_jiffies(w.proc.pid) - own0
    times = msg["times"]
    times["other_load_cores"] = max(0.0, (busy - own) / CLK_TCK / wall)
    times["own_cores"] = own / CLK_TCK / wall
    return times


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    med = {s: statistics.median(r[s] for r in runs) for s in (*STAGES, "total")}
    best = {s: min(r[s] for r in runs) for s in (*STAGES, "total")}
    cpu_s = statistics.median(r["own_cores"] * r["total"] for r in runs)
    return {"median_s": med, "best_s": best, "cpu_s": cpu_s, "runs": runs,
            "other_load_cores": statistics.mean(r["other_load_cores"] for r in runs),
            "own_cores": statistics.mean(r["own_cores"] for r in runs)}


def compare_outputs(ours_path: Path, off_path: Path) -> dict[str, float]:
    from safetensors.torch import load_file
    a, b = load_file(str(ours_path)), load_file(str(off_path))
    out = {}
    for k in a:
        if k in b:
            out[k] = float((a[k].double() - b[k].double()).abs().max()) if a[k].shape == b[k].shape else math.inf
    out["restored_absmax"] = float(b["restored"].abs().max())
    return out


def run_batch(args: argparse.Namespace, impls: list[str], device: str, dtype: str, batch: int, weights_dir: Path,
              work: Path, reserve: int) -> dict[str, Any]:
    """Both implementations at one batch size: fresh workers, interleaved runs, memory, agreement.

    An implementation killed for lack of memory while the other one was loaded too is run once more
    alone afterwards (not interleaved; noted in the results).
    """
    tag = f"{device}_{dtype}_b{batch}"
    noise_path = work / f"inputs_{device}_b{batch}.pt"          # shared by every dtype and both implementations
    res: dict[str, Any] = {"device": device, "dtype": dtype, "batch": batch, "impl": {}}
    base = {"weights_dir": str(weights_dir), "device": device, "batch": batch, "noise_path": str(noise_path),
            "input": args.input, "seed": args.seed, "mixing": args.mixing == "on", "threads": args.threads,
            "official_repo": args.official_repo, "official_upfirdn": args.official_upfirdn, "compile": args.compile,
            "tf32": args.tf32}
    if args.compile:
        res["compiled"] = True
    _run_workers(args, impls, base, dtype, tag, batch, work, reserve, res["impl"])
    retry = [k for k in impls if len(impls) > 1 and str(res["impl"].get(k, {}).get("status")).startswith("OOM")
             and (noise_path.exists() or k == "ours")]
    for impl in retry:
        first = res["impl"][impl]["status"]
        print(f"[{tag}] {impl}: {first}; running it again alone", file=sys.stderr, flush=True)
        _run_workers(args, [impl], base, dtype, tag + "_alone", batch, work, reserve, res["impl"])
        res["impl"][impl]["note"] = f"run alone (not interleaved) after: {first}"
    if all(res["impl"].get(k, {}).get("outputs") for k in ("ours", "official")):
        res["agreement"] = compare_outputs(Path(res["impl"]["ours"]["outputs"]),
                                           Path(res["impl"]["official"]["outputs"]))
    return res


def _run_workers(args: argparse.Namespace, impls: list[str], base: dict[str, Any], dtype: str, tag: str, batch: int,
                 work: Path, reserve: int, out: dict[str, Any]) -> None:
    workers: dict[str, Worker] = {}
    for impl in impls:               # ours first: it writes the shared input and noise file
        spec = dict(base, impl=impl, dtype=dtype if impl == "ours" else "float32")
        print(f"[{tag}] loading {impl} ...", file=sys.stderr, flush=True)
        w = Worker(spec, work / f"{impl}_{tag}.log", reserve)
        try:
            ready = w.request({})
            workers[impl] = w
            out[impl] = {"load": ready, "status": "ok"}
        except WorkerDied as exc:
            w.close()
            out[impl] = {"status": str(exc)}
            print(f"[{tag}] {impl}: {exc}", file=sys.stderr, flush=True)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in workers}
    for r in range(args.warmup + args.repeats):
        order = list(workers) if r % 2 == 0 else list(reversed(workers))
        for impl in order:
            if impl not in workers:
                continue
            try:
                t = timed_run(workers[impl])
            except WorkerDied as exc:
                out[impl]["status"] = str(exc)
                print(f"[{tag}] {impl}: {exc}", file=sys.stderr, flush=True)
                workers.pop(impl).close()
                continue
            kind = "warm-up" if r < args.warmup else f"run {r - args.warmup + 1}/{args.repeats}"
            if r < args.warmup:
                out[impl].setdefault("warmup_s", []).append(t["total"])
            print(f"[{tag}] {impl} {kind}: " + " ".join(f"{s} {t[s]:.2f}s" for s in (*STAGES, "total"))
                  + f"  (other load {t['other_load_cores']:.2f} cores)", file=sys.stderr, flush=True)
            if r >= args.warmup:
                runs[impl].append(t)
        if workers:
            sample_peak(torch.device(base["device"]))
    n_bank = 8
    for impl, w in list(workers.items()):
        try:
            out[impl].update(summarize(runs[impl]))
            out[impl]["memory"] = w.request({"cmd": "mem"})
            path = work / f"out_{impl}_{tag}.safetensors"
            w.request({"cmd": "save", "path": str(path), "n_bank": n_bank})
            out[impl]["outputs"] = str(path)
            if args.count_flops and batch == min(args.batch):
                fl = w.request({"cmd": "flops"})["flops"]
                out[impl]["flops_per_face"] = {k: v / batch for k, v in fl.items()}
        except WorkerDied as exc:
            out[impl]["status"] = str(exc)
        finally:
            w.close()

#----------------------------------------------------------------------------
# Reporting


def fmt_mib(b: float | None) -> str:
    return "–" if b is None else f"{b / MiB:,.0f}"


def mem_numbers(r: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """Peak memory of the timed runs: above the post-load baseline (per face), total, per stage."""
    m = r.get("memory")
    if not m or not m.get("stage_peak"):
        return None
    base = m["baseline"] if m["kind"] == "cuda" else m["baseline_rss"]
    peak = max(m["stage_peak"].values())
    return {"above_per_face": (peak - base) / batch, "above": peak - base, "total_peak": peak,
            "load_hwm": m["load_hwm"], "baseline": base,
            "stage_above": {s: v - base for s, v in m["stage_peak"].items()}}


def report(results: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    lines = []
    peak = machine["peak_gflops"]
    n_mm = len(machine.get("matmul", []))
    lines.append(f"Machine: {machine['cpu']} ({machine['cores']} cores, {machine['mem_gib']:.0f} GiB), torch "
                 f"{machine['torch']}, {machine['threads']} threads; measured fp32 peak (4096³ matmul, best of "
                 f"{n_mm} samples through the run) {peak:.0f} GFLOP/s; load average at start "
                 f"{machine['loadavg_start']}, at end {machine['loadavg_end']}.")
    if machine.get("cuda"):
        gpu_peaks = ", ".join(f"{k.split('/')[1]} {v / 1e3:.0f} TFLOP/s" for k, v in machine["peak_by"].items()
                              if k.startswith("cuda/"))
        lines.append(f"GPU: {machine['cuda']}, torch CUDA {torch.version.cuda}; measured peaks (8192³ matmul): "
                     f"{gpu_peaks}" + ("; float32 runs TF32 in the feature bank and restoration (--tf32; float32 peak "
                                       "measured with TF32 matmuls)" if machine.get("cudnn_tf32") else
                                       "; float32 is full float32 (no TF32)") + ".")
    lines.append(f"Official code: {machine.get('official', 'not run')}.")
    other = [x["other_load_cores"] for r in results for x in r["impl"].values() if "other_load_cores" in x]
    if other:
        lines.append(f"Other processes used {statistics.mean(other):.2f} of {machine['cores']} cores on average during "
                     f"the timed runs (from /proc/stat); times are medians of {args.repeats} interleaved runs after "
                     f"{args.warmup} warm-up, 'best runs' compares the fastest run of each.")
    lines.append("")
    # 1. ours vs official per stage
    cmp_rows = [r for r in results if "official" in r["impl"]]
    if cmp_rows:
        lines.append("| batch | stage | ours ms/face | official ms/face | speed-up | speed-up, best runs | ours GFLOP/s "
                     "| ours % of peak |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in cmp_rows:
            b, o, f = r["batch"], r["impl"].get("ours", {}), r["impl"].get("official", {})
            om, fm = o.get("median_s"), f.get("median_s")
            for s in (*STAGES, "total"):
                ours_ms = om[s] * 1e3 / b if om else None
                off_ms = fm[s] * 1e3 / b if fm else None
                gf = sum(GFLOP_OURS.values()) if s == "total" else GFLOP_OURS[s]
                gfs = gf * b / om[s] if om else None
                name = "**total**" if s == "total" else STAGE_NAMES[s]
                lines.append(f"| {b} | {name} | {fmt(ours_ms, '.0f')} | "
                             f"{fmt(off_ms, '.0f') if fm else short(f.get('status'))} | "
                             f"{(fmt(off_ms / ours_ms, '.2f') + '×') if (om and fm) else '–'} | "
                             f"{(fmt(f['best_s'][s] / o['best_s'][s], '.2f') + '×') if (om and fm) else '–'} | "
                             f"{fmt(gfs, '.1f')} | {fmt(gfs / peak * 100 if gfs else None, '.0f')}% |")
        for r in cmp_rows:
            for impl, x in r["impl"].items():
                if x.get("note"):
                    lines.append(f"Batch {r['batch']}, {impl}: {x['note']}")
        lines.append("")
        lines.append("| batch | ours faces/s | official faces/s | ours peak MiB/face (above loaded) | official "
                     "| ratio | ours total peak RSS MiB | official | CPU s/face, ours / official | CPU used, ours / official (cores) "
                     "| other load (cores) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in cmp_rows:
            b, o, f = r["batch"], r["impl"].get("ours", {}), r["impl"].get("official", {})
            mo, mf = mem_numbers(o, b), mem_numbers(f, b)
            fps_o = b / o["median_s"]["total"] if o.get("median_s") else None
            fps_f = b / f["median_s"]["total"] if f.get("median_s") else None
            loads = [x["other_load_cores"] for x in (o, f) if "other_load_cores" in x]
            lines.append(f"| {b} | {fmt(fps_o, '.3f')} | {fmt(fps_f, '.3f') if fps_f else short(f.get('status'))} | "
                         f"{fmt_mib(mo and mo['above_per_face'])} | {fmt_mib(mf and mf['above_per_face'])} | "
                         f"{fmt(mo['above_per_face'] / mf['above_per_face'], '.2f') if (mo and mf) else '–'} | "
                         f"{fmt_mib(mo and mo['total_peak'])} | {fmt_mib(mf and mf['total_peak'])} | "
                         f"{fmt(o['cpu_s'] / b if o.get('cpu_s') else None, '.1f')} / "
                         f"{fmt(f['cpu_s'] / b if f.get('cpu_s') else None, '.1f')} | "
                         f"{fmt(o.get('own_cores'), '.2f')} / {fmt(f.get('own_cores'), '.2f')} | "
                         f"{fmt(statistics.mean(loads), '.2f') if loads else '–'} |")
        lines.append("")
        lines.append("Memory (CPU: RSS in MiB; each implementation and batch in a fresh process; stage columns: peak "
                     "during the stage above the loaded process):")
        lines.append("")
        lines.append("| batch | implementation | loaded | peak while loading | encoder | DDPM | feature bank | "
                     "restoration | peak above loaded | per face | total peak |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in cmp_rows:
            b = r["batch"]
            for impl in ("ours", "official"):
                x = r["impl"].get(impl, {})
                mm = mem_numbers(x, b)
                if not mm:
                    lines.append(f"| {b} | {impl} | {short(x.get('status'))} |" + " |" * 8)
                    continue
                lines.append(f"| {b} | {impl} | {fmt_mib(mm['baseline'])} | {fmt_mib(mm['load_hwm'])} | "
                             + " | ".join(fmt_mib(mm["stage_above"].get(s)) for s in STAGES)
                             + f" | {fmt_mib(mm['above'])} | {fmt_mib(mm['above_per_face'])} | "
                             f"{fmt_mib(mm['total_peak'])} |")
        lines.append("")
        lines.append("| batch | max abs diff restored (ours vs official) | W+ | diffused W+ | feature bank (16² pooled, worst level) | restored abs max |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in cmp_rows:
            a = r.get("agreement")
            if not a:
                lines.append(f"| {r['batch']} | not compared | | | | |")
                continue
            bank = max(v for k, v in a.items() if k.startswith("bank"))
            lines.append(f"| {r['batch']} | {a['restored']:.2e} | {a['w_plus']:.2e} | {a['prompts']:.2e} | "
                         f"{bank:.2e} | {a['restored_absmax']:.2f} |")
        lines.append("")
    # 2. ours alone, every device/dtype
    lines.append("| device | dtype | batch | encoder ms | DDPM ms | feature bank ms | restoration ms | total ms "
                 "| ms/face | faces/s | GFLOP/s | % of peak | peak MiB/face above loaded | total peak MiB |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        o, b = r["impl"].get("ours", {}), r["batch"]
        if not o.get("median_s"):
            lines.append(f"| {r['device']} | {r['dtype']} | {b} | {short(o.get('status'))} |" + " |" * 10)
            continue
        m = o["median_s"]
        gfs = sum(GFLOP_OURS.values()) * b / m["total"]
        pk = machine["peak_by"].get(f"{r['device']}/{r['dtype']}", peak)
        mo = mem_numbers(o, b)
        label = r["dtype"] + (" compiled" if r.get("compiled") else "")
        if r["device"] == "cuda" and r["dtype"] == "float32" and machine.get("cudnn_tf32"):
            label += " (TF32 bank + restoration)"
        lines.append(f"| {r['device']} | {label} | {b} | " + " | ".join(f"{m[s] * 1e3:.0f}" for s in STAGES)
                     + f" | {m['total'] * 1e3:.0f} | {m['total'] * 1e3 / b:.0f} | {b / m['total']:.3f} | {gfs:.1f} "
                     f"| {gfs / pk * 100:.0f}% | {fmt_mib(mo and mo['above_per_face'])} | "
                     f"{fmt_mib(mo and mo['total_peak'])} |")
    for r in results:
        w = r["impl"].get("ours", {}).get("warmup_s")
        if r.get("compiled") and w:
            lines.append(f"{r['device']} {r['dtype']} batch {r['batch']} compiled: warm-up run(s) including "
                         f"compilation {', '.join(f'{x:.1f}' for x in w)} s.")
    return "\n".join(lines)


def fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def short(s: str | None) -> str:
    if not s:
        return "–"
    return s.split(":")[0] if s.startswith("OOM") else s.splitlines()[0][:40]

#----------------------------------------------------------------------------


def write_weights(manifest: Path, weights_dir: Path) -> None:
    import hashlib

    from vspbfr_core.parity import write_official_checkpoints
    stamp = weights_dir / "manifest.sha256"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    names = ("style_encoder_decoder.pt", "code_diffuser.pt", "restoration_net.pt")
    if stamp.is_file() and stamp.read_text().strip() == digest and all((weights_dir / n).is_file() for n in names):
        print(f"weights: reusing {weights_dir} (regenerated from this manifest earlier)", file=sys.stderr)
        return
    t0 = time.perf_counter()
    write_official_checkpoints(manifest, weights_dir)
    stamp.write_text(digest + "\n")
    print(f"weights: regenerated from {manifest} into {weights_dir} in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", default=str(ROOT.parent / "shared" / "parity" / "manifest.json"))
    p.add_argument("--official-repo", help="extracted checkout of LonglongaaaGo/VSPBFR (outside this repository)")
    p.add_argument("--official-upfirdn", choices=("native", "depthwise"), default="native",
                   help="stand-in for the official upfirdn2d: its own CPU algorithm (native) or a grouped conv")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per batch (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in the workers (0: torch default)")
    p.add_argument("--input", default=str(ROOT.parent / "shared" / "faces" / "cropped"),
                   help="aligned face image or folder (cycled to fill a batch), or 'case_a'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixing", choices=("on", "off"), default="on", help="style mixing (two z + inject index)")
    p.add_argument("--tol", type=float, default=5e-3, help="max abs difference of the restored faces allowed")
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"],
                   help="ours on CUDA (CPU runs float32; the official code is float32 only)")
    p.add_argument("--weights-dir", help="keep the regenerated weights here (reused when the manifest is unchanged)")
    p.add_argument("--workdir", help="keep inputs, outputs and worker logs here (default: a temporary folder)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA float32: ours with TF32 in the feature bank and restoration (VSPBFRPipeline allow_tf32)")
    p.add_argument("--compile", action="store_true",
                   help="ours with torch.compile (VSPBFRModel.compile_networks); the warm-up runs include compiling")
    p.add_argument("--count-flops", action="store_true", help="count FLOPs once (smallest batch) with FlopCounterMode")
    p.add_argument("--mem-reserve-gib", type=float, default=1.0,
                   help="kill a worker (reported as OOM) when less memory than this is left on the machine")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--from-json", metavar="JSON", help="only print the tables of an earlier --json result")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for r in saved["results"]:
            for x in r["impl"].values():
                if x.get("runs"):
                    x.update(summarize(x["runs"]))
        print(report(saved["results"], saved["machine"], argparse.Namespace(**saved["args"])))
        return 0

    if args.official_repo:
        repo = Path(args.official_repo).resolve()
        if repo == ROOT or ROOT in repo.parents:
            p.error("keep the official checkout outside this repository")
        args.official_repo = str(repo)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="vspbfr_bench_")
    work = Path(args.workdir) if args.workdir else Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    weights_dir = Path(args.weights_dir) if args.weights_dir else Path(tmp) / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    reserve = int(args.mem_reserve_gib * 2 ** 30)
    try:
        write_weights(Path(args.manifest), weights_dir)
        machine: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "mem_gib": mem_total() / 2 ** 30,
                                   "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
                                   "python": platform.python_version(), "loadavg_start": loadavg(), "peak_by": {},
                                   "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        mm_before = peak_matmul(torch.device("cpu"), torch.float32)
        print(f"matmul 4096³ fp32: best {mm_before['best_gflops']:.0f} GFLOP/s, median "
              f"{mm_before['median_gflops']:.0f} (load {mm_before['loadavg']})", file=sys.stderr, flush=True)
        impls = ["ours"] + (["official"] if args.official_repo else [])
        results = []
        stubbed: set[str] = set()
        for device in args.devices:
            if device == "cuda" and not torch.cuda.is_available():
                print("cuda: not available, skipped", file=sys.stderr)
                continue
            dtypes = ["float32"] if device == "cpu" else args.dtypes
            for dtype in dtypes:
                if device == "cuda":
                    # ours runs float32 without TF32 unless --tf32; the peak it is compared with is then the
                    # TF32 matmul's
                    machine["cudnn_tf32"] = args.tf32
                    saved = torch.backends.cuda.matmul.allow_tf32
                    torch.backends.cuda.matmul.allow_tf32 = args.tf32
                    try:
                        mm = peak_matmul(torch.device("cuda"), getattr(torch, dtype), n=8192, repeats=10)
                    finally:
                        torch.backends.cuda.matmul.allow_tf32 = saved
                    machine["peak_by"][f"cuda/{dtype}"] = mm["best_gflops"]
                    print(f"cuda matmul 8192³ {dtype}: {mm['best_gflops']:.0f} GFLOP/s", file=sys.stderr, flush=True)
                for batch in args.batch:
                    # the official code runs once per device (float32), alongside ours in float32
                    these = impls if dtype == "float32" else ["ours"]
                    res = run_batch(args, these, device, dtype, batch, weights_dir, work, reserve)
                    results.append(res)
                    for k in res["impl"].values():
                        stubbed.update(k.get("load", {}).get("stubbed", []))
        mm_after = peak_matmul(torch.device("cpu"), torch.float32)
        machine["loadavg_end"] = loadavg()
        machine["matmul"] = [mm_before, *MATMUL_SAMPLES, mm_after]
        machine["peak_gflops"] = max(m["best_gflops"] for m in machine["matmul"])
        machine["peak_by"]["cpu/float32"] = machine["peak_gflops"]
        if args.official_repo:
            machine["official"] = (f"{args.official_repo}, upfirdn2d stand-in '{args.official_upfirdn}', "
                                   f"import stubs: {', '.join(sorted(stubbed)) or 'none'}")
        table = report(results, machine, args)
        print()
        print(table)
        failed = []
        for r in results:
            where = f"{r['device']} {r['dtype']} batch {r['batch']}"
            for impl, x in r["impl"].items():
                if x.get("status") != "ok" and not str(x.get("status")).startswith("OOM"):
                    failed.append(f"{where}: {impl} failed: {x.get('status')}")
            a = r.get("agreement")
            if a is not None and not (a["restored"] <= args.tol):
                failed.append(f"{where}: restored faces differ by {a['restored']:.3e} > {args.tol:g}")
            both_ok = all(r["impl"].get(k, {}).get("status") == "ok" for k in ("ours", "official"))
            if both_ok and a is None:
                failed.append(f"{where}: outputs not compared")
        flops = {f"{r['device']}/{impl}": v["flops_per_face"] for r in results for impl, v in r["impl"].items()
                 if "flops_per_face" in v}
        if flops:
            print()
            for k, v in flops.items():
                print(f"FlopCounterMode GFLOP/face {k}: " + ", ".join(f"{s} {v[s] / 1e9:.2f}" for s in STAGES)
                      + f", total {sum(v.values()) / 1e9:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "results": results, "args": vars(args),
                                                   "gflop_per_face": {"ours": GFLOP_OURS, "official": GFLOP_OFFICIAL},
                                                   "counted_flops_per_face": flops, "failed": failed,
                                                   "markdown": table}, indent=1, default=str))
        if failed:
            print("\nFAIL: " + "; ".join(failed), file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)      # holds only the weights / work folders nobody asked to keep


if __name__ == "__main__":
    sys.exit(main())

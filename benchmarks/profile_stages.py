"""Per-stage profile of the VSPBFR networks (issue 17): wall time against device time, and what runs inside.

Usage:
    python benchmarks/profile_stages.py [--device cpu|cuda] [--dtypes float32 float16 ...] [--faces 1 16]
        [--weights tiny|full|DIR] [--weights-dir DIR] [--repeats N] [--warmup N] [--input DIR]
        [--json OUT.json] [--trace DIR] [--no-flops] [--tf32] [--threads N]

On the lent GPU (issue 17, line 2: one face and 16 faces, float16 and float32)::

    python benchmarks/profile_stages.py --device cuda --dtypes float16 float32 --faces 1 16 --weights full \\
        --weights-dir /tmp/vspbfr_gpu_weights --repeats 3 --json prof.json --trace traces/

What one configuration (device, dtype, number of faces) does:

1. Loads the three networks from official-layout files the way the benchmark does (``bench_official.OursRunner``:
   ``load_checkpoint`` + ``VSPBFRPipeline.to`` for the placement, so half precision keeps the W+ path in float32).
   ``--weights tiny``: the tiny test networks (``tests/tiny_models.py``, 16 px; for the CPU check of this script);
   ``full``: the full-size networks regenerated from ``../shared/parity/manifest.json`` as ``bench_official.py``
   makes them (cached in ``--weights-dir``); any other value: a folder holding the three ``.pt`` files.
2. Aligned crops at the networks' resolution: the real crops of ``--input`` (``../shared/faces/cropped``, cycled to
   fill the batch) when present, else seeded noise; the noise of one restoration drawn once (style mixing on).
3. The four stages as ``bench_official`` runs them (the shipping model calls: encoder -> W+ diffusion (4 DDPM steps)
   -> feature bank (StyleGAN2 synthesis) -> restoration), every stage synchronised: ``--warmup`` runs, then
   ``--repeats`` timed runs without the profiler (the *wall* times: medians), then ``--repeats`` runs under
   ``torch.profiler.profile`` (CPU activity, plus CUDA on cuda) with every stage inside
   ``record_function("vspbfr/<stage>")``.  The whole batch goes through each stage at once (as in
   ``bench_official``; ``VSPBFRPipeline`` renders in chunks of ``chunk_size`` faces, 4 by default).
4. Per stage and in total:
   * ``wall_s``: the unprofiled wall time (synchronised);
   * ``device_s``: on CUDA the sum of the durations of the kernels (and memcpy / memset) the stage's operators
     launched (linked by the profiler's correlation ids; ``device_window_s``: the same summed over every device
     event that starts inside the stage's range, ``device_busy_s``: their union); on CPU the operators' CPU time
     (the sum of the self times of every operator inside the range: the range minus the Python between ops);
   * ``launch_share = 1 - device_s / wall_s`` (clamped to [0, 1]): the part of the wall time the device waits for
     the host (launch gaps, Python, synchronisation).  On CPU the profiled range is used as the wall time there
     (the operator times carry the profiler's overhead too); ``launch_share_profiled`` is always against the range;
   * ``kernels``: kernels launched per run on CUDA, top-level operator calls per run on CPU (``ops``: every
     operator, nested ones included);
   * ``top``: the five kernels (CUDA) or operators by self time (CPU) that took longest, per run;
   * ``gflop`` (``torch.utils.flop_counter.FlopCounterMode``, counted once per number of faces; ``--no-flops``
     skips it) and ``gflops_per_s`` against the wall time.
   Totals are the sums of the four stages (the launch share of the total from those sums).
5. Prints a Markdown table per configuration, writes everything to ``--json``, and with ``--trace DIR`` one gzipped Chrome
   trace per configuration (open in chrome://tracing or https://ui.perfetto.dev).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_official import STAGE_NAMES, STAGES, OursRunner, cpu_name, input_files, load_face  # noqa: E402

RANGE_PREFIX = "vspbfr/"
TOP_N = 5
DEFAULT_INPUT = ROOT.parent / "shared" / "faces" / "cropped"
DEFAULT_MANIFEST = ROOT.parent / "shared" / "parity" / "manifest.json"

#----------------------------------------------------------------------------
# Weights and inputs


def prepare_weights(spec: str, weights_dir: str | None, manifest: str | os.PathLike[str], tmp: Path) -> Path:
    """The folder with the three official-layout files for ``--weights tiny|full|DIR``."""
    if spec == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import write_tiny_checkpoints
        folder = Path(weights_dir) if weights_dir else tmp / "tiny_weights"
        write_tiny_checkpoints(folder)
        return folder
    if spec == "full":
        from bench_official import write_weights
        folder = Path(weights_dir) if weights_dir else tmp / "full_weights"
        folder.mkdir(parents=True, exist_ok=True)
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"--weights full needs the parity manifest {manifest} (or give --weights DIR)")
        write_weights(Path(manifest), folder)
        return folder
    folder = Path(spec)
    missing = [k for k in ("style_encoder_decoder", "code_diffuser", "restoration_net")
               if not (folder / f"{k}.pt").is_file()]
    if missing:
        raise FileNotFoundError(f"--weights {spec}: not 'tiny' or 'full', and no {', '.join(k + '.pt' for k in missing)} "
                                "in that folder")
    return folder


def make_crops(count: int, size: int, source: str | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``[count, 3, size, size]`` in [-1, 1]: real aligned crops (cycled) when ``source`` has any, else noise."""
    files: list[Path] = []
    if source:
        try:
            files = input_files(source)
        except FileNotFoundError:
            files = []
    if files:
        faces = torch.cat([load_face(files[i % len(files)], size) for i in range(count)])
        return faces, f"{min(count, len(files))} real crop(s) from {source}"
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=g) * 2 - 1, "uniform noise (no crops found)"

#----------------------------------------------------------------------------
# Running the stages


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stages(runner: OursRunner, record: bool) -> dict[str, float]:
    """One restoration, stage by stage, each synchronised (inside its ``record_function`` range when ``record``)."""
    m, n, dev, faces = runner.model, runner.noise, runner.device, runner.faces
    times: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        ctx = torch.profiler.record_function(RANGE_PREFIX + name) if record else contextlib.nullcontext()
        sync(dev)
        t0 = time.perf_counter()
        with ctx:
            out = fn()
            sync(dev)
        times[name] = time.perf_counter() - t0
        return out

    with torch.inference_mode():
        ws = stage("encode", lambda: m.encode(faces))
        prompts = stage("diffuse", lambda: m.diffuse(ws, n.x_T))
        # the pipeline hands the bank and the restoration network the prompts in the compute precision
        bank = stage("feature_bank", lambda: m.feature_bank(prompts.to(m.compute_dtype), n.stylegan)[0])
        stage("restore", lambda: m.restore(faces, bank, prompts.to(m.compute_dtype), n))
    return times


def count_flops(runner: OursRunner) -> dict[str, float]:
    """FLOPs per stage of one batch (FlopCounterMode), as ``bench_official`` counts them."""
    m, n, faces = runner.model, runner.noise, runner.faces
    from torch.utils.flop_counter import FlopCounterMode
    out: dict[str, float] = {}
    with torch.inference_mode():
        fc = FlopCounterMode(display=False)
        with fc:
            prev = 0
            marks = []
            ws = m.encode(faces)
            marks.append(fc.get_total_flops())
            prompts = m.diffuse(ws, n.x_T)
            marks.append(fc.get_total_flops())
            bank = m.feature_bank(prompts.to(m.compute_dtype), n.stylegan)[0]
            marks.append(fc.get_total_flops())
            m.restore(faces, bank, prompts.to(m.compute_dtype), n)
            marks.append(fc.get_total_flops())
    for s, mark in zip(STAGES, marks):
        out[s], prev = float(mark - prev), mark
    return out

#----------------------------------------------------------------------------
# Reading the profile


def _is_device_event(e: Any) -> bool:
    dt = getattr(e, "device_type", None)
    return dt is not None and getattr(dt, "name", str(dt)).upper().endswith(("CUDA", "HIP"))


def _is_cpu_event(e: Any) -> bool:
    dt = getattr(e, "device_type", None)
    return dt is None or getattr(dt, "name", str(dt)).upper().endswith("CPU")


def _span_us(e: Any) -> tuple[float, float]:
    tr = e.time_range
    return float(tr.start), float(tr.end)


def _descendants(e: Any) -> Iterable[Any]:
    stack = list(getattr(e, "cpu_children", []))
    while stack:
        d = stack.pop()
        yield d
        stack.extend(getattr(d, "cpu_children", []))


def _self_cpu_us(e: Any) -> float:
    for attr in ("self_cpu_time_total", "cpu_time_total"):
        if hasattr(e, attr):
            return float(getattr(e, attr))
    return 0.0


def _union_us(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _top(acc: dict[str, list[float]], runs: int) -> list[dict[str, Any]]:
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])[:TOP_N]
    return [{"name": k, "time_s": v[0] / runs * 1e-6, "count": v[1] / runs} for k, v in rows]


def analyse(events: Any, device: torch.device) -> dict[str, dict[str, Any]]:
    """Per stage, averaged over the profiled runs: device/op time, kernel or op counts, the top five."""
    cuda = device.type == "cuda"
    ranges: dict[str, list[Any]] = {s: [] for s in STAGES}
    dev_events = []
    for e in events:
        name = getattr(e, "name", "")
        if name.startswith(RANGE_PREFIX):
            if _is_cpu_event(e) and name[len(RANGE_PREFIX):] in ranges:
                ranges[name[len(RANGE_PREFIX):]].append(e)
            continue                                  # a range (its GPU-side annotation too) is no kernel
        if cuda and _is_device_event(e):
            dev_events.append(e)
    out: dict[str, dict[str, Any]] = {}
    for s, rs in ranges.items():
        if not rs:
            raise RuntimeError(f"the profile holds no '{RANGE_PREFIX}{s}' range (profiler API changed?)")
        runs = len(rs)
        per_run_device, per_run_count, per_run_range, per_run_ops = [], [], [], []
        window, busy = [], []
        acc: dict[str, list[float]] = {}
        for r in rs:
            a, b = _span_us(r)
            per_run_range.append(b - a)
            desc = list(_descendants(r))
            # operators only (not the CUDA runtime / driver calls the profiler files under them)
            per_run_ops.append(sum(1 for d in desc if not getattr(d, "name", "").startswith((RANGE_PREFIX, "cu"))))
            if cuda:
                total = count = 0.0
                for d in desc:
                    for k in getattr(d, "kernels", []):
                        if k.name.startswith(RANGE_PREFIX):
                            continue
                        total += float(k.duration)
                        count += 1
                inside = [e for e in dev_events if a <= _span_us(e)[0] < b]
                spans = [_span_us(e) for e in inside]
                window.append(sum(y - x for x, y in spans))
                busy.append(_union_us(spans))
                for e in inside:
                    x, y = _span_us(e)
                    v = acc.setdefault(e.name, [0.0, 0.0])
                    v[0] += y - x
                    v[1] += 1
                if count == 0 and spans:             # no correlation links: fall back on the time window
                    total, count = window[-1], float(len(spans))
                per_run_device.append(total)
                per_run_count.append(count)
            else:
                per_run_device.append(sum(_self_cpu_us(d) for d in desc))
                per_run_count.append(float(len(getattr(r, "cpu_children", []))))
                for d in desc:
                    v = acc.setdefault(d.name, [0.0, 0.0])
                    v[0] += _self_cpu_us(d)
                    v[1] += 1
        st: dict[str, Any] = {
            "profiled_runs": runs,
            "device_s": statistics.mean(per_run_device) * 1e-6,
            "range_s": statistics.mean(per_run_range) * 1e-6,
            "kernels": statistics.mean(per_run_count),
            "ops": statistics.mean(per_run_ops),
            "top": _top(acc, runs),
        }
        if cuda:
            st["device_window_s"] = statistics.mean(window) * 1e-6
            st["device_busy_s"] = statistics.mean(busy) * 1e-6
        out[s] = st
    return out


def _share(device_s: float, wall_s: float) -> float:
    return min(1.0, max(0.0, 1.0 - device_s / wall_s)) if wall_s > 0 else 0.0

#----------------------------------------------------------------------------
# One configuration


def profile_config(weights: Path, device: str, dtype: str, faces: int, args: argparse.Namespace,
                   flops_cache: dict[int, dict[str, float]], trace_dir: Path | None) -> dict[str, Any]:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    runner = OursRunner({"weights_dir": str(weights), "device": device, "dtype": dtype, "tf32": args.tf32})
    load_s = time.perf_counter() - t0
    size = runner.model.resolution
    crops, source = make_crops(faces, size, args.input, args.seed)
    runner.prepare(crops, runner.make_noise(faces, args.seed, mixing=True))
    for _ in range(args.warmup):
        run_stages(runner, record=False)
    walls = [run_stages(runner, record=False) for _ in range(args.repeats)]
    wall = {s: statistics.median(w[s] for w in walls) for s in STAGES}

    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiled_walls = []
    with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
        for _ in range(args.repeats):
            profiled_walls.append(run_stages(runner, record=True))
    stages = analyse(prof.events(), dev)
    trace = trace_error = None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        trace = trace_dir / f"trace_{device}_{dtype}_{faces}faces.json.gz"
        try:
            prof.export_chrome_trace(str(trace))
        except Exception as exc:              # the numbers above are kept without the trace
            trace_error, trace = f"{type(exc).__name__}: {exc}", None
            print(f"warning: no trace for {device} {dtype} {faces} face(s): {trace_error}", file=sys.stderr)

    if args.flops and faces not in flops_cache:
        flops_cache[faces] = count_flops(runner)
    flops = flops_cache.get(faces)
    for s in STAGES:
        st = stages[s]
        st["wall_s"] = wall[s]
        st["wall_profiled_s"] = statistics.median(w[s] for w in profiled_walls)
        ref = st["wall_s"] if dev.type == "cuda" else st["range_s"]
        st["launch_share"] = _share(st["device_s"], ref)
        st["launch_share_profiled"] = _share(st["device_s"], st["range_s"])
        if flops is not None:
            st["gflop"] = flops[s] / 1e9
            st["gflops_per_s"] = st["gflop"] / st["wall_s"] if st["wall_s"] > 0 else None
    total: dict[str, Any] = {k: sum(stages[s][k] for s in STAGES)
                             for k in ("wall_s", "wall_profiled_s", "range_s", "device_s", "kernels", "ops")}
    if dev.type == "cuda":
        for k in ("device_window_s", "device_busy_s"):
            total[k] = sum(stages[s][k] for s in STAGES)
    ref = total["wall_s"] if dev.type == "cuda" else total["range_s"]
    total["launch_share"] = _share(total["device_s"], ref)
    total["launch_share_profiled"] = _share(total["device_s"], total["range_s"])
    if flops is not None:
        total["gflop"] = sum(stages[s]["gflop"] for s in STAGES)
        total["gflops_per_s"] = total["gflop"] / total["wall_s"] if total["wall_s"] > 0 else None
    res = {"device": device, "dtype": dtype, "faces": faces, "resolution": size, "input": source,
           "load_s": load_s, "repeats": args.repeats, "warmup": args.warmup, "tf32": bool(args.tf32),
           "device_time": "CUDA kernels" if dev.type == "cuda" else "CPU operator time",
           "stages": stages, "total": total, "trace": str(trace) if trace else None,
           "trace_error": trace_error}
    if dev.type == "cuda":
        res["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    del runner, prof
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res

#----------------------------------------------------------------------------
# Report


def markdown(res: dict[str, Any]) -> str:
    cuda = res["device"] == "cuda"
    unit = "kernels" if cuda else "ops"
    lines = [f"**{res['device']} {res['dtype']}{' (TF32)' if res['tf32'] else ''}, {res['faces']} face(s) at "
             f"{res['resolution']} px** ({res['input']}; device time = {res['device_time']}; wall: median of "
             f"{res['repeats']} unprofiled runs; profiled: the stage's range under the profiler; launch-bound = "
             f"1 - device / {'wall' if cuda else 'profiled'})", "",
             f"| stage | wall ms | profiled ms | device ms | launch-bound | {unit}/run | GFLOP | GFLOP/s "
             f"| top {TOP_N} by time (ms per run) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = [(STAGE_NAMES[s], res["stages"][s]) for s in STAGES] + [("total", res["total"])]
    for label, st in rows:
        top = "; ".join(f"{_short(t['name'])} {t['time_s'] * 1e3:.2f}" for t in st.get("top", []))
        gf = st.get("gflop")
        gfs = st.get("gflops_per_s")
        lines.append(f"| {label} | {st['wall_s'] * 1e3:.2f} | {st['range_s'] * 1e3:.2f} | {st['device_s'] * 1e3:.2f} | "
                     f"{st['launch_share'] * 100:.0f}% | {st['kernels']:.0f} | "
                     f"{'–' if gf is None else format(gf, '.3g')} | {'–' if gfs is None else format(gfs, '.1f')} | "
                     f"{top} |")
    if cuda:
        t = res["total"]
        lines += ["", f"Cross-check: device events inside the ranges {t['device_window_s'] * 1e3:.2f} ms (busy, their "
                  f"union: {t['device_busy_s'] * 1e3:.2f} ms); max allocated {res.get('max_memory_allocated_mib', 0):,.0f} MiB."]
    return "\n".join(lines)


def _short(name: str, n: int = 60) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= n else name[: n - 1] + "…"

#----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "float16", "bfloat16", "float64"))
    p.add_argument("--faces", type=int, nargs="+", default=[1, 16])
    p.add_argument("--weights", default="full", help="tiny | full | a folder with the three official-layout .pt files")
    p.add_argument("--weights-dir", help="where tiny/full weights are written (kept and reused); default: a temp folder")
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="parity manifest for --weights full")
    p.add_argument("--input", default=str(DEFAULT_INPUT), help="aligned crops (folder or file); noise when absent")
    p.add_argument("--repeats", type=int, default=3, help="unprofiled timed runs, then as many profiled runs")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tf32", action="store_true", help="CUDA float32: TF32 in the feature bank and restoration")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FlopCounterMode count")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--trace", help="write one Chrome trace per configuration into this folder")
    p.add_argument("--only-weights", action="store_true", help="write / check the weights, then stop")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or any(f < 1 for f in args.faces):
        p.error("--repeats and --faces must be at least 1, --warmup at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    if args.device == "cpu" and any(d in ("float16", "bfloat16") for d in args.dtypes):
        p.error("--device cpu runs float32 / float64 only (the pipeline refuses half precision on CPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    failed: list[str] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vspbfr_prof_") as tmp:
        t0 = time.perf_counter()
        weights = prepare_weights(args.weights, args.weights_dir, args.manifest, Path(tmp))
        print(f"weights: {weights} ({args.weights}, {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        if args.only_weights:
            return 0
        flops_cache: dict[int, dict[str, float]] = {}
        trace_dir = Path(args.trace) if args.trace else None
        for dtype in args.dtypes:
            for faces in args.faces:
                where = f"{args.device} {dtype} {faces} face(s)"
                print(f"profiling {where} ...", file=sys.stderr, flush=True)
                try:
                    res = profile_config(weights, args.device, dtype, faces, args, flops_cache, trace_dir)
                except Exception as exc:          # report it, go on with the other configurations
                    failed.append(f"{where}: {type(exc).__name__}: {exc}")
                    print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
                    if args.device == "cuda":
                        torch.cuda.empty_cache()
                    continue
                results.append(res)
                print(markdown(res) + "\n", flush=True)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "results": results,
                                               "failed": failed,
                                               "markdown": "\n\n".join(markdown(r) for r in results)},
                                              indent=1, default=str))
    if failed:
        print("FAIL: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

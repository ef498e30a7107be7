"""Benchmark: peak memory and speed of ``vspbfr restore clip.mp4`` against the clip's length.

Workload: an H.264 clip (written here with PyAV, AAC audio) of ``--size`` frames panning slowly across a real photo
(``../shared/faces/whole``, default ``cf_02.png``: two people), ``--lengths`` frames long.  Each run is a fresh
``python -m vspbfr_core restore CLIP -o OUT`` process (temporal mode, the defaults: smoothing strengths 2, windows of
16 frames) that prints its own peak resident memory (``ru_maxrss``) when it ends, so one run's memory does not
leak into the next.  Printed per length: frames, wall seconds, seconds per frame, peak RSS, and the peak minus the
shortest clip's peak (the part that would grow with the clip if frames were held).

``--weights tiny``: the test suite's tiny networks (``tests/tiny_models.py``) with the real RetinaFace mobilenet0.25:
fast, and what is measured (decoding, detection, tracking, the temporal filters' look-ahead, paste-back, encoding)
is the part of the memory that could depend on the clip's length.  ``--weights full``: full-size networks
regenerated from the parity manifest (about 7 s per face on a 2-core CPU: use short lengths); they add a constant
(weights and one chunk of activations), not a per-frame term.

Usage::

    python benchmarks/bench_video.py [--weights tiny|full] [--size 512] [--lengths 30,150,300]
        [--image cf_02.png] [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))
CHILD = ("import resource, sys\n"
         "from vspbfr_core.cli import main\n"
         "code = main(sys.argv[1:])\n"
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)\n")


def write_clip(path: Path, photo: Path, frames: int, size: int, fps: int = 25) -> None:
    """A pan across ``photo`` (resized so that it is 1.5 frames wide), ``frames`` frames of ``size`` x ``size``."""
    import av
    import numpy as np
    from PIL import Image

    with Image.open(photo) as im:
        im = im.convert("RGB")
        scale = 1.5 * size / im.width
        im = im.resize((round(im.width * scale), max(size, round(im.height * scale))), Image.BICUBIC)
        arr = np.asarray(im)
    travel = arr.shape[1] - size
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.width = v.height = size
    v.pix_fmt = "yuv420p"
    a = out.add_stream("aac", rate=48000)
    a.layout = "mono"
    top = (arr.shape[0] - size) // 2
    for i in range(frames):
        x = round(travel * i / max(1, frames - 1))
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr[top:top + size, x:x + size]), format="rgb24")
        f.pts = i
        for p in v.encode(f):
            out.mux(p)
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(48000 * frames // fps) / 48000)).astype(np.float32)[None]
    af = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
    af.sample_rate, af.pts = 48000, 0
    for p in [*a.encode(af), *a.encode(None), *v.encode(None)]:
        out.mux(p)
    out.close()


def models_folder(weights: str, tmp: Path) -> Path:
    folder = tmp / "models"
    if weights == "full":
        manifest = SHARED / "parity" / "manifest.json"
        subprocess.run([sys.executable, "-m", "vspbfr_core.parity", "--write-weights", str(manifest), "-o",
                        str(folder)], check=True, cwd=ROOT)
    else:
        from tiny_models import write_tiny_checkpoints

        write_tiny_checkpoints(folder)
    shutil.copy(SHARED / "weights" / "detection_mobilenet0.25_Final.pth", folder)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", choices=("tiny", "full"), default="tiny")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--lengths", default="30,150,300", help="clip lengths in frames, comma-separated")
    p.add_argument("--image", default="cf_02.png")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = models_folder(args.weights, tmp)
        for n in lengths:
            clip = tmp / f"clip{n}.mp4"
            write_clip(clip, SHARED / "faces" / "whole" / args.image, n, args.size)
            cmd = [sys.executable, "-c", CHILD, "restore", str(clip), "-o", str(tmp / f"out{n}"), "--models",
                   str(models), "--detector", "mobile0.25"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            rss_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")))
            summary = next((line for line in proc.stderr.splitlines() if line.startswith("done:")), "")
            rows.append({"frames": n, "seconds": round(seconds, 1), "s_per_frame": round(seconds / n, 3),
                         "peak_rss_mib": round(rss_kb / 1024, 1), "summary": summary})
    base = rows[0]["peak_rss_mib"]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, weights {args.weights}, "
          f"{args.size}x{args.size} frames, {args.image}, load average {os.getloadavg()[0]:.2f}")
    print("| frames | wall s | s/frame (incl. start-up) | peak RSS MiB | peak - shortest MiB |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['frames']} | {r['seconds']} | {r['s_per_frame']} | {r['peak_rss_mib']} | "
              f"{r['peak_rss_mib'] - base:+.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights, "size": args.size, "image": args.image,
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

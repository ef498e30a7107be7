"""Images per second of ``vspbfr batch`` (``--engine ray`` and ``--engine local``) against ``vspbfr restore`` on the
same inputs, on this machine.

The inputs are the real photos of ``../shared/faces/whole`` resized to ``--width`` pixels wide and repeated up to
``--images`` files (JPEG and PNG).  Each command runs once in its own process, as a user runs it, with the same
restore options and ``--threads``; the time is the process's wall time (Python start, model loading and, for Ray,
starting the local cluster and its actors included) and the in-run time the command prints (``done: ... N s``:
batch, from the first input to the last, Ray start included).  The outputs of the three commands are compared
byte for byte.

``--weights tiny`` (default): the test suite's tiny networks with the real RetinaFace mobilenet0.25 detector, so
the numbers measure the engines' overhead more than restoration.  ``--weights full``: full-size networks
regenerated from the parity manifest (slow on CPU: use few images).

    python benchmarks/bench_batch.py [--weights tiny|full] [--images 24] [--width 256] [--workers 2]
                                     [--cpus-per-worker 0.5] [--threads 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from bench_video import models_folder  # noqa: E402  (the same tiny / full models folder)

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))


def write_inputs(folder: Path, count: int, width: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    sources = sorted(p for p in (SHARED / "faces" / "whole").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        with Image.open(src) as im:
            im = im.convert("RGB")
            im = im.resize((width, max(8, round(im.height * width / im.width))), Image.LANCZOS)
            dst = folder / f"{i:03d}_{src.stem}{'.jpg' if i % 2 else '.png'}"
            im.save(dst, quality=90) if dst.suffix == ".jpg" else im.save(dst)
        out.append(dst)
    return out


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def run(name: str, cmd: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vspbfr_core", *cmd], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    found = re.findall(r"^done: .*?([0-9.]+) s", proc.stderr, flags=re.M)
    return {"name": name, "wall_s": round(wall, 2), "run_s": float(found[-1]) if found else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", choices=("tiny", "full"), default="tiny")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", default="0.5")
    p.add_argument("--batch-size", default="4")
    p.add_argument("--threads", default="1")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp_name:
        tmp = Path(tmp_name)
        models = models_folder(args.weights, tmp)
        inputs = write_inputs(tmp / "in", args.images, args.width)
        common = ["--models", str(models), "--detector", "mobile0.25", "--threads", args.threads]
        rows = [
            run("restore", ["restore", *map(str, inputs), "-o", str(tmp / "restore"), *common]),
            run("batch local", ["batch", str(tmp / "in"), "-o", str(tmp / "local"), *common]),
            run(f"batch ray ({args.workers} workers)",
                ["batch", str(tmp / "in"), "-o", str(tmp / "ray"), "--engine", "ray", "--workers", str(args.workers),
                 "--cpus-per-worker", args.cpus_per_worker, "--batch-size", args.batch_size, *common]),
        ]
        reference = digests(tmp / "restore")
        identical = {name: digests(tmp / name) == reference for name in ("local", "ray")}
    base = rows[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, weights {args.weights}, "
          f"{args.images} images {args.width} px wide, --threads {args.threads}")
    print(f"{'command':<26}{'wall s':>9}{'img/s':>8}{'x restore':>11}{'run s':>8}{'img/s':>8}{'x restore':>11}")
    for r in rows:
        r["images_per_s_wall"] = round(args.images / r["wall_s"], 3)
        r["images_per_s_run"] = round(args.images / r["run_s"], 3) if r["run_s"] else None
        ratio_wall = base["wall_s"] / r["wall_s"]
        ratio_run = base["run_s"] / r["run_s"] if r["run_s"] and base["run_s"] else float("nan")
        print(f"{r['name']:<26}{r['wall_s']:>9.1f}{r['images_per_s_wall']:>8.2f}{ratio_wall:>11.2f}"
              f"{r['run_s'] or float('nan'):>8.1f}{r['images_per_s_run'] or float('nan'):>8.2f}{ratio_run:>11.2f}")
    print(f"outputs byte-identical to restore: local {identical['local']}, ray {identical['ray']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights, "images": args.images, "width": args.width,
                                               "threads": args.threads, "workers": args.workers,
                                               "cpus_per_worker": args.cpus_per_worker, "rows": rows,
                                               "identical": identical}, indent=2) + "\n")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

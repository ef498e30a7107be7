"""Peak memory of the ComfyUI all-in-one node with temporal on, 30 vs 300 frames of 512x512 (issue 14).

Runs ``nodes.ops.face_restore`` (what VSPBFR Face Restore does) with temporal on, under the stand-in ComfyUI of
the tests, with the tiny VSPBFR networks of tests/tiny_models.py and the real RetinaFace mobilenet0.25
(``/work/shared/weights/detection_mobilenet0.25_Final.pth``), on a clip made by panning a 512x512 window across
a real photo (``/work/shared/faces/whole/cf_02.png``, faces entering and leaving).  For contrast it also runs the
split graph (detect with temporal on at face_size 512 -> restore -> paste), whose VSPBFR_FACES output holds every
crop of the batch.

Each case runs in its own process.  After the input IMAGE is built, the peak RSS is reset
(``/proc/self/clear_refs``); the number printed is the peak RSS during the run minus the RSS before it minus the
output (IMAGE + MASK) size: what the node needs beyond its input and output.  Not a test; prints numbers:

    PYTHONPATH=. python benchmarks/bench_comfy_temporal_memory.py [--frames 30 300] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = Path("/work/shared/faces/whole/cf_02.png")
DETECTOR = Path("/work/shared/weights/detection_mobilenet0.25_Final.pth")
SIZE = 512
MIB = 1024 * 1024


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _clip(frames: int):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(PHOTO) as im:
        photo = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    h, w = photo.shape[:2]
    top = (h - SIZE) // 2
    clip = torch.empty(frames, SIZE, SIZE, 3)
    for t in range(frames):                          # pan left to right across the whole photo
        x = round(t * (w - SIZE) / max(1, frames - 1))
        clip[t] = photo[top:top + SIZE, x:x + SIZE]
    return clip


def child(mode: str, frames: int, threads: int) -> None:
    import shutil

    import torch

    torch.set_num_threads(threads)
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "comfyui")]
    import comfyui_stubs as stubs
    from tiny_models import write_tiny_checkpoints

    base = Path(tempfile.mkdtemp(prefix="vspbfr_bench_"))
    models, temp = base / "models", base / "temp"
    write_tiny_checkpoints(models / "vspbfr")
    (models / "facedetection").mkdir()
    shutil.copy(DETECTOR, models / "facedetection")
    temp.mkdir()
    pack = stubs.load_pack(models, temp)
    ops = sys.modules[stubs.PACK + ".nodes.ops"]
    nodes = {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}
    (model,) = nodes["VSPBFRModelLoader"].load("style_encoder_decoder.pt", "code_diffuser.pt",
                                               "restoration_net.pt", "fp32")
    ops.get_detector("retinaface_mobile0.25")
    clip = _clip(frames)
    Path("/proc/self/clear_refs").write_text("5")    # reset the peak RSS (VmHWM) to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    if mode == "all-in-one":
        out, mask, count, _, _ = ops.face_restore(model, clip, detector="retinaface_mobile0.25", seed=0,
                                                  temporal=ops.temporal_settings(True, 2.0, 2.0))
    else:
        faces = ops.find_faces(clip, "retinaface_mobile0.25", size=SIZE, temporal=True)
        crops, _ = ops.crops_output(faces)
        restored = ops.restore_crops(model, crops, seed=0, faces=faces)
        out, mask = ops.paste(clip, faces, restored)
        count = len(faces)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    output = out.numel() * out.element_size() + mask.numel() * mask.element_size()
    print(json.dumps({"mode": mode, "frames": frames, "faces": count, "seconds": round(seconds, 1),
                      "input_mib": clip.numel() * 4 / MIB, "output_mib": output / MIB,
                      "extra_mib": (peak - before - output) / MIB}))
    shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--modes", nargs="+", default=["all-in-one", "split"], choices=["all-in-one", "split"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.threads)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"{'mode':<12}{'frames':>7}{'faces':>7}{'seconds':>9}{'input MiB':>11}{'output MiB':>12}"
          f"{'peak RSS above input+output, MiB':>34}")
    for mode in args.modes:
        for frames in args.frames:
            run = subprocess.run([sys.executable, __file__, "--child", mode, str(frames), "--threads",
                                  str(args.threads)], capture_output=True, text=True, env=env, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{r['mode']:<12}{r['frames']:>7}{r['faces']:>7}{r['seconds']:>9}{r['input_mib']:>11.0f}"
                  f"{r['output_mib']:>12.0f}{r['extra_mib']:>34.0f}")


if __name__ == "__main__":
    main()

"""Benchmark: what the temporal driver buys on a moving face: landmark jitter, output flicker, lag on a jump.

Workload: a synthetic clip cut from one real photo (../shared/faces/whole, default ``skimage_astronaut.png``):
``--frames`` frames of ``--size`` x ``--size`` pixels, a slow pan + zoom + small rotation with a *known* affine
per frame (frame pixel -> photo pixel), resampled with ``grid_sample``.  The real RetinaFace mobilenet0.25
re-detects the face in every frame, with its real jitter.  Two runs of the same clip:

* ``off``: every frame on its own, ``pipeline(frame, options)``;
* ``on``: :func:`vspbfr_core.temporal.restore_sequence` with ``--smooth-alignment`` and ``--smooth-wplus``.

The landmarks each run aligned with are recorded by wrapping ``pipeline.align`` on the instance (both paths call
it); the benchmark checks that the ``on`` ones equal ``smooth_landmarks`` of the ``off`` (detector) ones.

Metrics:

1. landmark jitter: the aligned landmarks mapped back through the known affine into photo coordinates (where the
   face does not move); RMS deviation of each point from its temporal mean, in px and per inter-ocular distance.
2. flicker: every output frame warped back into photo coordinates with its known affine; mean absolute
   difference of consecutive frames (0-255 scale) inside a disc around the face (radius ``1.5 x`` inter-ocular,
   only where every frame covers the photo).  The same on the input frames is the baseline of the resampling
   itself; ``excess`` = output minus input flicker, the restoration's own.
3. lag: a second clip with the same motion whose camera jumps by ``--jump`` frame pixels at frame ``T/2``.  Error
   of each frame = mean distance of the five aligned landmarks to the true position (the photo-space mean of the
   detections mapped through that frame's affine); lag = frames after the jump until the error is below 1 px.
   Only detection and landmark smoothing run here (the same ``smooth_landmarks`` the driver uses).

``--weights tiny``: the test suite's tiny networks (``tests/tiny_models.py``, 16 px faces) written to a temporary
folder, with the real detector: fast; the landmark numbers are real, the flicker is only a smoke figure.
``--weights full``: full-size networks regenerated from the parity manifest (``bench_identity.full_pipeline``):
about 7 s per face per frame on a 2-core CPU.

Usage::

    python benchmarks/bench_temporal.py [--weights tiny|full] [--frames 16] [--image skimage_astronaut.png]
        [--size 384] [--smooth-alignment 2.0] [--smooth-wplus 2.0] [--jump 24] [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from vspbfr_core.pipeline import RestoreOptions, VSPBFRPipeline  # noqa: E402
from vspbfr_core.temporal import restore_sequence, smooth_landmarks  # noqa: E402

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))


# -- the synthetic clip ---------------------------------------------------------------------------------------

def load_photo(name: str) -> torch.Tensor:
    """[1, 3, H, W] float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(SHARED / "faces" / "whole" / name) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def motion(frames: int, size: int, center: tuple[float, float], jump: float = 0.0) -> torch.Tensor:
    """[T, 2, 3] float64 affines frame pixel (x, y, 1) -> photo pixel.

    Pan of 24 x 10 photo px, zoom from 0.90 to 0.75 photo px per frame px, rotation 0 -> 4 degrees; with ``jump``
    the camera moves by ``jump`` frame px to the right from frame ``T // 2`` on (the content moves left).
    """
    out = []
    half = (size - 1) / 2.0
    for t in range(frames):
        u = t / max(frames - 1, 1)
        s = 0.90 - 0.15 * u
        a = math.radians(4.0 * u)
        cx, cy = center[0] + 24.0 * u, center[1] + 10.0 * u
        if jump and t >= frames // 2:
            cx += jump * s * math.cos(a)
            cy += jump * s * math.sin(a)
        r = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64) * s
        shift = torch.tensor([cx, cy], dtype=torch.float64) - r @ torch.tensor([half, half], dtype=torch.float64)
        out.append(torch.cat([r, shift[:, None]], dim=1))
    return torch.stack(out)


def invert(m: torch.Tensor) -> torch.Tensor:
    """Inverse of [T, 2, 3] affines."""
    r_inv = torch.linalg.inv(m[:, :, :2])
    return torch.cat([r_inv, -(r_inv @ m[:, :, 2:])], dim=2)


def apply(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Points [T, N, 2] through affines [T, 2, 3] (float64)."""
    return pts.double() @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def warp(src: torch.Tensor, m: torch.Tensor, out_h: int, out_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``src`` [T or 1, C, H, W] at ``m`` [T, 2, 3] (output pixel -> src pixel); returns images, valid mask."""
    t = m.shape[0]
    h, w = src.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64), torch.arange(out_w, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).expand(t, -1, -1)
    p = apply(m, pts)
    grid = torch.stack([(2 * p[..., 0] + 1) / w - 1, (2 * p[..., 1] + 1) / h - 1], dim=-1)
    grid = grid.reshape(t, out_h, out_w, 2).float()
    src = src.expand(t, -1, -1, -1) if src.shape[0] == 1 else src
    img = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (p[..., 0] >= 0) & (p[..., 0] <= w - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)
    return img, inside.reshape(t, out_h, out_w)


def make_clip(photo: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """IMAGE batch [T, size, size, 3] in [0, 1]."""
    img, _ = warp(photo, m, size, size)
    return img.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


# -- pipelines --------------------------------------------------------------------------------------------------

def build_pipeline(weights: str, device: str, tmp: Path) -> VSPBFRPipeline:
    if weights == "full":
        from bench_identity import full_pipeline

        return full_pipeline(SHARED / "parity" / "manifest.json", device)
    from tiny_models import write_tiny_checkpoints

    write_tiny_checkpoints(tmp)
    shutil.copy(SHARED / "weights" / "detection_mobilenet0.25_Final.pth", tmp)
    return VSPBFRPipeline.from_dir(tmp, detector="retinaface_mobile0.25").to(device, torch.float32)


class AlignSpy:
    """Wraps ``pipeline.align`` on the instance and records the landmarks of the first face of each call."""

    def __init__(self, pipe: VSPBFRPipeline) -> None:
        self.pipe, self.calls = pipe, []
        original = pipe.align

        def align(images_bchw, detections):
            lm = detections.landmarks
            self.calls.append(lm[0].detach().double().cpu() if lm.shape[0] else None)
            return original(images_bchw, detections)

        pipe.align = align

    def take(self) -> list[torch.Tensor | None]:
        calls, self.calls = self.calls, []
        return calls


def detector_landmarks(pipe: VSPBFRPipeline, clip: torch.Tensor, o: RestoreOptions) -> torch.Tensor:
    """[T, 5, 2] float64 landmarks of the (single, largest) face in every frame."""
    out = []
    for t in range(clip.shape[0]):
        dets = pipe.detect(clip[t:t + 1], o)
        if len(dets) == 0:
            raise SystemExit(f"no face detected in frame {t}; try another --image or a smaller zoom")
        out.append(dets.landmarks[0].double())
    return torch.stack(out)


# -- metrics ----------------------------------------------------------------------------------------------------

def jitter(photo_lms: torch.Tensor) -> tuple[float, float]:
    """RMS deviation from the temporal mean [T, 5, 2] (photo px), and the mean inter-ocular distance."""
    dev = photo_lms - photo_lms.mean(dim=0, keepdim=True)
    iod = float((photo_lms[:, 0] - photo_lms[:, 1]).norm(dim=-1).mean())
    return float(dev.square().sum(dim=-1).mean().sqrt()), iod


def step_rms(photo_lms: torch.Tensor) -> float:
    """RMS change of the points between consecutive frames [T, 5, 2] (photo px): the frame-to-frame part."""
    return float((photo_lms[1:] - photo_lms[:-1]).square().sum(dim=-1).mean().sqrt())


def flicker(frames: torch.Tensor, m: torch.Tensor, photo_hw: tuple[int, int], center: torch.Tensor,
            radius: float) -> float:
    """Mean |frame t+1 - frame t| (0-255) in photo coordinates inside the disc, where every frame covers it."""
    h, w = photo_hw
    imgs, inside = warp(frames.permute(0, 3, 1, 2).float(), invert(m), h, w)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    disc = (xs - float(center[0])).square() + (ys - float(center[1])).square() <= radius ** 2
    mask = (disc & inside.all(dim=0)).float()
    # keep 1 px away from the frame borders (bilinear samples there mix in the zero padding)
    mask = -F.max_pool2d(-mask[None, None], 3, 1, 1)[0, 0]
    diff = (imgs[1:] - imgs[:-1]).abs().mean(dim=1)                 # [T-1, H, W]
    return float((diff * mask).sum() / (mask.sum() * diff.shape[0]) * 255.0)


def lag_profile(lms: torch.Tensor, truth: torch.Tensor, jump_at: int) -> tuple[int | None, list[float]]:
    """Per-frame error (mean point distance, frame px) and the frames after ``jump_at`` until it is < 1 px."""
    err = (lms - truth).norm(dim=-1).mean(dim=-1)
    lag = next((k - jump_at for k in range(jump_at, lms.shape[0]) if float(err[k]) < 1.0), None)
    return lag, [round(float(e), 2) for e in err]


# -- main -------------------------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", choices=("tiny", "full"), default="tiny")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--image", default="skimage_astronaut.png", help="a one-face photo in ../shared/faces/whole")
    p.add_argument("--size", type=int, default=384, help="frame size in pixels (square)")
    p.add_argument("--smooth-alignment", type=float, default=2.0)
    p.add_argument("--smooth-wplus", type=float, default=2.0)
    p.add_argument("--jump", type=float, default=24.0, help="camera jump of the lag clip, frame pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if args.frames < 4:
        p.error("--frames must be at least 4")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipeline(args.weights, args.device, Path(tmp))
    spy = AlignSpy(pipe)
    o = RestoreOptions(seed=args.seed, max_faces=1)
    photo = load_photo(args.image)
    ph, pw = photo.shape[-2:]

    # place the clip around the face of the photo
    photo_dets = pipe.detect(photo.permute(0, 2, 3, 1), o)
    if len(photo_dets) == 0:
        raise SystemExit(f"no face in {args.image}")
    face_c = photo_dets.landmarks[0].double().mean(dim=0)
    m = motion(args.frames, args.size, (float(face_c[0]), float(face_c[1]) + 20.0))
    clip = make_clip(photo, m, args.size)

    # 1. landmarks: detector (off) and smoothed (on), in photo coordinates
    raw = detector_landmarks(pipe, clip, o)
    smooth = smooth_landmarks(raw, None, args.smooth_alignment)
    raw_photo, smooth_photo = apply(m, raw), apply(m, smooth)
    j_off, iod = jitter(raw_photo)
    j_on, _ = jitter(smooth_photo)
    load = os.getloadavg()[0]

    # 2. restoration off / on, recording the landmarks each aligned with
    t0 = time.perf_counter()
    spy.take()
    out_off = torch.cat([pipe(clip[t:t + 1], o).images for t in range(clip.shape[0])])
    used_off = spy.take()
    t_off = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_on = torch.cat(list(restore_sequence(pipe, clip, o, smooth_alignment=args.smooth_alignment,
                                             smooth_wplus=args.smooth_wplus)))
    used_on = spy.take()
    t_on = time.perf_counter() - t0
    check_off = all(u is not None for u in used_off) and torch.allclose(torch.stack(used_off), raw, atol=1e-4)
    check_on = all(u is not None for u in used_on) and torch.allclose(torch.stack(used_on), smooth, atol=1e-4)

    center = raw_photo.mean(dim=(0, 1))
    radius = 1.5 * iod
    f_in = flicker(clip, m, (ph, pw), center, radius)
    f_off = flicker(out_off, m, (ph, pw), center, radius)
    f_on = flicker(out_on, m, (ph, pw), center, radius)

    # 3. lag on a sudden camera jump (detection + the driver's landmark smoothing)
    mj = motion(args.frames, args.size, (float(face_c[0]), float(face_c[1]) + 20.0), jump=args.jump)
    clip_j = make_clip(photo, mj, args.size)
    raw_j = detector_landmarks(pipe, clip_j, o)
    smooth_j = smooth_landmarks(raw_j, None, args.smooth_alignment)
    truth_j = apply(invert(mj), apply(mj, raw_j).mean(dim=0, keepdim=True).expand(args.frames, -1, -1))
    jump_at = args.frames // 2
    lag_off, err_off = lag_profile(raw_j, truth_j, jump_at)
    lag_on, err_on = lag_profile(smooth_j, truth_j, jump_at)
    plain_j = smooth_landmarks(raw_j, None, args.smooth_alignment, edge=None)    # no edge term: for comparison
    lag_plain, err_plain = lag_profile(plain_j, truth_j, jump_at)
    step = float((raw_j[jump_at] - raw_j[jump_at - 1]).norm(dim=-1).mean())

    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}, weights {args.weights}, "
          f"{args.image}: {args.frames} frames of {args.size}x{args.size}, smooth_alignment "
          f"{args.smooth_alignment:g}, smooth_wplus {args.smooth_wplus:g}, load average {load:.2f}")
    print(f"inter-ocular distance {iod:.1f} photo px; driver used the detector landmarks (off): {check_off}, "
          f"smooth_landmarks (on): {check_on}")
    print(f"{'metric':<34}{'off':>10}{'on':>10}{'off/on':>9}")
    print(f"{'landmark jitter (photo px)':<34}{j_off:>10.3f}{j_on:>10.3f}{j_off / max(j_on, 1e-9):>9.2f}")
    print(f"{'landmark jitter (/ inter-ocular)':<34}{j_off / iod:>10.4f}{j_on / iod:>10.4f}")
    s_off, s_on = step_rms(raw_photo), step_rms(smooth_photo)
    print(f"{'landmark step t->t+1 (photo px)':<34}{s_off:>10.3f}{s_on:>10.3f}{s_off / max(s_on, 1e-9):>9.2f}")
    print(f"{'flicker, input frames (0-255)':<34}{f_in:>10.3f}{f_in:>10.3f}")
    print(f"{'flicker, output (0-255)':<34}{f_off:>10.3f}{f_on:>10.3f}{f_off / max(f_on, 1e-9):>9.2f}")
    ex_off, ex_on = f_off - f_in, f_on - f_in
    print(f"{'flicker, output - input':<34}{ex_off:>10.3f}{ex_on:>10.3f}"
          f"{(ex_off / ex_on) if ex_on > 1e-9 else float('nan'):>9.2f}")
    print(f"{'seconds for the clip':<34}{t_off:>10.1f}{t_on:>10.1f}")
    print(f"lag clip: camera jump {args.jump:g} px at frame {jump_at} (detected step {step:.1f} px); "
          f"frames until < 1 px from the new position: off {lag_off}, on {lag_on} "
          f"(a plain Gaussian without the edge term: {lag_plain})")
    lo, hi = max(jump_at - 3, 0), min(jump_at + 4, args.frames)
    print(f"  error per frame {lo}..{hi - 1} (px): off {err_off[lo:hi]}; on {err_on[lo:hi]}; "
          f"plain Gaussian {err_plain[lo:hi]}")
    if args.weights == "tiny":
        print("note: tiny networks (16 px faces): the flicker rows are a smoke figure only")
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "weights": args.weights, "image": args.image, "frames": args.frames, "size": args.size,
            "smooth_alignment": args.smooth_alignment, "smooth_wplus": args.smooth_wplus,
            "threads": torch.get_num_threads(), "load_average": load, "inter_ocular_px": iod,
            "driver_landmarks_checked": {"off": check_off, "on": check_on},
            "jitter_px": {"off": j_off, "on": j_on}, "jitter_rel_iod": {"off": j_off / iod, "on": j_on / iod},
            "step_rms_px": {"off": s_off, "on": s_on},
            "flicker_255": {"input": f_in, "off": f_off, "on": f_on},
            "seconds": {"off": t_off, "on": t_on},
            "lag": {"jump_px": args.jump, "jump_at": jump_at, "detected_step_px": step, "off": lag_off,
                    "on": lag_on, "plain_gaussian": lag_plain, "error_px_off": err_off, "error_px_on": err_on,
                    "error_px_plain_gaussian": err_plain},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

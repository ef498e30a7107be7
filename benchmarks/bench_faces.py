"""Benchmark: detect + align + paste with vspbfr_core.face next to facexlib's FaceRestoreHelper.

Three workloads built from the real photos in ../shared/faces/whole:

* ``portrait``: skimage_astronaut.png, 512 x 512, 1 face;
* ``group``: a 2048 x 2048 collage of cf_02 (4 faces), a crop of gfpgan_10045 (3 faces) and the
  astronaut (1 face), 8 faces of 130-210 px;
* ``frames``: 16 video frames of 1280 x 720 (cf_02 panning across the frame), 4 faces each.

Both sides start from the host's float IMAGE tensor ``[B, H, W, 3]`` and end with one again, and the
"restorer" is the identity (the aligned crops are pasted back as they are), so only the face handling
is timed.  facexlib's side is what GFPGAN / CodeFormer / facerestore_cf run per image: float tensor ->
uint8 BGR, ``get_face_landmarks_5(resize=640, eye_dist_threshold=5)``, ``align_warp_face``,
``get_inverse_affine``, ``paste_faces_to_input_image`` (square soft mask), -> float tensor.  Its
85 MB face-parsing network, which FaceRestoreHelper always loads (and would download), is replaced by
a stub since ``use_parse=False`` never uses it.  Both use the RetinaFace MobileNet-0.25 weights.

facexlib's ``resize=640`` scales the *short* side to 640; ours scales the *long* side to at most
``detect_size=640``, so for non-square inputs ours detects on fewer pixels.  The ``ours@fx-res`` row
runs ours at facexlib's detection resolution so the comparison can be read both ways.

``--seams`` measures the paste-back masks instead (no timing): how visible the seam of each mask shape is on the
real photos, and how much of the face and of the rest it covers (see :func:`seam_table`).

Usage::

    python benchmarks/bench_faces.py [--device cpu|cuda] [--repeats 3] [--weights DIR] [--threads N]
    python benchmarks/bench_faces.py --seams [--feather 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vspbfr_core.face import align_faces, detect_faces, load_detector, paste_faces  # noqa: E402

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))
WHOLE = SHARED / "faces" / "whole"


def load_rgb(name: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(WHOLE / name) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())                                     # [H, W, 3]


def fit(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [H, W, 3] to fit inside height x width (aspect kept) and centre it on a grey tile."""
    h, w = img.shape[:2]
    s = min(height / h, width / w)
    nh, nw = round(h * s), round(w * s)
    x = F.interpolate(img.permute(2, 0, 1)[None], size=(nh, nw), mode="bicubic", antialias=True,
                      align_corners=False)[0].clamp(0, 1).permute(1, 2, 0)
    tile = torch.full((height, width, 3), 0.5)
    top, left = (height - nh) // 2, (width - nw) // 2
    tile[top:top + nh, left:left + nw] = x
    return tile


def workloads() -> dict[str, tuple[torch.Tensor, int]]:
    """name -> (IMAGE [B, H, W, 3], expected faces in total)."""
    astronaut = load_rgb("skimage_astronaut.png")
    group4 = load_rgb("cf_02.png")
    family3 = load_rgb("gfpgan_10045.png")
    top = fit(group4, 1024, 2048)                                             # 4 faces, ~200 px
    bottom = torch.cat([fit(family3[60:560, 120:500], 1024, 1024),           # 3 faces, ~130-160 px
                        fit(astronaut, 1024, 1024)], dim=1)                   # 1 face, ~185 px
    group = torch.cat([top, bottom], dim=0)[None]                             # [1, 2048, 2048, 3]
    wide = fit(group4, 720, 1400)                                             # 1400 x 720 strip
    frames = torch.stack([wide[:, 8 * k:8 * k + 1280] for k in range(16)])  # pan: [16, 720, 1280, 3]
    return {"portrait": (astronaut[None], 1), "group": (group, 8), "frames": (frames, 64)}


#----------------------------------------------------------------------------


def run_ours(detector, images: torch.Tensor, device: torch.device, detect_size: int) -> tuple[torch.Tensor, int]:
    x = images.to(device)
    dets = detect_faces(detector, x, detect_size=detect_size)
    bchw = x.permute(0, 3, 1, 2)
    aligned = align_faces(bchw, dets)
    out, _ = paste_faces(bchw, aligned.crops, aligned)
    out = out.permute(0, 2, 3, 1).contiguous().cpu()
    return out, len(dets)


def make_helper(weights: Path, device: torch.device):
    import facexlib.utils.face_restoration_helper as frh

    frh.init_parsing_model = lambda **kwargs: None       # use_parse=False never touches it; avoid 85 MB download
    return frh.FaceRestoreHelper(upscale_factor=1, face_size=512, crop_ratio=(1, 1),
                                 det_model="retinaface_mobile0.25", save_ext="png", use_parse=False,
                                 device=device, model_rootpath=str(weights))


def run_facexlib(helper, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    outs, faces = [], 0
    for frame in images:
        bgr = (frame.numpy()[:, :, ::-1] * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        helper.clean_all()
        helper.read_image(bgr)
        helper.get_face_landmarks_5(only_center_face=False, resize=640, eye_dist_threshold=5)
        helper.align_warp_face()
        for crop in helper.cropped_faces:
            helper.add_restored_face(crop)
        helper.get_inverse_affine(None)
        pasted = helper.paste_faces_to_input_image()
        faces += len(helper.cropped_faces)
        outs.append(torch.from_numpy(pasted[:, :, ::-1].astype(np.float32) / 255.0))
    return torch.stack(outs), faces


def timed_interleaved(fns: dict[str, object], repeats: int, sync) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per function; the functions take turns so background load hits them alike."""
    results = {name: fn() for name, fn in fns.items()}      # warm-up (also gives the face counts)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}, results


#----------------------------------------------------------------------------
# Seams


SEAM_PHOTOS = ("skimage_astronaut.png", "gfpgan_10045.png", "cf_02.png", "gfpgan_00.jpg", "cf_00.jpg", "cf_04.jpg")
SEAM_SHAPES = ("square", "ellipse", "landmarks")      # parsing needs its downloaded network (not reachable here)
TONE = 2.0 / 255.0          # stand-in restorer: a small tone shift (what colour correction leaves)
CONTRAST_FLOOR = 2.0 / 255.0    # seam visibility: mismatch / (local contrast + this), a contrast-masking model
BACKGROUND_BLUR = 3.0       # stand-in restorer: sigma (crop pixels at 512) of the regenerated, smoother surroundings


def _dlib_points(crops: np.ndarray):
    """dlib's 68 landmarks on each aligned crop ``[F, 512, 512, 3]`` uint8 (None where dlib finds no face)."""
    import dlib

    from vspbfr_core.identity.dlib import dlib_model_files     # the models' folder, without pkg_resources

    folder = dlib_model_files()[0].parent
    predictor = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
    finder = dlib.get_frontal_face_detector()
    out = []
    for crop in crops:
        found = finder(crop, 1)
        box = max(found, key=lambda r: r.area()) if len(found) else dlib.rectangle(96, 128, 416, 480)
        shape = predictor(crop, box)
        out.append(np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64))
    return out


def _polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    from scipy.spatial import ConvexHull

    hull = points[ConvexHull(points).vertices]
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in hull], fill=255)
    return np.asarray(img, dtype=np.float64) / 255.0


def face_regions(points: np.ndarray, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(core, face) masks of one crop from dlib's 68 points: ``core`` the hull of the jaw and brows (cheeks, eyes,
    nose, mouth, chin), ``face`` the same with the brows lifted by 0.6 of the face scale (the forehead)."""
    eyes = 0.5 * (points[36:42].mean(0) + points[42:48].mean(0))
    mouth = 0.5 * (points[48] + points[54])
    scale = 0.5 * (np.linalg.norm(points[45] - points[36]) * 0.75 + np.linalg.norm(mouth - eyes))
    up = (eyes - mouth) / max(np.linalg.norm(eyes - mouth), 1e-6)
    core = _polygon_mask(points[:27], size)
    forehead = points[17:27] + 0.6 * scale * up
    face = _polygon_mask(np.concatenate([points[:27], forehead]), size)
    return core, face


def stand_in_restored(crops: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """What a generative restorer does to a crop ``[F, 3, S, S]``, as far as seams go: the face (``face`` [F, S, S],
    soft) comes back with more detail (unsharp mask), the surroundings regenerated smoother (hair and background
    blurred), everything with a small tone shift."""
    from vspbfr_core.face.paste import _gaussian_blur

    soft = _gaussian_blur(face[:, None].double(), 4.0).clamp(0, 1)
    x = crops.double()
    blurred = _gaussian_blur(x, BACKGROUND_BLUR * crops.shape[-1] / 512)
    sharpened = (x + 0.8 * (x - _gaussian_blur(x, 1.5))).clamp(0, 1)
    return (soft * sharpened + (1 - soft) * blurred + TONE).clamp(0, 1).to(crops.dtype)


def seam_numbers(alpha: torch.Tensor, restored: torch.Tensor, original: torch.Tensor, core: torch.Tensor,
                 face: torch.Tensor) -> dict[str, float]:
    """For crop-space masks ``alpha`` [F, S, S]:

    * ``seam``: the mean |restored - original| (8-bit levels, channel mean) along the mask's edge, weighted by the
      mask's gradient: the composite's gradient is ``a grad R + (1 - a) grad O + (R - O) grad a``, and the last
      term is the edge the paste itself draws; lower is a less visible seam;
    * ``visible``: the same mismatch divided by the original's local contrast (standard deviation over 9 x 9 crop
      pixels, plus ``CONTRAST_FLOOR``): a step in a flat background shows, the same step along the jaw line or
      in hair is masked by the texture around it (contrast masking); about 1 means "as strong as the texture";
    * ``face``: the mean mask inside the face core (cheeks, eyes, nose, mouth, chin): how much of the face is
      restored (higher is better);
    * ``off``: the share of the pasted area (sum of the mask) outside the face with its forehead, dilated by
      4 % of the crop: hair, ears, neck and background pasted over (lower is better).
    """
    a = alpha.double()
    gy, gx = torch.gradient(a, dim=(1, 2))
    grad = torch.sqrt(gx * gx + gy * gy)
    diff = (restored.double() - original.double()).abs().mean(dim=1)                     # [F, S, S]
    seam = float((diff * grad).sum() / grad.sum().clamp(min=1e-12)) * 255.0
    gray = original.double().mean(dim=1, keepdim=True)
    mean = torch.nn.functional.avg_pool2d(gray, 9, 1, 4, count_include_pad=False)
    var = torch.nn.functional.avg_pool2d(gray * gray, 9, 1, 4, count_include_pad=False) - mean * mean
    contrast = var.clamp(min=0).sqrt()[:, 0] + CONTRAST_FLOOR
    visible = float((diff / contrast * grad).sum() / grad.sum().clamp(min=1e-12))
    covered = float((a * core).sum() / core.sum().clamp(min=1e-12))
    k = max(3, int(0.04 * a.shape[-1]) * 2 + 1)
    grown = torch.nn.functional.max_pool2d(face.double()[:, None], k, 1, k // 2)[:, 0]
    off = float((a * (1 - grown)).sum() / a.sum().clamp(min=1e-12))
    return {"seam": seam, "visible": visible, "face": covered, "off": off}


def seam_table(detector, feather: float) -> list[tuple[str, int, dict[str, dict[str, float]]]]:
    """Per photo: the faces measured and, per mask shape, :func:`seam_numbers` over its faces."""
    from vspbfr_core.face import face_mask
    from vspbfr_core.face.masks import crop_landmarks, landmark_masks

    rows = []
    for name in SEAM_PHOTOS:
        image = load_rgb(name)[None]
        dets = detect_faces(detector, image)
        aligned = align_faces(image.permute(0, 3, 1, 2), dets)
        if not len(aligned):
            continue
        crops = aligned.crops.double()
        as_uint8 = (crops.permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        regions = [face_regions(p) for p in _dlib_points(as_uint8)]
        core = torch.from_numpy(np.stack([r[0] for r in regions]))
        face = torch.from_numpy(np.stack([r[1] for r in regions]))
        restored = stand_in_restored(crops, face)
        masks = {
            "square": face_mask(512, "square", feather, dtype=torch.float64).expand(len(aligned), 512, 512),
            "ellipse": face_mask(512, "ellipse", feather, dtype=torch.float64).expand(len(aligned), 512, 512),
            "landmarks": landmark_masks(crop_landmarks(aligned, 512), 512, feather, dtype=torch.float64),
        }
        rows.append((name, len(aligned), {k: seam_numbers(m, restored, crops, core, face) for k, m in masks.items()}))
    return rows


def print_seams(detector, feather: float) -> None:
    rows = seam_table(detector, feather)
    print(f"paste-back masks on real photos (feather {feather:g}); stand-in restorer: sharper face, surroundings "
          f"blurred (sigma {BACKGROUND_BLUR:g}), tone +{TONE * 255:.0f}")
    print("seam: mismatch along the mask edge, 8-bit levels; visible: that mismatch over the local contrast (lower: "
          "less visible); face: mean mask on the face core; off: share of the pasted area outside the face (hair, "
          "ears, neck, background)")
    head = f"{'photo':<24} {'faces':>5} " + " ".join(f"{s + ' seam/visible/face/off':>33}" for s in SEAM_SHAPES)
    print(head)
    print("-" * len(head))
    total: dict[str, list[tuple[int, dict[str, float]]]] = {s: [] for s in SEAM_SHAPES}
    for name, count, by_shape in rows:
        cells = []
        for shape in SEAM_SHAPES:
            v = by_shape[shape]
            total[shape].append((count, v))
            cells.append(f"{v['seam']:7.2f} {v['visible']:6.2f} {v['face'] * 100:7.1f}% {v['off'] * 100:7.1f}%")
        print(f"{name:<24} {count:>5} " + " ".join(f"{c:>33}" for c in cells))
    faces = sum(c for c, _ in total[SEAM_SHAPES[0]])
    cells = []
    for shape in SEAM_SHAPES:
        mean = {k: sum(c * v[k] for c, v in total[shape]) / faces for k in ("seam", "visible", "face", "off")}
        cells.append(f"{mean['seam']:7.2f} {mean['visible']:6.2f} {mean['face'] * 100:7.1f}% {mean['off'] * 100:7.1f}%")
    print(f"{'all (face-weighted)':<24} {faces:>5} " + " ".join(f"{c:>33}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--weights", default=str(SHARED / "weights"), help="folder with detection_mobilenet0.25_Final.pth")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--seams", action="store_true", help="measure the paste masks' seams instead of timing")
    p.add_argument("--feather", type=float, default=50.0, help="--seams: the masks' feather (pixels of a 512 crop)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import cv2
            cv2.setNumThreads(args.threads)
        except ImportError:
            pass
    if not WHOLE.is_dir():
        print(f"skipped: {WHOLE} not present")
        return 0
    if args.seams:
        print_seams(load_detector("retinaface_mobile0.25", args.weights), args.feather)
        return 0
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    detector = load_detector("retinaface_mobile0.25", args.weights, device=device)

    helper = None
    try:
        helper = make_helper(Path(args.weights), device)
    except ImportError:
        print("facexlib is not installed: its column is skipped (pip install facexlib)")

    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({what}), "
          f"torch {torch.__version__}, median of {args.repeats} interleaved runs after one warm-up")
    header = (f"{'workload':<10} {'input':<20} {'faces':>5} {'ours s':>8} {'ours@fx-res s':>13} {'facexlib s':>10} "
              f"{'fx/ours':>8}")
    print(header)
    print("-" * len(header))
    for name, (images, expected) in workloads().items():
        b, h, w, _ = images.shape
        fx_long = round(max(h, w) * 640 / min(h, w))          # facexlib: short side -> 640
        fns = {"ours": lambda: run_ours(detector, images, device, 640),
               "match": lambda: run_ours(detector, images, device, fx_long)}
        if helper is not None:
            fns["fx"] = lambda: run_facexlib(helper, images)
        times, results = timed_interleaved(fns, args.repeats, sync)
        t_ours, t_match, n_ours = times["ours"], times["match"], results["ours"][1]
        fx_cell, ratio_cell = "n/a", "n/a"
        n_fx = None
        if helper is not None:
            t_fx, n_fx = times["fx"], results["fx"][1]
            fx_cell, ratio_cell = f"{t_fx:10.3f}", f"{t_fx / t_ours:7.2f}x"
        counts = f"{n_ours}" if n_fx in (None, n_ours) else f"{n_ours}/{n_fx}"
        if n_ours != expected:
            counts += f" (expected {expected})"
        shape = f"{b}x{h}x{w}"
        print(f"{name:<10} {shape:<20} {counts:>5} {t_ours:8.3f} {t_match:13.3f} {fx_cell:>10} {ratio_cell:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``vspbfr restore INPUT... -o OUT_DIR``: restore every chosen face of image files.

Inputs are files, folders (searched recursively) or glob patterns; png, jpg/jpeg and webp are read,
EXIF orientation is applied, alpha is kept, and each result is written under the input's file name
(folder inputs keep their sub-folders) in the input's format.  A file that fails is reported and the
others go on; the exit status is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
DETECTORS = {"resnet50": "retinaface_resnet50", "mobile0.25": "retinaface_mobile0.25"}

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore the faces in image files",
                       description="Restore every chosen face of image files and paste them back seamlessly.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output folder")
    g = p.add_argument_group("models and device")
    g.add_argument("--models", metavar="DIR", default=None,
                   help="models folder (default: $VSPBFR_MODELS, else the per-user folder; see `vspbfr info`)")
    g.add_argument("--detector", choices=sorted(DETECTORS), default="resnet50", help="RetinaFace backbone")
    g.add_argument("--detector-dir", metavar="DIR", default=None, help="folder with the detector file, if elsewhere")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    g.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="network precision (auto: float32; the W+ diffusion always runs in float32)")
    g.add_argument("--chunk-size", type=int, default=4, help="faces per network batch (halved on out-of-memory)")
    g.add_argument("--low-memory", action="store_true", help="keep only the running network on the device")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads for the networks (default 0: PyTorch's choice, one per physical core)")
    g.add_argument("--tf32", action="store_true",
                   help="CUDA float32: TF32 for the feature bank and restoration (faster, ~1e-3 less exact); "
                        "the encoder and W+ diffusion always run in full float32")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (slow first batch, faster after: for folders and video frames)")
    g.add_argument("--aligned", action="store_true",
                   help="inputs are already aligned square face crops: skip detection and paste-back")
    s = p.add_argument_group("face selection")
    s.add_argument("--threshold", type=float, default=None, help="detector score threshold (default 0.97)")
    s.add_argument("--min-size", type=float, default=0.0, help="ignore faces smaller than this (pixels, box short side)")
    s.add_argument("--max-faces", type=int, default=0, help="at most this many faces per image, largest first (0: all)")
    s.add_argument("--select", default="all",
                   help='"all", "largest", "center" or face indices such as "0,2" (see `vspbfr faces`)')
    s.add_argument("--order", choices=("left-right", "top-bottom", "area", "score"), default="left-right",
                   help="how faces are numbered for --select")
    r = p.add_argument_group("restoration")
    r.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives byte-identical files")
    r.add_argument("--prompt-mix", type=float, default=1.0,
                   help="fidelity: 1 uses the diffused style prompt (official), 0 the encoder's own W+ codes")
    r.add_argument("--bank-scale", type=float, default=1.0,
                   help="fidelity: scale of the StyleGAN feature-bank (generative prior) term; <1 follows the input more")
    r.add_argument("--visibility", type=float, default=1.0, help="blend with the original face (0..1)")
    r.add_argument("--color-correction", choices=("none", "meanstd", "wavelet"), default="none",
                   help="match the restored face's colours to the original")
    r.add_argument("--mask-shape", choices=("square", "ellipse"), default="square", help="paste-back mask shape")
    r.add_argument("--feather", type=float, default=None, help="paste-back mask softness (crop pixels at 512)")
    r.add_argument("--upscale", type=float, default=1.0, help="upscale the whole image by this factor (1..8)")
    o = p.add_argument_group("extra outputs")
    o.add_argument("--save-faces", action="store_true", help="also write the aligned crops before/after to OUT_DIR/faces")
    o.add_argument("--compare", action="store_true", help="also write a side-by-side image to OUT_DIR/compare")
    p.set_defaults(func=run)


def collect_inputs(items: list[str]) -> list[tuple[Path, Path]]:
    """(file, output path relative to OUT_DIR) for every image named by files, folders or globs."""
    found: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix.lower() in EXTENSIONS:
                    found.append((f, f.relative_to(path)))
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in EXTENSIONS]
            if not files:
                missing.append(item)
            found += [(m, Path(m.name)) for m in files]
        else:
            missing.append(item)
    if missing:
        from ..errors import InputError
        raise InputError(f"no image found for: {', '.join(missing)}")
    seen: set[Path] = set()
    unique = []
    for f, rel in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append((f, rel))
    return unique


def read_image(path: Path) -> Any:
    """File -> IMAGE ``[1, H, W, C]`` float32 in [0, 1] (C = 1, 3 or 4), EXIF orientation applied."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode.startswith("I;16") else 255.0)
            arr = np.clip(arr, 0.0, 1.0)[..., None]
            return torch.from_numpy(arr.copy())[None]
        if im.mode not in ("RGB", "RGBA", "L"):
            has_alpha = im.mode in ("LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


def write_image(image: Any, path: Path) -> None:
    """IMAGE ``[H, W, C]`` in [0, 1] -> file; the format follows the suffix (alpha dropped for JPEG)."""
    import numpy as np
    import torch
    from PIL import Image

    arr = image.clamp(0, 1).mul(255.0).add(0.5).floor().to(dtype=torch.uint8).cpu().numpy()
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    im = Image.fromarray(np.ascontiguousarray(arr))
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    if suffix in (".jpg", ".jpeg"):
        if im.mode == "RGBA":
            im = im.convert("RGB")
        im.save(tmp, format="JPEG", quality=95, subsampling=0)
    elif suffix == ".webp":
        im.save(tmp, format="WEBP", quality=95, method=4)
    else:
        im.save(tmp, format="PNG")
    tmp.replace(path)


class FileProgress:
    """Progress over files and, within a file, over its faces; redrawn in place on a terminal."""

    def __init__(self, total_files: int, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total_files
        self.index = 0
        self.name = ""
        self.last = ""

    def start(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.draw(0, 1, "load")

    def draw(self, done: int, total: int, stage: str) -> None:
        width = 24
        frac = (self.index + done / max(total, 1)) / max(self.total, 1)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = f"[{bar}] {self.index + 1}/{self.total} {self.name}: {stage} {done}/{total}"
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
            self.stream.flush()
        self.last = line

    def finish_file(self, message: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 110 + "\r")
        self.stream.write(message + "\n")
        self.stream.flush()


def _pick_device(name: str) -> str:
    import torch

    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            from ..errors import VSPBFRError
            raise VSPBFRError("--device cuda: CUDA is not available in this PyTorch build or machine")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..pipeline import RestoreOptions, VSPBFRPipeline

    files = collect_inputs(args.inputs)
    out_dir = Path(args.out)
    device = _pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
    t0 = time.perf_counter()
    pipe = VSPBFRPipeline.from_dir(args.models, detector=None if args.aligned else DETECTORS[args.detector],
                                   detector_dir=args.detector_dir, chunk_size=args.chunk_size,
                                   low_memory=args.low_memory, compile=args.compile,
                                   allow_tf32=args.tf32).to(device, dtype)
    load_s = time.perf_counter() - t0
    options = RestoreOptions(
        seed=args.seed, threshold=args.threshold, min_size=args.min_size, max_faces=args.max_faces,
        selection=args.select, order=args.order, prompt_mix=args.prompt_mix, bank_scale=args.bank_scale,
        visibility=args.visibility, color_correction=None if args.color_correction == "none" else args.color_correction,
        mask_shape=args.mask_shape, feather=args.feather, upscale=args.upscale)
    options.validate()
    progress = FileProgress(len(files))
    failed: list[str] = []
    faces_total = 0
    t_run = time.perf_counter()
    for i, (src, rel) in enumerate(files):
        progress.start(i, src.name)
        t_file = time.perf_counter()
        try:
            image = read_image(src)
            if args.aligned:
                result = pipe.restore_aligned(image, options, callback=progress.draw)
            else:
                result = pipe(image, options, callback=progress.draw)
            dst = out_dir / rel
            write_image(result.images[0], dst)
            if args.save_faces:
                _save_faces(out_dir / "faces", rel, result)
            if args.compare:
                _save_compare(out_dir / "compare" / rel.with_suffix(".png"), image[0], result.images[0])
            faces_total += result.faces_found
            progress.finish_file(f"{src}: {result.faces_found} face(s) -> {dst} ({time.perf_counter() - t_file:.1f} s)")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one bad file must not stop a folder run: report it, go on, exit non-zero
            failed.append(str(src))
            progress.finish_file(f"{src}: FAILED: {type(exc).__name__}: {exc}")
            log.debug("failure details for %s", src, exc_info=True)
    elapsed = time.perf_counter() - t_run
    per_face = f"{elapsed / faces_total:.2f} s/face" if faces_total else "no faces"
    print(f"done: {len(files) - len(failed)}/{len(files)} files, {faces_total} faces, {elapsed:.1f} s "
          f"({per_face}; model load {load_s:.1f} s) on {device} {str(dtype).replace('torch.', '')}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _save_faces(folder: Path, rel: Path, result: Any) -> None:
    stem = rel.with_suffix("")
    for k in range(result.faces_found):
        write_image(result.crops[k].permute(1, 2, 0), folder / f"{stem}_{k:02d}_before.png")
        write_image(result.restored_crops[k].permute(1, 2, 0), folder / f"{stem}_{k:02d}_after.png")


def _save_compare(path: Path, before: Any, after: Any) -> None:
    import torch
    import torch.nn.functional as F

    def rgb(x: Any) -> Any:
        x = x[..., :3] if x.shape[-1] == 4 else x
        return x.expand(*x.shape[:-1], 3) if x.shape[-1] == 1 else x

    a, b = rgb(before), rgb(after)
    if a.shape[:2] != b.shape[:2]:
        a = F.interpolate(a.permute(2, 0, 1)[None], size=b.shape[:2], mode="bicubic", align_corners=False)[0]
        a = a.permute(1, 2, 0).clamp(0, 1)
    write_image(torch.cat([a, b], dim=1), path)

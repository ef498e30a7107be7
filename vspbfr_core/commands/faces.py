"""``vspbfr faces IMAGE... [--detector NAME] [--detector-dir DIR] [--json]``: list the faces of images.

Each face is printed with its index in the chosen order (what ``--select 0,2`` of ``vspbfr restore``
refers to when the same detector and selection options are given), box, score and size.  ``--json``
prints one stable document instead::

    {"format": "vspbfr-faces-v1", "detector": ..., "options": {...},
     "images": [{"path": ..., "width": W, "height": H, "faces": [
         {"index": i, "box": [x1, y1, x2, y2], "landmarks": [[x, y] x 5], "score": s, "size": px}]}]}

A file that cannot be read is reported (``"error"`` in JSON) and the others go on; the exit status is
1 when any file failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DETECTORS = {"resnet50": "retinaface_resnet50", "mobile0.25": "retinaface_mobile0.25"}
JSON_FORMAT = "vspbfr-faces-v1"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faces", help="list the faces found in images (indices for --select)",
                       description="Detect faces with RetinaFace and list them with the index that face "
                                   "selection uses, their box, score and size.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files (png, jpg, webp, ...)")
    p.add_argument("--detector", default="resnet50", type=_detector_name,
                   help="RetinaFace backbone: resnet50 or mobile0.25 (facexlib's retinaface_* names work too)")
    p.add_argument("--detector-dir", metavar="DIR", default=None, help="folder with the detector file")
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models folder searched after --detector-dir "
                        "(default: $VSPBFR_MODELS, else the per-user folder)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    s = p.add_argument_group("face selection (same meaning as in `vspbfr restore`)")
    s.add_argument("--threshold", type=float, default=None, help="detector score threshold (default 0.97)")
    s.add_argument("--min-size", type=float, default=0.0,
                   help="ignore faces smaller than this (pixels, box short side)")
    s.add_argument("--max-faces", type=int, default=0, help="at most this many faces per image, largest first (0: all)")
    s.add_argument("--select", default="all", help='"all", "largest", "center" or indices such as "0,2"')
    s.add_argument("--order", choices=("left-right", "top-bottom", "area", "score"), default="left-right",
                   help="how faces are numbered")
    s.add_argument("--detect-size", type=int, default=640,
                   help="detection runs on a copy whose long side is at most this (0: full size)")
    p.set_defaults(func=run)


def _detector_name(text: str) -> str:
    name = DETECTORS.get(text, text)
    if name not in DETECTORS.values():
        raise argparse.ArgumentTypeError(f"unknown detector {text!r}: use {', '.join(DETECTORS)}")
    return name


def _device(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def read_image(path: Path) -> Any:
    """File -> IMAGE ``[1, H, W, C]`` float32 in [0, 1] (C = 1, 3 or 4), EXIF orientation applied."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
        else:
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(0)


def run(args: argparse.Namespace) -> int:
    from ..errors import VSPBFRError
    from ..face import DEFAULT_THRESHOLD, detect_faces, load_detector
    from ..face.detect import parse_selection
    from ..paths import find_model_file, resolve_models_dir

    parse_selection(args.select)                                   # fail before loading anything
    path = find_model_file(args.detector, [resolve_models_dir(args.models)], detector_dir=args.detector_dir)
    detector = load_detector(args.detector, [path.parent], device=_device(args.device))
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    options = {"threshold": threshold, "min_size": args.min_size, "max_faces": args.max_faces,
               "selection": args.select, "order": args.order, "detect_size": args.detect_size}
    results: list[dict[str, Any]] = []
    failed = 0
    for name in args.inputs:
        entry: dict[str, Any] = {"path": name}
        try:
            image = read_image(Path(name))
            dets = detect_faces(detector, image, **options)
        except (OSError, ValueError, VSPBFRError) as exc:   # unreadable file, bad image: report and go on
            failed += 1
            entry["error"] = f"{type(exc).__name__}: {exc}"
            results.append(entry)
            if not args.json:
                print(f"{name}: error: {exc}", file=sys.stderr)
            continue
        height, width = image.shape[1:3]
        entry.update(width=int(width), height=int(height),
                     faces=[{k: v for k, v in face.items() if k != "image"} for face in dets.to_json()])
        results.append(entry)
        if not args.json:
            _print_table(entry)
    if args.json:
        doc = {"format": JSON_FORMAT, "detector": args.detector, "weights": str(path), "options": options,
               "images": results}
        print(json.dumps(doc, indent=2))
    return 1 if failed else 0


def _print_table(entry: dict[str, Any]) -> None:
    faces = entry["faces"]
    print(f"{entry['path']} ({entry['width']}x{entry['height']}): {len(faces)} face{'s' if len(faces) != 1 else ''}")
    if not faces:
        return
    print(f"  {'index':>5}  {'x1':>8} {'y1':>8} {'x2':>8} {'y2':>8}  {'score':>6}  {'size':>7}")
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        print(f"  {face['index']:>5}  {x1:8.1f} {y1:8.1f} {x2:8.1f} {y2:8.1f}  "
              f"{face['score']:6.3f}  {face['size']:7.1f}")

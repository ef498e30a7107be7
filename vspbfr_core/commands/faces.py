"""``vspbfr faces INPUT... [--detector NAME] [--detector-dir DIR] [--json]``: list the faces of images.

Inputs are collected exactly as ``vspbfr restore`` collects them: files, folders (searched recursively) and glob
patterns; an INPUT that names no image is an error, and an unreadable sub-folder or broken link is reported as a
failed entry (see :mod:`vspbfr_core.commands.inputs`).

Each face is printed with its index in the chosen order (what ``--select 0,2`` of ``vspbfr restore``
refers to when the same detector and selection options are given), box, score and size.  ``--json``
prints one stable document instead::

    {"format": "vspbfr-faces-v1", "detector": ..., "options": {...},
     "images": [{"path": ..., "width": W, "height": H, "faces": [
         {"index": i, "box": [x1, y1, x2, y2], "landmarks": [[x, y] x 5], "score": s, "size": px}]}]}

Images are read as :mod:`vspbfr_core.imagefile` describes (formats, 16-bit and float images, the
100-megapixel limit checked before decoding, animated files refused).  A file that cannot be read is
reported on one line (``"error"`` in JSON) and the others go on; the exit status is 1 when any file
failed.  ``--device`` accepts auto, cpu, cuda, cuda:N, mps or another PyTorch device; one that this
machine lacks is an error before the detector is loaded.  Numeric options are range-checked when the
command line is parsed (see :func:`vspbfr_core.cli.number`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..cli import number
from .options import add_detector_options, add_device_option, add_selection_options

JSON_FORMAT = "vspbfr-faces-v1"

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faces", help="list the faces found in images (indices for --select)",
                       description="Detect faces with RetinaFace and list them with the index that face "
                                   "selection uses, their box, score and size.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or glob "
                                                             "patterns, as for `vspbfr restore`")
    add_detector_options(p)
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models folder searched after --detector-dir "
                        "(default: $VSPBFR_MODELS, else the per-user folder)")
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    s = p.add_argument_group("face selection (same meaning as in `vspbfr restore`)")
    add_selection_options(s)
    s.add_argument("--detect-size", metavar="PX", type=number(int, low=0), default=640,
                   help="detection runs on a copy whose long side is at most this (0: full size)")
    p.set_defaults(func=run)


def _error_text(exc: BaseException, path: Path) -> str:
    text = " ".join(str(exc).split())
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..errors import VSPBFRError
    from ..face import DEFAULT_THRESHOLD, detect_faces, load_detector
    from ..face.detect import parse_selection
    from ..imagefile import read_image
    from ..paths import choose_detector, find_model_file, resolve_models_dir
    from .inputs import collect_inputs

    parse_selection(args.select)                                   # fail before loading anything
    device = resolve_device(args.device, what="--device")
    collected = collect_inputs(args.inputs)
    dirs = [resolve_models_dir(args.models)]
    name = choose_detector(args.detector, dirs, detector_dir=args.detector_dir)
    path = find_model_file(name, dirs, detector_dir=args.detector_dir)
    detector = load_detector(name, [path.parent], device=device)
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    options = {"threshold": threshold, "min_size": args.min_size, "max_faces": args.max_faces,
               "selection": args.select, "order": args.order, "detect_size": args.detect_size}
    results: list[dict[str, Any]] = []
    failed = 0
    for bad, reason in collected.failures:                        # unreadable sub-folders, broken links
        failed += 1
        results.append({"path": str(bad), "error": f"InputError: {reason}"})
        if not args.json:
            print(f"{bad}: error: {reason}", file=sys.stderr)
    for src, _ in collected.files:
        entry: dict[str, Any] = {"path": str(src)}
        try:
            image = read_image(src).pixels
            dets = detect_faces(detector, image, **options)
        except KeyboardInterrupt:
            raise
        except Exception as exc:   # unreadable file, bad image, a failing detector: report it and go on
            failed += 1
            text = _error_text(exc, src)
            entry["error"] = f"{type(exc).__name__}: {text}"
            results.append(entry)
            if not args.json:
                print(f"{src}: error: {text if isinstance(exc, VSPBFRError) else entry['error']}", file=sys.stderr)
            log.debug("failure details for %s", src, exc_info=True)
            continue
        height, width = image.shape[1:3]
        entry.update(width=int(width), height=int(height),
                     faces=[{k: v for k, v in face.items() if k != "image"} for face in dets.to_json()])
        results.append(entry)
        if not args.json:
            _print_table(entry)
    if args.json:
        doc = {"format": JSON_FORMAT, "detector": name, "weights": str(path), "options": options,
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

"""Draw docs/mask_shapes.jpg for the README: the paste-back mask shapes side by side on a real photo.

The photo is skimage's astronaut (NASA, public domain; ``../shared/faces/whole/skimage_astronaut.png``, also
``skimage.data.astronaut()``).  Each panel shows the photo around the face where the paste may change it (bright)
and where it keeps the original (darkened), with the mask's 50 % line in yellow: what a restored face replaces.
``parsing`` needs its downloaded network (``vspbfr download --only parsing``); pass ``--parser FILE`` to add its
panel.

Usage::

    python benchmarks/mask_picture.py [--out docs/mask_shapes.jpg] [--parser parsing_parsenet.pth]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_faces import SHARED, load_rgb  # noqa: E402
from vspbfr_core.face import align_faces, detect_faces, load_detector, paste_faces  # noqa: E402

PANEL = 320


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "mask_shapes.jpg"))
    p.add_argument("--parser", default=None, help="parsing_parsenet.pth: adds the parsing panel")
    args = p.parse_args(argv)
    image = load_rgb("skimage_astronaut.png")[None]                       # [1, H, W, 3]
    detector = load_detector("retinaface_mobile0.25", [SHARED / "weights"])
    dets = detect_faces(detector, image)
    bchw = image.permute(0, 3, 1, 2)
    aligned = align_faces(bchw, dets)
    shapes: list[tuple[str, dict]] = [("square", {}), ("ellipse", {}), ("landmarks", {})]
    if args.parser:
        from vspbfr_core.face.parsing import load_parser
        shapes.append(("parsing", {"parser": load_parser("parsenet", args.parser)}))
    x0, y0, x1, y1 = dets.boxes[0].tolist()
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, 2.2 * max(x1 - x0, y1 - y0)
    box = [int(max(0, cx - side / 2)), int(max(0, cy - side / 2 - 0.05 * side))]
    box += [int(min(image.shape[2], box[0] + side)), int(min(image.shape[1], box[1] + side))]
    panels = []
    for name, extra in shapes:
        _, mask = paste_faces(bchw, aligned.crops, aligned, mask_shape=name, **extra)
        m = mask[0].numpy()[box[1]:box[3], box[0]:box[2], None]
        photo = image[0].numpy()[box[1]:box[3], box[0]:box[2]]
        shown = photo * (0.3 + 0.7 * m)
        edge = np.abs(m[..., 0] - 0.5) < 0.02
        shown[edge] = (1.0, 0.85, 0.0)
        tile = Image.fromarray((shown * 255 + 0.5).clip(0, 255).astype(np.uint8)).resize((PANEL, PANEL),
                                                                                         Image.LANCZOS)
        canvas = Image.new("RGB", (PANEL, PANEL + 28), (255, 255, 255))
        canvas.paste(tile, (0, 28))
        ImageDraw.Draw(canvas).text((8, 8), name + (" (default)" if name == "landmarks" else ""), fill=(0, 0, 0))
        panels.append(canvas)
    out = Image.new("RGB", (len(panels) * (PANEL + 8) - 8, PANEL + 28), (255, 255, 255))
    for k, panel in enumerate(panels):
        out.paste(panel, (k * (PANEL + 8), 0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out, quality=88, optimize=True)
    print(f"{args.out}: {out.size[0]}x{out.size[1]}, {Path(args.out).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())

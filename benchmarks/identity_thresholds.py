"""Measure where dlib's identity separates people on the real photos of ../shared/faces (the basis of its
``--match-threshold`` default, 0.94; see the README's "Identity" section).

For every whole photo: each face detected by the real RetinaFace mobilenet0.25 against a 0.5x and a 0.35x
down-sized copy of the same photo (same person, degraded), and every pair of different faces in the photo (different
people). Prints the sorted scores (cosine of normalised dlib descriptors) of both groups.

Usage::

    python benchmarks/identity_thresholds.py        # needs pip install "vspbfr[dlib]" and ../shared
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vspbfr_core.face import detect_faces, load_detector  # noqa: E402
from vspbfr_core.identity import identity_matrix, load_embedder  # noqa: E402

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))
PHOTOS = ("gfpgan_00.jpg", "gfpgan_10045.png", "cf_00.jpg", "cf_02.png", "skimage_astronaut.png", "cf_04.jpg")


def read(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def main() -> int:
    detector = load_detector("retinaface_mobile0.25", [SHARED / "weights"])
    embedder = load_embedder("dlib")
    same: list[float] = []
    different: list[float] = []
    for name in PHOTOS:
        image = read(SHARED / "faces" / "whole" / name)[None]
        dets = detect_faces(detector, image.permute(0, 2, 3, 1))
        faces = embedder.embed_faces(image, dets.landmarks)
        for scale in (0.5, 0.35):
            small = F.interpolate(image, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
            s = small.shape[-1] / image.shape[-1]
            degraded = embedder.embed_faces(small, (dets.landmarks + 0.5) * s - 0.5)     # pixel centres kept
            scores = identity_matrix(faces, degraded)
            same.extend(float(scores[i, i]) for i in range(len(dets)))
        matrix = identity_matrix(faces, faces)
        different.extend(float(matrix[i, j]) for i, j in itertools.combinations(range(len(dets)), 2))
        print(f"{name}: {len(dets)} face(s) of {', '.join(f'{v:.0f}' for v in dets.sizes.tolist())} px")
    print("same person (a face vs a down-sized copy):", " ".join(f"{v:.3f}" for v in sorted(same)))
    print("different people (pairs in one photo):   ", " ".join(f"{v:.3f}" for v in sorted(different)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

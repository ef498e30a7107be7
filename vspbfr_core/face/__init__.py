"""Faces: RetinaFace detection, FFHQ alignment and seamless paste-back, batched on the caller's device.

Pipeline steps 2, 3 and 8 of the style guide (section 6)::

    detector = load_detector("retinaface_mobile0.25", model_dir)       # never downloads
    dets = detect_faces(detector, images_bhwc)                          # Detections (F faces)
    aligned = align_faces(images_bchw, dets)                            # AlignedFaces: crops [F, C, 512, 512]
    out, mask = paste_faces(images_bchw, restored_crops, aligned)       # [B, C, H', W'], [B, H', W']
    parser = load_parser("parsenet", find_parser_file("parsenet", model_dir))   # optional: the parsing mask
    face = parser.part_probability(aligned.crops)                       # [F, 512, 512] in [0, 1]

Importing this package does not import torch; the submodules load on first use of a name.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

# paste-back mask shapes (face.paste: square, ellipse; face.masks: landmarks, parsing), here so that the command
# line can list them without importing torch
MASK_SHAPES = ("square", "ellipse", "landmarks", "parsing")
DEFAULT_MASK_SHAPE = "landmarks"    # chosen by measurement: benchmarks/RESULTS.md "Paste masks"

_EXPORTS = {
    "DETECTOR_FILES": ".detect", "DETECTOR_URLS": ".detect", "DEFAULT_THRESHOLD": ".detect",
    "Detections": ".detect", "load_detector": ".detect", "load_detector_file": ".detect",
    "find_detector_file": ".detect", "detect_faces": ".detect", "DETECTOR_ALIASES": ".detect",
    "RetinaFaceDetector": ".retinaface", "RetinaFaceConfig": ".retinaface",
    "FFHQ_TEMPLATE_512": ".align", "AlignedFaces": ".align", "align_faces": ".align",
    "face_template": ".align", "estimate_similarity": ".align",
    "paste_faces": ".paste", "face_mask": ".paste", "color_correct": ".paste",
    "landmark_masks": ".masks", "parsing_masks": ".masks",
    "PARSERS": ".parsing", "PARSER_FILES": ".parsing", "PARSER_URLS": ".parsing", "PARSER_LABELS": ".parsing",
    "FACE_PARTS": ".parsing", "DEFAULT_PARTS": ".parsing", "NEVER_PASTED": ".parsing", "parse_parts": ".parsing",
    "part_classes": ".parsing", "FaceParser": ".parsing", "load_parser": ".parsing", "find_parser_file": ".parsing",
}

__all__ = sorted([*_EXPORTS, "MASK_SHAPES", "DEFAULT_MASK_SHAPE"])


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

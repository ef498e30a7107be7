"""What the identity parts of the VSPBFR nodes do: the Identity Score node and the all-in-one node's identity report.

Plain functions over vspbfr_core.identity and :mod:`.ops` (which holds the embedder cache and the restoration with
identity).  The identity of two faces is the cosine similarity of their embeddings (-1..1, higher = more the same
person; see vspbfr_core.identity).
"""
from __future__ import annotations

from typing import Any

import torch

from ..vspbfr_core.checks import check_choice, describe_value
from ..vspbfr_core.errors import InputError
from ..vspbfr_core.image import from_host
from ..vspbfr_core.progress import Progress
from . import ops
from .handles import FaceSet

SCORE_INPUTS = ("aligned crops", "whole images (largest face)")
ALIGN_SIZE = 512          # whole images: the largest face is aligned at this size, as vspbfr_core's embed_faces does
DECIMALS = 3


# -- the Identity Score node -----------------------------------------------------------------------------------------

def pairs(count_a: int, count_b: int) -> list[tuple[int, int]]:
    """Which images are compared: equal counts pair ``i`` with ``i``; a batch of one is compared with every image
    of the other; any other mismatch is an error."""
    if count_a == count_b:
        return [(i, i) for i in range(count_a)]
    if count_a == 1:
        return [(0, j) for j in range(count_b)]
    if count_b == 1:
        return [(i, 0) for i in range(count_a)]
    raise InputError(f"identity score: image_a holds {count_a} image(s) and image_b {count_b}; give batches of the "
                     "same size (image i is compared with image i) or a batch of one (compared with every image of "
                     "the other)")


def _crops(images: Any, name: str, inputs: str, detector: str, callback: Any, extra: list[Any]) -> torch.Tensor:
    """The faces to embed ``[N, 3, S, S]`` in [0, 1]: the aligned crops as given, or the largest face of each image."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected an IMAGE (a float tensor [B, H, W, C] in [0, 1]), got "
                         f"{describe_value(images)}")
    rgb, _ = from_host(images, name)
    if inputs == SCORE_INPUTS[0]:
        if rgb.shape[-1] != rgb.shape[-2]:
            raise InputError(f"{name}: aligned face crops are square, got {rgb.shape[-1]}x{rgb.shape[-2]}; choose "
                             f"inputs '{SCORE_INPUTS[1]}' for whole pictures")
        if ops._placeholder(images):
            raise InputError(f"{name}: one black crop: the detect node found no face (nothing to score)")
        return rgb.float()
    faces: FaceSet = ops.find_faces(images, detector, selection="largest", size=ALIGN_SIZE, callback=callback,
                                    extra=extra)
    missing = sorted(set(range(rgb.shape[0])) - set(faces.detections.image_index.tolist()))
    if missing:
        raise InputError(f"{name}: no face found in image {', '.join(str(i + 1) for i in missing)} of "
                         f"{rgb.shape[0]} (detector {faces.detector}); use images with a clearly visible face")
    return faces.aligned.crops.float()


def identity_scores(image_a: Any, image_b: Any, *, inputs: str, identity: str, detector: str = ops.DETECTOR_AUTO,
                    callback: Any = None) -> tuple[list[float], str]:
    """Identity scores of face pairs (see :func:`pairs`) -> (one float per pair, a readable report)."""
    check_choice(inputs, "inputs", SCORE_INPUTS)
    check_choice(identity, "identity", ops.EMBEDDERS)
    check_choice(detector, "facedetection", ops.DETECTORS)
    counts = []
    for name, images in (("image_a", image_a), ("image_b", image_b)):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise InputError(f"{name}: expected an IMAGE (a float tensor [B, H, W, C] in [0, 1]), got "
                             f"{describe_value(images)}")
        counts.append(int(images.shape[0]))
    which = pairs(*counts)
    loaded = ops.get_embedder(identity)
    crops_a = _crops(image_a, "image_a", inputs, detector, callback, loaded.patchers)
    crops_b = _crops(image_b, "image_b", inputs, detector, callback, loaded.patchers)
    embedder = ops.activate_embedder(loaded)
    progress = Progress(2, callback)
    emb_a = embedder.embed_crops(crops_a)
    progress.step("identity")
    emb_b = embedder.embed_crops(crops_b)
    progress.step("identity")
    from ..vspbfr_core.identity import identity as cosine

    ia = torch.tensor([a for a, _ in which], device=emb_a.device)
    ib = torch.tensor([b for _, b in which], device=emb_b.device)
    scores = [float(v) for v in cosine(emb_a[ia], emb_b[ib]).cpu().tolist()]
    return scores, score_report(scores, which, embedder)


def score_report(scores: list[float], which: list[tuple[int, int]], embedder: Any) -> str:
    """One line per pair, with the embedder's match threshold as a guide."""
    threshold = float(embedder.match_threshold)
    lines = [f"identity ({embedder.name}, cosine similarity -1..1; {threshold:.2f} or more: likely the same "
             f"person)"]
    for (a, b), score in zip(which, scores):
        mark = "  match" if score >= threshold else ""
        lines.append(f"a {a} - b {b}: {score:.{DECIMALS}f}{mark}")
    return "\n".join(lines)


# -- the all-in-one node's report ------------------------------------------------------------------------------------

IDENTITY_OFF = ("identity off: no identity network ran (set candidates above 1, connect a reference or turn on "
                "only_matching to score the faces)")


def restore_report(faces: FaceSet, records: list[Any] | None, settings: ops.IdentitySettings,
                   num_images: int) -> str:
    """The identity summary of an all-in-one run, one block per image (faces numbered by their index in their
    image, as ``selection`` counts them); :data:`IDENTITY_OFF` when no embedder ran."""
    from ..vspbfr_core.identity import identity_summary

    if records is None:
        return IDENTITY_OFF
    head = [f"identity: {settings.embedder}"]
    if settings.candidates > 1:
        target = "the reference" if settings.reference is not None else "the input face"
        head.append(f"best of {settings.candidates} candidates by identity to {target}")
    if settings.only_matching:
        if settings.match_threshold is None:
            threshold = f"{ops.default_threshold(settings.embedder):.2f} ({settings.embedder}'s default)"
        else:
            threshold = f"{settings.match_threshold:.{DECIMALS}f}"
        head.append(f"only the faces matching the reference (identity to it at least {threshold})")
    blocks = [", ".join(head)]
    image_index = faces.detections.image_index.tolist()
    keys = faces.face_keys
    for i in range(num_images):
        mine = [k for k, img in enumerate(image_index) if img == i]
        lines = [f"image {i + 1} of {num_images}: " + (f"{len(mine)} face(s)" if mine else "no face")]
        for k in mine:
            text = identity_summary([records[k]])          # "face 0, ..." for a list of one
            _, _, rest = text.partition(", ")
            lines.append(f"face {keys[k]}" + (f", {rest}" if rest else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)

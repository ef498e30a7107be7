"""Identity: face embedders and the identity score of two faces (higher = more the same person).

Embedders turn faces into L2-normalised float32 vectors; the identity of two faces is the cosine similarity of
their vectors::

    embedder = load_embedder("arcface", models_dir, device)   # or "dlib" (pip install "vspbfr[dlib]")
    a = embedder.embed_crops(restored_crops)                   # [F, 3, 512, 512] FFHQ-aligned in [0, 1] -> [F, D]
    b = embedder.embed_faces(photo_bchw, landmarks)            # a whole image and 5 landmarks per face -> [F, D]
    score = identity(a, b)                                     # [F] cosine similarity

* ``arcface`` (:mod:`.arcface`): facexlib's IR-SE-50 ArcFace, ``recognition_arcface_ir_se50.pth``
  (``vspbfr download --only identity``), 512-D;
* ``dlib`` (:mod:`.dlib`): dlib's 128-D face descriptor, weights from the ``face_recognition_models`` package.

Restoration with identity (:mod:`.select`): ``pipeline(images, embedder=e, reference=pipeline.make_reference(photos, e),
candidates=4)`` restores each face 4 times and keeps the candidate most like the reference; ``only_matching``
restores only that person; the scores are in ``result.identity``.

Importing this package imports neither torch nor dlib; the submodules load on first use of a name. Restoration
never needs any of it.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "FaceEmbedder": ".base", "MissingPackageError": ".base", "identity": ".base", "identity_matrix": ".base",
    "mean_embedding": ".base",
    "EMBEDDERS": ".registry", "DEFAULT_EMBEDDER": ".registry", "load_embedder": ".registry",
    "ArcFaceEmbedder": ".arcface", "ArcFaceIRSE": ".arcface", "ArcFaceConfig": ".arcface",
    "ARCFACE_TEMPLATE_112": ".arcface", "load_arcface": ".arcface",
    "DlibEmbedder": ".dlib",
    "IdentityReference": ".select", "FaceIdentity": ".select", "make_reference": ".select",
    "face_report": ".select", "identity_summary": ".select", "parse_layers": ".select",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

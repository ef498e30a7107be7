"""dlib identity embeddings: dlib's 128-D face descriptor (``dlib_face_recognition_resnet_model_v1``).

Optional: needs the PyPI packages ``dlib-bin`` (dlib's compiled module, imported as ``dlib``) and
``face_recognition_models`` (the model files), ``pip install "vspbfr[dlib]"``. They are imported only when this
embedder is created; nothing else in vspbfr_core imports them. ``face_recognition_models`` is only *located*
(``importlib.util.find_spec``), never imported: its ``__init__`` needs ``pkg_resources``, which recent setuptools
no longer ship.

How a face is described (dlib's own recipe): its 5-point shape predictor (``shape_predictor_5_face_landmarks``) finds
the eye corners and the nose in a face box; dlib aligns the face chip from them and its ResNet turns the chip into
a 128-D descriptor (no jitter, so the result is deterministic). dlib reads 8-bit RGB, so crops are rounded to uint8
for it (only for the embedding). It runs on the CPU whatever :attr:`device` is (dlib-bin is a CPU build); the
vectors are then moved to :attr:`device`.

The face box on an FFHQ-aligned crop, ``face_box``:

* ``"template"`` (default): a fixed box, :data:`TEMPLATE_BOX_512` scaled to the crop: the mean box that dlib's HOG
  detector (upsampling once) finds on the 12 FFHQ-aligned 512 crops of the development photos. Every crop of the
  same layout gets the same box, so candidates are compared on their content, and blurred input crops on which
  the detector finds nothing still get a descriptor.
* ``"detector"``: dlib's HOG frontal face detector (upsampling once), the largest face; the template box where it
  finds none.

Identity for dlib: the descriptors are L2-normalised like every embedder's and compared by cosine similarity
(:func:`vspbfr_core.identity.identity`). dlib itself compares raw descriptors by Euclidean distance (same person
below 0.6); raw descriptors are 1.3 to 1.6 long, so that threshold does not carry over as a formula (for two
descriptors 1.45 long, distance 0.6 is cosine 0.914), but the order of pairs is the same in practice: on the 12
development crops (dlib's detector box) the two photos of one man are 0.415 apart (cosine 0.954), the nearest of the
65 pairs of different people 0.436 (cosine 0.949), the median 0.75 (0.855); the template box gives 0.410 (0.955),
0.435 (0.949) and 0.75 (0.855).
The cosine is used so that ``identity`` means the same thing, a cosine of unit vectors, for every embedder, and
several references can be averaged the same way (:func:`vspbfr_core.identity.mean_embedding`).
:meth:`DlibEmbedder.descriptors` gives the raw descriptors for dlib's own distance.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ModelNotFoundError
from .base import FaceEmbedder, MissingPackageError, check_crops

__all__ = ["DlibEmbedder", "TEMPLATE_BOX_512", "DLIB_INSTALL_HINT", "dlib_model_files", "import_dlib"]

log = logging.getLogger(__name__)

DLIB_INSTALL_HINT = ('pip install "vspbfr[dlib]" (or: pip install dlib-bin face_recognition_models), then try again; '
                     "or use the arcface embedder")
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# (left, top, right, bottom) on a 512 FFHQ crop: the mean of dlib's HOG detections (upsample 1) on the 12
# FFHQ-aligned crops of ../shared/faces/cropped.
TEMPLATE_BOX_512: tuple[float, float, float, float] = (110.0, 154.0, 400.0, 445.0)
DETECTOR_UPSAMPLE = 1

FaceBox = Literal["template", "detector"]


def import_dlib() -> Any:
    """The ``dlib`` module, or :class:`MissingPackageError` saying what to install."""
    try:
        return importlib.import_module("dlib")
    except ImportError as exc:
        raise MissingPackageError(f"the dlib identity embedder needs the Python package dlib (PyPI: dlib-bin), "
                                  f"which is not installed ({exc}). Install it with {DLIB_INSTALL_HINT}.") from exc


def dlib_model_files() -> tuple[Path, Path]:
    """``(shape predictor, descriptor network)`` from the installed ``face_recognition_models`` package."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("the dlib identity embedder needs the model files of the Python package "
                                  f"face_recognition_models, which is not installed. Install it with "
                                  f"{DLIB_INSTALL_HINT}.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = (folder / SHAPE_PREDICTOR_FILE, folder / DESCRIPTOR_FILE)
    for f in files:
        if not f.is_file():
            raise ModelNotFoundError(f"dlib model file {f} is missing from the installed face_recognition_models "
                                     f"package: reinstall it (pip install --force-reinstall face_recognition_models)")
    return files


def _to_uint8_rgb(crop: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] -> ``[H, W, 3]`` uint8, contiguous (what dlib reads)."""
    return np.ascontiguousarray((crop.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


class DlibEmbedder(FaceEmbedder):
    """The ``dlib`` embedder: dlib's face descriptor of FFHQ-aligned crops -> 128-D unit vectors (see the module)."""

    name = "dlib"
    dim = 128
    min_crop_size = 32
    # measured on ../shared/faces (cosine of the normalised descriptors): the two photos of one man 0.955; 65 pairs
    # of different people (crops) median 0.855, p95 0.909, max 0.949; different people in one group photo (cf_02,
    # 127-134 px faces) at most 0.935; a face against a 0.5x / 0.35x down-sized copy of its photo 0.96-0.999 for
    # faces of 65 px and more, 0.916-0.975 for 33-41 px faces; two young siblings (gfpgan_00) 0.973
    match_threshold = 0.94

    def __init__(self, device: torch.device | str = "cpu", face_box: FaceBox = "template"):
        super().__init__(device)
        if face_box not in ("template", "detector"):
            raise ValueError(f"face_box must be 'template' or 'detector', not {face_box!r}")
        self._dlib = import_dlib()
        predictor, descriptor = dlib_model_files()
        self.face_box: FaceBox = face_box
        self._predictor = self._dlib.shape_predictor(str(predictor))
        self._descriptor = self._dlib.face_recognition_model_v1(str(descriptor))
        self._detector = self._dlib.get_frontal_face_detector() if face_box == "detector" else None

    def _box(self, image: np.ndarray) -> Any:
        side = image.shape[0]
        if self._detector is not None:
            found = list(self._detector(image, DETECTOR_UPSAMPLE))
            if found:
                return max(found, key=lambda r: r.area())
            log.debug("dlib's detector found no face in a %d px crop; using the template box", side)
        left, top, right, bottom = ((v + 0.5) * side / 512.0 - 0.5 for v in TEMPLATE_BOX_512)
        return self._dlib.rectangle(int(round(left)), int(round(top)), int(round(right)), int(round(bottom)))

    def descriptors(self, crops: torch.Tensor) -> torch.Tensor:
        """dlib's raw descriptors ``[F, 128]`` (float32, CPU) of FFHQ-aligned crops ``[F, C, S, S]`` in [0, 1],
        for dlib's own Euclidean distance (same person below 0.6)."""
        return self._descriptors(check_crops(crops, min_size=self.min_crop_size))

    def _descriptors(self, crops: torch.Tensor) -> torch.Tensor:
        rows = []
        for crop in crops.detach().to("cpu"):
            image = _to_uint8_rgb(crop)
            shape = self._predictor(image, self._box(image))
            rows.append(np.asarray(self._descriptor.compute_face_descriptor(image, shape, 0), dtype=np.float32))
        if not rows:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(np.stack(rows))

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self._descriptors(crops), dim=1)

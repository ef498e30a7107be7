"""What every identity embedder shares: the input checks, the face-to-crop path and the identity score.

An embedder turns faces into L2-normalised float32 vectors ``[F, D]``; the identity of two faces is the cosine
similarity of their vectors (1 = the same direction, higher = more the same person). Two entry points:

* :meth:`FaceEmbedder.embed_crops`: aligned crops ``[F, C, S, S]`` in [0, 1] in the FFHQ layout the pipeline
  restores (the 5 landmarks of every crop are :func:`vspbfr_core.face.face_template` ``(S)``), e.g. the input crops
  and the restored crops of the pipeline;
* :meth:`FaceEmbedder.embed_faces`: whole images ``[B, C, H, W]`` and 5 landmarks per face (RetinaFace order: left
  eye, right eye, nose tip, left and right mouth corner), aligned first exactly as the pipeline aligns a face for
  restoration (:func:`vspbfr_core.face.align_faces` at 512), then embedded like a crop, so a reference photo and a
  restored face go through the same geometry.

Embedders compute in float32 whatever the input dtype, draw no random numbers, and leave every global random state
(torch, NumPy, Python) untouched.
"""
from __future__ import annotations

import abc

import torch

from ..errors import InputError, MissingPackageError
from ..image import check_bchw

__all__ = ["FaceEmbedder", "MissingPackageError", "identity", "identity_matrix", "mean_embedding",
           "check_crops", "ALIGN_SIZE"]

ALIGN_SIZE = 512          # embed_faces aligns faces at the pipeline's crop size before embedding them


def check_crops(crops: torch.Tensor, name: str = "crops", min_size: int = 16) -> torch.Tensor:
    """Validate aligned crops ``[F, C, S, S]`` (C in 1, 3, 4; S >= ``min_size``) in [0, 1]; returns float32 RGB.

    Gray crops are replicated to RGB, an alpha channel is dropped. ``F == 0`` is allowed (nothing to embed).
    """
    if not isinstance(crops, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor [F, C, S, S], got {type(crops).__name__}")
    if crops.dim() != 4 or crops.shape[1] not in (1, 3, 4) or crops.shape[-1] != crops.shape[-2]:
        raise InputError(f"{name}: expected square aligned face crops [F, C, S, S] with C = 1, 3 or 4, got shape "
                         f"{tuple(crops.shape)}")
    if crops.shape[-1] < min_size:
        raise InputError(f"{name}: crops of {crops.shape[-1]} pixels are too small to embed (at least {min_size})")
    if crops.shape[0] == 0:
        return crops.new_zeros(0, 3, crops.shape[-2], crops.shape[-1], dtype=torch.float32)
    crops = check_bchw(crops, name)
    crops = crops.to(torch.float32)
    if crops.shape[1] == 1:
        crops = crops.expand(-1, 3, -1, -1)
    return crops[:, :3]


def _check_landmarks(images: torch.Tensor, landmarks: torch.Tensor, image_index: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(landmarks, torch.Tensor) or landmarks.dim() != 3 or tuple(landmarks.shape[1:]) != (5, 2):
        shape = tuple(landmarks.shape) if isinstance(landmarks, torch.Tensor) else type(landmarks).__name__
        raise InputError(f"embed_faces: landmarks must be a tensor [F, 5, 2] (x, y of 5 points per face), got {shape}")
    landmarks = landmarks.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(landmarks).all()):
        raise InputError("embed_faces: the landmarks contain NaN or infinite values")
    count, batch = landmarks.shape[0], images.shape[0]
    if image_index is None:
        if batch != 1 and count:
            raise InputError(f"embed_faces: {batch} images given: pass image_index [F] to say which image each face "
                             "is in")
        index = torch.zeros(count, dtype=torch.long)
    else:
        index = torch.as_tensor(image_index).detach().to("cpu", torch.long).reshape(-1)
        if index.numel() != count:
            raise InputError(f"embed_faces: image_index has {index.numel()} entries for {count} faces")
        if count and (int(index.min()) < 0 or int(index.max()) >= batch):
            raise InputError(f"embed_faces: image_index refers to images outside the batch of {batch}")
    return landmarks, index


class FaceEmbedder(abc.ABC):
    """An identity embedder: faces -> L2-normalised float32 vectors ``[F, dim]`` on :attr:`device`."""

    name: str = ""                # registry name ("arcface", "dlib")
    dim: int = 0                  # vector length
    min_crop_size: int = 16       # smallest crop side embed_crops accepts
    # identity at or above which two faces count as the same person (--only-matching's default threshold); each
    # embedder sets its own, the README's "Identity" section says how it was chosen
    match_threshold: float = 0.5

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def to(self, device: torch.device | str) -> FaceEmbedder:
        """Move the embedder (its network, where it has one) to ``device``; returns ``self``."""
        self.device = torch.device(device)
        return self

    @abc.abstractmethod
    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        """Checked float32 RGB crops ``[F, 3, S, S]`` (F >= 1), FFHQ layout -> unit vectors ``[F, dim]``."""

    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """FFHQ-aligned face crops ``[F, C, S, S]`` in [0, 1] (any float dtype and device) -> ``[F, dim]`` float32
        L2-normalised rows on :attr:`device`."""
        crops = check_crops(crops, min_size=self.min_crop_size)
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dim, device=self.device)
        with torch.no_grad():
            out = self._embed(crops)
        return out.to(self.device, torch.float32)

    def embed_faces(self, images: torch.Tensor, landmarks: torch.Tensor,
                    image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Faces of whole images -> ``[F, dim]``.

        Args:
            images: ``[B, C, H, W]`` float in [0, 1] (C = 1, 3 or 4).
            landmarks: ``[F, 5, 2]`` image pixel coordinates (x, y) of each face's 5 points, RetinaFace order.
            image_index: ``[F]`` which image each face is in (may be omitted when B == 1).
        """
        from ..face.align import align_faces
        from ..face.detect import Detections

        images = check_bchw(images, "embed_faces: images", channels=(1, 3, 4))
        landmarks, index = _check_landmarks(images, landmarks, image_index)
        if landmarks.shape[0] == 0:
            return torch.zeros(0, self.dim, device=self.device)
        boxes = torch.cat([landmarks.amin(dim=1), landmarks.amax(dim=1)], dim=1)     # unused by the alignment
        order = torch.argsort(index, stable=True)
        dets = Detections(index[order], boxes[order], landmarks[order], torch.ones(len(order)),
                          torch.zeros(len(order), dtype=torch.long), images.shape[0],
                          (int(images.shape[2]), int(images.shape[3])))
        with torch.no_grad():
            crops = align_faces(images.to(torch.float32), dets, ALIGN_SIZE).crops
        out = self.embed_crops(crops)
        result = torch.empty_like(out)
        result[order.to(out.device)] = out
        return result


def _as_vectors(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or not x.is_floating_point():
        raise InputError(f"identity: {name} must be a float tensor of embeddings [..., D]")
    return torch.nn.functional.normalize(x.to(torch.float32), dim=-1)


def identity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of embeddings ``a`` and ``b`` along the last dimension (they broadcast): ``[F, D]`` and
    ``[F, D]`` (or ``[D]``) -> ``[F]``. Rows are normalised first, so raw descriptors work too; float32."""
    a, b = _as_vectors(a, "a"), _as_vectors(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise InputError(f"identity: embeddings of different lengths ({a.shape[-1]} and {b.shape[-1]}): were they "
                         "made by different embedders?")
    return (a * b.to(a.device)).sum(dim=-1).clamp(-1.0, 1.0)


def identity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All pairwise identities: ``a [Fa, D]``, ``b [Fb, D]`` -> ``[Fa, Fb]``."""
    a, b = _as_vectors(a, "a"), _as_vectors(b, "b")
    if a.dim() != 2 or b.dim() != 2 or a.shape[-1] != b.shape[-1]:
        raise InputError(f"identity_matrix: expected [Fa, D] and [Fb, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a @ b.to(a.device).T).clamp(-1.0, 1.0)


def mean_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """One identity from several embeddings of the same person ``[K, D]`` (e.g. several reference photos): the
    normalised mean ``[D]``."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise InputError("mean_embedding: expected a non-empty [K, D] tensor of embeddings")
    return torch.nn.functional.normalize(_as_vectors(embeddings, "embeddings").mean(dim=0), dim=0)

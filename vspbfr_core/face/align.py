"""Face alignment: 5 landmarks -> similarity transform to the FFHQ template -> batched crops.

Pipeline step 3 (style guide section 6).  Each face gets the least-squares similarity transform
(rotation, uniform scale, translation) taking its five RetinaFace landmarks onto the 5-point FFHQ
template that GFPGAN and CodeFormer crops use, scaled to ``size``.  Crops are sampled with
``affine_grid`` / ``grid_sample`` for all faces of an image at once, on the images' device and in
their floating dtype (no uint8 or BGR round trip).

Coordinate convention (shared with :mod:`.paste` and OpenCV's ``warpAffine``): the centre of pixel
(row i, column j) is the point (x=j, y=i), in the image and in the crop alike.  ``affine`` maps image
points to crop points, ``inverse`` maps back; both are ``[F, 2, 3]`` acting on ``(x, y, 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..checks import check_int
from ..errors import InputError
from ..image import check_bchw
from .detect import Detections

__all__ = [
    "FFHQ_TEMPLATE_512", "AlignedFaces", "face_template", "estimate_similarity", "invert_affine", "align_faces",
    "affine_grid",
    "pixel_to_normalized", "normalized_to_pixel",
]

# The 5-point FFHQ face template for 512 x 512 crops (left eye, right eye, nose tip, left and right mouth
# corner; x, y in crop pixels), as used by GFPGAN / CodeFormer through facexlib.
FFHQ_TEMPLATE_512: tuple[tuple[float, float], ...] = (
    (192.98138, 239.94708),
    (318.90277, 240.19360),
    (256.63416, 314.01935),
    (201.26117, 371.41043),
    (313.08905, 371.15118),
)

PaddingMode = str   # "reflection" | "border" | "zeros", as grid_sample


@dataclass(frozen=True)
class AlignedFaces:
    """Aligned face crops of a batch and the transforms that produced them."""

    crops: torch.Tensor          # [F, C, size, size] in [0, 1], the images' dtype and device
    affine: torch.Tensor         # [F, 2, 3] float32: image pixel -> crop pixel
    inverse: torch.Tensor        # [F, 2, 3] float32: crop pixel -> image pixel
    image_index: torch.Tensor    # [F] long: image of the batch each crop came from
    size: int                    # crop side in pixels
    image_size: tuple[int, int] = (0, 0)   # (H, W) of the source images
    num_images: int = 0          # B of the source batch
    landmarks: torch.Tensor | None = None   # [F, 5, 2] float32: each face's five landmarks in crop pixels (None:
                                            # unknown; the landmark paste mask then assumes the FFHQ template)

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def select(self, which: torch.Tensor, *, first_image: int = 0, num_images: int | None = None) -> AlignedFaces:
        """The faces ``which`` (a bool mask ``[F]`` or indices) with every per-face field; ``first_image`` /
        ``num_images`` renumber them as aligned from the images ``first_image ..`` of a window of that many."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[which.to(t.device)]

        index = pick(self.image_index)
        return replace(self, crops=pick(self.crops), affine=pick(self.affine), inverse=pick(self.inverse),
                       image_index=index - first_image if first_image else index,
                       num_images=self.num_images if num_images is None else num_images,
                       landmarks=None if self.landmarks is None else pick(self.landmarks))


def face_template(size: int = 512, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """The FFHQ template ``[5, 2]`` scaled to ``size`` x ``size`` crops (pixel centres kept consistent)."""
    t = torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64)
    t = (t + 0.5) * (size / 512.0) - 0.5 if size != 512 else t
    return t.to(device=device, dtype=dtype)


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms ``[F, 2, 3]`` (float64) taking ``src`` points onto ``dst``.

    ``src`` is ``[F, N, 2]``, ``dst`` is ``[N, 2]`` or ``[F, N, 2]``; N >= 2.  Solves
    ``min sum |s R p + t - q|^2`` over scale s, rotation R and translation t in closed form (no
    reflection): with centred points, ``a = sum(p.q) / sum|p|^2`` and ``b = sum(p x q) / sum|p|^2``
    give ``s R = [[a, -b], [b, a]]``.
    """
    src = src.to(torch.float64)
    dst = dst.to(device=src.device, dtype=torch.float64).expand_as(src)
    src_mean, dst_mean = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    p, q = src - src_mean, dst - dst_mean
    norm = (p * p).sum(dim=(1, 2))
    if bool((norm <= 1e-12).any()):
        raise InputError("cannot align a face whose landmarks all coincide (degenerate detection)")
    a = (p * q).sum(dim=(1, 2)) / norm
    b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(dim=1) / norm
    rot = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=1)   # [F, 2, 2]
    t = dst_mean.squeeze(1) - (rot @ src_mean.transpose(1, 2)).squeeze(-1)
    return torch.cat([rot, t.unsqueeze(-1)], dim=-1)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of affine maps ``[F, 2, 3]``."""
    full = _to3x3(m.to(torch.float64))
    return torch.linalg.inv(full)[:, :2].to(m.dtype)


def _to3x3(m: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device).expand(m.shape[0], 1, 3)
    return torch.cat([m, bottom], dim=1)


def pixel_to_normalized(height: int, width: int, dtype: torch.dtype = torch.float64,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """3x3 map from pixel-centre coordinates to ``grid_sample(align_corners=False)`` coordinates."""
    return torch.tensor([[2.0 / width, 0.0, 1.0 / width - 1.0],
                         [0.0, 2.0 / height, 1.0 / height - 1.0],
                         [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def normalized_to_pixel(height: int, width: int, dtype: torch.dtype = torch.float64,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse of :func:`pixel_to_normalized`."""
    return torch.tensor([[width / 2.0, 0.0, (width - 1.0) / 2.0],
                         [0.0, height / 2.0, (height - 1.0) / 2.0],
                         [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def align_faces(images: torch.Tensor, detections: Detections, size: int = 512, *,
                padding_mode: PaddingMode = "reflection") -> AlignedFaces:
    """Warp every detected face of ``images`` onto the FFHQ template.

    Args:
        images: ``[B, C, H, W]`` float in [0, 1] on any device (C is kept: 1, 3 or 4 all work).
        detections: from :func:`~vspbfr_core.face.detect_faces` on the same batch.
        size: crop side in pixels (the template is scaled from 512).
        padding_mode: how crops are filled beyond the image border ("reflection", "border" or "zeros").

    Returns:
        :class:`AlignedFaces` with ``crops [F, C, size, size]`` in the images' dtype and device.
    """
    images = check_bchw(images, "align_faces: images")
    if padding_mode not in ("reflection", "border", "zeros"):
        raise InputError(f"align_faces: padding_mode {padding_mode!r}: use 'reflection', 'border' or 'zeros'")
    size = check_int(size, "align_faces: size", minimum=8)
    batch, channels, height, width = images.shape
    _check_detections(detections, batch, height, width, "align_faces")
    device, dtype = images.device, images.dtype
    count = len(detections)
    if count == 0:
        empty = torch.zeros(0, 2, 3, device=device)
        return AlignedFaces(images.new_zeros(0, channels, size, size), empty, empty.clone(),
                            torch.zeros(0, dtype=torch.long, device=device), size, (height, width), batch,
                            torch.zeros(0, 5, 2, device=device))

    landmarks = detections.landmarks.to(device=device, dtype=torch.float64)
    affine = estimate_similarity(landmarks, face_template(size, device=device))      # [F, 2, 3] float64
    inverse = invert_affine(affine)
    # crop normalised coordinates -> crop pixels -> image pixels -> image normalised coordinates
    theta = (pixel_to_normalized(height, width, device=device) @ _to3x3(inverse)
             @ normalized_to_pixel(size, size, device=device))[:, :2]
    work = torch.float64 if dtype == torch.float64 else torch.float32   # half-precision grids would be off by pixels
    grid = affine_grid(theta, size, size, work)                                      # [F, S, S, 2]
    index = detections.image_index.cpu()
    parts = []
    for b in torch.unique(index).tolist():                   # one call per image, all its faces at once
        sel = torch.nonzero(index == b, as_tuple=True)[0]
        lo, n = int(sel[0]), sel.numel()
        g = grid[lo:lo + n] if int(sel[-1]) == lo + n - 1 else grid[sel.to(device)]
        source = images[b:b + 1].to(work).expand(n, -1, -1, -1)                      # no copy of the image
        parts.append(F.grid_sample(source, g, mode="bilinear", padding_mode=padding_mode, align_corners=False))
    if len(parts) == 1:
        crops = parts[0]
    elif bool((index[1:] >= index[:-1]).all()):
        crops = torch.cat(parts)
    else:                                                    # detections not grouped by image: scatter back
        crops = images.new_empty(count, channels, size, size, dtype=work)
        for b, part in zip(torch.unique(index).tolist(), parts):
            crops[torch.nonzero(index == b, as_tuple=True)[0].to(device)] = part
    image_index = detections.image_index.to(device)
    crops = crops.clamp_(0.0, 1.0).to(dtype)                  # bilinear weights can overshoot 1 by an ulp
    in_crop = landmarks @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]      # [F, 5, 2] crop pixels
    return AlignedFaces(crops, affine.float(), inverse.float(), image_index, size, (height, width), batch,
                        in_crop.float())


def affine_grid(theta: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``F.affine_grid(theta, [N, C, height, width], align_corners=False)``, built by broadcasting.

    Two broadcast additions instead of a batched matrix product over every pixel (several times
    faster on CPU); ``theta`` may be float64, the grid is made in ``dtype``.
    """
    n, device = theta.shape[0], theta.device
    xs = ((torch.arange(width, dtype=torch.float64, device=device) * 2 + 1) / width - 1).to(dtype)
    ys = ((torch.arange(height, dtype=torch.float64, device=device) * 2 + 1) / height - 1).to(dtype)
    th = theta.to(dtype)
    grid = torch.empty(n, height, width, 2, dtype=dtype, device=device)
    for k in range(2):
        column = th[:, k, 1, None, None] * ys.view(1, -1, 1) + th[:, k, 2, None, None]   # [N, H, 1]
        row = th[:, k, 0, None, None] * xs.view(1, 1, -1)                                # [N, 1, W]
        torch.add(column, row, out=grid[..., k])
    return grid


def _check_detections(dets: Detections, batch: int, height: int, width: int, where: str) -> None:
    if not isinstance(dets, Detections):
        raise InputError(f"{where}: expected Detections from detect_faces, got {type(dets).__name__}")
    if dets.num_images and dets.num_images != batch:
        raise InputError(f"{where}: the detections are for a batch of {dets.num_images} images, "
                         f"but {batch} images were given")
    if dets.image_size != (0, 0) and tuple(dets.image_size) != (height, width):
        raise InputError(f"{where}: the detections are for {dets.image_size[0]}x{dets.image_size[1]} images, "
                         f"but the images are {height}x{width}")
    if len(dets) and int(dets.image_index.max()) >= batch:
        raise InputError(f"{where}: a detection refers to image {int(dets.image_index.max())}, "
                         f"but the batch has {batch} images")
    if len(dets) and not bool(torch.isfinite(dets.landmarks).all()):
        raise InputError(f"{where}: the detections contain NaN or infinite landmarks; detect the faces again")

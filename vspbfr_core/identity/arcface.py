"""ArcFace identity embeddings: the IR-SE-50 network facexlib loads (``recognition_arcface_ir_se50.pth``).

Network: "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (Deng et al., CVPR 2019), IR-SE-50
backbone (an improved-residual ResNet-50 with squeeze-excitation units): 112x112 RGB face -> 512-D embedding, on
the unit sphere. The residual units are the ones of the e4e style encoder (:class:`vspbfr_core.encoder.BottleneckIRSE`,
same layout and key names); the head is BatchNorm2d -> (dropout, unused at inference) -> flatten -> Linear ->
BatchNorm1d, then L2 normalisation.

Input convention of the released file (the InsightFace_Pytorch training code it comes from): RGB, values mapped
from [0, 1] to [-1, 1] (mean 0.5, std 0.5 per channel), the face warped by a least-squares similarity transform of its
5 landmarks onto the 112x112 ArcFace template :data:`ARCFACE_TEMPLATE_112` (pixel centres at integer coordinates,
as OpenCV's ``warpAffine``), bilinear; the transform is fitted from the template to the landmarks, as MATLAB's
``cp2tform`` (and facexlib's ``warp_and_crop_face``) fit it.

For FFHQ-aligned crops (the pipeline's 512 crops, landmarks = :func:`vspbfr_core.face.face_template`), the crop is
first resized with an antialiasing filter to the size at which the FFHQ template has the ArcFace template's scale
(about 143 px for a 512 crop), then warped: a direct bilinear warp from 512 to 112 would skip pixels (aliasing).

Loading is strict, through the project's data-only reader (:func:`vspbfr_core.weights_file.read_weights_file`):
the configuration is read back from the tensor shapes (IR-SE-50/100/152 all load), every key and shape must match,
dtypes and values are checked (:func:`vspbfr_core.weights_file.check_tensors`), the network is built on the meta
device and gets the tensors with ``load_state_dict(strict=True, assign=True)``. Only the BatchNorm
``num_batches_tracked`` counters may be absent (files saved by PyTorch 0.4.0 have none; they are unused at
inference and set to 0).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..encoder import ir_se_trunk, stage_layout
from ..checkpoints import key_mismatch
from ..errors import CheckpointError
from ..face.align import estimate_similarity, face_template, normalized_to_pixel, pixel_to_normalized
from ..weights_file import as_path, check_tensors, read_weights_file, shown
from .base import FaceEmbedder

__all__ = ["ARCFACE_TEMPLATE_112", "ArcFaceConfig", "IRSE50_ARCFACE", "ArcFaceIRSE", "ArcFaceEmbedder",
           "infer_arcface_config", "load_arcface", "align_arcface", "arcface_input"]

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# The 5-point ArcFace template for 112 x 112 inputs (left eye, right eye, nose tip, left and right mouth corner;
# x, y in pixels): the 96 x 112 template of the ArcFace/SphereFace crops, padded by 8 pixels on the left and right.
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.29459953, 51.69630051),
    (73.53179932, 51.50139999),
    (56.02519989, 71.73660278),
    (41.54930115, 92.36550140),
    (70.72990036, 92.20410156),
)


@dataclass(frozen=True)
class ArcFaceConfig:
    widths: tuple[int, ...] = (64, 128, 256, 512)   # IR-SE stage widths
    units: tuple[int, ...] = (3, 4, 14, 3)          # residual units per stage (IR-SE-50; 100: 3,13,30,3)
    embedding_dim: int = 512                        # output vector length
    input_resolution: int = 112                     # face side in pixels (the head sees a 1/16 map: 7 x 7)
    in_channels: int = 3                            # RGB
    se_reduction: int = 16                          # squeeze-excitation reduction

    def validate(self) -> None:
        if len(self.widths) != 4 or len(self.units) != 4 or min(self.units) < 1:
            raise ValueError("ArcFaceConfig needs four IR-SE stages of at least one unit each")
        if self.input_resolution % 16 or self.input_resolution < 16:
            raise ValueError("input_resolution must be a positive multiple of 16")


IRSE50_ARCFACE = ArcFaceConfig()


class ArcFaceIRSE(nn.Module):
    """IR-SE ArcFace: faces ``[F, 3, R, R]`` in [-1, 1] (RGB, ArcFace-aligned) -> unit vectors ``[F, embedding_dim]``.

    Attribute names follow the released keys (``input_layer.*``, ``body.N.*``, ``output_layer.{0,3,4}.*``).
    """

    def __init__(self, config: ArcFaceConfig = IRSE50_ARCFACE):
        super().__init__()
        config.validate()
        self.config = config
        w = config.widths
        self.input_layer, self.body = ir_se_trunk(config.in_channels, w, config.units, config.se_reduction)
        side = config.input_resolution // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(w[3]),
            nn.Identity(),                            # the training dropout: identity at inference
            nn.Flatten(),                             # [F, C, 7, 7] -> [F, C * 49], channel-major
            nn.Linear(w[3] * side * side, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = self.body(self.input_layer(faces))        # [F, 512, R/16, R/16]
        return F.normalize(self.output_layer(x), dim=1)


#----------------------------------------------------------------------------
# Loading


def _canonicalize(obj: object, path: Path) -> StateDict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        found = "an empty dict" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{shown(path)}: expected an ArcFace state dict (name -> tensor), found {found}")
    bad = [repr(k)[:40] for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{shown(path)}: entries that are not named tensors in the ArcFace state dict: "
                              f"{bad[:5]}")
    sd: StateDict = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _need(sd: StateDict, key: str, path: Path, dims: int) -> torch.Size:
    t = sd.get(key)
    if t is None:
        found = sorted(sd)[:4]
        raise CheckpointError(f"{shown(path)}: not an IR-SE ArcFace file (no tensor {key!r}; it has {len(sd)} keys "
                              f"starting with {found}). Use facexlib's recognition_arcface_ir_se50.pth "
                              "(vspbfr download --only identity).")
    if t.dim() != dims:
        raise CheckpointError(f"{shown(path)}: tensor {key!r} has shape {tuple(t.shape)}, an ArcFace file has a "
                              f"{dims}-d tensor there")
    return t.shape


def infer_arcface_config(sd: StateDict, path: str | os.PathLike[str] = "<memory>") -> ArcFaceConfig:
    """The :class:`ArcFaceConfig` a state dict was saved from, read from its tensor shapes.

    Stages are the runs of units of equal width (the IR-SE layouts have four, of growing width).
    """
    path = as_path(path)
    first = _need(sd, "input_layer.0.weight", path, 4)
    count = len({m.group(1) for k in sd if (m := re.fullmatch(r"body\.(\d+)\.res_layer\.1\.weight", k))})
    if count == 0:
        _need(sd, "body.0.res_layer.1.weight", path, 4)
    depths = [_need(sd, f"body.{i}.res_layer.1.weight", path, 4)[0] for i in range(count)]
    widths, units = stage_layout(depths)
    if len(widths) != 4:
        raise CheckpointError(f"{shown(path)}: the ArcFace body has {len(widths)} stages of widths {widths}; the "
                              "IR-SE layouts have four")
    se = _need(sd, "body.0.res_layer.5.fc1.weight", path, 4)
    if se[0] == 0 or widths[0] % se[0]:
        raise CheckpointError(f"{shown(path)}: squeeze-excitation tensor 'body.0.res_layer.5.fc1.weight' has shape "
                              f"{tuple(se)}, which fits no reduction of {widths[0]} channels")
    head = _need(sd, "output_layer.3.weight", path, 2)
    cells = head[1] // widths[3] if head[1] % widths[3] == 0 else 0
    side = int(round(cells ** 0.5))
    if cells == 0 or side * side != cells:
        raise CheckpointError(f"{shown(path)}: head tensor 'output_layer.3.weight' has shape {tuple(head)}, which "
                              f"is not {widths[3]} x a square feature map")
    config = ArcFaceConfig(widths=tuple(widths), units=tuple(units), embedding_dim=int(head[0]),
                           input_resolution=16 * side, in_channels=int(first[1]), se_reduction=widths[0] // int(se[0]))
    if config.in_channels != 3:
        raise CheckpointError(f"{shown(path)}: this ArcFace network takes {config.in_channels}-channel faces; the "
                              "identity embedder needs the RGB one (recognition_arcface_ir_se50.pth)")
    return config


def load_arcface_state_dict(sd: StateDict, path: str | os.PathLike[str] = "<memory>") -> ArcFaceIRSE:
    """Build :class:`ArcFaceIRSE` from a state dict, strictly (see the module docstring); CPU, float32, eval."""
    path = as_path(path)
    config = infer_arcface_config(sd, path)
    with torch.device("meta"):
        net = ArcFaceIRSE(config)
    expected = net.state_dict()
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    sd = dict(sd)
    for k in counters:
        if k not in sd:       # unused at inference; absent from files saved before PyTorch 0.4.1
            sd[k] = torch.zeros((), dtype=torch.long)
    problems = key_mismatch(sd, expected)
    if problems:
        raise CheckpointError(f"{shown(path)}: does not fit the IR-SE ArcFace network: {problems}. The file is "
                              "damaged or another model's (the 'ir' variant without squeeze-excitation is not "
                              "supported).")
    net.load_state_dict(check_tensors(sd, expected, path, "ArcFace identity"), strict=True, assign=True)
    left = [k for k, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{shown(path)}: internal error, tensors left uninitialised after loading: {left[:5]}")
    return net.eval().requires_grad_(False)


def load_arcface(path: str | bytes | os.PathLike[str], device: torch.device | str = "cpu") -> ArcFaceIRSE:
    """The ArcFace network of ``path`` (facexlib's ``recognition_arcface_ir_se50.pth``, or a ``.safetensors`` of the
    same tensors), loaded strictly without running code from the file; float32 on ``device``, eval mode.

    Raises :class:`~vspbfr_core.errors.ModelNotFoundError` when the file is missing and
    :class:`~vspbfr_core.errors.CheckpointError` (naming the file and the tensor) for every other refusal.
    """
    path = as_path(path)
    obj, _ = read_weights_file(path)
    net = load_arcface_state_dict(_canonicalize(obj, path), path)
    log.debug("loaded ArcFace %s from %s", net.config, shown(path))
    return net.to(device)


#----------------------------------------------------------------------------
# Input


def _template(device: torch.device) -> torch.Tensor:
    return torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64, device=device)


def align_arcface(images: torch.Tensor, landmarks: torch.Tensor, size: int = 112) -> torch.Tensor:
    """Warp face ``n`` of ``images [N, C, H, W]`` onto the ArcFace template: ``[N, C, size, size]`` (bilinear, zeros
    outside the image), from its landmarks ``[N, 5, 2]`` (x, y pixels) by a similarity transform fitted by least
    squares from the template to the landmarks (the fit facexlib's ``warp_and_crop_face`` makes, reflections aside).

    ``size`` other than 112 scales the template (pixel centres kept). No antialiasing: large faces should be
    resized first (as :func:`arcface_input` does for crops).
    """
    n, _, height, width = images.shape
    device = images.device
    dst = _template(device)
    if size != 112:
        dst = (dst + 0.5) * (size / 112.0) - 0.5
    # fitted from the template to the landmarks (face pixel -> image pixel), the direction of MATLAB's cp2tform
    # 'similarity' that the released network's training crops were aligned with
    back = estimate_similarity(dst.expand(n, -1, -1), landmarks.to(device, torch.float64))   # [N, 2, 3]
    full = torch.cat([back, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64, device=device).expand(n, 1, 3)],
                     dim=1)
    theta = (pixel_to_normalized(height, width, device=device) @ full
             @ normalized_to_pixel(size, size, device=device))[:, :2]                  # face grid -> image grid
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    grid = F.affine_grid(theta.to(work), [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def arcface_input(crops: torch.Tensor, size: int = 112) -> torch.Tensor:
    """FFHQ-aligned crops ``[F, 3, S, S]`` in [0, 1] -> ArcFace inputs ``[F, 3, size, size]`` in [-1, 1], float32.

    The crop is resized (antialiased bilinear) to the side at which the FFHQ template has the ArcFace template's
    scale, then warped onto the template; crops already at or below that side are warped directly.
    """
    side = crops.shape[-1]
    dst = _template(torch.device("cpu"))
    if size != 112:
        dst = (dst + 0.5) * (size / 112.0) - 0.5
    back = estimate_similarity(dst[None], face_template(side))[0]                    # ArcFace pixel -> crop pixel
    scale = 1.0 / float(back[:, :2].det().abs().sqrt())
    target = max(int(round(side * scale)), 1)
    x = crops.to(torch.float32)
    if target < side:
        x = F.interpolate(x, size=(target, target), mode="bilinear", align_corners=False, antialias=True)
    points = face_template(x.shape[-1], device=x.device).expand(x.shape[0], -1, -1)
    return (align_arcface(x, points, size) * 2.0 - 1.0).to(torch.float32)


class ArcFaceEmbedder(FaceEmbedder):
    """The ``arcface`` embedder: :class:`ArcFaceIRSE` on FFHQ-aligned crops -> 512-D unit vectors (float32)."""

    name = "arcface"
    # not measured here (no real ArcFace weights on our machines): the cosine above which IR-SE-50 ArcFace pairs are
    # usually the same person in published verification results (different people centre near 0, the same person
    # 0.4-0.8); a low-quality face lowers it, so the default leans towards accepting
    match_threshold = 0.3

    def __init__(self, net: ArcFaceIRSE, device: torch.device | str = "cpu", batch_size: int = 16):
        super().__init__(device)
        self.net = net.to(self.device, torch.float32).eval().requires_grad_(False)
        self.dim = net.config.embedding_dim
        self.batch_size = max(int(batch_size), 1)

    def to(self, device: torch.device | str) -> ArcFaceEmbedder:
        super().to(device)
        self.net = self.net.to(self.device)
        return self

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        out = []
        size = self.net.config.input_resolution
        for start in range(0, crops.shape[0], self.batch_size):
            chunk = crops[start:start + self.batch_size].to(self.device)
            out.append(self.net(arcface_input(chunk, size)))
        return torch.cat(out)

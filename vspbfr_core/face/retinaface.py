"""RetinaFace face detector (MobileNet-0.25 and ResNet-50 backbones) in plain PyTorch.

Deng et al., "RetinaFace: Single-shot Multi-level Face Localisation in the Wild", CVPR 2020: a
backbone feeds three feature levels (strides 8, 16, 32) into a feature pyramid (FPN), each level goes
through a single-stage headless context module (SSH, Najibi et al. 2017), and 1x1 convolution heads
predict, for two anchors per position, a face/background score, a box offset and five landmark
offsets relative to square prior boxes.

Written from the published architecture and from the key names and tensor shapes of the released
weight files (``detection_mobilenet0.25_Final.pth``, ``detection_Resnet50_Final.pth``, as distributed by
facexlib), so that those files load with strict key matching.  Module attribute names are therefore
dictated by the files (``ClassHead``, ``conv3X3``, ``conv7x7_3``...), not by our naming conventions.

Input convention of the weights: BGR channel order, 0..255 values minus the per-channel mean
(104, 117, 123), no scaling.  :meth:`RetinaFaceDetector.preprocess` builds that from an RGB [0, 1]
tensor on the caller's device, in float.

In eval mode every convolution + BatchNorm pair runs as one convolution with the normalisation folded
in (computed from the loaded tensors, cached, and recomputed if they change), which is the same
function to float rounding; in train mode the modules run as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RetinaFaceConfig", "MOBILENET_025", "RESNET50", "RetinaFaceDetector", "prior_boxes", "decode_boxes",
    "decode_landmarks",
]

Backbone = Literal["mobilenet0.25", "resnet50"]


@dataclass(frozen=True)
class RetinaFaceConfig:
    """Hyperparameters of one released RetinaFace network (defaults: the MobileNet-0.25 file)."""

    backbone: Backbone = "mobilenet0.25"                       # feature extractor
    out_channels: int = 64                                     # FPN / SSH / head width
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))  # anchor sides per level, px
    steps: tuple[int, ...] = (8, 16, 32)                       # stride of each feature level, px
    variances: tuple[float, float] = (0.1, 0.2)                # box-coder variances (centre, size)
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)  # subtracted from BGR 0..255 input

    @property
    def in_channels(self) -> tuple[int, int, int]:
        """Channels of the three backbone outputs fed to the FPN."""
        return (64, 128, 256) if self.backbone == "mobilenet0.25" else (512, 1024, 2048)

    @property
    def leaky(self) -> float:
        """Negative slope of the FPN / SSH activations: the narrow network uses leaky ReLU 0.1."""
        return 0.1 if self.out_channels <= 64 else 0.0

    @property
    def anchors_per_position(self) -> int:
        return len(self.min_sizes[0])


MOBILENET_025 = RetinaFaceConfig(backbone="mobilenet0.25", out_channels=64)
RESNET50 = RetinaFaceConfig(backbone="resnet50", out_channels=256)


#----------------------------------------------------------------------------
# Building blocks.  Sequential indices are part of the released key names:
# [conv, bn] or [conv, bn, activation].


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolution weight and bias with an eval-mode BatchNorm folded in; cached until a tensor changes."""
    tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    # inference tensors (weights loaded or moved under torch.inference_mode, as ComfyUI does) have no version
    # counter; they cannot be modified in place either, so their storage identity is enough
    key = tuple((-1 if t.is_inference() else t._version, t.data_ptr(), t.dtype, t.device)
                for t in tensors if t is not None)
    cached = conv.__dict__.get("_vspbfr_folded")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.double() * scale
        bias = bias.to(conv.weight.dtype)
    conv.__dict__["_vspbfr_folded"] = (key, weight, bias)
    return weight, bias


def _conv_bn_forward(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))``; in eval mode one convolution with the normalisation folded into it."""
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return bn(conv(x))
    weight, bias = _folded(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvBN(nn.Sequential):
    """``[conv, bn]`` or ``[conv, bn, activation]`` (the released keys index this Sequential)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _conv_bn_forward(x, self[0], self[1])
        return self[2](y) if len(self) > 2 else y


class SeparableConvBN(nn.Sequential):
    """MobileNet-v1 unit: depthwise 3x3 + BN + act (keys .0/.1), pointwise 1x1 + BN + act (.3/.4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self[2](_conv_bn_forward(x, self[0], self[1]))
        return self[5](_conv_bn_forward(y, self[3], self[4]))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, slope: float | None = None
             ) -> ConvBN:
    """Conv (no bias) + BatchNorm, then LeakyReLU(slope) unless slope is None."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return ConvBN(*layers)


def _separable(cin: int, cout: int, stride: int, slope: float = 0.1) -> SeparableConvBN:
    return SeparableConvBN(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        nn.LeakyReLU(slope, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNet-v1 at width 0.25 (8..256 channels); returns the stride 8 / 16 / 32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(                     # -> [N, 64, H/8, W/8]
            _conv_bn(3, 8, 3, stride=2, slope=0.1),
            _separable(8, 16, 1), _separable(16, 32, 2), _separable(32, 32, 1),
            _separable(32, 64, 2), _separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(                     # -> [N, 128, H/16, W/16]
            _separable(64, 128, 2), *[_separable(128, 128, 1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(                     # -> [N, 256, H/32, W/32]
            _separable(128, 256, 2), _separable(256, 256, 1),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 convolution), expansion 4."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else _conv_bn_forward(x, self.downsample[0], self.downsample[1])
        y = F.relu(_conv_bn_forward(x, self.conv1, self.bn1), inplace=True)
        y = F.relu(_conv_bn_forward(y, self.conv2, self.bn2), inplace=True)
        y = _conv_bn_forward(y, self.conv3, self.bn3)
        return F.relu(y + identity, inplace=True)


class ResNet50Body(nn.Module):
    """ResNet-50 trunk without pooling/classifier; returns layer2 / layer3 / layer4 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(_conv_bn_forward(x, self.conv1, self.bn1), inplace=True)
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer1(x)
        c3 = self.layer2(x)          # [N, 512, H/8, W/8]
        c4 = self.layer3(c3)         # [N, 1024, H/16, W/16]
        c5 = self.layer4(c4)         # [N, 2048, H/32, W/32]
        return [c3, c4, c5]


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 lateral projections, nearest upsampling, 3x3 merge."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, slope: float) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channels, 1, slope=slope)
        self.output2 = _conv_bn(in_channels[1], out_channels, 1, slope=slope)
        self.output3 = _conv_bn(in_channels[2], out_channels, 1, slope=slope)
        self.merge1 = _conv_bn(out_channels, out_channels, 3, slope=slope)
        self.merge2 = _conv_bn(out_channels, out_channels, 3, slope=slope)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p3 = self.output1(feats[0])
        p4 = self.output2(feats[1])
        p5 = self.output3(feats[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Context module: parallel 3x3, stacked 2x(3x3) and 3x(3x3) branches (C/2, C/4, C/4), then ReLU."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        quarter = channels // 4
        self.conv3X3 = _conv_bn(channels, channels // 2, 3)
        self.conv5X5_1 = _conv_bn(channels, quarter, 3, slope=slope)
        self.conv5X5_2 = _conv_bn(quarter, quarter, 3)
        self.conv7X7_2 = _conv_bn(quarter, quarter, 3, slope=slope)
        self.conv7x7_3 = _conv_bn(quarter, quarter, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7X7_2(branch5)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(branch7)], dim=1)
        return F.relu(out, inplace=True)


class _Head(nn.Module):
    """A 1x1 convolution predicting ``per_anchor`` values for each anchor; output [N, H*W*A, per_anchor]."""

    def __init__(self, channels: int, anchors: int, per_anchor: int) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1x1(x).permute(0, 2, 3, 1)          # [N, H, W, A*k]: anchor is the fastest index
        return y.reshape(y.shape[0], -1, self.per_anchor)


#----------------------------------------------------------------------------
# The detector network


class RetinaFaceDetector(nn.Module):
    """RetinaFace; attribute names follow the released weight files (strict loading).

    ``forward(x)`` takes the preprocessed input (see :meth:`preprocess`) ``[N, 3, h, w]`` and returns
    ``(loc [N, P, 4], scores [N, P], landmarks [N, P, 10])`` in prior order (:func:`prior_boxes`),
    where ``scores`` is the softmax face probability.
    """

    def __init__(self, config: RetinaFaceConfig = MOBILENET_025, name: str = "retinaface_mobile0.25") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.body: nn.Module = MobileNetV1Body() if config.backbone == "mobilenet0.25" else ResNet50Body()
        self.fpn = FPN(config.in_channels, config.out_channels, config.leaky)
        self.ssh1 = SSH(config.out_channels, config.leaky)
        self.ssh2 = SSH(config.out_channels, config.leaky)
        self.ssh3 = SSH(config.out_channels, config.leaky)
        a = config.anchors_per_position
        levels = len(config.steps)
        self.ClassHead = nn.ModuleList([_Head(config.out_channels, a, 2) for _ in range(levels)])
        self.BboxHead = nn.ModuleList([_Head(config.out_channels, a, 4) for _ in range(levels)])
        self.LandmarkHead = nn.ModuleList([_Head(config.out_channels, a, 10) for _ in range(levels)])
        self.register_buffer("mean_bgr", torch.tensor(config.mean_bgr).view(1, 3, 1, 1), persistent=False)
        self._priors: dict[tuple[int, int, str], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, backbone={self.config.backbone!r}"

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB ``[N, 3, h, w]`` in [0, 1] -> the weights' input (BGR, 0..255 minus the mean), float.

        One pass: channel swap, scale and mean subtraction as a single 1x1 convolution.
        """
        weight = self.fpn.output1[0].weight
        swap = torch.zeros(3, 3, 1, 1, dtype=weight.dtype, device=weight.device)
        swap[0, 2] = swap[1, 1] = swap[2, 0] = 255.0
        bias = -self.mean_bgr.reshape(3).to(dtype=weight.dtype, device=weight.device)
        return F.conv2d(rgb.to(device=weight.device, dtype=weight.dtype), swap, bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)          # [N, P, 4]
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)      # [N, P, 2]
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)  # [N, P, 10]
        scores = torch.softmax(logits.float(), dim=-1)[..., 1]
        return loc, scores, landmarks

    def priors(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Cached :func:`prior_boxes` for an input of ``height x width`` pixels."""
        key = (height, width, str(device))
        cached = self._priors.get(key)
        if cached is None:
            if len(self._priors) > 16:
                self._priors.clear()
            cached = prior_boxes(self.config, height, width).to(device)
            self._priors[key] = cached
        return cached


#----------------------------------------------------------------------------
# Prior boxes and decoding (float32 pixel units of the network input)


def prior_boxes(config: RetinaFaceConfig, height: int, width: int) -> torch.Tensor:
    """Square anchors ``[P, 4]`` as (cx, cy, side, side) in input pixels.

    Order: level, then row, then column, then anchor size, matching the heads' output layout.
    Level ``k`` has ``ceil(h / step_k) x ceil(w / step_k)`` positions centred at ``(j + 0.5) * step_k``.
    """
    out = []
    for step, sizes in zip(config.steps, config.min_sizes):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step
        s = torch.tensor(sizes, dtype=torch.float64)
        grid_y = cy.view(rows, 1, 1).expand(rows, cols, len(sizes))
        grid_x = cx.view(1, cols, 1).expand(rows, cols, len(sizes))
        side = s.view(1, 1, -1).expand(rows, cols, len(sizes))
        out.append(torch.stack([grid_x, grid_y, side, side], dim=-1).reshape(-1, 4))
    return torch.cat(out).float()


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Box regression ``[..., P, 4]`` -> corners (x1, y1, x2, y2) in input pixels."""
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=-1)


def decode_landmarks(pred: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Landmark regression ``[..., P, 10]`` -> points ``[..., P, 5, 2]`` in input pixels."""
    offsets = pred.reshape(*pred.shape[:-1], 5, 2)
    return priors[..., None, :2] + offsets * variances[0] * priors[..., None, 2:]

"""e4e style encoder (IR-SE-50 + gradual style blocks): aligned face -> W+ around ``latent_avg``.

Paper: VSPBFR, Pattern Recognition 2025, Sec. 3.2 (the style encoder maps the degraded face to
W+ codes that condition the code diffuser); encoder architecture from "Designing an Encoder for
StyleGAN Image Manipulation" (Tov et al., 2021).

Input: ``[B, 3, R, R]`` in [-1, 1] at the face resolution (512); it is resized bilinearly to
``input_resolution`` (256) first, exactly as the official ``get_w_plus`` does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EqualLinear

__all__ = ["StyleEncoderConfig", "StyleEncoder", "E4E_IRSE50_1024"]


@dataclass(frozen=True)
class StyleEncoderConfig:
    num_ws: int = 18                             # W+ rows (2 * log2(1024) - 2 for the 1024 decoder)
    w_dim: int = 512                             # W+ row dimension
    widths: tuple[int, ...] = (64, 128, 256, 512)  # IR-SE stage widths (the last feeds the style blocks)
    units: tuple[int, ...] = (3, 4, 14, 3)       # bottleneck units per stage (IR-SE-50)
    coarse_ws: int = 3                           # rows 0..coarse_ws-1 come from the 1/16 feature map
    middle_ws: int = 7                           # rows coarse_ws..middle_ws-1 from the 1/8 map, the rest from 1/4
    input_resolution: int = 256                  # faces are resized to this before encoding
    in_channels: int = 3                         # input image channels
    se_reduction: int = 16                       # squeeze-excitation reduction

    def validate(self) -> None:
        if len(self.widths) != 4 or len(self.units) != 4:
            raise ValueError("StyleEncoderConfig needs exactly four IR-SE stages")
        if not 0 < self.coarse_ws <= self.middle_ws <= self.num_ws:
            raise ValueError("need 0 < coarse_ws <= middle_ws <= num_ws")
        if self.input_resolution % 16 or self.input_resolution < 32:
            raise ValueError("input_resolution must be a multiple of 16 and >= 32")


E4E_IRSE50_1024 = StyleEncoderConfig()


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BottleneckIRSE(nn.Module):
    def __init__(self, in_ch: int, depth: int, stride: int, reduction: int):
        super().__init__()
        self.stride = stride
        if in_ch == depth:
            self.shortcut_layer = None     # MaxPool2d(1, stride) == strided subsampling
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_layer is None:
            shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        else:
            shortcut = self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


class GradualStyleBlock(nn.Module):
    """``log2(spatial)`` x [3x3 stride-2 conv + LeakyReLU(0.01)] down to 1x1, then EqualLinear."""

    def __init__(self, in_ch: int, out_ch: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_ch, out_ch)
        self.out_ch = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_ch))


def stage_layout(depths: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-unit output widths of an IR-SE body (as read from a file) -> (width, unit count) of each stage."""
    widths: list[int] = []
    units: list[int] = []
    for d in depths:
        if widths and widths[-1] == d:
            units[-1] += 1
        else:
            widths.append(int(d))
            units.append(1)
    return tuple(widths), tuple(units)


def ir_se_trunk(in_channels: int, widths: tuple[int, ...], units: tuple[int, ...], se_reduction: int
                ) -> tuple[nn.Sequential, nn.Sequential]:
    """The IR-SE backbone shared by e4e and ArcFace: ``input_layer`` (3x3 conv, BatchNorm, PReLU) and ``body``
    (per stage, one stride-2 :class:`BottleneckIRSE` then ``units[i] - 1`` stride-1 ones)."""
    input_layer = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
    blocks: list[nn.Module] = []
    in_ch = widths[0]
    for depth, n in zip(widths, units):
        blocks.append(BottleneckIRSE(in_ch, depth, 2, se_reduction))
        blocks += [BottleneckIRSE(depth, depth, 1, se_reduction) for _ in range(n - 1)]
        in_ch = depth
    return input_layer, nn.Sequential(*blocks)


class StyleEncoder(nn.Module):
    """Encoder4Editing: ``[B, 3, R, R]`` in [-1, 1] -> W+ ``[B, num_ws, w_dim]`` (``latent_avg`` added)."""

    def __init__(self, config: StyleEncoderConfig = E4E_IRSE50_1024):
        super().__init__()
        config.validate()
        self.config = config
        w = config.widths
        self.input_layer, self.body = ir_se_trunk(config.in_channels, w, config.units, config.se_reduction)
        ends = [sum(config.units[: i + 1]) - 1 for i in range(4)]
        self._c1, self._c2, self._c3 = ends[1], ends[2], ends[3]
        r16 = config.input_resolution // 16
        self.styles = nn.ModuleList()
        for i in range(config.num_ws):
            spatial = r16 if i < config.coarse_ws else (2 * r16 if i < config.middle_ws else 4 * r16)
            self.styles.append(GradualStyleBlock(w[3], config.w_dim, spatial))
        self.latlayer1 = nn.Conv2d(w[2], w[3], 1)
        self.latlayer2 = nn.Conv2d(w[1], w[3], 1)
        self.register_buffer("latent_avg", torch.zeros(config.num_ws, config.w_dim))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces ``[B, C, R, R]`` in [-1, 1] -> absolute W+ ``[B, num_ws, w_dim]``."""
        size = self.config.input_resolution
        if faces.shape[-2:] != (size, size):
            faces = F.interpolate(faces, (size, size), mode="bilinear", align_corners=False)
        x = self.input_layer(faces)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._c1:
                c1 = x
            elif i == self._c2:
                c2 = x
            elif i == self._c3:
                c3 = x
        cfg = self.config
        w0 = self.styles[0](c3)
        deltas = [w0]
        features = c3
        p2 = c3
        for i in range(1, cfg.num_ws):
            if i == cfg.coarse_ws:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            if i == cfg.middle_ws:
                features = _upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](features))
        ws = w0[:, None, :] + torch.stack([torch.zeros_like(w0)] + deltas[1:], dim=1)  # [B, num_ws, w_dim]
        return ws + self.latent_avg.to(ws.dtype)


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

"""StyleGAN2 synthesis network used as VSPBFR's facial feature bank.

Paper: VSPBFR, Pattern Recognition 2025, Sec. 3.3 (the frozen StyleGAN2 decoder renders a bank of
facial features from the diffused visual style prompts).  Architecture: StyleGAN2 config-f at 1024
(rosinality layout), run on W+ directly; the mapping network is never executed at inference and is
not part of this module (its released weights are checked and dropped by the loader).

Feature ``k`` (``k = 0..log2(res)-2``) is the output of ``conv1`` for ``k = 0`` and of the first,
upsampling, conv of resolution ``2**(k+2)`` otherwise; the restoration network consumes 8..512.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .layers import StyledConv, ToRGB

__all__ = ["StyleGAN2Config", "StyleGAN2Synthesis", "FFHQ_1024"]


@dataclass(frozen=True)
class StyleGAN2Config:
    resolution: int = 1024        # output resolution (power of two >= 8)
    w_dim: int = 512              # style dimension
    channel_base: int = 32768     # channels(res) = min(channel_max, channel_base // res); 32768 = config-f x2
    channel_max: int = 512        # cap on channels per resolution

    @property
    def log_size(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def num_ws(self) -> int:
        return 2 * self.log_size - 2

    def channels(self, res: int) -> int:
        return min(self.channel_max, self.channel_base // res)

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"StyleGAN2 resolution must be a power of two >= 8, got {self.resolution}")


FFHQ_1024 = StyleGAN2Config()


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))


class StyleGAN2Synthesis(nn.Module):
    """W+ ``[B, num_ws, w_dim]`` -> per-resolution feature maps (and, on request, the RGB image)."""

    def __init__(self, config: StyleGAN2Config = FFHQ_1024):
        super().__init__()
        config.validate()
        self.config = config
        c, s = config.channels, config.w_dim
        self.input = ConstantInput(c(4))
        self.conv1 = StyledConv(c(4), c(4), 3, s)
        self.to_rgb1 = ToRGB(c(4), s, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = c(4)
        for i in range(3, config.log_size + 1):
            out_ch = c(2 ** i)
            self.convs.append(StyledConv(in_ch, out_ch, 3, s, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, s))
            self.to_rgbs.append(ToRGB(out_ch, s))
            in_ch = out_ch

    def noise_shapes(self, batch: int, num_features: int | None = None) -> list[tuple[int, ...]]:
        """Shapes of the noise maps consumed to produce the first ``num_features`` features (all if None).

        Order: ``conv1``, ``convs.0``, ``convs.1``, ... (the official draw order).
        """
        n_convs = 1 + len(self.convs) if num_features is None else 1 + 2 * (num_features - 1) - 1
        shapes = [(batch, 1, 4, 4)]
        for i in range(n_convs - 1):
            r = 2 ** (3 + i // 2)
            shapes.append((batch, 1, r, r))
        return shapes

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor | None], num_features: int | None = None,
                return_image: bool = False, channels_last: bool = False
                ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Render features from W+.

        Args:
            ws: ``[B, >= needed rows, w_dim]`` W+ codes (rows used the standard way: conv1 row 0,
                to_rgb1 row 1, convs[i-1]/convs[i]/to_rgbs row i/i+1/i+2 for odd i).
            noise: one ``[B, 1, r, r]`` map (or None) per conv in ``noise_shapes`` order.
            num_features: stop once this many features exist (``None``: all ``log2(res) - 1``).
            return_image: also run every ToRGB and return the full-resolution RGB image; requires
                ``num_features=None``.
            channels_last: run in the NHWC memory layout (faster convolutions on CPU and tensor cores).
        Returns:
            ``(features, image_or_None)``; ``features[k]`` is at resolution ``2**(k+2)``.
        """
        total = self.config.log_size - 1
        num_features = total if num_features is None else num_features
        if return_image and num_features != total:
            raise ValueError("return_image needs every resolution (num_features=None)")
        x = self.input.input.to(ws.dtype).expand(ws.shape[0], -1, -1, -1)
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        x = self.conv1(x, ws[:, 0], noise[0])
        feats = [x]
        skip = self.to_rgb1(x, ws[:, 1]) if return_image else None
        for k in range(1, num_features):
            i = 2 * k - 1                                   # W+ row of the upsampling conv
            up, conv = self.convs[2 * k - 2], self.convs[2 * k - 1]
            x = up(x, ws[:, i], noise[2 * k - 1])
            feats.append(x)
            if k == num_features - 1 and not return_image:
                break
            x = conv(x, ws[:, i + 1], noise[2 * k])
            if return_image:
                skip = self.to_rgbs[k - 1](x, ws[:, i + 2], skip)
        return feats, skip

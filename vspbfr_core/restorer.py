"""Restoration auto-encoder with SMART layers.

Paper: VSPBFR, Pattern Recognition 2025, Sec. 3.4 (style-modulated aggregation transformation,
SMART: four dilated modulated convolutions sharing one modulation, fused) and Sec. 3.5 (the
restoration network combining the degraded face, the StyleGAN feature bank, the visual style
prompts and random style codes).

Data flow (official ``Restoration_net.forward``):
1. random ``z`` -> mapping MLP -> noise latent ``N [B, n_latent, w_dim]`` (two ``z`` mixed at an
   inject index, or one repeated);
2. ``L = cat(prompt rows 0..n_latent-1, N)``, ``[B, n_latent, 2 w_dim]``;
3. encoder: SMART + modulated stride-2 conv per level (512 -> 4), rows used backwards
   (15, 13, ..., 3), then ``x_global`` and the skip list;
4. decoder: StyleGAN2-like upsampling with SMART layers; each level adds the encoder skip and the
   feature bank map; styles are ``cat(L[:, k], x_global)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .layers import (ConvLayer, EqualConv2d, EqualLinear, FusedLeakyReLU, MappingNetwork, NoiseInjection,
                     StyledConv, ToRGB, bias_lrelu_, modulated_conv)

__all__ = ["RestorationConfig", "RestorationNet", "SMARTLayer", "VSPBFR_RESTORER_512"]

DILATIONS = (1, 2, 4, 8)


@dataclass(frozen=True)
class RestorationConfig:
    resolution: int = 512         # face resolution (power of two >= 8)
    w_dim: int = 512              # style dimension of W+ rows and of the mapping MLP
    n_mlp: int = 8                # mapping MLP depth
    channel_base: int = 32768     # channels(res) = min(channel_max, channel_base // res) (channel multiplier 2)
    channel_max: int = 512
    lr_mlp: float = 0.01          # mapping MLP learning-rate multiplier
    in_channels: int = 3          # image channels
    global_dim: int = 1024        # x_global width (2 * w_dim in the release)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    def channels(self, res: int) -> int:
        return min(self.channel_max, self.channel_base // res)

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"restoration resolution must be a power of two >= 8, got {self.resolution}")
        for res in (2 ** i for i in range(2, self.log_size + 1)):
            if self.channels(res) % 4:
                raise ValueError("SMART layers need channel counts divisible by 4")


VSPBFR_RESTORER_512 = RestorationConfig()


class DilatedModulatedConv(nn.Module):
    """One SMART branch: weight ``[1, out/4, in, 3, 3]``, no modulation of its own."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, 3, 3))
        self.scale = 1.0 / math.sqrt(in_ch * 9)


class SMARTLayer(nn.Module):
    """Style-modulated aggregation transformation.

    One style modulation shared by four modulated+demodulated 3x3 convs with dilation 1/2/4/8
    (``out/4`` channels each), concatenated, fused by a 3x3 EqualConv + biased lReLU, noise added,
    then a second biased lReLU.
    """

    def __init__(self, in_ch: int, out_ch: int, style_dim: int):
        super().__init__()
        self.ModulatedConv2ds = nn.ModuleList([DilatedModulatedConv(in_ch, out_ch // 4) for _ in DILATIONS])
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.fusion = ConvLayer(out_ch, out_ch, 3)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        s = self.modulation(style)                       # [B, in], shared by the four branches
        branches = [modulated_conv(x, branch.weight, branch.scale, s, True, padding=r, dilation=r)
                    for branch, r in zip(self.ModulatedConv2ds, DILATIONS)]
        conv, act = self.fusion[0], self.fusion[1]
        y = bias_lrelu_(conv(torch.cat(branches, dim=1)), act.bias)
        return bias_lrelu_(self.noise(y, noise, inplace=True), self.activate.bias)


class LargeConvLayer(nn.Module):
    """Four dilated EqualConvs (no bias) concatenated, a 1x1 ConvLayer fusion and a biased lReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.dilated_convs = nn.ModuleList([
            EqualConv2d(in_ch, out_ch // 4, kernel_size, padding=(kernel_size - 1) * r // 2, dilation=r, bias=False)
            for r in DILATIONS])
        self.fusion = ConvLayer(out_ch, out_ch, 1)
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.fusion(torch.cat([conv(x) for conv in self.dilated_convs], dim=1)))


@dataclass
class EncoderOutput:
    x_global: torch.Tensor                 # [B, global_dim]
    features: list[torch.Tensor]           # [F0 (4x4, incl. final_transfer), f6 (8x8), ..., f0 (res x res)]


class RestorationNet(nn.Module):
    """Restoration auto-encoder: degraded face + feature bank + style prompts + random codes -> face."""

    def __init__(self, config: RestorationConfig = VSPBFR_RESTORER_512):
        super().__init__()
        config.validate()
        self.config = config
        c, w = config.channels, config.w_dim
        enc_dim, dec_dim = 2 * w, 2 * w + config.global_dim
        # decoder (names follow the released keys)
        self.style = MappingNetwork(w, config.n_mlp, config.lr_mlp)
        self.conv1 = SMARTLayer(c(4), c(4), dec_dim)
        self.to_rgb1 = ToRGB(c(4), dec_dim, upsample=False, out_ch=config.in_channels)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = c(4)
        for i in range(3, config.log_size + 1):
            out_ch = c(2 ** i)
            self.convs.append(StyledConv(in_ch, out_ch, 3, dec_dim, upsample=True))
            self.convs.append(SMARTLayer(out_ch, out_ch, dec_dim))
            self.to_rgbs.append(ToRGB(out_ch, dec_dim, out_ch=config.in_channels))
            in_ch = out_ch
        # encoder
        self.down_from_big = LargeConvLayer(config.in_channels, c(config.resolution), 1)
        self.encoder_convs = nn.ModuleList()
        for i in range(config.log_size, 2, -1):
            ch, ch_out = c(2 ** i), c(2 ** (i - 1))
            self.encoder_convs.append(SMARTLayer(ch, ch, enc_dim))
            self.encoder_convs.append(StyledConv(ch, ch_out, 3, enc_dim, downsample=True))
        self.final_layer = LargeConvLayer(c(4), c(4), 3)
        self.final_linear = nn.Sequential(EqualLinear(c(4) * 16, config.global_dim, activation=True), nn.Dropout(0.5))
        self.final_transfer = EqualLinear(config.global_dim, c(4) * 16, activation=True)

    # -- noise bookkeeping -------------------------------------------------------------------------

    def encoder_noise_shapes(self, batch: int) -> list[tuple[int, ...]]:
        shapes = []
        for i in range(self.config.log_size, 2, -1):
            shapes += [(batch, 1, 2 ** i, 2 ** i), (batch, 1, 2 ** (i - 1), 2 ** (i - 1))]
        return shapes

    def decoder_noise_shapes(self, batch: int) -> list[tuple[int, ...]]:
        shapes = [(batch, 1, 4, 4)]
        for i in range(3, self.config.log_size + 1):
            shapes += [(batch, 1, 2 ** i, 2 ** i)] * 2
        return shapes

    # -- stages ------------------------------------------------------------------------------------

    def map_noise(self, z: torch.Tensor) -> torch.Tensor:
        """Mapping MLP: ``z [B, w_dim] -> w [B, w_dim]``, in the MLP's own precision (float32 when the rest is half)."""
        return self.style(z.to(self.style[1].weight.dtype))

    def noise_latent(self, w1: torch.Tensor, w2: torch.Tensor | None, inject_index: torch.Tensor | int | None
                     ) -> torch.Tensor:
        """``[B, n_latent, w_dim]``: rows ``< inject_index`` from ``w1``, the rest from ``w2``.

        ``inject_index`` may be per sample (``[B]`` long); ``None`` (or ``n_latent``) repeats ``w1``.
        """
        n = self.config.n_latent
        if w2 is None or inject_index is None:
            return w1[:, None, :].expand(-1, n, -1)
        idx = torch.as_tensor(inject_index, device=w1.device).reshape(-1, 1)          # [B or 1, 1]
        first = (torch.arange(n, device=w1.device)[None, :] < idx)[:, :, None]           # [B, n, 1]
        return torch.where(first, w1[:, None, :], w2[:, None, :])

    def style_latent(self, prompts: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor | None,
                     inject_index: torch.Tensor | int | None, dtype: torch.dtype) -> torch.Tensor:
        """``L = cat(prompt rows, noise latent)`` ``[B, n_latent, 2 w_dim]`` in the network's ``dtype``."""
        n = self.config.n_latent
        return torch.cat([prompts[:, :n].to(dtype), self.noise_latent(w1, w2, inject_index).to(dtype)], dim=-1)

    def encode(self, faces: torch.Tensor, latent: torch.Tensor, noise: list[torch.Tensor | None]) -> EncoderOutput:
        """Encoder half; ``latent`` is ``L [B, n_latent, 2 w_dim]``, ``noise`` in ``encoder_noise_shapes`` order."""
        h = self.down_from_big(faces)
        skips = []
        n = self.config.n_latent
        for j in range(len(self.encoder_convs) // 2):
            row = latent[:, n - 1 - 2 * j]
            h = self.encoder_convs[2 * j](h, row, noise[2 * j])
            skips.append(h)
            h = self.encoder_convs[2 * j + 1](h, row, noise[2 * j + 1])
        g = self.final_layer(h)
        x_global = self.final_linear(g.flatten(1))
        f0 = g + self.final_transfer(x_global).view_as(g)
        return EncoderOutput(x_global, [f0] + skips[::-1])

    def decode(self, enc: EncoderOutput, bank: list[torch.Tensor], latent: torch.Tensor,
               noise: list[torch.Tensor | None], bank_scale: float = 1.0) -> torch.Tensor:
        """Decoder half; ``bank[k]`` is the feature map at ``2**(k+2)`` (``k >= 1`` consumed)."""
        x_global = enc.x_global

        def s(k: int) -> torch.Tensor:
            return torch.cat([latent[:, k], x_global], dim=1)

        out = self.conv1(enc.features[0], s(0), noise[0])
        skip = self.to_rgb1(out, s(1))
        for k in range(len(self.to_rgbs)):
            i = 2 * k + 1
            out = self.convs[2 * k](out, s(i), noise[2 * k + 1])
            feat = bank[k + 1].to(out.dtype)
            out = out + enc.features[k + 1] + (feat if bank_scale == 1.0 else feat * bank_scale)
            out = self.convs[2 * k + 1](out, s(i + 1), noise[2 * k + 2])
            skip = self.to_rgbs[k](out, s(i + 2), skip)
        return skip

    def forward(self, faces: torch.Tensor, bank: list[torch.Tensor], prompts: torch.Tensor, z1: torch.Tensor,
                z2: torch.Tensor | None, inject_index: torch.Tensor | int | None,
                enc_noise: list[torch.Tensor | None], dec_noise: list[torch.Tensor | None],
                bank_scale: float = 1.0) -> torch.Tensor:
        """``faces [B, 3, R, R]`` in [-1, 1] -> restored ``[B, 3, R, R]`` (unclamped)."""
        w1 = self.map_noise(z1)
        w2 = self.map_noise(z2) if z2 is not None else None
        latent = self.style_latent(prompts, w1, w2, inject_index, faces.dtype)
        enc = self.encode(faces, latent, enc_noise)
        return self.decode(enc, bank, latent, dec_noise, bank_scale)

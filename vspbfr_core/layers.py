"""Shared StyleGAN2-style primitives in pure PyTorch (no compiled extensions).

Paper: VSPBFR, Pattern Recognition 2025, Sec. 3 (the StyleGAN2 building blocks it reuses).
Numerics follow the official code's CPU paths: the biased leaky ReLU is
``leaky_relu(x + b, 0.2) * sqrt(2)`` and ``upfirdn2d`` is zero-insertion, padding and a true
convolution with the FIR kernel.  Modulated convolutions scale the weights per sample exactly as
the official code does (``scale * weight * style``, then demodulation) and run one convolution per
sample on CPU or for a single face; for batches on an accelerator they modulate the activations
instead (``conv(x * s, W) * d`` equals ``conv(x, W * s * d)`` in real arithmetic), which keeps one
weight tensor for the whole batch and avoids grouped convolutions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)

#----------------------------------------------------------------------------
# Functional ops


def bias_lrelu(x: torch.Tensor, bias: torch.Tensor | None, slope: float = 0.2, gain: float = SQRT2) -> torch.Tensor:
    """``leaky_relu(x + bias, slope) * gain`` with the bias broadcast on dim 1."""
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.to(x.dtype).view(shape)
    return F.leaky_relu(x, slope) * gain


def bias_lrelu_(x: torch.Tensor, bias: torch.Tensor | None, slope: float = 0.2, gain: float = SQRT2) -> torch.Tensor:
    """In-place :func:`bias_lrelu` on a temporary ``x`` (a fresh convolution output)."""
    if bias is not None:
        x.add_(bias.to(x.dtype).view([1, -1] + [1] * (x.ndim - 2)))
    return F.leaky_relu_(x, slope).mul_(gain)


def pixel_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return x * torch.rsqrt(torch.mean(x * x, dim=dim, keepdim=True) + 1e-8)


def blur_kernel_2d(taps: tuple[int, ...] = (1, 3, 3, 1), gain: float = 1.0) -> torch.Tensor:
    """Separable FIR kernel ``outer(k, k) / sum * gain`` (float32, like the official buffers)."""
    k = torch.tensor(taps, dtype=torch.float64, device="cpu")
    k2 = torch.outer(k, k)
    return (k2 / k2.sum() * gain).to(torch.float32)


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """``upfirdn2d(x, kernel, up=1, down=1, pad)``: pad then depthwise true convolution.

    Symmetric padding goes to the convolution itself (no padded copy of ``x``; same values).
    """
    c = x.shape[1]
    k = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    if pad[0] == pad[1]:
        return F.conv2d(x, k, padding=pad[0], groups=c)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, k, groups=c)


def fir_upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``upfirdn2d(x, kernel, up=2, pad=(2, 1))`` for a 4x4 kernel, as a strided transposed conv.

    Zero insertion + pad (2, 1) + true convolution is exactly ``conv_transpose2d(stride=2,
    padding=1)`` with the unflipped kernel.
    """
    c = x.shape[1]
    k = kernel.to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv_transpose2d(x, k, stride=2, padding=1, groups=c)


#----------------------------------------------------------------------------
# Equalized-learning-rate layers


class EqualLinear(nn.Module):
    """Linear layer with runtime weight scaling ``lr_mul / sqrt(in)`` and optional biased lReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.scale
        b = self.bias.to(x.dtype) * self.lr_mul if self.bias is not None else None
        if self.activation:
            return bias_lrelu(F.linear(x, w), b)
        return F.linear(x, w, b)


class EqualConv2d(nn.Module):
    """Conv2d with runtime weight scaling ``1 / sqrt(in * k * k)``; dilation supported."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.conv2d(x, self.weight.to(x.dtype) * self.scale, b, self.stride, self.padding, self.dilation)


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias followed by ``leaky_relu(., 0.2) * sqrt(2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_lrelu(x, self.bias)


class ConvLayer(nn.Sequential):
    """``EqualConv2d(k, pad k//2, no bias)`` then ``FusedLeakyReLU`` (keys ``0.weight``, ``1.bias``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__(EqualConv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
                         FusedLeakyReLU(out_ch))


class NoiseInjection(nn.Module):
    """``x + weight * noise`` with ``noise`` ``[B, 1, H, W]`` given explicitly (``None`` adds nothing)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
        if noise is None:
            return x
        if inplace:
            return x.addcmul_(noise.to(x.dtype), self.weight.to(x.dtype))
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class FIRKernel(nn.Module):
    """Holds a fixed FIR kernel as a non-persistent buffer (rebuilt, never loaded)."""

    def __init__(self, gain: float):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d(gain=gain), persistent=False)


#----------------------------------------------------------------------------
# Modulated convolutions


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """``rsqrt(sum_{in,kh,kw} (weight * s)^2 + 1e-8)`` per sample and output channel, ``[B, out]``.

    ``weight`` is the already scaled ``[out, in, kh, kw]`` kernel, ``styles`` ``[B, in]``.
    """
    w2 = weight.square().sum(dim=(2, 3))                  # [out, in]
    return torch.rsqrt(styles.square() @ w2.t() + 1e-8)   # [B, out]


def modulated_weights(weight: torch.Tensor, scale: float, styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """Per-sample kernels ``[B, out, in, k, k]`` from ``weight [1, out, in, k, k]`` (official order of operations)."""
    w = scale * weight.to(styles.dtype) * styles[:, None, :, None, None]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
    return w


def per_sample_weights(x: torch.Tensor) -> bool:
    """Whether modulated convolutions scale the weights (one conv per sample) or the activations."""
    return x.shape[0] == 1 or x.device.type == "cpu"


Mode = str   # "same" | "up" | "down"


def modulated_conv(x: torch.Tensor, weight: torch.Tensor, scale: float, styles: torch.Tensor, demodulate: bool, *,
                   mode: Mode = "same", padding: int = 0, dilation: int = 1) -> torch.Tensor:
    """``x [B, in, H, W]`` convolved with ``weight [1, out, in, k, k]`` modulated by ``styles [B, in]``.

    ``mode="up"`` is the stride-2 transposed convolution (``2H + 1``) and ``"down"`` the stride-2
    convolution of an already blurred input; the FIR filtering around them is the caller's.
    """
    def conv(inp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if mode == "up":
            return F.conv_transpose2d(inp, w.transpose(0, 1), stride=2)
        return F.conv2d(inp, w, stride=2 if mode == "down" else 1, padding=padding, dilation=dilation)

    if per_sample_weights(x):
        w = modulated_weights(weight, scale, styles, demodulate)
        outs = [conv(x[b:b + 1], w[b]) for b in range(x.shape[0])]
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    w = weight[0].to(x.dtype) * scale                       # [out, in, k, k], shared by the batch
    y = conv(x * styles[:, :, None, None], w)
    if demodulate:
        y = y * demodulation(w, styles)[:, :, None, None]
    return y


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (optional demodulation, 2x up- or down-sampling).

    Parameters: ``weight [1, out, in, k, k]``, ``modulation`` (EqualLinear style -> in, bias 1).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, downsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.demodulate, self.upsample, self.downsample = demodulate, upsample, downsample
        self.padding = kernel_size // 2
        if upsample:
            self.blur = FIRKernel(gain=4.0)
        elif downsample:
            self.blur = FIRKernel(gain=1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)                                  # [B, in]
        if self.upsample:
            y = modulated_conv(x, self.weight, self.scale, s, self.demodulate, mode="up")   # [B, out, 2H+1, 2W+1]
            return fir_filter(y, self.blur.kernel, (1, 1))
        if self.downsample:
            x = fir_filter(x, self.blur.kernel, (2, 2))
            return modulated_conv(x, self.weight, self.scale, s, self.demodulate, mode="down")
        return modulated_conv(x, self.weight, self.scale, s, self.demodulate, padding=self.padding)


class StyledConv(nn.Module):
    """Modulated conv, noise injection, biased leaky ReLU (keys ``conv.*``, ``noise.weight``, ``activate.bias``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, downsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, upsample=upsample, downsample=downsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        y = self.noise(self.conv(x, style), noise, inplace=True)      # the conv output is a fresh tensor
        return bias_lrelu_(y, self.activate.bias)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus bias, adding the 2x-upsampled skip."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, out_ch: int = 3):
        super().__init__()
        if upsample:
            self.upsample = FIRKernel(gain=4.0)
        self.conv = ModulatedConv2d(in_ch, out_ch, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + fir_upsample2x(skip, self.upsample.kernel)
        return out


class MappingNetwork(nn.Sequential):
    """PixelNorm then ``n_mlp`` x EqualLinear(lr_mul, biased lReLU); keys ``1..n_mlp`` (index 0 is PixelNorm)."""

    def __init__(self, w_dim: int, n_mlp: int, lr_mul: float):
        super().__init__(PixelNorm(), *[EqualLinear(w_dim, w_dim, lr_mul=lr_mul, activation=True) for _ in range(n_mlp)])


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, dim=1)

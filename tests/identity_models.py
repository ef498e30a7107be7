"""Tiny ArcFace files for the identity tests (the facexlib layout and key names, 8 to 32 channels, 32 px faces)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from vspbfr_core.identity.arcface import ArcFaceConfig, ArcFaceIRSE

TINY_ARCFACE = ArcFaceConfig(widths=(8, 16, 24, 32), units=(1, 2, 1, 1), embedding_dim=24, input_resolution=32,
                             se_reduction=4)


def randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values for every parameter and BatchNorm statistic (defaults would hide mistakes: var 1, mean 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return net.eval()


def tiny_arcface_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny IR-SE ArcFace state dict with the released file's key names (no global RNG is used)."""
    return {k: v.clone() for k, v in randomise(ArcFaceIRSE(TINY_ARCFACE), seed).state_dict().items()}


def write_tiny_arcface(path: str | os.PathLike[str], seed: int = 0) -> Path:
    path = Path(path)
    torch.save(tiny_arcface_state_dict(seed), path)
    return path

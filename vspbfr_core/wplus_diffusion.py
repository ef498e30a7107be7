"""Code diffuser (4 TACC blocks) and the 4-step x0-parameterised DDPM sampler in W+.

Paper: VSPBFR, Pattern Recognition 2025, Sec. 3.2 (visual style prompt learning: a diffusion model
in W+ turns the degraded face's codes into clean "visual style prompts").

Sampling (official inference): ``x_T ~ N(0, I)``; for ``t = T-1 .. 0`` the denoiser predicts ``x0``
conditioned on the encoder's W+ and ``t / T``; the next state is the posterior mean
``coef1[t] * x0 + coef2[t] * x_t``.  The official code also draws a per-step noise tensor that it
never adds; it is not drawn here.  The schedule is computed in float64 and stored in float32 (the
official buffers), then cast to the working dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SQRT2, pixel_norm

__all__ = ["CodeDiffuserConfig", "CodeDiffuser", "DDPMSchedule", "sample_wplus", "VSPBFR_CODE_DIFFUSER"]


@dataclass(frozen=True)
class CodeDiffuserConfig:
    w_dim: int = 512             # W+ row dimension (token width)
    num_blocks: int = 4          # TACC blocks applied in sequence
    timesteps: int = 4           # DDPM steps T (also the timestep normaliser t / T)
    attn_tokens: int = 18        # channel attention temperature is sqrt(attn_tokens) (hard-coded 18 officially)
    linear_start: float = 0.1    # beta schedule: linspace(sqrt(start), sqrt(end), T) ** 2
    linear_end: float = 0.99


VSPBFR_CODE_DIFFUSER = CodeDiffuserConfig()


class SpatialAttention(nn.Module):
    """Channel-affinity attention: ``softmax_d(k^T q / sqrt(D))`` applied to ``v``, then LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.q_matrix = nn.Linear(dim, dim, bias=False)
        self.k_matrix = nn.Linear(dim + 1, dim, bias=False)
        self.v_matrix = nn.Linear(dim, dim, bias=False)
        self.dim = dim

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        q = self.q_matrix(x)                                   # [B, L, D]
        k = self.k_matrix(c).transpose(1, 2)                   # [B, D, L]
        v = self.v_matrix(x)                                   # [B, L, D]
        a = torch.softmax(torch.matmul(k, q) / math.sqrt(self.dim), dim=1)   # [B, D, D], over d
        return F.layer_norm(torch.matmul(v, a), (self.dim,))


class _GainShift(nn.Sequential):
    """Linear(D+1 -> D), LayerNorm, scaled lReLU, Linear(D -> D) (keys 0, 1, 3)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim + 1, dim), nn.LayerNorm(dim), _ScaledLeakyReLU(), nn.Linear(dim, dim))


class _ScaledLeakyReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2) * SQRT2


class TACCBlock(nn.Module):
    """Timestep-aware cross-attention block of the code diffuser."""

    def __init__(self, dim: int, attn_tokens: int):
        super().__init__()
        self.q_matrix = nn.Linear(dim + 1, dim, bias=False)
        self.k_matrix = nn.Linear(dim, dim, bias=False)
        self.v_matrix = nn.Linear(dim, dim, bias=False)
        self.gamma_ = _GainShift(dim)
        self.beta_ = _GainShift(dim)
        self.attention_layer = SpatialAttention(dim)
        self.dim, self.temperature = dim, math.sqrt(attn_tokens)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x, dim=1)                               # over the token axis L, per channel
        k = self.k_matrix(x)                                   # [B, L, D]
        v = self.v_matrix(x)
        q = self.q_matrix(c).transpose(1, 2)                   # [B, D, L]
        a = torch.softmax(torch.matmul(k, q) / self.temperature, dim=-1)   # [B, L, L]
        h = torch.matmul(a, v) + self.attention_layer(x, c)
        h = F.layer_norm(h, (self.dim,))
        gamma = torch.sigmoid(self.gamma_(c))
        beta = F.leaky_relu(self.beta_(c), 0.2) * SQRT2
        return h * (1.0 + gamma) + beta


class CodeDiffuser(nn.Module):
    """x0 predictor: ``(x_t [B, L, D], cond [B, L, D], t [B]) -> x0 [B, L, D]``."""

    def __init__(self, config: CodeDiffuserConfig = VSPBFR_CODE_DIFFUSER):
        super().__init__()
        self.config = config
        self.att_mapper = nn.ModuleList([TACCBlock(config.w_dim, config.attn_tokens) for _ in range(config.num_blocks)])

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = (t.to(torch.float32) / self.config.timesteps).to(cond.dtype)     # exact: t / 4 in float32
        c = torch.cat([cond, tau.view(-1, 1, 1).expand(-1, cond.shape[1], 1)], dim=-1)   # [B, L, D+1]
        for block in self.att_mapper:
            x = block(x, c)
        return x


class DDPMSchedule:
    """Linear-in-sqrt beta schedule with posterior-mean coefficients (float64 math, float32 storage)."""

    def __init__(self, timesteps: int = 4, linear_start: float = 0.1, linear_end: float = 0.99):
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas = 1.0 - betas
        acp = torch.cumprod(alphas, dim=0)
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        self.timesteps = timesteps
        self.betas = betas.float()
        self.alphas_cumprod = acp.float()
        self.alphas_cumprod_prev = acp_prev.float()
        self.posterior_variance = (betas * (1.0 - acp_prev) / (1.0 - acp)).float()
        self.posterior_mean_coef1 = (betas * acp_prev.sqrt() / (1.0 - acp)).float()
        self.posterior_mean_coef2 = ((1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp)).float()

    @classmethod
    def from_config(cls, config: CodeDiffuserConfig) -> DDPMSchedule:
        return cls(config.timesteps, config.linear_start, config.linear_end)

    def step(self, x0: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """Posterior mean of ``q(x_{t-1} | x_t, x0)`` (the official sampler's deterministic update)."""
        c1 = self.posterior_mean_coef1[t].to(x_t.dtype)
        c2 = self.posterior_mean_coef2[t].to(x_t.dtype)
        return c1 * x0 + c2 * x_t


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def sample_wplus(denoiser: CodeDiffuser, cond: torch.Tensor, x_T: torch.Tensor, schedule: DDPMSchedule,
                 callback: StepCallback | None = None) -> torch.Tensor:
    """Run the reverse process from ``x_T`` conditioned on the encoder's W+ ``cond`` ``[B, L, D]``.

    ``callback(t, x_t, x0_pred, x_next)`` is called after every step (it may raise to interrupt).
    Returns the visual style prompt W+ ``[B, L, D]`` in ``cond``'s dtype.
    """
    if x_T.shape != cond.shape:
        raise ValueError(f"x_T {tuple(x_T.shape)} must match the condition {tuple(cond.shape)}")
    x = x_T.to(cond.dtype)
    for t in reversed(range(schedule.timesteps)):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = denoiser(x, cond, tt)
        x_next = schedule.step(x0, x, t)
        if callback is not None:
            callback(t, x, x0, x_next)
        x = x_next
    return x

"""Tiny model files for tests: the three VSPBFR networks in the official containers, and a RetinaFace-like detector.

A plain helper module (``from tiny_models import write_tiny_checkpoints``); ``tests/`` is on ``sys.path`` under
pytest's default rootdir-relative import mode. The networks use tiny configs (16 px, ``w_dim`` 16) and
deterministic weights, and are written in the layouts of the released files, so they go through the same
``read_checkpoint`` / ``load_checkpoint`` path as the real ones:

* ``style_encoder_decoder.pt``: ``{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': [num_ws, w_dim], 'opts': {...}}``
* ``code_diffuser.pt``: ``{'att_mapper': state_dict}``
* ``restoration_net.pt``: ``{'g_ema': state_dict}``
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from vspbfr_core.encoder import StyleEncoder, StyleEncoderConfig
from vspbfr_core.restorer import RestorationConfig, RestorationNet
from vspbfr_core.stylegan2 import StyleGAN2Config, StyleGAN2Synthesis
from vspbfr_core.wplus_diffusion import CodeDiffuser, CodeDiffuserConfig

TINY_ENCODER = StyleEncoderConfig(
    num_ws=6,                     # 2 * log2(16) - 2
    w_dim=16,
    widths=(16, 32, 48, 64),
    units=(1, 1, 1, 1),
    coarse_ws=2,
    middle_ws=4,
    input_resolution=32,
)
TINY_STYLEGAN = StyleGAN2Config(
    resolution=16,
    w_dim=16,
    channel_base=256,
    channel_max=16,
)
TINY_CODE_DIFFUSER = CodeDiffuserConfig(
    w_dim=16,
    num_blocks=2,
)
TINY_RESTORATION = RestorationConfig(
    resolution=16,
    w_dim=16,
    n_mlp=2,
    channel_base=256,
    channel_max=16,
    global_dim=32,
)
KINDS = ("style_encoder_decoder", "code_diffuser", "restoration_net")


def tiny_official_objects(seed: int = 0) -> dict[str, dict]:
    """The three official container dicts, built from tiny networks with weights fixed by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = StyleEncoder(TINY_ENCODER)
        dec = StyleGAN2Synthesis(TINY_STYLEGAN)
        diffuser = CodeDiffuser(TINY_CODE_DIFFUSER)
        restorer = RestorationNet(TINY_RESTORATION)
        latent_avg = torch.randn(TINY_ENCODER.num_ws, TINY_ENCODER.w_dim)
    enc_sd = {k: v for k, v in enc.state_dict().items() if k != "latent_avg"}
    return {
        "style_encoder_decoder": {
            "state_dict": {"encoder." + k: v for k, v in enc_sd.items()}
                          | {"decoder." + k: v for k, v in dec.state_dict().items()},
            "latent_avg": latent_avg,
            "opts": {"start_from_latent_avg": True, "output_size": TINY_STYLEGAN.resolution},
        },
        "code_diffuser": {"att_mapper": diffuser.state_dict()},
        "restoration_net": {"g_ema": restorer.state_dict()},
    }


def write_tiny_checkpoints(folder: str | os.PathLike[str], seed: int = 0,
                           kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    """Write tiny official-layout ``<kind>.pt`` files into ``folder``; returns ``{kind: path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    objects = tiny_official_objects(seed)
    out: dict[str, Path] = {}
    for kind in kinds:
        path = folder / f"{kind}.pt"
        torch.save(objects[kind], path)
        out[kind] = path
    return out


def write_tiny_detector(path: str | os.PathLike[str], detector: str = "mobile0.25", seed: int = 0) -> Path:
    """A tiny file with RetinaFace's key layout (not a working detector): enough for the download/info checks."""
    body = {"mobile0.25": ["body.stage1.0.0.weight", "body.stage1.0.1.weight"],
            "resnet50": ["body.conv1.weight", "body.layer2.0.conv1.weight"]}[detector]
    keys = body + ["fpn.output1.conv.weight", "ssh1.conv3X3.0.weight", "ssh2.conv3X3.0.weight",
                   "ssh3.conv3X3.0.weight", "ClassHead.0.conv1x1.weight", "BboxHead.0.conv1x1.weight",
                   "LandmarkHead.0.conv1x1.weight"]
    g = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.randn(4, 4, generator=g) for k in keys}, path)
    return path

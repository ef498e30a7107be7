"""vspbfr_core: VSPBFR blind face restoration in pure PyTorch, with no host (ComfyUI / A1111) imports.

"Visual Style Prompt Learning Using Diffusion Models for Blind Face Restoration", Pattern
Recognition 161 (2025) 111312.  Importing this package is cheap: submodules (and torch) load on
first use of a public name.
"""
from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "VSPBFRError": ".errors", "CheckpointError": ".errors", "UnsafeCheckpointError": ".errors",
    "UnsupportedDtypeError": ".errors", "InputError": ".errors", "ModelNotFoundError": ".errors",
    "DownloadError": ".errors",
    "StyleEncoder": ".encoder", "StyleEncoderConfig": ".encoder",
    "StyleGAN2Synthesis": ".stylegan2", "StyleGAN2Config": ".stylegan2",
    "CodeDiffuser": ".wplus_diffusion", "CodeDiffuserConfig": ".wplus_diffusion", "DDPMSchedule": ".wplus_diffusion",
    "sample_wplus": ".wplus_diffusion",
    "RestorationNet": ".restorer", "RestorationConfig": ".restorer",
    "VSPBFRModel": ".model", "RestoreNoise": ".model",
    "load_checkpoint": ".checkpoints", "convert_checkpoint": ".checkpoints", "read_checkpoint": ".checkpoints",
    "make_generator": ".rng",
    "VSPBFRPipeline": ".pipeline", "RestoreOptions": ".pipeline", "RestoreResult": ".pipeline",
    "load_pipeline": ".pipeline",
    "load_detector": ".face", "detect_faces": ".face", "align_faces": ".face", "paste_faces": ".face",
    "Detections": ".face", "AlignedFaces": ".face", "FFHQ_TEMPLATE_512": ".face",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

"""The objects that travel on the pack's custom socket types (``VSPBFR_MODEL``, ``VSPBFR_FACES``, ``VSPBFR_STYLE``).

Plain dataclasses with no ComfyUI import: the executor caches them between runs (that is the model cache; no node
keeps state on ``self``), and the tests build them without ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..vspbfr_core.pipeline import StylePrompts, VSPBFRPipeline


@dataclass
class ModelHandle:
    """``VSPBFR_MODEL``: the three VSPBFR networks, their ``ModelPatcher`` and the precision they run in."""

    pipeline: VSPBFRPipeline          # networks only (no detector); weights on the offload device until used
    patcher: Any                      # comfy.model_patcher.ModelPatcher around pipeline.model
    dtype: torch.dtype                # precision the networks run in
    files: dict[str, str] = field(default_factory=dict)   # kind -> file path, for messages
    detector: Any = None              # the RetinaFace the all-in-one node used last (nodes.ops.LoadedDetector)
    embedder: Any = None              # the identity embedder a restore node used last (nodes.ops.LoadedEmbedder)
    parser: Any = None                # the face-parsing network an all-in-one node pasted with (nodes.ops.LoadedParser)

    @property
    def resolution(self) -> int:
        return self.pipeline.model.resolution


@dataclass
class FaceSet:
    """``VSPBFR_FACES``: the faces found in an IMAGE batch and how each was aligned (all on the CPU).

    ``aligned.crops`` are the original crops ``[F, 3, S, S]``; paste-back warps the restoration's change relative to
    them, so an unchanged crop pastes back unchanged (to float rounding: identical 8-bit pixels, the float values
    within 1e-9).
    """

    detections: Any                   # vspbfr_core.face.Detections (F faces, image_index, order_index)
    aligned: Any                      # vspbfr_core.face.AlignedFaces (crops, affine, inverse, image_index, size)
    detector: str = ""                # the detector that found them (``auto`` resolved)
    keep: Any = field(default=None, repr=False, compare=False)   # keeps that detector loaded while this is cached
    track_ids: list[int] | None = None    # temporal on: the track of each face (the images are video frames)
    smooth_wplus: float = 0.0             # temporal on: W+ / style prompt smoothing the restore side applies
    # where the paste may change pixels: MASK-like [B, H, W] float in [0, 1] on the CPU, image space (e.g. the union
    # of the SEG masks the faces came from, nodes.segs); None: no limit. Multiplied into every face's paste mask.
    limit: torch.Tensor | None = field(default=None, repr=False, compare=False)
    keep_parser: Any = field(default=None, repr=False, compare=False)   # the parsing network a paste used (cache)

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def temporal(self) -> bool:
        """Whether these faces were found with temporal on (they carry track ids)."""
        return self.track_ids is not None

    @property
    def face_keys(self) -> list[int]:
        """Per-face seed keys: the track id of each face (temporal on: one person keeps its noise in every frame),
        else the index of each face within its own image (what the all-in-one node uses)."""
        if self.track_ids is not None:
            return [int(k) for k in self.track_ids]
        return [int(k) for k in self.detections.order_index.tolist()]


@dataclass
class StyleSet:
    """``VSPBFR_STYLE``: W+ codes of a crop batch: the encoder's W+ and the diffused visual style prompts."""

    style: StylePrompts               # encoder_ws, prompts: [F, num_ws, w_dim] float32 on the CPU
    seed: int = 0
    face_keys: list[int] = field(default_factory=list)
    smoothed: bool = False            # the codes were already smoothed per track (temporal): not smoothed again

    def __len__(self) -> int:
        return int(self.style.prompts.shape[0])

"""Identity in restoration: reference photos, best-of-N candidates, "only the matching faces" and the face report.

The pipeline composes this room when an identity embedder is given (:meth:`vspbfr_core.VSPBFRPipeline.__call__`
``embedder=``); without one nothing here runs and restoration is the official one.

* **Reference** (:func:`make_reference`): the largest face of each reference photo is detected and aligned exactly
  as a face to restore; the identity target is the normalised mean of the references' embeddings
  (:func:`~vspbfr_core.identity.mean_embedding`), the reference W+ the mean of their encoder W+ codes.
* **Best-of-N** (``RestoreOptions.candidates = N``): the encoder runs once per face; candidate ``c`` of the face
  with key ``k`` draws all of its noise (diffusion start, style mixing, StyleGAN and restoration noise) from
  ``make_generator(seed, k, candidate=c)``, so candidate 0 is exactly the face a restoration without candidates
  gives.  Every candidate is restored and embedded (one candidate of all faces at a time, through the pipeline's
  chunking and out-of-memory halving, so memory does not grow with N); the face keeps the candidate with the
  highest identity to the target: the reference if one is given, else the face's own input crop.  Ties keep the
  lower index.
* **Only matching** (``only_matching``): the faces whose input crop has identity below ``match_threshold`` (default:
  the embedder's :attr:`~vspbfr_core.identity.FaceEmbedder.match_threshold`) to the reference are not restored;
  the pipeline leaves them untouched in the image.
* **Reference mix** (``reference_mix = x``, ``reference_layers``): after the diffusion (and ``prompt_mix``), the
  style prompt's W+ layers listed in ``reference_layers`` move a fraction ``x`` of the way to the reference W+.

Scores (:class:`FaceIdentity`, one per face, all floats rounded only when written): ``identity_input`` is the
identity of the face as output to its input crop; ``identity_reference`` that of the output face to the reference
(for every face, restored or not); each candidate's ``identity`` is its score against the target.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..checks import describe_value
from ..errors import InputError
from .base import ALIGN_SIZE, FaceEmbedder, identity, mean_embedding

if TYPE_CHECKING:      # the pipeline imports this module, never the reverse at import time
    from ..pipeline import RestoreOptions, StylePrompts, VSPBFRPipeline
    from ..progress import Progress

__all__ = ["IdentityReference", "FaceIdentity", "IdentityRestore", "make_reference", "restore_with_identity",
           "parse_layers", "LAYER_GROUPS", "needs_identity", "check_identity_request", "progress_units",
           "match_threshold", "face_report", "identity_summary"]

log = logging.getLogger(__name__)

# W+ layer groups of a StyleGAN2 generator (Karras et al., StyleGAN, Sec. 3.1): the styles of the 4-8 px layers
# ("coarse": pose, face shape, hair silhouette), the 16-32 px layers ("middle": the facial features, the shape of
# the eyes, nose and mouth) and 64 px and finer ("fine": colour, lighting, skin micro-structure).  Identity lives
# mostly in the middle layers, which is why the reference mix defaults to them: the coarse layers would also
# copy the reference's pose and framing, the fine ones its lighting and colours.
LAYER_GROUPS: dict[str, tuple[int, int | None]] = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, None),
                                                    "all": (0, None)}
_LAYER_SPEC = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layers(spec: str, num_ws: int | None = None) -> tuple[int, ...]:
    """W+ layer indices from ``spec``: a group name (``coarse``, ``middle``, ``fine``, ``all``, or several joined by
    ``+``) or indices and inclusive ranges such as ``"4-7"`` or ``"3,5,8-9"``.

    Without ``num_ws`` only the syntax is checked (open groups end at 17, the last layer of a 1024 px generator);
    with it, indices must be below ``num_ws`` and groups are cut to it.  An empty selection is an error.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"reference_layers: expected a layer group (coarse, middle, fine, all) or indices such as "
                         f"'4-7', got {describe_value(spec)}")
    top = num_ws if num_ws is not None else 18
    out: set[int] = set()
    text = spec.strip().lower()
    if all(part.strip() in LAYER_GROUPS for part in text.split("+")):
        for part in text.split("+"):
            start, stop = LAYER_GROUPS[part.strip()]
            out.update(range(start, min(top, stop if stop is not None else top)))
    else:
        for part in text.split(","):
            m = _LAYER_SPEC.match(part)
            if not m:
                raise InputError(f"reference_layers: cannot read {part.strip()!r} in {spec!r}; use a group "
                                 f"({', '.join(LAYER_GROUPS)}) or indices and ranges such as '4-7' or '3,5,8-9'")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise InputError(f"reference_layers: the range {part.strip()!r} runs backwards")
            if num_ws is not None and b >= num_ws:
                raise InputError(f"reference_layers: layer {b} does not exist; this model's W+ has {num_ws} layers "
                                 f"(0-{num_ws - 1})")
            out.update(range(a, b + 1))
    if not out:
        raise InputError(f"reference_layers: {spec!r} selects no layer of this model's {top}-layer W+")
    return tuple(sorted(out))


@dataclass(frozen=True)
class IdentityReference:
    """One person, from one or more reference photos (see :func:`make_reference`)."""

    embedding: torch.Tensor           # [D] float32 unit vector: the normalised mean of the references' embeddings
    embedder: str                     # the embedder's name; scores against it need the same embedder
    ws: torch.Tensor                  # [num_ws, w_dim] float32: the mean of the references' encoder W+ codes
    crops: torch.Tensor               # [K, 3, S, S] in [0, 1]: each reference's aligned face (S >= 512)
    boxes: tuple[tuple[float, float, float, float], ...] = ()   # each reference's face box in its photo (x1, y1, x2, y2)

    def __len__(self) -> int:
        return int(self.crops.shape[0])


@dataclass
class FaceIdentity:
    """The identity record of one face (see the module docstring)."""

    restored: bool
    identity_input: float | None = None
    identity_reference: float | None = None
    candidates: list[dict[str, float | int | None]] = field(default_factory=list)
    chosen: int | None = None

    def to_json(self, decimals: int = 4) -> dict[str, Any]:
        def r(v: Any) -> Any:
            return None if v is None else round(float(v), decimals)
        return {"identity_input": r(self.identity_input), "identity_reference": r(self.identity_reference),
                "candidates": [{k: (r(v) if k != "index" else v) for k, v in c.items()} for c in self.candidates],
                "chosen": self.chosen, "restored": self.restored}


@dataclass
class IdentityRestore:
    restored: torch.Tensor            # [F, 3, R, R] in [0, 1]; faces not restored hold their input crop (resized)
    style: StylePrompts               # the chosen candidate's prompts per face (faces not restored: encoder W+)
    faces: list[FaceIdentity]


# -- requests --------------------------------------------------------------------------------------------------

def needs_identity(options: RestoreOptions, embedder: FaceEmbedder | None, reference: IdentityReference | None
                   ) -> bool:
    """Whether this restoration goes through :func:`restore_with_identity` (else the plain path, byte for byte)."""
    return embedder is not None or reference is not None or options.candidates > 1 or options.only_matching \
        or options.reference_mix > 0


def _need_embedder(embedder: FaceEmbedder | None) -> FaceEmbedder:
    if embedder is None:     # check_identity_request refuses this first; kept for direct callers
        raise InputError("identity features need an identity embedder (vspbfr_core.identity.load_embedder)")
    return embedder


def check_identity_request(options: RestoreOptions, embedder: Any, reference: Any, where: str) -> None:
    """Refuse combinations that cannot work, before any work: each message says what is missing."""
    if embedder is not None and not isinstance(embedder, FaceEmbedder):
        raise InputError(f"{where}: embedder must be an identity embedder from vspbfr_core.identity.load_embedder, "
                         f"got {describe_value(embedder)}")
    if reference is not None and not isinstance(reference, IdentityReference):
        raise InputError(f"{where}: reference must be an IdentityReference from make_reference, got "
                         f"{describe_value(reference)}")
    need = ("--candidates / candidates > 1" if options.candidates > 1 else
            "a reference photo" if reference is not None else
            "only_matching" if options.only_matching else None)
    if need and embedder is None:
        raise InputError(f"{where}: {need} needs an identity embedder (load_embedder('arcface') after "
                         "`vspbfr download --only identity`, or load_embedder('dlib') after "
                         "`pip install \"vspbfr[dlib]\"`)")
    if reference is None and options.only_matching:
        raise InputError(f"{where}: only_matching needs a reference photo of the person to restore")
    if reference is None and options.reference_mix > 0:
        raise InputError(f"{where}: reference_mix > 0 needs a reference photo")
    if reference is not None and embedder is not None and reference.embedder != embedder.name:
        raise InputError(f"{where}: the reference was embedded with {reference.embedder!r} but the embedder is "
                         f"{embedder.name!r}; make the reference with the same embedder")
    if reference is not None and embedder is not None and reference.embedding.shape[-1] != embedder.dim:
        raise InputError(f"{where}: the reference embedding has {reference.embedding.shape[-1]} values, the "
                         f"{embedder.name} embedder gives {embedder.dim}; make the reference with this embedder")


def progress_units(options: RestoreOptions, scoring: bool) -> int:
    """Progress units per face: encode, then per candidate diffuse, feature bank, restore (and, when scoring,
    embed), plus embedding the input crop."""
    n = options.candidates
    return 1 + 3 * n + ((n + 1) if scoring else 0)


def match_threshold(options: RestoreOptions, embedder: FaceEmbedder) -> float:
    return float(options.match_threshold) if options.match_threshold is not None else float(embedder.match_threshold)


# -- references ------------------------------------------------------------------------------------------------

def _as_image_list(images: Any) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            return [images[None]]
        if images.dim() == 4:
            return [images[i:i + 1] for i in range(images.shape[0])]
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)) and images:
        out = []
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() not in (3, 4):
                raise InputError(f"reference image {i + 1}: expected an IMAGE tensor [H, W, C] or [B, H, W, C], got "
                                 f"{describe_value(im)}")
            out.extend(_as_image_list(im))
        return out
    raise InputError(f"reference: expected IMAGE tensors [B, H, W, C] in [0, 1] (one or more photos), got "
                     f"{describe_value(images)}")


@torch.inference_mode()
def make_reference(pipeline: VSPBFRPipeline, images: Any, embedder: FaceEmbedder, *, aligned: bool = False,
                   names: Sequence[str] | None = None, threshold: float | None = None) -> IdentityReference:
    """An :class:`IdentityReference` from reference photos.

    ``images``: one IMAGE tensor ``[B, H, W, C]`` in [0, 1] (B photos) or a list of them (photos of different
    sizes).  Each photo's largest face is detected (score ``threshold``, None: the detector's default) and aligned
    as the pipeline aligns a face to restore; ``aligned=True`` takes each photo as an already aligned square crop.
    A photo without a face is an InputError naming it (``names[i]``, else its position).
    """
    from ..face import align_faces
    from ..image import from_host
    from ..pipeline import RestoreOptions, VSPBFRPipeline

    if not isinstance(pipeline, VSPBFRPipeline):
        raise InputError(f"make_reference: expected a VSPBFRPipeline, got {describe_value(pipeline)}")
    if not isinstance(embedder, FaceEmbedder):
        raise InputError(f"make_reference: expected an identity embedder (load_embedder), got "
                         f"{describe_value(embedder)}")
    photos = _as_image_list(images)
    r = pipeline.model.resolution
    crops, boxes = [], []
    for i, photo in enumerate(photos):
        label = repr(names[i]) if names is not None and i < len(names) else f"{i + 1} of {len(photos)}"
        rgb, _ = from_host(photo, f"reference image {label}")
        if aligned:
            if rgb.shape[-1] != rgb.shape[-2]:
                raise InputError(f"reference image {label}: an aligned face must be square, got "
                                 f"{rgb.shape[-1]}x{rgb.shape[-2]}")
            crop = rgb.float()
            size = max(ALIGN_SIZE, r)                 # the embedders' size, as for detected faces
            if crop.shape[-1] != size:
                crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=crop.shape[-1] > size,
                                     align_corners=False).clamp(0, 1)
            crops.append(crop.cpu())
            boxes.append((0.0, 0.0, float(rgb.shape[-1]), float(rgb.shape[-2])))
            continue
        if pipeline.detector is None:
            raise InputError("make_reference: this pipeline has no face detector; give aligned reference faces "
                             "(aligned=True) or load the pipeline with a detector")
        dets = pipeline.detect(photo, RestoreOptions(selection="largest", threshold=threshold))
        if len(dets) == 0:
            raise InputError(f"reference image {label}: no face found; use a photo where the person's face is "
                             "clearly visible (or lower the detection threshold)")
        # aligned at the embedders' size (the model's own size may be smaller; the encoder resizes)
        crops.append(align_faces(rgb.to(pipeline.device, torch.float32), dets.to(pipeline.device),
                                 size=max(ALIGN_SIZE, r)).crops.float().cpu())
        boxes.append(tuple(round(float(v), 2) for v in dets.boxes[0].tolist()))
    all_crops = torch.cat(crops)
    ws = pipeline.encode(all_crops).float().mean(dim=0).cpu()
    embedding = mean_embedding(embedder.embed_crops(all_crops)).cpu()
    return IdentityReference(embedding, embedder.name, ws, all_crops, tuple(boxes))  # type: ignore[arg-type]


def mix_reference(prompts: torch.Tensor, reference_ws: torch.Tensor, layers: tuple[int, ...], amount: float
                  ) -> torch.Tensor:
    """``prompts [F, L, D]`` with the listed W+ layers moved ``amount`` of the way to ``reference_ws [L, D]``."""
    out = prompts.clone()
    idx = torch.tensor(layers, device=prompts.device)
    target = reference_ws.to(prompts.device, prompts.dtype)[idx].unsqueeze(0).expand(prompts.shape[0], -1, -1)
    out[:, idx] = torch.lerp(prompts[:, idx], target, amount)
    return out


# -- restoration -----------------------------------------------------------------------------------------------

def _resized(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Input crops at the model's resolution in [0, 1] (what a face that is not restored holds): a new tensor,
    never the caller's crops (restored faces are written into it)."""
    x = crops.to(torch.float32, copy=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return x


def embed_restored(embedder: FaceEmbedder, crops: torch.Tensor) -> torch.Tensor:
    """Embeddings of restored crops; crops smaller than the embedder takes (a model with a small output) are
    enlarged to its minimum first."""
    if crops.shape[-1] < embedder.min_crop_size:
        size = embedder.min_crop_size
        crops = F.interpolate(crops.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return embedder.embed_crops(crops)


def restore_with_identity(pipeline: VSPBFRPipeline, crops: torch.Tensor, keys: list[int], options: RestoreOptions,
                          embedder: FaceEmbedder | None, reference: IdentityReference | None,
                          progress: Progress, input_embeddings: torch.Tensor | None = None) -> IdentityRestore:
    """Restore aligned crops ``[F, 3, S, S]`` in [0, 1] with best-of-N, only-matching and the reference mix (see
    the module docstring).  ``progress`` advances :func:`progress_units` per face.  ``input_embeddings`` ``[F, D]``:
    the input faces' embeddings when the caller has better ones than the crops give (the pipeline embeds faces
    aligned at 512 from the image when the model's crops are smaller); default: embed ``crops``."""
    from ..pipeline import StylePrompts

    o = options
    embedder = _need_embedder(embedder)
    n = crops.shape[0]
    res = pipeline.model.resolution
    per_face = progress_units(o, True)
    layers = parse_layers(o.reference_layers, pipeline.model.style_encoder.config.num_ws) if o.reference_mix > 0 \
        else ()
    input_emb = input_embeddings if input_embeddings is not None else embed_restored(embedder, crops)
    progress.step("identity", n)
    ref_emb = reference.embedding if reference is not None else None
    input_ref = identity(input_emb, ref_emb).cpu() if ref_emb is not None else None
    keep = torch.ones(n, dtype=torch.bool)
    if o.only_matching:
        assert input_ref is not None        # only_matching needs a reference (check_identity_request)
        threshold = match_threshold(o, embedder)
        keep = input_ref >= threshold
        log.info("only matching faces: %d of %d reach identity %.3f to the reference (scores %s)", int(keep.sum()), n,
                 threshold, ", ".join(f"{v:.3f}" for v in input_ref.tolist()))
        skipped = int((~keep).sum())
        if skipped:
            progress.step("not matching", skipped * (per_face - 1))
    faces = [FaceIdentity(restored=bool(k)) for k in keep.tolist()]
    restored = _resized(crops, res).to(pipeline.device)     # a new tensor: restored faces are written into it
    idx = keep.nonzero().flatten()
    sel = idx.tolist()
    enc_ws = None
    prompts_out = None
    if sel:
        sub = crops[idx.to(crops.device)]
        sub_keys = [keys[i] for i in sel]
        ws = pipeline._encode(sub, progress)
        enc_ws = ws
        target = ref_emb if ref_emb is not None else input_emb[idx.to(input_emb.device)]
        best = torch.full((len(sel),), -float("inf"))
        best_img: torch.Tensor | None = None
        best_prompts: torch.Tensor | None = None
        chosen = torch.zeros(len(sel), dtype=torch.long)
        for c in range(o.candidates):
            noise = pipeline.noise_for(sub_keys, o.seed, candidate=c)
            prompts = pipeline._diffuse(ws, noise)
            progress.step("diffuse", len(sel))
            if o.prompt_mix != 1.0:
                prompts = torch.lerp(ws.to(prompts.dtype), prompts, o.prompt_mix)
            if o.reference_mix > 0:
                assert reference is not None
                prompts = mix_reference(prompts, reference.ws, layers, o.reference_mix)
            out = pipeline._render(sub, StylePrompts(ws, prompts), noise, o, progress)
            emb = embed_restored(embedder, out)
            progress.step("identity", len(sel))
            s_target = identity(emb, target).cpu()
            s_input = identity(emb, input_emb[idx.to(input_emb.device)]).cpu()
            s_ref = identity(emb, ref_emb).cpu() if ref_emb is not None else None
            for j, i in enumerate(sel):
                faces[i].candidates.append({"index": c, "identity": float(s_target[j]),
                                            "identity_input": float(s_input[j]),
                                            "identity_reference": None if s_ref is None else float(s_ref[j])})
            if best_img is None or best_prompts is None:
                best_img, best_prompts, best = out.clone(), prompts.clone(), s_target.clone()
                continue
            better = s_target > best                      # strictly: a tie keeps the lower candidate index
            if bool(better.any()):
                best_img[better.to(out.device)] = out[better.to(out.device)]
                best_prompts[better.to(prompts.device)] = prompts[better.to(prompts.device)]
                best = torch.where(better, s_target, best)
                chosen[better] = c
        assert best_img is not None and best_prompts is not None
        if len(sel) == n:
            restored = best_img              # the rendered tensor itself: same values and memory layout as the plain path
        else:
            restored[idx.to(restored.device)] = best_img.to(restored.dtype)
        prompts_out = best_prompts
        for j, i in enumerate(sel):
            faces[i].chosen = int(chosen[j])
            pick = faces[i].candidates[faces[i].chosen]
            faces[i].identity_input = pick["identity_input"]       # type: ignore[assignment]
            faces[i].identity_reference = pick["identity_reference"]       # type: ignore[assignment]
    if input_ref is not None:
        for i in range(n):
            if not faces[i].restored:
                faces[i].identity_reference = float(input_ref[i])    # the output face is the input face
    style = _full_style(pipeline, crops, idx, enc_ws, prompts_out)
    return IdentityRestore(restored, style, faces)


def _full_style(pipeline: VSPBFRPipeline, crops: torch.Tensor, idx: torch.Tensor, ws: torch.Tensor | None,
                prompts: torch.Tensor | None) -> StylePrompts:
    """Style prompts for all F faces: the chosen candidates' for restored faces, zeros for the others."""
    from ..pipeline import StylePrompts

    enc = pipeline.model.style_encoder.config
    n = crops.shape[0]
    all_ws = torch.zeros(n, enc.num_ws, enc.w_dim)
    all_prompts = torch.zeros(n, enc.num_ws, enc.w_dim)
    if ws is not None and prompts is not None:
        all_ws[idx] = ws.float().cpu()
        all_prompts[idx] = prompts.float().cpu()
    return StylePrompts(all_ws, all_prompts)


# -- reports ---------------------------------------------------------------------------------------------------

def face_report(detections: Any, faces: list[FaceIdentity] | None, candidates: int = 1) -> list[dict[str, Any]]:
    """One JSON-ready dict per face: the detection (``image``, ``index``, ``box``, ``landmarks``, ``score``,
    ``size``) and the identity record (``identity_input``, ``identity_reference``, ``candidates``, ``chosen``,
    ``restored``; nulls where no embedder ran)."""
    rows = detections.to_json() if detections is not None else []
    out = []
    for k, row in enumerate(rows):
        rec = faces[k] if faces is not None else FaceIdentity(
            restored=True, candidates=[{"index": c, "identity": None, "identity_input": None,
                                        "identity_reference": None} for c in range(candidates)], chosen=0)
        out.append({**row, **rec.to_json()})
    return out


def identity_summary(faces: list[FaceIdentity] | None, decimals: int = 3) -> str:
    """A short human-readable line per face (for a ComfyUI STRING output and the A1111 infotext)."""
    if not faces:
        return "no faces"
    parts = []
    for k, f in enumerate(faces):
        bits = [f"face {k}"]
        if not f.restored:
            bits.append("not restored (no match)")
        if f.identity_input is not None:
            bits.append(f"identity to input {f.identity_input:.{decimals}f}")
        if f.identity_reference is not None:
            bits.append(f"to reference {f.identity_reference:.{decimals}f}")
        if f.restored and len(f.candidates) > 1 and f.chosen is not None:
            bits.append(f"candidate {f.chosen + 1} of {len(f.candidates)}")
        parts.append(", ".join(bits))
    return "\n".join(parts)

"""The identity part of ``vspbfr restore``: its options, the embedder and reference of a run, and the JSON report.

Options (checked before any model is loaded; a combination that cannot work is an error, exit status 1):

* ``--candidates N`` (1..64): best-of-N, :attr:`vspbfr_core.RestoreOptions.candidates`; candidate 0 is the plain
  restoration, so ``--candidates 1`` is exactly a run without the option.
* ``--identity arcface|dlib``: the embedder (:func:`vspbfr_core.identity.load_embedder`; the ArcFace file is
  looked up in the ``--models`` folder).  It is loaded once per run and only when something needs it:
  ``--candidates`` > 1, ``--reference``, ``--only-matching`` or ``--report``.  For those first three a missing
  ArcFace file or dlib package is an error before the VSPBFR networks load; for ``--report`` alone it is one
  warning line, and the report is written with its identity fields null (restoration is the same either way).
* ``--reference PHOTO...``: photos of one person, read like inputs (:mod:`vspbfr_core.imagefile`) and turned
  into one reference (:meth:`vspbfr_core.VSPBFRPipeline.make_reference`; the largest face of each photo, found
  with ``--threshold``; with ``--aligned`` the photos are aligned face crops).  A photo without a face is an
  error before any input is restored.
* ``--only-matching``, ``--match-threshold T``, ``--reference-mix X``, ``--reference-layers L``: need
  ``--reference`` (``--match-threshold`` needs ``--only-matching``, ``--reference-layers`` a ``--reference-mix``
  above 0), since they would change nothing otherwise.

The report (``--report FILE.json``, written when the run ends, through a temporary file renamed onto FILE)::

    {"format": "vspbfr-report/1",
     "options": {"seed", "candidates", "identity", "identity_error", "match_threshold", "only_matching",
                 "reference", "reference_mix", "reference_layers"},
     "files": [{"input": ..., "output": ... | null, "faces": [face rows], "error": "..." (failed files only)}]}

Face rows are :func:`vspbfr_core.identity.face_report` rows: the detection (``image``, ``index``, ``box``,
``landmarks``, ``score``, ``size``; with ``--aligned`` the whole crop, ``landmarks`` and ``score`` null) and the
identity record (``identity_input``, ``identity_reference``, ``candidates``, ``chosen``, ``restored``).
``match_threshold`` is the one in effect (the embedder's default unless given; null without an embedder);
``identity_error`` says why identity scores are missing (null when they are there).  Paths are written as given.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli import number
from ..errors import InputError

REPORT_FORMAT = "vspbfr-report/1"
EMBEDDER_NAMES = ("arcface", "dlib")          # vspbfr_core.identity.EMBEDDERS (kept here: no torch import for --help)
MAX_CANDIDATES = 64                           # vspbfr_core.pipeline.MAX_CANDIDATES
DEFAULT_LAYERS = "middle"


def add_identity_options(g: argparse._ActionsContainer) -> None:
    """``--candidates``, ``--identity``, ``--reference``, ``--only-matching``, ``--match-threshold``,
    ``--reference-mix`` and ``--reference-layers``."""
    g.add_argument("--candidates", metavar="N", type=number(int, low=1, high=MAX_CANDIDATES), default=1,
                   help=f"best-of-N: restore each face N times (1..{MAX_CANDIDATES}) and keep the one most like the "
                        "reference (else like the input face); costs about N times the restoration")
    g.add_argument("--identity", choices=EMBEDDER_NAMES, default=EMBEDDER_NAMES[0],
                   help="identity embedder: arcface (recognition_arcface_ir_se50.pth in the models folder, "
                        "`vspbfr download --only identity`) or dlib (pip install \"vspbfr[dlib]\"); loaded only "
                        "for --candidates > 1, --reference, --only-matching or --report")
    g.add_argument("--reference", metavar="PHOTO", nargs="+", action="extend", default=None,
                   help="photos of the person to restore (the largest face of each; with --aligned, aligned face "
                        "crops): the target of --candidates, --only-matching and --reference-mix")
    g.add_argument("--only-matching", action="store_true",
                   help="restore only the faces whose identity to --reference reaches --match-threshold; the "
                        "others are left untouched")
    g.add_argument("--match-threshold", metavar="T", type=number(float, low=-1, high=1), default=None,
                   help="identity (cosine, -1..1) a face needs to match for --only-matching (default: the "
                        "embedder's, arcface 0.3, dlib 0.94)")
    g.add_argument("--reference-mix", metavar="X", type=number(float, low=0, high=1), default=0.0,
                   help="move the style prompt's --reference-layers this far toward the reference's W+ codes "
                        "(0: off; experimental, needs --reference)")
    g.add_argument("--reference-layers", metavar="L", default=DEFAULT_LAYERS,
                   help="W+ layers --reference-mix moves: coarse (0-3, pose and face shape), middle (4-7, facial "
                        "features), fine (8+, lighting and colour), all, several joined by '+', or indices such as "
                        "'4-7' or '3,5,8-9'")


def add_report_option(group: argparse._ActionsContainer) -> None:
    group.add_argument("--report", metavar="FILE.json", default=None,
                       help="write a JSON report: per file and face the detection, the identity scores, the "
                            "candidates and the chosen one")


def check_identity_args(args: argparse.Namespace) -> None:
    """Option combinations that would do nothing or cannot work: an InputError naming the options."""
    if not args.reference:
        if args.only_matching:
            raise InputError("--only-matching needs --reference PHOTO: a photo of the person whose faces to restore")
        if args.reference_mix > 0:
            raise InputError(f"--reference-mix {args.reference_mix:g} needs --reference PHOTO: the person whose W+ "
                             "codes to mix in")
    if args.match_threshold is not None and not args.only_matching:
        raise InputError("--match-threshold is the threshold of --only-matching: give --only-matching too, or leave "
                         "it out")
    if args.reference_layers.strip().lower() != DEFAULT_LAYERS and args.reference_mix == 0:
        raise InputError("--reference-layers chooses the layers of --reference-mix: give --reference-mix X (above "
                         "0) too, or leave it out")


def scoring_reason(args: argparse.Namespace) -> str | None:
    """The option that needs identity scores to restore (then a missing embedder is an error), or None."""
    if args.candidates > 1:
        return f"--candidates {args.candidates}"
    if args.reference:
        return "--reference"
    if args.only_matching:
        return "--only-matching"
    return None


def read_references(args: argparse.Namespace) -> list[Any]:
    """The ``--reference`` photos as :class:`~vspbfr_core.imagefile.LoadedImage` (read like inputs)."""
    from ..imagefile import read_image

    return [read_image(Path(p)) for p in args.reference or ()]


def load_identity(args: argparse.Namespace, models_dir: Path, device: Any) -> tuple[Any, str | None]:
    """``(embedder, None)``, ``(None, why)`` when only ``--report`` wanted it and it is missing (a warning is
    printed), or ``(None, None)`` when nothing needs it."""
    from ..errors import ModelNotFoundError
    from ..identity import MissingPackageError, load_embedder

    reason = scoring_reason(args)
    if reason is None and not args.report:
        return None, None
    try:
        return load_embedder(args.identity, dirs=[models_dir], device=device), None
    except (ModelNotFoundError, MissingPackageError) as exc:
        if reason is not None:
            raise InputError(f"{reason} needs the {args.identity} identity embedder: {exc}") from exc
        why = " ".join(str(exc).split())
        print(f"warning: --report without identity scores (the restoration itself is not affected): {why}",
              file=sys.stderr)
        return None, why


def check_report_path(text: str | None, inputs: list[Path], outputs: list[Path]) -> Path | None:
    """``--report`` as a file that can be written and is neither an input, a planned output nor a folder."""
    from ..imagefile import EXTENSION_FORMATS
    from .restore import _ids, _key, check_out_dir

    if text is None:
        return None
    if not text.strip():
        raise InputError("--report: the file name is empty")
    path = Path(text)
    if path.is_dir():
        raise InputError(f"--report {text}: is a folder; give a file name such as {path / 'report.json'}")
    ids = _ids(path)
    key = _key(path)
    for src in inputs:
        if ids & _ids(src) or key == _key(src):
            raise InputError(f"--report {text}: is the input {src}; refusing to replace an input")
    for dst in outputs:
        if key == _key(dst):
            raise InputError(f"--report {text}: is where a restored image goes ({dst}); choose another name")
    if path.suffix.lower() in EXTENSION_FORMATS:       # a later run over this folder would take it for an image
        raise InputError(f"--report {text}: the report is JSON; give it a .json name, not an image name")
    check_out_dir(str(path.parent), flag="--report")
    return path


@dataclass
class Report:
    """The ``--report`` document of one run, filled file by file and written once at the end."""

    path: Path
    options: dict[str, Any]
    candidates: int = 1
    files: list[dict[str, Any]] = field(default_factory=list)

    def add(self, src: Path, dst: Path, result: Any, aligned: bool) -> None:
        if aligned:
            rows = aligned_face_rows(result, self.candidates)
        else:
            from ..identity import face_report

            rows = face_report(result.detections, result.identity, self.candidates)
        self.files.append({"input": str(src), "output": str(dst), "faces": rows})

    def add_video(self, src: Path, dst: Path, frames: int, faces: int, tracks: int | None) -> None:
        """A video or frame sequence: its frame count and, temporal, its face tracks (per-face rows are not
        reported for videos)."""
        entry: dict[str, Any] = {"input": str(src), "output": str(dst), "faces": [], "frames": frames,
                                 "faces_restored": faces}
        if tracks is not None:
            entry["face_tracks"] = tracks
        self.files.append(entry)

    def failed(self, src: Path, error: str) -> None:
        self.files.append({"input": str(src), "output": None, "faces": [], "error": error})

    def write(self) -> None:
        from ..imagefile import write_bytes_atomic

        doc = {"format": REPORT_FORMAT, "options": self.options, "files": self.files}
        write_bytes_atomic((json.dumps(doc, indent=2) + "\n").encode("ascii"), self.path)


def report_options(args: argparse.Namespace, embedder: Any, identity_error: str | None) -> dict[str, Any]:
    threshold = args.match_threshold
    if threshold is None and embedder is not None:
        threshold = float(embedder.match_threshold)
    return {"seed": args.seed, "candidates": args.candidates, "identity": args.identity,
            "identity_error": identity_error, "match_threshold": threshold, "only_matching": args.only_matching,
            "reference": [str(p) for p in args.reference or ()], "reference_mix": args.reference_mix,
            "reference_layers": args.reference_layers}


def aligned_face_rows(result: Any, candidates: int) -> list[dict[str, Any]]:
    """Report rows of ``--aligned`` results: one face per crop, its box the whole crop."""
    from ..identity import face_report

    rows = []
    faces = result.identity
    side = int(result.crops.shape[-1])
    for k in range(result.faces_found):
        rec = face_report(_WholeCrop(side), None if faces is None else [faces[k]], candidates)[0]
        rows.append({**rec, "image": k})
    return rows


class _WholeCrop:
    """A stand-in for Detections that :func:`~vspbfr_core.identity.face_report` reads: one face, the whole crop."""

    def __init__(self, side: int):
        self.side = side

    def to_json(self) -> list[dict[str, Any]]:
        s = float(self.side)
        return [{"image": 0, "index": 0, "box": [0.0, 0.0, s, s], "landmarks": None, "score": None, "size": s}]


def identity_note(result: Any, has_reference: bool) -> str:
    """A short tail for the per-file line: how many faces matched, each face's identity score, the candidates
    chosen (indices as in the report: 0 is the plain restoration)."""
    faces = result.identity
    if not faces:
        return ""
    parts = []
    if any(not f.restored for f in faces):
        parts.append(f"{sum(f.restored for f in faces)} of {len(faces)} matching")
    scores = [f.identity_reference if has_reference else f.identity_input for f in faces]
    if any(s is not None for s in scores):
        shown = " ".join("-" if s is None else f"{s:.2f}" for s in scores)
        parts.append(f"identity to {'reference' if has_reference else 'input'} {shown}")
    if any(len(f.candidates) > 1 for f in faces):
        chosen = " ".join("-" if f.chosen is None else str(f.chosen) for f in faces)
        parts.append(f"best of {len(faces[0].candidates)}: candidate {chosen}")
    return "; " + "; ".join(parts) if parts else ""


def identity_log_lines(result: Any) -> list[str]:
    """One line per face for ``-v``: every candidate's identity to the target and the one kept."""
    lines = []
    for k, f in enumerate(result.identity or ()):
        if not f.restored:
            ref = "" if f.identity_reference is None else f" (identity to the reference {f.identity_reference:.3f})"
            lines.append(f"face {k}: not restored, below the match threshold{ref}")
            continue
        scores = " ".join("-" if c["identity"] is None else f"{c['identity']:.3f}" for c in f.candidates)
        lines.append(f"face {k}: candidate identities {scores}; kept candidate {f.chosen}")
    return lines

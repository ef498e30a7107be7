"""The per-file restoration both batch engines call: bytes in, bytes out, one manifest row per input.

:class:`FileRestorer` is built once per worker from a picklable :class:`BatchConfig` (the networks, detector and
identity embedder load in its constructor) and restores one :class:`BatchItem` per call:

1. read the input's bytes (:mod:`.storage`: a local path or a URI) and hash them (sha256);
2. decode them exactly as ``vspbfr restore`` does (:func:`vspbfr_core.imagefile.read_image_bytes`), restore with
   the same :class:`~vspbfr_core.pipeline.RestoreOptions`, and encode the result exactly as ``vspbfr restore``
   writes it (:func:`vspbfr_core.imagefile.encode_image`, the input's format, sample kind and parameters): the
   output bytes are those ``vspbfr restore`` writes for the same file, options, device, precision and thread count;
3. write them atomically (:func:`.storage.write_bytes`), unless the output already holds exactly these bytes (a
   rerun after a crash that lost the manifest row): then nothing is written.

A file that cannot be restored gives a row with ``status = "failed"`` and the error; it never raises (except for
``KeyboardInterrupt``), so one bad file never stops a worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, VSPBFRError

__all__ = ["BatchConfig", "BatchItem", "ItemResult", "FileRestorer", "options_key"]


@dataclass(frozen=True)
class BatchConfig:
    """Everything a worker needs to build its pipeline (picklable: it travels to Ray actors)."""

    options: Any                                   # vspbfr_core.pipeline.RestoreOptions
    models_dir: str
    detector: str = "auto"                         # a detector name or "auto"; ignored with aligned
    detector_dir: str | None = None
    device: str = "auto"
    dtype: str = "auto"                            # auto | float32 | float16 | bfloat16
    chunk_size: int = 4
    low_memory: bool = False
    threads: int = 0                               # 0: leave torch's thread count alone
    allow_tf32: bool = False
    aligned: bool = False
    identity: str = "arcface"                      # the embedder when an identity option needs one
    needs_identity: bool = False                   # candidates > 1, a reference or only_matching
    references: tuple[str, ...] = ()               # reference photo locations
    threshold: float | None = None                 # detector threshold for the reference photos
    parser: str = "parsenet"                       # the face-parsing network of mask_shape "parsing"


@dataclass(frozen=True)
class BatchItem:
    """One input and where its output goes."""

    input: str                                     # local path or URI
    output: str                                    # local path or URI
    rel: str = ""                                  # the output path relative to OUTPUT (messages, manifest)
    done_sha256: str | None = None                 # resume: the sha256 its "done" row records (skip if unchanged)


@dataclass
class ItemResult:
    """One manifest row (see :mod:`.manifest`)."""

    input: str
    output: str
    options: str                                   # options_key of the run
    status: str = "failed"                         # "done" | "failed" | "skipped" (resume: never in the manifest)
    input_sha256: str | None = None
    faces: int = 0
    identity_input: list[float | None] = field(default_factory=list)       # per face, identity on
    identity_reference: list[float | None] = field(default_factory=list)
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None
    attempts: int = 1
    written: bool = False                          # False for a failure, or when the output already held the bytes
    retry: bool = False                            # a failure worth another attempt (not a bad input); not stored

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        del row["retry"]
        return row


def options_key(config: BatchConfig) -> str:
    """A short hash of what decides the output bytes: the restore options, precision, threads, identity settings
    and references, aligned mode and the detector.  A rerun skips inputs done with the same key."""
    options = asdict(config.options)
    if options.get("mask_parts") is None:      # added later: unset, it leaves the keys of earlier runs as they were
        options.pop("mask_parts", None)
    doc = {"options": options, "dtype": config.dtype, "threads": config.threads,
           "tf32": config.allow_tf32, "aligned": config.aligned, "detector": config.detector,
           "identity": config.identity if config.needs_identity else None, "references": list(config.references)}
    if config.options.mask_shape == "parsing":
        doc["parser"] = config.parser
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class FileRestorer:
    """A worker: the pipeline (and embedder, reference) loaded once; ``restorer(item)`` -> :class:`ItemResult`."""

    def __init__(self, config: BatchConfig) -> None:
        import torch

        from ..devices import resolve_device
        from ..paths import choose_detector
        from ..pipeline import VSPBFRPipeline

        self.config = config
        self.key = options_key(config)
        self.worker = worker_name()
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device, what="--device")
        dtype = torch.float32 if config.dtype == "auto" else getattr(torch, config.dtype)
        models = Path(config.models_dir)
        detector = None if config.aligned else choose_detector(config.detector, [models],
                                                              detector_dir=config.detector_dir)
        self.embedder = None
        if config.needs_identity:
            from ..identity import load_embedder

            self.embedder = load_embedder(config.identity, dirs=[models], device=device)
        self.pipe = VSPBFRPipeline.from_dir(models, detector=detector, detector_dir=config.detector_dir,
                                            chunk_size=config.chunk_size, low_memory=config.low_memory,
                                            allow_tf32=config.allow_tf32).to(device, dtype)
        if config.options.mask_shape == "parsing" and not config.aligned:
            self.pipe.load_parser(config.parser, models)
        self.reference = None
        if config.references:
            from ..imagefile import read_image_bytes
            from .storage import read_bytes

            photos = [read_image_bytes(read_bytes(r), r).pixels for r in config.references]
            self.reference = self.pipe.make_reference(photos, self.embedder, aligned=config.aligned,
                                                      names=list(config.references), threshold=config.threshold)

    def __call__(self, item: BatchItem, attempts: int = 1) -> ItemResult:
        t0 = time.perf_counter()
        row = ItemResult(item.input, item.output, self.key, worker=self.worker, attempts=attempts)
        try:
            row.status = self._restore(item, row)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one bad file must not stop a worker: the row records it
            text = " ".join(str(exc).split())
            if not isinstance(exc, VSPBFRError):
                text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            row.error = text.removeprefix(f"{item.input}: ")
            row.retry = not isinstance(exc, InputError)
        row.seconds = round(time.perf_counter() - t0, 3)
        return row

    def _restore(self, item: BatchItem, row: ItemResult) -> str:
        from ..imagefile import encode_image, output_format, read_image_bytes
        from . import storage

        data = storage.read_bytes(item.input)
        row.input_sha256 = hashlib.sha256(data).hexdigest()
        if item.done_sha256 == row.input_sha256:
            return "skipped"                                    # done before with these options, input unchanged
        loaded = read_image_bytes(data, item.input)
        fmt = output_format(Path(item.output.rsplit("/", 1)[-1]), loaded.format)
        identity = dict(embedder=self.embedder, reference=self.reference)
        if self.config.aligned:
            result = self.pipe.restore_aligned(loaded.pixels, self.config.options, **identity)
        else:
            result = self.pipe(loaded.pixels, self.config.options, **identity)
        out = encode_image(result.images[0], fmt, sample=loaded.sample, params=loaded.params, name=item.output)
        row.faces = int(result.faces_found)
        if result.identity:
            row.identity_input = [_score(f.identity_input) for f in result.identity]
            row.identity_reference = [_score(f.identity_reference) for f in result.identity]
        if storage.exists(item.output) and storage.read_bytes(item.output) == out:
            return "done"                                       # already there, byte for byte: not written again
        storage.write_bytes(item.output, out)
        row.written = True
        return "done"


def _score(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)

"""Downloading the official model files: the VSPBFR networks, the RetinaFace face detector and the optional ArcFace
identity network.

Sources (both injectable, so tests and mirrors can point elsewhere):

* VSPBFR networks: ``{HF_ENDPOINT}/Wanglong2/VSPBFR/resolve/main/<file>`` for ``style_encoder_decoder.pt``,
  ``code_diffuser.pt`` and ``restoration_net.pt``. ``HF_ENDPOINT`` (argument, else the environment variable of
  the same name, else ``https://huggingface.co``) selects a mirror.
* RetinaFace: facexlib's GitHub release v0.1.0, ``detection_Resnet50_Final.pth`` and
  ``detection_mobilenet0.25_Final.pth``. ``VSPBFR_DETECTOR_URL`` (or an argument) replaces the release folder.
* ArcFace (identity scores, optional; only with ``only="identity"``): the same facexlib release,
  ``recognition_arcface_ir_se50.pth`` (sha256 known). ``VSPBFR_IDENTITY_URL`` (or an argument) replaces the folder.
* Face parsing (the ``parsing`` paste mask, optional; only with ``only="parsing"``): facexlib's releases,
  ``v0.2.2/parsing_parsenet.pth`` (the default) and ``v0.2.0/parsing_bisenet.pth`` (size and sha256 known).
  ``VSPBFR_PARSING_URL`` (or an argument) replaces the release folder (one folder for both files).

Each file goes through the same steps:

1. A file already under the final name is checked (size, sha256 against the known value or the record of an
   earlier download, else a load test) and skipped when valid.
2. Bytes go to ``<name>.part``. A ``.part`` left by an earlier run or a dropped connection is resumed with an HTTP
   ``Range`` request; a server that answers 200 instead of 206 is followed by restarting from byte 0. Transient
   failures (dropped connection, timeout, 5xx) are retried, resuming each time.
3. The size (known value, ``Content-Length``/``Content-Range``, or the hub's ``X-Linked-Size``) and the sha256
   (known value, or the hub's ``X-Linked-Etag`` when it is a sha256) are checked; wrong bytes delete the part file.
4. The file must load: VSPBFR networks through :func:`vspbfr_core.checkpoints.load_checkpoint` with the expected
   kind, the detector with ``torch.load(weights_only=True)`` and RetinaFace keys, ArcFace through its strict loader
   (:func:`vspbfr_core.identity.arcface.load_arcface`), the face parsers through theirs
   (:func:`vspbfr_core.face.parsing.load_parser`).
5. Only then ``os.replace`` gives it the final name, so a half or unverified file never has that name, and its
   size, sha256, URL and time go into ``vspbfr-downloads.json`` in the same folder (the sha256 of the VSPBFR files
   is not published, so this record is what later runs check against).

Only the standard library is used for HTTP (``urllib``, which honours ``HTTPS_PROXY``); torch is imported only to
verify a file.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from .errors import CheckpointError, DownloadError, VSPBFRError
from .paths import DETECTOR_FILES, IDENTITY_FILES, NETWORK_KINDS, PARSING_FILES, resolve_models_dir

__all__ = [
    "HF_ENDPOINT_ENV", "DETECTOR_URL_ENV", "DEFAULT_HF_ENDPOINT", "HF_REPO", "DEFAULT_DETECTOR_BASE_URL",
    "RECORD_FILE", "RemoteFile", "DownloadResult", "ProgressCallback", "hf_endpoint", "detector_base_url",
    "vspbfr_remote_files", "detector_remote_file", "plan_downloads", "download_file", "download_models",
    "verify_model_file", "read_download_records", "check_present_file", "IDENTITY_URL_ENV",
    "DEFAULT_IDENTITY_BASE_URL", "identity_base_url", "identity_remote_file", "PARSING_URL_ENV",
    "DEFAULT_PARSING_BASE_URLS", "parsing_base_url", "parsing_remote_file",
]

log = logging.getLogger(__name__)

HF_ENDPOINT_ENV = "HF_ENDPOINT"
DETECTOR_URL_ENV = "VSPBFR_DETECTOR_URL"
IDENTITY_URL_ENV = "VSPBFR_IDENTITY_URL"
PARSING_URL_ENV = "VSPBFR_PARSING_URL"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
HF_REPO = "Wanglong2/VSPBFR"
HF_REVISION = "main"
DEFAULT_DETECTOR_BASE_URL = "https://github.com/xinntao/facexlib/releases/download/v0.1.0"
DEFAULT_IDENTITY_BASE_URL = DEFAULT_DETECTOR_BASE_URL
DEFAULT_PARSING_BASE_URLS: dict[str, str] = {
    "parsenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.2",
    "bisenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.0",
}
RECORD_FILE = "vspbfr-downloads.json"
RECORD_FORMAT = "vspbfr-downloads-v1"
PART_SUFFIX = ".part"
USER_AGENT = "vspbfr-download/0.1 (+python-urllib)"

Group = Literal["vspbfr", "detector", "identity", "parsing"]
DetectorChoice = Literal["resnet50", "mobile0.25", "none"]
ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(file_name, bytes_done, bytes_total_or_None)``, called as bytes arrive; it may raise to cancel."""

# What is known about the detector files. The MobileNet file is fully known (the byte-identical copy is in
# ../shared/weights). For the ResNet-50 file only the first 8 and last 6 hex digits of its sha256 are known
# (6d1de9c2...a5a16d, the abbreviated form published next to facexlib's weights), so only that prefix and
# suffix are checked; its size (about 109 MB) is not pinned.
_DETECTOR_FACTS: dict[str, dict[str, Any]] = {
    "mobile0.25": {"size": 1_789_735,
                   "sha256": "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220"},
    "resnet50": {"sha256_affixes": ("6d1de9c2", "a5a16d")},
}
# The ArcFace file: its full sha256 is published (a Linux distribution's package list for facexlib's weights); its
# size is not pinned.
_IDENTITY_FACTS: dict[str, dict[str, Any]] = {
    "arcface": {"sha256": "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28"},
}
# The face-parsing files: sizes and sha256 as published by several independent projects that pin facexlib's
# weights (an Arch Linux PKGBUILD of facexlib 0.2.5 lists both digests next to the detector and ArcFace ones
# above, which match ours; the BiSeNet file is byte-identical to face-parsing.PyTorch's 79999_iter.pth).
_PARSING_FACTS: dict[str, dict[str, Any]] = {
    "parsenet": {"size": 85_331_193,
                 "sha256": "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2"},
    "bisenet": {"size": 53_289_463,
                "sha256": "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567"},
}
_RETINAFACE_PREFIXES = ("body.", "fpn.", "ssh1.", "ssh2.", "ssh3.", "ClassHead.", "BboxHead.", "LandmarkHead.")
_RETINAFACE_BODY = {"resnet50": "body.layer", "mobile0.25": "body.stage1."}
_RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RemoteFile:
    """One file to download and what is known about it."""
    name: str                                         # file name in the models folder
    url: str                                          # where it is downloaded from
    group: Group                                      # "vspbfr" network, "detector", "identity" or "parsing"
    kind: str                                         # checkpoint kind, detector (resnet50 / mobile0.25), "arcface",
                                                      # or a face parser ("parsenet" / "bisenet")
    size: int | None = None                           # exact byte count, when known
    sha256: str | None = None                         # full hex digest, when known
    sha256_affixes: tuple[str, str] | None = None     # (prefix, suffix) of the digest when only those are known


@dataclass(frozen=True)
class DownloadResult:
    """The outcome for one file that is now present and verified."""
    spec: RemoteFile
    path: Path                                        # the final file
    status: Literal["downloaded", "present"]          # fetched now, or already there and valid
    size: int
    sha256: str
    resumed_from: int = 0                             # bytes already in <name>.part when the transfer began


#----------------------------------------------------------------------------
# Sources


def hf_endpoint(endpoint: str | None = None) -> str:
    """The model hub root: ``endpoint``, else ``$HF_ENDPOINT``, else ``https://huggingface.co``."""
    return (endpoint or os.environ.get(HF_ENDPOINT_ENV, "").strip() or DEFAULT_HF_ENDPOINT).rstrip("/")


def detector_base_url(base_url: str | None = None) -> str:
    """The folder the detector files are downloaded from: ``base_url``, else ``$VSPBFR_DETECTOR_URL``, else facexlib's."""
    return (base_url or os.environ.get(DETECTOR_URL_ENV, "").strip() or DEFAULT_DETECTOR_BASE_URL).rstrip("/")


def identity_base_url(base_url: str | None = None) -> str:
    """The folder the ArcFace file is downloaded from: ``base_url``, else ``$VSPBFR_IDENTITY_URL``, else facexlib's."""
    return (base_url or os.environ.get(IDENTITY_URL_ENV, "").strip() or DEFAULT_IDENTITY_BASE_URL).rstrip("/")


def identity_remote_file(embedder: str = "arcface", base_url: str | None = None) -> RemoteFile:
    """The weights file of identity embedder ``embedder`` (only ``arcface`` has one)."""
    if embedder not in IDENTITY_FILES:
        raise DownloadError(f"no file to download for identity embedder {embedder!r}: only "
                            f"{', '.join(IDENTITY_FILES)} has one (dlib's come with pip install \"vspbfr[dlib]\")")
    name = IDENTITY_FILES[embedder]
    return RemoteFile(name=name, url=f"{identity_base_url(base_url)}/{name}", group="identity", kind=embedder,
                      **_IDENTITY_FACTS.get(embedder, {}))


def parsing_base_url(parser: str = "parsenet", base_url: str | None = None) -> str:
    """The folder face parser ``parser``'s file is downloaded from: ``base_url``, else ``$VSPBFR_PARSING_URL``, else
    facexlib's release that holds it (v0.2.2 for parsenet, v0.2.0 for bisenet)."""
    default = DEFAULT_PARSING_BASE_URLS.get(parser, DEFAULT_PARSING_BASE_URLS["parsenet"])
    return (base_url or os.environ.get(PARSING_URL_ENV, "").strip() or default).rstrip("/")


def parsing_remote_file(parser: str = "parsenet", base_url: str | None = None) -> RemoteFile:
    """The weights file of face parser ``parser`` (``parsenet`` or ``bisenet``)."""
    if parser not in PARSING_FILES:
        raise DownloadError(f"unknown face-parsing network {parser!r}: choose one of {', '.join(PARSING_FILES)}")
    name = PARSING_FILES[parser]
    return RemoteFile(name=name, url=f"{parsing_base_url(parser, base_url)}/{name}", group="parsing", kind=parser,
                      **_PARSING_FACTS.get(parser, {}))


def vspbfr_remote_files(endpoint: str | None = None) -> list[RemoteFile]:
    """The three official VSPBFR network files (sizes and hashes unpublished, hence unknown)."""
    root = hf_endpoint(endpoint)
    return [RemoteFile(name=f"{kind}.pt", url=f"{root}/{HF_REPO}/resolve/{HF_REVISION}/{kind}.pt",
                       group="vspbfr", kind=kind) for kind in NETWORK_KINDS]


def detector_remote_file(detector: str, base_url: str | None = None) -> RemoteFile:
    """The RetinaFace file for ``detector`` (``resnet50`` or ``mobile0.25``)."""
    if detector not in DETECTOR_FILES:
        raise DownloadError(f"unknown detector {detector!r}: choose one of {', '.join(DETECTOR_FILES)}")
    name = DETECTOR_FILES[detector]
    return RemoteFile(name=name, url=f"{detector_base_url(base_url)}/{name}", group="detector", kind=detector,
                      **_DETECTOR_FACTS.get(detector, {}))


def plan_downloads(only: Group | None = None, detector: DetectorChoice = "resnet50", *,
                   hf_endpoint: str | None = None, detector_base_url: str | None = None,
                   identity_base_url: str | None = None, parsing_base_url: str | None = None,
                   parsers: Sequence[str] = ("parsenet",)) -> list[RemoteFile]:
    """The files ``vspbfr download`` fetches: the networks when ``only`` is None or ``"vspbfr"``, the detector when it
    is None or ``"detector"`` (unless ``detector="none"``), the optional ArcFace identity file only when it is
    ``"identity"`` (restoration never needs it, so the default download leaves it out), and the optional
    face-parsing files of ``parsers`` only when it is ``"parsing"``."""
    files: list[RemoteFile] = []
    if only in (None, "vspbfr"):
        files += vspbfr_remote_files(hf_endpoint)
    if only in (None, "detector") and detector != "none":
        files.append(detector_remote_file(detector, detector_base_url))
    if only == "identity":
        files.append(identity_remote_file("arcface", identity_base_url))
    if only == "parsing":
        files += [parsing_remote_file(p, parsing_base_url) for p in dict.fromkeys(parsers)]
    return files


#----------------------------------------------------------------------------
# Records of earlier downloads


def read_download_records(folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{file name: {url, size, sha256, time}}`` from ``vspbfr-downloads.json`` (empty when absent or unreadable)."""
    path = Path(folder) / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable download record %s: %s", path, exc)
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _write_record(folder: Path, spec: RemoteFile, size: int, sha256: str, note: str) -> None:
    records = read_download_records(folder)
    records[spec.name] = {"url": spec.url, "size": size, "sha256": sha256,
                          "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "note": note}
    path = folder / RECORD_FILE
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps({"format": RECORD_FORMAT, "files": records}, indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # the model file itself is in place and verified; only later re-checks lose the hash
        log.warning("could not write the download record %s: %s", path, exc)


#----------------------------------------------------------------------------
# Verification


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_model_file(path: str | os.PathLike[str], kind: str) -> None:
    """Raise a :class:`VSPBFRError` unless ``path`` loads as ``kind``.

    ``kind`` is a network kind (strict load of the networks), a detector name (``torch.load(weights_only=True)``
    and RetinaFace's key layout for that backbone), ``"arcface"`` (the identity network's strict loader) or a face
    parser, ``"parsenet"`` / ``"bisenet"`` (:func:`vspbfr_core.face.parsing.load_parser`, strict).
    """
    path = Path(path)
    if kind in PARSING_FILES:
        from .face.parsing import load_parser

        try:
            load_parser(kind, path)
        except VSPBFRError:
            raise
        except Exception as exc:  # the unpickler's odd errors on garbage
            raise CheckpointError(f"{path}: cannot be read as the {kind} face-parsing network ({type(exc).__name__}: "
                                  f"{exc}); it is damaged or not a PyTorch file") from exc
        return
    if kind in IDENTITY_FILES:
        from .identity.arcface import load_arcface

        try:
            load_arcface(path)
        except VSPBFRError:
            raise
        except Exception as exc:  # as for the networks: the unpickler's odd errors on garbage
            raise CheckpointError(f"{path}: cannot be read as the ArcFace identity network ({type(exc).__name__}: "
                                  f"{exc}); it is damaged or not a PyTorch file") from exc
        return
    if kind in NETWORK_KINDS:
        from .checkpoints import load_checkpoint

        try:
            load_checkpoint(path, expect=kind)  # type: ignore[arg-type]
        except VSPBFRError:
            raise
        except Exception as exc:  # torch's unpickler can fail on garbage with IndexError, KeyError, ...
            raise CheckpointError(f"{path}: cannot be read as a {kind} checkpoint ({type(exc).__name__}: {exc}); "
                                  "it is damaged or not a PyTorch file") from exc
        return
    if kind not in DETECTOR_FILES:
        raise DownloadError(f"cannot verify {path}: unknown kind {kind!r}")
    import torch

    from .weights_file import count_non_finite, read_weights_file

    # the loader of the networks: no code runs, damaged files are CheckpointErrors without torch's weights_only advice
    obj, _ = read_weights_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DownloadError(f"{path}: expected a RetinaFace state dict (name -> tensor), found {type(obj).__name__}")
    keys = [k[len("module."):] if k.startswith("module.") else k for k in obj]
    missing = [p for p in _RETINAFACE_PREFIXES if not any(k.startswith(p) for k in keys)]
    if missing:
        raise DownloadError(f"{path}: not a RetinaFace detector: no keys under {missing} "
                            f"(found {len(keys)} keys starting with {sorted(keys)[:4]})")
    body = _RETINAFACE_BODY[kind]
    if not any(k.startswith(body) for k in keys):
        other = next((d for d, b in _RETINAFACE_BODY.items() if any(k.startswith(b) for k in keys)), "another")
        raise DownloadError(f"{path}: this is a RetinaFace {other} detector, expected {kind} "
                            f"({DETECTOR_FILES[kind]}); the file is misnamed")
    bad = [(k, n) for k, v in obj.items() if (n := count_non_finite(v))]
    if bad:
        listed = ", ".join(f"{k!r} ({n} values)" for k, n in bad[:4])
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) of the {kind} detector hold NaN or infinite values "
                              f"({listed}); the file is damaged: download it again (vspbfr download).")


def _hash_problem(spec: RemoteFile, digest: str, expected_sha: str | None) -> str | None:
    if expected_sha and digest != expected_sha.lower():
        return f"sha256 {digest}, expected {expected_sha.lower()}"
    if spec.sha256_affixes:
        prefix, suffix = spec.sha256_affixes
        if not (digest.startswith(prefix.lower()) and digest.endswith(suffix.lower())):
            return f"sha256 {digest}, expected {prefix}...{suffix}"
    return None


def check_present_file(spec: RemoteFile, path: str | os.PathLike[str],
                       records: dict[str, dict[str, Any]] | None = None) -> tuple[str | None, str]:
    """``(problem, sha256)`` for a file already under its final name; ``problem`` is None when it is valid.

    Valid means: the known size and sha256 (or its known prefix/suffix) match, and the sha256 recorded when it was
    downloaded matches; a file with neither a known hash nor a record must load instead.
    """
    path = Path(path)
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"{size} bytes, expected {spec.size}", ""
    record = (records or {}).get(spec.name)
    if record and isinstance(record.get("size"), int) and record["size"] != size:
        return f"{size} bytes, but {record['size']} were recorded when it was downloaded", ""
    digest = _sha256(path)
    problem = _hash_problem(spec, digest, spec.sha256)
    if problem:
        return problem, digest
    if record and record.get("sha256") and record["sha256"] != digest:
        return f"sha256 {digest}, but {record['sha256']} was recorded when it was downloaded", digest
    if not record and not spec.sha256 and not spec.sha256_affixes:
        try:
            verify_model_file(path, spec.kind)
        except VSPBFRError as exc:
            return f"does not load: {exc}", digest
    return None, digest


#----------------------------------------------------------------------------
# Transfer


class _Transient(Exception):
    """A failure worth retrying (the part file keeps what arrived)."""

    def __init__(self, reason: str, network: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.network = network        # the host could not be reached at all (as opposed to a dropped transfer)


class _Unreachable(Exception):
    """The host could not be reached at all (no byte arrived): offline, refused, DNS, timeout."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _HubHintHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects and keeps the hub's ``X-Linked-Size``/``X-Linked-Etag`` from the redirect response."""

    def __init__(self, hints: dict[str, Any]):
        super().__init__()
        self.hints = hints

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _collect_hints(headers, self.hints)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _collect_hints(headers: Any, hints: dict[str, Any]) -> None:
    etag = (headers.get("X-Linked-Etag") or "").strip()
    etag = etag[2:] if etag.startswith("W/") else etag
    etag = etag.strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        hints["sha256"] = etag
    size = (headers.get("X-Linked-Size") or "").strip()
    if size.isdigit():
        hints["size"] = int(size)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from ``bytes 100-199/200`` or ``bytes */200``."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _describe_network_error(exc: BaseException) -> tuple[str, bool]:
    """A short reason and whether it means the host is unreachable (offline, refused, DNS)."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason})", True
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out", True
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return f"connection dropped ({type(reason).__name__})", False
    if isinstance(reason, http.client.IncompleteRead):
        return f"connection closed early ({reason})", False
    if isinstance(reason, OSError):
        return f"{type(reason).__name__}: {reason}", True
    return f"{type(reason).__name__}: {reason}", False


_PROJECT_PAGES = {"vspbfr": f"{DEFAULT_HF_ENDPOINT}/{HF_REPO}/tree/{HF_REVISION}",
                  "detector": "https://github.com/xinntao/facexlib/releases/tag/v0.1.0",
                  "identity": "https://github.com/xinntao/facexlib/releases/tag/v0.1.0",
                  "parsing": "https://github.com/xinntao/facexlib/releases (v0.2.2: parsenet, v0.2.0: bisenet)"}


def _http_error_message(spec: RemoteFile, code: int, folder: Path) -> str:
    page = _PROJECT_PAGES[spec.group]
    if code == 404:
        if spec.group == "vspbfr" and not spec.url.startswith(DEFAULT_HF_ENDPOINT + "/"):
            where = f"the mirror ({HF_ENDPOINT_ENV}) does not have it, or the base URL is wrong"
        else:
            where = "the file was renamed or moved, or the base URL is wrong"
        return (f"{spec.url} was not found (HTTP 404): {where}. Download {spec.name} by hand from {page} into "
                f"{folder}, then check it with `vspbfr info {folder} --check`.")
    if code in (401, 403):
        return (f"{spec.url}: access refused (HTTP {code}). The file may need a login or a different mirror; "
                f"download {spec.name} by hand from {page} into {folder}.")
    return f"{spec.url}: the server answered HTTP {code}; try again later or download {spec.name} from {page}."


def _offline_message(specs: Sequence[RemoteFile], folder: Path, reasons: dict[str, str]) -> str:
    """What to do when hosts cannot be reached; ``reasons`` maps each host to why, ``specs`` are the files left."""
    hosts = "; ".join(f"{host}: {reason}" for host, reason in reasons.items())
    lines = [f"cannot download from {hosts}. This machine looks offline, or a firewall or proxy blocks it. "
             "What to do:",
             "  - check the connection (urllib honours HTTPS_PROXY) and run the same command again; "
             "partial files (*.part) are resumed, not restarted;"]
    if any(s.group == "vspbfr" for s in specs):
        lines.append(f"  - or set {HF_ENDPOINT_ENV} to a Hugging Face mirror (for example "
                     f"{HF_ENDPOINT_ENV}=https://hf-mirror.com) and run again;")
    lines.append(f"  - or download these files by hand (on another machine if needed) into {folder}:")
    lines += [f"      {s.url}" for s in specs]
    lines.append(f"    then check them with `vspbfr info {folder} --check`.")
    return "\n".join(lines)


@dataclass
class _TransferState:
    total: int | None                  # expected total size, once known
    sha256: str | None                 # expected digest, once known
    resumed_from: int = 0


def _transfer_once(spec: RemoteFile, part: Path, state: _TransferState, *, timeout: float, chunk_size: int,
                   progress: ProgressCallback | None, first: bool) -> None:
    """One HTTP request that appends to (or restarts) ``part``; raises :class:`_Transient` to be retried."""
    offset = part.stat().st_size if part.exists() else 0
    if state.total is not None and offset > state.total:
        log.info("%s: %s is longer than the file (%d > %d bytes); starting again", spec.name, part.name, offset,
                 state.total)
        part.unlink()
        offset = 0
    if state.total is not None and offset == state.total and offset > 0:
        return
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    if first:
        state.resumed_from = offset
    hints: dict[str, Any] = {}
    opener = urllib.request.build_opener(_HubHintHandler(hints))
    try:
        resp = opener.open(urllib.request.Request(spec.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                _, total = _parse_content_range(exc.headers.get("Content-Range"))
                if total is not None and total == offset and state.total in (None, total):
                    state.total = total
                    return
                part.unlink(missing_ok=True)
                raise _Transient("the server refused to resume (HTTP 416); starting again", network=False) from exc
            if exc.code in _RETRY_HTTP_CODES:
                raise _Transient(f"HTTP {exc.code} {exc.reason}", network=False) from exc
            raise DownloadError(_http_error_message(spec, exc.code, part.parent)) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason, unreachable = _describe_network_error(exc)
        raise _Transient(reason, network=unreachable) from exc
    with resp:
        _collect_hints(resp.headers, hints)
        status = resp.status
        length = resp.headers.get("Content-Length")
        length_i = int(length) if length and length.isdigit() else None
        if status == 206 and offset:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"the server resumed at byte {start}, not {offset}; starting again", network=False)
            if total is None and length_i is not None:
                total = offset + length_i
            mode = "ab"
        elif status == 200:
            if offset:
                log.info("%s: the server ignored the Range request (HTTP 200); downloading from the start", spec.name)
                if first:
                    state.resumed_from = 0
            offset = 0
            total = length_i
            mode = "wb"
        else:
            raise DownloadError(f"{spec.url}: unexpected HTTP status {status} (expected 200, or 206 when resuming)")
        if "sha256" in hints:
            if state.sha256 and state.sha256 != hints["sha256"]:
                raise DownloadError(f"{spec.url}: the server announces sha256 {hints['sha256']}, expected "
                                    f"{state.sha256}: not the expected file")
            state.sha256 = hints["sha256"]
        for what, value in (("announced", hints.get("size")), ("sent", total)):
            if value is None:
                continue
            if state.total is not None and value != state.total:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{spec.url}: the server {what} {value} bytes, expected {state.total}: not the "
                                    "expected file (a proxy or captive portal page, or a wrong URL?)")
            state.total = value
        if state.total is not None:
            need = state.total - offset
            free = shutil.disk_usage(part.parent).free
            if free < need:
                raise DownloadError(f"not enough free space in {part.parent}: {spec.name} needs {need / 1e6:.1f} MB "
                                    f"more, {free / 1e6:.1f} MB are free. Free some space or choose another folder.")
        done = offset
        with open(part, mode) as f:
            if progress is not None:
                progress(spec.name, done, state.total)
            while True:
                try:
                    # read1: what has arrived (at most one socket read), so a stall loses no received bytes
                    block = resp.read1(chunk_size) if hasattr(resp, "read1") else resp.read(chunk_size)
                except (OSError, http.client.HTTPException) as exc:
                    reason, _ = _describe_network_error(exc)
                    raise _Transient(f"{reason} after {done} bytes", network=False) from exc
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as exc:
                    raise DownloadError(f"cannot write {part}: {exc}. Free some space or choose another folder "
                                        "(--to); what was written so far is kept and resumed.") from exc
                done += len(block)
                if state.total is not None and done > state.total:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{spec.url}: the server sent more than the expected {state.total} bytes: "
                                        "not the expected file")
                if progress is not None:
                    progress(spec.name, done, state.total)
    if state.total is not None and done < state.total:
        raise _Transient(f"connection closed after {done} of {state.total} bytes", network=False)
    if state.total is None:
        state.total = done


def _fetch(spec: RemoteFile, part: Path, *, timeout: float, retries: int, backoff: float, chunk_size: int,
           progress: ProgressCallback | None) -> _TransferState:
    state = _TransferState(total=spec.size, sha256=spec.sha256)
    attempt = 0
    while True:
        try:
            _transfer_once(spec, part, state, timeout=timeout, chunk_size=chunk_size, progress=progress,
                           first=attempt == 0)
            return state
        except _Transient as exc:
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            # Nothing ever arrived and the host cannot be reached: one retry covers a blip, more only delay the
            # advice of the offline message.
            limit = min(retries, 1) if exc.network and kept == 0 else retries
            if exc.network and kept == 0 and attempt > limit:
                raise _Unreachable(exc.reason) from exc
            if attempt > retries:
                raise DownloadError(
                    f"could not download {spec.name} from {spec.url}: {exc.reason} (gave up after {attempt} "
                    f"tries). {kept} bytes are kept in {part}; run the same command again to resume, or download "
                    f"the file by hand into {part.parent}.") from exc
            delay = backoff * attempt
            log.warning("%s: %s; retrying in %.1f s (try %d of %d)%s", spec.name, exc.reason, delay, attempt + 1,
                        limit + 1, f", resuming from byte {kept}" if kept else "")
            if delay > 0:
                time.sleep(delay)


def download_file(spec: RemoteFile, folder: str | os.PathLike[str], *, progress: ProgressCallback | None = None,
                  timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
                  chunk_size: int = 1 << 16) -> DownloadResult:
    """Make ``folder/spec.name`` present and verified, downloading it when needed (see the module docstring).

    ``timeout`` is in seconds per network operation (connect, each read); ``retries`` transient failures are
    retried with ``backoff * n`` seconds between tries, each resuming from the part file. Raises
    :class:`DownloadError` (the part file is deleted when its bytes are wrong, kept when only incomplete).
    """
    try:
        return _download_file(spec, Path(folder), progress=progress, timeout=timeout, retries=retries,
                              backoff=backoff, chunk_size=chunk_size)
    except _Unreachable as exc:
        raise DownloadError(_offline_message([spec], Path(folder),
                                             {urllib.parse.urlsplit(spec.url).netloc: exc.reason})) from exc


def _download_file(spec: RemoteFile, folder: Path, *, progress: ProgressCallback | None, timeout: float,
                   retries: int, backoff: float, chunk_size: int) -> DownloadResult:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the models folder {folder}: {exc}. Choose another folder with --models "
                            "or VSPBFR_MODELS.") from exc
    final = folder / spec.name
    part = folder / (spec.name + PART_SUFFIX)
    records = read_download_records(folder)
    if final.is_file():
        problem, digest = check_present_file(spec, final, records)
        if problem is None:
            if spec.name not in records:
                _write_record(folder, spec, final.stat().st_size, digest, "found present and verified")
            log.debug("%s: present and valid, skipped", final)
            return DownloadResult(spec, final, "present", final.stat().st_size, digest)
        log.warning("%s is present but invalid (%s); downloading it again (it is replaced only once the new file "
                    "is verified)", final, problem)

    state = _fetch(spec, part, timeout=timeout, retries=retries, backoff=backoff, chunk_size=chunk_size,
                   progress=progress)
    size = part.stat().st_size
    if state.total is not None and size != state.total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{spec.name}: {size} bytes arrived, expected {state.total}; the part file was deleted, "
                            "run the command again.")
    digest = _sha256(part)
    problem = _hash_problem(spec, digest, state.sha256)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{spec.name} from {spec.url}: wrong bytes ({problem}). The file is corrupt or not the official one (a "
            "broken mirror, proxy or captive portal can cause this). The partial file was deleted; run the command "
            "again, or download the file by hand and check its sha256.")
    try:
        verify_model_file(part, spec.kind)
    except VSPBFRError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{spec.name} from {spec.url} arrived complete but does not load as {spec.kind}: {exc}. "
                            "The partial file was deleted; run the command again or try another mirror.") from exc
    previous = records.get(spec.name, {}).get("sha256")
    if previous and previous != digest:
        log.warning("%s: sha256 %s differs from %s recorded by an earlier download; the file on the server "
                    "changed. The new file loads and replaces the old one.", spec.name, digest, previous)
    try:
        os.replace(part, final)
    except OSError as exc:  # Windows: the old file is open (memory-mapped) in another program
        raise DownloadError(f"{spec.name} was downloaded and verified, but {final} cannot be replaced ({exc}). "
                            f"Close programs that use it, then run the command again (the verified bytes are kept "
                            f"in {part}).") from exc
    _write_record(folder, spec, size, digest, "downloaded")
    log.debug("%s: downloaded, %d bytes, sha256 %s", final, size, digest)
    return DownloadResult(spec, final, "downloaded", size, digest, state.resumed_from)


def download_models(folder: str | os.PathLike[str] | None = None, *, only: Group | None = None,
                    detector: DetectorChoice = "resnet50", hf_endpoint: str | None = None,
                    detector_base_url: str | None = None, identity_base_url: str | None = None,
                    parsing_base_url: str | None = None, parsers: Sequence[str] = ("parsenet",),
                    progress: ProgressCallback | None = None,
                    on_result: Callable[[DownloadResult], None] | None = None, timeout: float = 30.0,
                    retries: int = 3, backoff: float = 1.0) -> list[DownloadResult]:
    """Download (or confirm) every file of :func:`plan_downloads` into ``folder`` (default: the models folder).

    Every file is attempted, except that files on a host found unreachable are not tried again. ``on_result`` is
    called for each file that is present and verified. Raises one :class:`DownloadError` listing what failed and
    what to do, after the other files are done.
    """
    dest = resolve_models_dir(folder)
    specs = plan_downloads(only, detector, hf_endpoint=hf_endpoint, detector_base_url=detector_base_url,
                           identity_base_url=identity_base_url, parsing_base_url=parsing_base_url, parsers=parsers)
    results: list[DownloadResult] = []
    failures: list[tuple[RemoteFile, str]] = []
    unreachable: dict[str, str] = {}
    skipped: list[RemoteFile] = []
    for spec in specs:
        host = urllib.parse.urlsplit(spec.url).netloc
        if host in unreachable:
            skipped.append(spec)
            continue
        try:
            result = _download_file(spec, dest, progress=progress, timeout=timeout, retries=retries,
                                    backoff=backoff, chunk_size=1 << 16)
        except _Unreachable as exc:
            unreachable[host] = exc.reason
            skipped.append(spec)
            continue
        except DownloadError as exc:
            failures.append((spec, str(exc)))
            continue
        results.append(result)
        if on_result is not None:
            on_result(result)
    if not failures and not skipped:
        return results
    parts = []
    if results:
        parts.append("ready: " + ", ".join(r.spec.name for r in results) + ".")
    parts += [f"failed: {spec.name}: {msg}" for spec, msg in failures]
    if unreachable:
        parts.append(_offline_message(skipped, Path(dest), unreachable))
    raise DownloadError("\n".join(parts))

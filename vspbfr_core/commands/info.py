"""``vspbfr info [--models DIR] [--detector-dir DIR] [--check]``: which model files are there, and what they are.

The folder is ``--models DIR`` as in every other command (a positional ``DIR`` is still accepted).

Lists, for each network, the converted ``.safetensors`` and the official ``.pt`` (present, missing, size, kind
detected from the keys), the RetinaFace detector files, and interrupted downloads (``*.part``). Kinds are read
from the keys only (``.safetensors``: the header; ``.pt``: :func:`vspbfr_core.checkpoints.read_checkpoint`). The
optional ArcFace identity network (``recognition_arcface_ir_se50.pth``) has its own row; it is never required, so
its absence does not change the exit status (a present file that fails ``--check`` does, like any damaged file);
the same holds for the optional face-parsing networks of the ``parsing`` paste mask (``parsing_parsenet.pth``,
``parsing_bisenet.pth``).

``--check`` also compares sizes and sha256 with the known values and the download record, and loads every file
strictly (keys, shapes, dtypes, NaN / Inf values, configuration metadata: each problem names the file and the
tensor or field). The exit status is 0 when every network and a detector are usable and no file has a problem.

A MODEL_DIR (or ``--detector-dir``) that exists but is not a folder, or cannot be listed (no permission), is an
error (exit 1) naming it; a MODEL_DIR that does not exist is reported as such (exit 1). Names that are not UTF-8
are printed with ``\\xNN`` escapes.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import DETECTOR_FILES, IDENTITY_FILES, NETWORK_KINDS, NETWORK_SUFFIXES, PARSING_FILES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list the model files in the models folder",
                       description="List which model files are present, missing or converted, with their detected "
                                   "kinds and sizes. The folder is --models DIR, else $VSPBFR_MODELS, else the "
                                   "per-user default (see `vspbfr download --help`).")
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models folder (default: $VSPBFR_MODELS, else the per-user folder)")
    p.add_argument("model_dir", nargs="?", default=None, metavar="DIR",
                   help="the models folder given without --models (the older spelling, still accepted)")
    p.add_argument("--detector-dir", metavar="DIR", default=None,
                   help="a separate folder with the RetinaFace files (searched before the models folder)")
    p.add_argument("--check", action="store_true",
                   help="also verify sizes and sha256 (known values, download record) and load every file strictly")
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.set_defaults(func=run)


@dataclass
class ModelFileInfo:
    """One row of the inventory."""
    role: str                    # network kind, "detector", "identity" / "parsing" (optional) or "partial"
    name: str                    # file name
    path: str | None             # full path when present
    state: str                   # present | converted (.safetensors) | missing | partial (*.part)
    size: int | None = None
    kind: str | None = None      # detected kind (networks: from the keys; detector, identity: from the file name)
    problem: str | None = None   # unreadable, wrong kind, failed check
    checked: bool = False        # --check passed


def _safetensors_kind(path: Path) -> str:
    from safetensors import safe_open

    from ..checkpoints import detect_kind, validate_config_metadata
    from ..weights_file import _native_name, torch_reason
    from ..errors import CheckpointError

    try:
        with _native_name(path) as name:
            if name is None:   # no /proc on this system: the full reader copes with any name
                from ..checkpoints import read_checkpoint

                return read_checkpoint(path).kind
            with safe_open(name, framework="pt") as f:
                keys = list(f.keys())
                meta = dict(f.metadata() or {})
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"not a valid .safetensors file ({torch_reason(exc)})") from exc
    kind = detect_kind(keys)
    if kind is None:
        raise CheckpointError(f"not a VSPBFR network file ({len(keys)} keys starting with {sorted(keys)[:3]})")
    declared = meta.get("vspbfr.kind")
    if declared and declared != kind:
        raise CheckpointError(f"metadata says {declared!r} but the keys are those of {kind!r}")
    validate_config_metadata(meta, path, kind)
    return kind


def _network_kind(path: Path) -> str:
    if path.suffix == ".safetensors":
        return _safetensors_kind(path)
    from ..checkpoints import read_checkpoint

    return read_checkpoint(path).kind


def _check(path: Path, role: str, detector: str | None, records: dict) -> None:
    """Raise a VSPBFRError unless the file matches what is known (size, sha256, download record) and loads strictly.

    Both are checked and every failure is reported: a wrong hash and the tensor a load refuses.
    """
    from ..download import (
        check_present_file, detector_remote_file, identity_remote_file, parsing_remote_file, verify_model_file,
        vspbfr_remote_files,
    )
    from ..errors import CheckpointError, VSPBFRError

    kind = detector if role in ("detector", "identity", "parsing") else role
    assert kind is not None
    problems: list[str] = []
    if path.suffix == ".pt" or role in ("detector", "identity", "parsing"):
        if role == "detector":
            spec = detector_remote_file(kind)
        elif role == "identity":
            spec = identity_remote_file(kind)
        elif role == "parsing":
            spec = parsing_remote_file(kind)
        else:
            spec = next(s for s in vspbfr_remote_files() if s.kind == kind)
        if spec.size is not None or spec.sha256 or spec.sha256_affixes or spec.name in records:
            problem, _ = check_present_file(spec, path, records)
            if problem:
                problems.append(problem)
    try:
        verify_model_file(path, kind)
    except VSPBFRError as exc:
        problems.append(f"does not load: {exc}" if problems else str(exc))
    if problems:
        raise CheckpointError("; ".join(problems))


def _check_folder(folder: Path, what: str) -> None:
    """An :class:`InputError` unless ``folder`` (when it exists) is a folder this process can list."""
    from ..weights_file import shown
    from ..errors import InputError

    if not (folder.exists() or folder.is_symlink()):
        return
    if not folder.is_dir():
        raise InputError(f"{what} {shown(folder)} is not a folder (a file?): give the folder that holds the model "
                         "files")
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as exc:
        raise InputError(f"cannot read the {what} {shown(folder)} ({exc.strerror or exc}): check its permissions "
                         "(it must be readable and searchable)") from exc


def inspect_models_dir(folder: str | os.PathLike[str], detector_dir: str | os.PathLike[str] | None = None,
                       check: bool = False) -> list[ModelFileInfo]:
    """The inventory of ``folder`` (and ``detector_dir``): one row per expected file and per ``*.part`` file.

    Raises :class:`InputError` when a folder exists but is not a folder or cannot be listed.
    """
    from ..weights_file import as_path
    from ..download import read_download_records
    from ..errors import VSPBFRError

    folder = as_path(folder)
    _check_folder(folder, "models folder")
    if detector_dir is not None:
        _check_folder(as_path(detector_dir), "detector folder")
    rows: list[ModelFileInfo] = []
    records = read_download_records(folder)
    for kind in NETWORK_KINDS:
        for suffix in NETWORK_SUFFIXES:
            path = folder / (kind + suffix)
            state = "converted" if suffix == ".safetensors" else "present"
            if not path.is_file():
                rows.append(ModelFileInfo(kind, path.name, None, "missing"))
                continue
            row = ModelFileInfo(kind, path.name, str(path), state, path.stat().st_size)
            try:
                row.kind = _network_kind(path)
                if row.kind != kind:
                    row.problem = f"holds a {row.kind} network, not {kind}: rename or replace it"
                elif check:
                    _check(path, kind, None, records)
                    row.checked = True
            except VSPBFRError as exc:
                row.problem = str(exc)
            rows.append(row)
    det_dirs = [as_path(detector_dir)] if detector_dir is not None else []
    det_dirs.append(folder)
    for det, name in DETECTOR_FILES.items():
        found = next((d / name for d in det_dirs if (d / name).is_file()), None)
        if found is None:
            rows.append(ModelFileInfo("detector", name, None, "missing"))
            continue
        row = ModelFileInfo("detector", name, str(found), "present", found.stat().st_size, f"retinaface {det}")
        if check:
            try:
                _check(found, "detector", det, read_download_records(found.parent))
                row.checked = True
            except VSPBFRError as exc:
                row.problem = str(exc)
        rows.append(row)
    optional = [("identity", embedder, name) for embedder, name in IDENTITY_FILES.items()]
    optional += [("parsing", parser, name) for parser, name in PARSING_FILES.items()]
    for group, kind, name in optional:
        path = folder / name
        if not path.is_file():
            rows.append(ModelFileInfo(group, name, None, "missing", kind=f"{kind} (optional)"))
            continue
        row = ModelFileInfo(group, name, str(path), "present", path.stat().st_size, f"{kind} (optional)")
        if check:
            try:
                _check(path, group, kind, records)
                row.checked = True
            except VSPBFRError as exc:
                row.problem = str(exc)
        rows.append(row)
    for d in dict.fromkeys(det_dirs):
        if d.is_dir():
            for part in sorted(d.glob("*.part")):
                rows.append(ModelFileInfo("partial", part.name, str(part), "partial", part.stat().st_size))
    return rows


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _usable(row: ModelFileInfo, check: bool) -> bool:
    return row.path is not None and row.problem is None and (row.checked or not check)


def run(args: argparse.Namespace) -> int:
    from ..weights_file import shown
    from ..paths import locate_models_dir

    from ..errors import InputError

    if args.models is not None and args.model_dir is not None and args.models != args.model_dir:
        raise InputError(f"two models folders given: --models {args.models} and {args.model_dir}; give one")
    folder, origin = locate_models_dir(args.models if args.models is not None else args.model_dir)
    rows = inspect_models_dir(folder, args.detector_dir, check=args.check)
    # The file a pipeline loads is the first present one (converted before official), as in find_model_file.
    chosen = {k: next((r for r in rows if r.role == k and r.path), None) for k in NETWORK_KINDS}
    networks_ok = {k: r is not None and _usable(r, args.check) for k, r in chosen.items()}
    detectors = [r.name for r in rows if r.role == "detector" and _usable(r, args.check)]
    failed = [r for r in rows if r.problem]
    ok = all(networks_ok.values()) and bool(detectors) and not failed
    if args.json:
        print(json.dumps({"models_dir": str(folder), "origin": origin, "ok": ok,
                          "files": [asdict(r) for r in rows]}, indent=2))
        return 0 if ok else 1

    origin_text = {"argument": "--models", "environment": "$VSPBFR_MODELS", "default": "per-user default"}[origin]
    exists = "" if folder.is_dir() else ", does not exist"
    print(f"models folder: {shown(folder)} ({origin_text}{exists})")
    if args.detector_dir:
        print(f"detector folder: {shown(args.detector_dir)}")
    print(f"{'FILE':<36} {'STATE':<10} {'SIZE':>9}  KIND")
    for r in rows:
        kind = r.kind or ""
        if r.state == "partial":
            kind = "interrupted download: `vspbfr download` resumes it"
        line = f"{r.name:<36} {r.state:<10} {_human(r.size):>9}  {kind}"
        if r.checked:
            line += "  [check ok]"
        if r.problem:
            line += f"  [PROBLEM: {r.problem}]"
        print(shown(line))
    for kind, row in chosen.items():
        if row is not None:
            print(f"{kind}: uses {row.name}" + ("" if networks_ok[kind] else " (which has a problem: fix or remove it)"))
    missing = [k for k, good in networks_ok.items() if not good]
    if missing or not detectors:
        what = missing + ([] if detectors else ["a face detector"])
        print(f"missing or unusable: {', '.join(what)}. Get the files with `vspbfr download --models {shown(folder)}`.")
    elif failed:
        print(f"{len(failed)} file(s) with problems (see above), though every network and a detector are usable.")
    else:
        print(f"ready: all {len(NETWORK_KINDS)} networks and detector {', '.join(detectors)}")
    for r in rows:
        if r.role == "identity" and r.path is None:
            print(f"optional, for identity scores: {r.name} is not there; get it with "
                  f"`vspbfr download --models {shown(folder)} --only identity`.")
    if not any(r.role == "parsing" and r.path is not None for r in rows):
        print(f"optional, for the 'parsing' paste mask: {PARSING_FILES['parsenet']} is not there; get it with "
              f"`vspbfr download --models {shown(folder)} --only parsing`.")
    return 0 if ok else 1

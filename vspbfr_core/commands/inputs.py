"""Which files the INPUT arguments of a command name (files, folders searched recursively, glob patterns).

The rules are listed under "Collecting inputs" in :mod:`vspbfr_core.commands.restore`; ``vspbfr faces`` collects
its inputs the same way.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_WILDCARDS = "*?["

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """What the INPUT arguments name: files to restore, and entries that already failed."""

    files: list[tuple[Path, Path]] = field(default_factory=list)      # (file, output path relative to OUT_DIR)
    failures: list[tuple[Path, str]] = field(default_factory=list)    # (path, reason)


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or below it (both from ``os.path.realpath``)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _glob_base(pattern: str) -> str:
    """The leading folders of a glob pattern that hold no wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(c in part for c in _WILDCARDS):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _entry_problem(path: Path) -> str | None:
    """Why a found entry with an image name cannot be an input file, or None when it is a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "vanished while collecting"
    except OSError as exc:
        return f"cannot access: {exc.strerror or exc}"
    import stat

    return None if stat.S_ISREG(st.st_mode) else "not a regular file"


def _walk(folder: Path, skip: str | None, collected: Collected, videos: tuple[str, ...] = ()) -> int:
    """Add the images under ``folder`` (sorted as paths) to ``collected``; returns how many were found.

    ``skip`` is the real path of a folder not to enter (OUT_DIR inside the input folder).
    """
    found: list[Path] = []
    gifs = video_files = 0

    def failed(exc: OSError) -> None:
        collected.failures.append((Path(exc.filename or folder), f"cannot read the folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(str(folder), onerror=failed):
        keep = []
        for d in dirnames:
            sub = os.path.join(dirpath, d)
            if os.path.islink(sub):
                log.info("%s: symbolic link to a folder, not followed", sub)
            elif skip is not None and os.path.realpath(sub) == skip:
                log.info("%s: the output folder, its files are not inputs", sub)
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower()
            if suffix == ".gif":
                gifs += 1
            video_files += suffix in videos
            if suffix not in EXTENSIONS:
                continue
            path = Path(dirpath) / name
            problem = _entry_problem(path)
            if problem is None:
                found.append(path)
            else:
                collected.failures.append((path, problem))
    if gifs:
        log.info("%s: %d GIF file(s) not restored (restore cannot write GIF; convert them to PNG)", folder, gifs)
    if video_files:
        log.warning("%s: %d video file(s) inside the folder are not restored; name them (or a pattern such as "
                    "%s) as inputs", folder, video_files, os.path.join(str(folder), "*.mp4"))
    collected.files += [(f, f.relative_to(folder)) for f in sorted(found)]
    return len(found)


def collect_inputs(items: list[str], out_dir: str | os.PathLike[str] | None = None,
                   videos: tuple[str, ...] = ()) -> Collected:
    """Files named by files, folders and globs (see the module rules); raises ``InputError`` for empty INPUTs.

    ``videos``: file extensions (``.mp4``, ...) that glob patterns collect as well; folders do not collect them
    (a warning counts them)."""
    collected = Collected()
    problems: list[str] = []
    out_real = os.path.realpath(out_dir) if out_dir is not None else None
    for item in items:
        if not item:
            problems.append("'' (an empty argument)")
            continue
        path = Path(item)
        before_files, before_failures = len(collected.files), len(collected.failures)
        if path.is_dir():
            real = os.path.realpath(path)
            if out_real is not None and out_real == real:
                raise InputError(f"-o {out_dir} is the input folder {item} itself: the results would replace the "
                                 "inputs; write them to another folder (a new sub-folder is fine)")
            skip = out_real if out_real is not None and _inside(out_real, real) else None
            if not _walk(path, skip, collected, videos) and len(collected.failures) == before_failures:
                problems.append(f"{item} (a folder without {'/'.join(e[1:] for e in EXTENSIONS)} files)")
            continue
        if os.path.lexists(path):
            problem = _entry_problem(path)
            if problem is None:
                collected.files.append((path, Path(path.name)))
            else:
                problems.append(f"{item} ({problem})")
            continue
        if any(c in item for c in _WILDCARDS):
            base = os.path.realpath(_glob_base(item))
            skip = out_real if out_real is not None and out_real != base and _inside(out_real, base) else None
            for m in sorted(Path(m) for m in glob.glob(item, recursive=True)):
                if (m.suffix.lower() not in EXTENSIONS and m.suffix.lower() not in videos) or os.path.isdir(m):
                    continue
                if skip is not None and _inside(os.path.realpath(m), skip):
                    continue
                problem = _entry_problem(m)
                if problem is None:
                    collected.files.append((m, Path(m.name)))
                else:
                    collected.failures.append((m, problem))
            if len(collected.files) == before_files and len(collected.failures) == before_failures:
                problems.append(f"{item} (the pattern matches no image)")
            continue
        problems.append(f"{item} (no such file or folder)")
    if problems:
        raise InputError(f"no image found for: {', '.join(problems)}")
    seen: set[str] = set()
    unique = []
    for f, rel in collected.files:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append((f, rel))
    collected.files = unique
    return collected

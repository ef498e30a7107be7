"""Where model files live: the models folder and the files inside it.

The models folder is chosen in this order:

1. an explicit folder (a function argument, ``--models`` on the command line);
2. the environment variable ``VSPBFR_MODELS``;
3. a per-user default: ``%LOCALAPPDATA%\\vspbfr\\models`` on Windows, ``$XDG_DATA_HOME/vspbfr/models`` elsewhere
   (``~/.local/share/vspbfr/models`` when ``XDG_DATA_HOME`` is unset), on Linux and macOS alike.

Inside it, each network is found under its official name (``style_encoder_decoder.pt``, ``code_diffuser.pt``,
``restoration_net.pt``) or its converted name (same stem, ``.safetensors``, preferred when both exist); the RetinaFace
detector under facexlib's names (``detection_Resnet50_Final.pth``, ``detection_mobilenet0.25_Final.pth``), in the
models folder or a separate detector folder; the optional ArcFace identity network under facexlib's name
(``recognition_arcface_ir_se50.pth``, :data:`IDENTITY_FILES`) and the optional face-parsing networks of the
``parsing`` paste mask under facexlib's names (``parsing_parsenet.pth``, ``parsing_bisenet.pth``,
:data:`PARSING_FILES`). Nothing here imports torch or touches the network.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import InputError, ModelNotFoundError

__all__ = [
    "MODELS_ENV", "NETWORK_KINDS", "DETECTOR_FILES", "DETECTOR_ALIASES", "default_models_dir", "locate_models_dir",
    "resolve_models_dir", "model_file_candidates", "find_model_file", "DETECTOR_AUTO", "DETECTOR_PREFERENCE",
    "choose_detector", "HostHints", "set_host_hints", "host_hints", "download_command", "IDENTITY_FILES",
    "identity_download_command", "PARSING_FILES", "parsing_download_command",
]

MODELS_ENV = "VSPBFR_MODELS"
NETWORK_KINDS: tuple[str, ...] = ("style_encoder_decoder", "code_diffuser", "restoration_net")
NETWORK_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt")    # search order: converted first
DETECTOR_FILES: dict[str, str] = {
    "resnet50": "detection_Resnet50_Final.pth",
    "mobile0.25": "detection_mobilenet0.25_Final.pth",
}
DETECTOR_ALIASES: dict[str, str] = {                          # facexlib's model names -> ours
    "retinaface_resnet50": "resnet50",
    "retinaface_mobile0.25": "mobile0.25",
}

# Optional identity networks (vspbfr_core.identity), fetched with `vspbfr download --only identity`; restoration
# never needs them.
IDENTITY_FILES: dict[str, str] = {
    "arcface": "recognition_arcface_ir_se50.pth",              # facexlib's IR-SE-50 ArcFace, release v0.1.0
}

# Optional face-parsing networks (vspbfr_core.face.parsing) for the `parsing` paste mask, fetched with
# `vspbfr download --only parsing`; restoration with the other mask shapes never needs them.
PARSING_FILES: dict[str, str] = {
    "parsenet": "parsing_parsenet.pth",                      # facexlib's ParseNet (from PSFRGAN), release v0.2.2
    "bisenet": "parsing_bisenet.pth",                        # facexlib's BiSeNet (face-parsing.PyTorch), release v0.2.0
}

DETECTOR_AUTO = "auto"                                        # the detector whose file is there (see choose_detector)
DETECTOR_PREFERENCE: tuple[str, ...] = ("resnet50", "mobile0.25")  # auto's order: the more accurate one first

PathLike = str | os.PathLike[str]
ModelsDirOrigin = Literal["argument", "environment", "default"]


def _quote(path: PathLike) -> str:
    text = os.fspath(path)
    return f'"{text}"' if any(c in text for c in " \t'&;()") else text


def _cli_download(target: Path, detector: str | None, only_detector: bool) -> str:
    command = f"vspbfr download --models {_quote(target)}"
    if only_detector:
        command += " --only detector"
    if detector is not None:
        command += f" --detector {detector}"
    return command


def _cli_download_identity(target: Path) -> str:
    return f"vspbfr download --models {_quote(target)} --only identity"


def _cli_download_parsing(target: Path, parser: str | None) -> str:
    command = f"vspbfr download --models {_quote(target)} --only parsing"
    return command + (f" --parser {parser}" if parser not in (None, "parsenet") else "")


@dataclass(frozen=True)
class HostHints:
    """What messages about model files tell the user to do, in the program that runs the core.

    ``download(folder, detector, only_detector)`` is the command that fetches the files into ``folder`` (``detector``
    is a short name such as ``mobile0.25``, or None for the default); ``download_identity(folder)`` fetches the
    optional identity network (ArcFace) there; ``download_parsing(folder, parser)`` the optional face-parsing network
    ``parser`` (``parsenet`` or ``bisenet``; None: derived from ``download_identity``, whose ``--only identity``
    becomes ``--only parsing``, so hosts that predate it keep their own command); ``choose_folder`` says how to pick
    another models folder there. The command line's are the defaults; ComfyUI and A1111 set their own with
    :func:`set_host_hints` (their Python environments have no ``vspbfr`` script on the PATH).
    """

    download: Callable[[Path, str | None, bool], str] = _cli_download
    choose_folder: str = f"--models DIR (or the {MODELS_ENV} environment variable)"
    download_identity: Callable[[Path], str] = _cli_download_identity
    download_parsing: Callable[[Path, str | None], str] | None = None


_hints = HostHints()


def set_host_hints(hints: HostHints) -> None:
    """Install the hints of the host this process runs in (ComfyUI, A1111); affects messages only."""
    global _hints
    _hints = hints


def host_hints() -> HostHints:
    return _hints


def download_command(target: PathLike, detector: str | None = None, *, only_detector: bool = False) -> str:
    """The command that downloads the model files (or only ``detector``'s) into ``target`` in this host."""
    short = _detector_key(detector) if detector is not None else None
    return _hints.download(_expand(target), short, only_detector)


def identity_download_command(target: PathLike) -> str:
    """The command that downloads the optional identity network (ArcFace) into ``target`` in this host."""
    return _hints.download_identity(_expand(target))


def parsing_download_command(target: PathLike, parser: str | None = None) -> str:
    """The command that downloads the optional face-parsing network ``parser`` (default ``parsenet``) into
    ``target`` in this host."""
    folder = _expand(target)
    if _hints.download_parsing is not None:
        return _hints.download_parsing(folder, parser)
    if _hints.download_identity is not _cli_download_identity:
        command = _hints.download_identity(folder)
        if command.endswith("--only identity"):
            command = command[: -len("identity")] + "parsing"
            return command + (f" --parser {parser}" if parser not in (None, "parsenet") else "")
    return _cli_download_parsing(folder, parser)


def _expand(path: PathLike) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))


def default_models_dir() -> Path:
    """The per-user models folder used when neither an argument nor ``VSPBFR_MODELS`` names one."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "vspbfr" / "models"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vspbfr" / "models"


def locate_models_dir(explicit: PathLike | None = None) -> tuple[Path, ModelsDirOrigin]:
    """The models folder and where the choice came from (for messages such as ``vspbfr info``)."""
    if explicit is not None and os.fspath(explicit) != "":
        return _expand(explicit), "argument"
    env = os.environ.get(MODELS_ENV, "").strip()
    if env:
        return _expand(env), "environment"
    return default_models_dir(), "default"


def resolve_models_dir(explicit: PathLike | None = None) -> Path:
    """The models folder: ``explicit``, else ``$VSPBFR_MODELS``, else :func:`default_models_dir`.

    The folder is not created and need not exist.
    """
    return locate_models_dir(explicit)[0]


def _detector_key(name: str) -> str | None:
    name = DETECTOR_ALIASES.get(name, name)
    if name in DETECTOR_FILES:
        return name
    for key, fname in DETECTOR_FILES.items():
        if name == fname:
            return key
    return None


def _identity_key(name: str) -> str | None:
    if name in IDENTITY_FILES:
        return name
    return next((key for key, fname in IDENTITY_FILES.items() if name == fname), None)


def _parsing_key(name: str) -> str | None:
    if name in PARSING_FILES:
        return name
    return next((key for key, fname in PARSING_FILES.items() if name == fname), None)


def model_file_candidates(kind_or_name: str) -> tuple[tuple[str, ...], bool]:
    """File names to look for, in order, and whether they are detector files.

    ``kind_or_name`` is a network kind (``restoration_net``), an official or converted file name
    (``restoration_net.pt``: then the converted twin is accepted too), a detector name (``resnet50``,
    ``mobile0.25``, facexlib's ``retinaface_resnet50``) or detector file name, an identity network
    (``arcface``) or its file name, a face-parsing network (``parsenet``, ``bisenet``) or its file name, or any
    other file name with a suffix (looked for as is).
    """
    det = _detector_key(kind_or_name)
    if det is not None:
        return (DETECTOR_FILES[det],), True
    ident = _identity_key(kind_or_name)
    if ident is not None:
        return (IDENTITY_FILES[ident],), False
    parser = _parsing_key(kind_or_name)
    if parser is not None:
        return (PARSING_FILES[parser],), False
    stem, suffix = os.path.splitext(kind_or_name)
    if kind_or_name in NETWORK_KINDS:
        return tuple(kind_or_name + s for s in NETWORK_SUFFIXES), False
    if stem in NETWORK_KINDS and suffix in NETWORK_SUFFIXES:
        return (kind_or_name,) + tuple(stem + s for s in NETWORK_SUFFIXES if s != suffix), False
    if suffix:
        return (kind_or_name,), False
    known = ", ".join(list(NETWORK_KINDS) + list(DETECTOR_FILES) + list(IDENTITY_FILES) + list(PARSING_FILES))
    raise InputError(f"unknown model {kind_or_name!r}: give a network kind or detector ({known}) or a file name")


def _as_dirs(dirs: PathLike | Iterable[PathLike] | None) -> list[Path]:
    if dirs is None:
        return [resolve_models_dir()]
    if isinstance(dirs, (str, os.PathLike)):
        return [_expand(dirs)]
    return [_expand(d) for d in dirs]


def find_model_file(kind_or_name: str, dirs: PathLike | Iterable[PathLike] | None = None, *,
                    detector_dir: PathLike | None = None) -> Path:
    """The first existing file for ``kind_or_name`` (see :func:`model_file_candidates`) in ``dirs``.

    ``dirs`` defaults to :func:`resolve_models_dir`. Detector files are looked for in ``detector_dir``
    first (when given), then in ``dirs``. Within one folder a converted ``.safetensors`` wins over the
    official ``.pt``. Raises :class:`ModelNotFoundError` naming the files, every folder searched and
    the ``vspbfr download`` command that fetches them.
    """
    names, is_detector = model_file_candidates(kind_or_name)
    search = _as_dirs(dirs)
    if is_detector and detector_dir is not None:
        search = [_expand(detector_dir)] + search
    seen: list[Path] = []
    for folder in search:
        if folder in seen:
            continue
        seen.append(folder)
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    raise ModelNotFoundError(_not_found_message(kind_or_name, names, is_detector, seen))


def choose_detector(choice: str, dirs: PathLike | Iterable[PathLike] | None = None, *,
                    detector_dir: PathLike | None = None) -> str:
    """facexlib's name of the detector to use for ``choice`` (``auto``, ``resnet50``, ``retinaface_mobile0.25``...).

    An explicit choice is returned as is (canonical name; a missing file is then the loader's clear error).
    ``auto`` picks the first of :data:`DETECTOR_PREFERENCE` whose file is in ``detector_dir`` or ``dirs`` (the
    same search as :func:`find_model_file`), so a folder with only the 1.8 MB mobile0.25 file just works; with
    neither file it answers resnet50, whose missing-file error then names both files.
    """
    names = {short: long for long, short in DETECTOR_ALIASES.items()}
    if choice.strip().lower() != DETECTOR_AUTO:
        key = _detector_key(choice.strip())
        if key is None:
            raise InputError(f"unknown face detector {choice!r}: use {DETECTOR_AUTO}, "
                             f"{', '.join(DETECTOR_PREFERENCE)} or {', '.join(DETECTOR_ALIASES)}")
        return names[key]
    for key in DETECTOR_PREFERENCE:
        try:
            find_model_file(key, dirs, detector_dir=detector_dir)
        except ModelNotFoundError:
            continue
        return names[key]
    return names[DETECTOR_PREFERENCE[0]]


def _not_found_message(kind_or_name: str, names: tuple[str, ...], is_detector: bool, searched: list[Path]) -> str:
    where = "; ".join(f"{d}{'' if d.is_dir() else ' (folder does not exist)'}" for d in searched) or "(no folder)"
    target = searched[0] if searched else resolve_models_dir()
    if is_detector:
        det = _detector_key(kind_or_name) or DETECTOR_PREFERENCE[0]
        command = download_command(target, det, only_detector=True)
        other = [k for k in DETECTOR_PREFERENCE if k != det]
        also = (f" (the other RetinaFace file, {DETECTOR_FILES[other[0]]}, works too: choose detector "
                f"{other[0]} or {DETECTOR_AUTO})") if other else ""
    elif _identity_key(kind_or_name) is not None:
        command = identity_download_command(target)
        also = (" (the identity network, optional: only identity scores, best-of-N candidates and reference photos "
                "need it)")
    elif _parsing_key(kind_or_name) is not None:
        parser = _parsing_key(kind_or_name)
        command = parsing_download_command(target, parser)
        also = (f" (the {parser} face-parsing network, optional: only the 'parsing' paste mask needs it)")
    else:
        command = download_command(target)
        also = ""
    return (f"model file not found: {' or '.join(names)} (for {kind_or_name!r}){also}. Looked in: {where}. "
            f"Download it with `{command}`, or put the file in one of those folders by hand; choose another "
            f"models folder with {_hints.choose_folder}.")

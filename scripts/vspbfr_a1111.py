"""VSPBFR in AUTOMATIC1111's stable-diffusion-webui (1.8-1.10) and its forks Forge and reForge.

A1111 executes this file (the only one it loads from the extension) once at start and again on every
"Reload UI", as a module named ``vspbfr_a1111.py`` with the extension folder on ``sys.path`` only while
the file runs. Running it:

1. registers the face restorer "VSPBFR" in ``shared.face_restorers`` (replacing, and releasing the weights
   of, an instance left by an earlier run): Settings > Face restoration, "Restore faces" in txt2img/img2img,
   ``/sdapi/v1/face-restorers`` and extensions that look restorers up by name (ReActor, ADetailer) use it.
   It detects, selects, aligns, restores and pastes faces with ``vspbfr_core`` (not facexlib);
2. adds the ``vspbfr_*`` settings to Settings > Face restoration (settable per request through
   ``override_settings``);
3. defines the Extras (postprocessing) script "VSPBFR", ordered after CodeFormer;
4. defines an always-on txt2img/img2img script without UI that writes the VSPBFR settings and the seed
   actually used into the generation infotext (and, with best-of-N on, each image's identity scores);
5. adds ``POST /vspbfr/v1/restore`` and ``GET /vspbfr/v1/status`` to the server when it starts.

Identity features (``vspbfr_core.identity``) are on when the ``vspbfr_candidates`` setting is above 1 (best-of-N),
or when a request to our route gives reference photos or names an identity model; then the identity model of the
``vspbfr_identity`` setting (ArcFace, ``recognition_arcface_ir_se50.pth`` in ``models/VSPBFR``, or dlib from its
optional packages) is loaded once, kept next to the networks, and reloaded when that setting changes. Otherwise
the restoration is the plain one, byte for byte, and no identity model is loaded.

Model files are looked for in ``models/VSPBFR`` (or the folder of the "VSPBFR models folder" setting);
the face detector also in ``models/GFPGAN``, where A1111 keeps facexlib's copy. Nothing is downloaded:
a missing file is reported at start (console, Settings, Extras) and every restore attempt raises an
error that names the folder and the download command.

Host modules are imported as modules (``from modules import scripts_postprocessing``), never base
classes by name: A1111 registers every Script class it finds in this namespace, base classes included.
No ``@dataclass`` here: this module is not in ``sys.modules``, and ``dataclasses`` looks it up there.
torch and the networks load on first use.
"""
from __future__ import annotations

import base64
import html
import importlib
import importlib.util
import io
import logging
import os
import random
import sys
import threading
from contextlib import nullcontext
from typing import Any, NamedTuple

import vspbfr_core  # noqa: F401  (import now: the extension folder is on sys.path only while this file runs)
from vspbfr_core import paths as core_paths
from vspbfr_core.face import DEFAULT_MASK_SHAPE, MASK_SHAPES
from vspbfr_core.errors import InputError, ModelNotFoundError, VSPBFRError

from modules import devices, face_restoration, script_callbacks, scripts, scripts_postprocessing, shared

try:                                    # A1111 1.8.0+, Forge, reForge
    from modules import face_restoration_utils
except ImportError:                     # A1111 < 1.8.0: only the plain base class exists
    face_restoration_utils = None

log = logging.getLogger("vspbfr.a1111")

NAME = "VSPBFR"                         # stored in users' settings and infotexts: never change it
MODELS_SUBDIR = "VSPBFR"                # <models_path>/VSPBFR
ROUTE_RESTORE = "/vspbfr/v1/restore"
ROUTE_STATUS = "/vspbfr/v1/status"
SETTINGS_SECTION = ("face-restoration", "Face restoration")
SETTINGS_CATEGORY = "postprocessing"
MODELS_PATH_KEY = "vspbfr_models_path"
STATUS_KEY = "vspbfr_status"
EXTRAS_ORDER = 3100                     # after Upscale (1000), GFPGAN (2000) and CodeFormer (3000)
SEED_MAX = 2**32 - 1
EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#----------------------------------------------------------------------------
# Options: one table drives the settings, the Extras controls, the API fields, validation and infotext.


class OptionSpec(NamedTuple):
    """One restore option: ``field`` is its RestoreOptions field, Extras control, API key and keyword."""

    field: str
    default: Any
    label: str
    kind: str                                   # "int" | "float" | "choice" | "text" | "bool"
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    infotext: str = ""                          # infotext key; also maps pasted infotext back to the setting
    help: str = ""

    @property
    def key(self) -> str:
        return "vspbfr_" + self.field


DETECTOR_AUTO = core_paths.DETECTOR_AUTO       # the RetinaFace file that is there (resnet50 first)
EMBEDDERS = ("arcface", "dlib")                 # vspbfr_core.identity.EMBEDDERS (that module imports torch)
ARCFACE_FILE = core_paths.IDENTITY_FILES["arcface"]
MAX_CANDIDATES = 64                             # vspbfr_core.pipeline.MAX_CANDIDATES
DETECTORS = (DETECTOR_AUTO, "retinaface_resnet50", "retinaface_mobile0.25")
DETECTOR_FROM_SETTINGS = "from settings"        # Extras choice: use the vspbfr_detector setting
ORDERS = ("left-right", "top-bottom", "area", "score")

SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("seed", 0, "VSPBFR seed", "int", -1, SEED_MAX, 1, infotext="VSPBFR seed",
               help="-1 = a new random seed per job; the seed used is written to the infotext"),
    OptionSpec("prompt_mix", 1.0, "VSPBFR style prompt mix (1 = official, lower = closer to the input)", "float",
               0.0, 1.0, 0.01,
               infotext="VSPBFR prompt mix",
               help="1 = diffused visual style prompt (official); 0 = the encoder's code, closer to the input face"),
    OptionSpec("bank_scale", 1.0, "VSPBFR feature bank strength (1 = official, lower = closer to the input)",
               "float", 0.0, 2.0, 0.05,
               infotext="VSPBFR bank scale",
               help="1 = official; lower takes less generated detail from the StyleGAN feature bank"),
    OptionSpec("visibility", 1.0, "VSPBFR visibility", "float", 0.0, 1.0, 0.01, infotext="VSPBFR visibility",
               help="1 = restored face; 0 = original face"),
    OptionSpec("selection", "all", "VSPBFR faces to restore", "text", infotext="VSPBFR selection",
               help="all, largest, center, or face numbers in the chosen order such as 0,2"),
    OptionSpec("order", "left-right", "VSPBFR face order", "choice", choices=ORDERS, infotext="VSPBFR order",
               help="how faces are numbered for the selection"),
    OptionSpec("max_faces", 0, "VSPBFR maximum faces per image", "int", 0, 64, 1, infotext="VSPBFR max faces",
               help="the largest ones; 0 = no limit"),
    OptionSpec("min_size", 0.0, "VSPBFR minimum face size (pixels)", "float", 0.0, 2048.0, 1.0,
               infotext="VSPBFR min size", help="smaller faces are left alone; 0 = no limit"),
    OptionSpec("threshold", 0.97, "VSPBFR detection confidence", "float", 0.3, 1.0, 0.01,
               infotext="VSPBFR threshold", help="lower finds more (and more false) faces"),
    OptionSpec("color_correction", "none", "VSPBFR color correction", "choice", choices=("none", "meanstd", "wavelet"),
               infotext="VSPBFR color correction", help="match the restored face's colours to the original"),
    OptionSpec("mask_shape", DEFAULT_MASK_SHAPE, "VSPBFR paste mask", "choice", choices=MASK_SHAPES,
               infotext="VSPBFR mask",
               help="square: the whole crop; ellipse: the face oval; landmarks: a face shape from the five landmarks "
                    "(keeps hair and background, no weights); parsing: only the face parts, by a face-parsing network "
                    "(parsing_parsenet.pth in models/VSPBFR or models/GFPGAN)"),
    OptionSpec("mask_parts", "all", "VSPBFR parsing mask: face parts", "text", infotext="VSPBFR mask parts",
               help="paste mask 'parsing' only: comma-separated from skin, brows, eyes, glasses, ears, nose, mouth, "
                    "lips (all: every one; leave out glasses to keep the original glasses)"),
    OptionSpec("keep_gray", True, "VSPBFR keep grayscale faces gray", "bool", infotext="VSPBFR keep gray",
               help="a face whose R, G and B are equal (a black-and-white photo) comes back gray; off: the colours "
                    "the network invents"),
    OptionSpec("detector", DETECTOR_AUTO, "VSPBFR face detector", "choice", choices=DETECTORS,
               infotext="VSPBFR detector",
               help="auto = the RetinaFace file that is there (detection_Resnet50_Final.pth first, else "
                    "detection_mobilenet0.25_Final.pth); the one used is written to the infotext"),
    # identity (vspbfr_core.identity): on when candidates > 1, or when a request to our route gives reference
    # photos or names an identity model
    OptionSpec("candidates", 1, "VSPBFR candidates per face (best-of-N; 1 = off)", "int", 1, MAX_CANDIDATES, 1,
               infotext="VSPBFR candidates",
               help="restore each face N times and keep the one most like the input face (needs the identity "
                    "model); the identity scores are written to the infotext"),
    OptionSpec("identity", "arcface", "VSPBFR identity model", "choice", choices=EMBEDDERS,
               infotext="VSPBFR embedder",
               help=f"scores the candidates: arcface = {ARCFACE_FILE} in models/{MODELS_SUBDIR}; dlib = the Python "
                    "packages dlib-bin and face_recognition_models"),
)
SPEC_BY_FIELD = {s.field: s for s in SPECS}
INFOTEXT_ALWAYS = ("seed", "visibility", "prompt_mix", "bank_scale")   # recorded even at their defaults
INFOTEXT_IDENTITY = ("identity",)                                      # recorded only when identity is on

# Options of our route only (they need reference photos, which have no place in Settings); not settings.
API_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("only_matching", False, "restore only the faces that match the reference", "bool",
               infotext="VSPBFR only matching"),
    OptionSpec("match_threshold", None, "identity a face needs to match the reference", "float", -1.0, 1.0,
               infotext="VSPBFR match threshold"),
    OptionSpec("reference_mix", 0.0, "move the style prompt this far toward the reference", "float", 0.0, 1.0,
               infotext="VSPBFR reference mix"),
    OptionSpec("reference_layers", "middle", "W+ layers the reference mix moves", "text",
               infotext="VSPBFR reference layers"),
)
API_SPEC_BY_FIELD = {s.field: s for s in API_SPECS}
ANY_SPEC_BY_FIELD = {**SPEC_BY_FIELD, **API_SPEC_BY_FIELD}
MAX_REFERENCES = 16                     # reference photos per request
IDENTITY_INFOTEXT_KEYS = ("VSPBFR identity", "VSPBFR matched")        # per image, see RunInfo.identity_infotext


def coerce(spec: OptionSpec, value: Any) -> Any:
    """``value`` checked and converted for ``spec``; raises InputError naming the option."""
    name = spec.field
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):     # pasted infotext
            return value.strip().lower() == "true"
        raise InputError(f"{name}: expected true or false, got {value!r}")
    if spec.kind in ("int", "float"):
        if isinstance(value, bool) or value is None:
            raise InputError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a number, got {value!r}") from None
        if spec.kind == "int":
            if not number.is_integer():
                raise InputError(f"{name}: expected a whole number, got {value!r}")
            number = int(number)
        if not spec.minimum <= number <= spec.maximum:
            raise InputError(f"{name}: {value!r} is outside [{spec.minimum:g}, {spec.maximum:g}]")
        return number
    if not isinstance(value, str):
        raise InputError(f"{name}: expected text, got {value!r}")
    text = value.strip()
    if spec.kind == "choice":
        if text.lower() not in spec.choices:
            raise InputError(f"{name}: {value!r} is not one of {', '.join(spec.choices)}")
        return text.lower()
    if spec.field == "selection":
        from vspbfr_core.face.detect import parse_selection

        parse_selection(text)            # raises InputError with the accepted forms
        return text.lower() or "all"
    if spec.field == "mask_parts":
        from vspbfr_core.face.parsing import parse_parts

        if text.lower() in ("", "all"):
            return "all"
        parse_parts(text)                # raises InputError naming the parts
        return text.lower()
    if spec.field == "reference_layers":
        from vspbfr_core.identity.select import parse_layers

        parse_layers(text)               # raises InputError with the accepted forms
        return text.lower()
    return text


def setting_value(spec: OptionSpec) -> Any:
    """The current setting (per-request overrides included), checked; the setting key is named on error."""
    value = getattr(shared.opts, spec.key, spec.default)
    try:
        return coerce(spec, value)
    except InputError as exc:
        raise InputError(f"setting {spec.key} ({spec.label}): {exc}") from None


def random_seed() -> int:
    return random.SystemRandom().randrange(SEED_MAX)


class ResolvedOptions:
    """What one restore will use: every option value (seed resolved), the detector, and whether the identity
    features are on (``identity_on``; ``references``: how many reference photos the request gave)."""

    def __init__(self, values: dict[str, Any], identity_on: bool = False, references: int = 0):
        self.values = values
        self.identity_on = identity_on
        self.references = references

    @property
    def seed(self) -> int:
        return int(self.values["seed"])

    @property
    def detector(self) -> str:
        return self.values["detector"]

    @property
    def embedder(self) -> str:
        return self.values["identity"]

    def restore_options(self) -> Any:
        from vspbfr_core.pipeline import RestoreOptions

        v = self.values
        identity = {}
        if self.identity_on:                    # else every identity field keeps its default (the plain path)
            threshold = v["match_threshold"]
            identity = dict(candidates=int(v["candidates"]), only_matching=bool(v["only_matching"]),
                            match_threshold=None if threshold is None else float(threshold),
                            reference_mix=float(v["reference_mix"]), reference_layers=v["reference_layers"])
        return RestoreOptions(seed=int(v["seed"]), threshold=float(v["threshold"]), min_size=float(v["min_size"]),
                              max_faces=int(v["max_faces"]), selection=v["selection"], order=v["order"],
                              prompt_mix=float(v["prompt_mix"]), bank_scale=float(v["bank_scale"]),
                              visibility=float(v["visibility"]),
                              color_correction=None if v["color_correction"] == "none" else v["color_correction"],
                              mask_shape=v["mask_shape"], mask_parts=None if v["mask_parts"] == "all" else v["mask_parts"],
                              keep_gray=bool(v["keep_gray"]), **identity)

    def infotext(self) -> dict[str, Any]:
        """Infotext entries: seed, visibility and fidelity always, the other options when not at their default;
        with identity on also the identity model and the number of reference photos."""
        out: dict[str, Any] = {}
        for spec in SPECS + API_SPECS:
            value = self.values[spec.field]
            if spec.field in INFOTEXT_IDENTITY:
                if self.identity_on:
                    out[spec.infotext] = value
            elif spec.field in INFOTEXT_ALWAYS or value != spec.default:
                out[spec.infotext] = round(value, 3) if isinstance(value, float) else value
        if self.references:
            out["VSPBFR references"] = self.references
        return out


def resolve_options(overrides: dict[str, Any] | None = None, *, pinned_seed: int | None = None,
                    references: int = 0) -> ResolvedOptions:
    """Settings, then ``overrides`` (None values ignored); seed -1 becomes ``pinned_seed`` or a random seed.

    ``overrides`` may also hold the route-only options (:data:`API_SPECS`, default when absent). The identity
    features are on when ``candidates`` > 1, when ``references`` reference photos come with the request, or when
    ``overrides`` names the identity model (then the scores are reported even for one candidate).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(ANY_SPEC_BY_FIELD))
    if unknown:
        raise InputError(f"unknown VSPBFR option(s) {', '.join(unknown)}; known: {', '.join(ANY_SPEC_BY_FIELD)}")
    values = {}
    for spec in SPECS:
        values[spec.field] = coerce(spec, overrides[spec.field]) if spec.field in overrides else setting_value(spec)
    for spec in API_SPECS:
        values[spec.field] = coerce(spec, overrides[spec.field]) if spec.field in overrides else spec.default
    if values["seed"] == -1:
        values["seed"] = pinned_seed if pinned_seed is not None else random_seed()
    if not references:
        for field, what in (("only_matching", "restores only the faces that match reference photos"),
                            ("reference_mix", "moves the faces toward reference photos")):
            if values[field] != API_SPEC_BY_FIELD[field].default:
                raise InputError(f"{field}: {what}; give them in 'reference' (a base64 image or a list of them)")
    identity_on = values["candidates"] > 1 or references > 0 or "identity" in overrides
    return ResolvedOptions(values, identity_on, references)


#----------------------------------------------------------------------------
# Where the files are


def default_models_dir() -> str:
    from modules import paths

    base = getattr(paths, "models_path", None) or getattr(shared, "models_path", None)
    return os.path.join(base or os.path.join(os.getcwd(), "models"), MODELS_SUBDIR)


def gfpgan_models_dir() -> str:
    custom = getattr(shared.cmd_opts, "gfpgan_models_path", None)
    return custom or os.path.join(os.path.dirname(default_models_dir()), "GFPGAN")


def host_name() -> str:
    """"A1111", "Forge" or "reForge": which webui runs us, for messages that name its folders.

    Forge and reForge both ship ``modules_forge``; reForge is told apart by its checkout (the git remote or the
    folder name says reForge).
    """
    if importlib.util.find_spec("modules_forge") is None:
        return "A1111"
    try:
        from modules import paths
        root = str(getattr(paths, "script_path", "") or os.getcwd())
    except ImportError:
        root = os.getcwd()
    marks = os.path.basename(os.path.normpath(root)).lower()
    try:
        with open(os.path.join(root, ".git", "config"), encoding="utf-8", errors="replace") as f:
            marks += f.read().lower()
    except OSError:
        pass
    return "reForge" if "reforge" in marks else "Forge"


def download_command(models_dir: str, detector: str | None = None, *, only_detector: bool = False) -> str:
    """The command that fetches the missing files, run with the webui's Python from the extension folder (the
    webui's venv has no ``vspbfr`` script on its PATH)."""
    cmd = f'cd "{EXTENSION_DIR}" && "{sys.executable}" -m vspbfr_core download --models "{models_dir}"'
    short = core_paths.DETECTOR_ALIASES.get(detector or "", detector or None)
    if only_detector:
        cmd += " --only detector"
    if short is not None:
        cmd += f" --detector {short}"
    return cmd


def _install_host_hints() -> None:
    """Messages of vspbfr_core (e.g. a missing file named by the loader) give this webui's command and setting."""
    core_paths.set_host_hints(core_paths.HostHints(
        download=lambda folder, detector, only: download_command(str(folder), detector, only_detector=only),
        choose_folder="Settings > Face restoration > 'VSPBFR models folder'",
        download_identity=lambda folder: (f'cd "{EXTENSION_DIR}" && "{sys.executable}" -m vspbfr_core download '
                                          f'--models "{folder}" --only identity')))


#----------------------------------------------------------------------------
# The face restorer

_CommonBase = getattr(face_restoration_utils, "CommonFaceRestoration", None)
_RestorerBase: type = _CommonBase or face_restoration.FaceRestoration


class RestoreInterrupted(VSPBFRError):
    """The user pressed Interrupt / Skip during an Extras or API restore."""


class RunInfo:
    """What one restore did: faces restored, the options (and seed) used, the detections as JSON and, with the
    identity features on, the identity record of each face (``identity``: ``vspbfr_core.identity.FaceIdentity``
    per detected face; ``report``: the per-face rows of ``vspbfr_core.identity.face_report``)."""

    def __init__(self, faces: int, options: ResolvedOptions, detections: list[dict[str, Any]] | None = None,
                 identity: list[Any] | None = None, report: list[dict[str, Any]] | None = None):
        self.faces = faces
        self.options = options
        self.detections = detections or []
        self.identity = identity
        self.report = report

    @property
    def seed(self) -> int:
        return self.options.seed

    def scores(self) -> list[float]:
        """Per face: the identity of the face as output to the target the candidates were chosen by (the
        reference photos when given, else the face's input)."""
        use_reference = self.options.references > 0
        out = []
        for face in self.identity or []:
            value = face.identity_reference if use_reference else face.identity_input
            out.append(float("nan") if value is None else float(value))
        return out

    def identity_infotext(self) -> dict[str, Any]:
        """The per-image identity entries: ``VSPBFR identity`` (one score per face, space-separated: infotext
        values must not hold commas) and, with ``only_matching``, ``VSPBFR matched`` (restored / found)."""
        if self.identity is None or not self.identity:
            return {}
        out: dict[str, Any] = {"VSPBFR identity": " ".join(f"{v:.3f}" for v in self.scores())}
        if self.options.values.get("only_matching"):
            out["VSPBFR matched"] = f"{sum(1 for f in self.identity if f.restored)}/{len(self.identity)}"
        return out

    def infotext(self) -> dict[str, Any]:
        return {**self.options.infotext(), "VSPBFR faces": self.faces, **self.identity_infotext()}


class VSPBFRFaceRestorer(_RestorerBase):  # type: ignore[misc, valid-type]
    """The "VSPBFR" entry of ``shared.face_restorers``.

    ``restore(np_image)`` takes and returns uint8 RGB ``(H, W, 3)`` (grayscale and RGBA are accepted too and
    keep their layout) and reads its options from the ``vspbfr_*`` settings; keyword arguments named like
    the option fields override them. ``net`` holds the loaded :class:`vspbfr_core.VSPBFRPipeline`.
    """

    def __init__(self, model_path: str):
        if _CommonBase is not None:
            super().__init__(model_path)                  # net = None, model_path, creates the folder
        else:
            super().__init__()
            self.net = None
            self.model_path = model_path
            os.makedirs(model_path, exist_ok=True)
        self.cmd_dir = model_path                         # shown by /sdapi/v1/face-restorers
        self.pinned_seed: int | None = None               # set for one generation job when the seed setting is -1
        self.last_run: RunInfo | None = None
        self.job_runs: list[RunInfo] | None = None         # a txt2img/img2img job: its restores, for the infotext
        self._net_key: tuple[str, str] | None = None      # (models folder, detector) of the loaded net
        self.embedder: Any = None                          # the loaded identity model (vspbfr_core.identity)
        self._embedder_key: tuple[str, str] | None = None  # (name, models folder) of the loaded identity model
        self._lock = threading.RLock()

    def name(self) -> str:
        return NAME

    # -- where and what ----------------------------------------------------------------------------

    def models_dir(self) -> str:
        custom = str(getattr(shared.opts, MODELS_PATH_KEY, "") or "").strip()
        return os.path.expanduser(custom) if custom else self.model_path

    def get_device(self) -> Any:
        return devices.get_device_for("vspbfr")           # honours --use-cpu vspbfr / all on A1111

    def _detector_dirs(self) -> list[str]:
        return [self.models_dir(), gfpgan_models_dir()]

    def _detector_file(self, detector: str) -> Any:
        return core_paths.find_model_file(detector, self._detector_dirs())

    def resolve_detector(self, choice: str | None = None) -> str:
        """The detector to use for ``choice`` (default: the setting): ``auto`` becomes the file that is there."""
        choice = choice or setting_value(SPEC_BY_FIELD["detector"])
        return core_paths.choose_detector(choice, self._detector_dirs())

    def missing_files(self, detector: str | None = None) -> list[str]:
        """Names of the model files that are not where they are looked for (no torch import)."""
        detector = self.resolve_detector(detector)
        missing = []
        for kind in core_paths.NETWORK_KINDS:
            try:
                core_paths.find_model_file(kind, [self.models_dir()])
            except ModelNotFoundError:
                missing.append(f"{kind}.pt (or .safetensors)")
        try:
            self._detector_file(detector)
        except ModelNotFoundError:
            missing.append(core_paths.DETECTOR_FILES[core_paths.DETECTOR_ALIASES[detector]])
        return missing

    def missing_weights_message(self, missing: list[str], detector: str | None = None) -> str:
        folder = self.models_dir()
        choice = detector or setting_value(SPEC_BY_FIELD["detector"])
        detector = self.resolve_detector(choice)
        only_detector = all(name.startswith("detection_") for name in missing)
        where = (f"{host_name()}'s models/{MODELS_SUBDIR} folder" if folder == self.model_path
                 else "the 'VSPBFR models folder' setting")
        either = ""
        if only_detector and choice == DETECTOR_AUTO:
            either = " (or detection_mobilenet0.25_Final.pth: the face detector setting 'auto' uses either)"
        return (f"VSPBFR: model weights missing: {', '.join(missing)}{either} not found in {folder} ({where}). "
                f"Download them with: {download_command(folder, detector, only_detector=only_detector)} "
                f"- or copy the files into that folder by hand (the detector may also be in {gfpgan_models_dir()}). "
                "Nothing is downloaded automatically; faces are not restored until the files are there.")

    # -- the identity model ------------------------------------------------------------------------

    def identity_missing(self, embedder: str | None = None, reason: str = "identity scoring") -> str | None:
        """Why identity model ``embedder`` (default: the setting) cannot load, or None (no torch import)."""
        name = embedder or setting_value(SPEC_BY_FIELD["identity"])
        if name == "arcface":
            try:
                core_paths.find_model_file("arcface", [self.models_dir()])
            except ModelNotFoundError as exc:
                return arcface_missing_message(reason, str(exc))
            return None
        missing = [m for m in ("dlib", "face_recognition_models") if importlib.util.find_spec(m) is None]
        if missing:
            return dlib_missing_message(reason, f"the Python package(s) {', '.join(missing)} are not installed.")
        return None

    def _identity_model(self, options: ResolvedOptions) -> Any:
        """The identity model of ``options`` on the restorer's device, loaded once and kept while the identity
        model and models folder settings stay the same (a change loads the new one on the next restore)."""
        name = options.embedder
        key = (name, self.models_dir() if name == "arcface" else "")
        if self.embedder is not None and self._embedder_key == key:
            return self.embedder
        from vspbfr_core.identity import MissingPackageError, load_embedder

        self.embedder, self._embedder_key = None, None
        reason = identity_reason(options)
        device = self.get_device()
        try:
            with host_model_load_lock():
                embedder = load_embedder(name, dirs=[self.models_dir()], device=device)
        except ModelNotFoundError as exc:
            message = arcface_missing_message(reason, str(exc))
            log.error("%s", message)
            raise ModelNotFoundError(message) from None
        except MissingPackageError as exc:
            message = dlib_missing_message(reason, str(exc))
            log.error("%s", message)
            raise MissingPackageError(message) from None
        log.info("VSPBFR: loaded the identity model %s on %s", name, device)
        self.embedder, self._embedder_key = embedder, key
        return embedder

    # -- loading and placement ---------------------------------------------------------------------

    def load_net(self) -> Any:
        """The pipeline for the current models folder and detector setting (what CommonFaceRestoration expects)."""
        return self._pipeline(self.resolve_detector())

    def _pipeline(self, detector: str) -> Any:
        """The loaded networks with detector ``detector`` (a concrete name, see :meth:`resolve_detector`)."""
        key = (self.models_dir(), detector)
        if self.net is not None and self._net_key == key:
            return self.net
        missing = self.missing_files(detector)
        if missing:
            message = self.missing_weights_message(missing, detector)
            log.error("%s", message)
            raise ModelNotFoundError(message)
        from vspbfr_core.face import load_detector
        from vspbfr_core.pipeline import VSPBFRPipeline

        det_dir = str(self._detector_file(detector).parent)
        if self.net is not None and self._net_key is not None and self._net_key[0] == key[0]:
            log.info("VSPBFR: switching the face detector to %s", detector)
            with host_model_load_lock():
                self.net.detector = load_detector(detector, [det_dir]).eval()
        else:
            self.release()
            log.info("VSPBFR: loading the networks from %s (detector %s)", key[0], detector)
            low_memory = bool(getattr(shared.cmd_opts, "lowvram", False) or getattr(shared.cmd_opts, "medvram", False))
            # vspbfr_core reads checkpoints with torch.serialization.load and its own data-only allow-list,
            # so the webui's torch.load replacement (modules/safe.py) is neither needed nor in the way
            with host_model_load_lock():
                self.net = VSPBFRPipeline.from_dir(key[0], detector=detector, detector_dir=det_dir,
                                                   low_memory=low_memory)
        self._net_key = key
        return self.net

    def _ensure_parser(self, pipeline: Any) -> None:
        """The face-parsing network of the 'parsing' paste mask, from models/VSPBFR or models/GFPGAN (where A1111's
        own face restorers keep facexlib's parsing_parsenet.pth), loaded once onto the pipeline."""
        if pipeline.parser is not None:
            return
        from vspbfr_core.face.parsing import find_parser_file

        path = find_parser_file("parsenet", self._detector_dirs())      # names the file, folders and command
        with host_model_load_lock():
            pipeline.load_parser("parsenet", file=path)

    def send_model_to(self, device: Any) -> None:
        """Move the loaded networks (the base class would also touch facexlib's helper, which we never build)."""
        import torch

        if self.net is not None:
            self.net.to(device, torch.float32)
        if self.embedder is not None:
            self.embedder.to(device)

    def release(self) -> None:
        """Drop the loaded networks (UI reload, extension unloaded)."""
        with self._lock:
            if self.net is not None or self.embedder is not None:
                self.net = None
                self._net_key = None
                self.embedder = None
                self._embedder_key = None
                devices.torch_gc()

    # -- restoring ---------------------------------------------------------------------------------

    def restore(self, np_image: Any, **overrides: Any) -> Any:
        """uint8 RGB ``(H, W, 3)`` in, the same size and layout out; faces restored per the ``vspbfr_*`` settings."""
        image, _ = self.restore_with_info(np_image, **overrides)
        return image

    def restore_with_info(self, np_image: Any, *, interruptible: bool = False, reference: Any = None,
                          **overrides: Any) -> tuple[Any, RunInfo]:
        """:meth:`restore` that also tells what was done; ``interruptible`` honours Interrupt/Skip (Extras, API).

        ``reference``: photos of the person to restore (uint8 RGB numpy images, one or a list): turns the
        identity features on (best-of-N chooses by them; ``only_matching`` and ``reference_mix`` need them).
        """
        import numpy as np

        if not isinstance(np_image, np.ndarray) or np_image.dtype != np.uint8:
            raise InputError(f"VSPBFR restore: expected a uint8 numpy image (H, W, 3), got "
                             f"{type(np_image).__name__} {getattr(np_image, 'dtype', '')}")
        if np_image.ndim not in (2, 3) or (np_image.ndim == 3 and np_image.shape[2] not in (1, 3, 4)):
            raise InputError(f"VSPBFR restore: expected (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray, got shape "
                             f"{np_image.shape}")
        references = check_references(reference)
        options = resolve_options(overrides, pinned_seed=self.pinned_seed, references=len(references))
        options.values["detector"] = self.resolve_detector(options.detector)    # the infotext names the one used
        if options.values["visibility"] == 0.0:
            run = RunInfo(0, options)
            self._record(run)
            return np_image.copy(), run
        with self._lock:
            pipeline = self._pipeline(options.detector)
            if options.values["mask_shape"] == "parsing":
                self._ensure_parser(pipeline)
            embedder = self._identity_model(options) if options.identity_on else None
            try:
                result = self._run(pipeline, np_image, options, interruptible, embedder, references)
            finally:
                if getattr(shared.opts, "face_restoration_unload", False):
                    self.send_model_to(devices.cpu)
                    devices.torch_gc()
        out = (result.images[0] * 255.0).round().clamp(0, 255).byte().numpy().reshape(np_image.shape)
        detections = result.detections.to_json() if result.detections is not None else []
        if result.identity is None:
            run = RunInfo(result.faces_found, options, detections)
        else:
            from vspbfr_core.identity import face_report

            run = RunInfo(sum(1 for face in result.identity if face.restored), options, detections, result.identity,
                          face_report(result.detections, result.identity, options.values["candidates"]))
        self._record(run)
        log.info("VSPBFR: restored %d face(s) (seed %d, face detector %s)", run.faces, run.seed, options.detector)
        if run.identity is not None:
            log.info("VSPBFR: identity (%s, %d candidate(s)): %s", options.embedder, options.values["candidates"],
                     run.identity_infotext().get("VSPBFR identity", "no faces"))
        return out, run

    def _record(self, run: RunInfo) -> None:
        self.last_run = run
        if self.job_runs is not None:
            self.job_runs.append(run)

    def _run(self, pipeline: Any, np_image: Any, options: ResolvedOptions, interruptible: bool,
             embedder: Any = None, references: list[Any] | tuple[Any, ...] = ()) -> Any:
        import numpy as np
        import torch

        def as_image(array: Any) -> Any:
            image = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True)).to(torch.float32).div_(255.0)
            return image[..., None] if image.dim() == 2 else image

        prepare_host_memory()
        self.send_model_to(self.get_device())
        image = as_image(np_image)
        callback = progress_callback(interruptible)
        if embedder is None:                    # the plain restoration, exactly as without identity features
            return pipeline(image[None], options.restore_options(), callback=callback)
        reference = None
        if references:
            names = [f"reference {i + 1}" for i in range(len(references))]
            reference = pipeline.make_reference([as_image(r)[None] for r in references], embedder, names=names)
        return pipeline(image[None], options.restore_options(), callback=callback, embedder=embedder,
                        reference=reference)


def check_references(reference: Any) -> list[Any]:
    """``reference`` (None, one uint8 numpy image or a list of them) as a list; InputError when malformed."""
    import numpy as np

    if reference is None:
        return []
    photos = [reference] if isinstance(reference, np.ndarray) else reference
    if not isinstance(photos, (list, tuple)) or not photos:
        raise InputError("reference: expected a photo (uint8 numpy image) or a non-empty list of photos")
    if len(photos) > MAX_REFERENCES:
        raise InputError(f"reference: {len(photos)} photos given; at most {MAX_REFERENCES}")
    for i, photo in enumerate(photos):
        if not isinstance(photo, np.ndarray) or photo.dtype != np.uint8 or photo.ndim not in (2, 3) or \
                (photo.ndim == 3 and photo.shape[2] not in (1, 3, 4)):
            raise InputError(f"reference {i + 1}: expected a uint8 numpy image (H, W, 3), got "
                             f"{type(photo).__name__} {getattr(photo, 'dtype', '')} {getattr(photo, 'shape', '')}")
    return list(photos)


def identity_reason(options: ResolvedOptions) -> str:
    """What asked for the identity model, for messages."""
    if options.values["candidates"] > 1:
        return f"best-of-N (candidates = {options.values['candidates']})"
    if options.references:
        return "a reference photo"
    return "identity scoring"


def arcface_missing_message(reason: str, detail: str) -> str:
    return (f"VSPBFR: {reason} needs the identity model arcface (setting vspbfr_identity): {detail} Or choose the "
            f"identity model dlib (Settings > Face restoration > 'VSPBFR identity model').")


def dlib_missing_message(reason: str, detail: str) -> str:
    return (f"VSPBFR: {reason} needs the identity model (vspbfr_identity = dlib): {detail} Install them into this "
            f"webui's Python with: \"{sys.executable}\" -m pip install dlib-bin face_recognition_models "
            f"(then restart the webui), or choose the identity model arcface.")


def host_model_load_lock() -> Any:
    """A1111's lock around its first checkpoint load, which runs in a background thread at start.

    While it loads, A1111 replaces ``torch.nn.Module.load_state_dict`` for every thread (with a version that
    does not take ``assign=``, which our loader uses); loading our networks at that moment fails. Other
    checkpoint loads happen under the queue lock, which generation, Extras and our route hold already.
    """
    module = sys.modules.get("modules.sd_models")
    lock = getattr(getattr(module, "model_data", None), "lock", None)
    return lock if lock is not None and hasattr(lock, "__enter__") else nullcontext()


def prepare_host_memory() -> None:
    """Forge and reForge: let their memory manager make room before a restorer runs (as their restorers do)."""
    for module_name in ("modules_forge.utils", "modules_forge.forge_util"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        free = getattr(module, "prepare_free_memory", None)
        if callable(free):
            free()
            return


def progress_callback(interruptible: bool) -> Any:
    """Report stages in the webui's status text; raise RestoreInterrupted on Interrupt/Skip when allowed."""
    state = shared.state

    def callback(done: int, total: int, stage: str) -> None:
        if state is None:
            return
        state.textinfo = f"VSPBFR: {stage} ({done}/{total})"
        if interruptible and (getattr(state, "interrupted", False) or getattr(state, "skipped", False)):
            raise RestoreInterrupted("VSPBFR: interrupted")

    return callback


#----------------------------------------------------------------------------
# Registration (runs at every execution of this file)

_restorer: VSPBFRFaceRestorer | None = None


def _name_of(restorer: Any) -> str | None:
    try:
        return restorer.name()
    except Exception:               # a broken third-party entry must not stop our registration
        log.warning("VSPBFR: a face restorer in shared.face_restorers has no usable name()", exc_info=True)
        return None


def _retire(restorer: Any) -> None:
    """Free what an instance from an earlier execution of this file holds."""
    release = getattr(restorer, "release", None)
    if callable(release):
        release()
    elif hasattr(restorer, "net"):
        restorer.net = None


def register() -> VSPBFRFaceRestorer:
    """Put exactly one "VSPBFR" instance into ``shared.face_restorers`` (idempotent across UI reloads)."""
    global _restorer
    for old in [r for r in shared.face_restorers if _name_of(r) == NAME]:
        shared.face_restorers.remove(old)
        _retire(old)
    restorer = VSPBFRFaceRestorer(default_models_dir())
    shared.face_restorers.append(restorer)
    _restorer = restorer
    try:
        missing = restorer.missing_files()
    except InputError as exc:                               # e.g. an invalid detector in config.json
        log.warning("VSPBFR: %s", exc)
    else:
        if missing:
            log.warning("%s", restorer.missing_weights_message(missing))
    return restorer


def registered_restorer() -> VSPBFRFaceRestorer:
    if _restorer is None or _restorer not in shared.face_restorers:
        raise VSPBFRError("VSPBFR: the face restorer is not registered (see the console for the error at start)")
    return _restorer


def status(detector: str | None = None) -> dict[str, Any]:
    """Weights, folders and device, for the status route and the UI; computed now, never cached.

    ``detector`` is a choice (``auto`` or a name; default: the setting); ``detector`` in the answer is the one a
    restore would use, ``detector_choice`` the choice.
    """
    restorer = registered_restorer()
    choice = detector or setting_value(SPEC_BY_FIELD["detector"])   # InputError (a VSPBFRError) names a bad setting
    used = restorer.resolve_detector(choice)
    missing = restorer.missing_files(used)
    embedder = setting_value(SPEC_BY_FIELD["identity"])
    candidates = setting_value(SPEC_BY_FIELD["candidates"])
    reason = f"best-of-N (candidates = {candidates})" if candidates > 1 else "identity scoring"
    identity_problem = restorer.identity_missing(embedder, reason)
    return {"name": NAME, "version": vspbfr_core.__version__, "host": host_name(), "models_dir": restorer.models_dir(),
            "detector": used, "detector_choice": choice, "ready": not missing, "missing": missing,
            "message": restorer.missing_weights_message(missing, choice) if missing else "",
            "device": str(restorer.get_device()), "loaded": restorer.net is not None,
            "identity": {"model": embedder, "candidates": candidates,
                         "ready": identity_problem is None, "message": identity_problem or "",
                         "loaded": restorer.embedder is not None}}


def status_html(detector: str | None = None) -> str:
    """The "weights found / missing" note; gradio calls it at every page load (it is passed as the callable
    ``value`` of the HTML components), and the Extras controls call it again when asked."""
    try:
        info = status(None if detector in (None, DETECTOR_FROM_SETTINGS) else detector)
    except VSPBFRError as exc:
        return f"<p>{html.escape(str(exc))}</p>"
    identity = info["identity"]
    extra = ""
    if identity["candidates"] > 1 and not identity["ready"]:          # best-of-N is on but cannot run
        extra = f"<p><b>{html.escape(identity['message'])}</b></p>"
    if info["ready"]:
        how = " (auto)" if info["detector_choice"] == DETECTOR_AUTO else ""
        return (f"<p>VSPBFR weights found in {html.escape(info['models_dir'])}; face detector "
                f"{html.escape(info['detector'])}{how}.</p>{extra}")
    return f"<p><b>{html.escape(info['message'])}</b></p>{extra}"


#----------------------------------------------------------------------------
# Settings


def add_settings() -> None:
    """Our options in Settings > Face restoration; run at import (idempotent).

    At import rather than in ``on_ui_settings``: with ``--nowebui`` the API builds the model of
    ``GET /sdapi/v1/options`` before the settings callbacks run, so options added there would be missing from it.
    """
    import gradio as gr

    section = dict(section=SETTINGS_SECTION, category_id=SETTINGS_CATEGORY)
    shared.opts.add_option(MODELS_PATH_KEY, shared.OptionInfo(
        "", "VSPBFR models folder", gr.Textbox, **section).info(f"empty = {default_models_dir()}"))
    for spec in SPECS:
        if spec.field == "seed":
            component, args = gr.Number, {"precision": 0}
        elif spec.kind == "bool":
            component, args = gr.Checkbox, None
        elif spec.kind in ("int", "float"):
            component, args = gr.Slider, {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
        elif spec.kind == "choice":
            component, args = gr.Radio, {"choices": list(spec.choices)}
        else:
            component, args = gr.Textbox, None
        info = shared.OptionInfo(spec.default, spec.label, component, args, infotext=spec.infotext, **section)
        shared.opts.add_option(spec.key, info.info(spec.help) if spec.help else info)
    imported = sys.modules.get("modules.api.models")
    if imported is not None and getattr(imported, "OptionsModel", None) is not None:
        imported.OptionsModel = extend_options_model(imported.OptionsModel)


def _our_settings() -> dict[str, Any]:
    """key -> default of every setting we add (the models folder and one per option)."""
    return {MODELS_PATH_KEY: "", **{spec.key: spec.default for spec in SPECS}}


def extend_options_model(model: Any) -> Any:
    """``model`` (the pydantic model of ``GET /sdapi/v1/options``), with a field for each of our settings.

    The webui builds that model once, from the options known when ``modules.api.models`` is first imported, and
    FastAPI leaves every key outside it out of the answer. On Forge and reForge, or when an extension loaded
    before us imports ``modules.api`` (sd-webui-controlnet does), that is before our settings exist.
    Works with pydantic 1 and 2; returns ``model`` itself when nothing is missing.
    """
    from typing import Optional

    from pydantic import Field, create_model

    known = getattr(model, "model_fields", None)
    if known is None:
        known = getattr(model, "__fields__", {})
    labels = getattr(shared.opts, "data_labels", {})
    fields = {}
    for key, default in _our_settings().items():
        if key in known:
            continue
        label = getattr(labels.get(key), "label", key)
        fields[key] = (Optional[type(default)], Field(default=default, description=label))
    if not fields:
        return model
    return create_model(getattr(model, "__name__", "Options"), __base__=model, **fields)


def _fix_options_route(app: Any) -> None:
    """Rebuild ``GET /sdapi/v1/options`` with :func:`extend_options_model` when its model lacks our settings."""
    routes = app.router.routes
    for i, route in enumerate(list(routes)):
        model = getattr(route, "response_model", None)
        if getattr(route, "path", None) != "/sdapi/v1/options" or "GET" not in (getattr(route, "methods", None)
                                                                                 or ()) or model is None:
            continue
        extended = extend_options_model(model)
        if extended is model:
            return
        app.add_api_route(route.path, route.endpoint, methods=["GET"], response_model=extended)
        routes[i] = routes.pop()                        # same place in the routing order
        app.openapi_schema = None
        log.info("VSPBFR: added the vspbfr_* settings to GET /sdapi/v1/options")
        return


def _live_html(make: Any) -> Any:
    """A settings component factory that renders ``make``'s HTML with :func:`status_html` as its value: gradio
    evaluates a callable value at every page load, so the note follows files copied in and settings changed."""
    def component(**kwargs: Any) -> Any:
        kwargs["value"] = status_html
        return make(**kwargs)
    return component


def on_ui_settings() -> None:
    """When the settings page is built: a status line (weights found / missing) above our options."""
    option_html = getattr(shared, "OptionHTML", None)
    if option_html is None:
        return
    note = option_html(status_html())
    if callable(getattr(note, "component", None)):
        note.component = _live_html(note.component)
    note.section, note.category_id = SETTINGS_SECTION, SETTINGS_CATEGORY
    shared.opts.add_option(STATUS_KEY, note)
    if hasattr(shared.opts, "data_labels"):                 # keep the status line first in our section
        labels = shared.opts.data_labels
        ours = [k for k in labels if k.startswith("vspbfr_") and k != STATUS_KEY]
        for key in ours:
            labels[key] = labels.pop(key)


#----------------------------------------------------------------------------
# txt2img / img2img: the seed used and the options go into the infotext


class VSPBFRGenerationInfo(scripts.Script):
    """Always on, no UI: when "Restore faces" uses VSPBFR, fix the job's seed and record the options."""

    create_group = False

    def title(self) -> str:
        return "VSPBFR face restoration info"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        return []

    def process(self, p: Any, *args: Any) -> None:
        restorer = _restorer
        if restorer is None:
            return
        restorer.pinned_seed = None
        restorer.job_runs = None
        if not getattr(p, "restore_faces", False) or shared.opts.face_restoration_model != NAME:
            return
        options = resolve_options()                 # an invalid setting raises here and again at restore time
        options.values["detector"] = restorer.resolve_detector(options.detector)
        missing = restorer.missing_files(options.detector)
        if missing:
            log.error("%s", restorer.missing_weights_message(missing, options.detector))
            return
        if options.identity_on:
            problem = restorer.identity_missing(options.embedder, identity_reason(options))
            if problem:
                log.error("%s", problem)            # before sampling; the restore raises it again
        restorer.pinned_seed = options.seed
        restorer.job_runs = []
        p.extra_generation_params.update(options.infotext())

    def postprocess_image(self, p: Any, pp: Any, *args: Any) -> None:
        """After "Restore faces" ran on one image (before its infotext is written): that image's identity scores."""
        restorer = _restorer
        if restorer is None or restorer.job_runs is None:
            return
        runs, restorer.job_runs = restorer.job_runs, []
        entries = runs[-1].identity_infotext() if runs else {}
        for key in IDENTITY_INFOTEXT_KEYS:
            if key in entries:
                p.extra_generation_params[key] = entries[key]
            else:
                p.extra_generation_params.pop(key, None)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        if _restorer is not None:
            _restorer.pinned_seed = None
            _restorer.job_runs = None


#----------------------------------------------------------------------------
# Extras tab


class VSPBFRPostprocessing(scripts_postprocessing.ScriptPostprocessing):
    """Extras > VSPBFR: restore faces with per-run options; RGBA keeps its alpha."""

    name = NAME
    order = EXTRAS_ORDER

    def ui(self) -> dict[str, Any]:
        """Controls with fixed defaults (the webui saves and restores them in ui-config.json); the detector
        defaults to the "VSPBFR face detector" setting, because which detector is installed is a setting."""
        import gradio as gr
        from modules import ui_components

        suffix = getattr(self, "tab_name", "") or ""

        def eid(name: str) -> str:
            return f"extras_vspbfr_{name}{suffix}"

        def slider(f: str) -> Any:
            s = SPEC_BY_FIELD[f]
            return gr.Slider(minimum=s.minimum, maximum=s.maximum, step=s.step, value=s.default, label=s.label,
                             elem_id=eid(f))

        def dropdown(f: str, extra: tuple[str, ...] = ()) -> Any:
            s = SPEC_BY_FIELD[f]
            return gr.Dropdown(choices=list(extra + s.choices), value=(extra or (s.default,))[0], label=s.label,
                               elem_id=eid(f))

        controls: dict[str, Any] = {}
        with ui_components.InputAccordion(False, label=NAME, elem_id=eid("enable")) as enable:
            with gr.Row():
                # a callable value: gradio computes the note at every page load
                note = gr.HTML(status_html, elem_id=eid("status"))
                recheck = gr.Button("Check the model files again", size="sm", elem_id=eid("recheck"))
            with gr.Row():
                controls["visibility"] = slider("visibility")
                controls["prompt_mix"] = slider("prompt_mix")
                controls["bank_scale"] = slider("bank_scale")
            with gr.Row():
                controls["seed"] = gr.Number(value=SPEC_BY_FIELD["seed"].default, precision=0,
                                             label="VSPBFR seed (-1 = random)", elem_id=eid("seed"))
                controls["selection"] = gr.Textbox(value=SPEC_BY_FIELD["selection"].default,
                                                   label=SPEC_BY_FIELD["selection"].label, elem_id=eid("selection"))
                controls["order"] = dropdown("order")
            with gr.Row():
                controls["max_faces"] = slider("max_faces")
                controls["min_size"] = slider("min_size")
                controls["threshold"] = slider("threshold")
            with gr.Row():
                controls["color_correction"] = dropdown("color_correction")
                controls["mask_shape"] = dropdown("mask_shape")
                controls["mask_parts"] = gr.Textbox(value=SPEC_BY_FIELD["mask_parts"].default,
                                                    label=SPEC_BY_FIELD["mask_parts"].label, elem_id=eid("mask_parts"))
                controls["detector"] = dropdown("detector", (DETECTOR_FROM_SETTINGS,))
                controls["keep_gray"] = gr.Checkbox(value=SPEC_BY_FIELD["keep_gray"].default,
                                                    label=SPEC_BY_FIELD["keep_gray"].label, elem_id=eid("keep_gray"))
        # the note follows the detector chosen here, and files copied in while the page is open
        controls["detector"].change(fn=status_html, inputs=[controls["detector"]], outputs=[note])
        recheck.click(fn=status_html, inputs=[controls["detector"]], outputs=[note])
        return {"enable": enable, **controls}

    def process(self, pp: Any, enable: Any = None, **args: Any) -> None:
        # The extras API passes None for every control of third-party scripts: None means "not enabled".
        if not enable:
            return
        overrides = {k: v for k, v in args.items() if v is not None and v != DETECTOR_FROM_SETTINGS}
        if overrides.get("visibility") == 0:
            return
        import numpy as np
        from PIL import Image

        image = pp.image
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if image.mode in ("LA", "PA") or "transparency" in image.info else "RGB")
        try:
            out, run = registered_restorer().restore_with_info(np.array(image, dtype=np.uint8), interruptible=True,
                                                               **overrides)
        except RestoreInterrupted:
            pp.info["VSPBFR"] = "interrupted"
            return
        pp.image = Image.fromarray(out, mode=image.mode)
        pp.info.update(run.infotext())


#----------------------------------------------------------------------------
# HTTP routes


def _decode_image(data: Any, field: str = "image", keep_alpha: bool = True) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data:
        raise InputError(f"{field}: expected a base64-encoded PNG, JPEG or WebP string (a data: URL is accepted)")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=False)))
        image.load()
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{field}: not a readable base64-encoded image ({exc})") from None
    keep_alpha = keep_alpha and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info)
    return image.convert("RGBA" if keep_alpha else "RGB")


def _decode_references(data: Any) -> list[Any] | None:
    """The ``reference`` field: one base64 image or a list of them -> uint8 RGB numpy images (None: absent)."""
    import numpy as np

    if data is None:
        return None
    items = data if isinstance(data, list) else [data]
    if not items or (isinstance(data, list) and not all(isinstance(x, str) for x in items)):
        raise InputError("reference: expected a base64-encoded image or a non-empty list of them (photos of the "
                         "person whose faces to restore)")
    if len(items) > MAX_REFERENCES:
        raise InputError(f"reference: {len(items)} photos given; at most {MAX_REFERENCES}")
    label = (lambda i: "reference") if not isinstance(data, list) else (lambda i: f"reference {i + 1}")
    return [np.array(_decode_image(item, label(i), keep_alpha=False), dtype=np.uint8) for i, item in enumerate(items)]


def _encode_png(array: Any, mode: str) -> str:
    from PIL import Image

    with io.BytesIO() as buffer:
        Image.fromarray(array, mode=mode).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def api_restore(payload: Any) -> dict[str, Any]:
    """The body of ``POST /vspbfr/v1/restore``; raises fastapi's HTTPException with a clear ``detail``."""
    import numpy as np
    from fastapi.exceptions import HTTPException

    if not isinstance(payload, dict):
        raise HTTPException(status_code=422, detail="expected a JSON object with 'image' and optional VSPBFR options")
    try:
        unknown = sorted(set(payload) - {"image", "reference"} - set(ANY_SPEC_BY_FIELD))
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(unknown)}; accepted: image, reference, "
                             f"{', '.join(ANY_SPEC_BY_FIELD)}")
        image = _decode_image(payload.get("image"))
        references = _decode_references(payload.get("reference"))
        restorer = registered_restorer()
    except InputError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except VSPBFRError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    overrides = {k: v for k, v in payload.items() if k not in ("image", "reference")}
    from modules import call_queue
    from vspbfr_core.identity import MissingPackageError

    state = shared.state
    with getattr(call_queue, "queue_lock", None) or nullcontext():
        if state is not None and hasattr(state, "begin"):
            state.begin(job="VSPBFR")
        try:
            out, run = restorer.restore_with_info(np.array(image, dtype=np.uint8), interruptible=True,
                                                  reference=references, **overrides)
        except (ModelNotFoundError, MissingPackageError) as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        except InputError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except RestoreInterrupted as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except VSPBFRError as exc:
            raise HTTPException(status_code=500, detail=str(exc)) from None
        finally:
            if state is not None and hasattr(state, "end"):
                state.end()
    answer = {"image": _encode_png(out, image.mode), "faces": run.faces, "seed": run.seed, "info": run.infotext(),
              "detections": run.detections}
    if run.options.identity_on:
        from vspbfr_core.identity import identity_summary

        answer["identity"] = run.report or []
        answer["identity_summary"] = (identity_summary(run.identity) if run.identity is not None
                                      else "not computed (visibility 0: nothing restored)")
    return answer


def api_status() -> dict[str, Any]:
    from fastapi.exceptions import HTTPException

    try:
        return status()
    except VSPBFRError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


def on_app_started(demo: Any, app: Any) -> None:
    """Add our routes (replacing the ones of an earlier execution: the app lives across UI reloads)."""
    from fastapi import Body

    ours = (ROUTE_RESTORE, ROUTE_STATUS)
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in ours]
    app.openapi_schema = None
    _fix_options_route(app)

    def restore_route(payload: dict = Body(...)):  # noqa: B008  (FastAPI's idiom)
        return api_restore(payload)

    def status_route():
        return api_status()

    app.add_api_route(ROUTE_RESTORE, restore_route, methods=["POST"], tags=["VSPBFR"],
                      summary="Restore the faces of one image with VSPBFR",
                      description="Body: {image: base64, and optionally reference (base64 image or list), "
                                  + ", ".join(ANY_SPEC_BY_FIELD) + "}. Answer: {image: base64 PNG, faces, seed, "
                                  "info, detections, and with identity features on: identity (one row per face), "
                                  "identity_summary}.")
    app.add_api_route(ROUTE_STATUS, status_route, methods=["GET"], tags=["VSPBFR"],
                      summary="VSPBFR weights, folders and device")


def on_script_unloaded() -> None:
    """UI reload or extension disabled: leave the registry and free the weights (the next run re-registers)."""
    restorer = _restorer
    if restorer is not None:
        if restorer in shared.face_restorers:
            shared.face_restorers.remove(restorer)
        restorer.release()


_install_host_hints()
register()
add_settings()
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_script_unloaded(on_script_unloaded)

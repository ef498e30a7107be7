"""``vspbfr restore INPUT... -o OUT_DIR``: restore every chosen face of image files (and videos, see below).

Inputs are files, folders (searched recursively) or glob patterns.  Each result is written under the input's file
name (folder inputs keep their sub-folders) in the input's format; how files are read and written (formats, 16-bit
and float images, the 100-megapixel limit, animated files, safe temporary files) is described in
:mod:`vspbfr_core.imagefile`.

Collecting inputs:

* Folders and glob patterns contribute files ending in .png, .jpg, .jpeg, .webp, .bmp, .tif or .tiff (any case);
  GIF files are counted in a note (restore cannot write GIF).  A file named on the command line is tried whatever
  its extension.  The same file named twice is restored once.
* Every INPUT must name at least one image: a missing path, a folder without images or a pattern that matches
  none is an error before anything is loaded (exit status 1).
* A sub-folder that cannot be read, a broken symbolic link or a non-regular file (FIFO, device) with an image name
  is reported as ``FAILED`` and counted as a failed file: nothing is skipped silently.  Symbolic links to folders
  inside an input folder are not followed (noted in the log).  Glob patterns are expanded by Python's ``glob``.

Output folder (``-o``) and output names:

* ``-o ''`` is an error, and so is an OUT_DIR that is a file or that cannot be created.
* When OUT_DIR lies inside an input folder (or below the fixed part of a glob pattern), the files under OUT_DIR
  are not inputs: earlier results are never restored again.  OUT_DIR equal to an input folder is refused.
* Every planned output (result, ``compare/<stem>.png``, ``faces/<stem>_NN_before|after.png``) is checked before
  any model is loaded: when two inputs would write the same output (``a/x.png`` and ``b/x.png`` given
  separately; ``x.jpg`` and ``x.png`` with ``--compare`` or ``--save-faces``), or an output would replace an
  input file, the run is refused with a message naming both files.  While writing, a file this run already wrote
  or an input is never replaced (this also covers names that only a case-insensitive file system folds together),
  and nothing is written through a symbolic link that leads outside OUT_DIR.
* Output names are the input names; only a face-crop or comparison name that would exceed 255 bytes is shortened
  (its stem cut, plus ``~`` and 8 hex digits of a hash of the full stem).

A file that fails is reported on one line (``SRC: FAILED: reason``; ``-v`` adds the traceback) and the others go
on; the exit status is 1 when any file failed.

Video files (named, or matched by a glob pattern) and ``--sequence`` folders, with the temporal options: see
:mod:`vspbfr_core.commands.restore_video`.

Identity (``--candidates``, ``--identity``, ``--reference``, ``--only-matching``, ``--match-threshold``,
``--reference-mix``, ``--reference-layers``) and the JSON report (``--report``): see
:mod:`vspbfr_core.commands.restore_identity`.  Without them nothing of it loads or runs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..cli import number
from ..errors import InputError, VSPBFRError
from ..face import DEFAULT_MASK_SHAPE, MASK_SHAPES
from ..imagefile import fit_name
from .inputs import _inside, collect_inputs
from .options import add_detector_options, add_device_option, add_selection_options
from .restore_identity import add_identity_options, add_report_option
from .restore_video import add_video_options

MAX_THREADS = 4 * (os.cpu_count() or 1)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore the faces in image and video files",
                       description="Restore every chosen face of image files, video files and frame sequences and "
                                   "paste them back seamlessly.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders (of images; of frames with --sequence) or glob patterns")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output folder")
    add_model_arguments(p)
    add_restoration_arguments(p)
    p.add_argument("--mask", metavar="FILE", default=None,
                   help="an image the size of the inputs (of every frame for videos): where it is black nothing is "
                        "ever changed (a hand in front of a face, a logo), white may be restored, gray blends. Its "
                        "gray level is used, or its alpha channel when it has transparency")
    add_video_options(p.add_argument_group("video files and frame sequences (see the README, Video)"))
    o = p.add_argument_group("extra outputs")
    o.add_argument("--save-faces", action="store_true", help="also write the aligned crops before/after to OUT_DIR/faces")
    o.add_argument("--compare", action="store_true", help="also write a side-by-side image to OUT_DIR/compare")
    add_report_option(o)
    p.set_defaults(func=run)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The "models and device" options of ``restore`` (``vspbfr batch`` has the same)."""
    g = p.add_argument_group("models and device")
    g.add_argument("--models", metavar="DIR", default=None,
                   help="models folder (default: $VSPBFR_MODELS, else the per-user folder; see `vspbfr info`)")
    add_detector_options(g)
    add_device_option(g)
    g.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="network precision (auto: float32; the W+ diffusion always runs in float32)")
    g.add_argument("--chunk-size", metavar="N", type=number(int, low=1), default=4,
                   help="faces per network batch (halved on out-of-memory)")
    g.add_argument("--low-memory", action="store_true", help="keep only the running network on the device")
    g.add_argument("--threads", metavar="N", type=number(int, low=0, high=MAX_THREADS), default=0,
                   help="CPU threads for the networks (default 0: PyTorch's choice, one per physical core; "
                        "at most 4 per CPU core)")
    g.add_argument("--tf32", action="store_true",
                   help="CUDA float32: TF32 for the feature bank and restoration (faster, ~1e-3 less exact); "
                        "the encoder and W+ diffusion always run in full float32")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (slow first batch, faster after: for folders and video frames)")
    g.add_argument("--aligned", action="store_true",
                   help="inputs are already aligned square face crops: skip detection and paste-back")


def add_restoration_arguments(p: argparse.ArgumentParser) -> None:
    """The face selection, restoration and identity options of ``restore`` (``vspbfr batch`` has the same)."""
    add_selection_options(p.add_argument_group("face selection"))
    r = p.add_argument_group("restoration")
    r.add_argument("--seed", metavar="N", type=number(int), default=0,
                   help="noise seed (any integer); the same seed gives byte-identical files on the same device, "
                        "precision and --threads")
    r.add_argument("--prompt-mix", metavar="X", type=number(float, low=0, high=1), default=1.0,
                   help="fidelity: 1 uses the diffused style prompt (official), 0 the encoder's own W+ codes")
    r.add_argument("--bank-scale", metavar="X", type=number(float, low=0, high=4), default=1.0,
                   help="fidelity: scale of the StyleGAN feature-bank (generative prior) term in [0, 4]; "
                        "<1 follows the input more")
    r.add_argument("--visibility", metavar="X", type=number(float, low=0, high=1), default=1.0,
                   help="blend with the original face (0..1)")
    r.add_argument("--color-correction", choices=("none", "meanstd", "wavelet"), default="none",
                   help="match the restored face's colours to the original")
    r.add_argument("--mask-shape", choices=MASK_SHAPES, default=DEFAULT_MASK_SHAPE,
                   help="paste-back mask: square (the whole crop, soft sides), ellipse (the face oval), landmarks (a "
                        "face shape from the five landmarks: keeps the hair and background; no weights), parsing (a "
                        "face-parsing network: only the face parts; needs parsing_parsenet.pth, `vspbfr download "
                        "--only parsing`)")
    r.add_argument("--mask-parts", metavar="LIST", default=None,
                   help="--mask-shape parsing: the face parts to paste, comma-separated from skin, brows, eyes, "
                        "glasses, ears, nose, mouth, lips (default: all of them; leave out glasses to keep the "
                        "original glasses). Hair, hat, earrings, necklace, neck, cloth and background are never "
                        "pasted over")
    r.add_argument("--parser", choices=("parsenet", "bisenet"), default="parsenet",
                   help="--mask-shape parsing: the network (parsing_parsenet.pth or parsing_bisenet.pth)")
    r.add_argument("--feather", metavar="PX", type=number(float, low=0), default=None,
                   help="paste-back mask softness in crop pixels at 512 (default: the standard softness, 50)")
    r.add_argument("--colorize-gray", action="store_true",
                   help="give faces of grayscale photos the colours the network invents (by default a face whose "
                        "R, G and B are equal comes back gray)")
    r.add_argument("--upscale", metavar="X", type=number(float, low=1, high=8), default=1.0,
                   help="upscale the whole image by this factor (1..8)")
    add_identity_options(p.add_argument_group("identity (see the README, Identity)"))


def options_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~vspbfr_core.pipeline.RestoreOptions` the options of :func:`add_restoration_arguments` ask for,
    validated (``InputError`` naming the bad value)."""
    from ..face.detect import parse_selection
    from ..pipeline import RestoreOptions

    options = RestoreOptions(
        seed=args.seed, threshold=args.threshold, min_size=args.min_size, max_faces=args.max_faces,
        selection=args.select, order=args.order, prompt_mix=args.prompt_mix, bank_scale=args.bank_scale,
        visibility=args.visibility, color_correction=None if args.color_correction == "none" else args.color_correction,
        mask_shape=args.mask_shape, mask_parts=args.mask_parts, feather=args.feather, upscale=args.upscale,
        keep_gray=not args.colorize_gray,
        candidates=args.candidates, only_matching=args.only_matching, match_threshold=args.match_threshold,
        reference_mix=args.reference_mix, reference_layers=args.reference_layers)
    options.validate()
    parse_selection(args.select)
    return options


# -- outputs -----------------------------------------------------------------------------------------------------

def check_out_dir(text: str, flag: str = "-o") -> Path:
    """``-o`` (or the folder of another output, ``flag``) as a folder that exists or can be created (nothing is
    created here)."""
    if not text or not text.strip():
        raise InputError("-o/--out: the output folder name is empty")
    out = Path(text)
    if os.path.lexists(out) and not out.exists():
        raise InputError(f"{flag} {text}: a broken symbolic link")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{flag} {text}: exists and is not a folder")
        existing = out
    else:
        existing = Path(os.path.abspath(out)).parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"{flag} {text}: cannot create the folder: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {text}: cannot write in {existing} (permission denied)")
    return out


def _key(path: Path) -> str:
    """A path as compared for collisions: real parent folder plus the name."""
    return os.path.normcase(os.path.join(os.path.realpath(path.parent), path.name))


def _ids(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of an input: the entry itself and, for a symbolic link, its target."""
    ids = set()
    for stat_fn in (os.lstat, os.stat):
        try:
            st = stat_fn(path)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _entry_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory entry at an output path (a link itself, not its target), if any."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class Plan:
    """Where one input's outputs go."""

    src: Path
    rel: Path
    dst: Path                     # the restored image
    faces_dir: Path               # OUT_DIR/faces/<sub-folders of rel>
    compare: Path                 # OUT_DIR/compare/<sub-folders of rel>/<rel stem>.png

    def face_path(self, index: int, kind: str) -> Path:
        return self.faces_dir / fit_name(self.rel.stem, f"_{index:02d}_{kind}.png")


def _show(items: list[str], limit: int = 5) -> str:
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def plan_outputs(files: list[tuple[Path, Path]], out_dir: Path, *, save_faces: bool = False,
                 compare: bool = False) -> list[Plan]:
    """One :class:`Plan` per input; ``InputError`` when outputs collide or one would replace an input."""
    inputs: dict[str, Path] = {}
    input_ids: dict[tuple[int, int], Path] = {}
    for src, _ in files:
        inputs[_key(src)] = src
        inputs[os.path.normcase(os.path.realpath(src))] = src
        for ident in _ids(src):
            input_ids[ident] = src
    claimed: dict[str, tuple[Path, str, Path]] = {}
    collisions: list[str] = []
    overwrites: list[str] = []
    plans = []
    for src, rel in files:
        plan = Plan(src, rel, out_dir / rel, out_dir / "faces" / rel.parent,
                    out_dir / "compare" / rel.parent / fit_name(rel.stem, ".png"))
        plans.append(plan)
        outputs = [(plan.dst, _key(plan.dst), "result")]
        if compare:
            outputs.append((plan.compare, _key(plan.compare), "comparison"))
        if save_faces:
            shown = plan.faces_dir / f"{rel.stem}_NN_before.png"
            outputs.append((shown, _key(plan.faces_dir / rel.stem) + "\0faces", "face crops"))
        for shown, key, what in outputs:
            if key in claimed and claimed[key][0] != src:
                other, other_what, _ = claimed[key]
                collisions.append(f"{other} and {src} would both write {shown}")
                continue
            claimed[key] = (src, what, shown)
            other = inputs.get(key)
            ident = _entry_id(shown)
            if other is None and ident is not None:
                other = input_ids.get(ident)
            if other is not None:
                overwrites.append(f"the {what} of {src} would replace the input {other}")
    if overwrites:
        raise InputError(f"refusing to overwrite inputs: {_show(overwrites)}; choose an -o folder that holds no "
                         "input files")
    if collisions:
        raise InputError(f"two inputs map to the same output name: {_show(collisions)}; pass their parent folder "
                         "instead (sub-folders are kept) or restore them into different -o folders")
    return plans


class OutputWriter:
    """Writes every output of a run: inside OUT_DIR only, never over an input or over a file it wrote before."""

    def __init__(self, out_dir: Path, inputs: list[Path]):
        self.out_dir = out_dir
        self.out_real = os.path.realpath(out_dir)
        self.input_ids: dict[tuple[int, int], Path] = {}
        for src in inputs:
            for ident in _ids(src):
                self.input_ids[ident] = src
        self.written: dict[str, Path] = {}
        self.written_ids: dict[tuple[int, int], Path] = {}

    def write(self, image: Any, path: Path, src: Path, **kwargs: Any) -> None:
        from ..imagefile import write_image

        self.check(path)
        write_image(image, path, **kwargs)
        self.record(path, src)

    def check(self, path: Path) -> None:
        """Refuse ``path`` when it leads outside OUT_DIR, is an input or was written before in this run."""
        parent = os.path.realpath(path.parent)
        if not _inside(parent, self.out_real):
            raise InputError(f"{path}: its folder leads outside {self.out_dir} (through a symbolic link); "
                             "refusing to write there")
        key = os.path.normcase(os.path.join(parent, path.name))
        if key in self.written:
            raise InputError(f"{path} was already written for {self.written[key]}: two inputs map to this name")
        ident = _entry_id(path)
        if ident is not None and ident in self.input_ids:
            raise InputError(f"{path} is the input {self.input_ids[ident]}: refusing to replace an input")
        if ident is not None and ident in self.written_ids:
            raise InputError(f"{path} is the file already written for {self.written_ids[ident]} (the file "
                             "system folds the two names together): refusing to replace it")

    def record(self, path: Path, src: Path) -> None:
        """``path`` was written for ``src``: it is not replaced again in this run."""
        self.written[os.path.normcase(os.path.join(os.path.realpath(path.parent), path.name))] = src
        ident = _entry_id(path)
        if ident is not None:
            self.written_ids[ident] = src


class FileProgress:
    """Progress over files and, within a file, over its faces; redrawn in place on a terminal."""

    def __init__(self, total_files: int, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total_files
        self.index = 0
        self.name = ""
        self.last = ""

    def start(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.draw(0, 1, "load")

    def draw(self, done: int, total: int, stage: str) -> None:
        width = 24
        frac = (self.index + done / max(total, 1)) / max(self.total, 1)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = f"[{bar}] {self.index + 1}/{self.total} {self.name}: {stage} {done}/{total}"
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
            self.stream.flush()
        self.last = line

    def finish_file(self, message: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 110 + "\r")
        self.stream.write(message + "\n")
        self.stream.flush()




def _failure_text(exc: BaseException, src: Path) -> str:
    """One line for a failed file: our own errors as they are, others with their type; the path not repeated."""
    text = " ".join(str(exc).split())
    prefix = f"{src}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    if not isinstance(exc, VSPBFRError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


@contextmanager
def own_threads() -> Iterator[None]:
    """torch's thread count as it was before the block: ``--threads`` applies while a command runs, and a caller of
    :func:`vspbfr_core.cli.main` in the same process gets its own thread count back."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    """The command (see :func:`own_threads` for ``--threads``)."""
    with own_threads():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..devices import resolve_device
    from ..imagefile import output_format, read_image
    from ..paths import choose_detector, resolve_models_dir
    from ..media import VIDEO_EXTENSIONS
    from ..pipeline import VSPBFRPipeline
    from . import restore_identity as ident
    from . import restore_video as video

    # everything that can be checked is checked before any model is loaded
    out_dir = check_out_dir(args.out)
    options = options_from_args(args)
    ident.check_identity_args(args)
    device = resolve_device(args.device, what="--device")
    file_items, sequences = video.split_inputs(args.inputs, args.sequence)
    collected = collect_inputs(file_items, out_dir, videos=tuple(VIDEO_EXTENSIONS))
    videos = [(src, rel) for src, rel in collected.files if video.is_video(src)]
    collected.files = [(src, rel) for src, rel in collected.files if not video.is_video(src)]
    video.check_video_args(args, bool(videos or sequences))
    jobs, video_failures = video.open_jobs(videos, sequences, out_dir, args.frames)     # PyAV needed from here on
    collected.failures += video_failures
    outputs = collected.files + [(job.src, job.rel) for job in jobs if job.kind == "video"]
    for job in jobs:
        outputs += job.frame_outputs()
    plans = plan_outputs(outputs, out_dir, save_faces=args.save_faces, compare=args.compare)[:len(collected.files)]
    report_path = ident.check_report_path(args.report, [src for src, _ in outputs],
                                          [plan.dst for plan in plans] + [job.dst for job in jobs])
    references = ident.read_references(args)
    user_mask = read_user_mask(args.mask, args.aligned)
    failed: list[str] = []
    for path, reason in collected.failures:
        failed.append(str(path))
        print(f"{path}: FAILED: {reason}", file=sys.stderr)
    total = len(plans) + len(jobs) + len(collected.failures)
    if not plans and not jobs:
        print(f"done: 0/{total} files", file=sys.stderr)
        print(f"{len(failed)} file(s) failed: {', '.join(failed)}", file=sys.stderr)
        if report_path is not None:
            report = ident.Report(report_path, ident.report_options(args, None, None), args.candidates)
            for path, reason in collected.failures:
                report.failed(path, reason)
            report.write()
        return 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
    models_dir = resolve_models_dir(args.models)
    detector = None if args.aligned else choose_detector(args.detector, [models_dir], detector_dir=args.detector_dir)
    embedder, identity_error = ident.load_identity(args, models_dir, device)      # before the heavy networks
    parser_file = None if args.aligned else find_parser(options, args.parser, models_dir)
    print(f"loading the VSPBFR networks from {models_dir}" + (f" and face detector {detector}" if detector else "")
          + f" onto {device} {str(dtype).replace('torch.', '')}"
          + (f"; identity embedder {embedder.name}" if embedder is not None else ""), file=sys.stderr)
    t0 = time.perf_counter()
    pipe = VSPBFRPipeline.from_dir(models_dir, detector=detector,
                                   detector_dir=args.detector_dir, chunk_size=args.chunk_size,
                                   low_memory=args.low_memory, compile=args.compile,
                                   allow_tf32=args.tf32).to(device, dtype)
    if parser_file is not None:
        pipe.load_parser(args.parser, file=parser_file)
    if args.reference_mix > 0:          # layer indices against this model's W+ (once, not as a failure per file)
        from ..identity.select import parse_layers

        try:
            parse_layers(args.reference_layers, pipe.model.style_encoder.config.num_ws)
        except InputError as exc:
            raise InputError(f"--reference-layers {args.reference_layers}: {str(exc).split(': ', 1)[-1]}") from exc
    reference = None
    if references:
        reference = pipe.make_reference([r.pixels for r in references], embedder, aligned=args.aligned,
                                        names=[str(p) for p in args.reference], threshold=args.threshold)
    load_s = time.perf_counter() - t0
    report = None
    if report_path is not None:
        report = ident.Report(report_path, ident.report_options(args, embedder, identity_error), args.candidates)
        for path, reason in collected.failures:
            report.failed(path, reason)
    run_identity: dict[str, Any] = dict(embedder=embedder, reference=reference)
    if user_mask is not None:
        run_identity["mask"] = user_mask
    writer = OutputWriter(out_dir, [src for src, _ in collected.files])
    progress = FileProgress(len(plans) + len(jobs))
    faces_total = frames_total = 0
    t_run = time.perf_counter()
    for i, plan in enumerate(plans):
        src = plan.src
        progress.start(i, src.name)
        t_file = time.perf_counter()
        try:
            loaded = read_image(src)
            fmt = output_format(plan.dst, loaded.format)
            image = loaded.pixels
            if args.aligned:
                result = pipe.restore_aligned(image, options, callback=progress.draw, **run_identity)
            else:
                result = pipe(image, options, callback=progress.draw, **run_identity)
            writer.write(result.images[0], plan.dst, src, format=fmt, sample=loaded.sample, params=loaded.params)
            if args.save_faces:
                for k in range(result.faces_found):
                    writer.write(result.crops[k].permute(1, 2, 0), plan.face_path(k, "before"), src)
                    writer.write(result.restored_crops[k].permute(1, 2, 0), plan.face_path(k, "after"), src)
            if args.compare:
                writer.write(_compare_image(image[0], result.images[0]), plan.compare, src)
            faces_total += result.faces_found
            if report is not None:
                report.add(src, plan.dst, result, args.aligned)
            progress.finish_file(f"{src}: {result.faces_found} face(s) -> {plan.dst} "
                                 f"({time.perf_counter() - t_file:.1f} s)"
                                 + ident.identity_note(result, reference is not None))
            for line in ident.identity_log_lines(result):
                log.debug("%s: %s", src, line)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one bad file must not stop a folder run: report it, go on, exit non-zero
            failed.append(str(src))
            reason = _failure_text(exc, src)
            if report is not None:
                report.failed(src, reason)
            progress.finish_file(f"{src}: FAILED: {reason}")
            log.debug("failure details for %s", src, exc_info=True)
    for k, job in enumerate(jobs):
        progress.start(len(plans) + k, job.name)
        t_file = time.perf_counter()
        try:
            done = video.run_job(job, pipe, options, args, writer, progress.draw, run_identity)
            frames_total += done.frames
            faces_total += done.faces
            if report is not None:
                report.add_video(job.src, job.dst, done.frames, done.faces, done.tracks if video.temporal_on(args)
                                 else None)
            seconds = time.perf_counter() - t_file
            found = f"{done.faces} face(s)" + (f" in {done.tracks} track(s)" if video.temporal_on(args) else "")
            progress.finish_file(f"{job.src}: {done.frames} frames, {found} -> {job.dst} ({seconds:.1f} s, "
                                 f"{seconds / max(done.frames, 1):.2f} s/frame)")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # as for images: report the video, go on with the others, exit non-zero
            failed.append(str(job.src))
            reason = _failure_text(exc, job.src)
            if report is not None:
                report.failed(job.src, reason)
            progress.finish_file(f"{job.src}: FAILED: {reason}")
            log.debug("failure details for %s", job.src, exc_info=True)
    elapsed = time.perf_counter() - t_run
    per_face = f"{elapsed / faces_total:.2f} s/face" if faces_total else "no faces"
    if jobs:
        per_face += f"; {frames_total} video frames"
    print(f"done: {total - len(failed)}/{total} files, {faces_total} faces, {elapsed:.1f} s "
          f"({per_face}; model load {load_s:.1f} s) on {device} {str(dtype).replace('torch.', '')}", file=sys.stderr)
    if report is not None:
        report.write()
        print(f"report: {report.path}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def read_user_mask(path: str | None, aligned: bool = False) -> Any:
    """``--mask FILE`` -> ``[H, W]`` float in [0, 1] (its alpha when it has transparency, else its gray level);
    None without one.  An unreadable file or ``--aligned`` (nothing is pasted) is an InputError."""
    if path is None:
        return None
    if aligned:
        raise InputError("--mask: --aligned inputs are restored as crops and never pasted back; leave out --mask")
    from ..image import rgb_to_gray
    from ..imagefile import read_image

    try:
        pixels = read_image(Path(path)).pixels[0]                            # [H, W, C] in [0, 1]
    except (OSError, VSPBFRError) as exc:
        raise InputError(f"--mask {path}: {exc}") from exc
    if pixels.shape[-1] in (2, 4) and bool((pixels[..., -1] < 1).any()):
        return pixels[..., -1].contiguous()
    if pixels.shape[-1] >= 3:
        return rgb_to_gray(pixels[..., :3].permute(2, 0, 1)[None])[0, 0].clamp(0, 1)
    return pixels[..., 0].contiguous()


def find_parser(options: Any, name: str, models_dir: Path) -> Path | None:
    """The face-parsing file ``--mask-shape parsing`` needs (an error naming the download command when it is not
    there, before any network loads); None for the other shapes."""
    if options.mask_shape != "parsing":
        return None
    from ..face.parsing import find_parser_file

    return find_parser_file(name, [models_dir])


def _compare_image(before: Any, after: Any) -> Any:
    """Side by side: the input (resized to the result's size when upscaled) and the result, RGB."""
    import torch
    import torch.nn.functional as F

    def rgb(x: Any) -> Any:
        x = x[..., :3] if x.shape[-1] == 4 else x
        return x.expand(*x.shape[:-1], 3) if x.shape[-1] == 1 else x

    a, b = rgb(before), rgb(after)
    if a.shape[:2] != b.shape[:2]:
        a = F.interpolate(a.permute(2, 0, 1)[None], size=b.shape[:2], mode="bicubic", align_corners=False)[0]
        a = a.permute(1, 2, 0).clamp(0, 1)
    return torch.cat([a, b], dim=1)

"""``vspbfr download [--models DIR] [--detector resnet50|mobile0.25|none] [--only vspbfr|detector|identity|parsing]
[--parser parsenet|bisenet|all]``.

``--models DIR`` names the models folder as in every other command; ``--to DIR`` is the same option (older spelling).

Fetches the official VSPBFR networks (Hugging Face hub, ``HF_ENDPOINT`` for mirrors) and the facexlib RetinaFace
detector into the models folder, resuming partial downloads and verifying every file; ``--only identity`` fetches the
optional ArcFace identity network instead (identity scores; restoration does not need it), ``--only parsing`` the
optional face-parsing network of the ``parsing`` paste mask (``--parser``: parsenet, the default, bisenet or all).
See :mod:`vspbfr_core.download`.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

EPILOG = """\
The models folder is --models (or --to), else $VSPBFR_MODELS, else the per-user default
($XDG_DATA_HOME/vspbfr/models or ~/.local/share/vspbfr/models; %LOCALAPPDATA%\\vspbfr\\models on Windows).
Sources: $HF_ENDPOINT (default https://huggingface.co)/Wanglong2/VSPBFR/resolve/main/<file> and
$VSPBFR_DETECTOR_URL (default https://github.com/xinntao/facexlib/releases/download/v0.1.0)/<file>;
--only identity: $VSPBFR_IDENTITY_URL (default: the same facexlib release)/recognition_arcface_ir_se50.pth;
--only parsing: $VSPBFR_PARSING_URL (default https://github.com/xinntao/facexlib/releases/download/v0.2.2, v0.2.0
for bisenet)/parsing_parsenet.pth or parsing_bisenet.pth.
An interrupted download is resumed by running the same command again."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download the official model files (resumable, verified)",
                       description="Download the three VSPBFR networks and the RetinaFace face detector into\n"
                                   "the models folder (--only identity: the optional ArcFace identity network;\n"
                                   "--only parsing: the optional face-parsing network of the 'parsing' mask).\n"
                                   "Files already present and valid are skipped; every new file is checked (size,\n"
                                   "sha256 where known, a load test) before it gets its final name.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", "--to", dest="to", metavar="DIR", default=None,
                   help="models folder to download into (--to is the same; default: see below)")
    p.add_argument("--detector", choices=("resnet50", "mobile0.25", "none"), default="resnet50",
                   help="which RetinaFace detector to fetch (default: resnet50, 109 MB; mobile0.25 is 1.8 MB)")
    p.add_argument("--only", choices=("vspbfr", "detector", "identity", "parsing"), default=None,
                   help="fetch only the VSPBFR networks, only the detector, only the optional ArcFace identity "
                        "network (recognition_arcface_ir_se50.pth, for identity scores) or only the optional "
                        "face-parsing network (parsing_parsenet.pth, for the 'parsing' paste mask; see --parser); "
                        "default: networks and detector")
    p.add_argument("--parser", choices=("parsenet", "bisenet", "all"), default="parsenet",
                   help="with --only parsing: which face-parsing network to fetch (default: parsenet, 85 MB; "
                        "bisenet is 53 MB; all: both)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout per connect/read (default: 30)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries after a dropped connection, each resuming (default: 3)")
    p.set_defaults(func=run)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class TextProgressBar:
    """A one-line progress bar per file on ``stream`` (redrawn in place on a terminal, a final line otherwise)."""

    def __init__(self, stream: TextIO | None = None, width: int = 28, interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._name: str | None = None
        self._start = 0.0
        self._first = 0
        self._last_draw = 0.0
        self._drawn = 0

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if name != self._name:
            self.finish()
            self._name, self._start, self._first, self._last_draw, self._drawn = name, now, done, 0.0, 0
        complete = total is not None and done >= total
        if self.tty and (complete or now - self._last_draw >= self.interval):
            self._last_draw = now
            line = self._line(name, done, total, now)
            self.stream.write("\r" + line.ljust(self._drawn))          # pad over a longer previous line
            self._drawn = len(line)
            self.stream.flush()
        if complete:
            if not self.tty:
                self.stream.write(self._line(name, done, total, now))
            self.stream.write("\n")
            self.stream.flush()
            self._name = None

    def _line(self, name: str, done: int, total: int | None, now: float) -> str:
        rate = (done - self._first) / max(now - self._start, 1e-6)
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            return f"{name:<36} [{bar}] {frac * 100:5.1f}% {_human(done)}/{_human(total)} {_human(rate)}/s"
        return f"{name:<36} {_human(done)} {_human(rate)}/s"

    def finish(self) -> None:
        """End a line left open (a transfer that stopped before completion)."""
        if self._name is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._name = None


def run(args: argparse.Namespace) -> int:
    from ..download import DownloadResult, download_models, plan_downloads
    from ..errors import DownloadError
    from ..paths import locate_models_dir

    folder, origin = locate_models_dir(args.to)
    parsers = ("parsenet", "bisenet") if args.parser == "all" else (args.parser,)
    specs = plan_downloads(args.only, args.detector, parsers=parsers)
    if not specs:
        raise DownloadError("nothing to download: --only detector with --detector none")
    print(f"models folder: {folder} ({'--models' if origin == 'argument' else origin})")
    bar = TextProgressBar()

    def report(result: DownloadResult) -> None:
        bar.finish()
        how = "already present, valid" if result.status == "present" else "downloaded and verified"
        if result.resumed_from:
            how += f", resumed from {_human(result.resumed_from)}"
        print(f"  {result.spec.name}: {how} ({_human(result.size)}, sha256 {result.sha256[:16]}...)")

    try:
        results = download_models(folder, only=args.only, detector=args.detector, parsers=parsers, progress=bar,
                                  on_result=report,
                                  timeout=args.timeout, retries=max(args.retries, 0))
    finally:
        bar.finish()
    fetched = sum(r.status == "downloaded" for r in results)
    for r in results:
        if r.spec.group == "parsing":
            print(f"  {r.spec.name}: the {r.spec.kind} face parser for the 'parsing' paste mask is at {r.path}")
    print(f"done: {len(results)} files ready in {folder} ({fetched} downloaded, {len(results) - fetched} already "
          "present)")
    return 0

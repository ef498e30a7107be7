"""``vspbfr batch INPUT... -o OUTPUT``: restore an archive, resumably, with a Parquet manifest; locally or on Ray.

The restore options are those of ``vspbfr restore`` (the same flags, defaults and checks), and every output is the
file ``vspbfr restore`` writes for that input with those options, on the same device, precision and ``--threads``,
whatever the engine, the number of workers or the order the inputs are done in.  What is collected, skipped on a
rerun and retried: :mod:`vspbfr_core.batch.jobs`; the manifest: :mod:`vspbfr_core.batch.manifest`; the engines:
``local`` (this process, inputs in order) and ``ray`` (:mod:`vspbfr_core.batch.ray_engine`).

Exit status: 0 when every input is done (or was done before), 1 when any failed (the summary names them), 2 for
a bad command line.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from ..cli import number
from ..errors import InputError
from .restore import add_model_arguments, add_restoration_arguments, options_from_args, own_threads

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="restore an archive: resumable, with a manifest, locally or on a Ray cluster",
                       description="Restore every face of many image files (folders, globs, lists, URIs) into "
                                   "OUTPUT, keeping names and formats, with a Parquet manifest that lets a rerun "
                                   "skip what is done; on this machine or on a Ray cluster.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders, glob patterns, URIs (s3://...) or lists (.txt, .csv, .parquet)")
    p.add_argument("-o", "--out", required=True, metavar="OUTPUT", help="output folder or URI")
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: a Ray Data job (pip install \"vspbfr[ray]\")")
    e.add_argument("--address", default=None, metavar="ADDR",
                   help="ray: the cluster (auto, ray://HOST:PORT); by default a local cluster is started")
    e.add_argument("--workers", metavar="N", type=number(int, low=1), default=1,
                   help="ray: restoration workers (one pipeline each)")
    e.add_argument("--gpus-per-worker", metavar="X", type=number(float, low=0), default=0.0,
                   help="ray: GPUs per worker (0: CPU workers)")
    e.add_argument("--cpus-per-worker", metavar="X", type=number(float, low=0, low_open=True), default=1.0,
                   help="ray: CPUs reserved per worker (fractions work: 0.5)")
    e.add_argument("--batch-size", metavar="N", type=number(int, low=1), default=4,
                   help="ray: inputs per task sent to a worker")
    e.add_argument("--retries", metavar="N", type=number(int, low=0), default=1,
                   help="tries again this many times an input that failed for another reason than a bad file")
    e.add_argument("--manifest", metavar="LOCATION", default=None,
                   help="manifest folder or URI (default: OUTPUT/_vspbfr_manifest)")
    add_model_arguments(p)
    add_restoration_arguments(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace, options: Any) -> Any:
    from ..batch.files import BatchConfig
    from ..paths import resolve_models_dir
    from . import restore_identity as ident

    return BatchConfig(options=options, models_dir=str(resolve_models_dir(args.models)), detector=args.detector,
                       detector_dir=args.detector_dir, device=args.device, dtype=args.dtype,
                       chunk_size=args.chunk_size, low_memory=args.low_memory, threads=args.threads,
                       allow_tf32=args.tf32, aligned=args.aligned, identity=args.identity,
                       needs_identity=ident.scoring_reason(args) is not None,
                       references=tuple(str(r) for r in args.reference or ()), threshold=args.threshold,
                       parser=args.parser)


def run(args: argparse.Namespace) -> int:
    with own_threads():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..batch import jobs, storage
    from ..batch.files import FileRestorer, options_key
    from ..batch.manifest import FOLDER, Manifest
    from ..devices import resolve_device
    from ..imagefile import EXTENSION_FORMATS
    from . import restore_identity as ident
    from ..paths import resolve_models_dir
    from .restore import check_out_dir, find_parser

    if not args.out or not args.out.strip():
        raise InputError("-o/--out: the output folder name is empty")
    options = options_from_args(args)
    if not args.aligned:
        find_parser(options, args.parser, resolve_models_dir(args.models))     # a missing file before any work
    ident.check_identity_args(args)
    resolve_device(args.device, what="--device")
    if args.compile:
        raise InputError("--compile is not supported by vspbfr batch (each worker would compile its own copy)")
    if args.engine == "ray":
        from ..batch.ray_engine import import_ray

        import_ray()                     # without Ray: the error before anything is read or loaded
    if not storage.is_uri(args.out):
        check_out_dir(args.out)
    for ref in args.reference or ():
        if not storage.exists(ref):
            raise InputError(f"--reference {ref}: no such file")
    extensions = tuple(e for e in EXTENSION_FORMATS if e != ".gif")
    plan = jobs.collect(args.inputs, args.out, extensions)
    config = _config(args, options)
    key = options_key(config)
    manifest = Manifest(args.manifest or storage.join(args.out, FOLDER))
    items, resumable = jobs.with_resume(plan.items, manifest.load(), key)
    print(f"{len(items)} input(s) ({resumable} done before with these options: checked, not redone), "
          f"engine {args.engine}, manifest {manifest.location}", file=sys.stderr)
    failed: list[str] = [src for src, _ in plan.failures]
    for src, reason in plan.failures:
        print(f"{src}: FAILED: {reason}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.engine == "ray":
        from ..batch.ray_engine import run_ray

        results = run_ray(config, items, retries=args.retries, workers=args.workers,
                          gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                          batch_size=args.batch_size, address=args.address)
    else:
        results = jobs.run_local(FileRestorer(config), items, args.retries)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    faces = 0
    try:
        for row in results:
            counts[row.status] = counts.get(row.status, 0) + 1
            if row.status == "skipped":
                continue
            manifest.add(row.to_row())
            if row.status == "failed":
                failed.append(row.input)
                print(f"{row.input}: FAILED: {row.error}", file=sys.stderr)
            else:
                faces += row.faces
                print(f"{row.input}: {row.faces} face(s) -> {row.output} ({row.seconds:.1f} s, {row.worker})",
                      file=sys.stderr)
    finally:
        manifest.flush()
    seconds = time.perf_counter() - t0
    total = len(items) + len(plan.failures)
    print(f"done: {counts['done'] + counts['skipped']}/{total} inputs ({counts['skipped']} already done), "
          f"{faces} faces, {seconds:.1f} s, {len(failed)} failed", file=sys.stderr)
    if failed:
        print(f"{len(failed)} input(s) failed: {', '.join(failed[:20])}"
              + (f" and {len(failed) - 20} more" if len(failed) > 20 else ""), file=sys.stderr)
        return 1
    return 0

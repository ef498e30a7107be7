"""``vspbfr convert IN... -o OUT_DIR``: official ``.pt`` files -> one ``.safetensors`` per file.

OUT_DIR is created when missing. Refused before anything is loaded or written (exit 1, the message names the
folder): OUT_DIR is an existing file, or a folder that cannot be created or written. Each input is loaded
strictly first; its output is written through an exclusive temporary file (a planted ``<name>.part`` symlink is
never followed) and renamed into place, so a failure leaves nothing half-written. An output that would replace
an input (``convert OUT/x.safetensors -o OUT``) or another output of the same run (two files of the same
kind) is refused.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert official .pt checkpoints to .safetensors",
                       description="Strictly load each official checkpoint and write <name>.safetensors with its "
                                   "configuration and the source file's sha256 in the metadata.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="official .pt files (or .safetensors to re-check)")
    p.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import check_out_dir, convert_checkpoint
    from ..weights_file import as_path, shown
    from ..errors import OutputError

    if not args.out:
        raise OutputError("-o/--out is empty: give the output folder")
    out = as_path(args.out)
    check_out_dir(out)
    inputs = [as_path(src) for src in args.inputs]
    written: list = []
    for index, src in enumerate(inputs):
        others = inputs[:index] + inputs[index + 1:]
        dst = convert_checkpoint(src, out, protect=others + written)
        written.append(dst)
        print(f"{shown(src)} -> {shown(dst)}")
    return 0

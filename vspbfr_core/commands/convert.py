"""``vspbfr convert IN... -o OUT_DIR``: official ``.pt`` files -> one ``.safetensors`` per file."""
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
    from ..checkpoints import convert_checkpoint

    for src in args.inputs:
        dst = convert_checkpoint(src, args.out)
        print(f"{src} -> {dst}")
    return 0

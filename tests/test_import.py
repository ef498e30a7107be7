"""Importing the package is cheap and never needs a GPU, ComfyUI or A1111."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_core_import_is_lazy_and_host_free() -> None:
    out = run("import sys, vspbfr_core; "
              "print(sorted(m for m in ('torch', 'comfy', 'folder_paths', 'modules', 'gradio') if m in sys.modules))")
    assert out == "[]"


def test_public_names_resolve_without_cuda() -> None:
    out = run("import os; os.environ['CUDA_VISIBLE_DEVICES'] = ''; import vspbfr_core as v; "
              "print(v.VSPBFRPipeline.__name__, v.load_checkpoint.__name__, v.make_generator(1, 2).initial_seed() > 0)")
    assert out == "VSPBFRPipeline load_checkpoint True"


def test_cli_help_lists_every_command() -> None:
    out = run("from vspbfr_core.cli import build_parser; print(build_parser().format_help())")
    for cmd in ("restore", "download", "info", "convert", "faces", "batch"):
        assert cmd in out


def test_optional_engines_and_media_import_without_their_packages() -> None:
    """The batch, temporal and media packages and the CLI's parser load no torch, Ray, pyarrow or PyAV."""
    out = run("import sys; import vspbfr_core.batch, vspbfr_core.temporal, vspbfr_core.media; "
              "from vspbfr_core.cli import build_parser; build_parser(); "
              "print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'av') if m in sys.modules))")
    assert out == "[]"

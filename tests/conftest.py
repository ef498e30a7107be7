"""Shared test fixtures: the repository root on sys.path, ../shared lookups and tiny configs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))
TEST_DEVICE = torch.device(os.environ.get("VSPBFR_TEST_DEVICE", "cpu"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is only available in the development checkout)")
    return p


@pytest.fixture
def device() -> torch.device:
    return TEST_DEVICE


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three tiny official-layout networks plus the real RetinaFace mobilenet0.25 detector."""
    import shutil

    from tiny_models import write_tiny_checkpoints

    detector = shared_path("weights", "detection_mobilenet0.25_Final.pth")
    d = tmp_path_factory.mktemp("tiny_models")
    write_tiny_checkpoints(d)
    shutil.copy(detector, d)
    return d


@pytest.fixture(autouse=True, scope="module")
def _restore_host_hints_per_module():
    """The same at module boundaries: a module-scoped fixture that starts the A1111 stand-in sets the hints before
    the per-test fixture below saves them, so only this one puts the defaults back for the next module."""
    from vspbfr_core import paths

    saved = paths.host_hints()
    yield
    paths.set_host_hints(saved)


@pytest.fixture(autouse=True)
def _restore_host_hints():
    """The A1111 adapter installs its own message hints (process-wide, as in a webui): undo that after each test."""
    from vspbfr_core import paths

    saved = paths.host_hints()
    yield
    paths.set_host_hints(saved)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): the
    tiny networks run fastest so on the shared 2-core test machines (~50x faster than two threads fighting over
    the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

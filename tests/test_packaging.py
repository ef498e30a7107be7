"""Packaging facts a new user or the Comfy Registry depends on: licence, registry metadata, ignore files."""
from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


@pytest.fixture(scope="module")
def pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_licence_file_matches_the_declared_licence(pyproject):
    assert pyproject["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_registry_metadata_is_complete(pyproject):
    assert pyproject["project"]["urls"]["Repository"].startswith("https://")
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("/docs/icon.png")
    assert (ROOT / "docs" / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert comfy["requires-comfyui"].startswith(">=")


def test_the_web_folder_is_registered_one_way_only(pyproject):
    """ComfyUI registers ``[tool.comfy] web`` under the project name and ``WEB_DIRECTORY`` under the folder name:
    with both, a pack cloned as ``custom_nodes/ComfyUI-VSPBFR`` gets its extension loaded twice."""
    assert "web" not in pyproject["tool"]["comfy"]
    init = (ROOT / "__init__.py").read_text(encoding="utf-8")
    assert 'WEB_DIRECTORY = "./web"' in init
    # and the script itself refuses a second registration whatever a host does
    js = (ROOT / "web" / "js" / "vspbfr.js").read_text(encoding="utf-8")
    assert "app.extensions" in js and "already registered" in js


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def _comfyignored(path: str, patterns: list[str]) -> bool:
    """The subset of gitignore syntax .comfyignore uses: ``dir/`` (a folder anywhere) and ``*.ext`` globs."""
    parts = path.split("/")
    for pat in patterns:
        if pat.endswith("/"):
            if pat.rstrip("/") in parts[:-1]:
                return True
        elif fnmatch.fnmatch(parts[-1], pat):
            return True
    return False


def test_comfyignore_keeps_tests_benchmarks_and_weights_out_of_the_archive():
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert all(p.endswith("/") or p.startswith("*.") for p in patterns), "update _comfyignored for new syntax"
    tracked = _tracked_files()
    kept = [f for f in tracked if not _comfyignored(f, patterns)]
    assert not [f for f in kept if f.startswith(("tests/", "benchmarks/", ".ci/"))]
    for name in ("model.pt", "models/x.safetensors", "detection_Resnet50_Final.pth", "restoration_net.pt.part"):
        assert _comfyignored(name, patterns)
    for needed in ("__init__.py", "nodes/ops.py", "vspbfr_core/pipeline.py", "web/js/vspbfr.js", "LICENSE",
                   "pyproject.toml", "requirements.txt", "install.py", "example_workflows/vspbfr_split.json"):
        assert needed in kept


def test_generated_folders_are_git_ignored():
    _tracked_files()
    for path in ("models/restoration_net.pt", "restored/photo.png", ".benchmarks/x.json", "node.zip",
                 "some/where/code_diffuser.safetensors"):
        rc = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode
        assert rc == 0, f"{path} is not git-ignored"


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("Run the tests", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert block == 'pip install -e ".[test]" && python -m pytest -q tests'
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert lines[-1] == block
    # and the install command the README gives first is the plain package (no test extras needed to run it)
    install = readme.split("Install and run the main job", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert install.strip().startswith("pip install -e . &&")

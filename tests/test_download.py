"""The downloader against a local HTTP server on 127.0.0.1 (random port): never the internet.

The server serves small files and can misbehave per path: drop the connection mid-file once, stall once, ignore
Range, send wrong bytes, answer 404, redirect like the Hugging Face hub (with ``X-Linked-*`` headers). "No
network" is a port nobody listens on.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tiny_models import write_tiny_checkpoints, write_tiny_detector
from vspbfr_core import cli
from vspbfr_core import download as dl
from vspbfr_core.errors import DownloadError, VSPBFRError

HUB = "/hub"
DET = "/det"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_GET(self):  # noqa: N802 - http.server naming
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, self.headers.get("Range")))
            count = sum(1 for p, _ in srv.requests if p == self.path)
        mode = srv.modes.get(self.path, "normal")
        if mode == "redirect":
            target, extra = srv.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            body = b"Entry not found"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and mode != "ignore_range":
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("drop_first", "stall_first") and count == 1:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            if mode == "stall_first":
                time.sleep(1.5)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.HF_ENDPOINT_ENV, raising=False)
    monkeypatch.delenv(dl.DETECTOR_URL_ENV, raising=False)
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of the three tiny networks and of tiny RetinaFace-like detectors, keyed by official file name."""
    src = tmp_path_factory.mktemp("tiny_src")
    paths = write_tiny_checkpoints(src)
    out = {p.name: p.read_bytes() for p in paths.values()}
    out["detection_mobilenet0.25_Final.pth"] = write_tiny_detector(src / "m.pth", "mobile0.25").read_bytes()
    out["detection_Resnet50_Final.pth"] = write_tiny_detector(src / "r.pth", "resnet50").read_bytes()
    return out


def _serve_all(srv: _Server, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        prefix = DET if name.startswith("detection_") else f"{HUB}/{dl.HF_REPO}/resolve/main"
        srv.files[f"{prefix}/{name}"] = data


def _hub_path(name: str) -> str:
    return f"{HUB}/{dl.HF_REPO}/resolve/main/{name}"


def _spec(srv: _Server, name: str, **known) -> dl.RemoteFile:
    kind = name.rsplit(".", 1)[0]
    return dl.RemoteFile(name=name, url=srv.base + _hub_path(name), group="vspbfr", kind=kind, **known)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _trust_tiny_detector(monkeypatch, data: bytes, detector: str = "mobile0.25") -> None:
    """Make the pinned facts of a detector those of the tiny test file (the real values are tested separately)."""
    monkeypatch.setitem(dl._DETECTOR_FACTS, detector, {"size": len(data), "sha256": _sha(data)})


#----------------------------------------------------------------------------
# Sources


def test_sources_default_env_and_arguments(monkeypatch):
    monkeypatch.delenv(dl.HF_ENDPOINT_ENV, raising=False)
    monkeypatch.delenv(dl.DETECTOR_URL_ENV, raising=False)
    urls = [f.url for f in dl.vspbfr_remote_files()]
    assert urls == [f"https://huggingface.co/Wanglong2/VSPBFR/resolve/main/{k}.pt"
                    for k in ("style_encoder_decoder", "code_diffuser", "restoration_net")]
    assert dl.detector_remote_file("resnet50").url == \
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
    mobile = dl.detector_remote_file("mobile0.25")
    assert mobile.url.endswith("/v0.1.0/detection_mobilenet0.25_Final.pth")
    assert (mobile.size, mobile.sha256) == (1_789_735,
                                            "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220")
    assert dl.detector_remote_file("resnet50").sha256_affixes == ("6d1de9c2", "a5a16d")

    monkeypatch.setenv(dl.HF_ENDPOINT_ENV, "https://mirror.example/")
    monkeypatch.setenv(dl.DETECTOR_URL_ENV, "http://127.0.0.1:9/d")
    assert dl.vspbfr_remote_files()[0].url == "https://mirror.example/Wanglong2/VSPBFR/resolve/main/style_encoder_decoder.pt"
    assert dl.detector_remote_file("mobile0.25").url == "http://127.0.0.1:9/d/detection_mobilenet0.25_Final.pth"
    assert dl.vspbfr_remote_files("http://arg")[0].url.startswith("http://arg/Wanglong2/")  # argument beats env

    assert [f.name for f in dl.plan_downloads("detector", "mobile0.25")] == ["detection_mobilenet0.25_Final.pth"]
    assert [f.group for f in dl.plan_downloads("vspbfr")] == ["vspbfr"] * 3
    assert len(dl.plan_downloads(None, "none")) == 3
    assert dl.plan_downloads("detector", "none") == []


#----------------------------------------------------------------------------
# Normal download, skip when present, record


def test_download_models_fetches_verifies_and_records(server, tiny_files, tmp_path, monkeypatch):
    _serve_all(server, tiny_files)
    _trust_tiny_detector(monkeypatch, tiny_files["detection_mobilenet0.25_Final.pth"])
    events: list[tuple[str, int, int | None]] = []
    results = dl.download_models(tmp_path, detector="mobile0.25", hf_endpoint=server.base + HUB,
                                 detector_base_url=server.base + DET, progress=lambda *a: events.append(a),
                                 backoff=0)
    names = ["style_encoder_decoder.pt", "code_diffuser.pt", "restoration_net.pt", "detection_mobilenet0.25_Final.pth"]
    assert [r.spec.name for r in results] == names
    assert all(r.status == "downloaded" for r in results)
    for name in names:
        assert (tmp_path / name).read_bytes() == tiny_files[name]
        assert (name, len(tiny_files[name]), len(tiny_files[name])) in events   # final progress tick per file
    assert not list(tmp_path.glob("*.part"))
    records = json.loads((tmp_path / dl.RECORD_FILE).read_text())["files"]
    for name in names:
        assert records[name]["sha256"] == _sha(tiny_files[name])
        assert records[name]["size"] == len(tiny_files[name])
        assert records[name]["url"].startswith(server.base)
        assert records[name]["time"].endswith("Z")

    # A second run finds everything valid and makes no request.
    before = len(server.requests)
    again = dl.download_models(tmp_path, detector="mobile0.25", hf_endpoint=server.base + HUB,
                               detector_base_url=server.base + DET, backoff=0)
    assert [r.status for r in again] == ["present"] * 4
    assert len(server.requests) == before


def test_present_file_that_no_longer_matches_its_record_is_downloaded_again(server, tiny_files, tmp_path):
    _serve_all(server, tiny_files)
    spec = _spec(server, "code_diffuser.pt")
    dl.download_file(spec, tmp_path, backoff=0)
    target = tmp_path / "code_diffuser.pt"
    damaged = bytearray(target.read_bytes())
    damaged[-10] ^= 0xFF                             # same size, different bytes: only the sha256 record sees it
    target.write_bytes(bytes(damaged))
    result = dl.download_file(spec, tmp_path, backoff=0)
    assert result.status == "downloaded"
    assert target.read_bytes() == tiny_files["code_diffuser.pt"]
    assert len(server.requests_for(_hub_path("code_diffuser.pt"))) == 2


def test_present_file_without_record_is_verified_by_loading(server, tiny_files, tmp_path):
    (tmp_path / "restoration_net.pt").write_bytes(tiny_files["restoration_net.pt"])   # put there by hand
    result = dl.download_file(_spec(server, "restoration_net.pt"), tmp_path, backoff=0)
    assert result.status == "present"
    assert server.requests == []
    assert dl.read_download_records(tmp_path)["restoration_net.pt"]["sha256"] == _sha(tiny_files["restoration_net.pt"])


#----------------------------------------------------------------------------
# Resume


def test_dropped_connection_is_resumed_with_range(server, tiny_files, tmp_path):
    name = "style_encoder_decoder.pt"
    _serve_all(server, tiny_files)
    server.modes[_hub_path(name)] = "drop_first"
    result = dl.download_file(_spec(server, name), tmp_path, backoff=0)
    data = tiny_files[name]
    ranges = server.requests_for(_hub_path(name))
    assert len(ranges) == 2
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(data) // 3}-"        # resumed exactly where the first transfer stopped
    assert (tmp_path / name).read_bytes() == data
    assert result.sha256 == _sha(data)
    assert not (tmp_path / (name + ".part")).exists()


def test_stalled_transfer_times_out_and_resumes(server, tiny_files, tmp_path):
    name = "code_diffuser.pt"
    _serve_all(server, tiny_files)
    server.modes[_hub_path(name)] = "stall_first"
    dl.download_file(_spec(server, name), tmp_path, timeout=0.3, backoff=0)
    ranges = server.requests_for(_hub_path(name))
    assert ranges[0] is None and ranges[1] == f"bytes={len(tiny_files[name]) // 3}-"
    assert (tmp_path / name).read_bytes() == tiny_files[name]


def test_part_file_from_an_earlier_run_is_resumed(server, tiny_files, tmp_path):
    name = "restoration_net.pt"
    data = tiny_files[name]
    _serve_all(server, tiny_files)
    (tmp_path / (name + ".part")).write_bytes(data[:1000])
    result = dl.download_file(_spec(server, name), tmp_path, backoff=0)
    assert server.requests_for(_hub_path(name)) == ["bytes=1000-"]
    assert result.resumed_from == 1000
    assert (tmp_path / name).read_bytes() == data


def test_complete_part_file_is_finished_without_transfer(server, tiny_files, tmp_path):
    name = "code_diffuser.pt"
    data = tiny_files[name]
    _serve_all(server, tiny_files)
    (tmp_path / (name + ".part")).write_bytes(data)
    dl.download_file(_spec(server, name), tmp_path, backoff=0)        # server answers 416 bytes */len
    assert server.requests_for(_hub_path(name)) == [f"bytes={len(data)}-"]
    assert (tmp_path / name).read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tiny_files, tmp_path):
    name = "code_diffuser.pt"
    data = tiny_files[name]
    _serve_all(server, tiny_files)
    server.modes[_hub_path(name)] = "ignore_range"
    (tmp_path / (name + ".part")).write_bytes(b"\0" * 700)           # garbage: must be discarded, not kept
    result = dl.download_file(_spec(server, name), tmp_path, backoff=0)
    assert server.requests_for(_hub_path(name)) == ["bytes=700-"]
    assert result.resumed_from == 0
    assert (tmp_path / name).read_bytes() == data


def test_cancel_from_progress_keeps_part_for_resume(server, tiny_files, tmp_path):
    name = "style_encoder_decoder.pt"
    data = tiny_files[name]
    _serve_all(server, tiny_files)

    class Stop(Exception):
        pass

    def cancel(_name, done, _total):
        if done >= 200_000:
            raise Stop

    with pytest.raises(Stop):
        dl.download_file(_spec(server, name), tmp_path, progress=cancel, chunk_size=1 << 14, backoff=0)
    kept = (tmp_path / (name + ".part")).stat().st_size
    assert 200_000 <= kept < len(data)
    assert not (tmp_path / name).exists()
    dl.download_file(_spec(server, name), tmp_path, backoff=0)
    assert server.requests_for(_hub_path(name))[-1] == f"bytes={kept}-"
    assert (tmp_path / name).read_bytes() == data


#----------------------------------------------------------------------------
# Wrong bytes


def _assert_nothing_left(folder: Path, name: str) -> None:
    assert not (folder / name).exists(), "a rejected file must never appear under its final name"
    assert not (folder / (name + ".part")).exists(), "wrong bytes must not be kept for a resume"


def test_wrong_bytes_for_a_known_sha256_are_rejected(server, tiny_files, tmp_path):
    name = "detection_mobilenet0.25_Final.pth"
    wrong = tiny_files[name]
    server.files[f"{DET}/{name}"] = wrong                          # a loadable detector, but not the official file
    spec = dl.detector_remote_file("mobile0.25", server.base + DET)
    spec = dl.RemoteFile(**{**spec.__dict__, "size": len(wrong)})   # same size: only the sha256 can tell
    with pytest.raises(DownloadError, match=r"wrong bytes.*sha256 [0-9a-f]{64}, expected 2979b33f"):
        dl.download_file(spec, tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, name)


def test_wrong_size_for_a_known_size_is_rejected(server, tiny_files, tmp_path):
    name = "detection_mobilenet0.25_Final.pth"
    server.files[f"{DET}/{name}"] = tiny_files[name]
    with pytest.raises(DownloadError, match=r"expected 1789735"):
        dl.download_file(dl.detector_remote_file("mobile0.25", server.base + DET), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, name)


def test_resnet50_detector_checks_the_known_sha256_prefix_and_suffix(server, tiny_files, tmp_path):
    name = "detection_Resnet50_Final.pth"
    server.files[f"{DET}/{name}"] = tiny_files[name]
    with pytest.raises(DownloadError, match=r"expected 6d1de9c2\.\.\.a5a16d"):
        dl.download_file(dl.detector_remote_file("resnet50", server.base + DET), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, name)


def test_vspbfr_file_that_does_not_load_is_rejected(server, tiny_files, tmp_path):
    server.files[_hub_path("code_diffuser.pt")] = b"<html>captive portal</html>" * 100
    with pytest.raises(DownloadError, match="does not load as code_diffuser"):
        dl.download_file(_spec(server, "code_diffuser.pt"), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, "code_diffuser.pt")


def test_vspbfr_file_of_the_wrong_kind_is_rejected(server, tiny_files, tmp_path):
    server.files[_hub_path("code_diffuser.pt")] = tiny_files["restoration_net.pt"]
    with pytest.raises(DownloadError, match="restoration_net file, but a code_diffuser file was expected"):
        dl.download_file(_spec(server, "code_diffuser.pt"), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, "code_diffuser.pt")


def test_wrong_bytes_do_not_replace_a_present_file(server, tiny_files, tmp_path):
    name = "code_diffuser.pt"
    old = b"user's damaged file"
    (tmp_path / name).write_bytes(old)
    server.files[_hub_path(name)] = b"garbage" * 50
    with pytest.raises(DownloadError):
        dl.download_file(_spec(server, name), tmp_path, backoff=0)
    assert (tmp_path / name).read_bytes() == old
    assert not (tmp_path / (name + ".part")).exists()


def test_hub_redirect_headers_give_size_and_sha256(server, tiny_files, tmp_path):
    name = "restoration_net.pt"
    data = tiny_files[name]
    server.files["/cdn/blob"] = data
    server.modes[_hub_path(name)] = "redirect"
    server.redirects[_hub_path(name)] = ("/cdn/blob", {"X-Linked-Etag": f'"{_sha(data)}"',
                                                        "X-Linked-Size": str(len(data))})
    assert dl.download_file(_spec(server, name), tmp_path, backoff=0).sha256 == _sha(data)
    assert (tmp_path / name).read_bytes() == data

    other = tmp_path / "other"
    server.redirects[_hub_path(name)] = ("/cdn/blob", {"X-Linked-Etag": '"' + "0" * 64 + '"'})
    with pytest.raises(DownloadError, match="wrong bytes"):
        dl.download_file(_spec(server, name), other, backoff=0)
    _assert_nothing_left(other, name)


def test_real_mobilenet_detector_passes_the_pinned_checks(server, tmp_path):
    from conftest import shared_path

    real = shared_path("weights", "detection_mobilenet0.25_Final.pth").read_bytes()
    server.files[f"{DET}/detection_mobilenet0.25_Final.pth"] = real
    result = dl.download_file(dl.detector_remote_file("mobile0.25", server.base + DET), tmp_path, backoff=0)
    assert result.size == 1_789_735 and result.status == "downloaded"


#----------------------------------------------------------------------------
# 404 and no network


def test_404_is_a_clear_error(server, tmp_path):
    spec = _spec(server, "code_diffuser.pt")
    with pytest.raises(DownloadError) as info:
        dl.download_file(spec, tmp_path, backoff=0)
    msg = str(info.value)
    assert "HTTP 404" in msg and spec.url in msg and str(tmp_path) in msg
    assert len(server.requests) == 1                    # a 404 is not retried
    _assert_nothing_left(tmp_path, "code_diffuser.pt")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_no_network_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(dl.HF_ENDPOINT_ENV, raising=False)
    base = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        dl.download_models(tmp_path, detector="mobile0.25", hf_endpoint=base, detector_base_url=base + "/det",
                           backoff=0)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "connection refused" in msg
    assert "HF_ENDPOINT" in msg and str(tmp_path) in msg
    for spec in dl.plan_downloads(None, "mobile0.25", hf_endpoint=base, detector_base_url=base + "/det"):
        assert spec.url in msg                       # every file to fetch by hand is listed
    assert not list(tmp_path.glob("*.pt*")) and not list(tmp_path.glob("*.pth*"))


def test_unreachable_host_is_not_retried_for_every_file(tmp_path):
    base = f"http://127.0.0.1:{_closed_port()}"
    calls = []
    real = dl._transfer_once

    def counting(spec, *a, **k):
        calls.append(spec.name)
        return real(spec, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(dl, "_transfer_once", counting)
    try:
        with pytest.raises(DownloadError):
            dl.download_models(tmp_path, only="vspbfr", hf_endpoint=base, retries=3, backoff=0)
    finally:
        mp.undo()
    assert calls == ["style_encoder_decoder.pt", "style_encoder_decoder.pt"]   # one retry, then the others skipped


#----------------------------------------------------------------------------
# Command line


def test_cli_download_and_offline(server, tiny_files, tmp_path, monkeypatch, capsys):
    _serve_all(server, tiny_files)
    _trust_tiny_detector(monkeypatch, tiny_files["detection_mobilenet0.25_Final.pth"])
    monkeypatch.setenv(dl.HF_ENDPOINT_ENV, server.base + HUB)
    monkeypatch.setenv(dl.DETECTOR_URL_ENV, server.base + DET)
    out_dir = tmp_path / "models"
    assert cli.main(["download", "--to", str(out_dir), "--detector", "mobile0.25"]) == 0
    captured = capsys.readouterr()
    assert f"models folder: {out_dir}" in captured.out
    assert "restoration_net.pt: downloaded and verified" in captured.out
    assert "done: 4 files ready" in captured.out
    assert "[" + "#" * 28 + "] 100.0%" in captured.err          # the progress bar reached the end
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["style_encoder_decoder.pt", "code_diffuser.pt", "restoration_net.pt",
         "detection_mobilenet0.25_Final.pth", dl.RECORD_FILE])

    assert cli.main(["download", "--to", str(out_dir), "--only", "detector", "--detector", "mobile0.25"]) == 0
    assert "already present, valid" in capsys.readouterr().out

    monkeypatch.setenv(dl.HF_ENDPOINT_ENV, f"http://127.0.0.1:{_closed_port()}")
    assert cli.main(["download", "--to", str(tmp_path / "empty"), "--only", "vspbfr", "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "error: cannot download from 127.0.0.1" in err and "download these files by hand" in err

    assert cli.main(["download", "--only", "detector", "--detector", "none"]) == 1


def test_download_error_is_a_vspbfr_error():
    assert issubclass(DownloadError, VSPBFRError)


#----------------------------------------------------------------------------
# The optional ArcFace identity file (`vspbfr download --only identity`)


def test_identity_file_is_planned_only_when_asked_for(monkeypatch):
    monkeypatch.delenv(dl.IDENTITY_URL_ENV, raising=False)
    spec = dl.identity_remote_file()
    assert spec.url == "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth"
    assert (spec.group, spec.kind, spec.size) == ("identity", "arcface", None)
    assert spec.sha256 == "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28"
    assert [f.name for f in dl.plan_downloads("identity")] == ["recognition_arcface_ir_se50.pth"]
    assert [f.name for f in dl.plan_downloads("identity", "none")] == ["recognition_arcface_ir_se50.pth"]
    assert all(f.group != "identity" for f in dl.plan_downloads(None))      # the default download is unchanged
    monkeypatch.setenv(dl.IDENTITY_URL_ENV, "http://127.0.0.1:9/id/")
    assert dl.identity_remote_file().url == "http://127.0.0.1:9/id/recognition_arcface_ir_se50.pth"
    with pytest.raises(DownloadError, match="only arcface has one"):
        dl.identity_remote_file("dlib")


@pytest.fixture(scope="module")
def tiny_arcface(tmp_path_factory) -> bytes:
    from identity_models import write_tiny_arcface

    return write_tiny_arcface(tmp_path_factory.mktemp("arcface") / "a.pth").read_bytes()


def test_cli_only_identity_downloads_verifies_and_resumes(server, tiny_arcface, tmp_path, monkeypatch, capsys):
    name = "recognition_arcface_ir_se50.pth"
    server.files[f"{DET}/{name}"] = tiny_arcface
    server.modes[f"{DET}/{name}"] = "drop_first"
    monkeypatch.setitem(dl._IDENTITY_FACTS, "arcface", {"sha256": _sha(tiny_arcface)})
    monkeypatch.setenv(dl.IDENTITY_URL_ENV, server.base + DET)
    out_dir = tmp_path / "models"
    assert cli.main(["download", "--models", str(out_dir), "--only", "identity", "--retries", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{name}: downloaded and verified" in out and "done: 1 files ready" in out
    assert (out_dir / name).read_bytes() == tiny_arcface
    ranges = server.requests_for(f"{DET}/{name}")
    assert ranges == [None, f"bytes={len(tiny_arcface) // 3}-"]          # the dropped transfer was resumed
    assert dl.read_download_records(out_dir)[name]["sha256"] == _sha(tiny_arcface)
    assert cli.main(["download", "--models", str(out_dir), "--only", "identity"]) == 0
    assert f"{name}: already present, valid" in capsys.readouterr().out
    assert len(server.requests_for(f"{DET}/{name}")) == 2


def test_identity_file_with_wrong_bytes_or_that_does_not_load_is_rejected(server, tiny_arcface, tmp_path,
                                                                          monkeypatch):
    name = "recognition_arcface_ir_se50.pth"
    server.files[f"{DET}/{name}"] = tiny_arcface                      # loads, but is not the official file
    with pytest.raises(DownloadError, match=r"wrong bytes.*expected a035c768"):
        dl.download_file(dl.identity_remote_file(base_url=server.base + DET), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, name)
    garbage = b"<html>captive portal</html>" * 50
    server.files[f"{DET}/{name}"] = garbage
    monkeypatch.setitem(dl._IDENTITY_FACTS, "arcface", {"sha256": _sha(garbage)})
    with pytest.raises(DownloadError, match="does not load as arcface"):
        dl.download_file(dl.identity_remote_file(base_url=server.base + DET), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, name)

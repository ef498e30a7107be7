"""`vspbfr download --only parsing` against a local HTTP server on 127.0.0.1 (the server of test_download.py), and
the parsing rows of `vspbfr info`. The served file is a real ParseNet state dict (facexlib's 512 key layout) with
random weights, stored in float16 to keep it at 43 MB."""
from __future__ import annotations

import hashlib
import threading

import pytest
import torch

import test_download
from test_download import _assert_nothing_left
from vspbfr_core import cli
from vspbfr_core import download as dl
from vspbfr_core.commands.info import inspect_models_dir
from vspbfr_core.errors import DownloadError
from vspbfr_core.face import parsing as fp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def server(monkeypatch):
    """test_download's local HTTP server (127.0.0.1, random port), with no proxy in the way."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.PARSING_URL_ENV, raising=False)
    srv = test_download._Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()

PARSE = "/parse"
NAME = "parsing_parsenet.pth"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def parsenet_file(tmp_path_factory) -> bytes:
    g = torch.Generator().manual_seed(7)
    with torch.device("meta"):
        shapes = fp.ParseNet().state_dict()
    sd = {}
    for k, v in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.ones(v.shape, dtype=torch.float16)
        else:
            sd[k] = (torch.randn(v.shape, generator=g) * 0.02).half()
    path = tmp_path_factory.mktemp("parsing") / NAME
    torch.save(sd, path)
    return path.read_bytes()


def test_parsing_files_are_planned_only_when_asked_for(monkeypatch):
    monkeypatch.delenv(dl.PARSING_URL_ENV, raising=False)
    spec = dl.parsing_remote_file()
    assert spec.url == "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth"
    assert (spec.group, spec.kind, spec.size) == ("parsing", "parsenet", 85_331_193)
    assert spec.sha256 == "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2"
    bis = dl.parsing_remote_file("bisenet")
    assert bis.url == "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
    assert (bis.size, bis.sha256[:8]) == (53_289_463, "468e13ca")
    assert [f.name for f in dl.plan_downloads("parsing")] == [NAME]
    assert [f.name for f in dl.plan_downloads("parsing", parsers=("parsenet", "bisenet"))] == [
        NAME, "parsing_bisenet.pth"]
    assert all(f.group != "parsing" for f in dl.plan_downloads(None))        # the default download is unchanged
    assert all(f.group != "parsing" for f in dl.plan_downloads("identity"))
    monkeypatch.setenv(dl.PARSING_URL_ENV, "http://127.0.0.1:9/p/")
    assert dl.parsing_remote_file("bisenet").url == "http://127.0.0.1:9/p/parsing_bisenet.pth"
    with pytest.raises(DownloadError, match="unknown face-parsing network"):
        dl.parsing_remote_file("segformer")


def test_cli_only_parsing_downloads_verifies_and_says_where(server, parsenet_file, tmp_path, monkeypatch,
                                                            capsys):
    server.files[f"{PARSE}/{NAME}"] = parsenet_file
    server.modes[f"{PARSE}/{NAME}"] = "drop_first"
    monkeypatch.setitem(dl._PARSING_FACTS, "parsenet", {"size": len(parsenet_file), "sha256": _sha(parsenet_file)})
    monkeypatch.setenv(dl.PARSING_URL_ENV, server.base + PARSE)
    out_dir = tmp_path / "models"
    assert cli.main(["download", "--models", str(out_dir), "--only", "parsing", "--retries", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: downloaded and verified" in out and "done: 1 files ready" in out
    assert f"face parser for the 'parsing' paste mask is at {out_dir / NAME}" in out
    assert (out_dir / NAME).read_bytes() == parsenet_file
    assert server.requests_for(f"{PARSE}/{NAME}") == [None, f"bytes={len(parsenet_file) // 3}-"]   # resumed
    dl.verify_model_file(out_dir / NAME, "parsenet")
    parser = fp.load_parser("parsenet", fp.find_parser_file("parsenet", out_dir))
    assert parser.net.state_dict()["out_mask_conv.conv2d.weight"].dtype == torch.float32
    assert cli.main(["download", "--models", str(out_dir), "--only", "parsing"]) == 0
    assert f"{NAME}: already present, valid" in capsys.readouterr().out
    assert len(server.requests_for(f"{PARSE}/{NAME}")) == 2
    # vspbfr info lists it (an optional row) and --check verifies it
    rows = {r.name: r for r in inspect_models_dir(out_dir, check=True)}
    assert (rows[NAME].role, rows[NAME].state, rows[NAME].checked, rows[NAME].problem) == (
        "parsing", "present", True, None)
    assert rows["parsing_bisenet.pth"].state == "missing" and rows["parsing_bisenet.pth"].problem is None


def test_parsing_file_with_wrong_bytes_or_that_does_not_load_is_refused(server, parsenet_file, tmp_path,
                                                                        monkeypatch):
    server.files[f"{PARSE}/{NAME}"] = parsenet_file                    # loads, but is not the official file
    with pytest.raises(DownloadError, match="expected 85331193"):
        dl.download_file(dl.parsing_remote_file(base_url=server.base + PARSE), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, NAME)
    corrupt = bytearray(parsenet_file)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 4096] = b"\xff" * 4096   # damaged zip member data
    corrupt = bytes(corrupt)
    server.files[f"{PARSE}/{NAME}"] = corrupt
    monkeypatch.setitem(dl._PARSING_FACTS, "parsenet", {"size": len(corrupt), "sha256": _sha(corrupt)})
    with pytest.raises(DownloadError, match="does not load as parsenet"):
        dl.download_file(dl.parsing_remote_file(base_url=server.base + PARSE), tmp_path, backoff=0)
    _assert_nothing_left(tmp_path, NAME)


def test_info_names_the_parsing_download_when_absent(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    cli.main(["info", "--models", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert f"`vspbfr download --models {tmp_path / 'm'} --only parsing`" in out
    assert "parsing_bisenet.pth" in out

"""Stand-in of A1111's modules.safe: the pickle check that replaces torch.load (A1111 only; Forge/reForge skip it).

Behaviour modelled: zip entries other than ``<name>/data.pkl``, ``data/<n>``, ``version``, ``byteorder`` and
``.data/serialization_id`` are refused (files written by recent PyTorch carry ``.format_version``); the pickle is
replayed with a restricted unpickler (A1111's list of globals, plus whatever an ``Extra`` handler returns); a
refusal is reported with ``errors.report`` and ``None`` is returned instead of raising. ``install()`` performs the
``torch.load = load`` replacement (A1111 does it at import; the tests do it inside one test only).
"""
from __future__ import annotations

import collections
import pickle
import re
import zipfile

import torch

from modules import errors, shared

_allowed_zip_names = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
global_extra_handler = None
unsafe_torch_load = torch.load


class RestrictedUnpickler(pickle.Unpickler):
    extra_handler = None

    def persistent_load(self, saved_id):
        return None

    def find_class(self, module, name):
        if self.extra_handler is not None:
            found = self.extra_handler(module, name)
            if found is not None:
                return found
        if (module, name) == ('collections', 'OrderedDict'):
            return collections.OrderedDict
        if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_parameter',
                                                 '_rebuild_device_tensor_from_numpy'):
            return lambda *a, **k: None
        if module == 'torch' and name in ('FloatStorage', 'HalfStorage', 'IntStorage', 'LongStorage', 'DoubleStorage',
                                          'ByteStorage', 'float32', 'BFloat16Storage'):
            return getattr(torch, name)
        raise Exception(f"global '{module}/{name}' is forbidden")


def check_pt(filename, extra_handler):
    try:
        with zipfile.ZipFile(filename) as z:
            for name in z.namelist():
                if not _allowed_zip_names.match(name):
                    raise Exception(f"bad file inside {filename}: {name}")
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
            with z.open(pkl[0]) as f:
                unpickler = RestrictedUnpickler(f)
                unpickler.extra_handler = extra_handler
                unpickler.load()
    except zipfile.BadZipfile:
        with open(filename, "rb") as f:
            unpickler = RestrictedUnpickler(f)
            unpickler.extra_handler = extra_handler
            for _ in range(5):
                unpickler.load()


def load_with_extra(filename, extra_handler=None, *args, **kwargs):
    try:
        if not getattr(shared.cmd_opts, "disable_safe_unpickle", False):
            check_pt(filename, extra_handler)
    except Exception:
        errors.report(f"Error verifying pickled file from {filename}\nThe file may be malicious, so the program is "
                      "not going to read it.\nYou can skip this check with --disable-safe-unpickle commandline "
                      "argument.\n\n", exc_info=True)
        return None
    return unsafe_torch_load(filename, *args, **kwargs)


def load(filename, *args, **kwargs):
    return load_with_extra(filename, *args, extra_handler=global_extra_handler, **kwargs)


class Extra:
    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        global global_extra_handler
        assert global_extra_handler is None, 'already inside an Extra() block'
        global_extra_handler = self.handler

    def __exit__(self, exc_type, exc_val, exc_tb):
        global global_extra_handler
        global_extra_handler = None


def install(monkeypatch) -> None:
    """``torch.load = load`` for the duration of one test (pytest's monkeypatch undoes it)."""
    monkeypatch.setattr(torch, "load", load)

"""Run the official VSPBFR code, from a checkout the user passes by path, on CPU without patching it.

Nothing of the official code is contained here.  The official package ``op`` JIT-compiles CUDA
extensions when it is imported (``op/fused_act.py``, ``op/upfirdn2d.py``), and
``e4e/models/stylegan2/model.py`` imports ``op.fused_act_cpu`` / ``op.upfirdn2d_cpu`` on machines
without CUDA, modules that do not exist.  :func:`install_op_standins` therefore puts our own
pure-PyTorch stand-ins for those modules into ``sys.modules`` before anything official is imported
(formulas: docs/vspbfr-architecture.md §7):

* ``fused_leaky_relu(x, bias, 0.2, sqrt 2) = leaky_relu(x + bias[channel], 0.2) * sqrt 2``
  and a ``FusedLeakyReLU`` module holding that ``bias`` parameter;
* ``upfirdn2d`` (zero-insertion upsample, pad/crop, true convolution with the FIR kernel, keep every
  ``down``-th sample).  ``native`` (default) computes it as the official CPU branch does: every
  channel as a one-channel image ``[B*C, 1, H, W]``.  ``depthwise`` is a faster equivalent (one
  grouped convolution), offered so that the comparison can also be made against a stronger baseline;
* ``conv2d_gradfix.conv2d`` / ``conv_transpose2d`` = plain ``F.conv2d`` / ``F.conv_transpose2d``.

The stand-in ``op`` package keeps the official ``op`` directory on its ``__path__``, so the plain
Python helpers there (``op.utils``, ``op.utils_train``, used by ``restoration_test.py`` and
``dataset.py``) are imported unchanged.  Training-only third-party packages that are missing are
replaced by import stubs (:data:`IMPORT_STUBS`, applied only when the package is not installed);
calling anything in a stub raises.

:class:`NoiseTape` serves the official forward's random draws (``torch.randn``,
``Tensor.normal_``, ``random.random``, ``random.randint``) from a list prepared in advance, in the
order of docs/vspbfr-architecture.md §6, and makes any other draw raise.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import random
import sys
import types
from collections import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# third-party packages the official modules import at module level but inference never calls
IMPORT_STUBS: dict[str, tuple[str, ...]] = {
    "einops": ("rearrange", "repeat", "reduce"),   # ldm/util.py, ldm/util2.py (training / DDIM helpers)
}

#----------------------------------------------------------------------------
# Pure-PyTorch stand-ins for the official custom ops


def fused_leaky_relu(input: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = 2 ** 0.5) -> torch.Tensor:
    if bias is not None:
        input = input + bias.view(1, bias.shape[0], *([1] * (input.ndim - 2)))
    return F.leaky_relu(input, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int, bias: bool = True, negative_slope: float = 0.2, scale: float = 2 ** 0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, abc.Iterable) else (int(v), int(v))


def _upfirdn_args(kernel: torch.Tensor, up: Any, down: Any, pad: Any) -> tuple[int, int, int, int, tuple[int, ...]]:
    (ux, uy), (dx, dy) = _pair(up), _pair(down)
    if ux != uy or dx != dy:
        raise NotImplementedError("upfirdn2d stand-in: only equal factors on both axes (all VSPBFR uses)")
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])        # (x0, x1, y0, y1)
    return ux, dx, kernel.shape[0], kernel.shape[1], pad


def _zero_insert_pad(x: torch.Tensor, up: int, pad: tuple[int, ...]) -> torch.Tensor:
    """``[N, C, H, W]`` -> zero-insertion upsampled by ``up``, padded (negative pads crop)."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    return x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]


def upfirdn2d_native(input: torch.Tensor, kernel: torch.Tensor, up: Any = 1, down: Any = 1,
                     pad: Any = (0, 0)) -> torch.Tensor:
    """The official CPU branch's computation: each channel as a one-channel image."""
    up, down, kh, kw, pad = _upfirdn_args(kernel, up, down, pad)
    b, c, h, w = input.shape
    x = _zero_insert_pad(input.reshape(b * c, 1, h, w), up, pad)
    x = F.conv2d(x, torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(x.dtype))
    x = x[:, :, ::down, ::down]
    return x.reshape(b, c, x.shape[2], x.shape[3])


def upfirdn2d_depthwise(input: torch.Tensor, kernel: torch.Tensor, up: Any = 1, down: Any = 1,
                        pad: Any = (0, 0)) -> torch.Tensor:
    """Same values as :func:`upfirdn2d_native` (to rounding), one grouped convolution over all channels."""
    up, down, kh, kw, pad = _upfirdn_args(kernel, up, down, pad)
    c = input.shape[1]
    x = _zero_insert_pad(input, up, pad)
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


UPFIRDN2D = {"native": upfirdn2d_native, "depthwise": upfirdn2d_depthwise}


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: ANN001, ANN202
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,  # noqa: ANN001, ANN202
                      dilation=1):
    return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)


@contextlib.contextmanager
def _no_weight_gradients():  # noqa: ANN202
    yield

#----------------------------------------------------------------------------
# Installing the stand-ins and importing the official modules


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def install_op_standins(official_repo: Path, upfirdn: str = "native") -> None:
    """Register the stand-in ``op`` package and its CUDA-op modules in ``sys.modules``."""
    fn = UPFIRDN2D[upfirdn]
    act = dict(FusedLeakyReLU=FusedLeakyReLU, fused_leaky_relu=fused_leaky_relu)
    fir = dict(upfirdn2d=fn)
    gradfix = _module("op.conv2d_gradfix", conv2d=_conv2d, conv_transpose2d=_conv_transpose2d,
                      no_weight_gradients=_no_weight_gradients, enabled=False, weight_gradients_disabled=False)
    op = _module("op", conv2d_gradfix=gradfix, **act, **fir)
    op.__path__ = [str(official_repo / "op")]      # plain-Python helpers (op.utils, ...) load from the checkout
    op.__file__ = "<vspbfr benchmark stand-in>"
    sys.modules["op"] = op
    sys.modules["op.conv2d_gradfix"] = gradfix
    for name in ("op.fused_act", "op.fused_act_cpu"):
        sys.modules[name] = _module(name, **act)
    for name in ("op.upfirdn2d", "op.upfirdn2d_cpu"):
        sys.modules[name] = _module(name, upfirdn2d_native=upfirdn2d_native, **fir)


def install_import_stubs() -> list[str]:
    """Stub the training-only packages in :data:`IMPORT_STUBS` that are not installed; returns their names."""
    stubbed = []
    for pkg, names in IMPORT_STUBS.items():
        try:
            importlib.import_module(pkg)
            continue
        except ImportError:
            pass

        def refuse(*_a: Any, _n: str = pkg, **_k: Any) -> Any:
            raise RuntimeError(f"{_n} is only stubbed by the benchmark (import-time dependency of the official code)")
        sys.modules[pkg] = _module(pkg, **{n: refuse for n in names})
        stubbed.append(pkg)
    return stubbed


@dataclass
class Official:
    """The official modules and models, built as ``restoration_test.py`` builds them."""
    psp_embedding: Any        # Loss.e4e_embedding.E4e_embedding
    diffusion: Any            # ldm.ddpm.My_DDPM wrapping models.CodeDiffuser.Code_diffuser
    g_ema: Any                # models.RestoreNet.Restoration_net
    mixing_noise: Any         # restoration_test.mixing_noise
    stubbed: list[str]
    upfirdn: str

    def to(self, device: torch.device) -> Official:
        self.psp_embedding.to(device)
        self.diffusion.to(device)
        self.g_ema.to(device)
        return self


def import_official(official_repo: str | os.PathLike[str], upfirdn: str = "native") -> dict[str, Any]:
    repo = Path(official_repo).resolve()
    if not (repo / "restoration_test.py").is_file() or not (repo / "models" / "RestoreNet.py").is_file():
        raise FileNotFoundError(f"{repo} is not an extracted checkout of LonglongaaaGo/VSPBFR "
                                "(restoration_test.py, models/RestoreNet.py missing)")
    install_op_standins(repo, upfirdn)
    stubbed = install_import_stubs()
    sys.path.insert(0, str(repo))            # first on sys.path, in this (benchmark) process only
    mods = {"stubbed": stubbed}
    with contextlib.redirect_stdout(sys.stderr):
        for name in ("Loss.e4e_embedding", "models.CodeDiffuser", "ldm.ddpm", "models.RestoreNet", "restoration_test"):
            mods[name] = importlib.import_module(name)
    return mods


def build_official(official_repo: str | os.PathLike[str], weights_dir: str | os.PathLike[str],
                   device: str = "cpu", upfirdn: str = "native") -> Official:
    """``restoration_test.py``'s construction, from the official-layout files in ``weights_dir``.

    The official files pickle ``argparse.Namespace`` and the official code calls ``torch.load`` without
    ``weights_only``; on torch >= 2.6 that needs ``argparse.Namespace`` allow-listed, which is done
    here (process-wide, benchmark process only).
    """
    mods = import_official(official_repo, upfirdn)
    torch.serialization.add_safe_globals([argparse.Namespace])
    weights_dir = Path(weights_dir)
    rt = mods["restoration_test"]
    with contextlib.redirect_stdout(sys.stderr):
        psp = mods["Loss.e4e_embedding"].E4e_embedding(str(weights_dir / "style_encoder_decoder.pt"), out_size=512,
                                                       size=1024, device=device, input_channel=3,
                                                       use_generator=True).to(device)
        diffusion = rt.load_ddpm(str(weights_dir / "code_diffuser.pt"), device=device)
        g_ema = mods["models.RestoreNet"].Restoration_net(512, 512, 8, channel_multiplier=2).to(device)
        ckpt = torch.load(str(weights_dir / "restoration_net.pt"), map_location=lambda storage, loc: storage)
        g_ema.load_state_dict(ckpt["g_ema"])      # strict: a mismatch raises (the official script would go on)
        del ckpt
        g_ema.eval()
        psp.eval()
        diffusion.eval()
    return Official(psp, diffusion, g_ema, rt.mixing_noise, mods["stubbed"], upfirdn)

#----------------------------------------------------------------------------
# Serving the official forward's random draws from a tape


class TapeError(RuntimeError):
    pass


class NoiseTape:
    """Within ``with tape:``, the official code's draws return the prepared values, in order.

    ``entries``: ``(kind, value)`` with kind ``random`` (float), ``randint`` (int), ``randn`` (tensor,
    returned cast to the requested or default dtype and device) or ``normal_`` (tensor copied into
    the buffer).  Any other random call inside the block raises :class:`TapeError`; leaving the
    block without an exception checks that the tape was consumed completely.
    """

    GUARDED_TORCH = ("rand", "rand_like", "randn_like", "randint", "randint_like", "normal", "randperm", "bernoulli",
                     "multinomial")
    GUARDED_TENSOR = ("uniform_", "bernoulli_", "random_", "exponential_", "cauchy_", "log_normal_", "geometric_")
    GUARDED_RANDOM = ("uniform", "gauss", "normalvariate", "choice", "shuffle", "sample", "randrange", "getrandbits")

    def __init__(self, entries: list[tuple[str, Any]]):
        self.entries = list(entries)
        self.pos = 0

    def _next(self, kind: str, what: str) -> Any:
        if self.pos >= len(self.entries):
            raise TapeError(f"tape exhausted: {what} is draw {self.pos}, the tape holds {len(self.entries)}")
        k, v = self.entries[self.pos]
        if k != kind:
            raise TapeError(f"draw {self.pos}: the official code called {what}, the tape has {k}")
        self.pos += 1
        return v

    def _randn(self, *size: Any, **kw: Any) -> torch.Tensor:
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        v = self._next("randn", f"torch.randn{tuple(size)}")
        if tuple(v.shape) != tuple(size):
            raise TapeError(f"draw {self.pos - 1}: torch.randn{tuple(size)} but the tape holds {tuple(v.shape)}")
        return v.to(device=kw.get("device") or "cpu", dtype=kw.get("dtype") or torch.get_default_dtype())

    def _normal_(self, t: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        v = self._next("normal_", f"Tensor.normal_ on {tuple(t.shape)}")
        if tuple(v.shape) != tuple(t.shape) or a or kw:
            raise TapeError(f"draw {self.pos - 1}: normal_{a or ''} on {tuple(t.shape)}, tape {tuple(v.shape)}")
        return t.copy_(v)

    def _random(self) -> float:
        return float(self._next("random", "random.random()"))

    def _randint(self, a: int, b: int) -> int:
        v = int(self._next("randint", f"random.randint({a}, {b})"))
        if not a <= v <= b:
            raise TapeError(f"tape value {v} outside random.randint({a}, {b})")
        return v

    def __enter__(self) -> NoiseTape:
        self.pos = 0
        self._saved: list[tuple[Any, str, Any, bool]] = []

        def patch(owner: Any, name: str, fn: Any) -> None:
            present = name in owner.__dict__
            self._saved.append((owner, name, owner.__dict__.get(name), present))
            setattr(owner, name, fn)

        def refuse(what: str) -> Any:
            def f(*_a: Any, **_k: Any) -> Any:
                raise TapeError(f"unexpected random call {what} inside the taped official forward")
            return f
        patch(torch, "randn", self._randn)
        patch(torch.Tensor, "normal_", lambda t, *a, **k: self._normal_(t, *a, **k))   # a plain function: binds t
        patch(random, "random", self._random)
        patch(random, "randint", self._randint)
        for n in self.GUARDED_TORCH:
            patch(torch, n, refuse(f"torch.{n}"))
        for n in self.GUARDED_TENSOR:
            patch(torch.Tensor, n, refuse(f"Tensor.{n}"))
        for n in self.GUARDED_RANDOM:
            patch(random, n, refuse(f"random.{n}"))
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for owner, name, old, present in reversed(self._saved):
            if present:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
        if exc_type is None and self.pos != len(self.entries):
            raise TapeError(f"the official forward consumed {self.pos} of {len(self.entries)} taped draws")


def official_tape(z1: torch.Tensor, z2: torch.Tensor | None, inject_index: int | None, x_T: torch.Tensor,
                  stylegan: list[torch.Tensor], encoder: list[torch.Tensor], decoder: list[torch.Tensor],
                  unused: list[torch.Tensor]) -> list[tuple[str, Any]]:
    """The draws of one official batch in consumption order (docs/vspbfr-architecture.md §6).

    ``stylegan``: all 17 decoder noise maps (4..1024); ``unused``: the 4 DDPM ``noise_like`` draws the
    official sampler discards.
    """
    mixing = z2 is not None
    tape: list[tuple[str, Any]] = [("random", 0.25 if mixing else 0.75)]   # mixing_noise: random() < 0.5
    tape.append(("randn", torch.stack([z1, z2]) if mixing else z1))
    tape.append(("randn", x_T))
    tape += [("randn", u) for u in unused]
    tape += [("normal_", t) for t in stylegan]
    if mixing:
        tape.append(("randint", int(inject_index)))
    tape += [("normal_", t) for t in encoder]
    tape += [("normal_", t) for t in decoder]
    return tape


def check_upfirdn_standins(trials: int = 4) -> float:
    """Max abs difference between the two upfirdn2d stand-ins on the cases VSPBFR uses."""
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[None] * k[:, None]
    k = k / k.sum()
    worst = 0.0
    for up, down, pad, kk in ((1, 1, (2, 1), k), (1, 1, (1, 1), k * 4), (2, 1, (2, 1), k * 4), (1, 2, (1, 1), k)):
        for _ in range(max(1, trials // 4)):
            x = torch.randn(2, 5, 9, 9, generator=g)
            a = upfirdn2d_native(x, kk, up, down, pad)
            b = upfirdn2d_depthwise(x, kk, up, down, pad)
            worst = max(worst, float((a - b).abs().max()) if a.shape == b.shape else math.inf)
    return worst

"""Seeded randomness without global state.

All noise is drawn from an explicit ``torch.Generator`` (on CPU by convention) and then moved to
the target device, so a seed gives the same faces on CPU, CUDA and MPS.  Nothing here touches
``torch``'s, Python's or NumPy's global random state.
"""
from __future__ import annotations

import hashlib

import torch

__all__ = ["make_generator", "randn", "rand_scalar", "randint_scalar"]


def make_generator(seed: int, index: int | None = None, candidate: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``seed`` (and, per face, ``index``; per best-of-N candidate, ``candidate``).

    With ``index`` the seed is hashed with the index, so face ``i`` gets the same noise whatever
    batch it is processed in.  ``candidate`` ``c > 0`` adds a third key component, so the candidates of a face
    are independent draws that depend only on (seed, index, c); candidate 0 is the face's one draw of a
    restoration without candidates.
    """
    seed = int(seed)
    candidate = int(candidate)
    if candidate < 0:
        raise ValueError(f"candidate must be >= 0, got {candidate}")
    if candidate and index is None:
        raise ValueError("a candidate index needs a face index")
    if index is not None:
        key = f"vspbfr:{seed}:{int(index)}" + (f":candidate:{candidate}" if candidate else "")
        digest = hashlib.sha256(key.encode()).digest()
        seed = int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
    else:
        seed &= 0xFFFF_FFFF_FFFF_FFFF
    return torch.Generator(device="cpu").manual_seed(seed)


def randn(
    shape: tuple[int, ...] | list[int],
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device in float32, then moved and cast.

    ``generator=None`` draws from a fresh, randomly seeded CPU generator (non-reproducible, but it
    still leaves the global RNG untouched).
    """
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.seed()
    out = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return out.to(device=device if device is not None else out.device, dtype=dtype)


def rand_scalar(generator: torch.Generator | None) -> float:
    """One uniform draw in [0, 1) from ``generator``."""
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.seed()
    return float(torch.rand((), generator=generator, device=generator.device, dtype=torch.float64))


def randint_scalar(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    """One integer uniform in ``[low, high_inclusive]`` (Python ``random.randint`` semantics)."""
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.seed()
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator, device=generator.device))

"""Progress reporting and interruption through one callback.

The core calls ``callback(done, total, stage)`` after each unit of work and never catches what it
raises: a host raises from the callback to interrupt (ComfyUI's ``InterruptProcessingException``,
A1111's interrupted state, ``KeyboardInterrupt`` in the CLI).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["ProgressCallback", "Progress"]


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int, stage: str) -> None: ...


class Progress:
    """Counts units of work against a total and forwards each step to an optional callback."""

    def __init__(self, total: int, callback: ProgressCallback | Callable[[int, int, str], None] | None = None):
        self.total = max(int(total), 1)
        self.done = 0
        self.callback = callback

    def step(self, stage: str, units: int = 1) -> None:
        self.done = min(self.done + units, self.total)
        if self.callback is not None:
            self.callback(self.done, self.total, stage)

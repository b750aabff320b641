"""The one progress callback every stage takes, and the CLI's rich bar implements.

A stage calls ``progress(label, done, total)`` as work advances, with ``info`` for a short live figure
(a loss, a count); a library caller may pass None for silence.
"""

from __future__ import annotations

from typing import Optional, Protocol


class ProgressFn(Protocol):
    def __call__(self, label: str, done: int, total: int, info: str = "") -> None: ...


Progress = Optional[ProgressFn]

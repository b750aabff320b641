"""Where results go: checks made before any work starts, and signal-safe cleanup.

A command that trains for minutes must not discover at the end that its output cannot be
written, nor replace or delete one of its own inputs. These checks run first; writing itself
is atomic (models.write_json, models.save_model, report.write_atomic).
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from clip_unlearn.errors import ClipUnlearnError


def _resolved(path: Path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the spelled path instead
        return Path(os.path.abspath(Path(path).expanduser()))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _probe_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a throw-away file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ClipUnlearnError(f"{what}: cannot write in {folder} ({e.strerror or e}); choose a writable location") from None


def check_output_file(path: Path, inputs: Iterable[Optional[Path]], flag: str, also: Optional[Path] = None) -> None:
    """``path`` (and ``also``, a file written beside it) may be written: not an input, in a writable folder."""
    targets = [_resolved(p) for p in (path, also) if p is not None]
    for given in inputs:
        if given is None:
            continue
        src = _resolved(given)
        for t in targets:
            if t == src:
                raise ClipUnlearnError(f"{flag} {path} is also an input of this command ({given}); "
                                       "write the result to another file")
    if Path(path).is_dir():
        raise ClipUnlearnError(f"{flag} {path} is a folder; pass a file name such as result.json")
    _probe_writable(targets[0].parent, flag)


def check_output_dir(out: Path, inputs: Iterable[Optional[Path]], flag: str = "--out") -> None:
    """``out`` may be created or replaced: it names a folder, is writable, and is neither an input,
    nor inside one, nor a folder that holds one (``--overwrite`` would delete it)."""
    spelled = Path(out)
    if spelled.name in ("", ".", "..") or str(spelled).rstrip("/\\") in ("", ".", ".."):
        raise ClipUnlearnError(f"{flag} {out} does not name a new folder; pass a folder name, e.g. {flag} unlearned")
    target = _resolved(spelled)
    cwd = _resolved(Path.cwd())
    if _inside(cwd, target):
        raise ClipUnlearnError(f"{flag} {out} is the current folder or one above it; pass a new folder name, e.g. {flag} unlearned")
    for given in inputs:
        if given is None:
            continue
        src = _resolved(given)
        if _inside(target, src) or _inside(src, target):
            raise ClipUnlearnError(f"{flag} {out} is, contains or lies inside an input of this command ({given}); "
                                   "replacing it would destroy that input: choose another folder")
    if target.exists() and not target.is_dir():
        raise ClipUnlearnError(f"{flag} {out} is a file; pass a folder name")
    _probe_writable(target.parent, flag)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: every ``except BaseException`` cleanup runs, then exit 130."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """Turn SIGTERM (CI cancel, ``kill``, a container stop) into the same clean unwinding as SIGINT."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. embedded in a server): leave the default
        pass


class signals_deferred:
    """Hold SIGINT/SIGTERM back while a few renames that must not be separated run."""

    _SIGNALS = {signal.SIGINT, signal.SIGTERM}

    def __enter__(self) -> signals_deferred:
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGNALS) if hasattr(signal, "pthread_sigmask") else None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)

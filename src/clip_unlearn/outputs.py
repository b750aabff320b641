"""Where results go: atomic writing, CSV/JSON text, checks made before any work starts, and
signal-safe cleanup. Every file the tool writes goes through here (model folders through
models.save_model, which assembles them with these writers and swaps the folder in).

A command that trains for minutes must not discover at the end that its output cannot be
written, nor replace or delete one of its own inputs: the checks run first.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.errors import ClipUnlearnError


def write_bytes(path: Path, data: bytes, mode: Optional[int] = None) -> None:
    """Write atomically: a temporary file in the same folder, then a rename; ``mode`` e.g. 0o600 for secrets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, mode: Optional[int] = None) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, data: Any, mode: Optional[int] = None) -> None:
    write_text(path, json_text(data), mode)


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> str:
    """A header and one line per row; booleans as true/false, as JSON and most tools read them."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["true" if r.get(c) is True else "false" if r.get(c) is False else r.get(c, "") for c in columns])
    return buf.getvalue()


def _resolved(path: Path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the spelled path instead
        return Path(os.path.abspath(Path(path).expanduser()))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (symlinks resolved)."""
    return _inside(_resolved(path), _resolved(folder))


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
    """Hold SIGINT/SIGTERM back while a few renames that must not be separated run.

    The Python handlers are swapped for ones that only note the signal, and the noted signals are raised
    again once the old handlers are back. Blocking the signals with a thread mask is not enough: the
    kernel then delivers a process-wide signal to another thread (torch's OpenMP workers) and Python
    runs the handler in the main thread at once, between the renames."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> signals_deferred:
        self._caught: list[int] = []
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self._SIGNALS:
                self._old[s] = signal.signal(s, lambda signum, frame: self._caught.append(signum))
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(self._caught):
            signal.raise_signal(s)

"""The one user-facing exception type (docs/design.md §6).

Core modules raise :class:`ClipUnlearnError` with a single line that names the
problem and the fix; the CLI prints it in red on stderr and exits with ``code``.
"""

from __future__ import annotations


class ClipUnlearnError(Exception):
    """An expected failure caused by input or environment: shown as one line, exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # A user message is one line by contract; tracebacks belong to --verbose.
        super().__init__(" ".join(str(message).split()))


class ConfigError(ClipUnlearnError):
    """A flag value outside its allowed range (a usage error, exit code 2)."""

    exit_code = 2


class GateFailed(ClipUnlearnError):
    """The privacy gate failed: a name that must be forgotten is still exposed (exit code 3)."""

    exit_code = 3


def flag(name: str) -> str:
    """The command-line flag of a config field: ``clean_batch`` → ``--clean-batch``."""
    return "--" + name.replace("_", "-")


def check(ok: bool, name: str, requirement: str, value: object) -> None:
    """Raise the usage error that names field ``name``'s flag, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{flag(name)} {requirement} (got {value!r})")

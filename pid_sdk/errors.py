"""One error family for everything a user can get wrong.

Every message says what was received, what was expected and how to fix it, so the CLI can print it as is.
"""

from __future__ import annotations


class PiDError(Exception):
    """Base class of every error pid_sdk raises on purpose."""

    def __init__(self, what: str, *, received: object = None, expected: object = None, fix: str | None = None):
        self.what, self.received, self.expected, self.fix = what, received, expected, fix
        parts = [what]
        if received is not None:
            parts.append(f"  received: {received}")
        if expected is not None:
            parts.append(f"  expected: {expected}")
        if fix:
            parts.append(f"  fix: {fix}")
        super().__init__("\n".join(parts))


class InputError(PiDError):
    """A latent, text embedding or argument that the decoder cannot take."""


class CheckpointError(PiDError):
    """A weights file that cannot be read, trusted or matched to a model."""


class ConfigError(PiDError):
    """An unknown preset, latent space or inconsistent model dimensions."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs code execution to load, refused without an explicit trust flag."""


class NumericsError(PiDError):
    """A decode whose result is not finite: refused, never returned as an image of NaN."""


def counted(n: int, noun: str) -> str:
    """'1 entry', '3 entries', '2 checks': a count and its noun, for messages."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"

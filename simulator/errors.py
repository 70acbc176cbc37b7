"""The one error type for bad user input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Input a user wrote (a spec, a config, a flag, a file) is wrong; the message names what and what is allowed."""

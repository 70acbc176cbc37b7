"""The one error type for bad user input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

__all__ = ["InputError", "ServiceError"]


class InputError(ValueError):
    """Input a user wrote (a spec, a config, a flag, a file) is wrong; the message names what and what is allowed."""


class ServiceError(RuntimeError):
    """A service a command depends on (Ray, Redis, Prometheus) failed; the CLI prints one line, exits 1."""

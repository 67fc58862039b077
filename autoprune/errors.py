"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: unknown names, bad values, missing files or data.

    The command line prints ``error: <message>`` and exits with code 2; no traceback.
    """


class ConfigError(UserError):
    """A configuration key or value is wrong. The message names the key."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops as failed, never as completed."""

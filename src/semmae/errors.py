"""Exceptions for errors the user can fix.

Library code raises a subclass of :class:`SemmaeError` for bad input (a missing dataset, an invalid
config value, a mismatched part-map file, ...). The CLI turns these into a one-line message and a
non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SemmaeError(Exception):
    """Base class of user-facing errors: the message is one line that says what to fix."""


class ConfigError(SemmaeError, ValueError):
    """An unknown config key or an invalid config value."""


class DataError(SemmaeError):
    """A dataset that cannot be found, read or paired with a part-map file."""


class CheckpointError(SemmaeError):
    """A checkpoint that cannot be read or does not fit what it is used for."""


class RunDirError(SemmaeError):
    """An output directory that cannot be used as asked (non-empty without --resume, ...)."""


class NonFiniteLossError(SemmaeError):
    """Training produced a NaN/Inf loss or parameter; only finite state was ever checkpointed."""


class StageStopped(SemmaeError):
    """A pipeline or study stage stopped by a signal or a stop request, its checkpoint saved.

    Attributes:
        step: the step the stage's run stopped at.
        signum: the signal's number, -1 for a stop request.
    """

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stage stopped at step {step}; resume it with --resume")
        self.step, self.signum = step, signum


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which stops at a step boundary instead): raised like Ctrl-C's
    ``KeyboardInterrupt``, so every clean-up that Ctrl-C runs runs for it too; the command exits 143."""

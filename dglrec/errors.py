"""Errors that the CLI reports as one line, without a traceback.

Anything a user can cause by a bad file, recipe key or argument raises a
subclass of :class:`DglrecError`, or of :class:`data_prep.errors.RawDataError`
for raw data, whose message names the file, line or key. :data:`USER_ERRORS`
is what the CLI catches.
"""

from data_prep.errors import (  # noqa: F401  (re-exported: one place to import errors from)
    CacheError,
    ChecksumError,
    DataFormatError,
    DataSourceError,
    ProtocolError,
    RawDataError,
)


class DglrecError(Exception):
    """Base class for user-facing errors of dglrec itself."""


class ConfigError(DglrecError):
    """A recipe or an override is invalid; the message names the key."""


class RunError(DglrecError):
    """A tracked run cannot be resumed, evaluated or found."""


class RunInterrupted(KeyboardInterrupt):
    """A run was stopped by SIGINT or SIGTERM at a clean point and marked KILLED.

    A :class:`KeyboardInterrupt`, so that whatever catches Ctrl-C catches it too;
    it carries the run's id, so the message can give the real resume command.
    """

    def __init__(self, run_id: str | None, signal_name: str = "SIGINT"):
        super().__init__(run_id)
        self.run_id = run_id
        self.signal_name = signal_name

    def __str__(self) -> str:
        resume = f"dglrec fit --resume {self.run_id}" if self.run_id else "the same command"
        return (
            f"interrupted by {self.signal_name}: run {self.run_id} marked KILLED; every finished "
            f"epoch is checkpointed; continue with `{resume}`"
        )


USER_ERRORS = (DglrecError, RawDataError)

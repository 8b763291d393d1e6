"""Errors that the CLI reports as one line, without a traceback.

Anything a user can cause by a bad file, recipe key or argument raises a
subclass of :class:`DglrecError`, or of :class:`data_prep.errors.RawDataError`
for raw data, whose message names the file, line or key. :data:`USER_ERRORS`
is what the CLI catches.
"""

from data_prep.errors import (  # noqa: F401  (re-exported: one place to import errors from)
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


USER_ERRORS = (DglrecError, RawDataError)

"""Errors that the CLI reports as one line, without a traceback.

Anything a user can cause by a bad file, recipe key or argument raises a
subclass of :class:`DglrecError` whose message names the file, line or key.
"""


class DglrecError(Exception):
    """Base class for user-facing errors."""


class ConfigError(DglrecError):
    """A recipe or an override is invalid; the message names the key."""


class DataFormatError(DglrecError):
    """A raw data file is malformed; the message names the file and line."""


class ChecksumError(DglrecError):
    """A raw file does not match its published SHA-256; the message names it."""


class DataSourceError(DglrecError):
    """Raw data could not be found or fetched."""


class RunError(DglrecError):
    """A tracked run cannot be resumed, evaluated or found."""

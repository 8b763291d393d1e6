"""Errors of the raw-data builders: each names the file (and line) or the protocol value.

:mod:`data_prep` imports nothing from :mod:`dglrec`; ``dglrec.errors`` re-exports
these, and the CLI reports any :class:`RawDataError` as one line.
"""


class RawDataError(Exception):
    """Raw data cannot be used as documented; the message says where and why."""


class DataFormatError(RawDataError):
    """A raw data file is malformed; the message names the file and line."""


class ChecksumError(RawDataError):
    """A raw file does not match its published SHA-256; the message names it."""


class DataSourceError(RawDataError):
    """Raw data could not be found or fetched, or a processed cache entry is missing."""


class ProtocolError(RawDataError, ValueError):
    """A protocol value (split, negatives) is invalid; the message names its recipe key."""


class CacheError(DataSourceError):
    """A processed cache entry is truncated, altered or unreadable (it is rebuilt)."""

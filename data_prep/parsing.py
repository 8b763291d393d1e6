"""Line-oriented parsing of raw text files with errors that name file and line.

Every line is either used or the read fails naming ``file:line`` and why. What is
cleaned rather than refused is counted in the caller's ``cleaned`` dict (the
builders store it in the dataset's metadata, so it is printed and logged with
the run):

* a UTF-8 byte-order mark at the start of the file (``bom.<file>``), which would
  otherwise become part of the first id;
* CRLF line endings (``crlf_lines.<file>``; the released ``kg.txt`` uses CRLF);
  both endings parse identically;
* blank lines (skipped, not counted) and surrounding whitespace and double quotes
  of fields (stripped, documented).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from data_prep.errors import DataFormatError

LINE_END = re.compile(r"\r\n|\r|\n")
UTF8_BOM = b"\xef\xbb\xbf"


def finite_number(field: str) -> float:
    """A float that is neither NaN nor infinite (``float`` alone accepts both)."""
    value = float(field)
    if not math.isfinite(value):
        raise ValueError(field)
    return value


finite_number.expected = "finite number"


def rating(field: str) -> float:
    """A rating or play count: a finite number >= 0."""
    value = finite_number(field)
    if value < 0:
        raise ValueError(field)
    return value


rating.expected = "rating (a finite number >= 0)"


def tally(cleaned: dict | None, key: str, n: int = 1) -> None:
    """Add ``n`` to ``cleaned[key]`` (no-op without a dict, or for ``n == 0``)."""
    if cleaned is not None and n:
        cleaned[key] = cleaned.get(key, 0) + n


def read_columns(
    path: Path,
    converters: Sequence[Callable[[str], object]],
    sep: str = "\t",
    header: bool = False,
    encoding: str = "utf-8",
    cleaned: dict | None = None,
    min_rows: int = 0,
    line_numbers: list[int] | None = None,
) -> list[list]:
    """Read a delimited file into one list per column.

    Args:
        path: the file.
        converters: one callable per expected column (``int``, ``str``,
            :func:`rating`...); a line with another number of fields, or a field a
            converter rejects, raises :class:`DataFormatError` naming ``path:line``.
        sep: the field separator.
        header: skip the first line.
        encoding: text encoding of the file.
        cleaned: counts of what was cleaned (see the module docstring) are added here.
        min_rows: fewer data rows than this (an empty or header-only file) is an error.
        line_numbers: if given, the 1-based line number of each row is appended.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a directory, not a file") from None
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
        tally(cleaned, f"bom.{Path(path).name}")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid {encoding} text ({exc.reason})") from None
    tally(cleaned, f"crlf_lines.{Path(path).name}", text.count("\r\n"))
    columns: list[list] = [[] for _ in converters]
    n_fields = len(converters)
    n_rows = 0
    # Only "\r\n", "\n" and "\r" end lines: str.splitlines() would also split on
    # \x85, \x0c, \u2028..., which can occur inside ISO-8859-1 or UTF-8 fields.
    for lineno, line in enumerate(LINE_END.split(text), start=1):
        if header and lineno == 1:
            continue
        if not line.strip():
            continue
        fields = [f.strip().strip('"') for f in line.split(sep)]
        if len(fields) != n_fields:
            raise DataFormatError(
                f"{path}:{lineno}: expected {n_fields} fields separated by {sep!r}, "
                f"got {len(fields)}: {line[:80]!r}"
            )
        for column, convert, field in zip(columns, converters, fields, strict=True):
            try:
                column.append(convert(field))
            except ValueError:
                expected = getattr(convert, "expected", convert.__name__)
                raise DataFormatError(
                    f"{path}:{lineno}: field {field!r} is not a valid {expected}"
                ) from None
        n_rows += 1
        if line_numbers is not None:
            line_numbers.append(lineno)
    if n_rows < min_rows:
        after = " after its header" if header else ""
        raise DataFormatError(f"{path}: no data rows{after} (an empty file?)")
    return columns

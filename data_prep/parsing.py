"""Line-oriented parsing of raw text files with errors that name file and line.

Files may end lines in LF or CRLF (the released ``kg.txt`` uses CRLF); both parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from data_prep.errors import DataFormatError

LINE_END = re.compile(r"\r\n|\r|\n")


def read_columns(
    path: Path,
    converters: Sequence[Callable[[str], object]],
    sep: str = "\t",
    header: bool = False,
    encoding: str = "utf-8",
) -> list[list]:
    """Read a delimited file into one list per column.

    Args:
        path: the file.
        converters: one callable per expected column (``int``, ``float``, ``str``...);
            a line with another number of fields, or a field a converter rejects,
            raises :class:`DataFormatError` naming ``path:line``.
        sep: the field separator.
        header: skip the first line.
        encoding: text encoding of the file.
    """
    try:
        text = Path(path).read_bytes().decode(encoding)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid {encoding} text ({exc.reason})") from None
    columns: list[list] = [[] for _ in converters]
    n_fields = len(converters)
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
                raise DataFormatError(
                    f"{path}:{lineno}: field {field!r} is not a valid {convert.__name__}"
                ) from None
    return columns

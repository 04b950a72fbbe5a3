"""Reading the files collections come in, with errors that name the file, line, column and field.

Whole-file formats (JSON) fail loudly: a file that does not parse cannot be half-ingested.
Line formats (token files, CSV, JSONL) hand bad lines back to the caller, which reports them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from itmflow.errors import CollectionError, InputFileError


def read_bytes(path: Path, *, what: str = "file") -> bytes:
    """All bytes of ``path``; a missing or empty file is an :class:`InputFileError`."""
    if not path.is_file():
        raise InputFileError(f"{what} {path} does not exist or is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise InputFileError(f"{what} {path} is empty; give the file that holds the collection")
    return data


def load_json(path: Path, *, what: str = "JSON file") -> Any:
    """Parse a UTF-8 JSON file; syntax and encoding errors name the line and column."""
    data = read_bytes(path, what=what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputFileError(
            f"{path} line {line}: bytes that are not UTF-8 at offset {exc.start}; JSON must be UTF-8 — "
            "re-encode the file") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            f"{path} line {exc.lineno} column {exc.colno}: malformed JSON ({exc.msg})") from exc


def iter_lines(path: Path, *, what: str = "file") -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text) for each non-blank line; text is None where it is not UTF-8."""
    data = read_bytes(path, what=what)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def field(entry: Any, name: str, types: type | tuple[type, ...], where: str) -> Any:
    """``entry[name]`` checked to be one of ``types``; otherwise a CollectionError naming where/field."""
    if not isinstance(entry, dict):
        raise CollectionError(f"{where}: expected a JSON object, found {type(entry).__name__}")
    if name not in entry:
        raise CollectionError(f"{where}: required field {name!r} is missing")
    value = entry[name]
    if not isinstance(value, types) or isinstance(value, bool):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise CollectionError(f"{where}.{name}: expected {names}, found {type(value).__name__} {value!r:.60}")
    return value


def csv_rows(path: Path, *, what: str, report: Callable[[str, str, str, str], None]
             ) -> tuple[list[str], int, list[tuple[str, list[str]]]]:
    """Header columns (lower-cased), header line number and ``(where, cells)`` per data line.

    The delimiter is ``|`` when the header has more pipes than commas (Kaggle's Flickr30k file),
    else ``,``. Lines that are not UTF-8 go to ``report(kind, where, message, action)``.
    """
    lines = iter_lines(path, what=what)
    header_no, header = next(lines)
    if header is None:
        raise CollectionError(f"{path} line {header_no}: the header is not UTF-8")
    delimiter = "|" if header.count("|") > header.count(",") else ","
    columns = [c.strip().lower() for c in next(csv.reader([header], delimiter=delimiter))]
    rows = []
    for number, text in lines:
        where = f"{path.name} line {number}"
        if text is None:
            report("non_utf8", where, "line is not valid UTF-8", "line dropped")
            continue
        rows.append((where, next(csv.reader(io.StringIO(text), delimiter=delimiter), [])))
    return columns, header_no, rows


def column_index(columns: list[str], names: tuple[str, ...]) -> int | None:
    """Position of the first of ``names`` present in ``columns``."""
    return next((columns.index(n) for n in names if n in columns), None)

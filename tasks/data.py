"""Reading task data files: CSV with a header, JSON lines, plain lines.

Every malformed row is reported as `<file>:<line>: <why>`, so a bad line in a large file is found
at once; an empty split is reported with the setting that fills it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator


class DataError(ValueError):
    """A data file is missing, malformed, or leaves a split empty; one line that says what to do."""


def _lines(path: Path, task: str) -> Iterator[str]:
    """The file's lines as text, each decoded on its own: a byte that is not UTF-8 is reported on
    its own line (a text reader decodes whole blocks and would blame the block's first line)."""
    if not path.is_file():
        raise DataError(f"{task}: data file {path} not found")
    try:
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{task}: {path}:{line_no}: not UTF-8 text (byte {raw[err.start]:#04x} at "
                                    f"column {err.start + 1}); save the file as UTF-8") from None
    except OSError as err:
        raise DataError(f"{task}: cannot read data file {path}: {err.strerror}") from None


def read_csv(path: str | Path, columns: tuple[str, ...], task: str) -> list[dict[str, str]]:
    """Rows of a CSV file whose header holds `columns` (others are ignored), each value non-empty.

    Line numbers are those of the file (a quoted field may span lines: its row's first line)."""
    path = Path(path)
    reader = csv.reader(_lines(path, task))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{task}: {path} is empty; expected a header with {', '.join(columns)}") from None
    except csv.Error as err:
        raise DataError(f"{task}: {path}:1: {err}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{task}: {path}:1: header lacks column {', '.join(missing)} "
                        f"(expected {', '.join(columns)})")
    index = {c: header.index(c) for c in columns}
    rows = []
    line = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(f"{task}: {path}:{line}: {err}") from None
        if values:  # a blank line is no row
            if len(values) != len(header):
                raise DataError(f"{task}: {path}:{line}: {len(values)} fields, the header has {len(header)}")
            empty = [c for c in columns if not values[index[c]].strip()]
            if empty:
                raise DataError(f"{task}: {path}:{line}: empty {', '.join(empty)}")
            rows.append({c: values[index[c]].strip() for c in columns})
        line = reader.line_num + 1
    return rows


def read_jsonl(path: str | Path, keys: dict[str, type], task: str,
               check: Callable[[dict[str, Any]], str | None] | None = None) -> list[dict[str, Any]]:
    """Objects of a JSON-lines file, each with `keys` of the given types (blank lines skipped);
    `check` returns why an item is invalid, or None."""
    path = Path(path)
    items = []
    for line_no, line in enumerate(_lines(path, task), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{task}: {path}:{line_no}: invalid JSON: {err.msg}") from None
        if not isinstance(item, dict):
            raise DataError(f"{task}: {path}:{line_no}: expected a JSON object")
        for key, kind in keys.items():
            if key not in item:
                raise DataError(f"{task}: {path}:{line_no}: missing key {key!r}")
            if type(item[key]) is not kind:
                raise DataError(f"{task}: {path}:{line_no}: {key!r} should be {kind.__name__}, "
                                f"got {_short(item[key])}")
        why = check(item) if check else None
        if why:
            raise DataError(f"{task}: {path}:{line_no}: {why}")
        items.append(item)
    return items


def read_lines(path: str | Path, limit: int, task: str) -> list[str]:
    """The first `limit` non-empty lines of a text file, stripped."""
    path = Path(path)
    lines = []
    for line in _lines(path, task):
        if line.strip():
            lines.append(line.strip())
            if len(lines) == limit:
                break
    return lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def require(split: str, examples: list, task: str, fix: str) -> list:
    """`examples`, or a DataError naming the empty split and the setting that fills it."""
    if not examples:
        raise DataError(f"{task}: the {split} split is empty; {fix}")
    return examples


def read_objects(path: str | Path, task: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) for each item of a JSON file holding a list of objects, or of a JSON-lines
    file (one object a line, blank lines skipped), told apart by the first character; the line is
    where the item starts, so that a check of the item can name it as `<file>:<line>`."""
    path = Path(path)
    text = "".join(_lines(path, task))  # a byte that is not UTF-8 is named with its line
    decoder, items = json.JSONDecoder(), []

    def line_of(position: int) -> int:
        return text.count("\n", 0, position) + 1

    def decode(position: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise DataError(f"{task}: {path}:{err.lineno}: invalid JSON: {err.msg}") from None

    def skip(position: int, also: str = "") -> int:
        while position < len(text) and (text[position].isspace() or text[position] in also):
            position += 1
        return position

    position = skip(0)
    if position == len(text):
        raise DataError(f"{task}: {path} is empty; expected a JSON list of objects or JSON lines")
    if text[position] == "[":  # one JSON list: its items one by one, to know where each starts
        position = skip(position + 1)
        while position < len(text) and text[position] != "]":
            start = position
            item, position = decode(position)
            items.append((line_of(start), item))
            position = skip(position)
            if position < len(text) and text[position] == ",":
                position = skip(position + 1)
            elif position < len(text) and text[position] != "]":
                raise DataError(f"{task}: {path}:{line_of(position)}: invalid JSON: expected ',' or ']'")
        if position == len(text):
            raise DataError(f"{task}: {path}:{line_of(position)}: invalid JSON: the list is not closed by ']'")
        if skip(position + 1) != len(text):
            raise DataError(f"{task}: {path}:{line_of(skip(position + 1))}: invalid JSON: text after the list")
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append((line_no, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{task}: {path}:{line_no}: invalid JSON: {err.msg}") from None
    for line_no, item in items:
        if not isinstance(item, dict):
            raise DataError(f"{task}: {path}:{line_no}: expected a JSON object, got {json.dumps(item)[:60]}")
    return items

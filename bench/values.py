"""One setting's value: parsed from text by its field's type, checked against its range; a mistake is a one-line ConfigError."""
from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

from bench.ranges import Range


SHOWN = 60
"""Characters of a value that an error message shows; a longer one is cut, with '...'."""
LONGEST_WORD = 200
"""A ConfigError cuts any run of non-space characters longer than this (a value echoed by a task's
own check, say), so that a message stays one readable line whoever wrote it."""


def shown(value: Any) -> str:
    """repr(value) for an error message, cut to SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _cut(word: re.Match) -> str:
    return word[0][:LONGEST_WORD - 3] + "..."


class ConfigError(ValueError):
    """A bad setting; the message is one line that names the key or file."""

    def __init__(self, message: str):
        one_line = re.sub(r"\s*\n\s*", " ", str(message))
        super().__init__(re.sub(rf"\S{{{LONGEST_WORD + 1},}}", _cut, one_line))


# --- types ----------------------------------------------------------------------------------


def optional_inner(tp: Any) -> Any | None:
    """X for `X | None` (or Optional[X]); None for any other type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def type_name(tp: Any) -> str:
    inner = optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} or null"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        return f"list of {type_name(item)}"
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


_INT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_FLOAT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)


def _parse_text(text: str, tp: Any) -> Any:
    """A command-line string as a value of type `tp`; ValueError if it is not one."""
    inner = optional_inner(tp)
    if inner is not None:
        return None if text in ("null", "None", "~") else _parse_text(text, inner)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        body = text.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError
        parts = [p.strip() for p in body[1:-1].split(",")]
        return [] if parts == [""] else [_parse_text(p, item) for p in parts]
    if typing.get_origin(tp) is typing.Literal:
        choices = {str(c): c for c in typing.get_args(tp)}
        return choices[text]
    if tp is bool:
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ValueError
        return lowered == "true"
    if tp is int:  # int() and float() also take '٣', '1_000' and 'inf'; a setting takes ASCII digits
        if not _INT.fullmatch(text):
            raise ValueError
        return int(text)
    if tp is float:
        if not _FLOAT.fullmatch(text):
            raise ValueError
        return float(text)
    if tp is str:
        # Quotes let a value keep a leading/trailing space or look like null: name='null'.
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    raise TypeError(f"unsupported field type {tp!r}")


def _check_value(value: Any, tp: Any) -> Any:
    """A YAML or Python value checked (and, for int -> float, converted) against `tp`."""
    if isinstance(value, str) and tp is not str:
        # PyYAML reads `1e-4` (no dot) as a string, so strings get the command-line parser.
        return _parse_text(value, tp)
    inner = optional_inner(tp)
    if inner is not None:
        return None if value is None else _check_value(value, inner)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_check_value(v, item) for v in value]
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is tp:
        return value
    raise ValueError


def convert(key: str, value: Any, tp: Any) -> Any:
    try:
        return _check_value(value, tp)
    except (ValueError, KeyError):
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {shown(value)}") from None


# --- ranges -----------------------------------------------------------------------------------

def check_range(key: str, value: Any, rng: Range | None) -> None:
    """ConfigError unless `value` (a number, a list of numbers, or None) lies in `rng`."""
    if rng is None or value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            what = "a finite number" + ("" if rng.describe() == "any number" else f" {rng.describe()}")
            raise ConfigError(f"{key}: expected {what}, got {item}")
        if not rng.contains(item):
            raise ConfigError(f"{key}: expected {rng.describe()}, got {shown(item)}")

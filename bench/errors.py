"""`ConfigError`, a bad setting as one line, and the helpers that name a value or a type in such a line."""
from __future__ import annotations

import re
import types
import typing
from typing import Any


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


# --- type names ------------------------------------------------------------------------------


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

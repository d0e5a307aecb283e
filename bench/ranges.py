"""The range of a numeric setting, declared as an interval next to its help text.

`field(default=..., metadata={"help": ..., "range": "[1, inf)"})`: square brackets include a bound,
round ones exclude it, and an infinite bound is always open, so inf and nan are in no range. The
convention is described for method authors in methods/base.py; bench/config.py checks every value
against its field's range and shows it in `--help`.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

_BOUND = r"\s*(-inf|inf|[+-]?[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*"
_INTERVAL = re.compile(rf"([\[(]){_BOUND},{_BOUND}([\])])", re.ASCII)


def _bound(text: str) -> int | float:
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)


@dataclass(frozen=True)
class Range:
    """The values a numeric field allows, declared as an interval in its metadata: `"[1, inf)"`
    (at least 1), `"(0, inf)"` (above 0), `"[0, 1]"`, `"(-inf, inf)"` (any finite number).
    Infinite bounds are open, so inf and nan are never in a range."""

    text: str
    low: int | float
    high: int | float
    low_open: bool
    high_open: bool

    @staticmethod
    @functools.cache
    def parse(text: str) -> Range:
        match = _INTERVAL.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"range {text!r} is not an interval like '[1, inf)', '(0, 1]' or '(-inf, inf)'")
        opening, low, high, closing = match.groups()
        rng = Range(text.strip(), _bound(low), _bound(high), opening == "(", closing == ")")
        if (math.isinf(rng.low) and not rng.low_open) or (math.isinf(rng.high) and not rng.high_open):
            raise ValueError(f"range {text!r}: an infinite bound is open: '(' or ')'")
        if rng.low == math.inf or rng.high == -math.inf or not (
                rng.low < rng.high or (rng.low == rng.high and not rng.low_open and not rng.high_open)):
            raise ValueError(f"range {text!r} holds no value")
        return rng

    def contains(self, value: int | float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below  # False for nan

    def describe(self) -> str:
        """For an error message: 'at least 1', 'above 0', 'in [0, 1]', 'any number'."""
        if math.isinf(self.low) and math.isinf(self.high):
            return "any number"
        if math.isinf(self.high):
            return f"above {self.low}" if self.low_open else f"at least {self.low}"
        if math.isinf(self.low):
            return f"below {self.high}" if self.high_open else f"at most {self.high}"
        return f"in {self.text}"

    def symbol(self) -> str:
        """For --help after the type: '≥ 1', '> 0', 'in [0, 1]', '' for any number."""
        if math.isinf(self.low) and math.isinf(self.high):
            return ""
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '≥'} {self.low}"
        if math.isinf(self.low):
            return f"{'<' if self.high_open else '≤'} {self.high}"
        return f"in {self.text}"

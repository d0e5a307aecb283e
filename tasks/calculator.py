"""The arithmetic task's calculator: one bounded `a + b` or `a - b` per call, and chain values.

The tool (`calculate`) is capability-limited as in the paper (`limit_capability: 2`): one binary
operation per call. A tool that evaluated whole chains would let a policy copy the question
(`" 3 + 5 - 8 - 8 - 7 ="`) and be handed the answer, which the base LM's reward then prefers to
step-by-step work; and longer questions would be no harder, against the point of the paper's
out-of-distribution split. Why not reuse the reference's tool: it `eval()`s whatever text the
policy wrote before `=`, so a sample can run code or hang the process (`9**9**9`), and its limiter
keeps only the signed last operand of a chain of three or more (`"6 - 0 - 4"` gives -4; paper.md
section 5, defect 1). Here a hand-written parser accepts only `[-]int (+|- int)*`; `chain_value`
evaluates a question's whole chain left to right (data checks), `calculate` one operation.
"""
from __future__ import annotations

MAX_CHARS = 64
MAX_OPERANDS = 16
MAX_MAGNITUDE = 10**9

_DIGITS = frozenset("0123456789")  # ASCII only: str.isdigit() would accept other scripts' digits
_SPACES = frozenset(" \t\r\n")
_OPERATORS = frozenset("+-")


def _tokens(expr: str) -> list[str] | None:
    """Split into ASCII integers and operators; None on any other character."""
    tokens: list[str] = []
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch in _SPACES:
            i += 1
        elif ch in _OPERATORS:
            tokens.append(ch)
            i += 1
        elif ch in _DIGITS:
            start = i
            while i < len(expr) and expr[i] in _DIGITS:
                i += 1
            tokens.append(expr[start:i])
        else:
            return None
    return tokens


def calculate(expr: str) -> int | None:
    """The tool: the value of exactly one binary operation, `"5 + 9"` (14) or `"-4 + 3"` (-1); None
    for a chain (`"3 + 5 - 8"`), a lone number or anything `chain_value` refuses. Never raises."""
    tokens = _tokens(expr) if isinstance(expr, str) and len(expr) <= MAX_CHARS else None
    if not tokens:
        return None
    operators = tokens[2::2] if tokens[0] == "-" else tokens[1::2]
    return chain_value(expr) if len(operators) == 1 else None


def chain_value(expr: str) -> int | None:
    """Value of a left-to-right chain like `"6 - 0 - 4"` (2) or `"-4 + 3"` (-1), else None.

    Only the first operand may carry a unary minus. Returns None for malformed input, input
    longer than MAX_CHARS, more than MAX_OPERANDS operands, or any operand or partial result
    above MAX_MAGNITUDE in absolute value. Never raises.
    """
    if not isinstance(expr, str) or len(expr) > MAX_CHARS:
        return None
    tokens = _tokens(expr)
    if not tokens:
        return None
    sign = 1
    if tokens[0] == "-":
        sign, tokens = -1, tokens[1:]
    # Expected shape after the optional sign: number (operator number)*, i.e. odd length.
    if len(tokens) % 2 == 0 or len(tokens) // 2 + 1 > MAX_OPERANDS:
        return None
    numbers, operators = tokens[0::2], tokens[1::2]
    if any(n[0] not in _DIGITS for n in numbers) or any(op not in _OPERATORS for op in operators):
        return None
    total = sign * int(numbers[0])
    if abs(total) > MAX_MAGNITUDE:
        return None
    for op, number in zip(operators, numbers[1:]):
        operand = int(number)
        if operand > MAX_MAGNITUDE:
            return None
        total = total + operand if op == "+" else total - operand
        if abs(total) > MAX_MAGNITUDE:
            return None
    return total

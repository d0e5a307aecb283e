"""The calculator: one binary operation per call; question chains; bounds; junk gives None without raising."""
import random

import pytest

from tasks.arithmetic import calculator_output
from tasks.calculator import MAX_CHARS, MAX_MAGNITUDE, MAX_OPERANDS, calculate, chain_value


@pytest.mark.parametrize("expr, value", [
    ("6 - 0 - 4", 2),  # the reference limiter gives -4 here (paper.md section 5, defect 1)
    ("5 + 9 - 3 + 8", 19),
    ("7", 7),
    ("-4 + 3", -1),
    ("- 4 - 3", -7),
    ("  1+2 -3 ", 0),
    ("0 - 9 - 9 - 9 - 9", -36),
    ("12 + 30", 42),
])
def test_values(expr, value):
    assert chain_value(expr) == value


@pytest.mark.parametrize("expr", [
    "", "   ", "-", "+", "1 +", "+ 1", "1 + + 2", "5 - -3", "--4", "1 2", "1 * 2", "8 / 2",
    "__import__('os')", "9**9**9", "1e5", "0x10", "1_000", "(1 + 2)", "1.5 + 2",
    "\u0665 + 1",  # ARABIC-INDIC DIGIT FIVE: str.isdigit() is True, int() accepts it
    "\uff11 + 1",  # FULLWIDTH DIGIT ONE
    "1 + 2 = 3", "1, 2",
])
def test_malformed_is_none(expr):
    assert chain_value(expr) is None


def test_non_string_is_none():
    assert chain_value(None) is None
    assert chain_value(12) is None


def test_length_bound():
    assert chain_value("1" * 10_000) is None
    assert chain_value(" " * (MAX_CHARS - 1) + "1") == 1
    assert chain_value(" " * MAX_CHARS + "1") is None


def test_operand_count_bound():
    assert chain_value(" + ".join(["1"] * MAX_OPERANDS)) == MAX_OPERANDS
    assert chain_value(" + ".join(["1"] * (MAX_OPERANDS + 1))) is None


def test_magnitude_bound():
    assert chain_value(str(MAX_MAGNITUDE)) == MAX_MAGNITUDE
    assert chain_value(f"-{MAX_MAGNITUDE}") == -MAX_MAGNITUDE
    assert chain_value(str(MAX_MAGNITUDE + 1)) is None
    assert chain_value(f"-{MAX_MAGNITUDE + 1}") is None
    assert chain_value(f"1 + {MAX_MAGNITUDE + 1} - 5") is None  # an operand over the bound
    assert chain_value(f"{MAX_MAGNITUDE} + 1 - 5") is None  # a partial result over the bound
    assert chain_value(f"-{MAX_MAGNITUDE} - 1") is None


def test_fuzz_never_raises():
    rng = random.Random(0)
    alphabet = "0123456789+-*/ ()=.,eEx_'\"\n\t" + "\u0665\uff11\x00é"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        value = chain_value(text)
        assert value is None or (isinstance(value, int) and abs(value) <= MAX_MAGNITUDE)


@pytest.mark.parametrize("expr, value", [("5 + 9", 14), ("-4 + 3", -1), ("- 4 - 3", -7), ("0 - 9", -9), ("12 + 30", 42)])
def test_the_tool_does_one_binary_operation(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr", [
    "3 + 5 - 8",  # a chain: copying the question would give its answer (the paper's tool cannot)
    "5 + 9 - 3 + 8", "9**9", "7", "-7", "5 +", "__import__('os')", "1 * 2",
])
def test_the_tool_refuses_anything_but_one_binary_operation(expr):
    assert calculate(expr) is None


def test_copying_the_question_inserts_nothing():
    assert calculator_output(" 3 + 5 - 8 - 8 - 7 =") is None
    assert calculator_output(" 3 + 5 =") == " 8"
    assert calculator_output(" 3 + 5 = 8, 8 - 8 =") == " 0"
    assert calculator_output(" 3 + 5 = 8, 8 - 8 - 7 =") is None


def test_the_fuzzed_tool_agrees_with_the_chain_on_two_operands():
    rng = random.Random(1)
    alphabet = "0123456789+- "
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        value = calculate(text)
        if value is not None:
            assert value == chain_value(text) and text.replace("-", "+").count("+") in (1, 2)

"""What every task provides to the shared engine and to the methods.

A task is text in, text out: it owns its data, prompts, tool and answer parsing, and knows
nothing about models. The engine turns its strings into tokens; methods never see task internals
beyond this interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class Example:
    """One query. `rationale` is the latent Z when the data has one (worked examples)."""

    query: str  # the question itself, e.g. "5 + 9 - 3 + 8"
    answer: str  # the hidden answer, e.g. "19"; never shown to the policy
    rationale: str | None = None  # e.g. " 5 + 9 = 14, 14 - 3 = 11, 11 + 8 = 19"


@dataclass(frozen=True)
class EvalSplit:
    name: str  # e.g. "test_3op"
    examples: list[Example]
    in_distribution: bool


class Task(Protocol):
    name: str

    # --- data -----------------------------------------------------------------------------
    def train_examples(self) -> list[Example]:
        """Queries the methods train on (answers used only by the reward)."""

    def demonstrations(self) -> list[Example]:
        """Worked examples with rationales (SFT data, few-shot prompts)."""

    def validation_examples(self) -> list[Example]:
        """Held-out queries for sweep objectives; never a test query."""

    def eval_splits(self) -> list[EvalSplit]:
        """Test splits, each marked in- or out-of-distribution."""

    # --- text the engine needs ----------------------------------------------------------------
    def policy_prompt(self, ex: Example) -> str:
        """X as the policy sees it; the sample Z continues this string."""

    def reward_prompt(self, ex: Example) -> str:
        """Context of the reward LM (may hold few-shot demonstrations); Z continues it too."""

    def observation(self, ex: Example) -> str:
        """Y, appended after Z when scoring the reward log p_base(Z, Y | reward prompt)."""

    allowed_chars: str | None
    """Characters the policy may emit (the engine masks other tokens), or None for any."""

    stop_on_newline: bool
    """Whether a newline ends a sample (besides EOS)."""

    min_actions: int
    max_actions: int

    def tool(self, generated: str) -> str | None:
        """Called after every policy token with the text generated so far.

        Returns text the environment inserts right now (its tokens are not policy actions),
        or None. Must never raise.
        """

    def segments(self, rationale: str) -> list[tuple[str, bool]]:
        """Split a full rationale (tool outputs included) into (text, is_tool_output) pieces,
        so that demonstrations and replayed samples keep tool tokens out of the actions."""

    def extract_answer(self, sample: str) -> str | None:
        """The answer a sample commits to, or None."""


ToolFn = Callable[[str], "str | None"]

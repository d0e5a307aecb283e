"""What every task provides to the shared engine and to the methods.

A task is text in, text out: it owns its data, prompts, tool and answer parsing, and knows
nothing about models. The engine turns its strings into tokens; methods never see task internals
beyond this interface. `tasks.spec.SpecTask` implements the prompts, token rules and metrics from
the task's YAML file (tasks/<name>.yaml), so a task module adds only its data and answer logic.
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
    given: str | None = None  # visible data besides the query, e.g. a story's ending in infilling


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

    tool_trigger: str | None
    """None: the task has no tool, and the engine never asks it. Else text that every token after
    which `tool` can insert something contains (arithmetic: "="; "" for a tool that may answer
    after any token): the engine asks the tool only after such tokens, so that rows are not decoded
    after every token."""

    def tool(self, generated: str) -> str | None:
        """Called after every policy token holding `tool_trigger` with the text generated so far.

        Returns text the environment inserts right now (its tokens are not policy actions),
        or None. Must never raise.
        """

    def segments(self, rationale: str) -> list[tuple[str, bool]]:
        """Split a full rationale (tool outputs included) into (text, is_tool_output) pieces,
        so that demonstrations and replayed samples keep tool tokens out of the actions."""

    def extract_answer(self, sample: str) -> str | None:
        """The answer a sample commits to, or None. For a task with `choices`, the answer of a
        sample is `extract_answer` of the observation the base LM prefers after it."""

    # --- optional members (the engine reads them with these defaults when a task lacks them) ---
    metrics: tuple[str, ...]
    """Metric names the evaluation reports (each in methods/engine/metrics.py METRICS);
    default: every metric the evaluation computes for free-form answers."""

    terminator_texts: tuple[str, ...]
    """Token texts that end a sample instead of EOS, e.g. (".",) for one sentence; the sample
    excludes the terminator, and EOS is then not an action. Default (): EOS."""

    banned_token_texts: frozenset[str]
    """Exact token texts the policy may never emit (besides `allowed_chars`). Default: none."""

    def choices(self, ex: Example) -> list[str] | None:
        """Candidate observations Y (observation(ex) among them), or None for a free-form task.

        The engine scores every candidate after every state in its one-pass reward. The reward
        is that of observation(ex), plus `wrong_choice_penalty` at states after which the base
        LM prefers another candidate; a sample's answer is that of its preferred candidate."""

    wrong_choice_penalty: float
    """Added to the tempered log R (after the reward temperature) of a state whose preferred
    candidate is not observation(ex). Default 0."""

    def seed_prompt(self, ex: Example) -> str | None:
        """Text after which the frozen base LM samples replay-buffer seeds for `ex` (it may show the
        answer, e.g. SUBJ's `... This review is {label} because it is`), or None: the buffer is
        seeded with the demonstrations' rationales."""

    seed_rationales: int
    """Seeds sampled after `seed_prompt` per training example (default 0: none)."""

    tie_break: str | None
    """The answer that wins a tie, between candidates and in the majority vote (default: the
    answer seen first)."""

    embedding_model: str | None
    """Folder of the sentence encoder for the embedding metrics (default: MiniLM's wheel)."""


ToolFn = Callable[[str], "str | None"]


def policy_demonstration(task: Task, prompt: str, ex: Example) -> str:
    """A worked example as a policy prompt shows it: `prompt`, the rationale, the observation
    when the policy could write it, and a newline.

    An observation with characters outside the task's `allowed_chars` (arithmetic's ". The answer
    is 14.") is left out: shown, it teaches a continuation the token rules forbid, so a base model
    that follows its demonstrations runs on to `max_actions` instead of stopping (the reward
    prompt keeps it: log R scores Z followed by Y)."""
    observation = task.observation(ex)
    if task.allowed_chars is not None and any(c not in task.allowed_chars for c in observation):
        observation = ""
    return f"{prompt}{ex.rationale}{observation}\n"

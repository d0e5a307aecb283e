"""A task's YAML file (`tasks/<name>.yaml`): its prompts, token rules, metric list and data files.

The fields follow lm-evaluation-harness task files: `task`, `version`, `description`, prompt
templates, `metrics` (the names the evaluation reports; each metric's direction is declared once,
in methods/engine/metrics.py), plus `generation` (what the policy may emit and what ends a
sample), `data` (where the task's files are) and `method_defaults` (the paper's method settings
for this task, e.g. its reward-temperature schedule; bench/config.py applies each to every method
whose Config has the field, above the dataclass defaults and below the scale preset). The task's
own settings, with their defaults and help, are its module's `Config` dataclass. A task module
reads its file once at import; adding a task is one module, one YAML file and one line in
`tasks/__init__.py`.

Templates are `str.format` strings over an example's visible fields `{query}` and `{given}`; only
`observation` and the optional `seed_prompt` (from which the base LM samples replay-buffer seeds,
never a context of the policy or the reward) may also use the hidden `{answer}`, so a prompt
cannot leak it by construction.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tasks.base import Example

TASKS_DIR = Path(__file__).resolve().parent
PROMPT_FIELDS = frozenset({"query", "given"})  # what the policy and the reward prompt may show
OBSERVATION_FIELDS = PROMPT_FIELDS | {"answer"}
_KEYS = {"task", "version", "description", "policy_prompt", "reward_prompt", "observation",
         "generation", "metrics", "data", "method_defaults", "tie_break", "seed_prompt"}
_GENERATION_KEYS = {"allowed_chars", "stop_on_newline", "terminators", "banned_tokens"}


class TaskSpecError(ValueError):
    """A task YAML file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TaskSpec:
    task: str
    version: int
    description: str
    policy_prompt: str
    reward_prompt: str
    observation: str
    allowed_chars: str | None  # None: any character
    stop_on_newline: bool
    terminators: tuple[str, ...]  # token texts that end a sample; empty: EOS
    banned_tokens: frozenset[str]  # token texts the policy may never emit
    metrics: tuple[str, ...]  # metric names, each declared (with its direction) in methods/engine/metrics.py
    data: dict[str, Any]
    method_defaults: dict[str, Any]  # method Config field -> this task's value (checked in bench/config.py)
    tie_break: str | None  # the answer that wins a tied majority vote
    seed_prompt: str | None  # the base LM samples replay-buffer seeds after it; None: seed from demonstrations
    path: Path


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def render(template: str, ex: Example) -> str:
    """The template filled with the example's fields (`given` is '' when the example has none)."""
    return template.format(query=ex.query, given=ex.given or "", answer=ex.answer)


def _error(path: Path, where: str, why: str) -> TaskSpecError:
    return TaskSpecError(f"tasks/{path.name}: {where}: {why}")


def _mapping(path: Path, value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(path, where, f"expected a mapping, got {value!r}")
    return value


def _template(path: Path, raw: dict[str, Any], key: str, allowed: frozenset[str]) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise _error(path, key, f"expected a template string, got {value!r}")
    try:
        names = template_fields(value)
    except ValueError as err:
        raise _error(path, key, f"not a format string: {err}") from None
    if not names <= allowed:
        raise _error(path, key, f"uses {', '.join(sorted(names - allowed))}; allowed fields: "
                                f"{', '.join(sorted(allowed))}")
    return value


def _metrics(path: Path, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _error(path, "metrics", "expected a non-empty list of metric names")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise _error(path, f"metrics[{i}]", f"expected a metric name (its direction is declared in "
                                                f"methods/engine/metrics.py), got {item!r}")
    if len(set(value)) != len(value):
        raise _error(path, "metrics", "a metric is listed twice")
    return tuple(value)


def _text_list(path: Path, value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _error(path, where, f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _method_defaults(path: Path, value: Any) -> dict[str, Any]:
    """Field -> plain value; which fields exist is the methods' business (tasks import no method)."""
    out = _mapping(path, value, "method_defaults")
    for key, item in out.items():
        if not isinstance(key, str) or isinstance(item, (dict, list)) or item is None:
            raise _error(path, f"method_defaults.{key}", f"expected a number, string or boolean, got {item!r}")
    return out


def parse_spec(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskSpecError(f"tasks/{path.name}: invalid YAML: {' '.join(str(err).split())}") from None
    raw = _mapping(path, raw, "top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _error(path, "top level", f"unknown key {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    if raw.get("task") != path.stem:
        raise _error(path, "task", f"must be the file's name {path.stem!r}, got {raw.get('task')!r}")
    if type(raw.get("version")) is not int:
        raise _error(path, "version", f"expected an integer, got {raw.get('version')!r}")
    if not isinstance(raw.get("description"), str) or not raw["description"].strip():
        raise _error(path, "description", "expected one line of text")
    generation = _mapping(path, raw.get("generation"), "generation")
    unknown = sorted(set(generation) - _GENERATION_KEYS)
    if unknown:
        raise _error(path, "generation", f"unknown key {', '.join(unknown)}; allowed: "
                                         f"{', '.join(sorted(_GENERATION_KEYS))}")
    allowed_chars = generation.get("allowed_chars")
    if allowed_chars is not None and (not isinstance(allowed_chars, str) or not allowed_chars):
        raise _error(path, "generation.allowed_chars", "expected a non-empty string or null")
    stop_on_newline = generation.get("stop_on_newline", False)
    if not isinstance(stop_on_newline, bool):
        raise _error(path, "generation.stop_on_newline", f"expected true or false, got {stop_on_newline!r}")
    tie_break = raw.get("tie_break")
    if tie_break is not None and not isinstance(tie_break, str):
        raise _error(path, "tie_break", f"expected an answer string or null, got {tie_break!r}")
    return TaskSpec(
        task=raw["task"], version=raw["version"], description=raw["description"].strip(),
        policy_prompt=_template(path, raw, "policy_prompt", PROMPT_FIELDS),
        reward_prompt=_template(path, raw, "reward_prompt", PROMPT_FIELDS),
        observation=_template(path, raw, "observation", OBSERVATION_FIELDS),
        allowed_chars=allowed_chars, stop_on_newline=stop_on_newline,
        terminators=_text_list(path, generation.get("terminators"), "generation.terminators"),
        banned_tokens=frozenset(_text_list(path, generation.get("banned_tokens"), "generation.banned_tokens")),
        metrics=_metrics(path, raw.get("metrics")),
        data=_mapping(path, raw.get("data"), "data"),
        method_defaults=_method_defaults(path, raw.get("method_defaults")),
        tie_break=tie_break,
        seed_prompt=_template(path, raw, "seed_prompt", OBSERVATION_FIELDS) if "seed_prompt" in raw else None,
        path=path)


@lru_cache(maxsize=None)
def load_spec(name: str) -> TaskSpec:
    """`tasks/<name>.yaml`, parsed and checked (once per process)."""
    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise TaskSpecError(f"tasks/{name}.yaml not found: every task needs its YAML file")
    return parse_spec(path)


class SpecTask:
    """Task protocol members read from the task's YAML file: prompts, token rules, metrics, tie
    break. A task module subclasses it, sets `spec = load_spec(<name>)` and adds its data and
    answer logic; a task without a tool or candidates keeps the defaults here."""

    spec: TaskSpec
    wrong_choice_penalty = 0.0
    seed_rationales = 0
    embedding_model: str | None = None
    tool_trigger: str | None = None  # no tool

    def _take_config(self, config) -> None:
        """What every task does first with its (already checked) Config: keep it, and take the
        action bounds from it."""
        self.config = config
        self.min_actions, self.max_actions = config.min_actions, config.max_actions

    @property
    def name(self) -> str:
        return self.spec.task

    @property
    def allowed_chars(self) -> str | None:
        return self.spec.allowed_chars

    @property
    def stop_on_newline(self) -> bool:
        return self.spec.stop_on_newline

    @property
    def terminator_texts(self) -> tuple[str, ...]:
        return self.spec.terminators

    @property
    def banned_token_texts(self) -> frozenset[str]:
        return self.spec.banned_tokens

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.spec.metrics

    @property
    def tie_break(self) -> str | None:
        return self.spec.tie_break

    def policy_prompt(self, ex: Example) -> str:
        return render(self.spec.policy_prompt, ex)

    def reward_prompt(self, ex: Example) -> str:
        return render(self.spec.reward_prompt, ex)

    def observation(self, ex: Example) -> str:
        return render(self.spec.observation, ex)

    def seed_prompt(self, ex: Example) -> str | None:
        return render(self.spec.seed_prompt, ex) if self.spec.seed_prompt is not None else None

    def choices(self, ex: Example) -> list[str] | None:
        return None

    def tool(self, generated: str) -> str | None:
        return None

    def segments(self, rationale: str) -> list[tuple[str, bool]]:
        return [(rationale, False)] if rationale else []

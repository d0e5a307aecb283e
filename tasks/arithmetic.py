"""Integer arithmetic with a calculator tool (paper section 4.4; notes: paper.md section 3.5).

X = `Question: 5 + 9 - 3 + 8 = ? Answer:`; the policy writes steps like ` 5 + 9 =` and the
calculator inserts ` 14` after each `=`; Y = `. The answer is 19.`. Questions come from a seeded
generator whose splits never share a question, or from the paper's files (which do: paper.md
section 5, defect 5) for comparison with its numbers. Prompts, token rules, metric names and file
names are in tasks/arithmetic.yaml; the settings, with their defaults, in `Config`.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tasks.base import EvalSplit, Example, policy_demonstration
from tasks.calculator import calculate, chain_value
from tasks.spec import SpecTask, load_spec

SPEC = load_spec("arithmetic")
SOURCES = ("generated", "reference")
REFERENCE_DIR = SPEC.data["reference_dir"]
REFERENCE_DEMOS = SPEC.data["reference_demos"]
REFERENCE_TRAIN = SPEC.data["reference_train"]
# split name -> (file, operand count, in distribution)
TEST_SPLITS = {split: tuple(entry) for split, entry in SPEC.data["reference_tests"].items()}

_QUESTION = re.compile(r"Question: (.+) = \? Answer:")
_LEADING_INT = re.compile(r"[ \t]*([+-]?[0-9]+)")  # [0-9], not \d: \d also matches other scripts
_INT = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")


@dataclass
class Config:
    source: str = field(default='generated', metadata={
        "help": "'generated': seeded questions, no question shared between splits; 'reference': "
                "the paper's files in <data_dir>/arithmetic_ref/ (their test files overlap "
                "their training files; see overlap_report)"})
    data_seed: int = field(default=0, metadata={"range": "[0, inf)",
        "help": "seed of the question generator, and of which reference 'hw' items become valid"})
    n_demos: int = field(default=50, metadata={"range": "[0, inf)",
        "help": "worked examples with rationales, 3 or 4 operands (reference: the first n of the "
                "file, at most 50)"})
    n_train: int = field(default=1000, metadata={"range": "[0, inf)",
        "help": "training questions, 3 or 4 operands (reference: at most the 'hw' items left "
                "after valid is taken)"})
    n_valid: int = field(default=200, metadata={"range": "[0, inf)",
        "help": "validation questions, 3 or 4 operands (reference: drawn from 'hw' items that are "
                "in no test file, and removed from train)"})
    n_test: int = field(default=500, metadata={"range": "[0, inf)",
        "help": "questions per test split: test_3op, test_4op (in distribution), test_5op (out "
                "of distribution) (reference: the first n of each file, at most 500)"})
    reward_shots: int = field(default=3, metadata={"range": "[0, inf)",
        "help": "worked examples (the first demonstrations) in the reward LM's prompt; paper: 3"})
    policy_shots: int = field(default=0, metadata={"range": "[0, inf)",
        "help": "worked examples (the first demonstrations) in the policy prompt; paper: 0"})
    min_actions: int = field(default=5, metadata={"range": "[0, inf)",
        "help": "fewest policy tokens before end of sample is allowed; paper: 5"})
    reward_tool_outputs: bool = field(default=False, metadata={
        "help": "whether log R includes the base LM's log-prob of the calculator's outputs (the paper's "
                "reward did). They follow from the actions, so the posterior over actions need not pay for "
                "the LM's poor arithmetic: without them a correct rationale's log R rises from -9.7 to -5.6 "
                "while fillers stay at -26 (results/gfn_vs_ppo/exploration.md)"})
    max_actions: int = field(default=40, metadata={"range": "[1, inf)",
        "help": "most policy tokens per sample (tool outputs not counted). The paper's 18 was for "
                "GPT-J tokens; the SmolLM2 tokenizer splits every digit and space, so the "
                "4-operand steps ' 5 + 9 =, 14 - 3 =, 11 + 8 =' take 22 tokens, 5 operands 30"})


def normalize_answer(text: str) -> str | None:
    """`" +5 "` -> `"5"`: answers compare as canonical integer strings; None if not an integer."""
    if not isinstance(text, str) or not _INT.fullmatch(text):
        return None
    try:
        return str(int(text))
    except ValueError:  # more digits than int() accepts
        return None


def calculator_output(generated: str) -> str | None:
    """What the calculator inserts after `generated`: `" 14"` after `"... 5 + 9 ="`, else None.

    It evaluates the text between the last `","` or `"Answer:"` (or the start) and a trailing `=`,
    when that text is one binary operation (`calculate`): a chain inserts nothing.
    """
    if not isinstance(generated, str) or not generated.endswith("="):
        return None
    body = generated[:-1]
    after_answer = body.rfind("Answer:")
    start = max(body.rfind(",") + 1, after_answer + len("Answer:") if after_answer >= 0 else 0)
    value = calculate(body[start:])
    return None if value is None else f" {value}"


def _worked_rationale(operands: list[int], operators: list[str]) -> str:
    """`" 5 + 9 = 14, 14 - 3 = 11"`: the steps a policy writes, with the calculator's outputs."""
    steps = []
    total = operands[0]
    for operator, operand in zip(operators, operands[1:]):
        step_total = total + operand if operator == "+" else total - operand
        steps.append(f" {total} {operator} {operand} = {step_total}")
        total = step_total
    return ",".join(steps)


def _question(index: int, n_operands: int) -> tuple[list[int], list[str]]:
    """The index-th of the 10**n * 2**(n-1) one-digit questions with n = n_operands."""
    digits, operator_bits = index % 10**n_operands, index // 10**n_operands
    operands = [digits // 10**i % 10 for i in range(n_operands)]
    operators = ["-" if operator_bits >> i & 1 else "+" for i in range(n_operands - 1)]
    return operands, operators


def _example(operands: list[int], operators: list[str], with_rationale: bool) -> Example:
    query = str(operands[0]) + "".join(f" {op} {n}" for op, n in zip(operators, operands[1:]))
    # Summed here rather than by the calculator, so that tests can check one against the other.
    answer = operands[0] + sum(n if op == "+" else -n for op, n in zip(operators, operands[1:]))
    rationale = _worked_rationale(operands, operators) if with_rationale else None
    return Example(query=query, answer=str(answer), rationale=rationale)


def _generate(cfg: Config) -> tuple[list[Example], list[Example], list[Example], list[EvalSplit]]:
    """Demos, train, valid and test splits, drawn without replacement from one question space."""
    rng = random.Random(cfg.data_seed)
    mixed = {"demos": cfg.n_demos, "train": cfg.n_train, "valid": cfg.n_valid}
    # Mixed splits are half 3-, half 4-operand (not a coin per item), so whether a config fits
    # the question space depends on the config alone, never on the seed.
    wanted: dict[int, dict[str, int]] = {
        3: {split: size // 2 for split, size in mixed.items()},
        4: {split: size - size // 2 for split, size in mixed.items()},
        5: {},
    }
    for split, (_, n_operands, _) in TEST_SPLITS.items():
        wanted[n_operands][split] = cfg.n_test

    drawn: dict[str, list[Example]] = {split: [] for split in [*mixed, *TEST_SPLITS]}
    for n_operands, sizes in wanted.items():
        space = 10**n_operands * 2 ** (n_operands - 1)
        if sum(sizes.values()) > space:
            asked = " + ".join(f"{split} {size}" for split, size in sizes.items())
            raise ValueError(f"arithmetic: the config asks for {asked} = {sum(sizes.values())} "
                             f"distinct {n_operands}-operand questions, but only {space} exist")
        indices = iter(rng.sample(range(space), sum(sizes.values())))
        for split, size in sizes.items():
            drawn[split] += [_example(*_question(next(indices), n_operands), split == "demos")
                             for _ in range(size)]
    for split in mixed:
        rng.shuffle(drawn[split])
    tests = [EvalSplit(split, drawn[split], in_distribution)
             for split, (_, _, in_distribution) in TEST_SPLITS.items()]
    return drawn["demos"], drawn["train"], drawn["valid"], tests


def _rebuild_rationale(bare: str) -> str | None:
    """`"5 + 9 =, 14 - 3 ="` -> `" 5 + 9 = 14, 14 - 3 = 11"` by running the calculator."""
    rationale = ""
    for step in bare.split(","):
        rationale += ("," if rationale else "") + " " + step.strip()
        output = calculator_output(rationale)
        if output is None:
            return None
        rationale += output
    return rationale


def _read_reference(data_dir: str | None, name: str, with_rationale: bool = False) -> list[Example]:
    """One of the paper's JSON files as Examples; errors name the file and the item."""
    if data_dir is None:
        raise FileNotFoundError(f"arithmetic: source='reference' reads "
                                f"<data_dir>/{REFERENCE_DIR}/{name}, but data_dir=None")
    path = Path(data_dir) / REFERENCE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"arithmetic: {path} not found (data_dir={data_dir!r})")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"arithmetic: {path} is not valid JSON: {err}") from None
    if not isinstance(items, list):
        raise ValueError(f"arithmetic: {path} should hold a JSON list of items")
    return [_reference_example(path, index, item, with_rationale)
            for index, item in enumerate(items)]


def _reference_example(path: Path, index: int, item: object, with_rationale: bool) -> Example:
    def invalid(why: str) -> ValueError:
        return ValueError(f"arithmetic: {path} item {index}: {why}")

    if not isinstance(item, dict):
        raise invalid("not a JSON object")
    keys = ("str_query", "num_sol") + (("str_rationale",) if with_rationale else ())
    missing = [key for key in keys if key not in item]
    if missing:
        raise invalid(f"missing key {', '.join(missing)}")
    match = _QUESTION.fullmatch(str(item["str_query"]))
    value = chain_value(match.group(1)) if match else None
    if value is None:
        raise invalid(f"str_query {item['str_query']!r} is not "
                      f"'Question: <a + b - c> = ? Answer:'")
    if type(item["num_sol"]) is not int or item["num_sol"] != value:
        raise invalid(f"num_sol {item['num_sol']!r} is not the value {value} of the question")
    rationale = None
    if with_rationale:
        bare = item["str_rationale"]
        rationale = _rebuild_rationale(bare) if isinstance(bare, str) else None
        if rationale is None or rationale.rsplit("=", 1)[1].strip() != str(value):
            raise invalid(f"str_rationale {bare!r} does not compute {value}")
    return Example(query=match.group(1), answer=str(value), rationale=rationale)


def _load_reference(
    cfg: Config, data_dir: str | None
) -> tuple[list[Example], list[Example], list[Example], list[EvalSplit]]:
    """The paper's files; valid is carved out of 'hw' because the paper has no valid file."""
    demos = _read_reference(data_dir, REFERENCE_DEMOS, with_rationale=True)[: cfg.n_demos]
    homework = _read_reference(data_dir, REFERENCE_TRAIN)
    tests = [EvalSplit(split, _read_reference(data_dir, name)[: cfg.n_test], in_dist)
             for split, (name, _, in_dist) in TEST_SPLITS.items()]
    # Valid avoids test questions (the protocol promises that); train keeps the paper's overlap.
    test_queries = {ex.query for split in tests for ex in split.examples}
    candidates = sorted({ex.query for ex in homework} - test_queries)
    if cfg.n_valid > len(candidates):
        raise ValueError(f"arithmetic: n_valid={cfg.n_valid}, but {REFERENCE_TRAIN} has only "
                         f"{len(candidates)} distinct questions that are in no test file")
    valid_queries = set(random.Random(cfg.data_seed).sample(candidates, cfg.n_valid))
    first_by_query: dict[str, Example] = {}
    for ex in homework:
        first_by_query.setdefault(ex.query, ex)
    valid = [ex for query, ex in first_by_query.items() if query in valid_queries]
    train = [ex for ex in homework if ex.query not in valid_queries][: cfg.n_train]
    return demos, train, valid, tests


def _check(cfg: Config) -> None:
    if cfg.source not in SOURCES:
        raise ValueError(f"arithmetic: source={cfg.source!r}; choose one of {', '.join(SOURCES)}")
    for name in ("n_demos", "n_train", "n_valid", "n_test", "reward_shots", "policy_shots",
                 "min_actions"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"arithmetic: {name}={getattr(cfg, name)} must be >= 0")
    if cfg.max_actions < max(cfg.min_actions, 1):
        raise ValueError(f"arithmetic: max_actions={cfg.max_actions} must be >= 1 and >= "
                         f"min_actions={cfg.min_actions}")


class ArithmeticTask(SpecTask):
    """The arithmetic task of the `Task` protocol (tasks/base.py)."""

    Config = Config
    spec = SPEC

    def __init__(self, config: Config, data_dir: str | None = None):
        _check(config)
        self._take_config(config)
        if config.source == "generated":
            self._demos, self._train, self._valid, self._tests = _generate(config)
        else:
            self._demos, self._train, self._valid, self._tests = _load_reference(config, data_dir)
        shots = max(config.reward_shots, config.policy_shots)
        if shots > len(self._demos):
            raise ValueError(f"arithmetic: reward_shots={config.reward_shots} and policy_shots="
                             f"{config.policy_shots} need {shots} demonstrations, have "
                             f"{len(self._demos)}")
        # The reward LM sees each worked example's observation (log R scores Z followed by Y); the
        # policy sees only what it could write itself.
        self._reward_context = self._policy_context = ""
        for ex in self._demos[: config.reward_shots]:
            self._reward_context += f"{super().reward_prompt(ex)}{ex.rationale}{self.observation(ex)}\n"
        for ex in self._demos[: config.policy_shots]:
            self._policy_context += policy_demonstration(self, super().policy_prompt(ex), ex)

    # --- data -----------------------------------------------------------------------------
    def train_examples(self) -> list[Example]:
        return list(self._train)

    def demonstrations(self) -> list[Example]:
        return list(self._demos)

    def validation_examples(self) -> list[Example]:
        return list(self._valid)

    def eval_splits(self) -> list[EvalSplit]:
        return list(self._tests)

    def overlap_report(self) -> dict[str, int]:
        """Contamination per test split, counted in distinct questions.

        `<split>`: questions also in demos, train or valid; `<split>/demos`, `<split>/train`,
        `<split>/valid`: the same by where; `<split>/repeats`: items repeating an earlier item of
        the split. All zero for the generated source; the reference files are not zero.
        """
        seen_in = {"demos": self._demos, "train": self._train, "valid": self._valid}
        queries = {where: {ex.query for ex in examples} for where, examples in seen_in.items()}
        report = {}
        for split in self._tests:
            split_queries = {ex.query for ex in split.examples}
            report[split.name] = len(split_queries & set().union(*queries.values()))
            for where, where_queries in queries.items():
                report[f"{split.name}/{where}"] = len(split_queries & where_queries)
            report[f"{split.name}/repeats"] = len(split.examples) - len(split_queries)
        return report

    # --- text the engine needs ----------------------------------------------------------------
    def policy_prompt(self, ex: Example) -> str:
        return self._policy_context + super().policy_prompt(ex)

    def reward_prompt(self, ex: Example) -> str:
        return self._reward_context + super().reward_prompt(ex)

    @property
    def reward_tool_outputs(self) -> bool:
        return self.config.reward_tool_outputs

    tool_trigger = "="  # the calculator answers only a text that ends with "="

    def tool(self, generated: str) -> str | None:
        return calculator_output(generated)

    def segments(self, rationale: str) -> list[tuple[str, bool]]:
        """A number after `=` counts as tool output exactly when the tool would have inserted it,
        so replayed samples split the same way they were generated."""
        pieces: list[tuple[str, bool]] = []
        start = 0
        for match in re.finditer("=", rationale):
            end = match.end()
            output = calculator_output(rationale[:end])
            if output is not None and rationale.startswith(output, end):
                pieces += [(rationale[start:end], False), (output, True)]
                start = end + len(output)
        if start < len(rationale):
            pieces.append((rationale[start:], False))
        return [(text, is_tool) for text, is_tool in pieces if text]

    def extract_answer(self, sample: str) -> str | None:
        """The integer right after the last `=` (tool outputs included), e.g. `"-6"`, else None."""
        if not isinstance(sample, str) or "=" not in sample:
            return None
        match = _LEADING_INT.match(sample.rsplit("=", 1)[1])
        return normalize_answer(match.group(1)) if match else None

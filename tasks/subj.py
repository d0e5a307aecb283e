"""Few-shot subjectivity classification, SUBJ (paper section 4.3), with a latent rationale.

X = `Classify this movie review as objective or subjective: "{text}" This review is`, Z = 1-5
tokens, Y = `, so it is {label}.`. The task has two candidate observations (one per label): the
engine scores both after every state, and

- the reward is log p_base(Z, ", so it is {gold}." | X) / T, plus `wrong_label_penalty` (paper:
  -50) at states after which the base LM scores the other label's observation higher. The engine
  returns the penalty apart from the likelihood (`LogReward.shaping`), and the methods add it after
  tempering, as the paper's notebook did, so T never scales it;
- a rationale's answer is the label whose observation the base LM scores higher after (X, Z), a
  tie going to "subjective"; the test answer is the majority vote over the rationales, a tie
  going to "subjective" too (the paper's protocol).

Data: `<data_dir>/subj/` (or `task.path`): `train.{n}.jsonl` is the few-shot training set for
`task.n_train=n` (the paper's 10, 20, 50), `test.jsonl` the test split, and validation items are
drawn from `train.jsonl` outside the few-shot set (and outside test). Without that folder the
Hugging Face dataset SetFit/subj is used when reachable; its few-shot set is made the paper's way
(training items under 25 words, seed-0 shuffle, the first n), which need not pick the same items.

Demonstrations (SFT data, few-shot prompts) are the few-shot examples with the label word itself
as the rationale, e.g. ` subjective`: the data has no rationales, and the label is the one text
known to make the base LM prefer the gold observation. The GFlowNet's replay buffer is seeded as
in the paper instead: `seed_rationales` base-LM samples per example after `seed_prompt` (the
review, the gold label, " because it is"), cut at the first non-alphanumeric token (subj.yaml).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tasks.base import EvalSplit, Example
from tasks.data import DataError, read_jsonl, require
from tasks.spec import SpecTask, load_spec

SPEC = load_spec("subj")
LABELS: tuple[str, ...] = tuple(SPEC.data["labels"])
_STATED_LABEL = re.compile(r"so it is (" + "|".join(map(re.escape, LABELS)) + r")\b")


@dataclass
class Config:
    path: str | None = field(default=None, metadata={
        "help": "folder with train.jsonl, test.jsonl and train.{n}.jsonl; null: <data_dir>/subj, "
                "else the Hugging Face dataset SetFit/subj"})
    n_train: int = field(default=10, metadata={"range": "[1, inf)",
        "help": "labelled training examples: reads train.{n}.jsonl (the paper's 10, 20, 50)"})
    n_valid: int = field(default=200, metadata={"range": "[1, inf)",
        "help": "validation items, drawn from train.jsonl outside the few-shot set and the test split"})
    n_test: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "test items: the first n of test.jsonl; null: all (2,000)"})
    data_seed: int = field(default=0, metadata={"range": "[0, inf)",
        "help": "seed of the validation draw"})
    min_actions: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "fewest rationale tokens (paper: 1)"})
    max_actions: int = field(default=5, metadata={"range": "[1, inf)",
        "help": "most rationale tokens (paper: 5)"})
    wrong_label_penalty: float = field(default=-50.0, metadata={"range": "(-inf, 0]",
        "help": "added to the tempered log-reward (after dividing by the reward temperature) of a state "
                "after which the base LM prefers the wrong label (paper: -50); 0: no shaping"})
    seed_rationales: int = field(default=20, metadata={"range": "[0, inf)",
        "help": "rationales per training example that the base LM samples after the YAML's seed_prompt "
                "('... This review is {label} because it is'), cut at the first non-alphanumeric token, "
                "to pre-seed the GFlowNet's replay buffer (paper: 20); 0: seed it with the demonstrations"})


def _check(cfg: Config) -> None:
    if cfg.n_train < 1:
        raise ValueError(f"subj: n_train={cfg.n_train} must be >= 1 (paper: 10, 20 or 50)")
    if cfg.n_valid < 1:
        raise ValueError(f"subj: n_valid={cfg.n_valid} must be >= 1")
    if cfg.n_test is not None and cfg.n_test < 1:
        raise ValueError(f"subj: n_test={cfg.n_test} must be >= 1 (or null for all)")
    if cfg.seed_rationales < 0:
        raise ValueError(f"subj: seed_rationales={cfg.seed_rationales} must be >= 0 (paper: 20)")
    if not 1 <= cfg.min_actions <= cfg.max_actions:
        raise ValueError(f"subj: need 1 <= min_actions ({cfg.min_actions}) <= max_actions ({cfg.max_actions})")


def _bad_item(item: dict) -> str | None:
    if item["label"] not in range(len(LABELS)):
        return (f"label {item['label']!r} is not one of "
                f"{', '.join(f'{n} ({name})' for n, name in enumerate(LABELS))}")
    if not item["text"].strip():
        return "empty text"
    return None


def _examples(items: list[dict]) -> list[Example]:
    """Whitespace is normalized, so that a text compares equal across files."""
    return [Example(query=" ".join(item["text"].split()), answer=LABELS[item["label"]]) for item in items]


def _read(path: Path) -> list[Example]:
    examples = _examples(read_jsonl(path, {"text": str, "label": int}, "subj", check=_bad_item))
    if not examples:  # named here: the split it leaves empty would not say which file to fill
        raise DataError(f"subj: {path} has no items; expected one JSON object a line")
    return examples


def _from_folder(folder: Path, n_train: int) -> tuple[list[Example], list[Example], list[Example]]:
    few_shot = folder / f"train.{n_train}.jsonl"
    if not few_shot.is_file():
        raise DataError(f"subj: {few_shot} not found; the paper's few-shot sets are n_train=10, 20, 50")
    return _read(few_shot), _read(folder / "train.jsonl"), _read(folder / "test.jsonl")


def _from_hub(n_train: int, folder: Path | None) -> tuple[list[Example], list[Example], list[Example]]:
    where = f"{folder} not found" if folder else "no data_dir"
    try:
        import datasets

        hub = datasets.load_dataset(SPEC.data["hub_dataset"])
    # Offline, the Hub fails in many ways (connection, DNS, offline mode, missing cache); each
    # means the same thing here, and the message says how to give the data instead.
    except Exception as err:  # noqa: BLE001
        raise DataError(f"subj: no data: {where} (set data_dir= to a folder holding subj/, or "
                        f"task.path=) and the Hugging Face dataset {SPEC.data['hub_dataset']} could not "
                        f"be loaded ({type(err).__name__})") from None
    for split in ("train", "test"):
        bad = next((why for why in map(_bad_item, hub[split]) if why), None)
        if bad:
            raise DataError(f"subj: {SPEC.data['hub_dataset']} {split}: {bad}")
    train, test = _examples(list(hub["train"])), _examples(list(hub["test"]))
    short = [ex for ex in train if len(ex.query.split()) < SPEC.data["few_shot_max_words"]]
    random.Random(0).shuffle(short)
    return short[:n_train], train, test


class SubjTask(SpecTask):
    """The SUBJ task of the `Task` protocol (tasks/base.py), with candidate observations."""

    Config = Config
    spec = SPEC

    def __init__(self, config: Config, data_dir: str | None = None):
        _check(config)
        self._take_config(config)
        self.wrong_choice_penalty = config.wrong_label_penalty
        self.seed_rationales = config.seed_rationales
        if config.path:
            folder = Path(config.path).expanduser()
            if not folder.is_dir():
                raise DataError(f"subj: task.path={config.path} is not a folder")
            few_shot, pool, test = _from_folder(folder, config.n_train)
        else:
            folder = Path(data_dir) / SPEC.data["folder"] if data_dir else None
            if folder is not None and folder.is_dir():
                few_shot, pool, test = _from_folder(folder, config.n_train)
            else:
                few_shot, pool, test = _from_hub(config.n_train, folder)
        self._train = require("train", few_shot, "subj", "set task.n_train >= 1")
        if len(few_shot) < config.n_train:
            raise DataError(f"subj: n_train={config.n_train} but the few-shot set has {len(few_shot)} items")
        self._test = require("test", test[: config.n_test], "subj", "test.jsonl has no items")
        taken = {ex.query for ex in few_shot} | {ex.query for ex in self._test}
        candidates = list({ex.query: ex for ex in pool if ex.query not in taken}.values())
        if len(candidates) < config.n_valid:
            raise DataError(f"subj: n_valid={config.n_valid} but train.jsonl has only {len(candidates)} "
                            "items outside the few-shot set and the test split; lower task.n_valid")
        self._valid = random.Random(config.data_seed).sample(candidates, config.n_valid)

    # --- data -----------------------------------------------------------------------------
    def train_examples(self) -> list[Example]:
        return list(self._train)

    def demonstrations(self) -> list[Example]:
        return [Example(ex.query, ex.answer, rationale=" " + ex.answer) for ex in self._train]

    def validation_examples(self) -> list[Example]:
        return list(self._valid)

    def eval_splits(self) -> list[EvalSplit]:
        return [EvalSplit("test", list(self._test), in_distribution=True)]

    # --- answers ------------------------------------------------------------------------------
    def choices(self, ex: Example) -> list[str]:
        """`, so it is objective.` and `, so it is subjective.`: the gold one is observation(ex)."""
        return [self.observation(Example(ex.query, label)) for label in LABELS]

    def extract_answer(self, sample: str) -> str | None:
        """The label a text states last (`..., so it is subjective.` -> subjective), else None.

        The engine applies it to the candidate observation the base LM prefers after a sample."""
        stated = _STATED_LABEL.findall(sample) if isinstance(sample, str) else []
        return stated[-1] if stated else None

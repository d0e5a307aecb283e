"""Next-sentence continuation of OpenWebText prompts (paper section 4.1).

X = a prompt of one to three sentences, Z = the next sentence, 1-30 tokens, ended by the "." token
(the task's terminator: EOS is no action here), Y = "." so the reward is log p_base(Z "." | X).
There is no hidden answer: accuracy does not apply, and the task reports the likelihood of its
samples under the base LM (mean and max per prompt) and their diversity.

Prompts are lines of `<data_dir>/openwebtext/prompts.txt` (or `task.path`) in file order: the first
`n_train` (paper: 950) train, the next `n_valid` (paper: 50) validate, as the paper's first 1,000.
The paper reports its numbers on those 50 validation prompts; here they tune the sweeps, and the
test split is the `n_test` lines after them (lines 1,001-1,050 by default), which no run has seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tasks.base import EvalSplit, Example
from tasks.data import DataError, read_lines, require
from tasks.spec import SpecTask, load_spec

SPEC = load_spec("continuation")


@dataclass
class Config:
    path: str | None = field(default=None, metadata={
        "help": "prompt file, one prompt a line; null: <data_dir>/openwebtext/prompts.txt"})
    n_train: int = field(default=950, metadata={"range": "[1, inf)",
        "help": "training prompts: the file's first lines (paper: 950)"})
    n_valid: int = field(default=50, metadata={"range": "[1, inf)",
        "help": "validation prompts: the lines after the training ones (paper: 50)"})
    n_test: int = field(default=50, metadata={"range": "[1, inf)",
        "help": "test prompts: the lines after the validation ones (the paper has no test split)"})
    min_actions: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "fewest tokens of the sentence before its '.' (paper: 1)"})
    max_actions: int = field(default=30, metadata={"range": "[1, inf)",
        "help": "most tokens of the sentence (paper: 30)"})


def _check(cfg: Config) -> None:
    for name in ("n_train", "n_valid", "n_test"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"continuation: {name}={getattr(cfg, name)} must be >= 1")
    if not 1 <= cfg.min_actions <= cfg.max_actions:
        raise ValueError(f"continuation: need 1 <= min_actions ({cfg.min_actions}) <= max_actions "
                         f"({cfg.max_actions})")


class ContinuationTask(SpecTask):
    """The sentence-continuation task of the `Task` protocol (tasks/base.py)."""

    Config = Config
    spec = SPEC

    def __init__(self, config: Config, data_dir: str | None = None):
        _check(config)
        self._take_config(config)
        if config.path:
            path = Path(config.path).expanduser()
        elif data_dir:
            path = Path(data_dir) / SPEC.data["file"]
        else:
            raise DataError(f"continuation: no prompt file: set data_dir= to a folder holding "
                            f"{SPEC.data['file']}, or task.path=")
        n_train, n_valid = config.n_train, config.n_valid
        prompts = [Example(query=line, answer="") for line in
                   read_lines(path, n_train + n_valid + config.n_test, "continuation")]
        self._train = require("train", prompts[:n_train], "continuation", f"{path} has no prompts")
        self._valid = require("valid", prompts[n_train: n_train + n_valid], "continuation",
                              f"{path} has only {len(prompts)} prompts: lower task.n_train")
        self._test = require("test", prompts[n_train + n_valid:], "continuation",
                             f"{path} has only {len(prompts)} prompts: lower task.n_train or task.n_valid")

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def demonstrations(self) -> list[Example]:
        """None: the paper's continuation has no reference sentences to imitate."""
        return []

    def validation_examples(self) -> list[Example]:
        return list(self._valid)

    def eval_splits(self) -> list[EvalSplit]:
        return [EvalSplit("test", list(self._test), in_distribution=True)]

    def extract_answer(self, sample: str) -> str | None:
        """The sentence itself (no answer is graded)."""
        return sample.strip() or None

"""Story infilling (paper section 4.2): sample the missing 4th sentence of a five-sentence story.

X = sentences 1-3 (the query) and sentence 5 (`given`, shown to the policy as the paper's
`Beginning: s1 s2 s3\\nEnding: s5\\nMiddle:`), Z = the 4th sentence, Y = sentence 5. The reward is
log p_base(Z Y | s1 s2 s3) (tasks/infilling.yaml says why this prompt). The reference 4th sentence
is the hidden answer: only the metrics read it, and the demonstrations (training stories only)
carry it as their rationale " s4", for SFT and to seed the replay buffer as the paper did.

Stories are ROCStories-format CSV rows, from `task.path` or the set shipped in
tasks/data/stories/ (written for this project; its README says more). Splits follow file order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tasks.base import EvalSplit, Example
from tasks.data import read_csv, require
from tasks.spec import TASKS_DIR, SpecTask, load_spec

SPEC = load_spec("infilling")
SHIPPED = TASKS_DIR / SPEC.data["shipped"]
COLUMNS = tuple(SPEC.data["columns"])


@dataclass
class Config:
    path: str | None = field(default=None, metadata={
        "help": "ROCStories-format CSV (storyid,storytitle,sentence1..sentence5); null: the stories "
                "shipped in tasks/data/stories/ (ROCStories must be requested from its authors)"})
    n_test: int = field(default=40, metadata={"range": "[0, inf)",
        "help": "test stories: the file's first rows (paper: rows 0-99)"})
    n_valid: int = field(default=20, metadata={"range": "[0, inf)",
        "help": "validation stories: the rows after the test rows"})
    n_train: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "training stories: the rows after the validation rows, at most this many; null: all "
                "(paper: 900)"})
    min_actions: int = field(default=5, metadata={"range": "[0, inf)",
        "help": "fewest tokens of the sampled sentence before it may end (paper: 5)"})
    max_actions: int = field(default=25, metadata={"range": "[1, inf)",
        "help": "most tokens of the sampled sentence (paper: 25)"})
    embedding_model: str | None = field(default=None, metadata={
        "help": "folder of a local sentence encoder for embedding_similarity and embedding_diversity "
                "(mean pooling); null: all-MiniLM-L6-v2 from its wheel"})


def _check(cfg: Config) -> None:
    for name in ("n_test", "n_valid", "min_actions"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"infilling: {name}={getattr(cfg, name)} must be >= 0")
    if cfg.n_train is not None and cfg.n_train < 1:
        raise ValueError(f"infilling: n_train={cfg.n_train} must be >= 1 (or null for all)")
    if cfg.max_actions < max(cfg.min_actions, 1):
        raise ValueError(f"infilling: max_actions={cfg.max_actions} must be >= 1 and >= "
                         f"min_actions={cfg.min_actions}")


def read_stories(path: str | Path) -> list[Example]:
    """One Example per CSV row, in file order; a row repeating an earlier row's first three
    sentences is dropped (it would put one story in two splits and share a replay buffer)."""
    stories, seen = [], set()
    for row in read_csv(path, COLUMNS, "infilling"):
        s1, s2, s3, s4, s5 = (row[c] for c in COLUMNS)
        beginning = f"{s1} {s2} {s3}"
        if beginning not in seen:
            seen.add(beginning)
            stories.append(Example(query=beginning, answer=s4, given=s5))
    return stories


class InfillingTask(SpecTask):
    """The story-infilling task of the `Task` protocol (tasks/base.py)."""

    Config = Config
    spec = SPEC

    def __init__(self, config: Config, data_dir: str | None = None):
        _check(config)
        self._take_config(config)
        self.embedding_model = config.embedding_model
        path = Path(config.path).expanduser() if config.path else SHIPPED
        stories = read_stories(path)
        n_eval = config.n_test + config.n_valid
        self._test = require("test", stories[: config.n_test], "infilling",
                             f"set task.n_test >= 1 ({path} has {len(stories)} stories)")
        self._valid = require("valid", stories[config.n_test: n_eval], "infilling",
                              f"set task.n_valid >= 1 and n_test + n_valid below the {len(stories)} "
                              f"stories of {path}")
        end = None if config.n_train is None else n_eval + config.n_train
        self._train = require("train", stories[n_eval: end], "infilling",
                              f"{path} has {len(stories)} stories and n_test + n_valid = {n_eval} "
                              "take them all: lower those or give task.path a larger file")

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def demonstrations(self) -> list[Example]:
        return [Example(ex.query, ex.answer, rationale=" " + ex.answer, given=ex.given) for ex in self._train]

    def validation_examples(self) -> list[Example]:
        return list(self._valid)

    def eval_splits(self) -> list[EvalSplit]:
        return [EvalSplit("test", list(self._test), in_distribution=True)]

    def extract_answer(self, sample: str) -> str | None:
        """The sampled sentence itself (the metrics compare it with the reference)."""
        return sample.strip() or None

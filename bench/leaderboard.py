"""What a sweep's leaderboard holds (`Leaderboard`, built by bench/report.py) and the metric that heads it."""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.finals import FORMATS, FinalRun, Split, higher_is_better


def arrow(metric: str) -> str:
    return {True: " ↑", False: " ↓", None: ""}[higher_is_better(metric)]


@dataclass
class Leaderboard:
    sweep: str
    parent_run_id: str
    cells: dict[str, dict[str, list[float]]]  # entry -> metric -> one value per seed (and "seeds")
    markdown: str
    latex: str = ""
    csv: str = ""
    runs: dict[str, list[FinalRun]] = field(default_factory=dict)  # entry -> its finals, by seed
    splits: list[Split] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)  # the CSV's rows
    trials: dict[str, str] = field(default_factory=dict)  # entry -> how its tuning trials ended (`trials/<entry>`)


class ReportError(RuntimeError):
    """Nothing to report; the message says what is missing."""


def headline_metric(board: Leaderboard) -> str | None:
    """The metric of the headline table and of comparisons: the first of FORMATS the runs have per split."""
    metrics = {r["metric"] for r in board.summary if r["split"]}
    return next((m for m in FORMATS if m in metrics), None)

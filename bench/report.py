"""The leaderboard of a sweep, rebuilt from MLflow alone: `python -m bench.report sweep=NAME`.

It reads the sweep's final runs (tags `stage=final`, children of one sweep parent run; by default
the latest), averages each method over its seeds and writes `<results_dir>/<sweep>/leaderboard.md`,
and their step metrics as `<results_dir>/<sweep>/learning_curves.png` (bench/curves.py).
"""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pandas as pd

from bench import tracking
from bench.config import ConfigError, build_config, check_choice, parse_overrides
from bench.curves import write_curves
from methods.engine.metrics import METRICS

# (metric of a final run, column title, display scale, decimals). Accuracy is shown in percent,
# as in the paper's tables.
# Test queries per seed behind the accuracies (logged by bench/trial.py), and how the header names them.
QUERY_COUNTS = {"test_id/queries": "ID", "test_ood/queries": "OOD"}

COLUMNS = [
    ("test_id/accuracy", "ID accuracy (%)", 100.0, 1),
    ("test_ood/accuracy", "OOD accuracy (%)", 100.0, 1),
    ("test_id/loglik_mean", "log-likelihood", 1.0, 2),
    ("test_id/distinct_2", "distinct-2", 1.0, 3),
    ("test_id/embedding_diversity", "embedding diversity", 1.0, 3),
    ("test_id/bleu4", "BLEU-4", 100.0, 2),
    ("test_id/gleu", "GLEU", 100.0, 2),
    ("test_id/embedding_similarity", "embedding similarity", 1.0, 3),
    ("test_id/forward_tokens", "forward tokens / query", 1.0, 0),
    ("wall_time_s", "wall time (s)", 1.0, 0),
]
# Metrics outside METRICS that have a direction.
_LOWER_IS_BETTER = {"wall_time_s", "train_time_s"}


def arrow(metric: str) -> str:
    name = metric.rsplit("/", 1)[-1]
    if name in _LOWER_IS_BETTER:
        return " ↓"
    info = METRICS.get(name)
    if info is None or info.higher_is_better is None:
        return ""
    return " ↑" if info.higher_is_better else " ↓"


def mean_std(values: list[float], scale: float, digits: int) -> str:
    """`mean ± sample std` (just the value for one seed; – for none)."""
    if not values:
        return "–"
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def accuracy_se(values: list[float], queries: list[float], digits: int) -> str:
    """`mean ± standard error` of an accuracy in percent: the mean over seeds, and the binomial
    standard error sqrt(p (1 - p) / N) over the N test queries of all seeds together (each query's
    vote is right or wrong), so that one seed on 32 queries reads as uncertain as it is."""
    if not values or len(queries) != len(values):
        return mean_std(values, 100.0, digits)
    p, n = statistics.fmean(values), sum(queries)
    return f"{100 * p:.{digits}f} ± {100 * math.sqrt(p * (1 - p) / n):.{digits}f}"


@dataclass
class Leaderboard:
    sweep: str
    parent_run_id: str
    cells: dict[str, dict[str, list[float]]]  # method -> metric -> one value per seed
    markdown: str


class ReportError(RuntimeError):
    """Nothing to report; the message says what is missing."""


def latest_parent_run(client: mlflow.MlflowClient, experiment_id: str, sweep: str) -> str:
    runs = client.search_runs([experiment_id], max_results=1,
                              filter_string=f"tags.sweep = '{sweep}' and tags.stage = 'sweep'",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise ReportError(f"no sweep run of {sweep!r} in experiment {experiment_id}")
    return runs[0].info.run_id


def build_leaderboard(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str) -> Leaderboard:
    """Read the finished final runs of one sweep invocation and lay them out as Markdown."""
    parent = client.get_run(parent_run_id)
    sweep = parent.data.tags.get("sweep", "")
    mlflow.set_tracking_uri(client.tracking_uri)
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(f"tags.sweep = '{sweep}' and tags.stage = 'final' and "
                       f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'"),
    )
    cells: dict[str, dict[str, list[float]]] = {}
    if not runs.empty:
        # A row per sweep entry; runs recorded before entries existed have only their method.
        runs["row"] = runs["tags.entry"].fillna(runs["tags.method"]) if "tags.entry" in runs else runs["tags.method"]
        runs = runs.sort_values(["row", "tags.seed"], key=lambda column: column.map(_seed_order))
    for _, run in runs.iterrows():
        per_metric = cells.setdefault(run["row"], {})
        for metric in [c[0] for c in COLUMNS] + list(QUERY_COUNTS):
            value = run.get(f"metrics.{metric}")
            if value is not None and not pd.isna(value):
                per_metric.setdefault(metric, []).append(float(value))
        per_metric.setdefault("seeds", []).append(float(run["tags.seed"]))
    return Leaderboard(sweep, parent_run_id, cells, _markdown(parent, cells))


def _short(param: str) -> str:
    """A float parameter with 3 significant digits (MLflow stores them as full-precision text)."""
    try:
        return param if param.lstrip("-").isdigit() else f"{float(param):.3g}"
    except ValueError:
        return param


def _seed_order(value: str) -> tuple[int, str]:
    """Sort key: numbers (seeds) by value, other text alphabetically."""
    return (int(value), "") if str(value).lstrip("-").isdigit() else (0, str(value))


def _markdown(parent, cells: dict[str, dict[str, list[float]]]) -> str:
    tags, params = parent.data.tags, parent.data.params
    # Only the columns some row has: a task reports the metrics it declares (no accuracy for
    # continuation, BLEU only for infilling).
    columns = [c for c in COLUMNS if any(c[0] in row for row in cells.values())] or COLUMNS
    counts = [m for m in QUERY_COUNTS if any(m in row for row in cells.values())]
    header = ["method", *(title + arrow(metric) for metric, title, *_ in columns), "seeds"]
    if counts:
        header.append("test queries (" + " / ".join(QUERY_COUNTS[m] for m in counts) + ")")
    lines = [f"# {tags.get('sweep', '')}: leaderboard", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    def cell(row: dict[str, list[float]], metric: str, scale: float, digits: int) -> str:
        kind = metric.split("/")[0]
        if metric.endswith("/accuracy") and f"{kind}/queries" in row:
            return accuracy_se(row.get(metric, []), row[f"{kind}/queries"], digits)
        return mean_std(row.get(metric, []), scale, digits)

    for method in sorted(cells):
        row = [method, *(cell(cells[method], metric, scale, digits) for metric, _, scale, digits in columns),
               str(len(cells[method]["seeds"]))]
        if counts:
            row.append(" / ".join(str(int(statistics.fmean(cells[method][m]))) if m in cells[method] else "–"
                                  for m in counts))
        lines.append("| " + " | ".join(row) + " |")
    if not cells:
        lines.append("| (no finished final run) |" + " |" * (len(header) - 1))
    lines += ["", "Each method's best configuration (or its untuned recipe), evaluated on the test splits "
                  "(ID: in distribution, OOD: out of distribution). Accuracy: mean over seeds ± binomial "
                  "standard error over all test queries of all seeds (per seed: the query counts in the last "
                  "column); other columns: mean ± standard deviation over seeds."]
    chosen = sorted(key for key in params if key.startswith("best/"))
    if chosen:
        lines += ["", "Selected hyperparameters:", ""]
        lines += [f"- {key.removeprefix('best/').replace('/', ': ', 1)} = {_short(params[key])}" for key in chosen]
    started = datetime.fromtimestamp(parent.info.start_time / 1000, tz=timezone.utc)
    sha = tags.get("git_sha", "unknown") + (" (uncommitted changes)" if tags.get("git_dirty") == "true" else "")
    lines += ["", "---", "",
              f"sweep `{tags.get('sweep', '')}`, scale `{tags.get('scale', '')}`, task `{tags.get('task', '')}`, "
              f"model `{tags.get('model', '')}`; code {sha}; run {started:%Y-%m-%d %H:%M} UTC; "
              f"MLflow parent run `{parent.info.run_id}`; report generated "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."]
    return "\n".join(lines) + "\n"


def write_leaderboard(board: Leaderboard, results_dir: Path, sweep: str) -> Path:
    path = results_dir / sweep / "leaderboard.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(board.markdown, encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    """`sweep=NAME [run_dir=...] [results_dir=...] [parent_run_id=...]`; the sweep's YAML file
    is not needed, only its MLflow store."""
    try:
        overrides = parse_overrides(argv)
        for key in overrides:
            check_choice("key", key, ["sweep", "run_dir", "results_dir", "parent_run_id"])
        if "sweep" not in overrides:
            raise ConfigError("sweep=NAME is required")
        sweep, parent_id = overrides.pop("sweep"), overrides.pop("parent_run_id", None)
        cfg = build_config([(None, overrides)])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri = tracking.tracking_uri(cfg.run_dir)
    try:
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise ReportError(f"no MLflow store at {uri}; pass the sweep's run_dir=")
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(sweep)
        if experiment is None:
            raise ReportError(f"no experiment {sweep!r} in {uri}")
        client = mlflow.MlflowClient(uri)
        parent_id = parent_id or latest_parent_run(client, experiment.experiment_id, sweep)
        board = build_leaderboard(client, experiment.experiment_id, parent_id)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    path = write_leaderboard(board, Path(cfg.results_dir), sweep)
    print(board.markdown)
    print(f"leaderboard: {path}")
    curves = write_curves(client, experiment.experiment_id, parent_id, Path(cfg.results_dir), sweep)
    if curves:
        print(f"learning curves: {curves}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A sweep's final runs as numbers: what every leaderboard format shows, read from MLflow.

A final run (tags `stage=final`, child of the sweep's parent run) belongs to an entry, the
leaderboard's row. Its test splits are the columns, as the task declared them (tags `test_splits`
and `test_splits_ood` of bench/training.py; for older runs, every `<split>/<metric>` prefix), plus
the pooled in- and out-of-distribution means (`test_id`, `test_ood`). `summary` turns them into
one row per entry × split × metric: the mean over seeds, its standard error over seeds and a
bootstrap interval over the test queries from the runs' per-query records `eval/<split>.jsonl`
(none for runs recorded before those existed).

A re-evaluation of a final run (`python -m bench.evaluate`, a child run with tags
`stage=evaluation`, `evaluated_run` and `evaluation`) adds a column per split it evaluated:
named after its questions file (`mine`), or `<evaluation>:<split>` for the task's own splits
re-evaluated under other `task.*` settings; the latest re-evaluation of each name per run.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from bench import stats, tracking
from methods.engine.metrics import METRICS

# Metrics the tables show, in order: metric -> (title, display scale, decimals). Accuracy is in
# percent, as in the paper's tables. The first one a sweep has is the headline table's.
FORMATS = {
    "accuracy": ("accuracy (%)", 100.0, 1),
    "loglik_mean": ("log-likelihood", 1.0, 2),
    "distinct_2": ("distinct-2", 1.0, 3),
    "embedding_diversity": ("embedding diversity", 1.0, 3),
    "bleu4": ("BLEU-4", 100.0, 2),
    "gleu": ("GLEU", 100.0, 2),
    "embedding_similarity": ("embedding similarity", 1.0, 3),
    "forward_tokens": ("forward tokens / query", 1.0, 0),
}
RUN_METRICS = {"wall_time_s": ("wall time (s)", 1.0, 0), "train_time_s": ("training time (s)", 1.0, 0),
               "total_forward_tokens": ("forward tokens (train + eval)", 1.0, 0),
               "train_forward_tokens": ("training forward tokens", 1.0, 0),
               "eval_forward_tokens": ("evaluation forward tokens", 1.0, 0),
               "train_device_s": ("training device-s", 1.0, 0), "eval_device_s": ("evaluation device-s", 1.0, 0)}
_LOWER_IS_BETTER = set(RUN_METRICS)  # metrics outside METRICS that have a direction
POOLED = {"test_id": "ID", "test_ood": "OOD"}  # size-weighted means over splits (bench/training.py)
RECORD_FIELD = {"accuracy": "correct"}  # a metric's per-query field in eval/<split>.jsonl, where not its name
CSV_COLUMNS = ["entry", "split", "in_distribution", "metric", "higher_is_better", "seeds", "queries",
               "mean", "se", "ci95_low", "ci95_high"]


def higher_is_better(metric: str) -> bool | None:
    name = metric.rsplit("/", 1)[-1]
    if name in _LOWER_IS_BETTER:
        return False
    info = METRICS.get(name)
    return None if info is None else info.higher_is_better


def display(metric: str) -> tuple[str, float, int]:
    """(title, display scale, decimals) of a metric."""
    return FORMATS.get(metric) or RUN_METRICS.get(metric) or (metric, 1.0, 3)


@dataclass(frozen=True)
class Split:
    name: str  # a test split ("test_3op") or a pooled one ("test_id")
    label: str  # its column title: "test_3op (ID)", "ID (pooled)"
    parts: tuple[str, ...]  # the test splits whose records it holds; () when unknown (older runs)
    in_distribution: bool | None = None
    shown: bool = True  # a pooled column is shown when it pools two splits or more (or is all there is)


@dataclass
class FinalRun:
    run_id: str
    seed: str
    metrics: dict[str, float]
    records: dict[str, list[dict]]  # test split -> one row per query (eval/<split>.jsonl)


def _seed_order(value: str) -> tuple[int, str]:
    """Sort key: numbers (seeds) by value, other text alphabetically."""
    return (int(value), "") if str(value).lstrip("-").isdigit() else (0, str(value))


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow progress bar on stderr for each run's few small files."""
    key, before = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _records(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[dict]]:
    """split -> the run's per-query rows; {} for a run without them (or unreadable ones)."""
    try:
        if not client.list_artifacts(run_id, tracking.RECORDS_DIR):
            return {}
        with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
            folder = Path(client.download_artifacts(run_id, tracking.RECORDS_DIR, tmp))
            return {file.stem: [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
                    for file in sorted(folder.glob("*.jsonl"))}
    except (MlflowException, OSError, ValueError):
        return {}


def splits_of(runs: list[FinalRun], tags: list[dict[str, str]]) -> list[Split]:
    """The test splits as the runs' task declared them (tags of bench/training.py), then the pooled
    ID and OOD means; for runs without the tags, every `<split>/...` metric prefix."""
    declared = next((t for t in tags if t.get("test_splits")), None)
    logged = {key.split("/")[0] for run in runs for key in run.metrics if "/" in key}
    if declared:
        ood = set(declared.get("test_splits_ood", "").split(",")) - {""}
        names = declared["test_splits"].split(",")
        splits = [Split(n, f"{n} ({'OOD' if n in ood else 'ID'})", (n,), n not in ood) for n in names]
        for pooled, kind in POOLED.items():
            members = tuple(n for n in names if (n in ood) == (kind == "OOD"))
            if pooled in logged:
                splits.append(Split(pooled, f"{kind} (pooled)", members, kind == "ID", shown=len(members) > 1))
        return splits
    names = sorted(logged - {"valid", "train", "system", *POOLED})
    splits = [Split(n, n, (n,)) for n in names]
    return splits + [Split(p, f"{k} (pooled)", (), k == "ID") for p, k in POOLED.items() if p in logged]


def query_values(runs: list[FinalRun], split: Split, metric: str) -> dict | None:
    """(split, query, occurrence) -> the metric's per-query value averaged over seeds; None unless
    every seed has the records of every part of `split`."""
    name, seeds = RECORD_FIELD.get(metric, metric), []
    for run in runs:
        values = {}
        for part in split.parts:
            rows = run.records.get(part)
            if rows is None or any(row.get(name) is None for row in rows):
                return None
            seen: Counter = Counter()
            for row in rows:
                seen[row["query"]] += 1
                values[(part, row["query"], seen[row["query"]])] = float(row[name])
        seeds.append(values)
    return stats.per_query(seeds) if seeds and split.parts else None


def summary(runs: dict[str, list[FinalRun]], splits: list[Split]) -> list[dict]:
    """One row per entry × split × metric (and entry × run metric): the CSV, and every number the
    tables show."""
    rows = []
    for entry, finals in runs.items():
        for split in [*splits, None]:
            prefix = f"{split.name}/" if split else ""
            present = {key.removeprefix(prefix) for run in finals for key in run.metrics
                       if key.startswith(prefix) and ("/" not in key.removeprefix(prefix))}
            metrics = ([m for m in FORMATS if m in present] + sorted(present - set(FORMATS) - {"queries"})
                       if split else [m for m in RUN_METRICS if m in present])
            queries = [run.metrics[f"{prefix}queries"] for run in finals if f"{prefix}queries" in run.metrics]
            for metric in metrics:
                per_seed = [run.metrics[prefix + metric] for run in finals if prefix + metric in run.metrics]
                mean, se = stats.mean_se(per_seed)
                values = query_values(finals, split, metric) if split else None
                interval = stats.bootstrap_interval(list(values.values())) if values else None
                rows.append({
                    "entry": entry, "split": split.name if split else "", "metric": metric,
                    "in_distribution": "" if split is None or split.in_distribution is None else str(split.in_distribution).lower(),
                    "higher_is_better": "" if higher_is_better(metric) is None else str(higher_is_better(metric)).lower(),
                    "seeds": len(per_seed), "queries": round(sum(queries) / len(queries)) if queries else None,
                    "mean": mean, "se": se, "ci95_low": interval and interval[0], "ci95_high": interval and interval[1],
                })
    return rows


def read_finals(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str) -> tuple[dict[str, list[FinalRun]], list[Split]]:
    """The finished final runs of one sweep invocation, by entry and seed, with their per-query
    records; and the test splits they were evaluated on."""
    sweep = client.get_run(parent_run_id).data.tags.get("sweep", "")
    found = client.search_runs([experiment_id], max_results=10_000, filter_string=(
        f"tags.sweep = '{sweep}' and tags.stage = 'final' and "
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'"))
    # A row per sweep entry; runs recorded before entries existed have only their method.
    entry_of = {r.info.run_id: r.data.tags.get("entry", r.data.tags.get("method", "?")) for r in found}
    found = sorted(found, key=lambda r: (entry_of[r.info.run_id], _seed_order(r.data.tags.get("seed", ""))))
    runs: dict[str, list[FinalRun]] = {}
    for run in found:
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith(("system/", "train/"))}
        runs.setdefault(entry_of[run.info.run_id], []).append(
            FinalRun(run.info.run_id, run.data.tags.get("seed", ""), metrics, _records(client, run.info.run_id)))
    splits = splits_of([r for rs in runs.values() for r in rs], [r.data.tags for r in found])
    return runs, splits + re_evaluations(client, experiment_id, runs)


def re_evaluations(client: mlflow.MlflowClient, experiment_id: str, runs: dict[str, list[FinalRun]]) -> list[Split]:
    """Merge the finished re-evaluations of the final runs into their metrics and records, and
    return their columns."""
    by_id = {run.run_id: run for finals in runs.values() for run in finals}
    if not by_id:
        return []
    found = client.search_runs([experiment_id], max_results=10_000, order_by=["attributes.start_time DESC"],
                               filter_string="tags.stage = 'evaluation' and attributes.status = 'FINISHED'")
    columns, done = {}, set()
    for evaluation in found:
        tags = evaluation.data.tags
        final, name = by_id.get(tags.get("evaluated_run", "")), tags.get("evaluation", "")
        if final is None or (final.run_id, name) in done:
            continue  # not of this sweep, or an older re-evaluation of the same name
        done.add((final.run_id, name))
        records = _records(client, evaluation.info.run_id)
        for split in tags.get("test_splits", "").split(","):
            if not split:
                continue
            column = split if split == name else f"{name}:{split}"
            columns.setdefault(column, Split(column, f"{column} (re-evaluated)", (column,)))
            final.metrics |= {f"{column}/{key.removeprefix(split + '/')}": value
                              for key, value in evaluation.data.metrics.items() if key.startswith(split + "/")}
            if split in records:
                final.records[column] = records[split]
    return list(columns.values())

"""The leaderboard of a sweep, rebuilt from MLflow alone: `python -m bench.report sweep=NAME [task=T]`.

It reads the sweep's final runs (tags `stage=final`, children of one sweep parent run; by default
the latest, on `task` when given) and writes, in the parent run's results folder (tag
`results_folder`: `<sweep>`, or `<sweep>/<task>` for a task other than the sweep file's own)
under `results_dir`, `leaderboard.md`, `leaderboard.tex` (booktabs
tables), `leaderboard.csv` (tidy: one row per entry × split × metric) and its figures
(bench/figures.py). `compare=A,B` writes instead `compare_A_vs_B.{md,csv}`: two entries query by
query on every test split.

Each test split the task declares (tags `test_splits`, `test_splits_ood` and metrics
`<split>/<metric>` of bench/training.py) is a column: the mean over seeds ± the standard error over
seeds and a 95 % bootstrap interval over the test queries, from the per-query records
`eval/<split>.jsonl`. Runs recorded before those existed still report, with `[—]` for the interval.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import mlflow

from bench import stats, tables, tracking
from bench.compare import compare, comparisons
from bench.config import build_config, check_choice, parse_overrides
from bench.figures import write_figures
from bench.finals import CSV_COLUMNS, FORMATS, POOLED, display, higher_is_better, read_finals, summary
from bench.leaderboard import Leaderboard, ReportError, arrow, headline_metric
from bench.tables import Stat, Table
from bench.errors import ConfigError

SHOWN_RUN_METRICS = ("wall_time_s", "total_forward_tokens", "train_device_s")  # run metrics of the other-metrics table
NO_RECORDS = ("[—]: no per-query results (`eval/<split>.jsonl`; runs recorded before they existed), "
              "so no interval.")


def latest_parent_run(client: mlflow.MlflowClient, experiment_id: str, sweep: str, task: str | None = None) -> str:
    """The sweep's latest parent run (on `task`, when given)."""
    where = f"tags.sweep = '{sweep}' and tags.stage = 'sweep'" + (f" and tags.task = '{task}'" if task else "")
    runs = client.search_runs([experiment_id], max_results=1, filter_string=where, order_by=["attributes.start_time DESC"])
    if not runs:
        tasks = sweep_tasks(client, experiment_id, sweep)
        raise ReportError(f"no sweep run of {sweep!r}" + (f" on task {task!r}" if task else "") + f" in experiment "
                          f"{experiment_id}" + (f"; it was run on: {', '.join(tasks)}" if tasks else ""))
    return runs[0].info.run_id


def sweep_tasks(client: mlflow.MlflowClient, experiment_id: str, sweep: str) -> list[str]:
    """The tasks the sweep was run on, the latest first."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.sweep = '{sweep}' and tags.stage = 'sweep'",
                              order_by=["attributes.start_time DESC"])
    return list(dict.fromkeys(run.data.tags.get("task", "?") for run in runs))


def _stat(by_key: dict, key: tuple[str, str, str], with_interval: bool) -> Stat:
    """The summary row `key` (entry, split, metric) as a table cell."""
    _, scale, digits = display(key[2])
    row = by_key.get(key)
    if row is None:
        return Stat(None)
    interval = None if row["ci95_low"] is None else (row["ci95_low"], row["ci95_high"])
    return Stat(row["mean"], row["se"], interval if with_interval else None, scale, digits,
                expects_interval=with_interval)


def _tables(board: Leaderboard) -> list[Table]:
    by_key = {(r["entry"], r["split"], r["metric"]): r for r in board.summary}
    entries, shown, headline = sorted(board.runs), [s for s in board.splits if s.shown], headline_metric(board)
    out = []
    if headline:
        counted = [s for s in shown if s.name not in POOLED] or shown
        header = ["entry", *(s.label + arrow(headline) for s in shown), "seeds",
                  "test queries / seed (" + " / ".join(s.label.split(" (")[0] for s in counted) + ")"]
        header += ["trials"] if board.trials else []
        rows: list[list] = []
        for entry in entries:
            counts = [by_key.get((entry, s.name, headline), {}).get("queries") for s in counted]
            rows.append([entry, *(_stat(by_key, (entry, s.name, headline), True) for s in shown),
                         str(len(board.runs[entry])), " / ".join("–" if c is None else str(c) for c in counts)]
                        + ([board.trials.get(entry, "untuned")] if board.trials else []))
        table = Table(f"{display(headline)[0]} by test split", header, rows, [
            "Each entry's best configuration (or its untuned recipe), evaluated on the test splits (ID: in "
            "distribution, OOD: out of distribution; pooled: their queries together). Mean over seeds ± standard "
            "error over seeds (no ± with one seed) [95 % percentile bootstrap interval over the test queries, each "
            f"query's value averaged over seeds, {stats.RESAMPLES:,} resamples]. Bold: the best mean of a column."
            + (" Trials: the entry's tuning trials, run to the end (complete), stopped early by the sweep's pruner "
               "(pruned) or failed." if board.trials else "")])
        if any(isinstance(c, Stat) and c.mean is not None and c.interval is None for row in rows for c in row):
            table.notes.append(NO_RECORDS)
        for column in range(1, len(shown) + 1):
            tables.mark_best(table, column, higher_is_better(headline))
        out.append(table)
    # The other metrics on the in-distribution queries (the pooled ID mean, or the first split).
    where = next((s for s in board.splits if s.name == "test_id"), shown[0] if shown else None)
    others = [m for m in FORMATS if m != headline and where and any((e, where.name, m) in by_key for e in entries)]
    costs = [m for m in SHOWN_RUN_METRICS if any((e, "", m) in by_key for e in entries)]
    if others or costs:
        rows = [[entry, *(_stat(by_key, (entry, where.name, m), False) for m in others),
                 *(_stat(by_key, (entry, "", m), False) for m in costs)] for entry in entries]
        table = Table(f"other metrics, {where.label}" if others else "cost",
                      ["entry", *(display(m)[0] + arrow(m) for m in others + costs)], rows,
                      ["Mean over seeds ± standard error over seeds; every split, metric and interval is in "
                       "leaderboard.csv."])
        for column, metric in enumerate(others + costs, start=1):
            tables.mark_best(table, column, higher_is_better(metric))
        out.append(table)
    return out


def _provenance(parent) -> str:
    tags = parent.data.tags
    started = datetime.fromtimestamp(parent.info.start_time / 1000, tz=timezone.utc)
    sha = tags.get("git_sha", "unknown") + (" (uncommitted changes)" if tags.get("git_dirty") == "true" else "")
    version = f" version {tags['task_version']}" if tags.get("task_version") else ""  # none before it was tagged
    folder = f", settings folder `{tags['settings_folder']}`" if tags.get("settings_folder") else ""  # idem
    return (f"sweep `{tags.get('sweep', '')}`, scale `{tags.get('scale', '')}`, task `{tags.get('task', '')}`{version}{folder}, "
            f"model `{tags.get('model', '')}`; code {sha}; run {started:%Y-%m-%d %H:%M} UTC; "
            f"MLflow parent run `{parent.info.run_id}`; report generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.")


def _short(param: str) -> str:
    """A float parameter with 3 significant digits (MLflow stores them as full-precision text)."""
    try:
        return param if param.lstrip("-").isdigit() else f"{float(param):.3g}"
    except ValueError:
        return param


def _markdown(board: Leaderboard, parent) -> str:
    lines = [f"# {board.sweep}: leaderboard", ""]
    tabs = _tables(board)
    if not board.runs:
        tabs = [Table("no finished final run", ["entry"], [["(no finished final run)"]])]
    comparison = comparisons(board, headline_metric(board)) if headline_metric(board) else None
    lines += [tables.markdown(t) for t in tabs + ([comparison] if comparison else [])]
    if comparison is None and len(board.runs) > 1:
        lines += ["Paired comparisons need per-query results (`eval/<split>.jsonl`), which these runs lack.", ""]
    chosen = sorted(key for key in parent.data.params if key.startswith("best/"))
    if chosen:
        lines += ["Selected hyperparameters:", ""]
        lines += [f"- {key.removeprefix('best/').replace('/', ': ', 1)} = {_short(parent.data.params[key])}" for key in chosen]
        lines.append("")
    lines += ["---", "", _provenance(parent)]
    return "\n".join(lines) + "\n"


def _latex(board: Leaderboard, parent) -> str:
    head = [f"% {board.sweep}: leaderboard, from python -m bench.report; needs \\usepackage{{booktabs}}",
            "% " + _provenance(parent).replace("`", ""), ""]
    return "\n".join(head) + "\n".join(tables.latex(t) for t in _tables(board))


def build_leaderboard(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str) -> Leaderboard:
    """Read the finished final runs of one sweep invocation (and their per-query records) and lay
    them out as Markdown, LaTeX and CSV."""
    parent = client.get_run(parent_run_id)
    runs, splits = read_finals(client, experiment_id, parent_run_id)
    cells = {entry: {} for entry in runs}
    for entry, finals in runs.items():
        for run in finals:
            for key, value in run.metrics.items():
                cells[entry].setdefault(key, []).append(value)
            cells[entry].setdefault("seeds", []).append(float(run.seed) if run.seed.lstrip("-").isdigit() else float("nan"))
    # The entry's tuning trials by how they ended (the sweep logs `trials/<entry>` on its parent run,
    # counted over every invocation of the sweep); sweeps recorded before it have no such column.
    trials = {key.removeprefix("trials/"): value for key, value in parent.data.params.items() if key.startswith("trials/")}
    board = Leaderboard(parent.data.tags.get("sweep", ""), parent_run_id, cells, "", runs=runs, splits=splits,
                        summary=summary(runs, splits), trials=trials)
    board.markdown, board.latex = _markdown(board, parent), _latex(board, parent)
    board.csv = tables.csv_text(board.summary, CSV_COLUMNS)
    return board


def write_leaderboard(board: Leaderboard, out: Path) -> Path:
    """`leaderboard.md`, `.tex` and `.csv` in the folder `out`; returns the Markdown's path."""
    path = out / "leaderboard.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(board.markdown, encoding="utf-8")
    path.with_suffix(".tex").write_text(board.latex, encoding="utf-8")
    path.with_suffix(".csv").write_text(board.csv, encoding="utf-8")
    return path


def kept_message(out: Path, parent_run_id: str) -> str:
    """Why no leaderboard was written: one built from no finished final run would replace the last good one."""
    path = out / "leaderboard.md"
    return (f"leaderboard not written: no final run of sweep run {parent_run_id} finished; "
            + (f"{path} keeps the previous one" if path.exists() else "there is none yet"))


def main(argv: list[str]) -> int:
    """`sweep=NAME [task=T] [run_dir=...] [results_dir=...] [parent_run_id=...] [compare=A,B [metric=NAME]]`;
    the sweep's YAML file is not needed, only its MLflow store. `paper [run_dir=...] [results_dir=...]`:
    the paper's tables (bench/paper.py)."""
    if argv[:1] == ["paper"]:
        from bench.paper import main as paper_main  # the one command here that is not one sweep's leaderboard

        return paper_main(argv[1:])
    try:
        overrides = parse_overrides(argv)
        for key in overrides:
            check_choice("key", key, ["sweep", "task", "run_dir", "results_dir", "parent_run_id", "compare", "metric"])
        if "sweep" not in overrides:
            raise ConfigError("sweep=NAME is required")
        sweep, parent_id, task = overrides.pop("sweep"), overrides.pop("parent_run_id", None), overrides.pop("task", None)
        pair, metric = overrides.pop("compare", None), overrides.pop("metric", None)
        if metric is not None and pair is None:
            raise ConfigError("metric= only goes with compare=A,B")
        if pair is not None and (len(pair.split(",")) != 2 or len(set(pair.split(","))) != 2):
            raise ConfigError(f"compare= takes two entries, A,B; got {pair!r}")
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
        if parent_id is None:
            parent_id = latest_parent_run(client, experiment.experiment_id, sweep, task)
            tasks = [] if task else sweep_tasks(client, experiment.experiment_id, sweep)
            if len(tasks) > 1:
                print(f"report: the latest run of sweep {sweep}, on task {tasks[0]}; also run on: "
                      f"{', '.join(tasks[1:])} (choose with task=)")
        out = Path(cfg.results_dir) / client.get_run(parent_id).data.tags.get("results_folder", sweep)
        board = build_leaderboard(client, experiment.experiment_id, parent_id)
        if pair is not None:
            a, b = pair.split(",")
            text, rows = compare(board, a, b, metric)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"compare_{a}_vs_{b}.md").write_text(text, encoding="utf-8")
            (out / f"compare_{a}_vs_{b}.csv").write_text(rows, encoding="utf-8")
            print(text)
            print(f"comparison: {out / f'compare_{a}_vs_{b}.md'} (and .csv)")
            return 0
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not board.runs:
        print(f"error: {kept_message(out, parent_id)}", file=sys.stderr)
        return 1
    path = write_leaderboard(board, out)
    print(board.markdown)
    print(f"leaderboard: {path} (and .tex, .csv)")
    for figure in write_figures(client, experiment.experiment_id, parent_id, out):
        print(f"figure: {figure} (and .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

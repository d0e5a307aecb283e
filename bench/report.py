"""The leaderboard of a sweep, rebuilt from MLflow alone: `python -m bench.report sweep=NAME`.

It reads the sweep's final runs (tags `stage=final`, children of one sweep parent run; by default
the latest) and writes `<results_dir>/<sweep>/leaderboard.md`, `leaderboard.tex` (booktabs
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow

from bench import stats, tables, tracking
from bench.config import ConfigError, build_config, check_choice, parse_overrides
from bench.figures import write_figures
from bench.finals import (CSV_COLUMNS, FORMATS, POOLED, FinalRun, Split, display, higher_is_better, query_values,
                          read_finals, summary)
from bench.tables import Stat, Table

SHOWN_RUN_METRICS = ("wall_time_s", "total_forward_tokens", "train_device_s")  # run metrics of the other-metrics table
NO_RECORDS = ("[—]: no per-query results (`eval/<split>.jsonl`; runs recorded before they existed), "
              "so no interval.")


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


def latest_parent_run(client: mlflow.MlflowClient, experiment_id: str, sweep: str) -> str:
    runs = client.search_runs([experiment_id], max_results=1,
                              filter_string=f"tags.sweep = '{sweep}' and tags.stage = 'sweep'",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise ReportError(f"no sweep run of {sweep!r} in experiment {experiment_id}")
    return runs[0].info.run_id


def _stat(by_key: dict, key: tuple[str, str, str], with_interval: bool) -> Stat:
    """The summary row `key` (entry, split, metric) as a table cell."""
    _, scale, digits = display(key[2])
    row = by_key.get(key)
    if row is None:
        return Stat(None)
    interval = None if row["ci95_low"] is None else (row["ci95_low"], row["ci95_high"])
    return Stat(row["mean"], row["se"], interval if with_interval else None, scale, digits,
                expects_interval=with_interval)


def _headline(board: Leaderboard) -> str | None:
    """The metric of the headline table and of comparisons: the first of FORMATS the runs have per split."""
    metrics = {r["metric"] for r in board.summary if r["split"]}
    return next((m for m in FORMATS if m in metrics), None)


def _ranking_split(board: Leaderboard) -> Split | None:
    """The column that names the top entry: the pooled ID queries when shown, else the first split."""
    shown = [s for s in board.splits if s.shown]
    return next((s for s in shown if s.name == "test_id"), shown[0] if shown else None)


def _tables(board: Leaderboard) -> list[Table]:
    by_key = {(r["entry"], r["split"], r["metric"]): r for r in board.summary}
    entries, shown, headline = sorted(board.runs), [s for s in board.splits if s.shown], _headline(board)
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


def _p(value: float) -> str:
    return f"{value:.2g}"


def _difference(result: stats.Paired | None, metric: str) -> str:
    """`+12.5 [3.1, 21.9]` in display units; — without a comparison."""
    if result is None:
        return "—"
    _, scale, digits = display(metric)
    mean, _, interval = Stat(result.difference, None, result.interval, scale, digits, signed=True).parts()
    return mean + interval


def _comparisons(board: Leaderboard, metric: str) -> Table | None:
    """The top entry (best mean of the ranking column) against each other entry, per shown split;
    None without two entries or without per-query results."""
    ranking, shown = _ranking_split(board), [s for s in board.splits if s.shown]
    means = {r["entry"]: r["mean"] for r in board.summary
             if ranking and r["split"] == ranking.name and r["metric"] == metric and r["mean"] is not None}
    if len(means) < 2 or higher_is_better(metric) is None:
        return None
    top = (max if higher_is_better(metric) else min)(sorted(means), key=means.get)
    rows, any_result = [], False
    for other in sorted(board.runs):
        if other == top:
            continue
        cells = []
        for split in shown:
            a, b = (query_values(board.runs[e], split, metric) for e in (top, other))
            result = stats.paired(a, b) if a and b else None
            any_result |= result is not None
            cells.append(_difference(result, metric) + ("" if result is None else f", p = {_p(result.p_value)}"))
        rows.append([other, *cells])
    if not any_result:
        return None
    return Table(f"paired comparisons: {top} against each other entry", ["entry", *(s.label for s in shown)], rows, [
        f"Each cell: {top}'s mean {display(metric)[0]} minus the entry's, on the queries both evaluated [95 % paired "
        "bootstrap interval], and "
        "the p-value of an exact two-sided sign test over the queries where the two differ (not corrected for "
        "multiple comparisons). `python -m bench.report sweep=... compare=A,B` compares any two entries."])


def _provenance(parent) -> str:
    tags = parent.data.tags
    started = datetime.fromtimestamp(parent.info.start_time / 1000, tz=timezone.utc)
    sha = tags.get("git_sha", "unknown") + (" (uncommitted changes)" if tags.get("git_dirty") == "true" else "")
    version = f" version {tags['task_version']}" if tags.get("task_version") else ""  # none before it was tagged
    return (f"sweep `{tags.get('sweep', '')}`, scale `{tags.get('scale', '')}`, task `{tags.get('task', '')}`{version}, "
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
    comparison = _comparisons(board, _headline(board)) if _headline(board) else None
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


def write_leaderboard(board: Leaderboard, results_dir: Path, sweep: str) -> Path:
    """`leaderboard.md`, `.tex` and `.csv` under `<results_dir>/<sweep>/`; returns the Markdown's path."""
    path = results_dir / sweep / "leaderboard.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(board.markdown, encoding="utf-8")
    path.with_suffix(".tex").write_text(board.latex, encoding="utf-8")
    path.with_suffix(".csv").write_text(board.csv, encoding="utf-8")
    return path


def kept_message(results_dir: Path, sweep: str, parent_run_id: str) -> str:
    """Why no leaderboard was written: one built from no finished final run would replace the last good one."""
    path = results_dir / sweep / "leaderboard.md"
    return (f"leaderboard not written: no final run of sweep run {parent_run_id} finished; "
            + (f"{path} keeps the previous one" if path.exists() else "there is none yet"))


COMPARE_COLUMNS = ["entry_a", "entry_b", "split", "metric", "queries", "mean_a", "mean_b", "difference",
                   "ci95_low", "ci95_high", "wins", "ties", "losses", "p_value"]


def compare(board: Leaderboard, a: str, b: str, metric: str | None = None) -> tuple[str, str]:
    """Entries `a` and `b` query by query on every shown split: (Markdown, CSV)."""
    metric = metric or _headline(board)
    for entry in (a, b):
        if entry not in board.runs:
            raise ReportError(f"no entry {entry!r} among the final runs; entries: {', '.join(sorted(board.runs)) or 'none'}")
    if metric is None or not any(r["metric"] == metric and r["split"] for r in board.summary):
        known = sorted({r["metric"] for r in board.summary if r["split"]})
        raise ReportError(f"no test metric {metric!r} in these runs; metrics: {', '.join(known) or 'none'}")
    title, scale, digits = display(metric)
    rows, csv_rows = [], []
    for split in (s for s in board.splits if s.shown):
        va, vb = (query_values(board.runs[e], split, metric) for e in (a, b))
        result = stats.paired(va, vb) if va and vb else None
        if result is None:
            rows.append([split.label, "—", "—", "—", "—", "—", "—"])
            continue
        rows.append([split.label, *(Stat(m, scale=scale, digits=digits) for m in (result.mean_a, result.mean_b)),
                     _difference(result, metric), f"{result.wins} / {result.ties} / {result.losses}",
                     str(result.queries), _p(result.p_value)])
        csv_rows.append({"entry_a": a, "entry_b": b, "split": split.name, "metric": metric, "queries": result.queries,
                         "mean_a": result.mean_a, "mean_b": result.mean_b, "difference": result.difference,
                         "ci95_low": result.interval[0], "ci95_high": result.interval[1], "wins": result.wins,
                         "ties": result.ties, "losses": result.losses, "p_value": result.p_value})
    table = Table(f"{a} against {b}: {title}{arrow(metric)}",
                  ["split", a, b, f"{a} − {b} [95 % interval]", "wins / ties / losses", "queries", "p (sign test)"], rows, [
        "Per query: the value averaged over each entry's seeds, paired by query text. Interval: paired bootstrap "
        f"over the queries ({stats.RESAMPLES:,} resamples); p: exact two-sided sign test over the queries where the "
        f"two differ (wins: {a} higher). —: no per-query results for one of them."])
    return f"# {board.sweep}: {a} against {b}\n\n" + tables.markdown(table), tables.csv_text(csv_rows, COMPARE_COLUMNS)


def main(argv: list[str]) -> int:
    """`sweep=NAME [run_dir=...] [results_dir=...] [parent_run_id=...] [compare=A,B [metric=NAME]]`;
    the sweep's YAML file is not needed, only its MLflow store. `paper [run_dir=...] [results_dir=...]`:
    the paper's tables (bench/paper.py)."""
    if argv[:1] == ["paper"]:
        from bench.paper import main as paper_main  # the one command here that is not one sweep's leaderboard

        return paper_main(argv[1:])
    try:
        overrides = parse_overrides(argv)
        for key in overrides:
            check_choice("key", key, ["sweep", "run_dir", "results_dir", "parent_run_id", "compare", "metric"])
        if "sweep" not in overrides:
            raise ConfigError("sweep=NAME is required")
        sweep, parent_id = overrides.pop("sweep"), overrides.pop("parent_run_id", None)
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
    out = Path(cfg.results_dir) / sweep
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
        print(f"error: {kept_message(Path(cfg.results_dir), sweep, parent_id)}", file=sys.stderr)
        return 1
    path = write_leaderboard(board, Path(cfg.results_dir), sweep)
    print(board.markdown)
    print(f"leaderboard: {path} (and .tex, .csv)")
    for figure in write_figures(client, experiment.experiment_id, parent_id, Path(cfg.results_dir), sweep):
        print(f"figure: {figure} (and .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Entries of a leaderboard compared query by query: its paired-comparison table, and `compare=A,B` of bench/report.py."""
from __future__ import annotations

from bench import stats, tables
from bench.finals import Split, display, higher_is_better, query_values
from bench.leaderboard import Leaderboard, ReportError, arrow, headline_metric
from bench.tables import Stat, Table


def ranking_split(board: Leaderboard) -> Split | None:
    """The column that names the top entry: the pooled ID queries when shown, else the first split."""
    shown = [s for s in board.splits if s.shown]
    return next((s for s in shown if s.name == "test_id"), shown[0] if shown else None)


def _p(value: float) -> str:
    return f"{value:.2g}"


def _difference(result: stats.Paired | None, metric: str) -> str:
    """`+12.5 [3.1, 21.9]` in display units; — without a comparison."""
    if result is None:
        return "—"
    _, scale, digits = display(metric)
    mean, _, interval = Stat(result.difference, None, result.interval, scale, digits, signed=True).parts()
    return mean + interval


def comparisons(board: Leaderboard, metric: str) -> Table | None:
    """The top entry (best mean of the ranking column) against each other entry, per shown split;
    None without two entries or without per-query results."""
    ranking, shown = ranking_split(board), [s for s in board.splits if s.shown]
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


COMPARE_COLUMNS = ["entry_a", "entry_b", "split", "metric", "queries", "mean_a", "mean_b", "difference",
                   "ci95_low", "ci95_high", "wins", "ties", "losses", "p_value"]


def compare(board: Leaderboard, a: str, b: str, metric: str | None = None) -> tuple[str, str]:
    """Entries `a` and `b` query by query on every shown split: (Markdown, CSV)."""
    metric = metric or headline_metric(board)
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

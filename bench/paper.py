"""The paper's tables rebuilt from MLflow: `python -m bench.report paper`.

From the latest invocation of each `paper_*` sweep found in the store (for SUBJ, the latest per
`task.n_train`), `<results_dir>/paper/paper.md` (and `paper.csv`, one row per table × row ×
column) lays out the analogues of the paper's Table 2 (infilling), Table 3 (SUBJ at 10/20/50
examples), Table 4 (arithmetic by operand count) and Figure 3 (continuation: likelihood against
diversity, also drawn as `figure3.png`/`.pdf`), each cell beside the number the paper reports
(../shared/notes/paper.md: GPT-J 6B, GPT-2 Large or XL, not the model run here), and a line per
ordering the paper reports saying whether it holds here. A sweep that has not been run shows as
missing, never as zero. Cells: mean over seeds ± standard error [95 % bootstrap interval over
the test queries], as in the leaderboard (bench/finals.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow

from bench import stats, tables, tracking
from bench.config import build_config, check_choice, parse_overrides
from bench.figures import final_runs, save, tradeoff_figure
from bench.finals import FinalRun, Split, display, higher_is_better, query_values, read_finals, summary
from bench.tables import Stat, Table
from bench.errors import ConfigError

NOTES = "../shared/notes/paper.md"


@dataclass(frozen=True)
class Column:
    label: str
    split: str
    metric: str
    n_train: int | None = None  # SUBJ: the sweep invocation with this task.n_train


@dataclass(frozen=True)
class PaperTable:
    name: str
    sweep: str
    paper_model: str
    columns: list[Column]
    rows: list[tuple[str, str]]  # (the paper's row, the sweep entry that reproduces it)
    reported: dict[str, dict[str, float]] = field(default_factory=dict)  # paper row -> column label -> value (display units)
    orderings: list[tuple[str, str, str]] = field(default_factory=list)  # (row reported better, row reported worse, column)
    note: str = ""


ARITHMETIC_COLUMNS = [Column("3 operands", "test_3op", "accuracy"), Column("4 operands", "test_4op", "accuracy"),
                      Column("5 operands (OOD)", "test_5op", "accuracy")]
PAPER = [
    PaperTable("Table 2: story infilling", "paper_infilling", "GPT-2 Large fine-tuned on ROCStories",
               [Column("BLEU-4", "test", "bleu4"), Column("GLEU", "test", "gleu")],
               [("Prompting", "zero_shot"), ("SFT", "sft"), ("GFlowNet", "gfn_tb")],
               note="The paper's cells (and its BERTScore and GPT-4 columns) are not in the notes; nothing to compare."),
    PaperTable("Table 3: SUBJ, accuracy (%) by number of labelled examples", "paper_subj", "instruct GPT-J 6B",
               [Column(f"{n} examples", "test", "accuracy", n) for n in (10, 20, 50)],
               [("Zero-shot", "zero_shot"), ("Few-shot", "few_shot"), ("SFT", "sft"), ("GFlowNet", "gfn_tb")],
               {"GFlowNet": {"10 examples": 71.4}, "SFT": {"10 examples": 64.3}},
               [("GFlowNet", "SFT", "10 examples")],
               note="Only the 10-example GFlowNet and SFT cells are in the notes (from a secondary source)."),
    PaperTable("Table 4: integer arithmetic, accuracy (%) by operand count", "paper_arithmetic", "instruct GPT-J 6B",
               ARITHMETIC_COLUMNS,
               [("Zero-shot CoT", "zero_shot"), ("Few-shot CoT", "few_shot"), ("SFT", "sft"), ("PPO", "ppo"),
                ("GFlowNet", "gfn_tb")],
               {"SFT": {"3 operands": 72.1, "4 operands": 19.6, "5 operands (OOD)": 12.8},
                "PPO": {"3 operands": 30.6, "4 operands": 13.7, "5 operands (OOD)": 5.6},
                "GFlowNet": {"3 operands": 95.2, "4 operands": 75.4, "5 operands (OOD)": 40.7}},
               [(a, b, c.label) for c in ARITHMETIC_COLUMNS for a, b in (("GFlowNet", "SFT"), ("SFT", "PPO"))],
               note="Reported cells from a secondary source; the zero- and few-shot CoT rows are not in the notes."),
    PaperTable("Figure 3: sentence continuation, likelihood and diversity", "paper_continuation", "GPT-2 XL",
               [Column("max log-likelihood", "test", "loglik_max"), Column("embedding diversity", "test", "embedding_diversity")],
               [("GFlowNet", "gfn_tb"), ("sampling", "zero_shot"), ("greedy", "greedy"), ("beam", "beam"),
                ("beam (5x)", "beam_5x"), ("diverse beam", "diverse_beam"), ("nucleus", "nucleus"), ("tempered", "tempered")],
               orderings=[("GFlowNet", "diverse beam", "max log-likelihood"), ("GFlowNet", "diverse beam", "embedding diversity")],
               note="The paper reports a plot only (GFlowNet beats diverse beam search on both axes); no numbers."),
]


@dataclass
class Found:
    """One sweep invocation's final runs and their summary rows."""

    parent: mlflow.entities.Run
    runs: dict[str, list[FinalRun]]
    splits: list[Split]
    by_key: dict[tuple[str, str, str], dict]


def invocations(client: mlflow.MlflowClient, sweep: str) -> list[str]:
    """The sweep's parent runs on its own task, latest first; [] when the sweep was never run in this store."""
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        return []
    # A run on another task than the sweep file's has its results below `<sweep>/` (runs recorded before the tag had none).
    return [r.info.run_id for r in client.search_runs(
        [experiment.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.sweep = '{sweep}' and tags.stage = 'sweep'")
        if r.data.tags.get("results_folder", sweep) == sweep]


def read_invocation(client: mlflow.MlflowClient, parent_id: str) -> Found | None:
    parent = client.get_run(parent_id)
    runs, splits = read_finals(client, parent.info.experiment_id, parent_id)
    if not runs:
        return None
    return Found(parent, runs, splits, {(r["entry"], r["split"], r["metric"]): r for r in summary(runs, splits)})


def n_train(client: mlflow.MlflowClient, found: Found) -> int | None:
    run = client.get_run(next(iter(found.runs.values()))[0].run_id)
    value = run.data.params.get("task.n_train")
    return int(value) if value and value.isdigit() else None


def find(client: mlflow.MlflowClient, table: PaperTable) -> dict[int | None, Found]:
    """n_train (None: any) -> the latest invocation with final runs, for each n_train the table needs."""
    wanted = {c.n_train for c in table.columns}
    out: dict[int | None, Found] = {}
    for parent_id in invocations(client, table.sweep):
        found = read_invocation(client, parent_id)
        if found is None:
            continue
        key = n_train(client, found) if wanted != {None} else None
        if key in wanted and key not in out:
            out[key] = found
        if set(out) == wanted:
            break
    return out


def _cell(found: Found | None, entry: str, column: Column) -> Stat | str:
    if found is None:
        return "missing"
    row = found.by_key.get((entry, column.split, column.metric))
    if row is None:
        return "–"
    _, scale, digits = display(column.metric)
    interval = None if row["ci95_low"] is None else (row["ci95_low"], row["ci95_high"])
    return Stat(row["mean"], row["se"], interval, scale, digits, expects_interval=True)


def _ordering(found: dict, table: PaperTable, better: str, worse: str, label: str) -> str:
    """`- GFlowNet > SFT (3 operands): holds here (62.5 vs 25.0, paired sign test p = 0.03 over 32 queries)`;
    `reversed` when the other row is ahead, `a tie` when the means are equal."""
    column = next(c for c in table.columns if c.label == label)
    entries = dict(table.rows)
    here = found.get(column.n_train)
    sign = ">" if higher_is_better(column.metric) is not False else "<"
    claim = f"{better} {sign} {worse} ({label})"
    cells = [_cell(here, entries[row], column) for row in (better, worse)]
    if not all(isinstance(c, Stat) and c.mean is not None for c in cells):
        return f"- {claim}: cannot tell here, " + ("the sweep was not run" if here is None else "a row is missing")
    a, b = (c.mean for c in cells)
    verdict = "a tie" if a == b else "holds" if (a > b) == (sign == ">") else "reversed"
    values = " vs ".join(c.number(c.mean) for c in cells)
    split = next((s for s in here.splits if s.name == column.split), None)
    per_query = [query_values(here.runs[entries[row]], split, column.metric) if split else None for row in (better, worse)]
    test = stats.paired(*per_query) if all(per_query) else None
    p = "" if test is None else f", paired sign test p = {test.p_value:.2g} over {test.queries} queries"
    return f"- {claim}: {verdict} here ({values}{p})"


def build_table(client: mlflow.MlflowClient, table: PaperTable) -> tuple[Table, list[str], list[dict]]:
    """(the table, its ordering lines, its CSV rows)."""
    found = find(client, table)
    header = ["row"]
    for column in table.columns:
        header += [f"{column.label} here", f"{column.label} reported"]
    entries = [entry for _, entry in table.rows]
    extra = sorted({e for f in found.values() for e in f.runs} - set(entries))  # entries the paper has no row for
    rows, csv_rows = [], []
    for paper_row, entry in table.rows + [(e, e) for e in extra]:
        row = [paper_row if paper_row == entry else f"{paper_row} (`{entry}`)"]
        for column in table.columns:
            cell = _cell(found.get(column.n_train), entry, column)
            reported = table.reported.get(paper_row, {}).get(column.label)
            row += [cell, "—" if reported is None else f"{reported:.1f}"]
            csv_rows.append({"table": table.name, "row": paper_row, "entry": entry, "column": column.label,
                             "split": column.split, "metric": column.metric, "n_train": column.n_train,
                             "mean": cell.mean * display(column.metric)[1] if isinstance(cell, Stat) else None,
                             "se": cell.se * display(column.metric)[1] if isinstance(cell, Stat) and cell.se is not None else None,
                             "status": "run" if isinstance(cell, Stat) else cell, "reported": reported})
        rows.append(row)
    out = Table(table.name, header, rows)
    for i, column in enumerate(table.columns):
        tables.mark_best(out, 1 + 2 * i, higher_is_better(column.metric))
    sources = []
    for key, f in sorted(found.items(), key=lambda kv: kv[0] or 0):
        tags = f.parent.data.tags
        sources.append(("" if key is None else f"n_train={key}: ") + f"scale `{tags.get('scale', '?')}`, model "
                       f"`{tags.get('model', '?')}`, code {tags.get('git_sha', '?')[:8]}, parent run `{f.parent.info.run_id}`")
    missing = sorted({c.n_train for c in table.columns} - set(found), key=lambda k: k or 0)
    out.notes.append(f"Here: sweep `{table.sweep}`" + (" (" + "; ".join(sources) + ")" if sources else "") + ". "
                     f"Reported: the paper with {table.paper_model} ({NOTES}). Mean over seeds ± standard error "
                     "[95 % bootstrap interval over the test queries]; bold: the best mean here.")
    if missing:
        runs = " and ".join(f"`python -m bench.run sweep={table.sweep}" + ("" if k is None else f" task.n_train={k}") + "`"
                         for k in missing)
        out.notes.append(f"missing: no finished final run of `{table.sweep}`"
                         + ("" if missing == [None] else " with n_train=" + "/".join(str(k) for k in missing))
                         + f" in this store; run {runs}.")
    if table.note:
        out.notes.append(table.note)
    lines = [_ordering(found, table, *claim) for claim in table.orderings]
    return out, lines, csv_rows


CSV_COLUMNS = ["table", "row", "entry", "column", "split", "metric", "n_train", "mean", "se", "status", "reported"]


def write_paper(client: mlflow.MlflowClient, out: Path) -> Path:
    """`paper.md`, `paper.csv` (and Figure 3 when the continuation sweep exists) under `out`."""
    lines = ["# The paper's tables, reproduced", "",
             "Each table from the latest `paper_*` sweep in the MLflow store beside the numbers the paper reports. "
             "The paper's models (GPT-J 6B, GPT-2 Large/XL) and budgets are not those run here unless the sweep ran "
             "at `scale=paper` with that model: compare orderings, not levels. Each table's note names the scale its "
             "sweep ran at (`smoke`: 3 steps and 4 test queries per split, a check of the pipeline, not a result).", ""]
    csv_rows = []
    for table in PAPER:
        built, orderings, rows = build_table(client, table)
        csv_rows += rows
        lines.append(tables.markdown(built))
        if orderings:
            lines += ["Orderings the paper reports:", "", *orderings, ""]
    continuation = invocations(client, "paper_continuation")
    if continuation:
        experiment = client.get_run(continuation[0]).info.experiment_id
        finals = {e: [dict(r.data.metrics) for r in rs] for e, rs in final_runs(client, experiment, continuation[0]).items()}
        fig = tradeoff_figure(finals, "paper_continuation")
        if fig is not None:
            save(fig, out, "figure3")
            lines += ["![Figure 3 analogue](figure3.png)", ""]
    lines += ["---", "", f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python -m bench.report paper` "
              f"from {mlflow.get_tracking_uri()}."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "paper.csv").write_text(tables.csv_text(csv_rows, CSV_COLUMNS), encoding="utf-8")
    return out / "paper.md"


def main(argv: list[str]) -> int:
    """`[run_dir=...] [results_dir=...]`: every paper table from the store of `run_dir`."""
    try:
        overrides = parse_overrides(argv)
        for key in overrides:
            check_choice("key", key, ["run_dir", "results_dir"])
        cfg = build_config([(None, overrides)])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri = tracking.tracking_uri(cfg.run_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"error: no MLflow store at {uri}; pass the sweeps' run_dir=", file=sys.stderr)
        return 1
    mlflow.set_tracking_uri(uri)
    path = write_paper(mlflow.MlflowClient(uri), Path(cfg.results_dir) / "paper")
    print(path.read_text(encoding="utf-8"))
    print(f"paper tables: {path} (and paper.csv)")
    return 0

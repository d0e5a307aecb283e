"""The leaderboard, built from a throwaway SQLite MLflow store that the test fills in, and the
statistics behind it checked against slow references written out here."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics

import mlflow
import numpy as np
import pytest

from bench import finals, report, stats


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("demo", artifact_location=(tmp_path / "art").as_uri())
    return client, experiment_id


def add_run(client, experiment_id, tags, metrics, status="FINISHED", records=None):
    run = client.create_run(experiment_id, tags=tags)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value, step=3)
    for split, rows in (records or {}).items():
        client.log_text(run.info.run_id, "".join(json.dumps(r) + "\n" for r in rows), f"eval/{split}.jsonl")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def add_parent(client, experiment_id):
    parent = client.create_run(experiment_id, tags={
        "sweep": "demo", "stage": "sweep", "scale": "smoke", "task": "arithmetic", "model": "tiny",
        "git_sha": "abc123", "git_dirty": "false", "task_version": "1"}).info.run_id
    client.log_param(parent, "best/gfn_tb/method.lr", 0.001)
    return parent


def add_sweep(client, experiment_id, finals):
    """Finals as runs recorded them before per-query records and split tags existed."""
    parent = add_parent(client, experiment_id)
    for method, seed, id_acc, status in finals:
        add_run(client, experiment_id,
                {"sweep": "demo", "stage": "final", "method": method, "seed": str(seed),
                 "mlflow.parentRunId": parent},
                {"test_id/accuracy": id_acc, "test_ood/accuracy": id_acc / 2, "test_id/loglik_mean": -10.0 - seed,
                 "test_id/distinct_2": 0.5, "wall_time_s": 60.0 + seed}, status)
    client.set_terminated(parent)
    return parent


def row_of(lines, name):
    return next(line for line in lines if line.startswith(f"| {name} |")).strip("| ").split(" | ")


# --- the statistics, against slow references --------------------------------------------------

def slow_quantile(sorted_values, q):
    """numpy's default (linear) quantile, written out."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    return sorted_values[lo] + (h - lo) * (sorted_values[min(lo + 1, len(sorted_values) - 1)] - sorted_values[lo])


def slow_bootstrap(values, resamples=stats.RESAMPLES, seed=stats.SEED):
    """The same draws as stats.bootstrap_interval (one index matrix from a fresh generator), the
    means and quantiles by hand."""
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values))).tolist()
    means = sorted(sum(values[i] for i in row) / len(values) for row in draws)
    return slow_quantile(means, 0.025), slow_quantile(means, 0.975)


def test_mean_standard_error_and_bootstrap_interval_match_slow_references():
    assert stats.mean_se([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(0.2 / math.sqrt(3)))
    assert stats.mean_se([0.25]) == (0.25, None) and stats.mean_se([]) == (None, None)
    values = [1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1]
    assert stats.bootstrap_interval(values, resamples=2000) == pytest.approx(slow_bootstrap(values, 2000), abs=1e-12)
    assert stats.bootstrap_interval([]) is None and stats.bootstrap_interval([3.0]) == (3.0, 3.0)
    # Many 0/1 queries: close to the normal interval p ± 1.96 sqrt(p (1 - p) / n).
    low, high = stats.bootstrap_interval([1, 0] * 200)
    assert low == pytest.approx(0.5 - 1.96 * math.sqrt(0.25 / 400), abs=0.005)
    assert high == pytest.approx(0.5 + 1.96 * math.sqrt(0.25 / 400), abs=0.005)
    # Seeds of one query are averaged before queries are resampled.
    assert stats.per_query([{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.0, "c": 1.0}]) == {"a": 0.5, "b": 0.0, "c": 1.0}


def test_sign_test_and_paired_comparison_on_constructed_cases():
    assert stats.sign_test(0, 0) == 1.0 and stats.sign_test(3, 3) == 1.0
    assert stats.sign_test(10, 0) == stats.sign_test(0, 10) == 2 * 0.5**10
    assert stats.sign_test(7, 2) == pytest.approx(2 * (1 + 9 + 36) / 2**9)  # 2 P(X <= 2), X ~ Bin(9, 1/2)

    a = {("s", f"q{i}", 1): float(i % 3 == 0) for i in range(12)}
    same = stats.paired(a, dict(a))
    assert (same.difference, same.p_value, same.wins, same.losses, same.ties) == (0.0, 1.0, 0, 0, 12)
    right = {q: 1.0 for q in a}
    wrong = {q: 0.0 for q in a}
    one_sided = stats.paired(right, wrong)
    assert one_sided.p_value == 2 * 0.5**12 and one_sided.interval == (1.0, 1.0) and one_sided.wins == 12
    # Only shared queries count; none shared: no comparison.
    part = stats.paired({"x": 1.0, "y": 1.0}, {"y": 0.0, "z": 0.0})
    assert part.queries == 1 and part.difference == 1.0
    assert stats.paired({"x": 1.0}, {"z": 1.0}) is None


# --- a sweep whose runs kept their per-query results -------------------------------------------

SPLITS = {"test_3op": True, "test_4op": True, "test_5op": False}
CORRECT = {  # entry -> seed -> split -> correct per query (8 queries per split)
    "gfn_tb": {0: {"test_3op": [1, 1, 1, 1, 1, 1, 1, 1], "test_4op": [1, 0, 1, 1, 0, 1, 0, 0],
                   "test_5op": [0, 0, 1, 0, 0, 0, 0, 0]},
               1: {"test_3op": [1, 1, 1, 1, 1, 1, 1, 0], "test_4op": [1, 1, 1, 0, 0, 1, 0, 0],
                   "test_5op": [0, 0, 0, 0, 0, 0, 0, 0]}},
    "ppo": {0: {"test_3op": [0] * 8, "test_4op": [0, 0, 1, 0, 0, 0, 0, 0], "test_5op": [0, 1, 0, 0, 0, 0, 0, 0]}},
    "ppo_copy": {0: {"test_3op": [0] * 8, "test_4op": [0, 0, 1, 0, 0, 0, 0, 0], "test_5op": [0, 1, 0, 0, 0, 0, 0, 0]}},
}


def loglik(entry, seed, split, q):
    return -5.0 - q - 2 * seed + 2 * (entry != "gfn_tb")


def records(entry, seed):
    return {split: [{"query": f"{q} + {len(split)}{split[-3]}", "answer": str(q), "vote": str(q) if c else None,
                     "correct": c, "loglik_mean": loglik(entry, seed, split, q), "sample": " 1 + 1 = 2"}
                    for q, c in enumerate(CORRECT[entry][seed][split])]
            for split in SPLITS}


def add_recorded_sweep(client, experiment_id):
    parent = add_parent(client, experiment_id)
    for entry, seeds in CORRECT.items():
        for seed in seeds:
            rows = records(entry, seed)
            metrics = {"wall_time_s": 100.0 + 10 * seed + (entry != "gfn_tb")}
            for split, in_distribution in SPLITS.items():
                metrics |= {f"{split}/accuracy": statistics.fmean(r["correct"] for r in rows[split]),
                            f"{split}/loglik_mean": statistics.fmean(r["loglik_mean"] for r in rows[split]),
                            f"{split}/queries": 8.0}
            pooled = rows["test_3op"] + rows["test_4op"]
            metrics |= {"test_id/accuracy": statistics.fmean(r["correct"] for r in pooled), "test_id/queries": 16.0,
                        "test_id/loglik_mean": statistics.fmean(r["loglik_mean"] for r in pooled),
                        "test_ood/accuracy": metrics["test_5op/accuracy"], "test_ood/queries": 8.0}
            add_run(client, experiment_id, {
                "sweep": "demo", "stage": "final", "method": entry.removesuffix("_copy"), "entry": entry,
                "seed": str(seed), "mlflow.parentRunId": parent, "test_splits": "test_3op,test_4op,test_5op",
                "test_splits_ood": "test_5op"}, metrics, records=rows)
    client.set_terminated(parent)
    return parent


def expected(entry, splits, field="correct"):
    """(mean over seeds, standard error over seeds or None, slow bootstrap interval) of `splits` pooled."""
    seeds = CORRECT[entry]
    per_seed = [[r[field] for s in splits for r in records(entry, seed)[s]] for seed in seeds]
    means = [sum(v) / len(v) for v in per_seed]
    se = statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else None
    per_query = [sum(column) / len(column) for column in zip(*per_seed)]
    return statistics.fmean(means), se, slow_bootstrap(per_query)


def shown(mean, se, interval, scale=100, digits=1):
    text = f"{mean * scale:.{digits}f}" + ("" if se is None else f" ± {se * scale:.{digits}f}")
    return text, f" [{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]"


def test_leaderboard_gives_means_standard_errors_and_bootstrap_intervals_in_md_tex_and_csv(store, tmp_path):
    client, experiment_id = store
    parent = add_recorded_sweep(client, experiment_id)
    assert report.main(["sweep=demo", f"results_dir={tmp_path / 'results'}"]) == 0
    folder = tmp_path / "results" / "demo"
    md = (folder / "leaderboard.md").read_text()
    tex = (folder / "leaderboard.tex").read_text()
    table = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text())))
    lines = md.splitlines()

    header = next(line for line in lines if line.startswith("| entry | test_3op"))
    assert header.split(" | ")[1:6] == ["test_3op (ID) ↑", "test_4op (ID) ↑", "test_5op (OOD) ↑", "ID (pooled) ↑",
                                       "seeds"]
    assert "OOD (pooled)" not in header  # one OOD split: its pooled mean is that split
    columns = {"test_3op": ["test_3op"], "test_4op": ["test_4op"], "test_5op": ["test_5op"],
               "test_id": ["test_3op", "test_4op"]}
    best = {"test_3op": "gfn_tb", "test_4op": "gfn_tb", "test_5op": None, "test_id": "gfn_tb"}
    for entry in CORRECT:
        cells = row_of(lines, entry)
        assert cells[5:] == [str(len(CORRECT[entry])), "8 / 8 / 8"]
        for i, (split, parts) in enumerate(columns.items(), start=1):
            mean, se, interval = expected(entry, parts)
            number, bounds = shown(mean, se, interval)
            bold = best[split] == entry or (split == "test_5op" and entry != "gfn_tb")  # ppo and its copy tie
            assert cells[i] == (f"**{number.split(' ')[0]}**" + number[len(number.split(' ')[0]):] if bold else number) + bounds
            # The same numbers in the LaTeX and the CSV.
            tex_number = number.replace(" ± ", r" $\pm$ ")
            assert (rf"\textbf{{{number.split(' ')[0]}}}" + tex_number[len(number.split(' ')[0]):] if bold else tex_number) + bounds in tex
            (row,) = [r for r in table if (r["entry"], r["split"], r["metric"]) == (entry, split, "accuracy")]
            assert float(row["mean"]) == pytest.approx(mean) and float(row["ci95_low"]) == pytest.approx(interval[0])
            assert float(row["ci95_high"]) == pytest.approx(interval[1])
            assert row["se"] == "" if se is None else float(row["se"]) == pytest.approx(se)
            assert (row["seeds"], row["queries"], row["higher_is_better"]) == (
                str(len(CORRECT[entry])), "16" if split == "test_id" else "8", "true")
            assert row["in_distribution"] == ("false" if split == "test_5op" else "true")
    gfn = row_of(lines, "gfn_tb")
    # Seeds (100, 87.5) %: 93.8 ± 6.2. Per query 1 (7 of them) and 0.5: a resample's mean is 0.8125
    # or less when it draws the 0.5 query 3 times or more (P = 0.067), below only with 4 or more
    # (P = 0.011), so the 2.5 % quantile is 0.8125.
    assert gfn[1] == "**93.8** ± 6.2 [81.2, 100.0]"
    # Every other metric, per split, with its own interval: log-likelihood per query.
    (ll,) = [r for r in table if (r["entry"], r["split"], r["metric"]) == ("gfn_tb", "test_4op", "loglik_mean")]
    mean, se, interval = expected("gfn_tb", ["test_4op"], "loglik_mean")
    assert float(ll["mean"]) == pytest.approx(mean) and float(ll["ci95_low"]) == pytest.approx(interval[0])
    (wall,) = [r for r in table if (r["entry"], r["metric"]) == ("ppo", "wall_time_s")]
    assert (wall["split"], float(wall["mean"]), wall["se"], wall["ci95_low"], wall["higher_is_better"]) == (
        "", 101.0, "", "", "false")

    # The other-metrics table (the in-distribution queries) keeps wall time; the paired comparisons
    # put the top entry against each other; provenance as before.
    other = next(line for line in lines if line.startswith("| entry | log-likelihood"))
    assert other == "| entry | log-likelihood ↑ | wall time (s) ↓ |"
    below = lines[lines.index(other):]
    assert row_of(below, "ppo")[1:] == ["**-6.50**", "**101**"] == row_of(below, "ppo_copy")[1:]
    assert row_of(below, "gfn_tb")[1:] == ["-9.50 ± 1.00", "105 ± 5"]
    assert "## paired comparisons: gfn_tb against each other entry" in md
    assert "- gfn_tb: method.lr = 0.001" in md and parent in md and "abc123" in md and "`tiny`" in md
    assert "task `arithmetic` version 1, " in md
    assert "[—]" not in md


def test_the_tex_is_a_booktabs_fragment_with_special_characters_escaped(store, tmp_path):
    client, experiment_id = store
    add_recorded_sweep(client, experiment_id)
    board = report.build_leaderboard(client, experiment_id, report.latest_parent_run(client, experiment_id, "demo"))
    body = "\n".join(line for line in board.latex.splitlines() if not line.startswith("%"))
    for begin, end in ((r"\begin{table}", r"\end{table}"), (r"\begin{tabular}", r"\end{tabular}")):
        assert body.count(begin) == body.count(end) == 2
    assert body.count(r"\toprule") == body.count(r"\midrule") == body.count(r"\bottomrule") == 2
    assert body.count("{") == body.count("}")
    for spec, rows in re.findall(r"\\begin\{tabular\}\{(\w+)\}\n(.*?)\\bottomrule", body, re.S):
        for row in [r for r in rows.splitlines() if r not in (r"\toprule", r"\midrule")]:
            assert row.endswith(r" \\") and row.count(" & ") == len(spec) - 1, row
    for special in ("_", "%", "#"):
        assert not re.search(r"(?<!\\)" + re.escape(special), body), special
    assert not set("±↑↓—–") & set(body)
    assert r"gfn\_tb" in body and r"accuracy (\%) by test split" in body and r"$\uparrow$" in body
    assert r"\textbf{" in body and r"$\pm$" in body


def test_compare_pairs_two_entries_query_by_query(store, tmp_path, capsys):
    client, experiment_id = store
    add_recorded_sweep(client, experiment_id)
    out = tmp_path / "results" / "demo"
    assert report.main(["sweep=demo", "compare=gfn_tb,ppo", f"results_dir={tmp_path / 'results'}"]) == 0
    printed = capsys.readouterr().out
    md = (out / "compare_gfn_tb_vs_ppo.md").read_text()
    assert md in printed and not (out / "leaderboard.md").exists()
    rows = {r["split"]: r for r in csv.DictReader(io.StringIO((out / "compare_gfn_tb_vs_ppo.csv").read_text()))}
    # test_3op: gfn_tb's per-query means are 1 (7 queries) and 0.5; ppo gets none: 8 wins.
    assert float(rows["test_3op"]["p_value"]) == 2 * 0.5**8
    assert (rows["test_3op"]["wins"], rows["test_3op"]["losses"], rows["test_3op"]["ties"]) == ("8", "0", "0")
    assert float(rows["test_3op"]["difference"]) == pytest.approx(7.5 / 8)
    # test_4op: per query gfn_tb (1, .5, 1, .5, 0, 1, 0, 0), ppo (0, 0, 1, 0, 0, 0, 0, 0): 4 wins, 4 ties.
    assert (rows["test_4op"]["wins"], rows["test_4op"]["ties"], rows["test_4op"]["losses"]) == ("4", "4", "0")
    assert float(rows["test_4op"]["p_value"]) == pytest.approx(2 * 0.5**4)
    # test_5op: (0, 0, 0.5, 0, ...) against (0, 1, 0, ...): one each way.
    assert float(rows["test_5op"]["p_value"]) == 1.0
    lines = md.splitlines()
    assert row_of(lines, "test_3op (ID)")[3:] == ["+93.8 [81.2, 100.0]", "8 / 0 / 0", "8", "0.0078"]
    assert set(rows) == {"test_3op", "test_4op", "test_5op", "test_id"}

    assert report.main(["sweep=demo", "compare=ppo,ppo_copy", f"results_dir={tmp_path / 'results'}"]) == 0
    same = list(csv.DictReader(io.StringIO((out / "compare_ppo_vs_ppo_copy.csv").read_text())))
    assert {float(r["p_value"]) for r in same} == {1.0} and {float(r["difference"]) for r in same} == {0.0}

    assert report.main(["sweep=demo", "compare=gfn_tb,nope", f"results_dir={tmp_path / 'results'}"]) == 1
    assert "no entry 'nope'" in capsys.readouterr().err
    assert report.main(["sweep=demo", "compare=gfn_tb", f"results_dir={tmp_path / 'results'}"]) == 2
    assert report.main(["sweep=demo", "metric=accuracy", f"results_dir={tmp_path / 'results'}"]) == 2


# --- runs recorded before per-query records -----------------------------------------------------

def test_leaderboard_of_runs_without_per_query_records(store, tmp_path):
    client, experiment_id = store
    old = add_sweep(client, experiment_id, [("gfn_tb", 0, 0.9, "FINISHED")])
    parent = add_sweep(client, experiment_id, [
        ("gfn_tb", 0, 0.50, "FINISHED"), ("gfn_tb", 1, 0.70, "FINISHED"),
        ("gfn_tb", 2, 0.99, "FAILED"),  # failed finals are left out
        ("ppo", 0, 0.25, "FINISHED"),
    ])
    # A trial of the same sweep is not a final run.
    add_run(client, experiment_id, {"sweep": "demo", "stage": "trial", "method": "ppo", "seed": "0",
                                    "mlflow.parentRunId": parent}, {"test_id/accuracy": 1.0})

    assert report.latest_parent_run(client, experiment_id, "demo") == parent
    board = report.build_leaderboard(client, experiment_id, parent)
    assert board.cells["gfn_tb"]["test_id/accuracy"] == pytest.approx([0.5, 0.7])
    assert board.cells["ppo"]["test_id/accuracy"] == [0.25]
    lines = board.markdown.splitlines()
    header = next(line for line in lines if line.startswith("| entry | ID"))
    assert header == "| entry | ID (pooled) ↑ | OOD (pooled) ↑ | seeds | test queries / seed (ID / OOD) |"
    # mean ± standard error over seeds: (50, 70) % -> 60.0 ± 10.0; no interval without records.
    assert row_of(lines, "gfn_tb")[1:] == ["**60.0** ± 10.0 [—]", "**30.0** ± 5.0 [—]", "2", "– / –"]
    assert row_of(lines, "ppo")[1:3] == ["25.0 [—]", "12.5 [—]"]
    assert report.NO_RECORDS in board.markdown
    assert "Paired comparisons need per-query results" in board.markdown
    other = next(line for line in lines if line.startswith("| entry | log-likelihood"))
    assert "distinct-2 ↑" in other and "wall time (s) ↓" in other
    assert "gfn_tb: method.lr = 0.001" in board.markdown
    assert parent in board.markdown and old not in board.markdown
    assert "abc123" in board.markdown and "`smoke`" in board.markdown and "`tiny`" in board.markdown
    assert "ci95_low" in board.csv.splitlines()[0] and r"$\pm$" in board.latex

    assert report.main(["sweep=demo", f"results_dir={tmp_path / 'results'}"]) == 0
    written = (tmp_path / "results" / "demo" / "leaderboard.md").read_text()
    assert "| gfn_tb | **60.0** ± 10.0 [—] |" in written
    assert (tmp_path / "results" / "demo" / "leaderboard.tex").is_file()
    assert report.main(["sweep=demo", "compare=gfn_tb,ppo", f"results_dir={tmp_path / 'results'}"]) == 0
    assert "| ID (pooled) | — |" in (tmp_path / "results" / "demo" / "compare_gfn_tb_vs_ppo.md").read_text()


def test_a_metric_missing_from_the_records_gets_no_interval(store):
    client, experiment_id = store
    parent = add_parent(client, experiment_id)
    rows = [{k: v for k, v in row.items() if k != "loglik_mean"} for row in records("ppo", 0)["test_3op"]]
    add_run(client, experiment_id, {"sweep": "demo", "stage": "final", "method": "ppo", "seed": "0",
                                    "mlflow.parentRunId": parent, "test_splits": "test_3op"},
            {"test_3op/accuracy": 0.0, "test_3op/loglik_mean": -6.5, "test_3op/queries": 8.0},
            records={"test_3op": rows})
    client.set_terminated(parent)
    board = report.build_leaderboard(client, experiment_id, parent)
    by_metric = {r["metric"]: r for r in board.summary if r["split"] == "test_3op"}
    assert by_metric["accuracy"]["ci95_low"] == 0.0 and by_metric["loglik_mean"]["ci95_low"] is None
    assert by_metric["loglik_mean"]["mean"] == -6.5


def test_each_entry_says_how_its_trials_ended(store):
    client, experiment_id = store
    parent = add_sweep(client, experiment_id, [("gfn_tb", 0, 0.5, "FINISHED"), ("ppo", 0, 0.25, "FINISHED")])
    board = report.build_leaderboard(client, experiment_id, parent)
    assert "trials" not in board.markdown.splitlines()[4]  # a sweep recorded without counts: no column
    client.log_param(parent, "trials/gfn_tb", "3 complete, 2 pruned")  # what bench/sweep.py logs
    lines = report.build_leaderboard(client, experiment_id, parent).markdown.splitlines()
    assert lines[4].endswith("| seeds | test queries / seed (ID / OOD) | trials |")
    assert row_of(lines, "gfn_tb")[-3:] == ["1", "– / –", "3 complete, 2 pruned"]
    assert row_of(lines, "ppo")[-3:] == ["1", "– / –", "untuned"]


def test_report_errors(store, tmp_path, capsys):
    assert report.main(["sweep=nothing", f"results_dir={tmp_path}"]) == 1
    assert report.main(["swep=demo"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: unknown key 'swep'")


# --- what a run records, end to end ----------------------------------------------------------------

def test_a_run_keeps_every_test_querys_result_for_the_report(store, tmp_path):
    """Two final runs of a tiny model: their records hold each query, and each metric's per-query
    values average to the logged split metric."""
    from bench.config import build_config
    from bench.training import run_trial

    client, experiment_id = store
    parent = add_parent(client, experiment_id)
    small = {"model": "tiny", "scale": "smoke", "run_dir": str(tmp_path), "system_metrics": "false", "threads": "1",
             "task.n_demos": "4", "task.n_train": "8", "task.n_valid": "2", "task.n_test": "5", "task.max_actions": "8"}
    for entry, shots in (("zero_shot", "0"), ("two_shot", "2")):
        cfg = build_config([(None, {**small, "method": "prompting", "method.shots": shots})])
        cfg.sweep = "demo"  # the store's experiment (not a file in sweeps/)
        run_trial(cfg, stage="final", parent_run_id=parent, entry=entry, trial_number="untuned")
    client.set_terminated(parent)
    board = report.build_leaderboard(client, experiment_id, parent)
    assert [s.name for s in board.splits] == ["test_3op", "test_4op", "test_5op", "test_id", "test_ood"]
    for entry, (run,) in board.runs.items():
        assert sorted(run.records) == ["test_3op", "test_4op", "test_5op"]
        for split, rows in run.records.items():
            assert len(rows) == 4 == run.metrics[f"{split}/queries"]  # smoke: 4 queries of each split
            assert all(row["correct"] == int(row["vote"] == row["answer"]) for row in rows)
            for metric in ("accuracy", "loglik_mean", "loglik_max", "distinct_2", "sample_length", "forward_tokens"):
                values = [row[finals.RECORD_FIELD.get(metric, metric)] for row in rows]
                assert statistics.fmean(values) == pytest.approx(run.metrics[f"{split}/{metric}"], rel=1e-5), metric
    # Both entries saw the same queries: they pair on every one.
    queries = [{row["query"] for row in run.records["test_4op"]} for (run,) in board.runs.values()]
    assert queries[0] == queries[1]
    assert "[—]" not in board.markdown and "paired comparisons:" in board.markdown
    # Every run names the version of its task's YAML file.
    assert {client.get_run(run.run_id).data.tags["task_version"] for (run,) in board.runs.values()} == {"1"}


def test_learning_curves_draw_one_line_per_label_with_the_mean_over_runs():
    from bench.curves import bands, draw_curves

    histories = {"gfn_tb": {"train/loss": [[(0, 4.0), (1, 2.0)], [(0, 2.0), (1, 0.0)]]},
                 "ppo": {"train/loss": [[(0, 1.0), (1, 1.0)]], "valid/accuracy": [[(2, 0.5)]]}}
    fig = draw_curves(bands(histories), "test")
    assert [ax.get_title() for ax in fig.axes] == ["validation accuracy", "loss"]
    loss = {line.get_label(): line.get_xydata().tolist() for line in fig.axes[1].lines}
    assert loss == {"gfn_tb": [[0, 3.0], [1, 1.0]], "ppo": [[0, 1.0], [1, 1.0]]}
    assert draw_curves(bands({"x": {"unknown/metric": [[(0, 1.0)]]}}), "t") is None

"""`python -m bench.report paper` from a hand-made MLflow store: known cells, the paper's numbers
beside them, orderings that hold and that do not, and sweeps not run shown as missing."""
from __future__ import annotations

import csv
import io
import json

import mlflow
import pytest

from bench import paper, report


def add_sweep(client, tmp_path, sweep, finals, n_train=None, splits=("test_3op", "test_4op", "test_5op"), ood=("test_5op",),
              tags=None):
    """finals: entry -> per-split list of per-query correct (one seed); tags: more tags of the parent run."""
    experiment = client.get_experiment_by_name(sweep)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        sweep, artifact_location=(tmp_path / "art" / sweep).as_uri())
    parent = client.create_run(experiment_id, tags={"sweep": sweep, "stage": "sweep", "scale": "smoke",
                                                    "model": "tiny", "git_sha": "abcdef123456", **(tags or {})}).info.run_id
    for entry, by_split in finals.items():
        run = client.create_run(experiment_id, tags={
            "sweep": sweep, "stage": "final", "entry": entry, "seed": "0", "mlflow.parentRunId": parent,
            "test_splits": ",".join(splits), "test_splits_ood": ",".join(ood)}).info.run_id
        if n_train is not None:
            client.log_param(run, "task.n_train", n_train)
        for split, correct in by_split.items():
            client.log_metric(run, f"{split}/accuracy", sum(correct) / len(correct), step=3)
            client.log_metric(run, f"{split}/queries", len(correct), step=3)
            rows = [{"query": f"q{i}", "answer": "1", "vote": "1" if c else "0", "correct": c} for i, c in enumerate(correct)]
            client.log_text(run, "".join(json.dumps(r) + "\n" for r in rows), f"eval/{split}.jsonl")
        client.set_terminated(run)
    client.set_terminated(parent)
    return parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    ones, zeros = [1] * 8, [0] * 8
    # An older invocation that the report must not read.
    add_sweep(client, tmp_path, "paper_arithmetic", {"gfn_tb": {s: zeros for s in ("test_3op", "test_4op", "test_5op")}})
    add_sweep(client, tmp_path, "paper_arithmetic", {
        "gfn_tb": {"test_3op": ones, "test_4op": [1, 1, 1, 1, 0, 0, 0, 0], "test_5op": [0, 1, 0, 0, 0, 0, 0, 0]},
        "sft": {"test_3op": [1, 1, 0, 0, 0, 0, 0, 0], "test_4op": [1, 0, 0, 0, 0, 0, 0, 0], "test_5op": [1, 0, 0, 0, 0, 0, 0, 0]},
        "ppo": {"test_3op": zeros, "test_4op": zeros, "test_5op": zeros},
        "best_of_n": {"test_3op": zeros, "test_4op": zeros, "test_5op": zeros}})
    add_sweep(client, tmp_path, "paper_subj", {"gfn_tb": {"test": [1, 1, 1, 0]}, "sft": {"test": [1, 1, 1, 1]}},
              n_train=10, splits=("test",), ood=())
    return client, tmp_path


def test_the_paper_report_puts_each_cell_beside_the_reported_number(store, capsys):
    client, tmp_path = store
    assert report.main(["paper", f"run_dir={tmp_path}", f"results_dir={tmp_path / 'results'}"]) == 0
    text = (tmp_path / "results" / "paper" / "paper.md").read_text(encoding="utf-8")
    table4 = text.split("## Table 4")[1].split("## Figure 3")[0]
    rows = {line.split(" | ")[0].lstrip("| ").split(" (`")[0]: line.split(" | ")[1:] for line in table4.splitlines() if line.startswith("| ")}
    # gfn_tb: 100 % [100, 100] with the paper's 95.2 beside it; 4 operands 50 %; no ± with one seed.
    assert rows["GFlowNet"][:4] == ["**100.0** [100.0, 100.0]", "95.2", "**50.0** [12.5, 87.5]", "75.4"]
    assert rows["SFT"][0].startswith("25.0 [") and rows["SFT"][1] == "72.1"
    assert rows["Zero-shot CoT"][:2] == ["–", "—"]  # not an entry of the sweep, not in the notes
    assert rows["best_of_n"][0].startswith("0.0 [")  # an entry the paper has no row for
    assert "- GFlowNet > SFT (3 operands): holds here (100.0 vs 25.0, paired sign test p = 0.031 over 8 queries)" in table4
    assert "- GFlowNet > SFT (5 operands (OOD)): a tie here (12.5 vs 12.5, paired sign test p = 1 over 8 queries)" in table4
    assert "- SFT > PPO (3 operands): holds here" in table4
    # Table 3: 10 examples run, 20 and 50 not; GFlowNet 75 % < SFT 100 %: the paper's ordering fails.
    table3 = text.split("## Table 3")[1].split("## Table 4")[0]
    rows3 = {line.split(" | ")[0].lstrip("| ").split(" (`")[0]: line.split(" | ")[1:] for line in table3.splitlines() if line.startswith("| ")}
    assert rows3["GFlowNet"][0].startswith("75.0 [") and rows3["GFlowNet"][1] == "71.4"
    assert rows3["GFlowNet"][2] == "missing" and rows3["SFT"][4] == "missing"
    assert "with n_train=20/50 in this store" in table3
    assert "- GFlowNet > SFT (10 examples): reversed here (75.0 vs 100.0" in table3
    # Sweeps not run: every cell missing, never 0.
    table2 = text.split("## Table 2")[1].split("## Table 3")[0]
    assert "| GFlowNet (`gfn_tb`) | missing | — | missing | — |" in table2
    assert "missing: no finished final run of `paper_infilling` in this store; run `python -m bench.run sweep=paper_infilling`." in table2
    assert "- GFlowNet > diverse beam (max log-likelihood): cannot tell here, the sweep was not run" in text
    # The CSV holds the same numbers.
    rows_csv = list(csv.DictReader(io.StringIO((tmp_path / "results" / "paper" / "paper.csv").read_text())))
    cell = next(r for r in rows_csv if r["row"] == "GFlowNet" and r["column"] == "4 operands")
    assert float(cell["mean"]) == 50.0 and cell["reported"] == "75.4" and cell["status"] == "run"
    assert next(r for r in rows_csv if r["table"].startswith("Table 2") and r["row"] == "SFT")["status"] == "missing"


def test_the_paper_report_reads_each_sweep_on_its_own_task(store):
    client, tmp_path = store
    # The arithmetic sweep run later on another task (its results below results/paper_arithmetic/subj/).
    add_sweep(client, tmp_path, "paper_arithmetic", {"gfn_tb": {s: [0] * 8 for s in ("test_3op", "test_4op", "test_5op")}},
              tags={"task": "subj", "results_folder": "paper_arithmetic/subj"})
    assert report.main(["paper", f"run_dir={tmp_path}", f"results_dir={tmp_path / 'results'}"]) == 0
    table4 = (tmp_path / "results" / "paper" / "paper.md").read_text(encoding="utf-8").split("## Table 4")[1]
    assert "| GFlowNet (`gfn_tb`) | **100.0** [100.0, 100.0] | 95.2 |" in table4


def test_a_test_that_points_mlflow_at_its_store(tmp_path):
    """What an earlier test may do (bench.tracking does it for every run): set MLflow's process-wide
    URI, which also sets MLFLOW_TRACKING_URI in os.environ, where monkeypatch does not undo it."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'leaked.db'}")
    mlflow.MlflowClient().search_experiments()  # the store now exists


def test_the_paper_report_needs_a_store(tmp_path, capsys):
    # Not the store of the test before (tests/conftest.py clears MLflow's URI between tests).
    assert report.main(["paper", f"run_dir={tmp_path / 'none'}", f"results_dir={tmp_path / 'results'}"]) == 1
    assert capsys.readouterr().err.startswith("error: no MLflow store at")
    assert report.main(["paper", "sweep=x"]) == 2

"""The leaderboard, built from a throwaway SQLite MLflow store that the test fills in."""
from __future__ import annotations

import mlflow
import pytest

from bench import report


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("demo", artifact_location=(tmp_path / "art").as_uri())
    return client, experiment_id


def add_run(client, experiment_id, tags, metrics, status="FINISHED"):
    run = client.create_run(experiment_id, tags=tags)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value, step=3)
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def add_sweep(client, experiment_id, finals):
    parent = client.create_run(experiment_id, tags={
        "sweep": "demo", "stage": "sweep", "scale": "smoke", "task": "arithmetic", "model": "tiny",
        "git_sha": "abc123", "git_dirty": "false"}).info.run_id
    client.log_param(parent, "best/gfn_tb/method.lr", 0.001)
    for method, seed, id_acc, status in finals:
        add_run(client, experiment_id,
                {"sweep": "demo", "stage": "final", "method": method, "seed": str(seed),
                 "mlflow.parentRunId": parent},
                {"test_id/accuracy": id_acc, "test_ood/accuracy": id_acc / 2, "test_id/loglik_mean": -10.0 - seed,
                 "test_id/distinct_2": 0.5, "wall_time_s": 60.0 + seed}, status)
    client.set_terminated(parent)
    return parent


def test_leaderboard_averages_finished_finals_of_one_sweep(store, tmp_path):
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
    header = next(line for line in lines if line.startswith("| method"))
    assert "ID accuracy (%) ↑" in header and "wall time (s) ↓" in header and "distinct-2 ↑" in header
    gfn = next(line for line in lines if line.startswith("| gfn_tb"))
    # mean ± sample std over seeds: (50, 70) % -> 60.0 ± 14.1; 2 seeds
    assert gfn.split(" | ")[1:3] == ["60.0 ± 14.1", "30.0 ± 7.1"] and gfn.endswith("| 2 |")
    assert next(line for line in lines if line.startswith("| ppo")).split(" | ")[1] == "25.0"
    assert "gfn_tb: method.lr = 0.001" in board.markdown
    assert parent in board.markdown and old not in board.markdown
    assert "abc123" in board.markdown and "`smoke`" in board.markdown and "`tiny`" in board.markdown

    assert report.main(["sweep=demo", f"results_dir={tmp_path / 'results'}"]) == 0
    written = (tmp_path / "results" / "demo" / "leaderboard.md").read_text()
    assert "| gfn_tb | 60.0 ± 14.1 |" in written


def test_report_errors(store, tmp_path, capsys):
    assert report.main(["sweep=nothing", f"results_dir={tmp_path}"]) == 1
    assert report.main(["swep=demo"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: unknown key 'swep'")


def test_accuracy_carries_a_binomial_standard_error_over_all_test_queries():
    from bench.report import accuracy_se

    assert accuracy_se([0.5], [64.0], 1) == "50.0 ± 6.2"  # sqrt(0.25 / 64) = 0.0625
    assert accuracy_se([0.25, 0.75], [32.0, 32.0], 1) == "50.0 ± 6.2"  # two seeds pool their queries
    assert accuracy_se([0.9], [100.0], 1) == "90.0 ± 3.0"
    assert accuracy_se([1.0], [32.0], 1) == "100.0 ± 0.0"


def test_learning_curves_draw_one_line_per_label_with_the_mean_over_runs(tmp_path):
    from bench.curves import plot_histories

    histories = {"gfn_tb": {"train/loss": [[(0, 4.0), (1, 2.0)], [(0, 2.0), (1, 0.0)]]},
                 "ppo": {"train/loss": [[(0, 1.0), (1, 1.0)]], "valid/accuracy": [[(2, 0.5)]]}}
    path = plot_histories(histories, tmp_path / "curves.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_histories({"x": {"unknown/metric": [[(0, 1.0)]]}}, tmp_path / "none.png", "t") is None

"""`python -m bench.evaluate`: a tiny model trained and saved here, re-evaluated from MLflow alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from bench import evaluate, finals, report

REPO = Path(__file__).resolve().parents[1]
SMALL = {"model": "tiny", "scale": "smoke", "system_metrics": "false", "threads": "1", "train.steps": "2",
         "task.n_demos": "4", "task.n_train": "8", "task.n_valid": "3", "task.n_test": "5", "task.max_actions": "8"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store folder, run id, its logged metrics) of a gfn_tb run of the tiny model, a final of sweep `demo`."""
    from bench.config import build_config
    from bench.training import run_trial

    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        # Both the variable and MLflow's process-wide URI, which an earlier test's run may have set
        # (and which MlflowClient() reads before the variable).
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        cfg = build_config([(None, {**SMALL, "method": "gfn_tb", "run_dir": str(folder)})])
        cfg.sweep = "demo"  # the store's experiment (not a file in sweeps/)
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("demo", artifact_location=(folder / "art").as_uri())
        parent = client.create_run(experiment, tags={"sweep": "demo", "stage": "sweep", "task": "arithmetic"}).info.run_id
        ids = []
        run_trial(cfg, stage="final", parent_run_id=parent, entry="gfn_tb", trial_number="untuned", on_run_started=ids.append)
        client.set_terminated(parent)
        return folder, ids[0], parent, client.get_run(ids[0]).data.metrics


@pytest.fixture
def store(trained, monkeypatch):
    folder, run_id, parent, metrics = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    return folder, run_id, parent, metrics


def test_re_evaluation_reproduces_the_runs_own_test_metrics(store, capsys):
    folder, run_id, parent, logged = store
    assert evaluate.main([f"run={run_id}", "threads=1"]) == 0
    client = mlflow.MlflowClient()
    (child,) = client.search_runs([client.get_run(run_id).info.experiment_id],
                                  filter_string=f"tags.evaluated_run = '{run_id}'")
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == run_id and tags["stage"] == "evaluation" and tags["evaluation"] == "task"
    assert tags["entry"] == "gfn_tb" and child.info.status == "FINISHED"
    for split in ("test_3op", "test_4op", "test_5op", "test_id", "test_ood", "valid"):
        assert child.data.metrics[f"{split}/accuracy"] == logged[f"{split}/accuracy"], split
        assert child.data.metrics[f"{split}/queries"] == logged[f"{split}/queries"], split
        for metric in ("loglik_mean", "loglik_max", "distinct_2", "sample_length", "forward_tokens"):
            assert child.data.metrics[f"{split}/{metric}"] == pytest.approx(logged[f"{split}/{metric}"], rel=1e-5), (split, metric)
    # Compute: the re-evaluation spent what the run's own final evaluation did (smoke: no validation
    # during training), and the run's training tokens are its last step's running count.
    assert child.data.metrics["eval_forward_tokens"] == logged["eval_forward_tokens"] > 0
    history = mlflow.MlflowClient().get_metric_history(run_id, "train/forward_tokens")
    assert [m.step for m in history] == [0, 1] and 0 < history[0].value < history[1].value
    assert logged["train_forward_tokens"] == history[1].value
    assert logged["total_forward_tokens"] == logged["train_forward_tokens"] + logged["eval_forward_tokens"]
    assert logged["train_device_s"] > 0 and logged["eval_device_s"] > 0
    # The same per-query records, query by query.
    original, again = (finals._records(client, i) for i in (run_id, child.info.run_id))
    assert original == again and sorted(again) == ["test_3op", "test_4op", "test_5op"]
    assert f"evaluation run {child.info.run_id}" in capsys.readouterr().out


def test_a_prompting_run_is_re_evaluated_with_its_own_prompts_and_decoding(store):
    """The evaluated engine comes from the method's declarations (`method_engine`), not from its train."""
    from bench.config import build_config
    from bench.training import run_trial

    folder = store[0]
    cfg = build_config([(None, {**SMALL, "method": "prompting", "method.shots": "2", "method.decoding": "greedy",
                                "run_dir": str(folder)})])
    cfg.sweep = "demo"
    ids = []
    logged = run_trial(cfg, stage="final", entry="prompting-2shot", trial_number="untuned", on_run_started=ids.append)
    assert evaluate.main([f"run={ids[0]}", "threads=1"]) == 0
    client = mlflow.MlflowClient()
    (child,) = client.search_runs([client.get_run(ids[0]).info.experiment_id],
                                  filter_string=f"tags.evaluated_run = '{ids[0]}'")
    # Longer prompts (two demonstrations) cost more tokens: the plain task's prompts would differ here.
    for split in ("test_3op", "valid"):
        for metric in ("accuracy", "loglik_mean", "forward_tokens"):
            assert child.data.metrics[f"{split}/{metric}"] == pytest.approx(logged[f"{split}/{metric}"], rel=1e-5), (split, metric)


def test_a_question_file_is_evaluated_and_shown_as_an_extra_leaderboard_column(store, tmp_path):
    folder, run_id, parent, _ = store
    questions = tmp_path / "mine.json"
    items = [{"question": "1 + 2 + 3", "answer": 6}, {"question": "Question: 9 - 4 = ? Answer:", "answer": "5"},
             {"question": "7 - 8 + 1", "answer": 0}]
    questions.write_text(json.dumps(items, indent=1), encoding="utf-8")
    assert evaluate.main([f"run={run_id}", f"questions={questions}", "threads=1"]) == 0
    client = mlflow.MlflowClient()
    (child,) = client.search_runs([client.get_run(run_id).info.experiment_id],
                                  filter_string=f"tags.evaluated_run = '{run_id}' and tags.evaluation = 'mine'")
    assert child.data.metrics["mine/queries"] == 3
    rows = finals._records(client, child.info.run_id)["mine"]
    assert [(r["query"], r["answer"]) for r in rows] == [("1 + 2 + 3", "6"), ("9 - 4", "5"), ("7 - 8 + 1", "0")]
    assert child.data.metrics["mine/accuracy"] == sum(r["correct"] for r in rows) / 3

    board = report.build_leaderboard(client, child.info.experiment_id, parent)
    column = next(s for s in board.splits if s.name == "mine")
    assert column.label == "mine (re-evaluated)" and column.parts == ("mine",)
    (row,) = [r for r in board.summary if r["split"] == "mine" and r["metric"] == "accuracy"]
    assert row["mean"] == child.data.metrics["mine/accuracy"] and row["queries"] == 3
    assert "mine (re-evaluated)" in board.markdown and ",mine," in board.csv


@pytest.mark.parametrize("text, where", [
    ('[{"question": "1 + 2", "answer": 3},\n {"question": "1 +", "answer": 1}]', ":2: question '1 +' is not a chain"),
    ('{"question": "1 + 2", "answer": 3}\n\n{"question": "2 + 2", "answer": 5}\n', ":3: answer 5 is wrong: 2 + 2 = 4"),
    ('{"question": "1 + 2", "answer": 3}\n{"question": "2 + 2"}\n', ":2: missing key 'answer'"),
    ('[{"question": "1 + 2", "answer": 3}\n {"question": "2 + 2", "answer": 4}]', ":2: invalid JSON"),
    ('{"question": "1 + 2", "answer": "three"}\n', ":1: answer 'three' is not an integer"),
])
def test_a_malformed_question_file_is_refused_with_its_line(store, tmp_path, capsys, text, where):
    folder, run_id, _, _ = store
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    assert evaluate.main([f"run={run_id}", f"questions={path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: arithmetic: {path}{where}" + err[0].split(where, 1)[1]] and where in err[0]
    client = mlflow.MlflowClient()
    assert not client.search_runs([client.get_run(run_id).info.experiment_id],
                                  filter_string=f"tags.evaluated_run = '{run_id}' and tags.evaluation = 'bad'")


def test_a_question_file_that_is_not_utf8_is_named_with_its_line(store, tmp_path, capsys):
    folder, run_id, _, _ = store
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "1 + 2", "answer": 3}\n{"question": "caf\xe9", "answer": 1}\n')
    assert evaluate.main([f"run={run_id}", f"questions={path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: arithmetic: {path}:2: not UTF-8 text (byte 0xe9 at column 18); save the file as UTF-8"]


def test_the_command_line_exits_2_on_a_bad_file_before_loading_anything(store, tmp_path):
    folder, run_id, _, _ = store
    path = tmp_path / "bad.json"
    path.write_text('[{"question": "1 + 2", "answer": 3},\n {"question": "5 * 2", "answer": 10}]', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "bench.evaluate", f"run={run_id}", f"questions={path}"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: arithmetic: {path}:2: question '5 * 2' is not a chain of "
                                                "integers joined by + and -, such as '5 + 9 - 3'"]


@pytest.mark.parametrize("args, message", [
    (["method.lr=1"], "error: method.lr= cannot change in a re-evaluation"),
    (["task.n_tes=3"], "error: unknown key 'task.n_tes'"),
    (["train.eval_samples=0"], "error: train.eval_samples"),
    (["questions=/nonexistent.json"], "error: arithmetic: data file /nonexistent.json not found"),
])
def test_bad_settings_are_refused(store, capsys, args, message):
    _, run_id, _, _ = store
    assert evaluate.main([f"run={run_id}", *args]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_an_unknown_or_unfinished_run_is_refused(store, capsys):
    _, _, parent, _ = store
    assert evaluate.main(["run=0123456789abcdef0123456789abcdef"]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow run 0123456789abcdef0123456789abcdef in sqlite:///")
    assert evaluate.main([f"run={parent}"]) == 2  # the sweep's parent: no run configuration
    assert "has no run configuration" in capsys.readouterr().err

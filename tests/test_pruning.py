"""Pruning in sweeps (`pruner:` in the sweep file): a trial whose validation value falls behind
the others' at an evaluation step stops there, ends PRUNED in Optuna and tagged `pruned` in MLflow,
loses its checkpoint, is not retried, and the leaderboard counts it.

The sweep runs in this process (launcher debug) with real Optuna and MLflow stores and the tiny
model; only the validation value is scripted, so that which trial the median pruner stops is
known in advance.
"""
from __future__ import annotations

import os
import pdb
from dataclasses import dataclass, field

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

import bench.config
import bench.run
import bench.sweep
import bench.training
from bench.sweep import run_sweep
from bench.sweep_plan import plan_sweep
from bench.errors import ConfigError
from methods import METHODS
from methods.base import TrainContext
from methods.engine.evaluate import EvalResult

# --- a method whose validation value is a setting: `method.score` -----------------------------

_SCORE = {"value": 0.0}  # what the scripted evaluation returns for the run in progress


@dataclass
class Config:
    score: float = field(default=0.0, metadata={"help": "the validation accuracy every evaluation of this run reports"})


def train(ctx: TrainContext, cfg: Config) -> None:
    _SCORE["value"] = cfg.score
    for step in range(ctx.train.steps):
        ctx.end_step(step, {"loss": 1.0}, {})


def scripted_evaluation(engine, splits, **kwargs):
    return {name: EvalResult({"accuracy": _SCORE["value"]}, []) for name in splits}


SWEEP = """\
description: four trials with known validation values, a median pruner
base: {model: tiny, scale: smoke, launcher: debug, threads: 1, task.n_demos: 4, task.n_train: 20,
       task.n_valid: 4, task.n_test: 4, task.max_actions: 8,
       train.steps: 4, train.eval_every: 2, train.checkpoint_every: 1}
objective: {metric: valid/accuracy}
pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}
methods:
  scored:
    trials: 4
    search:
      method.score: {type: float, low: 0.0, high: 1.0}
final: {seeds: [0]}
"""
# Trial 0 completes (start-up); 1 falls below the median of [0.5]; 2 beats it; 3 falls below the
# median of [0.5, 0.9]. Each is judged at step 2, its one evaluation before the end.
SCORES = [0.5, 0.2, 0.9, 0.1]


@pytest.fixture
def sweeps(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "scored", __name__)
    monkeypatch.setattr(bench.config, "SWEEPS_DIR", tmp_path)
    monkeypatch.setattr(bench.sweep, "SWEEPS_DIR", tmp_path)
    monkeypatch.setattr(bench.training, "evaluate_splits", scripted_evaluation)
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: None)  # the debug launcher opens pdb on errors
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    (tmp_path / "prune.yaml").write_text(SWEEP)
    return {"sweep": "prune", "run_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}


def enqueue_scores(plan) -> optuna.storages.JournalStorage:
    """SCORES as the study's first trials, in order, through Optuna's own queue (a worker takes
    waiting trials first)."""
    plan.folder.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(plan.storage_path)))
    study = optuna.create_study(study_name="prune.scored", storage=storage, direction="maximize")
    for score in SCORES:
        study.enqueue_trial({"method.score": score})
    return storage


def test_trials_behind_the_median_are_pruned_recorded_and_not_retried(sweeps, tmp_path):
    plan = plan_sweep(sweeps)
    storage = enqueue_scores(plan)
    assert run_sweep(plan) == 0

    trials = optuna.load_study(study_name="prune.scored", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.params["method.score"] for t in trials] == SCORES
    assert [t.intermediate_values for t in trials] == [{2: s} for s in SCORES]
    assert all("retry_of" not in t.user_attrs for t in trials)  # nothing re-enqueued

    uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["prune"], filter_string="tags.stage = 'trial'")
    by_trial = {int(row["tags.trial"]): row for _, row in runs.iterrows()}
    assert sorted(by_trial) == [0, 1, 2, 3]
    assert [by_trial[n]["status"] for n in range(4)] == ["FINISHED", "KILLED", "FINISHED", "KILLED"]
    assert [by_trial[n]["tags.pruned"] == "true" for n in range(4)] == [False, True, False, True]
    assert [by_trial[n]["tags.pruned_step"] for n in (1, 3)] == ["2", "2"]
    # A pruned run trained 2 of its 4 steps.
    client = mlflow.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(by_trial[1]["run_id"], "train/loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(by_trial[0]["run_id"], "train/loss")] == [0, 1, 2, 3]

    folder = plan.folder / "trials" / "scored"
    assert (folder / "0" / "checkpoint" / "checkpoint.pt").is_file()
    assert (folder / "2" / "checkpoint" / "checkpoint.pt").is_file()
    assert not (folder / "1").exists() and not (folder / "3").exists()

    finals = mlflow.search_runs(experiment_names=["prune"], filter_string="tags.stage = 'final'")
    assert list(finals["params.method.score"]) == ["0.9"]  # the best completed trial
    board = (tmp_path / "results" / "prune" / "leaderboard.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith("| scored |"))
    assert "trials" in next(line for line in board.splitlines() if line.startswith("| entry"))
    assert row.rstrip(" |").endswith("2 complete, 2 pruned")

    # Resumed: the budget is spent (pruned trials count), nothing more runs.
    assert run_sweep(plan_sweep(sweeps)) == 0
    assert len(optuna.load_study(study_name="prune.scored", storage=storage).trials) == 4


def test_without_a_pruner_every_trial_runs_to_the_end(sweeps, tmp_path):
    (tmp_path / "prune.yaml").write_text(SWEEP.replace("pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}\n", ""))
    plan = plan_sweep(sweeps)
    storage = enqueue_scores(plan)
    assert run_sweep(plan) == 0
    trials = optuna.load_study(study_name="prune.scored", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    board = (tmp_path / "results" / "prune" / "leaderboard.md").read_text()
    assert next(line for line in board.splitlines() if line.startswith("| scored |")).rstrip(" |").endswith("4 complete")


def test_pruners_are_built_per_entry_from_the_sweep_file(sweeps, tmp_path):
    plan = plan_sweep(sweeps)
    pruner = plan.pruner_for(plan.methods[0])
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (1, 0)
    hyperband = "pruner: {type: hyperband, reduction_factor: 2}"
    (tmp_path / "prune.yaml").write_text(SWEEP.replace("pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}", hyperband))
    plan = plan_sweep(sweeps)
    pruner = plan.pruner_for(plan.methods[0])
    # Resources are optimizer steps: from the first evaluation (train.eval_every) to the budget (train.steps).
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, 4, 2)
    (tmp_path / "prune.yaml").write_text(SWEEP.replace("n_startup_trials: 1,", "n_startup_trials: {smoke: 3, paper: 5},"))
    plan = plan_sweep(sweeps)
    assert plan.pruner_for(plan.methods[0])._n_startup_trials == 3
    (tmp_path / "prune.yaml").write_text(SWEEP.replace("pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: none"))
    plan = plan_sweep(sweeps)
    assert plan.pruner_for(plan.methods[0]) is None


@pytest.mark.parametrize("pruner, message", [
    ("{type: medain}", "sweeps/prune.yaml: pruner.type: expected median, hyperband or none, got 'medain'"),
    ("{type: median, n_warmup: 3}", "sweeps/prune.yaml: pruner: unknown key 'n_warmup'; did you mean 'n_warmup_steps'?"),
    ("{type: median, n_startup_trials: -1}", "sweeps/prune.yaml: pruner.n_startup_trials: expected an integer of at least 0"),
    ("{type: hyperband, n_startup_trials: 1}", "sweeps/prune.yaml: pruner: unknown key 'n_startup_trials'"),
    ("{type: hyperband, reduction_factor: 1}", "sweeps/prune.yaml: pruner.reduction_factor: expected an integer of at least 2"),
    ("{type: hyperband, min_resource: 8}", "sweeps/prune.yaml: pruner: hyperband min_resource (8) must be below max_resource (4"),
    ("{n_startup_trials: 1}", "sweeps/prune.yaml: pruner: missing type"),
    ("median", "sweeps/prune.yaml: pruner: expected none or a mapping with a type"),
    ("{type: median, n_startup_trials: {cpu: 3}}", "sweeps/prune.yaml: pruner.n_startup_trials: no value for scale 'smoke'"),
])
def test_a_bad_pruner_is_one_line_and_exit_2(sweeps, tmp_path, capsys, pruner, message):
    (tmp_path / "prune.yaml").write_text(SWEEP.replace("{type: median, n_startup_trials: 1, n_warmup_steps: 0}", pruner))
    with pytest.raises(ConfigError):
        plan_sweep(sweeps)
    assert bench.run.main([f"{key}={value}" for key, value in sweeps.items()]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {message}"), err
    assert not (tmp_path / "runs").exists()


def test_pruning_needs_evaluation_in_the_trials_process(sweeps):
    with pytest.raises(ConfigError, match="pruner: .*trainer.num_processes"):
        plan_sweep({**sweeps, "trainer.num_processes": "2"})

"""Sweeps end to end: the real smoke sweep through submitit subprocesses, and failure handling
in-process with a method defined in this file."""
from __future__ import annotations

import os
import pdb
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

import bench.config
import bench.sweep
from bench.sweep import run_sweep
from bench.sweep_plan import plan_sweep
from bench.values import ConfigError
from methods import METHODS
from methods.base import TrainContext
from tests.test_faults import needs_slurm

REPO = Path(__file__).resolve().parents[1]


def runs_of(uri: str, experiment: str, where: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], filter_string=where)


@pytest.mark.parametrize("launcher", ["local", pytest.param("slurm", marks=needs_slurm)])
def test_smoke_sweep(tmp_path, launcher):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "sweep=smoke", f"launcher={launcher}", "run_dir=runs", "results_dir=results"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    parents = runs_of(uri, "smoke", "tags.stage = 'sweep'")
    assert len(parents) == 1 and parents.loc[0, "status"] == "FINISHED"
    assert parents.loc[0, "tags.task_version"] == "1"  # the leaderboard's provenance prints it
    parent = parents.loc[0, "run_id"]
    children = runs_of(uri, "smoke", f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) >= 4 and set(children["status"]) == {"FINISHED"}
    assert sorted(children["tags.stage"]) == ["final"] * 2 + ["trial"] * 4
    client = mlflow.MlflowClient(uri)
    for run_id in children["run_id"]:
        history = client.get_metric_history(run_id, "train/loss")
        assert [m.step for m in history] == [0, 1, 2]  # smoke scale: 3 steps
    finals = children[children["tags.stage"] == "final"]
    assert finals["metrics.test_id/accuracy"].notna().all() and finals["metrics.test_ood/accuracy"].notna().all()
    # Artifacts follow the store set by MLFLOW_TRACKING_URI (beside its SQLite file), not the
    # run_dir's default store nor ./mlruns of the current directory.
    assert (tmp_path / "mlartifacts").is_dir()
    assert not (tmp_path / "runs" / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "smoke" / "optuna.journal")))
    for method in ("gfn_tb", "ppo"):
        study = optuna.load_study(study_name=f"smoke.{method}", storage=storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2

    board = (tmp_path / "results" / "smoke" / "leaderboard.md").read_text()
    assert "| gfn_tb |" in board and "| ppo |" in board and parent in board
    for stem in ("learning_curves", "compute"):  # PNG and PDF, also among the parent run's artifacts
        figure = tmp_path / "results" / "smoke" / f"{stem}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
        assert figure.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert {a.path for a in client.list_artifacts(parent, "figures")} >= {"figures/compute.png", "figures/learning_curves.png"}
    assert "forward tokens (train + eval)" in board and (finals["metrics.total_forward_tokens"] > 0).all()


@pytest.mark.parametrize("task", ["infilling", "subj", "continuation"])
def test_smoke_sweep_on_each_task(tmp_path, task, shared_data):
    """The smoke sweep on the other tasks, as a user runs it (`sweep=smoke task=<t> data_dir=...`),
    with one trial per method: the tuning loop itself is covered on arithmetic above."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "sweep=smoke", f"task={task}", f"data_dir={shared_data}", "trials=1",
         "run_dir=runs", "results_dir=results"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(uri, "smoke", "tags.stage != 'sweep'")
    assert sorted(runs["tags.stage"]) == ["final"] * 2 + ["trial"] * 2 and set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.task"]) == {task}
    finals = runs[runs["tags.stage"] == "final"]
    assert finals["metrics.test_id/loglik_mean"].notna().all()  # the metric every task declares
    assert "| gfn_tb |" in (tmp_path / "results" / "smoke" / "leaderboard.md").read_text()


# --- a method that fails on demand, for the in-process tests ------------------------------------


@dataclass
class Config:
    lr: float = field(default=1e-3, metadata={"help": "learning rate (only searched over)"})
    fail: bool = field(default=False, metadata={"help": "raise a non-finite loss error at step 1"})


def train(ctx: TrainContext, cfg: Config) -> None:
    for step in range(ctx.train.steps):
        if cfg.fail and step == 1:
            raise FloatingPointError(f"non-finite loss (nan) at step {step}")
        ctx.log_metrics({"loss": 1.0 / (step + 1)}, step)


SWEEP = """\
description: a method that works and one that always fails
base: {model: tiny, scale: smoke, launcher: debug, threads: 1, task.n_demos: 4, task.n_train: 20,
       task.n_valid: 4, task.n_test: 4, task.max_actions: 8}
objective: {metric: valid/accuracy}
methods:
  works:
    trials: 2
    search:
      method.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  breaks:
    trials: 1
    fixed: {method.fail: true}
final: {seeds: [0, 1]}
"""


@pytest.fixture
def flaky_sweep(tmp_path, monkeypatch):
    """Sweep `flaky` over methods `works` and `breaks` (this module), stored under tmp_path."""
    monkeypatch.setitem(METHODS, "works", __name__)
    monkeypatch.setitem(METHODS, "breaks", __name__)
    monkeypatch.setattr(bench.config, "SWEEPS_DIR", tmp_path)
    monkeypatch.setattr(bench.sweep, "SWEEPS_DIR", tmp_path)
    monkeypatch.setattr(pdb, "post_mortem", lambda *args: None)  # the debug launcher opens pdb on errors
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    (tmp_path / "flaky.yaml").write_text(SWEEP)
    return {"sweep": "flaky", "run_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}


def test_failed_runs_are_recorded_and_the_sweep_goes_on(flaky_sweep, tmp_path):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert run_sweep(plan_sweep(flaky_sweep)) == 1  # `breaks` has no completed trial

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "flaky" / "optuna.journal")))
    broken = optuna.load_study(study_name="flaky.breaks", storage=storage).trials
    assert [t.state for t in broken] == [TrialState.FAIL]
    assert "non-finite loss" in broken[0].user_attrs["error"]
    works = optuna.load_study(study_name="flaky.works", storage=storage).trials
    assert [t.state for t in works] == [TrialState.COMPLETE] * 2

    failed = runs_of(uri, "flaky", "tags.method = 'breaks'")
    assert list(failed["status"]) == ["FAILED"] and "non-finite loss" in failed.loc[0, "tags.error"]
    finals = runs_of(uri, "flaky", "tags.stage = 'final'")
    assert sorted(finals["tags.method"]) == ["works", "works"] and set(finals["status"]) == {"FINISHED"}
    history = mlflow.MlflowClient(uri).get_metric_history(finals.loc[0, "run_id"], "train/loss")
    assert [m.value for m in history] == pytest.approx([1.0, 0.5, 1 / 3])
    board = (tmp_path / "results" / "flaky" / "leaderboard.md").read_text()
    assert "| works |" in board and "| breaks |" not in board

    # A second invocation resumes: the trial budget is spent, only the finals run again.
    assert run_sweep(plan_sweep(flaky_sweep)) == 1
    assert len(optuna.load_study(study_name="flaky.works", storage=storage).trials) == 2
    assert len(runs_of(uri, "flaky", "tags.stage = 'sweep'")) == 2
    # Other settings would mix two experiments in one study: refused before anything runs.
    with pytest.raises(ConfigError, match="made with other settings .*train.steps"):
        plan_sweep({**flaky_sweep, "train.steps": "5"})


ENTRIES = """\
description: one method under two entries, values per scale and per task
base:
  model: tiny
  scale: smoke
  launcher: debug
  threads: 1
  train.steps: {smoke: 2, paper: 100}
tasks:
  arithmetic: {task.n_demos: 4, task.n_train: 20, task.n_valid: 4, task.n_test: 4, task.max_actions: 8}
objective: {metric: valid/accuracy}
methods:
  works:
    trials: 1
  slow_works:
    method: works
    trials: 1
    fixed: {method.lr: {smoke: 1.0e-4, paper: 1.0e-5}}
final: {seeds: [0]}
"""


def test_entries_name_leaderboard_rows_and_values_follow_scale_and_task(flaky_sweep, tmp_path):
    (tmp_path / "entries.yaml").write_text(ENTRIES)
    overrides = {**flaky_sweep, "sweep": "entries"}
    plan = plan_sweep(overrides)
    assert [(m.name, m.config.method) for m in plan.methods] == [("works", "works"), ("slow_works", "works")]
    assert [m.config.train.steps for m in plan.methods] == [2, 2]
    assert plan.methods[1].config.method_cfg.lr == 1e-4 and plan.methods[0].config.method_cfg.lr == 1e-3
    assert plan.methods[0].config.task_cfg.max_actions == 8
    assert [m.name for m in plan_sweep({**overrides, "method": "slow_works"}).methods] == ["slow_works"]
    assert [m.name for m in plan_sweep({**overrides, "method": "works"}).methods] == ["works", "slow_works"]
    with pytest.raises(ConfigError, match="no entry or method 'ppo'.*works, slow_works"):
        plan_sweep({**overrides, "method": "ppo"})

    assert run_sweep(plan) == 0
    finals = runs_of(os.environ["MLFLOW_TRACKING_URI"], "entries", "tags.stage = 'final'")
    assert sorted(finals["tags.entry"]) == ["slow_works", "works"] and set(finals["tags.method"]) == {"works"}
    board = (tmp_path / "results" / "entries" / "leaderboard.md").read_text()
    assert "| slow_works |" in board and "| works |" in board


@pytest.mark.parametrize("entry, error", [
    ("  nope:\n", r"unknown method 'nope'.*\(or give entry 'nope' a 'method:' key\)"),
    ("  slow_works:\n    method: nope\n", r"methods.slow_works: unknown method 'nope'; choose one of"),
])
def test_an_entry_must_name_a_method(flaky_sweep, tmp_path, entry, error):
    (tmp_path / "bad.yaml").write_text(ENTRIES.replace("  slow_works:\n    method: works\n", entry))
    with pytest.raises(ConfigError, match=error):
        plan_sweep({**flaky_sweep, "sweep": "bad"})


def test_per_scale_values_need_the_scale_in_use(flaky_sweep, tmp_path):
    (tmp_path / "bad.yaml").write_text(ENTRIES.replace("scale: smoke", "scale: cpu"))
    with pytest.raises(ConfigError, match=r"base.train.steps: no value for scale 'cpu'"):
        plan_sweep({**flaky_sweep, "sweep": "bad"})
    (tmp_path / "bad.yaml").write_text(ENTRIES.replace("tasks:\n  arithmetic:", "tasks:\n  arithmetics:"))
    with pytest.raises(ConfigError, match="unknown task 'arithmetics'"):
        plan_sweep({**flaky_sweep, "sweep": "bad"})


UNTUNED = """\
description: one entry tuned, one untuned (trials 0 at smoke scale), real methods on the tiny model
base: {task: arithmetic, model: tiny, scale: smoke, launcher: debug, max_parallel: 2, threads: 1,
       train.steps: 2, task.n_demos: 4, task.n_train: 20, task.n_valid: 4, task.n_test: 4, task.max_actions: 8}
objective: {metric: valid/loglik_mean}
methods:
  gfn_tb:
    trials: {smoke: 0, paper: 20}
    fixed: {method.loss: subtb}
    search:
      method.lr: {type: categorical, choices: [1.0e-5, 1.0e-4]}
  ppo:
    trials: 1
    search:
      method.lr: {type: categorical, choices: [1.0e-5]}
final: {seeds: [0, 1]}
"""


def test_an_entry_with_trials_0_runs_its_finals_untuned(flaky_sweep, tmp_path):
    (tmp_path / "untuned.yaml").write_text(UNTUNED)
    overrides = {**flaky_sweep, "sweep": "untuned"}
    assert run_sweep(plan_sweep(overrides)) == 0

    uri = os.environ["MLFLOW_TRACKING_URI"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "untuned" / "optuna.journal")))
    assert optuna.load_study(study_name="untuned.gfn_tb", storage=storage).trials == []
    assert [t.state for t in optuna.load_study(study_name="untuned.ppo", storage=storage).trials] == [TrialState.COMPLETE]
    trials = runs_of(uri, "untuned", "tags.stage = 'trial'")
    assert list(trials["tags.entry"]) == ["ppo"]

    finals = runs_of(uri, "untuned", "tags.stage = 'final'")
    assert sorted(zip(finals["tags.entry"], finals["tags.seed"])) == [("gfn_tb", "0"), ("gfn_tb", "1"),
                                                                     ("ppo", "0"), ("ppo", "1")]
    assert set(finals["status"]) == {"FINISHED"}
    untuned = finals[finals["tags.entry"] == "gfn_tb"]
    # The fixed value and, for the searched lr, the method's default (gfn_tb.Config.lr).
    from methods.gfn_tb import Config as GfnConfig
    assert set(untuned["tags.trial"]) == {"untuned"} and set(untuned["params.method.loss"]) == {"subtb"}
    assert set(untuned["params.method.lr"]) == {str(GfnConfig().lr)}
    assert set(finals[finals["tags.entry"] == "ppo"]["tags.trial"]) == {"0"}
    board = (tmp_path / "results" / "untuned" / "leaderboard.md").read_text()
    assert "| gfn_tb |" in board and "| ppo |" in board and "- gfn_tb = untuned (trials: 0)" in board


def test_a_resumed_study_may_change_how_the_sampler_decodes():
    """model.kv_cache changes how decode steps run, not what they sample from: it is no part of a
    study's settings, so a study recorded before the setting existed still resumes."""
    from bench.sweep_plan import execution_only

    assert execution_only("model.kv_cache") and not execution_only("model.dtype")

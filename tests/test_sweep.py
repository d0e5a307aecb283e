"""Sweeps end to end: the real smoke sweep through submitit subprocesses, and failure handling
in-process with a method defined in this file."""
from __future__ import annotations

import os
import pdb
import re
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
from bench.errors import ConfigError
from bench.journal import storage
from bench.sweep_plan import open_study, plan_sweep
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

    store = storage(plan_sweep({"sweep": "smoke", "run_dir": str(tmp_path / "runs")}).storage_path)
    for method in ("gfn_tb", "ppo"):
        study = optuna.load_study(study_name=f"smoke.{method}", storage=store)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2

    board = (tmp_path / "results" / "smoke" / "leaderboard.md").read_text()
    assert "| gfn_tb |" in board and "| ppo |" in board and parent in board
    for stem in ("learning_curves", "compute"):  # PNG and PDF, also among the parent run's artifacts
        figure = tmp_path / "results" / "smoke" / f"{stem}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
        assert figure.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert {a.path for a in client.list_artifacts(parent, "figures")} >= {"figures/compute.png", "figures/learning_curves.png"}
    assert "forward tokens (train + eval)" in board and (finals["metrics.total_forward_tokens"] > 0).all()


@pytest.mark.parametrize("task", ["subj", "continuation"])  # infilling: the next test
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
    # Another task than the sweep file's own (arithmetic): its results beside, not over, the file's.
    assert "| gfn_tb |" in (tmp_path / "results" / "smoke" / task / "leaderboard.md").read_text()
    assert not (tmp_path / "results" / "smoke" / "leaderboard.md").exists()


def test_one_sweep_on_two_tasks_keeps_a_study_folder_for_each(tmp_path, monkeypatch, capsys):
    """`sweep=smoke`, then `sweep=smoke task=infilling`, as a user runs one sweep on several tasks:
    each set of fixed settings gets its own folder of studies (the workers, other processes, find
    it again), bench.status and bench.report find each by task, and a changed search space is
    still refused with the store left as it was."""
    import bench.report
    import bench.run
    import bench.status

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    for task_args in (["method=gfn_tb"], ["task=infilling"]):  # infilling: one trial of each method
        result = subprocess.run([sys.executable, "-m", "bench.run", "sweep=smoke", *task_args, "trials=1",
                                 "run_dir=runs", "results_dir=results"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    sweep_folder = tmp_path / "runs" / "smoke"
    arithmetic = plan_sweep({"sweep": "smoke", "run_dir": str(tmp_path / "runs")}).folder  # every entry: method= kept it
    infilling = plan_sweep({"sweep": "smoke", "task": "infilling", "run_dir": str(tmp_path / "runs")}).folder
    assert sorted(p for p in sweep_folder.iterdir()) == sorted([arithmetic, infilling])
    assert arithmetic.name.startswith("arithmetic-") and infilling.name.startswith("infilling-")
    for folder, entries in ((arithmetic, ["gfn_tb"]), (infilling, ["gfn_tb", "ppo"])):
        store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
        assert sorted(optuna.get_all_study_names(store)) == [f"smoke.{e}" for e in entries]
        for entry in entries:
            study = optuna.load_study(study_name=f"smoke.{entry}", storage=store)
            assert [t.state for t in study.trials] == [TrialState.COMPLETE]

    runs = runs_of(uri, "smoke", "tags.stage != 'sweep'")
    assert sorted(zip(runs["tags.task"], runs["tags.stage"])) == [
        ("arithmetic", "final"), ("arithmetic", "trial")] + [("infilling", "final")] * 2 + [("infilling", "trial")] * 2
    parents = runs_of(uri, "smoke", "tags.stage = 'sweep'")
    assert sorted(zip(parents["tags.task"], parents["tags.settings_folder"])) == [
        ("arithmetic", f"smoke/{arithmetic.name}"), ("infilling", f"smoke/{infilling.name}")]
    # The sweep file's own task keeps results/<sweep>/; another task writes below it.
    board = (tmp_path / "results" / "smoke" / "leaderboard.md").read_text()
    assert "| gfn_tb |" in board and "| ppo |" not in board and f"settings folder `smoke/{arithmetic.name}`" in board
    board = (tmp_path / "results" / "smoke" / "infilling" / "leaderboard.md").read_text()
    assert "| gfn_tb |" in board and "| ppo |" in board and f"settings folder `smoke/{infilling.name}`" in board

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    capsys.readouterr()
    assert bench.status.main(["sweep=smoke"]) == 0
    both = capsys.readouterr().out
    assert f"settings {arithmetic.name}: {arithmetic}" in both and f"settings {infilling.name}: {infilling}" in both
    assert bench.status.main(["sweep=smoke", "task=infilling"]) == 0
    one = capsys.readouterr().out
    assert f"settings {infilling.name}" in one and arithmetic.name not in one and "ppo: 1 COMPLETE" in one
    assert bench.status.main(["sweep=smoke", "task=subj"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: sweep 'smoke' was not run on task 'subj' in {tmp_path / 'runs'} "
                                               f"(its settings folders: {arithmetic.name}, {infilling.name})")

    for task, folder, leaderboard in (("arithmetic", arithmetic, "report/smoke/leaderboard.md"),
                                      ("infilling", infilling, "report/smoke/infilling/leaderboard.md")):
        assert bench.report.main(["sweep=smoke", f"task={task}", "results_dir=report"]) == 0
        board = (tmp_path / leaderboard).read_text()
        assert ("| ppo |" in board) == (task == "infilling") and f"settings folder `smoke/{folder.name}`" in board
    capsys.readouterr()
    assert bench.report.main(["sweep=smoke", "results_dir=report"]) == 0  # the latest: infilling, and it says so
    assert "the latest run of sweep smoke, on task infilling; also run on: arithmetic (choose with task=)" in capsys.readouterr().out

    # A changed search space for the same settings is still refused, and nothing is written.
    changed = (REPO / "sweeps" / "smoke.yaml").read_text().replace("high: 1.0e-3, log: true}\n      method.loss",
                                                                   "high: 1.0e-2, log: true}\n      method.loss")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "smoke.yaml").write_text(changed)
    monkeypatch.setattr(bench.config, "SWEEPS_DIR", tmp_path / "sweeps")
    before = {p: p.read_bytes() for p in sweep_folder.rglob("*") if p.is_file()}
    assert bench.run.main(["sweep=smoke", "task=infilling", "trials=1", "run_dir=runs", "results_dir=results"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {infilling / 'optuna.journal'} holds study smoke.gfn_tb made with other settings (search)")
    assert {p: p.read_bytes() for p in sweep_folder.rglob("*") if p.is_file()} == before


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

    store = storage(plan_sweep(flaky_sweep).storage_path)
    broken = optuna.load_study(study_name="flaky.breaks", storage=store).trials
    assert [t.state for t in broken] == [TrialState.FAIL]
    assert "non-finite loss" in broken[0].user_attrs["error"]
    works = optuna.load_study(study_name="flaky.works", storage=store).trials
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
    assert len(optuna.load_study(study_name="flaky.works", storage=store).trials) == 2
    assert len(runs_of(uri, "flaky", "tags.stage = 'sweep'")) == 2
    # Another search space or objective for the same settings would mix two experiments in one
    # study: refused before anything is written, naming what changed.
    folder = plan_sweep(flaky_sweep).folder
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for old, new, changed in (("low: 1.0e-4", "low: 1.0e-5", "search"), ("valid/accuracy", "valid/loglik_mean", "objective")):
        (tmp_path / "flaky.yaml").write_text(SWEEP.replace(old, new))
        with pytest.raises(ConfigError, match=re.escape(f"{folder / 'optuna.journal'} holds study flaky.works "
                                                        f"made with other settings ({changed})")):
            plan_sweep(flaky_sweep)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_each_set_of_fixed_settings_has_its_own_study_folder(flaky_sweep, tmp_path):
    plan = plan_sweep(flaky_sweep)
    assert plan.folder.parent == tmp_path / "runs" / "flaky" and re.fullmatch("arithmetic-[0-9a-f]{8}", plan.folder.name)
    # How many trials, which entries, how and where the sweep runs: the same studies.
    for same in ({"trials": "5"}, {"method": "breaks"}, {"trials": "0", "method": "works"},
                 {"max_parallel": "3", "heartbeat_s": "5", "stale_after_s": "60", "launcher": "local",
                  "threads": "2", "train.checkpoint_every": "1", "results_dir": str(tmp_path / "elsewhere")}):
        assert plan_sweep({**flaky_sweep, **same}).folder == plan.folder, same
    assert plan_sweep({**flaky_sweep, "run_dir": str(tmp_path / "there")}).folder == tmp_path / "there" / "flaky" / plan.folder.name
    # Its search space and objective belong to the studies, not to the folder (see the test above).
    (tmp_path / "flaky.yaml").write_text(SWEEP.replace("low: 1.0e-4", "low: 1.0e-5").replace("valid/accuracy", "valid/loglik_mean"))
    assert plan_sweep(flaky_sweep).folder == plan.folder
    # What the runs compute, on the command line or in any entry of the file: another folder each.
    (tmp_path / "flaky.yaml").write_text(SWEEP)
    others = [plan_sweep({**flaky_sweep, **changed}).folder for changed in
              ({"train.steps": "5"}, {"task.n_test": "5"}, {"seed": "1"}, {"model.lora.r": "4"})]
    (tmp_path / "flaky.yaml").write_text(SWEEP.replace("{method.fail: true}", "{method.fail: true, method.lr: 0.01}"))
    others.append(plan_sweep({**flaky_sweep, "method": "works"}).folder)  # an entry not selected still counts
    assert len({plan.folder, *others}) == 1 + len(others) and all(f.parent == plan.folder.parent for f in others)


def test_trials_0_and_then_a_budget_continue_the_same_studies(flaky_sweep, tmp_path):
    """An entry's `untuned:` recipe is for its finals at trials 0; its studies stay those of its search."""
    (tmp_path / "flaky.yaml").write_text(SWEEP.replace("    trials: 2\n", "    trials: 2\n    untuned: {method.lr: 0.005}\n"))
    untuned = plan_sweep({**flaky_sweep, "trials": "0"})
    assert untuned.methods[0].config.method_cfg.lr == 0.005
    untuned.folder.mkdir(parents=True)
    for method in untuned.methods:  # as the driver opens them
        open_study(untuned, method, storage(untuned.storage_path))
    tuned = plan_sweep({**flaky_sweep, "trials": "2"})
    assert tuned.folder == untuned.folder and tuned.methods[0].config.method_cfg.lr == 1e-3


def test_resume_without_a_study_for_these_settings_names_those_there_are(flaky_sweep, tmp_path):
    with pytest.raises(ConfigError, match="resume=true, but there is no sweep to resume at .*runs/flaky/arithmetic-"):
        plan_sweep({**flaky_sweep, "resume": "true"})
    plan = plan_sweep(flaky_sweep)
    plan.folder.mkdir(parents=True)
    open_study(plan, plan.methods[0], storage(plan.storage_path))
    assert plan_sweep({**flaky_sweep, "resume": "true"}).folder == plan.folder
    with pytest.raises(ConfigError, match=re.escape(
            f"resume=true, but {tmp_path / 'runs' / 'flaky'} holds no study with these settings, only "
            f"{plan.folder.name} (runs with other settings have their own); check the settings and run_dir=, "
            "or drop resume=true to start one")):
        plan_sweep({**flaky_sweep, "resume": "true", "train.steps": "5"})


def test_a_store_of_the_old_layout_is_continued_where_it_is_with_its_settings(flaky_sweep, tmp_path):
    """Before a folder per settings, a sweep's studies were in `<run_dir>/<sweep>/optuna.journal`."""
    plan = plan_sweep(flaky_sweep)
    old = tmp_path / "runs" / "flaky"
    old.mkdir(parents=True)
    for method in plan.methods:
        optuna.create_study(study_name=f"flaky.{method.name}", storage=storage(old / "optuna.journal"),
                            direction="maximize").set_user_attr("settings", method.fingerprint(plan.spec))
    assert plan_sweep(flaky_sweep).folder == old
    assert plan_sweep({**flaky_sweep, "method": "works", "trials": "4"}).folder == old
    assert plan_sweep({**flaky_sweep, "train.steps": "5"}).folder.parent == old  # other settings: their own folder
    (tmp_path / "flaky.yaml").write_text(SWEEP.replace("low: 1.0e-4", "low: 1.0e-5"))
    with pytest.raises(ConfigError, match=re.escape(f"{old / 'optuna.journal'} holds study flaky.works made with "
                                                    "other settings (search)")):
        plan_sweep(flaky_sweep)


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
    store = storage(plan_sweep(overrides).storage_path)
    assert optuna.load_study(study_name="untuned.gfn_tb", storage=store).trials == []
    assert [t.state for t in optuna.load_study(study_name="untuned.ppo", storage=store).trials] == [TrialState.COMPLETE]
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

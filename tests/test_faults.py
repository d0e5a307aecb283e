"""Sweeps that lose nothing when their workers die: real subprocesses, a real SLURM cluster.

Each test runs `python -m bench.run sweep=smoke ...` as a user would, injects one fault, lets the
sweep finish, and then checks the Optuna journal and the MLflow store:
(a) `scancel` of one SLURM array task mid-trial, (b) a SLURM job that reaches its time limit,
(c) SIGKILL of a local worker, (d) 4 local workers sharing one study and one MLflow server.
The SLURM tests need the development cluster (`make slurm-up`; .ci/run starts it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
# A gfn_tb trial on the tiny model, long enough to be interrupted, checkpointing often.
LONG_TRIAL = ["sweep=smoke", "method=gfn_tb", "run_dir=runs", "results_dir=results", "heartbeat_s=1",
              "stale_after_s=8", "train.steps=40", "train.checkpoint_every=2", "system_metrics=false"]


def slurm_up() -> str | None:
    """Why SLURM tests cannot run here, or None when they can."""
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH (start the development cluster: make slurm-up)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"SLURM is not up ({ping.stdout.strip() or ping.stderr.strip()}); start it with make slurm-up"
    return None


needs_slurm = pytest.mark.skipif(slurm_up() is not None, reason=str(slurm_up()))


def _sigint_as_in_a_terminal() -> None:
    # A shell starts background commands (`make test &`, CI scripts) with SIGINT ignored, and that
    # is inherited: the driver would ignore the test's Ctrl-C. Give it the terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sweep(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    log = open(tmp_path / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-m", "bench.run", *args], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_sigint_as_in_a_terminal)


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("sweep did not finish:\n" + (tmp_path / "driver.log").read_text()[-4000:])
    log = (tmp_path / "driver.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    return log


def settings_folder(tmp_path: Path) -> Path:
    """The folder of the sweep's studies (each test here runs one set of settings; a placeholder
    that does not exist before the driver makes it)."""
    return next((tmp_path / "runs" / "smoke").glob("arithmetic-*"), tmp_path / "runs" / "smoke" / "none-yet")


def study(tmp_path: Path, name: str = "smoke.gfn_tb") -> optuna.Study:
    journal = settings_folder(tmp_path) / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def wait_for(condition, timeout: float, what: str):
    """The first value of `condition()` that is not None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def checkpointed_trial(tmp_path: Path) -> int | None:
    """Number of a RUNNING trial that has written a checkpoint, if any."""
    journal = settings_folder(tmp_path) / "optuna.journal"
    if not journal.exists():
        return None
    try:
        running = study(tmp_path).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except KeyError:  # the journal exists, the study is not created yet
        return None
    for trial in running:
        if (settings_folder(tmp_path) / "trials" / "gfn_tb" / str(trial.number) / "checkpoint" / "checkpoint.pt").exists():
            return trial.number
    return None


def worker_jobs(tmp_path: Path) -> list[str]:
    path = settings_folder(tmp_path) / "jobs.json"
    return [job["job_id"] for job in json.loads(path.read_text())] if path.exists() else []


def trial_runs(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    return mlflow.search_runs(experiment_names=["smoke"], filter_string="tags.stage = 'trial'")


def assert_nothing_lost(tmp_path: Path, n_trials: int) -> list:
    """Exactly n COMPLETE trials, one per lineage; every other trial an interrupted one that was
    retried; one MLflow run per lineage, none left RUNNING."""
    trials = study(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials, [(t.number, t.state, t.user_attrs) for t in trials]
    lineages = sorted(t.user_attrs["lineage"] for t in complete)
    assert len(set(lineages)) == n_trials
    for t in trials:
        if t.state != TrialState.COMPLETE:
            assert t.state == TrialState.FAIL and "error" not in t.user_attrs, (t.number, t.state, t.user_attrs)
            assert any(r.user_attrs.get("retry_of") == t.number for r in trials)
    runs = trial_runs(tmp_path)
    assert len(runs) == n_trials and sorted(runs["tags.trial"].astype(int)) == lineages
    assert set(runs["status"]) == {"FINISHED"}
    return trials


def loss_steps(tmp_path: Path, run_id: str) -> list[int]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    return [m.step for m in client.get_metric_history(run_id, "train/loss")]


def test_sigkill_of_a_local_worker_is_retried_from_its_checkpoint(tmp_path):
    proc = start_sweep(tmp_path, *LONG_TRIAL, "trials=1", "launcher=local", "max_parallel=1")
    killed = wait_for(lambda: checkpointed_trial(tmp_path), 300, "a checkpointed trial")
    # A local job's id is the process id of submitit's controller; the worker is its child.
    controller = psutil.Process(int(worker_jobs(tmp_path)[0]))
    for process in [*controller.children(recursive=True), controller]:
        process.kill()
    finish(proc, tmp_path, 600)

    trials = assert_nothing_lost(tmp_path, 1)
    assert trials[killed].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[killed].params
    run = trial_runs(tmp_path).iloc[0]
    assert run["tags.interrupted"] == "stale heartbeat" and run["tags.resumed"] == "true"
    steps = loss_steps(tmp_path, run["run_id"])
    # Steps logged after the last checkpoint and before the kill are logged again: no gap.
    assert sorted(set(steps)) == list(range(40)) and steps[0] == 0


def test_four_local_workers_share_one_study_and_one_mlflow_server(tmp_path):
    proc = start_sweep(tmp_path, "sweep=smoke", "method=gfn_tb", "trials=8", "max_parallel=4", "launcher=local",
                       "mlflow_server=true", "run_dir=runs", "results_dir=results", "train.steps=2",
                       "system_metrics=false")
    finish(proc, tmp_path, 900)
    trials = assert_nothing_lost(tmp_path, 8)
    assert len(trials) == 8  # no fault here: not one trial more than the budget
    assert len(worker_jobs(tmp_path)) == 4
    assert not list((settings_folder(tmp_path) / "heartbeats").iterdir())


@needs_slurm
def test_scancel_of_one_array_task_loses_no_trial(tmp_path):
    proc = start_sweep(tmp_path, *LONG_TRIAL, "trials=2", "launcher=slurm", "slurm=local", "max_parallel=2")
    wait_for(lambda: checkpointed_trial(tmp_path), 300, "a checkpointed trial")
    job = worker_jobs(tmp_path)[0]
    subprocess.run(["scancel", job], check=True)
    finish(proc, tmp_path, 900)

    trials = assert_nothing_lost(tmp_path, 2)
    assert any(t.state == TrialState.FAIL for t in trials), "the cancelled task's trial was not retried"
    state = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True).stdout
    assert "CANCELLED" in state


@needs_slurm
def test_a_job_at_its_time_limit_is_requeued_and_its_trial_continues(tmp_path):
    # SLURM checks time limits every 30 s, so the warning (SIGUSR2) comes 40-70 s before the
    # 2-minute limit, i.e. up to 80 s into the job; the trial takes longer than that, checkpoints at
    # its next step and continues after the requeue, possibly more than once. Since newline tokens
    # end a sample, the random tiny model stops early: a step of the first trial's draw (vargrad)
    # takes about 0.14 s on a quiet machine, so 500 steps (72 s) once finished before the warning;
    # 1,000 steps take about 140 s.
    proc = start_sweep(tmp_path, *(arg for arg in LONG_TRIAL if not arg.startswith("train.steps=")), "trials=1",
                       "launcher=slurm", "slurm=local", "max_parallel=1", "train.steps=1000", "slurm.time_min=2",
                       "slurm.signal_delay_s=40")  # a key is given once

    def complete():
        try:
            trials = study(tmp_path).trials
        except (KeyError, FileNotFoundError):  # no study yet
            return None
        return next((t for t in trials if t.state == TrialState.COMPLETE), None)

    wait_for(complete, 1200, "the trial to complete")
    # The finals would show the same again: stop the sweep as a user would, with Ctrl-C.
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode != 0, "the sweep ran to its end: it did not get the Ctrl-C"

    trials = assert_nothing_lost(tmp_path, 1)
    assert len(trials) >= 2, "the trial was never interrupted: make it longer"
    run = trial_runs(tmp_path).iloc[0]
    assert run["tags.resumed"] == "true" and run["tags.interrupted"] == "requeue"
    # The step counter continues after the requeue: one continuous history, each step once.
    assert loss_steps(tmp_path, run["run_id"]) == list(range(1000))
    # Ctrl-C cancelled the final run's job.
    queue = lambda: subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.strip()
    wait_for(lambda: True if queue() == "" else None, 120, "an empty queue")

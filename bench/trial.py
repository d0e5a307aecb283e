"""One training run's MLflow run: what a single run, a sweep trial and a final seed all execute (in
this process or in a submitit job). It opens or resumes the run, tags it, trains and evaluates
(bench/training.py, or bench/parallel.py for several processes) and ends it FINISHED, KILLED
(pruned, interrupted) or FAILED.
"""
from __future__ import annotations

import socket
import time
import traceback
from pathlib import Path
from typing import Callable

import mlflow

from bench import tracking
from bench.config import flatten
from bench.interrupt import Interrupted, StoppingCheckpointer
from bench.parallel import train_in_processes
from bench.pruning import Pruned
from bench.run_config import RunConfig
from bench.training import train_and_evaluate
from methods import method_module
from tasks.spec import load_spec


def run_tags(cfg: RunConfig, stage: str, trial_number: int | str | None, entry: str | None = None) -> dict[str, str]:
    """`entry` is the sweep row a run belongs to (by default its method); `trial_number` is the
    Optuna trial a run tunes or re-runs, or "untuned" for the final of an entry with trials 0."""
    sha, dirty = tracking.git_sha()
    return {
        "method": cfg.method, "entry": entry or cfg.method, "task": cfg.task, "model": cfg.model.name or cfg.model.gguf or cfg.model.preset,
        "seed": str(cfg.seed), "trial": "" if trial_number is None else str(trial_number),
        "stage": stage, "sweep": cfg.sweep or "", "scale": cfg.scale,
        "git_sha": sha, "git_dirty": str(dirty).lower(), "hostname": socket.gethostname(),
        "task_version": str(load_spec(cfg.task).version),
    }


def run_trial(cfg: RunConfig, *, stage: str = "single", parent_run_id: str | None = None,
              trial_number: int | str | None = None, evaluate_test: bool = True, entry: str | None = None,
              run_id: str | None = None, checkpoint_dir: Path | None = None,
              on_run_started: Callable[[str], None] | None = None,
              on_evaluate: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train `cfg.method` on `cfg.task`, evaluate, record everything; return the final metrics.

    `run_id`: continue this MLflow run (a resumed trial) instead of starting one; with
    `checkpoint_dir` the training state is saved there every `train.checkpoint_every` steps and
    training continues from the latest checkpoint found there. A stop request (SIGUSR2, SIGTERM;
    see bench.interrupt) ends the run KILLED after its next checkpoint and raises `Interrupted`.
    `on_run_started` gets the run's id as soon as it exists. `on_evaluate(step, metrics)` is called
    after each validation during training (a sweep's pruner, bench/pruning.py); when it raises
    `Pruned`, the run ends KILLED, tagged `pruned=true` and `pruned_step`, and `Pruned` is raised.
    """
    started = time.monotonic()
    experiment_id = tracking.ensure_experiment(cfg)
    name = f"{entry or cfg.method}-seed{cfg.seed}" + (
        "" if trial_number is None else f"-trial{trial_number}" if isinstance(trial_number, int) else f"-{trial_number}")
    if run_id is None:
        tags = run_tags(cfg, stage, trial_number, entry)
        if parent_run_id:
            # The tag (not start_run(nested=True)) is what makes a child across processes.
            tags["mlflow.parentRunId"] = parent_run_id
        mlflow.start_run(experiment_id=experiment_id, run_name=f"{stage}-{name}", tags=tags,
                         log_system_metrics=cfg.system_metrics)
        mlflow.log_params({key: "null" if value is None else value for key, value in flatten(cfg).items()})
    else:
        mlflow.start_run(run_id=run_id, log_system_metrics=cfg.system_metrics)  # status back to RUNNING
        mlflow.set_tags({"resumed": "true", "hostname": socket.gethostname()})
    run_id = mlflow.active_run().info.run_id
    if on_run_started is not None:
        on_run_started(run_id)
    try:
        if cfg.trainer.num_processes > 1 and getattr(method_module(cfg.method), "TRAINS", True):
            if on_evaluate is not None:  # plan_sweep refuses a pruner with several processes
                raise ValueError("on_evaluate needs the run's evaluations in this process (trainer.num_processes=1)")
            metrics = train_in_processes(cfg, run_id=run_id, name=name, evaluate_test=evaluate_test,
                                         leave_bar=stage == "single", checkpoint_dir=checkpoint_dir)
        else:
            checkpoints = None if checkpoint_dir is None else StoppingCheckpointer(checkpoint_dir, cfg.train.checkpoint_every)
            metrics = train_and_evaluate(cfg, name, evaluate_test=evaluate_test, leave_bar=stage == "single",
                                         checkpoints=checkpoints, log=tracking.RunLog(run_id), on_evaluate=on_evaluate)
        metrics["wall_time_s"] = time.monotonic() - started
        mlflow.log_metric("wall_time_s", metrics["wall_time_s"], step=cfg.train.steps)
    except Pruned as pruned:
        # KILLED, not FINISHED: the run stopped before its budget and has no final evaluation, so
        # a search for FINISHED runs still finds only whole ones (as for an interrupted run, which
        # carries `interrupted` instead of `pruned`); not FAILED: nothing went wrong.
        mlflow.set_tags({"pruned": "true", "pruned_step": str(pruned.step)})
        mlflow.log_metric("wall_time_s", time.monotonic() - started, step=pruned.step)
        mlflow.end_run(status="KILLED")
        raise
    except (KeyboardInterrupt, Interrupted) as stop:
        mlflow.set_tag("interrupted", getattr(stop, "reason", "keyboard"))
        mlflow.end_run(status="KILLED")
        raise
    except Exception as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
    return metrics

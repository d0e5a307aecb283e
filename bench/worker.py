"""Sweep workers: processes that pull trials from a sweep's studies (bench/journal.py) and run each.

A sweep starts K workers (local subprocesses, or a SLURM array of K tasks) sharing its folder. Each
re-plans the sweep from its command line, claims a trial under the claims lock, runs it as an
MLflow run (bench/training.py) with a heartbeat, and tells the study how it ended: completed,
pruned, failed (counted) or interrupted (handed back for a retry from its checkpoint).
"""
from __future__ import annotations

import contextlib
import math
import shutil
import socket
from typing import Any

import optuna
import submitit
from optuna.trial import TrialState

from bench.interrupt import Interrupted, StopRequest
from bench.journal import (ERROR, LINEAGE, RUN_ID, Heartbeat, Liveness, claim, claims_lock, heartbeat_file, locked,
                           retry, storage)


class Worker(submitit.helpers.Checkpointable):
    """One worker of a sweep: `overrides` are the sweep's command line, so the worker re-plans the
    sweep from its YAML (and refuses to run if the studies were made with other settings)."""

    def __init__(self, overrides: dict[str, str], parent_run_id: str, index: int):
        self.overrides, self.parent_run_id, self.index = overrides, parent_run_id, index

    def __call__(self) -> dict[str, Any]:
        # First: a time-limit signal during the imports below (torch, the methods) must only record a request.
        StopRequest.install()
        from bench.sweep_plan import plan_sweep

        plan = plan_sweep(self.overrides)
        folder, cfg = plan.folder, plan.cfg
        uri = _tracking_uri(cfg.run_dir)
        live = Liveness(cfg.heartbeat_s, cfg.stale_after_s)
        store = storage(plan.storage_path)
        studies, budgets, methods = {}, {}, {}
        for method in plan.methods:
            name = f"{plan.spec.name}.{method.name}"
            study = optuna.load_study(study_name=name, storage=store)
            # Seeded apart per worker and per resumption, so that parallel workers (and a resumed
            # sweep) do not draw the same random start-up points.
            seed = hash((method.config.seed, self.index, len(study.trials))) % 2**31
            study.sampler = optuna.samplers.TPESampler(seed=seed)
            # The storage does not keep a pruner: every worker sets the sweep's on its own study
            # object, the one its trials (study.ask) report to and ask should_prune of.
            study.pruner = plan.pruner_for(method) or optuna.pruners.NopPruner()
            studies[method.name] = study
            budgets[method.name], methods[method.name] = method.trials, method
        done = {"completed": 0, "pruned": 0, "failed": 0, "interrupted": 0, "worker": self.index,
                "host": socket.gethostname()}
        while StopRequest.reason is None:
            claimed = claim(folder, studies, budgets, live, uri)
            if claimed is None:
                break
            entry, trial = claimed
            outcome = self._run(plan, methods[entry], studies[entry], trial, live, uri)
            done[outcome] += 1
        StopRequest.hand_back()  # after a requeue request: submitit requeues this job and exits
        return done

    def _run(self, plan, method, study: optuna.Study, trial: optuna.Trial, live: Liveness, uri: str) -> str:
        """Run one claimed trial and tell the study how it ended; returns the outcome's name."""
        from bench.pruning import Pruned, reporter
        from bench.training import run_trial

        attrs = trial.user_attrs
        line = int(attrs.get(LINEAGE, trial.number))
        trial.set_user_attr(LINEAGE, line)
        params = {p.key: p.suggest(trial) for p in method.search}  # a retry gets its enqueued values
        cfg = method.config_for((f"optuna trial {trial.number}", params))
        label = f"{method.name} trial {line}" + (f" (retry {trial.number})" if line != trial.number else "")
        checkpoints = plan.folder / "trials" / method.name / str(line) / "checkpoint"
        # The heartbeat lasts until the study is told: a finished trial is never taken for stale.
        with Heartbeat(heartbeat_file(plan.folder, study, trial.number), live.heartbeat_s):
            try:
                result = run_trial(cfg, stage="trial", parent_run_id=self.parent_run_id, entry=method.name,
                                   trial_number=line, evaluate_test=False, run_id=attrs.get(RUN_ID),
                                   checkpoint_dir=checkpoints,
                                   on_run_started=lambda run_id: trial.set_user_attr(RUN_ID, run_id),
                                   on_evaluate=None if plan.spec.pruner is None else reporter(trial, plan.spec.metric))
            except Pruned as pruned:  # stopped by the pruner: counted, never retried, nothing to continue from
                study.tell(trial, state=TrialState.PRUNED)
                shutil.rmtree(checkpoints, ignore_errors=True)
                with contextlib.suppress(OSError):
                    checkpoints.parent.rmdir()  # the trial's folder, when nothing else is in it
                print(f"{label}: pruned at step {pruned.step} ({plan.spec.metric}={pruned.value:.4g}) {params}", flush=True)
                return "pruned"
            except Interrupted as stop:
                with locked(claims_lock(plan.folder)):
                    retry(study, study.get_trials(deepcopy=False)[trial.number], stop.reason, None)
                print(f"{label}: interrupted ({stop}); its retry continues from the checkpoint", flush=True)
                return "interrupted"
            except Exception as err:  # the run failed on its own: recorded, counted, the sweep goes on
                error = f"{type(err).__name__}: {err}"
            else:
                value = result.get(plan.spec.metric)
                if value is not None and math.isfinite(value):
                    study.tell(trial, value)
                    print(f"{label}: {plan.spec.metric}={value:.4g} {params}", flush=True)
                    return "completed"
                error = f"objective {plan.spec.metric} missing or not finite: {value}"
            trial.set_user_attr(ERROR, error[:2000])
            study.tell(trial, state=TrialState.FAIL)
            print(f"{label}: FAILED: {error}", flush=True)
            return "failed"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeued after a time limit or preemption: a fresh worker, which claims the retry of the
        trial this one handed back (or any other trial left)."""
        return submitit.helpers.DelayedSubmission(Worker(self.overrides, self.parent_run_id, self.index))


def _tracking_uri(run_dir: str) -> str:
    from bench.tracking import tracking_uri

    return tracking_uri(run_dir)

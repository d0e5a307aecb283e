"""The sweep's driver: tune each entry with Optuna workers, then run its finals and write the leaderboard.

The sweep file, `sweeps/<name>.yaml`, is read and checked by bench/sweep_file.py (its format is
described there). Each entry has its own study `<sweep>.<entry>`, kept in the folder of the sweep's
fixed settings, `<run_dir>/<sweep>/<task>-<hash>/optuna.journal` (bench/sweep_plan.py: study_folder).
Trials are pulled from the studies by `max_parallel` workers (bench/worker.py: local subprocesses
or one SLURM job array) until each entry's budget is spent; a trial whose worker died or was
preempted is retried from its checkpoint, in the same MLflow run. Running the same command again
continues the sweep: finished trials count towards `trials`, open ones are retried, and the
finals are run again (a final cut off by a time limit continues from its checkpoint). One driver
per folder of studies at a time. MLflow runs of trials and finals are children of one parent run per
invocation.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time

import mlflow
import optuna
import submitit
from optuna.trial import TrialState
from tqdm import tqdm

from bench import journal, launch, tracking, worker
from bench.config import SWEEPS_DIR  # noqa: F401  (re-exported for callers that set it here; bench.config's is read)
from bench.sweep_finals import best_trials, publish, run_finals
from bench.sweep_jobs import Pool, cancel, error_summary, finished
from bench.sweep_plan import SweepPlan, open_study
from tasks.spec import load_spec as load_task_spec


def run_sweep(plan: SweepPlan) -> int:
    """Tune, run the finals, write the leaderboard. Returns the exit status: 0, or 1 when a
    tuned entry (trials > 0) has no completed trial or a final run failed."""
    cfg = plan.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from us
    # Other settings (another task, scale, budget; or a setting a newer version added) start other studies: say which.
    print(f"studies: {plan.folder}" + ("" if plan.storage_path.exists() else " (new: none with these settings yet)"))
    repaired = journal.repair_journal(plan.storage_path)  # before anything is appended to it
    if repaired:
        print(f"warning: {repaired}", file=sys.stderr)
    # The experiment is made on the store itself, not through a server: its artifacts then live
    # at a file location that a resume without mlflow_server=true still reaches.
    tracking.ensure_experiment(cfg)
    with tracking.serve(cfg.run_dir) if cfg.mlflow_server else contextlib.nullcontext():
        return _run_sweep(plan)


def _run_sweep(plan: SweepPlan) -> int:
    cfg, spec = plan.cfg, plan.spec
    # Store and experiment first: workers must not race to create the SQLite schema.
    experiment_id = tracking.ensure_experiment(cfg)
    uri = tracking.tracking_uri(cfg.run_dir)
    client = mlflow.MlflowClient(uri)
    sha, dirty = tracking.git_sha()
    parent = client.create_run(experiment_id, run_name=f"{spec.name}-{cfg.scale}", tags={
        "sweep": spec.name, "scale": cfg.scale, "stage": "sweep", "task": cfg.task,
        "task_version": str(load_task_spec(cfg.task).version),
        "model": cfg.model.name or cfg.model.gguf or cfg.model.preset, "launcher": cfg.launcher,
        "git_sha": sha, "git_dirty": str(dirty).lower(),
        "overrides": " ".join(f"{k}={v}" for k, v in plan.overrides.items()),
        # For bench.status and bench.report: the folder of its studies, below run_dir, and of its results.
        "settings_folder": plan.folder.relative_to(cfg.run_dir).as_posix(), "results_folder": plan.results_folder,
    })
    parent_id = parent.info.run_id
    status = "FAILED"  # until the sweep gets through: every way out ends the parent run
    bar = None
    try:
        client.log_artifact(parent_id, str(spec.path))
        plan.folder.mkdir(parents=True, exist_ok=True)
        store = journal.storage(plan.storage_path)
        studies = {m.name: open_study(plan, m, store) for m in plan.methods}
        budgets = {m.name: m.trials for m in plan.methods}
        n_finals = len(plan.methods) * len(plan.seeds)
        bar = tqdm(total=sum(budgets.values()) + n_finals, desc=f"sweep {spec.name}", unit="run")
        _run_workers(plan, parent_id, studies, budgets, bar)
        best = best_trials(plan, studies, client, parent_id, bar)
        ex = launch.executor(cfg.launcher, plan.folder / "submitit", f"{spec.name}-final", cfg.trial_timeout_min,
                             cfg.slurm, cfg.max_parallel)
        failures = run_finals(plan, best, Pool(ex, cfg.max_parallel, bar), parent_id, bar)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if bar is not None:
            bar.close()
        client.set_terminated(parent_id, status=status)

    has_board = publish(plan, client, experiment_id, parent_id)
    print(f"runs: {tracking.ui_hint(uri)}")
    missing = [m.name for m in plan.methods if m.trials > 0 and m.name not in best]
    if missing:
        print(f"no completed trial for: {', '.join(missing)}")
    return 1 if missing or failures or not has_board else 0


def _run_workers(plan: SweepPlan, parent_id: str, studies: dict[str, optuna.Study], budgets: dict[str, int],
                 bar: tqdm) -> None:
    """Start workers and watch the studies until every budget is spent.

    The driver also retries stale trials, so that a sweep whose workers all died still recovers,
    and starts new workers when claimable trials are left and none is alive (at most
    WORKER_ROUNDS times, so that a crash on start does not loop forever).
    """
    cfg = plan.cfg
    live = journal.Liveness(cfg.heartbeat_s, cfg.stale_after_s)
    uri = tracking.tracking_uri(cfg.run_dir)
    lock = journal.claims_lock(plan.folder)
    ex = launch.executor(cfg.launcher, plan.folder / "submitit", f"{plan.spec.name}-worker", cfg.trial_timeout_min,
                         cfg.slurm, cfg.max_parallel)
    seen: set[tuple[str, int]] = set()
    jobs: list[submitit.Job] = []
    try:
        _watch(plan, studies, budgets, bar, ex, parent_id, live, uri, lock, seen, jobs)
    except KeyboardInterrupt:
        cancel(jobs)
        raise


def _watch(plan: SweepPlan, studies: dict[str, optuna.Study], budgets: dict[str, int], bar: tqdm,
           ex: submitit.AutoExecutor, parent_id: str, live: journal.Liveness, uri: str, lock,
           seen: set[tuple[str, int]], jobs: list[submitit.Job]) -> None:
    """The driver's loop; `jobs` is kept up to date with the live workers (for Ctrl-C)."""
    cfg = plan.cfg
    rounds = 0
    while True:
        with journal.locked(lock):
            for study in studies.values():
                journal.fail_stale(plan.folder, study, live, uri)
        _report_trials(studies, seen, plan.spec.metric, bar)
        left = journal.remaining(studies, budgets)
        bar.n = min(bar.total, sum(budgets.values()) - left)
        bar.refresh()
        alive = [job for job in jobs if not finished(job)]
        for job in jobs:
            if job not in alive:
                _report_worker(job, bar)
        jobs[:] = alive
        if left == 0:
            break
        if not alive and _claimable(studies, budgets):
            if rounds == WORKER_ROUNDS:
                bar.write(f"stopping: workers were started {rounds} times and {left} trials are still open")
                break
            rounds += 1
            count = min(cfg.max_parallel, left)
            with ex.batch():  # one job array on SLURM
                pending = [ex.submit(worker.Worker(plan.overrides, parent_id, i)) for i in range(count)]
            jobs[:] = pending
            _record_jobs(plan, jobs)
            continue
        time.sleep(POLL_S)


POLL_S = 2.0  # seconds between the driver's looks at the studies
WORKER_ROUNDS = 3


def _claimable(studies: dict[str, optuna.Study], budgets: dict[str, int]) -> bool:
    """Whether a new worker would find a trial to run now (not only stale ones to wait for)."""
    for entry, study in studies.items():
        if budgets[entry] == 0:  # untuned: not even a retry left waiting by an earlier budget
            continue
        running, waiting = journal.open_trials(study)
        if waiting or journal.counted(study) + len(running) < budgets[entry]:
            return True
    return False


def _report_trials(studies: dict[str, optuna.Study], seen: set[tuple[str, int]], metric: str, bar: tqdm) -> None:
    """One line per trial that ended since the last call."""
    for entry, study in studies.items():
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if (entry, t.number) in seen:
                continue
            seen.add((entry, t.number))
            label = f"{entry} trial {t.user_attrs.get(journal.LINEAGE, t.number)}"
            if t.state == TrialState.COMPLETE:
                bar.write(f"{label}: {metric}={t.value:.4g} {t.params}")
            elif t.state == TrialState.PRUNED:
                value = "" if t.last_step is None else f" ({metric}={t.intermediate_values[t.last_step]:.4g})"
                bar.write(f"{label}: pruned at step {t.last_step}{value} {t.params}")
            elif journal.ERROR in t.user_attrs:
                bar.write(f"{label}: FAILED: {t.user_attrs[journal.ERROR]}")
            else:
                bar.write(f"{label}: interrupted; retried from its checkpoint")


def _report_worker(job: submitit.Job, bar: tqdm) -> None:
    try:
        job.result()
    except Exception as err:
        bar.write(f"worker {job.job_id} ended with an error: {error_summary(err, job)}")


def _record_jobs(plan: SweepPlan, jobs: list[submitit.Job]) -> None:
    """Append the workers' job ids to `<sweep folder>/jobs.json`, for `python -m bench.status`."""
    path = plan.folder / "jobs.json"
    known = json.loads(path.read_text()) if path.exists() else []
    known += [{"job_id": str(job.job_id), "launcher": plan.cfg.launcher, "kind": "worker",
               "submitted": time.time(), "log": str(job.paths.stdout)} for job in jobs]
    path.write_text(json.dumps(known, indent=1))

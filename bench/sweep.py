"""Sweeps: tune each method with Optuna, then re-run each method's best configuration over seeds.

The sweep file, `sweeps/<name>.yaml`, is read and checked by bench/sweep_file.py (its format is
described there). Each entry has its own study `<sweep>.<entry>`, kept in `<run_dir>/<sweep>/optuna.journal`.
Trials are pulled from the studies by `max_parallel` workers (bench/worker.py: local subprocesses
or one SLURM job array) until each entry's budget is spent; a trial whose worker died or was
preempted is retried from its checkpoint, in the same MLflow run. Running the same command again
continues the sweep: finished trials count towards `trials`, open ones are retried, and the
finals are run again (a final cut off by a time limit continues from its checkpoint). One driver
per sweep folder at a time. MLflow runs of trials and finals are children of one parent run per
invocation.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import optuna
import submitit
from optuna.trial import TrialState
from tqdm import tqdm

from bench import figures, launch, pruning, report, tracking, worker
from bench.config import (ConfigError, Layer, RunConfig, build_config, check_choice, check_setting, check_task,
                          convert, flatten, resolve_scale, slots)
from bench.config import SWEEPS_DIR  # noqa: F401  (re-exported for callers that set it here; bench.config's is read)
from bench.interrupt import Interrupted, StopRequest
from bench.scales import SCALES
from bench.sweep_file import Reader, SearchParam, SweepSpec, for_scale, load_spec, sweep_wide
from bench.trial import run_trial
from methods import method_module
from tasks.spec import load_spec as load_task_spec


def execution_only(key: str) -> bool:
    """Settings that change how a sweep executes, not what its runs compute (left out of the
    check that a resumed study still describes the same experiment)."""
    return (sweep_wide(key) and key != "scale") or key == "train.checkpoint_every"


# --- the plan: everything checked before anything is written ---------------------------------


@dataclass
class MethodPlan:
    name: str  # the entry's label (its method is config.method)
    layers: list[Layer]  # scale preset excluded: build_config adds it
    config: RunConfig  # the layers resolved, without suggestions
    trials: int
    search: tuple[SearchParam, ...]

    def config_for(self, *extra: Layer) -> RunConfig:
        return build_config([*self.layers, *extra])

    def fingerprint(self, spec: SweepSpec) -> str:
        """What a study's trials depend on: a resumed study must still match it."""
        settings = {key: value for key, value in flatten(self.config).items() if not execution_only(key)}
        settings["objective"] = f"{spec.direction} {spec.metric}"
        settings["search"] = [repr(p) for p in self.search]
        return json.dumps(settings, sort_keys=True, default=str)


@dataclass
class SweepPlan:
    spec: SweepSpec
    cfg: RunConfig  # the first method's config: sweep-wide settings (scale, run_dir, launcher, ...)
    methods: list[MethodPlan]
    seeds: list[int]
    overrides: dict[str, str]
    pruner_settings: dict[str, int] = field(default_factory=dict)  # spec.pruner's values at the scale

    def pruner_for(self, method: MethodPlan) -> optuna.pruners.BasePruner | None:
        """The pruner of `method`'s study (None: no pruning); each worker sets it on its own study
        object, since Optuna's storage does not keep pruners."""
        if self.spec.pruner is None:
            return None
        return pruning.build(self.spec.pruner, self.pruner_settings, method.config.train)

    @property
    def folder(self) -> Path:
        return Path(self.cfg.run_dir) / self.spec.name

    @property
    def storage_path(self) -> Path:
        return self.folder / "optuna.journal"


def plan_sweep(overrides: dict[str, str]) -> SweepPlan:
    """Read and check the sweep named in `overrides` against every config it will run."""
    spec = load_spec(overrides["sweep"])
    read = Reader(spec.path)
    cli = dict(overrides)
    only = cli.pop("method", None)
    trials_everywhere = cli.pop("trials", None)
    if trials_everywhere is not None:
        trials_everywhere = convert("trials", trials_everywhere, int)
        if trials_everywhere < 0:
            raise ConfigError(f"trials: expected at least 0, got {trials_everywhere}")
    entries = list(spec.methods)
    if only is not None:
        entries = [label for label, entry in spec.methods.items() if only in (label, entry.method)]
        if not entries:
            raise ConfigError(f"sweep {spec.name} has no entry or method {only!r}; "
                              f"its entries: {', '.join(spec.methods)}")
    scale = resolve_scale(check_choice("scale", cli.get("scale", spec.base.get("scale", "auto")),
                                       [*SCALES, "auto"]))

    def at_scale(layer: dict[str, Any], where: str) -> dict[str, Any]:
        return {key: for_scale(value, scale, read, f"{where}.{key}") for key, value in layer.items()}

    base = at_scale(spec.base, "base")
    task = cli.get("task", base.get("task", RunConfig.__dataclass_fields__["task"].default))
    shared_layers: list[Layer] = [(f"{read.label}: base", {**base, "scale": scale})]
    if task in spec.tasks:
        shared_layers.append((f"{read.label}: tasks.{task}", at_scale(spec.tasks[task], f"tasks.{task}")))

    plans = []
    for label in entries:
        mspec = spec.methods[label]
        fixed = at_scale(mspec.fixed, f"methods.{label}.fixed")
        trials = (trials_everywhere if trials_everywhere is not None
                  else for_scale(mspec.trials, scale, read, f"methods.{label}.trials"))
        layers: list[Layer] = [*shared_layers, (f"{read.label}: methods.{label}.fixed", {"method": mspec.method, **fixed})]
        if trials == 0 and mspec.untuned:
            layers.append((f"{read.label}: methods.{label}.untuned", at_scale(mspec.untuned, f"methods.{label}.untuned")))
        layers.append((None, cli))
        config = build_config(layers)
        check_task(config)
        known = slots(config)
        for param in mspec.search:
            where = f"methods.{label}.search.{param.key}"
            if param.key not in known:
                close = difflib.get_close_matches(param.key, list(known), n=1, cutoff=0.6)
                raise read.error(where, f"unknown key '{param.key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
            for value in param.examples():
                try:
                    check_setting(param.key, value, known[param.key])
                except ConfigError as err:
                    raise read.error(where, str(err)) from None
        plans.append(MethodPlan(label, layers, config, trials, mspec.search))
    seeds = for_scale(spec.seeds, scale, read, "final.seeds")
    for seed in seeds:
        try:
            check_setting("seed", seed, slots(plans[0].config)["seed"])
        except ConfigError as err:
            raise read.error("final.seeds", str(err)) from None
    plan = SweepPlan(spec, plans[0].config, plans, seeds, overrides)
    if spec.pruner is not None:
        plan.pruner_settings = {key: for_scale(value, scale, read, f"pruner.{key}")
                                for key, value in spec.pruner.settings.items()}
        for method in plans:
            if method.config.trainer.num_processes > 1 and getattr(method_module(method.config.method), "TRAINS", True):
                raise read.error("pruner", f"entry {method.name} trains with trainer.num_processes="
                                           f"{method.config.trainer.num_processes}, whose evaluations run outside the "
                                           "trial's process, where pruning cannot reach them; use one process or pruner: none")
            try:
                plan.pruner_for(method)
            except ValueError as err:
                raise read.error("pruner", f"{err} (entry {method.name})") from None
    _check_resumable(plan)
    return plan


# --- running it ------------------------------------------------------------------------------


class FinalRun(submitit.helpers.Checkpointable):
    """One final (seed) run as a job that survives a time limit: it checkpoints into `folder`
    and, requeued, continues the same MLflow run from there."""

    def __init__(self, cfg: RunConfig, folder: Path, kwargs: dict[str, Any]):
        self.cfg, self.folder, self.kwargs = cfg, folder, kwargs

    def __call__(self) -> dict[str, float]:
        StopRequest.install()
        id_file = self.folder / "mlflow_run_id"
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            return run_trial(self.cfg, **self.kwargs, checkpoint_dir=self.folder / "checkpoint",
                             run_id=id_file.read_text().strip() if id_file.exists() else None,
                             on_run_started=id_file.write_text)
        except Interrupted:
            StopRequest.hand_back()  # a time limit: submitit requeues this job (and exits)
            raise


@dataclass
class _Job:
    """One submitted final run: what to call when it finishes (value) or fails (error text)."""

    run: FinalRun
    on_result: Callable[[dict[str, float]], None]
    on_error: Callable[[str], None]


def _error_summary(err: BaseException, job: submitit.Job) -> str:
    """`ErrorType: message` of a failed job, and where its full log is."""
    if not isinstance(err, submitit.core.utils.UncompletedJobError):  # raised in this process
        return f"{type(err).__name__}: {err}"
    # submitit 1.5.4 puts the remote traceback between two lines of 22 dashes.
    parts = str(err).split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else str(err)
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return f"{lines[-1] if lines else type(err).__name__} (log: {job.paths.stderr})"


def _finished(handle: submitit.Job) -> bool:
    """Whether a job is over. A debug job runs inside done() and raises there."""
    try:
        return handle.done()
    except Exception:
        return True


class _Pool:
    """Runs final runs through a submitit executor, at most `max_parallel` at a time."""

    def __init__(self, executor: submitit.AutoExecutor, max_parallel: int, bar: tqdm):
        self.executor, self.max_parallel, self.bar = executor, max_parallel, bar

    def run(self, jobs: Iterator[_Job]) -> None:
        running: list[tuple[submitit.Job, _Job]] = []
        pending = iter(jobs)
        exhausted = False
        try:
            while running or not exhausted:
                while not exhausted and len(running) < self.max_parallel:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        break
                    running.append((self.executor.submit(job.run), job))
                for handle, job in list(running):
                    if not _finished(handle):
                        continue
                    try:
                        result = handle.result()
                    except Exception as err:  # a failed run is reported and the sweep goes on
                        job.on_error(_error_summary(err, handle))
                    else:
                        job.on_result(result)
                    running.remove((handle, job))
                    self.bar.update(1)
                if running:
                    time.sleep(1.0)
        except KeyboardInterrupt:
            _cancel([handle for handle, _ in running])
            raise


def _cancel(jobs: list[submitit.Job]) -> None:
    """Stop jobs the driver started (Ctrl-C): SIGTERM, so each checkpoints and ends its MLflow run
    KILLED; running the sweep again continues from there."""
    for job in jobs:
        try:
            job.cancel(check=False)
        except Exception:  # already gone
            pass


def _check_resumable(plan: SweepPlan) -> None:
    """Refuse to add trials to a study made for other settings (before anything is written)."""
    storage_path = plan.storage_path
    if not storage_path.exists():
        if plan.cfg.resume:
            raise ConfigError(f"resume=true, but there is no sweep to resume at {plan.folder}; "
                              "check run_dir=, or drop resume=true to start one")
        return
    try:
        worker.check_journal(storage_path)
    except worker.JournalError as err:
        raise ConfigError(str(err)) from None
    storage = worker.storage(plan.storage_path)
    existing = set(optuna.get_all_study_names(storage))
    for method in plan.methods:
        name = f"{plan.spec.name}.{method.name}"
        if name not in existing:
            continue
        recorded = optuna.load_study(study_name=name, storage=storage).user_attrs.get("settings")
        if recorded is not None and recorded != method.fingerprint(plan.spec):
            old, new = json.loads(recorded), json.loads(method.fingerprint(plan.spec))
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ConfigError(f"{storage_path} holds study {name} made with other settings "
                              f"({', '.join(changed[:5])}); pass another run_dir= or remove that folder")


def _open_study(plan: SweepPlan, method: MethodPlan, storage) -> optuna.Study:
    study = optuna.create_study(study_name=f"{plan.spec.name}.{method.name}", storage=storage,
                                direction=plan.spec.direction, load_if_exists=True)
    study.set_user_attr("settings", method.fingerprint(plan.spec))
    return study


def run_sweep(plan: SweepPlan) -> int:
    """Tune, run the finals, write the leaderboard. Returns the exit status: 0, or 1 when a
    tuned entry (trials > 0) has no completed trial or a final run failed."""
    cfg = plan.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from us
    repaired = worker.repair_journal(plan.storage_path)  # before anything is appended to it
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
    })
    parent_id = parent.info.run_id
    status = "FAILED"  # until the sweep gets through: every way out ends the parent run
    bar = None
    try:
        client.log_artifact(parent_id, str(spec.path))
        plan.folder.mkdir(parents=True, exist_ok=True)
        store = worker.storage(plan.storage_path)
        studies = {m.name: _open_study(plan, m, store) for m in plan.methods}
        budgets = {m.name: m.trials for m in plan.methods}
        n_finals = len(plan.methods) * len(plan.seeds)
        bar = tqdm(total=sum(budgets.values()) + n_finals, desc=f"sweep {spec.name}", unit="run")
        _run_workers(plan, parent_id, studies, budgets, bar)
        best = _best_trials(plan, studies, client, parent_id, bar)
        ex = launch.executor(cfg.launcher, plan.folder / "submitit", f"{spec.name}-final", cfg.trial_timeout_min,
                             cfg.slurm, cfg.max_parallel)
        failures = _run_finals(plan, best, _Pool(ex, cfg.max_parallel, bar), parent_id, bar)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if bar is not None:
            bar.close()
        client.set_terminated(parent_id, status=status)

    board = report.build_leaderboard(client, experiment_id, parent_id)
    if board.runs:
        path = report.write_leaderboard(board, Path(cfg.results_dir), spec.name)
        drawn = figures.write_figures(client, experiment_id, parent_id, Path(cfg.results_dir), spec.name)
        print(board.markdown)
        print(f"\nleaderboard: {path} (and .tex, .csv)" + "".join(f"\nfigure: {f} (and .pdf)" for f in drawn))
    else:  # a leaderboard of nothing would replace the last good one
        print(report.kept_message(Path(cfg.results_dir), spec.name, parent_id))
    print(f"runs: {tracking.ui_hint(uri)}")
    missing = [m.name for m in plan.methods if m.trials > 0 and m.name not in best]
    if missing:
        print(f"no completed trial for: {', '.join(missing)}")
    return 1 if missing or failures or not board.runs else 0


def _run_workers(plan: SweepPlan, parent_id: str, studies: dict[str, optuna.Study], budgets: dict[str, int],
                 bar: tqdm) -> None:
    """Start workers and watch the studies until every budget is spent.

    The driver also retries stale trials, so that a sweep whose workers all died still recovers,
    and starts new workers when claimable trials are left and none is alive (at most
    WORKER_ROUNDS times, so that a crash on start does not loop forever).
    """
    cfg = plan.cfg
    live = worker.Liveness(cfg.heartbeat_s, cfg.stale_after_s)
    uri = tracking.tracking_uri(cfg.run_dir)
    lock = worker.claims_lock(plan.folder)
    ex = launch.executor(cfg.launcher, plan.folder / "submitit", f"{plan.spec.name}-worker", cfg.trial_timeout_min,
                         cfg.slurm, cfg.max_parallel)
    seen: set[tuple[str, int]] = set()
    jobs: list[submitit.Job] = []
    try:
        _watch(plan, studies, budgets, bar, ex, parent_id, live, uri, lock, seen, jobs)
    except KeyboardInterrupt:
        _cancel(jobs)
        raise


def _watch(plan: SweepPlan, studies: dict[str, optuna.Study], budgets: dict[str, int], bar: tqdm,
           ex: submitit.AutoExecutor, parent_id: str, live: worker.Liveness, uri: str, lock,
           seen: set[tuple[str, int]], jobs: list[submitit.Job]) -> None:
    """The driver's loop; `jobs` is kept up to date with the live workers (for Ctrl-C)."""
    cfg = plan.cfg
    rounds = 0
    while True:
        with worker.locked(lock):
            for study in studies.values():
                worker.fail_stale(plan.folder, study, live, uri)
        _report_trials(studies, seen, plan.spec.metric, bar)
        left = worker.remaining(studies, budgets)
        bar.n = min(bar.total, sum(budgets.values()) - left)
        bar.refresh()
        alive = [job for job in jobs if not _finished(job)]
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


POLL_S = 2.0
WORKER_ROUNDS = 3
# The `trial` tag of an untuned entry's final runs, and its parent-run param `best/<entry>`.
UNTUNED = "untuned"
UNTUNED_PARAM = "untuned (trials: 0)"


def _claimable(studies: dict[str, optuna.Study], budgets: dict[str, int]) -> bool:
    """Whether a new worker would find a trial to run now (not only stale ones to wait for)."""
    for entry, study in studies.items():
        if budgets[entry] == 0:  # untuned: not even a retry left waiting by an earlier budget
            continue
        running, waiting = worker.open_trials(study)
        if waiting or worker.counted(study) + len(running) < budgets[entry]:
            return True
    return False


def _report_trials(studies: dict[str, optuna.Study], seen: set[tuple[str, int]], metric: str, bar: tqdm) -> None:
    """One line per trial that ended since the last call."""
    for entry, study in studies.items():
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if (entry, t.number) in seen:
                continue
            seen.add((entry, t.number))
            label = f"{entry} trial {t.user_attrs.get(worker.LINEAGE, t.number)}"
            if t.state == TrialState.COMPLETE:
                bar.write(f"{label}: {metric}={t.value:.4g} {t.params}")
            elif t.state == TrialState.PRUNED:
                value = "" if t.last_step is None else f" ({metric}={t.intermediate_values[t.last_step]:.4g})"
                bar.write(f"{label}: pruned at step {t.last_step}{value} {t.params}")
            elif worker.ERROR in t.user_attrs:
                bar.write(f"{label}: FAILED: {t.user_attrs[worker.ERROR]}")
            else:
                bar.write(f"{label}: interrupted; retried from its checkpoint")


def _report_worker(job: submitit.Job, bar: tqdm) -> None:
    try:
        job.result()
    except Exception as err:
        bar.write(f"worker {job.job_id} ended with an error: {_error_summary(err, job)}")


def _record_jobs(plan: SweepPlan, jobs: list[submitit.Job]) -> None:
    """Append the workers' job ids to `<sweep folder>/jobs.json`, for `python -m bench.status`."""
    path = plan.folder / "jobs.json"
    known = json.loads(path.read_text()) if path.exists() else []
    known += [{"job_id": str(job.job_id), "launcher": plan.cfg.launcher, "kind": "worker",
               "submitted": time.time(), "log": str(job.paths.stdout)} for job in jobs]
    path.write_text(json.dumps(known, indent=1))


def _best_trials(plan: SweepPlan, studies: dict[str, optuna.Study], client: mlflow.MlflowClient,
                 parent_id: str, bar: tqdm) -> dict[str, optuna.trial.FrozenTrial]:
    """Each tuned entry's best trial; an entry with trials 0 is recorded as untuned (even when its
    study holds trials from an earlier invocation with a budget: 0 means no tuning)."""
    best = {}
    for method in plan.methods:
        study = studies[method.name]
        if method.trials > 0:  # the leaderboard's count of the entry's trials, across invocations
            client.log_param(parent_id, f"trials/{method.name}", worker.tally(study))
        if method.trials == 0:
            client.log_param(parent_id, f"best/{method.name}", UNTUNED_PARAM)
            bar.write(f"{method.name}: untuned (trials 0): its finals use the entry's settings "
                      f"and, for searched keys, the values below the search")
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            continue
        best[method.name] = study.best_trial
        client.log_metric(parent_id, f"best/{method.name}", study.best_value)
        for key, value in study.best_params.items():
            client.log_param(parent_id, f"best/{method.name}/{key}", value)
        bar.write(f"{method.name}: best trial {worker.lineage(study.best_trial)}, "
                  f"{plan.spec.metric}={study.best_value:.4g} {study.best_params}")
    return best


def _run_finals(plan: SweepPlan, best: dict[str, optuna.trial.FrozenTrial], pool: _Pool,
                parent_id: str, bar: tqdm) -> list[str]:
    failures: list[str] = []

    def done(label: str) -> Callable[[dict[str, float]], None]:
        return lambda result: bar.write(f"{label}: done")

    def failed(label: str) -> Callable[[str], None]:
        def record(error: str) -> None:
            failures.append(label)
            bar.write(f"{label}: FAILED: {error}")
        return record

    def jobs() -> Iterator[_Job]:
        for method in plan.methods:
            if method.trials == 0:  # untuned: the entry's own layers, no suggestions
                tuned, trial_number = [], UNTUNED
            elif method.name in best:
                trial = best[method.name]
                tuned = [(f"optuna trial {trial.number}", trial.params)]
                trial_number = trial.user_attrs.get(worker.LINEAGE, trial.number)
            else:
                continue
            for seed in plan.seeds:
                label = f"{method.name} final seed {seed}"
                cfg = method.config_for(*tuned, ("final", {"seed": seed}))
                run = FinalRun(cfg, plan.folder / "finals" / parent_id / f"{method.name}-seed{seed}",
                               {"stage": "final", "parent_run_id": parent_id, "entry": method.name,
                                "trial_number": trial_number, "evaluate_test": True})
                yield _Job(run, on_result=done(label), on_error=failed(label))

    pool.run(jobs())
    bar.update(bar.total - bar.n)  # methods without a best trial have no finals to run
    return failures

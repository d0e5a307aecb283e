"""Where a sweep stands: `python -m bench.status sweep=NAME [task=T] [run_dir=...]`.

Reads only what the sweep left on disk and in MLflow (it needs no YAML and starts nothing). For
each folder of studies of the sweep (one per set of fixed settings, `<run_dir>/<sweep>/<task>-<hash>/`;
with `task=`, those of that task): its trials by state for each entry, the running ones with the
age of their heartbeat, the workers it started and whether they are still alive, and its latest
MLflow sweep run; then where the MLflow runs are.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.config import check_choice, parse_overrides
from bench.errors import ConfigError
from bench.run_config import RunConfig


def _job_states(jobs: list[dict]) -> dict[str, str]:
    """job id -> state now: SLURM's (squeue) or, for a local job, whether its process lives."""
    states = {}
    slurm_ids = [job["job_id"] for job in jobs if job["launcher"] == "slurm"]
    if slurm_ids and shutil.which("squeue"):
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(sorted({i.split("_")[0] for i in slurm_ids}))],
                             capture_output=True, text=True).stdout
        states |= dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())
    for job in jobs:
        if job["launcher"] == "local":
            alive = job["job_id"].isdigit() and psutil.pid_exists(int(job["job_id"]))
            states[job["job_id"]] = "RUNNING" if alive else "ended"
        else:
            states.setdefault(job["job_id"], "ended" if job["launcher"] == "slurm" else "?")
    return states


def describe(sweep: str, run_dir: Path, task: str | None = None) -> str:
    sweep_folder = run_dir / sweep
    if not sweep_folder.is_dir():  # a misspelt sweep or run_dir is answered before MLflow and Optuna load
        raise FileNotFoundError(f"no sweep {sweep!r} in {run_dir} (no folder {sweep_folder}); pass the sweep's run_dir=")
    # Imported here, not at the top: a mistake on the command line is answered without them.
    import mlflow

    from bench import journal as sweep_store, tracking

    folders = sweep_store.study_folders(sweep_folder)
    if not folders:
        raise FileNotFoundError(f"no sweep {sweep!r} in {run_dir} (no {sweep_folder}/<task>-<hash>/"
                                f"{sweep_store.JOURNAL}); pass the sweep's run_dir=")
    labels = [sweep_store.label(f, sweep_folder) for f in folders]
    # A store of the old layout does not say its task in its name: it is always shown.
    chosen = [f for f, name in zip(folders, labels) if task is None or f == sweep_folder or name.rsplit("-", 1)[0] == task]
    if not chosen:
        raise FileNotFoundError(f"sweep {sweep!r} was not run on task {task!r} in {run_dir} "
                                f"(its settings folders: {', '.join(labels)})")
    uri = tracking.tracking_uri(str(run_dir))
    lines = [f"sweep {sweep}: {sweep_folder}"]
    for folder in chosen:
        lines.append(f"  settings {sweep_store.label(folder, sweep_folder)}: {folder}")
        lines += ["    " + line for line in _studies(sweep, folder)]
        try:
            mlflow.set_tracking_uri(uri)
            tagged = "" if folder == sweep_folder else f" and tags.settings_folder = '{sweep}/{folder.name}'"
            parents = mlflow.search_runs(experiment_names=[sweep], max_results=1, order_by=["attributes.start_time DESC"],
                                         filter_string="tags.stage = 'sweep'" + tagged)
            if not parents.empty:
                lines.append(f"    latest sweep run {parents.loc[0, 'run_id']}: {parents.loc[0, 'status']}")
        except Exception as err:  # the store may be a server that is down: say so, show the rest
            lines.append(f"    (cannot read the store: {type(err).__name__}: {err})")
    lines.append(f"  MLflow: {uri}, experiment {sweep!r}")
    lines.append(f"    {tracking.ui_hint(uri)}")
    return "\n".join(lines)


def _studies(sweep: str, folder: Path) -> list[str]:
    """One folder of studies: each entry's trials by state, the running ones, the workers."""
    import optuna

    from bench import journal as sweep_store

    journal = folder / sweep_store.JOURNAL
    try:
        sweep_store.check_journal(journal)
    except sweep_store.JournalError as err:
        raise ConfigError(str(err)) from None
    store = sweep_store.storage(journal)
    lines = []
    now = time.time()
    for name in sorted(n for n in optuna.get_all_study_names(store) if n.startswith(f"{sweep}.")):
        trials = optuna.load_study(study_name=name, storage=store).get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        interrupted = sum(1 for t in trials if t.state.name == "FAIL" and sweep_store.ERROR not in t.user_attrs)
        summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        lines.append(f"{name.removeprefix(sweep + '.')}: {summary or 'no trials'}"
                     + (f" ({interrupted} of the FAIL interrupted and retried)" if interrupted else ""))
        for t in trials:
            if t.state.name == "RUNNING":
                beat = folder / "heartbeats" / f"{name}.{t.number}"
                age = f"heartbeat {now - beat.stat().st_mtime:.0f} s ago" if beat.exists() else "no heartbeat"
                lines.append(f"  trial {t.user_attrs.get(sweep_store.LINEAGE, t.number)} running, {age}, "
                             f"MLflow run {t.user_attrs.get(sweep_store.RUN_ID, '?')}")
    jobs_file = folder / "jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.exists() else []
    states = _job_states(jobs)
    live = [job for job in jobs if states.get(job["job_id"]) not in ("ended", None)]
    lines.append(f"workers: {len(jobs)} started, {len(live)} alive")
    lines += [f"  {job['launcher']} job {job['job_id']}: {states[job['job_id']]} (log {job['log']})" for job in live]
    return lines


def main(argv: list[str]) -> int:
    try:
        overrides = parse_overrides(argv)
        for key in overrides:
            check_choice("key", key, ["sweep", "task", "run_dir"])
        if "sweep" not in overrides:
            raise ConfigError("sweep=NAME is required")
        sweep, task = overrides.pop("sweep"), overrides.pop("task", None)
        # Only run_dir is read: building a whole RunConfig would load the default method (and torch).
        run_dir = Path(str(overrides.get("run_dir", RunConfig.__dataclass_fields__["run_dir"].default)))
        print(describe(sweep, run_dir.expanduser().resolve(), task))
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

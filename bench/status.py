"""Where a sweep stands: `python -m bench.status sweep=NAME [run_dir=...]`.

Reads only what the sweep left on disk and in MLflow (it needs no YAML and starts nothing):
its trials by state for each entry, the running ones with the age of their heartbeat, the
workers it started and whether they are still alive, and where its MLflow runs are.
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

from bench.config import build_config, check_choice, parse_overrides
from bench.errors import ConfigError


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


def describe(sweep: str, run_dir: Path) -> str:
    # Imported here, not at the top: a mistake on the command line is answered without them.
    import mlflow
    import optuna

    from bench import journal as sweep_store, tracking

    folder = run_dir / sweep
    journal = folder / "optuna.journal"
    if not journal.exists():
        raise FileNotFoundError(f"no sweep {sweep!r} in {run_dir} (no {journal}); pass the sweep's run_dir=")
    try:
        sweep_store.check_journal(journal)
    except sweep_store.JournalError as err:
        raise ConfigError(str(err)) from None
    store = sweep_store.storage(journal)
    lines = [f"sweep {sweep}: {folder}"]
    now = time.time()
    for name in sorted(n for n in optuna.get_all_study_names(store) if n.startswith(f"{sweep}.")):
        trials = optuna.load_study(study_name=name, storage=store).get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        interrupted = sum(1 for t in trials if t.state.name == "FAIL" and sweep_store.ERROR not in t.user_attrs)
        summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        lines.append(f"  {name.removeprefix(sweep + '.')}: {summary or 'no trials'}"
                     + (f" ({interrupted} of the FAIL interrupted and retried)" if interrupted else ""))
        for t in trials:
            if t.state.name == "RUNNING":
                beat = folder / "heartbeats" / f"{name}.{t.number}"
                age = f"heartbeat {now - beat.stat().st_mtime:.0f} s ago" if beat.exists() else "no heartbeat"
                lines.append(f"    trial {t.user_attrs.get(sweep_store.LINEAGE, t.number)} running, {age}, "
                             f"MLflow run {t.user_attrs.get(sweep_store.RUN_ID, '?')}")
    jobs_file = folder / "jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.exists() else []
    states = _job_states(jobs)
    live = [job for job in jobs if states.get(job["job_id"]) not in ("ended", None)]
    lines.append(f"  workers: {len(jobs)} started, {len(live)} alive")
    lines += [f"    {job['launcher']} job {job['job_id']}: {states[job['job_id']]} (log {job['log']})" for job in live]
    uri = tracking.tracking_uri(str(run_dir))
    lines.append(f"  MLflow: {uri}, experiment {sweep!r}")
    try:
        mlflow.set_tracking_uri(uri)
        parents = mlflow.search_runs(experiment_names=[sweep], max_results=1, order_by=["attributes.start_time DESC"],
                                     filter_string="tags.stage = 'sweep'")
        if not parents.empty:
            lines.append(f"    latest sweep run {parents.loc[0, 'run_id']}: {parents.loc[0, 'status']}")
    except Exception as err:  # the store may be a server that is down: say so, show the rest
        lines.append(f"    (cannot read the store: {type(err).__name__}: {err})")
    lines.append(f"    {tracking.ui_hint(uri)}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        overrides = parse_overrides(argv)
        for key in overrides:
            check_choice("key", key, ["sweep", "run_dir"])
        if "sweep" not in overrides:
            raise ConfigError("sweep=NAME is required")
        sweep = overrides.pop("sweep")
        cfg = build_config([(None, overrides)])
        print(describe(sweep, Path(cfg.run_dir)))
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The sweep folder's shared store: the Optuna journal, the claims lock, heartbeats and trial lineage.

A sweep keeps one folder of studies per set of fixed settings, `<run_dir>/<sweep>/<task>-<hash>/`
(bench/sweep_plan.py: study_folder; a store of the old layout, `<run_dir>/<sweep>/optuna.journal`,
is continued where it is). A sweep starts K workers (local subprocesses, or a SLURM array of K
tasks) that share that folder (bench/worker.py runs the trials):

    optuna.journal          the studies (Optuna's journal file storage: safe on NFS)
    claims.lock             a lock around "is there room for one more trial? then ask one"
    heartbeats/<study>.<n>  touched every `heartbeat_s` by the worker running trial n
    trials/<entry>/<lineage>/checkpoint/   the checkpoints of a trial and of its retries (removed if it is pruned)
    finals/<parent run>/<entry>-seed<n>/   the final runs' checkpoints and MLflow run ids
    jobs.json, submitit/    the workers started (for bench.status) and their logs

A trial whose heartbeat is older than `stale_after_s` (its worker was killed, or its node died) is
closed as FAIL and re-enqueued with the same parameters; the retry continues the original's
checkpoint and MLflow run (both keyed by the trial's *lineage*, the number of the first trial of
the chain). Journal storage has no heartbeat support in Optuna 5; this is the equivalent built on
failing stale trials and re-enqueueing them.

Budget: a study is done when its counted trials (COMPLETE; PRUNED: stopped by the sweep's pruner,
see bench/pruning.py; or FAIL with an `error`: a run that failed on its own) reach its budget.
Interrupted trials do not count; their retries do. A pruned trial is never retried. Claims happen
under the lock, counting running and waiting trials, so K workers never start more trials than
the budget allows.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState


ERROR, LINEAGE, RUN_ID, RETRY_OF = "error", "lineage", "mlflow_run_id", "retry_of"
JOURNAL = "optuna.journal"


def study_folders(sweep_folder: Path) -> list[Path]:
    """A sweep's folders of studies: one per set of settings, and the sweep folder itself when it
    holds a store of the old layout."""
    old = [sweep_folder] if (sweep_folder / JOURNAL).is_file() else []
    return old + sorted(p for p in sweep_folder.iterdir() if (p / JOURNAL).is_file()) if sweep_folder.is_dir() else []


def label(folder: Path, sweep_folder: Path) -> str:
    """A folder of studies as its sweep's folder lists it: `<task>-<hash>`, or `(old layout)`."""
    return "(old layout)" if folder == sweep_folder else folder.name


@dataclass(frozen=True)
class Liveness:
    heartbeat_s: float
    stale_after_s: float


def storage(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


class JournalError(ValueError):
    """A journal line that is no record; the message is one line that says how to repair it."""


def check_journal(path: Path) -> None:
    """JournalError if a complete line of the journal is not a record (two records merged into one
    line by an older resume after a cut-off write): Optuna would fail on it with a traceback. The
    last line, if it has no newline yet, is not read: a writer may be in the middle of it."""
    if not path.exists():
        return
    with open(path, "rb") as journal:
        for number, line in enumerate(journal, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except ValueError:
                raise JournalError(f"{path}:{number}: not a journal record (a write cut off and then appended "
                                   f"to?); copy the file aside, delete line {number} and run again") from None


def repair_journal(path: Path) -> str | None:
    """Before a sweep's driver appends to its journal: a last line without its newline is a record
    cut off mid-write (its process or node died), and appending would merge the next record into
    it. The journal as it was is copied to `<journal>.<time>.partial`, the cut-off line removed,
    and the sweep goes on from the complete records. Returns what was done, in one line, or None
    when the journal was whole. Under Optuna's own lock of the journal, which every writer holds
    while it writes, so a write in progress is never taken for a cut-off one."""
    if not path.exists():
        return None
    with locked(optuna.storages.journal.JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        whole = data.rfind(b"\n") + 1
        backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.partial")
        backup.write_bytes(data)
        with open(path, "r+b") as journal:
            journal.truncate(whole)
            journal.flush()
            os.fsync(journal.fileno())
    records = data[:whole].count(b"\n")
    return (f"{path}: its last line was a record cut off mid-write ({len(data) - whole} bytes; a process died "
            f"while writing it): removed, the journal as it was kept in {backup.name}; continuing from its "
            f"{records} complete records")


def claims_lock(folder: Path) -> optuna.storages.journal.JournalFileOpenLock:
    # Optuna's own lock for journal files: a file created with O_EXCL, which NFS honours.
    return optuna.storages.journal.JournalFileOpenLock(str(folder / "claims.lock"))


def heartbeat_file(folder: Path, study: optuna.Study, number: int) -> Path:
    return folder / "heartbeats" / f"{study.study_name}.{number}"


def counted(study: optuna.Study) -> int:
    """Trials that count towards the budget: completed and pruned ones, and runs that failed on their own."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and ERROR in t.user_attrs))


def tally(study: optuna.Study) -> str:
    """The counted trials by how they ended: "3 complete, 2 pruned, 1 failed" (states with none left out,
    "0 complete" never)."""
    trials = study.get_trials(deepcopy=False)
    counts = {"complete": sum(t.state == TrialState.COMPLETE for t in trials),
              "pruned": sum(t.state == TrialState.PRUNED for t in trials),
              "failed": sum(t.state == TrialState.FAIL and ERROR in t.user_attrs for t in trials)}
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n or state == "complete")


def open_trials(study: optuna.Study) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    return [t for t in trials if t.state == TrialState.RUNNING], [t for t in trials if t.state == TrialState.WAITING]


def lineage(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(LINEAGE, trial.number))


def retry(study: optuna.Study, trial: FrozenTrial, reason: str, tracking_uri: str | None) -> None:
    """Close an interrupted trial (FAIL without `error`: not counted) and enqueue its retry, which
    continues the same lineage: checkpoint folder and MLflow run. Call under the claims lock."""
    attrs = {LINEAGE: lineage(trial), RETRY_OF: trial.number, "retry_reason": reason}
    run_id = trial.user_attrs.get(RUN_ID)
    if run_id:
        attrs[RUN_ID] = run_id
        if tracking_uri:
            import mlflow  # here: planning a sweep reads this module, and a mistake is answered without MLflow

            client = mlflow.MlflowClient(tracking_uri)
            if client.get_run(run_id).info.status == "RUNNING":  # its process can no longer say so
                client.set_tag(run_id, "interrupted", reason)
                client.set_terminated(run_id, status="KILLED")
    study.enqueue_trial(trial.params, user_attrs=attrs)
    study.tell(trial.number, state=TrialState.FAIL)


def fail_stale(folder: Path, study: optuna.Study, live: Liveness, tracking_uri: str | None) -> list[int]:
    """Retry every RUNNING trial whose heartbeat stopped; returns their numbers. Under the lock."""
    stale = []
    now = time.time()
    for trial in open_trials(study)[0]:
        beat = heartbeat_file(folder, study, trial.number)
        last = beat.stat().st_mtime if beat.exists() else 0.0
        if now - last > live.stale_after_s:
            retry(study, trial, "stale heartbeat", tracking_uri)
            beat.unlink(missing_ok=True)
            stale.append(trial.number)
    return stale


def claim(folder: Path, studies: dict[str, optuna.Study], budgets: dict[str, int], live: Liveness,
          tracking_uri: str | None) -> tuple[str, optuna.Trial] | None:
    """The next trial to run, from the first entry with room (a waiting retry first), or None when
    every budget is spent or held by running trials."""
    with locked(claims_lock(folder)):
        for entry, study in studies.items():
            fail_stale(folder, study, live, tracking_uri)
            if budgets[entry] == 0:  # untuned (trials 0): not even a retry left by an earlier budget
                continue
            running, waiting = open_trials(study)
            if waiting or counted(study) + len(running) < budgets[entry]:
                trial = study.ask()  # Optuna hands out the oldest waiting (enqueued) trial first
                beat = heartbeat_file(folder, study, trial.number)
                beat.parent.mkdir(parents=True, exist_ok=True)
                beat.touch()  # before the lock is released: a fresh trial is never stale
                return entry, trial
    return None


def remaining(studies: dict[str, optuna.Study], budgets: dict[str, int]) -> int:
    """Trials still to finish (running and waiting ones included)."""
    return sum(max(0, budgets[entry] - counted(study)) for entry, study in studies.items())


class locked:
    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        while not self.lock.acquire():
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.lock.release()


class Heartbeat:
    """Touches a trial's heartbeat file from a daemon thread while the trial runs."""

    def __init__(self, path: Path, every_s: float):
        self.path, self.every_s = path, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {path.name}")

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.path.touch()
            except OSError:  # a full or unreachable disk must not kill the trial; staleness will tell
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

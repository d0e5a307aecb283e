"""The pool of submitit jobs a sweep's driver waits on: at most `max_parallel` at a time, each result or error reported."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import submitit
from tqdm import tqdm


@dataclass
class Job:
    """One submitted final run: what to call when it finishes (value) or fails (error text)."""

    run: Callable[[], dict[str, float]]  # a submitit callable (bench/sweep_finals.py: FinalRun)
    on_result: Callable[[dict[str, float]], None]
    on_error: Callable[[str], None]


def error_summary(err: BaseException, job: submitit.Job) -> str:
    """`ErrorType: message` of a failed job, and where its full log is."""
    if not isinstance(err, submitit.core.utils.UncompletedJobError):  # raised in this process
        return f"{type(err).__name__}: {err}"
    # submitit 1.5.4 puts the remote traceback between two lines of 22 dashes.
    parts = str(err).split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else str(err)
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return f"{lines[-1] if lines else type(err).__name__} (log: {job.paths.stderr})"


def finished(handle: submitit.Job) -> bool:
    """Whether a job is over. A debug job runs inside done() and raises there."""
    try:
        return handle.done()
    except Exception:
        return True


class Pool:
    """Runs final runs through a submitit executor, at most `max_parallel` at a time."""

    def __init__(self, executor: submitit.AutoExecutor, max_parallel: int, bar: tqdm):
        self.executor, self.max_parallel, self.bar = executor, max_parallel, bar

    def run(self, jobs: Iterator[Job]) -> None:
        running: list[tuple[submitit.Job, Job]] = []
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
                    if not finished(handle):
                        continue
                    try:
                        result = handle.result()
                    except Exception as err:  # a failed run is reported and the sweep goes on
                        job.on_error(error_summary(err, handle))
                    else:
                        job.on_result(result)
                    running.remove((handle, job))
                    self.bar.update(1)
                if running:
                    time.sleep(1.0)
        except KeyboardInterrupt:
            cancel([handle for handle, _ in running])
            raise


def cancel(jobs: list[submitit.Job]) -> None:
    """Stop jobs the driver started (Ctrl-C): SIGTERM, so each checkpoints and ends its MLflow run
    KILLED; running the sweep again continues from there."""
    for job in jobs:
        try:
            job.cancel(check=False)
        except Exception:  # already gone
            pass

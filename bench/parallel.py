"""One run trained by several processes on one node (`trainer.num_processes`), through accelerate.

The trial's process keeps its MLflow run and starts N rank processes (`python -m bench.parallel`),
each with the environment `accelerate launch` would give it (RANK, WORLD_SIZE, MASTER_ADDR, ...).
In each, accelerate's `PartialState` joins the process group (NCCL on GPUs, one GPU per process;
gloo on CPUs, each process on a share of the cores) and the training function it is handed
(`bench.training.train_and_evaluate`, pickled by name, so that this module need not import it) runs with
a `DataParallel` of it: each process trains on `train.batch_prompts / N` queries per step and the
gradients are averaged (methods/parallel.py). Process 0 logs into the trial's run (by its id),
evaluates and saves the adapter, and hands its metrics back in a file.

Checkpoints stay one file per run: process 0 writes every process's state into it, so a resumed
run continues each process's queries, replay buffer and random streams. A stop request (SIGUSR2,
SIGTERM) reaching any process, or the trial's process (which forwards it), is agreed on by all of
them at the next step boundary, so they checkpoint the same step and stop together. The rank
processes die with the trial's process (SIGKILL included), so a retried trial never meets them.

Evaluation runs in process 0 alone; the others wait for it.
"""
from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import mlflow
import torch

from bench import tracking
from bench.interrupt import REQUEUE, TERMINATE, Interrupted, StopRequest, StoppingCheckpointer
from methods.checkpoint import Checkpointer
from methods.engine.models import ModelError
from methods.parallel import DataParallel

# How long a collective waits for a slow process before failing the run: long enough for
# process 0's evaluation while the others wait; a dead process fails gloo at once, NCCL only then.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
# After one process fails, the others get this long to notice (their next collective) before they are killed.
FAILURE_GRACE_S = 30.0
_SIGNAL = {REQUEUE: signal.SIGUSR2, TERMINATE: signal.SIGTERM}


@dataclass
class _RankJob:
    """What every rank process is given (pickled into a file beside its result)."""

    cfg: Any
    train: Callable[..., dict[str, float]]  # bench.training.train_and_evaluate
    run_id: str
    tracking_uri: str
    name: str
    evaluate_test: bool
    leave_bar: bool
    checkpoint_dir: Path | None
    trial_pid: int


class RankCheckpointer(StoppingCheckpointer):
    """The checkpoints of a run trained by several processes: one file, written by process 0, that
    holds every process's state (each is restored into its own process), and stop requests agreed
    on by all processes at each step boundary."""

    def __init__(self, folder: Path, every: int, parallel: DataParallel):
        super().__init__(folder, every)
        self.parallel, self.rank, self.world = parallel, parallel.rank, parallel.world

    def due(self, step: int, steps: int) -> bool:
        # Called by every process at every step boundary: a request any of them got is everyone's.
        agreed = next((reason for reason in self.parallel.gather(StopRequest.reason) if reason), None)
        if agreed is not None and StopRequest.reason is None:
            StopRequest.reason = agreed
        return Checkpointer.due(self, step, steps) or agreed is not None

    def save(self, step: int, state: dict[str, Any]) -> None:
        from accelerate.utils import send_to_device

        states = self.parallel.gather(send_to_device(state, "cpu"))
        if self.parallel.is_main:
            Checkpointer.save(self, step, {"processes": states})
        self.parallel.barrier()  # the file is whole before any process stops or goes on
        StopRequest.check(step)


def train_in_processes(cfg: Any, train: Callable[..., dict[str, float]], *, run_id: str, name: str,
                       evaluate_test: bool, leave_bar: bool,
                       checkpoint_dir: Path | None) -> dict[str, float]:
    """Train and evaluate `cfg` in `cfg.trainer.num_processes` processes, each calling `train` (a
    module-level function, pickled by name), recording into MLflow run `run_id`; process 0's
    metrics. Raises `Interrupted` when they stopped on a request, and the error of the first
    process that failed otherwise."""
    n = cfg.trainer.num_processes
    use_cuda = torch.cuda.is_available() and cfg.model.device in ("auto", "cuda")
    if use_cuda and n > torch.cuda.device_count():
        raise ModelError(f"trainer.num_processes={n}, but this node has {torch.cuda.device_count()} GPU(s); "
                         "lower it, or ask the job for more (slurm.gpus_per_node)")
    port = tracking.free_port()
    cores = cfg.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="gfn-bench-processes-") as folder:
        job_file = Path(folder) / "job.pkl"
        job_file.write_bytes(pickle.dumps(_RankJob(cfg, train, run_id, mlflow.get_tracking_uri(), name, evaluate_test,
                                                   leave_bar, checkpoint_dir, os.getpid())))
        env = os.environ | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),  # one node: loopback
            "OMP_NUM_THREADS": str(max(1, cores // n)),
        }
        processes = [subprocess.Popen([sys.executable, "-m", "bench.parallel", str(job_file)],
                                      env=env | {"RANK": str(rank), "LOCAL_RANK": str(rank)})
                     for rank in range(n)]
        try:
            ended = _wait(processes)
        finally:
            for process in processes:  # after Ctrl-C or an error here: none may outlive the trial
                if process.poll() is None:
                    process.kill()
                process.wait()
        results = [_read_result(Path(folder), rank) for rank in range(n)]
    if "metrics" in results[0] and all("error" not in r for r in results):
        return results[0]["metrics"]
    if "interrupted" in results[0]:
        reason = results[0]["interrupted"]
        if StopRequest.reason is None:
            StopRequest.reason = reason  # the signal reached only the rank processes: hand it back all the same
        raise Interrupted(reason, results[0]["step"])
    # The first process to fail names the cause; the others mostly report losing it.
    rank, failure = next(((r, results[r]) for r in ended if "error" in results[r]),
                         (0, {"error": "RuntimeError: process 0 ended without a result (killed?)"}))
    message = f"process {rank} of {n}: {failure['error']}"
    raise ModelError(message) if failure.get("type") == "ModelError" else RuntimeError(message)


def _wait(processes: list[subprocess.Popen]) -> list[int]:
    """Wait until every process has ended; forward this process's stop request to them, and kill
    the rest when one has failed and the others have not followed within FAILURE_GRACE_S. The
    ranks in the order they ended."""
    forwarded, failed_at, ended = False, None, []
    while len(ended) < len(processes):
        ended += [rank for rank, p in enumerate(processes) if rank not in ended and p.poll() is not None]
        if StopRequest.reason is not None and not forwarded:
            for p in processes:
                if p.poll() is None:
                    p.send_signal(_SIGNAL[StopRequest.reason])
            forwarded = True
        if failed_at is None and any(p.returncode not in (None, 0) for p in processes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
            for p in processes:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    return ended


def _read_result(folder: Path, rank: int) -> dict[str, Any]:
    path = folder / f"result.{rank}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _die_with_trial(trial_pid: int) -> None:
    """Have the kernel kill this process when the trial's process ends, however it ends."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != trial_pid:  # it ended before the line above took effect
        os._exit(1)


def _rank_main(job_file: Path) -> int:
    job: _RankJob = pickle.loads(job_file.read_bytes())
    _die_with_trial(job.trial_pid)
    StopRequest.install()
    rank = int(os.environ["RANK"])
    result: dict[str, Any]
    state = None
    try:
        from accelerate import PartialState

        cfg = job.cfg
        on_cpu = not (torch.cuda.is_available() and cfg.model.device in ("auto", "cuda"))
        state = PartialState(cpu=on_cpu, timeout=COLLECTIVE_TIMEOUT)
        cfg.model.device = "cpu" if on_cpu else str(state.device)
        parallel = DataParallel(state)
        mlflow.set_tracking_uri(job.tracking_uri)
        checkpoints = (None if job.checkpoint_dir is None
                       else RankCheckpointer(job.checkpoint_dir, cfg.train.checkpoint_every, parallel))
        metrics = job.train(cfg, job.name, evaluate_test=job.evaluate_test, leave_bar=job.leave_bar,
                                     checkpoints=checkpoints, log=tracking.RunLog(job.run_id), parallel=parallel)
        result = {"metrics": metrics}
    except Interrupted as stop:
        result = {"interrupted": stop.reason, "step": stop.step}
    except Exception as err:
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__}
    finally:
        if state is not None:
            state.destroy_process_group()
    (job_file.parent / f"result.{rank}.json").write_text(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(_rank_main(Path(sys.argv[1])))

"""Stopping a run cleanly when its job is told to stop.

SLURM (through submitit) sends SIGUSR2 some time before a job's time limit or when it is
preempted, and SIGTERM on `scancel`; a local launcher sends SIGTERM. Nothing useful can be saved
in the middle of an optimizer step, so a signal only records a request. The training loop honours
it at its next step boundary: the checkpoint due then is written and `Interrupted` is raised, so
the run stops with everything it learned on disk. A second signal of the same kind while the
first is pending is ignored; SIGKILL cannot be caught, and is what heartbeats are for.
"""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from methods.checkpoint import Checkpointer, CheckpointError

# What each signal means for the interrupted work: USR2 (time limit, preemption) -> the job will
# be requeued and should continue; TERM (scancel, local stop) -> the job ends here.
REQUEUE, TERMINATE = "requeue", "terminate"
_MEANING = {signal.SIGUSR2: REQUEUE, signal.SIGTERM: TERMINATE}


class Interrupted(Exception):
    """Raised at a step boundary after a stop request; `reason` is REQUEUE or TERMINATE."""

    def __init__(self, reason: str, step: int | None):
        super().__init__(f"stopped by a {reason} request" + ("" if step is None else f" after step {step}"))
        self.reason, self.step = reason, step


class StopRequest:
    """The pending request of this process (one per process; signal handlers set it)."""

    reason: str | None = None
    _previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> None:
        """Route SIGUSR2 and SIGTERM to a request; the handlers they replace are kept (submitit's
        SIGUSR2 handler is what requeues a job: see `hand_back`). Main thread only."""
        for signum in _MEANING:
            previous = signal.getsignal(signum)
            if previous is not cls._handle:
                cls._previous[signum] = previous
                signal.signal(signum, cls._handle)

    @classmethod
    def _handle(cls, signum: int, frame: FrameType | None) -> None:
        if cls.reason is None:
            cls.reason = _MEANING[signum]

    @classmethod
    def check(cls, step: int | None = None) -> None:
        """Raise `Interrupted` if a stop was requested."""
        if cls.reason is not None:
            raise Interrupted(cls.reason, step)

    @classmethod
    def hand_back(cls) -> None:
        """Let the handler that was installed before ours act on the request: under submitit,
        for a requeue request, it pickles the job's `checkpoint()` and requeues the job (and exits)."""
        previous = cls._previous.get(signal.SIGUSR2)
        if cls.reason == REQUEUE and callable(previous):
            previous(signal.SIGUSR2, None)

    @classmethod
    def reset(cls) -> None:
        cls.reason = None


class StoppingCheckpointer(Checkpointer):
    """A run's checkpoints that also honour a stop request: a save is due at the first step
    boundary after the request, and once that state is written `Interrupted` is raised."""

    def due(self, step: int, steps: int) -> bool:
        return StopRequest.reason is not None or super().due(step, steps)

    def save(self, step: int, state: dict[str, Any]) -> None:
        super().save(step, state)
        StopRequest.check(step)

    # This process's place among those that train the run; bench.parallel.RankCheckpointer sets
    # them, and writes one file with every process's state under "processes".
    rank, world = 0, 1

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint of this process, or None; CheckpointError when another number of
        processes wrote it."""
        saved = super().load()
        if saved is None:
            return None
        states = saved["state"].get("processes")
        count = 1 if states is None else len(states)
        if count != self.world:
            raise CheckpointError(f"checkpoint {self.path} was written by {count} process{'es' if count > 1 else ''} "
                                  f"and this run has {self.world}; set trainer.num_processes={count} to continue it, "
                                  "or delete it to train from step 0")
        return saved if states is None else {"step": saved["step"], "state": states[self.rank]}

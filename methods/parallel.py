"""Data parallelism inside one run (`trainer.num_processes`), as a method sees it.

N processes train one run together, one per GPU (on a CPU, each on a share of the cores). Each
holds its own copy of the policy, draws its own share of every step's queries with its own random
streams, and computes gradients on them; `average_gradients` then replaces every process's
gradients by their mean, so all copies take the same optimizer step and stay identical. A method
calls `sync` once on its trainable parameters before its first step and `average_gradients` after
its backward passes, before clipping; with one process both do nothing.

The processes talk through accelerate's `PartialState` (gloo on CPUs, NCCL on GPUs); the harness
(bench/parallel.py) starts them and routes metrics, evaluation and checkpoints through the other
calls here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from accelerate import PartialState


class DataParallel:
    """This process's place among the processes of a run; `DataParallel()` is the only process."""

    def __init__(self, state: PartialState | None = None):
        self.state = state
        self.rank: int = state.process_index if state is not None else 0
        self.world: int = state.num_processes if state is not None else 1

    @property
    def is_main(self) -> bool:
        """Process 0 records the run (metrics, samples, evaluation, checkpoint file)."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This process's seed for its own streams (queries, sampling): the run's seed in process
        0, an independent one derived from (seed, rank) in the others."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def sync(self, params: list[torch.nn.Parameter]) -> None:
        """Copy process 0's values of `params` into every process."""
        if self.world == 1:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in params:
                p.copy_(broadcast(p.detach().clone(), from_process=0))

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the processes (one collective over
        all of them, flattened: LoRA gradients are many small tensors)."""
        if self.world == 1:
            return
        from accelerate.utils import reduce

        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        flat = reduce(torch.cat([p.grad.flatten() for p in with_grad]), reduction="mean")
        offset = 0
        for p in with_grad:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (every process passes the same keys)."""
        if self.world == 1:
            return values
        from accelerate.utils import reduce

        keys = sorted(values)
        means = reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.state.device))
        return dict(zip(keys, means.tolist()))

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj` (picklable), in rank order, on every process."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

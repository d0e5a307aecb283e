"""The contract between the harness and a method.

The harness builds a `TrainContext` (policy, task, budget, logging callbacks) and calls the method
module's `train(ctx, cfg)`. A method learns; it does not know about MLflow, Optuna or launchers.
It restores its state with `ctx.resume(state)` before its loop and ends every optimizer step with
`ctx.end_step(step, metrics, state)`: metrics, periodic validation, the sample table at the last
step and the checkpoint, in that order, the same for every method.

Settings are dataclass fields with `metadata={"help": ...}`, and every numeric one (int, float,
optional or not) declares the values it takes as an interval next to its help:
`"range": "[1, inf)"` (at least 1), `"(0, inf)"` (above 0), `"[0, 1]"` (a probability),
`"(-inf, inf)"` (any finite number); an infinite bound is open, so inf and nan are never taken.
bench/config.py checks every value against it before a run or sweep starts and shows it in
`--help`; a test fails for a numeric field without one. What one range cannot say (a setting
below another) is for the method's `check(cfg, task)`, which the harness also calls first.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from methods.checkpoint import WHAT_TO_DO, CheckpointError, Checkpointer, Stateful, capture_state, restore_state
from methods.engine.engine import Engine
from methods.engine.models import Policy
from methods.engine.rollout import Trajectories
from methods.parallel import DataParallel
from methods.train_config import TrainConfig
from tasks.base import Example, Task


@dataclass
class TrainContext:
    policy: Policy
    task: Task
    engine: Engine
    train: TrainConfig
    seed: int
    log_metrics: Callable[[dict[str, float], int], None]
    """Record step metrics (the harness forwards them to MLflow and the progress bar)."""
    evaluate: Callable[[int], dict[str, float]]
    """Evaluate the current policy on the validation split at a step; returns (and logs) metrics."""
    log_samples: Callable[[list[dict[str, Any]], int], None] = lambda rows, step: None
    """Record a few sample rationales (query, sample, log R, ...) as a table."""
    checkpoints: Checkpointer | None = None
    """Where the method saves and finds its training state; None: no checkpoints, start at step 0."""
    adapter_folder: Callable[[str], str] = lambda ref: ref
    """The local folder of a trained adapter named by `ref`: a folder, or (from the harness) the id
    of a tracked run that saved one."""
    parallel: DataParallel = field(default_factory=DataParallel)
    """The processes this run trains with (`trainer.num_processes`). With several, `train` is this
    process's share (`batch_prompts` divided among them) and `seed` its own; the method calls
    `parallel.sync` before its first step and `parallel.average_gradients` before clipping."""
    steps_done: int = field(default=0, init=False)
    """Optimizer steps done so far (set by `resume` and `end_step`): after `train`, the steps the
    method ran, which `train.steps` only caps for a method with its own budget (SFT's epochs)."""

    def resume(self, state: dict[str, Stateful]) -> int:
        """Restore the latest checkpoint into the policy, `state` (the objects that carry the
        method's training state: optimizer, schedule, heads, buffers, its own RNGs) and the global
        RNGs, if there is one; the first step to run (0 without a checkpoint)."""
        saved = self.checkpoints.load() if self.checkpoints else None
        if saved is None:
            return 0
        try:
            restore_state(self.policy, state, saved["state"])
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint {self.checkpoints.path} does not fit this run: {err}; {WHAT_TO_DO}") from None
        self.steps_done = saved["step"] + 1
        return self.steps_done

    def end_step(self, step: int, metrics: dict[str, float], state: dict[str, Stateful], *,
                 samples: tuple[list[Example], Trajectories, torch.Tensor] | None = None,
                 steps: int | None = None, eval_every: int | None = None) -> None:
        """Close optimizer step `step` (counted from 0) of a run of `steps` (default train.steps):
        record `metrics`; validate every `eval_every` steps (default train.eval_every; 0: never;
        never at the last step, where the harness evaluates); at the last step, record the first
        train.log_samples rows of `samples` = (the examples of the rows, the trajectories, each
        row's log R); then checkpoint `state` when due. The checkpoint comes last, after the
        step's metrics and evaluation, so a resumed run repeats and skips none."""
        steps = self.train.steps if steps is None else steps
        eval_every = self.train.eval_every if eval_every is None else eval_every
        self.steps_done = step + 1
        self.log_metrics(metrics, step)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            self.evaluate(step + 1)
        # Here, not after the method's loop: a run resumed after its last step has no samples.
        if samples is not None and step + 1 == steps:
            examples, traj, log_reward = samples
            texts = self.engine.texts(traj)
            self.log_samples([{"query": examples[i].query, "sample": texts[i], "log_reward": float(log_reward[i])}
                              for i in range(min(len(traj), self.train.log_samples))], steps)
        if self.checkpoints and self.checkpoints.due(step, steps):
            self.checkpoints.save(step, capture_state(self.policy, state))


@dataclass
class RewardTemperature:
    """The paper's reward-temperature schedule: log R / T, T linear from start to end over the
    first `reward_temp_horizon_frac` of the run, then fixed. Given as a fraction of `train.steps`
    so that any budget runs the whole schedule (arithmetic: 1.1 -> 0.5 over 150 of 2,000 steps)."""

    reward_temp_start: float = field(default=1.1, metadata={"range": "(0, inf)", "help": "reward temperature at step 0"})
    reward_temp_end: float = field(default=0.5, metadata={"range": "(0, inf)", "help": "reward temperature after the horizon"})
    reward_temp_horizon_frac: float = field(default=0.075, metadata={"range": "[0, 1]",
        "help": "fraction of train.steps over which the reward temperature moves from start to end "
                "(paper arithmetic: 150 of 2,000 steps = 0.075; 0: the end value throughout)"})

    def reward_temperature(self, step: int, total_steps: int) -> float:
        """T at `step` of a run of `total_steps`: with a horizon of 1 the last step is at the end value."""
        if not 0.0 <= self.reward_temp_horizon_frac <= 1.0:
            raise ValueError(f"method.reward_temp_horizon_frac={self.reward_temp_horizon_frac} must lie in [0, 1]")
        horizon = self.reward_temp_horizon_frac * max(total_steps - 1, 0)
        frac = min(step / horizon, 1.0) if horizon > 0 else 1.0
        return self.reward_temp_start + frac * (self.reward_temp_end - self.reward_temp_start)


WARMUP_HELP = ("fraction of train.steps over which the learning rate rises linearly to its value "
               "(paper: 20 of 2,000 steps = 0.01; at least one step)")


def warmup_steps(warmup_frac: float, total_steps: int) -> int:
    """Steps of the linear warm-up: the fraction of the run, at least 1 and at most the run."""
    if not 0.0 <= warmup_frac <= 1.0:
        raise ValueError(f"method.warmup_frac={warmup_frac} must lie in [0, 1]")
    return min(max(1, round(warmup_frac * total_steps)), max(total_steps, 1))


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_frac: float, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr * min((step + 1) / warmup, 1), as in the paper (whose step counter starts at 1), with
    the warm-up a fraction of the run: its last warm-up step already trains at the full rate."""
    n = warmup_steps(warmup_frac, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / n, 1.0))


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at step {step}: lower method.lr or check the task's reward")


class QuerySampler:
    """Draws the training queries of each step, reproducibly from the run's seed."""

    def __init__(self, pool: list[Example], seed: int):
        if not pool:
            raise ValueError("the task has no training queries")
        self.pool, self.rng = pool, random.Random(seed)

    def draw(self, n: int) -> list[Example]:
        return [self.rng.choice(self.pool) for _ in range(n)]


def micro_batches(n_rows: int, group_size: int, max_rows: int) -> list[list[int]]:
    """Row indices in chunks of at most max(max_rows, group_size) rows, never splitting a group
    of `group_size` consecutive rows (the samples of one query)."""
    per_chunk = max(1, max_rows // group_size) * group_size
    return [list(range(i, min(i + per_chunk, n_rows))) for i in range(0, n_rows, per_chunk)]

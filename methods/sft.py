"""Supervised fine-tuning (maximum likelihood) of the LoRA policy on the task's demonstrations.

The demonstrations' rationales go through the same teacher-forced pass as every other method's
trajectories, so the targets are exactly the policy's actions: the rationale's tokens and the
termination ⊤ after them (Scores.logpf). Tool outputs inside a rationale (the calculator's
results) are environment tokens: in context, never targets, as in sampling. The loss is the mean
negative log-likelihood per target token over the batch.

Budget: `method.epochs` shuffled passes over the demonstrations, `method.batch_size` of them per
optimizer step, so ceil(epochs × demonstrations / batch) steps; `train.steps` only caps that
number (so the smoke and cpu scales stay short), and the warm-up is a fraction of SFT's own steps.
With few demonstrations SFT overfits within a few epochs, so it evaluates on the validation split
every `method.eval_every_epochs` and at its last step, and ends with the adapter of the best
`method.select_metric` (the harness's final evaluation then sees that adapter); `train.eval_every`
does not apply. Metrics: `loss`, `tokens`, `lr`, `epoch` per step, and at the last step
`best_step` (steps done when the kept adapter was evaluated) and `best_valid` (its value).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from methods.base import TrainContext, check_finite, micro_batches, warmup_schedule
from methods.engine.metrics import FREE_FORM_METRICS, METRICS
from methods.engine.models import Policy
from tasks.base import Task

AUTO = "auto"


@dataclass
class Config:
    lr: float = field(default=1e-4, metadata={"range": "(0, inf)", "help": "learning rate of the LoRA parameters"})
    epochs: float = field(default=20.0, metadata={"range": "(0, inf)",
        "help": "passes over the task's demonstrations, each in a new shuffled order: SFT takes "
                "ceil(epochs * demonstrations / batch_size) optimizer steps, at most train.steps (a cap only)"})
    batch_size: int = field(default=8, metadata={"range": "[1, inf)",
        "help": "demonstrations per optimizer step, capped by the number of demonstrations (at most one epoch a step)"})
    eval_every_epochs: float = field(default=2.0, metadata={"range": "[0, inf)",
        "help": "evaluate on the validation split every this many epochs and at the last step, and end with the "
                "adapter of the best method.select_metric (0: never; keep the last adapter); replaces train.eval_every"})
    select_metric: str = field(default=AUTO, metadata={
        "help": "validation metric that picks the adapter kept, in its direction (higher or lower is better): "
                "a metric of the task, or auto (accuracy where the task reports it, else loglik_mean)"})
    warmup_frac: float = field(default=0.01, metadata={"range": "[0, 1]",
        "help": "fraction of SFT's optimizer steps (see method.epochs) over which the learning rate rises "
                "linearly to its value (at least one step)"})
    max_grad_norm: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})


def target_tokens(n_actions: list[int]) -> int:
    """Tokens the loss predicts: each row's actions plus its ⊤ (demonstrations always end)."""
    return sum(n_actions) + len(n_actions)


def optimizer_steps(cfg: Config, n_demos: int, cap: int) -> int:
    """ceil(epochs × demonstrations / batch), the batch capped by the demonstrations, at most `cap`."""
    return min(math.ceil(cfg.epochs * n_demos / min(cfg.batch_size, n_demos)), cap)


def selection(cfg: Config, task: Task) -> tuple[str, bool]:
    """(metric that picks the adapter kept, whether higher is better); ValueError for a bad setting."""
    if not cfg.epochs > 0:
        raise ValueError(f"method.epochs must be positive, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"method.batch_size must be at least 1, got {cfg.batch_size}")
    if not cfg.eval_every_epochs >= 0:
        raise ValueError(f"method.eval_every_epochs must be 0 (never) or positive, got {cfg.eval_every_epochs}")
    reported = tuple(getattr(task, "metrics", FREE_FORM_METRICS))
    name = cfg.select_metric
    if name == AUTO:
        name = "accuracy" if "accuracy" in reported else "loglik_mean"
    if name not in reported:
        raise ValueError(f"method.select_metric={name!r} is not a metric of task {task.name}; "
                         f"choose one of: {AUTO}, {', '.join(reported)}")
    higher = METRICS[name].higher_is_better
    if higher is None:
        raise ValueError(f"method.select_metric={name!r} has no better direction; choose a metric that has one")
    return name, higher


def check(cfg: Config, task: Task) -> None:
    """Refuse, before a run starts, settings that cannot work on `task`."""
    selection(cfg, task)


class EpochOrder:
    """The demonstrations' indices in shuffled passes, one new order per epoch; a batch may span
    two epochs. Resumable: the shuffle's rng is checkpointed beside it (see `train`)."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng = n, random.Random(seed)
        self.order: list[int] = []  # the current epoch's order
        self.used = 0  # how much of it has been drawn

    def draw(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.used == len(self.order):
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
                self.used = 0
            take = min(k - len(out), self.n - self.used)
            out += self.order[self.used:self.used + take]
            self.used += take
        return out

    def state_dict(self) -> dict:
        return {"order": list(self.order), "used": self.used}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.used = list(state["order"]), state["used"]


class BestAdapter:
    """The LoRA weights of the best validation value so far, and when they were evaluated."""

    def __init__(self, higher_is_better: bool):
        self.higher = higher_is_better
        self.step: int | None = None  # steps done at its evaluation; None before any
        self.value: float | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def offer(self, step: int, value: float, policy: Policy) -> None:
        """Keep the policy's weights if `value` beats the best so far (a tie keeps the earlier)."""
        if self.value is not None and not (value > self.value if self.higher else value < self.value):
            return
        self.step, self.value = step, value
        self.weights = {name: p.detach().cpu().clone() for name, p in policy.model.named_parameters() if p.requires_grad}

    def restore(self, policy: Policy) -> None:
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if p.requires_grad:
                    p.copy_(self.weights[name])

    def state_dict(self) -> dict:
        return {"step": self.step, "value": self.value, "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.value, self.weights = state["step"], state["value"], dict(state["weights"])


def train(ctx: TrainContext, cfg: Config) -> None:
    metric, higher = selection(cfg, ctx.task)
    engine, policy, parallel = ctx.engine, ctx.policy, ctx.parallel
    demos = [ex for ex in ctx.task.demonstrations() if ex.rationale]
    if not demos:
        raise ValueError(f"sft: task {ctx.task.name!r} has no demonstrations with a rationale to train on")
    batch = min(cfg.batch_size, len(demos))
    if batch < parallel.world:
        raise ValueError(f"sft: a batch of {batch} demonstrations cannot be shared by {parallel.world} processes; "
                         "raise method.batch_size or lower trainer.num_processes")
    steps = optimizer_steps(cfg, len(demos), ctx.train.steps)
    # 0: no evaluation during training; else at least one step between evaluations.
    eval_every = max(1, round(cfg.eval_every_epochs * len(demos) / batch)) if cfg.eval_every_epochs > 0 else 0
    params = policy.trainable_parameters()
    parallel.sync(params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    schedule = warmup_schedule(optimizer, cfg.warmup_frac, steps)
    # Every process walks the same order (process 0's seed) and trains on its share of each batch.
    order = EpochOrder(len(demos), parallel.gather(ctx.seed)[0])
    best = BestAdapter(higher)
    resumable = {"optimizer": optimizer, "schedule": schedule, "shuffle": order.rng, "epoch_order": order, "best": best}
    start = ctx.resume(resumable)

    for step in range(start, steps):
        rows_of_step = order.draw(batch)
        traj = engine.demonstrations([demos[i] for i in rows_of_step[parallel.rank::parallel.world]])
        n_targets = target_tokens(traj.n_actions)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for rows in micro_batches(len(traj), 1, ctx.train.batch_size):
            # Summed over the micro-batch, divided by the whole batch's targets: accumulating the
            # micro-batches gives the per-token mean however the batch is split.
            loss = -engine.score(traj.select(rows)).logpf.sum() / n_targets
            check_finite(loss, step)
            loss.backward()
            total += loss.item()
        parallel.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        done = step + 1
        # The last step is a candidate only when there is an earlier one to compare it with: else
        # the harness's own final evaluation is the only one needed.
        if eval_every and ((done % eval_every == 0 and done < steps) or (done == steps and best.step is not None)):
            value = parallel.gather(ctx.evaluate(done).get(f"valid/{metric}"))[0]  # process 0 evaluates
            if value is None:
                raise ValueError(f"sft: the validation reported no valid/{metric} to select the adapter on "
                                 "(method.select_metric)")
            best.offer(done, float(value), policy)
        metrics = {"loss": total, "tokens": float(n_targets), "lr": schedule.get_last_lr()[0],
                   "epoch": done * batch / len(demos)}
        if done == steps:
            metrics["best_step"] = float(best.step if best.step is not None else steps)
            if best.value is not None:
                metrics["best_valid"] = best.value
        # Its own evaluations (above) pick the adapter kept: none at train.eval_every.
        ctx.end_step(step, metrics, resumable, steps=steps, eval_every=0)
    if best.step is not None:
        best.restore(policy)

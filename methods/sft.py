"""Supervised fine-tuning (maximum likelihood) of the LoRA policy on the task's demonstrations.

The demonstrations' rationales go through the same teacher-forced pass as every other method's
trajectories, so the targets are exactly the policy's actions: the rationale's tokens and the
termination ⊤ after them (Scores.logpf). Tool outputs inside a rationale (the calculator's
results) are environment tokens: in context, never targets, as in sampling. The loss is the mean
negative log-likelihood per target token over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from methods.base import WARMUP_HELP, QuerySampler, TrainContext, check_finite, micro_batches, warmup_schedule
from methods.checkpoint import checkpoint_if_due, resume_from_checkpoint


@dataclass
class Config:
    lr: float = field(default=1e-4, metadata={"help": "learning rate of the LoRA parameters"})
    warmup_frac: float = field(default=0.01, metadata={"help": WARMUP_HELP})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})


def target_tokens(n_actions: list[int]) -> int:
    """Tokens the loss predicts: each row's actions plus its ⊤ (demonstrations always end)."""
    return sum(n_actions) + len(n_actions)


def train(ctx: TrainContext, cfg: Config) -> None:
    engine, policy, budget = ctx.engine, ctx.policy, ctx.train
    demos = [ex for ex in ctx.task.demonstrations() if ex.rationale]
    if not demos:
        raise ValueError(f"sft: task {ctx.task.name!r} has no demonstrations with a rationale to train on")
    params = policy.trainable_parameters()
    ctx.parallel.sync(params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    schedule = warmup_schedule(optimizer, cfg.warmup_frac, budget.steps)
    sampler = QuerySampler(demos, ctx.seed)
    # As many sequences per step as the sampling methods train on, so budgets compare.
    per_step = budget.batch_prompts * budget.samples_per_prompt
    resumable = {"optimizer": optimizer, "schedule": schedule, "queries": sampler.rng}
    start = resume_from_checkpoint(ctx, resumable)

    for step in range(start, budget.steps):
        traj = engine.demonstrations(sampler.draw(per_step))
        n_targets = target_tokens(traj.n_actions)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for rows in micro_batches(len(traj), 1, budget.batch_size):
            # Summed over the micro-batch, divided by the whole batch's targets: accumulating the
            # micro-batches gives the per-token mean however the batch is split.
            loss = -engine.score(traj.select(rows)).logpf.sum() / n_targets
            check_finite(loss, step)
            loss.backward()
            total += loss.item()
        ctx.parallel.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        ctx.log_metrics({"loss": total, "tokens": float(n_targets), "lr": schedule.get_last_lr()[0]}, step)
        if budget.eval_every and (step + 1) % budget.eval_every == 0 and step + 1 < budget.steps:
            ctx.evaluate(step + 1)
        # Last in the step, after its metrics and evaluation: a resumed run repeats and skips none.
        checkpoint_if_due(ctx, step, resumable)

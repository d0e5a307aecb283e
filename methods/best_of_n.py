"""Best-of-N: draw N samples per query and keep the one the reward LM likes best, no training.

N is the evaluation's sample count, `train.eval_samples`, so best-of-N spends the same sampling
budget as the majority vote of every other method (set `train.eval_samples` for another N; the
diversity and likelihood metrics then cover the same N candidates). Only test-time information
ranks the candidates: the frozen base LM's log p(Z | reward prompt, X), tool tokens included:
the reward without Y, because Y holds the hidden answer. The harness's evaluation calls `select`
instead of voting and reports the forward tokens spent beside the score.

Ranking by a sum of log-probs favours short rationales; that is the scorer's bias, kept as is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from methods.base import TrainContext
from methods.engine.engine import Engine
from methods.engine.rollout import Trajectories, token_logprobs
from tasks.base import Example


# Nothing is trained, so the harness runs this method in one process whatever trainer.num_processes says.
TRAINS = False


@dataclass
class Config:
    policy: str | None = field(default=None, metadata={
        "help": "policy to sample from: the MLflow run id of a trained run (gfn_tb, ppo, sft save their "
                "adapter), or a folder holding a saved adapter; null: the base policy"})


def train(ctx: TrainContext, cfg: Config) -> None:
    """Nothing to learn; optionally start from a policy trained elsewhere."""
    if cfg.policy:
        ctx.policy.load_adapter_weights(ctx.adapter_folder(cfg.policy))


def select(engine: Engine, examples: list[Example], traj: Trajectories) -> tuple[torch.Tensor, list[int]]:
    """Score each row by log p_base(Z | reward prompt, X); return (scores [B], forward tokens per row).

    Reads each example's query through `reward_prompt`, never its answer or observation."""
    prompts = [engine.reward_prompt_ids(examples[i]) for i in traj.example_idx]
    scores = []
    with engine.policy.base():
        for start in range(0, len(traj), engine.batch_size):
            rows = slice(start, start + engine.batch_size)
            logp = token_logprobs(engine.policy.model, engine.pad_id, prompts[rows], traj.tokens[rows])
            scores.append(logp.sum(-1).cpu())
    cost = [len(p) + len(t) for p, t in zip(prompts, traj.tokens)]
    return torch.cat(scores), cost

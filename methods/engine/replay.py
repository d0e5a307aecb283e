"""Replay buffer of the highest-reward trajectories per query.

Items keep their tool tokens and action mask, so a replayed trajectory is re-scored in the same
context it was sampled in (the reference replayed tool trajectories without the calculator's
outputs). Log-rewards are stored untempered, per state, in the two parts of `LogReward`, and
re-tempered by the caller (`ReplayItem.log_reward_parts`), since the reward temperature moves
during training and the shaping is added after it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from methods.engine.reward import LogReward
from methods.engine.rollout import Trajectories


@dataclass
class ReplayItem:
    tokens: list[int]
    is_action: list[bool]
    terminated: bool
    log_rewards: list[float]  # untempered base log R(s_0..s_n); the last entry is the trajectory's
    shaping: list[float] | None = None  # added after tempering, per state like log_rewards; None: none

    @property
    def log_reward(self) -> float:
        """The trajectory's log R at T = 1, shaping included: what the buffer ranks by."""
        return self.log_rewards[-1] + (self.shaping[-1] if self.shaping is not None else 0.0)


def stored_log_rewards(items: list[ReplayItem], per_prefix: bool) -> LogReward:
    """The untempered log-rewards of replayed items: per state [B, S] zero-padded, or final [B]."""
    def stack(rows: list[list[float]]) -> torch.Tensor:
        if not per_prefix:
            return torch.tensor([row[-1] for row in rows])
        width = max(len(row) for row in rows)
        return torch.tensor([row + [0.0] * (width - len(row)) for row in rows])

    shaped = [it.shaping is not None for it in items]
    if any(shaped) and not all(shaped):
        raise ValueError("replayed items mix rewards with and without shaping")
    return LogReward(stack([it.log_rewards for it in items]), stack([it.shaping for it in items]) if all(shaped) else None)


class ReplayBuffer:
    def __init__(self, capacity_per_query: int):
        self.capacity = capacity_per_query
        self.items: dict[str, list[ReplayItem]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def has(self, key: str) -> bool:
        return bool(self.items.get(key))

    def add(self, key: str, traj: Trajectories, log_rewards: LogReward) -> None:
        """Add every row of `traj` (all for query `key`); log_rewards' parts are [B, A+1] or [B]."""
        bucket = self.items.setdefault(key, [])
        seen = {tuple(it.tokens) for it in bucket}
        for row in range(len(traj)):
            if tuple(traj.tokens[row]) in seen:
                continue  # exact duplicates would only skew uniform replay towards them
            seen.add(tuple(traj.tokens[row]))
            n = traj.n_actions[row]
            values = lambda r: r[: n + 1].tolist() if r.dim() == 1 else [float(r)]
            r = log_rewards[row]
            bucket.append(ReplayItem(list(traj.tokens[row]), list(traj.is_action[row]), traj.terminated[row],
                                     values(r.base), None if r.shaping is None else values(r.shaping)))
        bucket.sort(key=lambda it: it.log_reward, reverse=True)
        del bucket[self.capacity:]

    def sample(self, key: str, n: int, rng: random.Random, temperature: float | None = None) -> list[ReplayItem]:
        """n items drawn with replacement: uniformly (the paper), or with `temperature` in proportion
        to each item's tempered reward R^(1/T) (shaping after tempering), which favours the best
        items, such as seeded demonstrations, over the many poor samples that fill a buffer."""
        items = self.items[key]
        if temperature is None:
            return [rng.choice(items) for _ in range(n)]
        tempered = [it.log_rewards[-1] / temperature + (it.shaping[-1] if it.shaping is not None else 0.0)
                    for it in items]
        top = max(tempered)
        return rng.choices(items, weights=[math.exp(t - top) for t in tempered], k=n)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "items": {k: [vars(it) for it in v] for k, v in self.items.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.items = {k: [ReplayItem(**it) for it in v] for k, v in state["items"].items()}

"""Replay buffer of the highest-reward trajectories per query.

Items keep their tool tokens and action mask, so a replayed trajectory is re-scored in the same
context it was sampled in (the reference replayed tool trajectories without the calculator's
outputs). Log-rewards are stored untempered, per state, and re-tempered by the caller, since the
reward temperature moves during training.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from methods.engine.rollout import Trajectories


@dataclass
class ReplayItem:
    tokens: list[int]
    is_action: list[bool]
    terminated: bool
    log_rewards: list[float]  # untempered log R(s_0..s_n); the last entry is the trajectory's

    @property
    def log_reward(self) -> float:
        return self.log_rewards[-1]


class ReplayBuffer:
    def __init__(self, capacity_per_query: int):
        self.capacity = capacity_per_query
        self.items: dict[str, list[ReplayItem]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def has(self, key: str) -> bool:
        return bool(self.items.get(key))

    def add(self, key: str, traj: Trajectories, log_rewards: torch.Tensor) -> None:
        """Add every row of `traj` (all for query `key`); log_rewards is [B, A+1] or [B]."""
        bucket = self.items.setdefault(key, [])
        seen = {tuple(it.tokens) for it in bucket}
        for row in range(len(traj)):
            if tuple(traj.tokens[row]) in seen:
                continue  # exact duplicates would only skew uniform replay towards them
            seen.add(tuple(traj.tokens[row]))
            n = traj.n_actions[row]
            r = log_rewards[row]
            values = r[: n + 1].tolist() if r.dim() == 1 else [float(r)]
            bucket.append(ReplayItem(list(traj.tokens[row]), list(traj.is_action[row]), traj.terminated[row], values))
        bucket.sort(key=lambda it: it.log_reward, reverse=True)
        del bucket[self.capacity:]

    def sample(self, key: str, n: int, rng: random.Random) -> list[ReplayItem]:
        """n items drawn uniformly with replacement."""
        return [rng.choice(self.items[key]) for _ in range(n)]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "items": {k: [vars(it) for it in v] for k, v in self.items.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.items = {k: [ReplayItem(**it) for it in v] for k, v in state["items"].items()}

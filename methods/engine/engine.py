"""One object that binds a policy to a task: what every method samples, scores and rewards with.

It tokenizes each query's prompts once, chunks work into `batch_size` sequences, and keeps the
frozen base (adapters disabled, no grad) for rewards and base likelihoods.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from methods.engine.models import Policy
from methods.engine.reward import log_reward
from methods.engine.rollout import Scores, TokenRules, Trajectories, sample, score, token_logprobs
from tasks.base import Example, Task


class Engine:
    def __init__(self, policy: Policy, task: Task, batch_size: int = 64):
        self.policy, self.task, self.batch_size = policy, task, batch_size
        self.tokenizer = policy.tokenizer
        vocab = policy.model.get_output_embeddings().weight.shape[0]
        self.rules = TokenRules.for_task(task, self.tokenizer, vocab)
        self.pad_id = self.tokenizer.pad_token_id

        @lru_cache(maxsize=None)
        def encode(text: str, special: bool) -> tuple[int, ...]:
            return tuple(self.tokenizer(text, add_special_tokens=special).input_ids)

        self._encode = encode

    # --- tokenized task text ------------------------------------------------------------------
    def prompt_ids(self, ex: Example) -> list[int]:
        return list(self._encode(self.task.policy_prompt(ex), True))

    def reward_prompt_ids(self, ex: Example) -> list[int]:
        return list(self._encode(self.task.reward_prompt(ex), True))

    def observation_ids(self, ex: Example) -> list[int]:
        return list(self._encode(self.task.observation(ex), False))

    def _chunks(self, n: int):
        return (list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size))

    # --- sampling and scoring -------------------------------------------------------------------
    def sample(self, examples: list[Example], temperatures: list[float],
               generator: torch.Generator | None = None) -> Trajectories:
        """One trajectory per entry of `examples` (repeat an example for several samples)."""
        parts = []
        for rows in self._chunks(len(examples)):
            parts.append(sample(self.policy.model, self.tokenizer, self.task, self.rules,
                                [self.prompt_ids(examples[i]) for i in rows], rows,
                                [temperatures[i] for i in rows], generator))
        return Trajectories.concat(parts)

    def score(self, traj: Trajectories, *, hidden: bool = False) -> Scores:
        """Policy log-probs with gradients (the caller sizes the batch)."""
        return score(self.policy.model, self.pad_id, self.rules, traj, hidden=hidden)

    def log_reward(self, traj: Trajectories, examples: list[Example], *, per_prefix: bool) -> torch.Tensor:
        """Untempered log R per state [B, A+1] (or of the final state, [B]) under the frozen base."""
        parts, width = [], max(traj.n_actions) + 1
        with self.policy.base():
            for rows in self._chunks(len(traj)):
                part = traj.select(rows)
                exs = [examples[i] for i in part.example_idx]
                r = log_reward(self.policy.model, self.pad_id, [self.reward_prompt_ids(e) for e in exs],
                               [self.observation_ids(e) for e in exs], part, per_prefix=per_prefix)
                if per_prefix:
                    r = torch.nn.functional.pad(r, (0, width - r.shape[1]))
                parts.append(r)
        return torch.cat(parts)

    def base_logprobs(self, traj: Trajectories) -> torch.Tensor:
        """[B, T] log p_base of every sample token (actions and tool tokens) given the policy prompt."""
        parts, width = [], max(1, max(len(t) for t in traj.tokens))
        with self.policy.base():
            for rows in self._chunks(len(traj)):
                part = traj.select(rows)
                lp = token_logprobs(self.policy.model, self.pad_id, part.prompt_ids, part.tokens)
                parts.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
        return torch.cat(parts)

    def demonstrations(self, examples: list[Example]) -> Trajectories:
        """Trajectories of the examples' rationales, tool outputs marked as environment tokens.

        Actions keep the tokenization the tokenizer gives each piece; terminated is True (⊤ follows).
        """
        tokens, is_action = [], []
        for ex in examples:
            row, acts = [], []
            for text, is_tool in self.task.segments(ex.rationale or ""):
                ids = list(self._encode(text, False))
                row += ids
                acts += [not is_tool] * len(ids)
            tokens.append(row)
            is_action.append(acts)
        return Trajectories(list(range(len(examples))), [self.prompt_ids(e) for e in examples],
                            tokens, is_action, [True] * len(examples), [1.0] * len(examples))

    def texts(self, traj: Trajectories) -> list[str]:
        return self.tokenizer.batch_decode(traj.tokens)

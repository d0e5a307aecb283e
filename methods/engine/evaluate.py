"""The evaluation protocol every method is measured by: k samples per query, majority vote.

All methods draw the same number of samples per query at the same temperature (paper: 10 at
T=0.1), so their numbers are comparable. The likelihood is that of the sample (tool tokens
included) under the frozen base model given the policy prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.engine.engine import Engine
from methods.engine.metrics import distinct_n, majority_vote
from tasks.base import Example


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: list[dict]  # one per query: its majority answer, the gold answer and a sample


def evaluate(engine: Engine, examples: list[Example], *, samples: int, temperature: float,
             seed: int = 0) -> EvalResult:
    """`samples` draws per query at `temperature`, with their own seeded generator so that an
    evaluation does not move the training run's random stream."""
    task, k = engine.task, samples
    repeated = [ex for ex in examples for _ in range(k)]
    generator = torch.Generator(device=engine.policy.device).manual_seed(seed)
    traj = engine.sample(repeated, [temperature] * len(repeated), generator)
    texts = engine.texts(traj)
    loglik = engine.base_logprobs(traj).sum(-1).cpu()

    correct, best_loglik, diversity, rows = [], [], [], []
    for q, ex in enumerate(examples):
        mine = slice(q * k, (q + 1) * k)
        vote = majority_vote([task.extract_answer(t) for t in texts[mine]])
        correct.append(float(vote is not None and vote == ex.answer))
        best_loglik.append(loglik[mine].max().item())
        diversity.append(distinct_n(texts[mine], 2))
        rows.append({"query": ex.query, "answer": ex.answer, "vote": vote, "sample": texts[q * k]})
    n = max(1, len(examples))
    metrics = {
        "accuracy": sum(correct) / n,
        "loglik_mean": loglik.mean().item(),
        "loglik_max": sum(best_loglik) / n,
        "distinct_2": sum(diversity) / n,
        "sample_length": sum(traj.n_actions) / max(1, len(traj)),
    }
    return EvalResult(metrics, rows)

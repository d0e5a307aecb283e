"""The evaluation protocol every method is measured by: k samples per query, majority vote.

All methods draw the same number of samples per query at the same temperature (paper: 10 at
T=0.1), so their numbers are comparable. The likelihood is that of the sample (tool tokens
included, and its end when that is text, the "." of a sentence) under the frozen base model given
the policy prompt. A sample's answer is the task's `extract_answer`, or for a task with candidate
observations the one the base LM prefers after it (Engine.answers). An unparsable sample votes for
"no answer", which wins ties and counts as wrong (metrics.majority_vote); a tie among real answers
goes to the task's `tie_break` when it is among the tied answers.

A task reports the metrics it declares (`task.metrics`, from its YAML file): accuracy means nothing
for a sentence with no graded answer, and reference metrics (BLEU-4, GLEU, embedding similarity
to the hidden answer) only apply where the answer is a reference text. A task that declares no
list gets every free-form metric.

A method may replace the majority vote by a test-time selection rule (best-of-N, `Select`): each
query's answer is then that of its best-scored sample. `forward_tokens` counts the tokens each
query costs to sample (prompt + sample, per row) plus what the selection rule spent scoring them.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch

from methods.engine import embeddings
from methods.engine.engine import Engine
from methods.engine.models import Policy
from methods.engine.metrics import FREE_FORM_METRICS, bleu4, distinct_n, gleu, majority_vote
from methods.engine.rollout import Trajectories
from tasks.base import Example, Task

Select = Callable[[Engine, list[Example], Trajectories], tuple[torch.Tensor, list[int]]]
"""A test-time selection rule: (score per row, higher is kept; forward tokens spent per row). Row i
answers examples[traj.example_idx[i]]; the rule must never read an example's answer."""


def method_engine(policy: Policy, task: Task, batch_size: int, method: ModuleType, cfg: Any) -> Engine:
    """The engine a method trains and is evaluated with: the task as the method module's
    `evaluation_task(cfg, task)` shows it to the policy, sampling with its `decoding(cfg)` at
    evaluation (method=prompting); the task itself and the engine's sampler where it declares neither."""
    view = getattr(method, "evaluation_task", None)
    engine = Engine(policy, view(cfg, task) if view else task, batch_size)
    decoding = getattr(method, "decoding", None)
    engine.decode = decoding(cfg) if decoding else None
    return engine


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: list[dict]  # one per query: the gold answer, its answer (majority vote or selected), its value of
    # each declared metric (accuracy as `correct`, 0 or 1; the split's metrics are their means) and a sample


def evaluate(engine: Engine, examples: list[Example], *, samples: int, temperature: float,
             seed: int = 0, select: Select | None = None, embedding_model: str | None = None) -> EvalResult:
    """`samples` draws per query at `temperature` (see `evaluate_splits`)."""
    return evaluate_splits(engine, {"": examples}, samples=samples, temperature=temperature, seed=seed,
                           select=select, embedding_model=embedding_model)[""]


def evaluate_splits(engine: Engine, splits: dict[str, list[Example]], *, samples: int, temperature: float,
                    seed: int = 0, select: Select | None = None,
                    embedding_model: str | None = None) -> dict[str, EvalResult]:
    """Evaluate several splits in one sampling pass.

    Decoding a small model on a CPU is bound by reading the weights once per token step, so a
    step over many rows costs little more than over a few: all splits share the batches. The
    generator is the evaluation's own, so an evaluation does not move the training run's stream.

    `select`: a best-of-N rule that picks each query's answer instead of the majority vote (ties
    go to the first sample drawn). `embedding_model`: folder of the sentence encoder behind
    `embedding_diversity` (default: MiniLM from its wheel; without the wheel the metric is left
    out; the task's own `embedding_model` when none is given). Its samples are embedded in one
    batched pass.
    """
    task, k = engine.task, samples
    declared = tuple(getattr(task, "metrics", None) or FREE_FORM_METRICS)
    tie_break = getattr(task, "tie_break", None)
    embedding_model = embedding_model or getattr(task, "embedding_model", None)
    queries = [ex for examples in splits.values() for ex in examples]
    repeated = [ex for ex in queries for _ in range(k)]
    generator = torch.Generator(device=engine.policy.device).manual_seed(seed)
    if engine.decode is not None:  # a decoding baseline: k rows per query, from the base LM
        traj = engine.decode(engine, queries, k, generator)
    else:
        traj = engine.sample(repeated, [temperature] * len(repeated), generator)
    texts = engine.texts(traj)
    answers = engine.answers(traj, repeated)
    loglik = engine.base_loglik(traj)
    cost = torch.tensor([len(p) + len(t) for p, t in zip(traj.prompt_ids, traj.tokens)], dtype=torch.float64)
    scores = None
    if select is not None:
        scores, select_cost = select(engine, repeated, traj)
        scores, cost = scores.cpu(), cost + torch.tensor(select_cost, dtype=torch.float64)
    embedded = references = None
    if ({"embedding_diversity", "embedding_similarity"} & set(declared)
            and (embedding_model or embeddings.default_model_path() is not None)):
        embedded = embeddings.encode(texts, embedding_model, device=engine.policy.device)
        if "embedding_similarity" in declared:
            references = embeddings.encode([ex.answer for ex in queries], embedding_model, device=engine.policy.device)

    n_actions = traj.n_actions  # a property that counts every row: once
    results, first = {}, 0
    for name, examples in splits.items():
        correct, best_loglik, diversity, semantic, rows = [], [], [], [], []
        bleu, gleu_scores, similarity = [], [], []
        for q, ex in enumerate(examples, start=first):
            mine = slice(q * k, (q + 1) * k)
            shown = q * k
            if scores is None:
                vote = majority_vote(answers[mine], tie_break)
            else:
                shown += int(scores[mine].argmax())  # argmax returns the first of tied maxima
                vote = answers[shown]
            correct.append(float(vote is not None and vote == ex.answer))
            best_loglik.append(loglik[mine].max().item())
            diversity.append(distinct_n(texts[mine], 2))
            if embedded is not None:
                semantic.append(embeddings.diversity(embedded[mine]))
            # Reference metrics: every sample against the hidden reference, averaged per query.
            if "bleu4" in declared:
                bleu.append(sum(bleu4(t, ex.answer) for t in texts[mine]) / k)
            if "gleu" in declared:
                gleu_scores.append(sum(gleu(t, ex.answer) for t in texts[mine]) / k)
            if references is not None:
                similarity.append(float((embedded[mine].double() @ references[q].double()).mean()))
            # This query's value of each declared metric: the split's metric is their mean.
            values = {"accuracy": int(correct[-1]), "loglik_mean": loglik[mine].mean().item(), "loglik_max": best_loglik[-1],
                      "distinct_2": diversity[-1], "sample_length": sum(n_actions[mine]) / k,
                      "forward_tokens": cost[mine].sum().item()}
            for key, scores_of_split in (("embedding_diversity", semantic), ("bleu4", bleu), ("gleu", gleu_scores),
                                         ("embedding_similarity", similarity)):
                if len(scores_of_split) == len(correct):
                    values[key] = scores_of_split[-1]
            rows.append({"query": ex.query, "answer": ex.answer, "vote": vote}
                        | {("correct" if key == "accuracy" else key): values[key] for key in declared if key in values}
                        | {"sample": texts[shown]})
        rows_of_split = slice(first * k, (first + len(examples)) * k)
        first += len(examples)
        n = max(1, len(examples))
        metrics = {
            "accuracy": sum(correct) / n,
            "loglik_mean": loglik[rows_of_split].mean().item() if examples else 0.0,
            "loglik_max": sum(best_loglik) / n,
            "distinct_2": sum(diversity) / n,
            "sample_length": sum(n_actions[rows_of_split]) / max(1, len(examples) * k),
            "forward_tokens": cost[rows_of_split].sum().item() / n,
        }
        if embedded is not None:
            metrics["embedding_diversity"] = sum(semantic) / n
        reference_scores = {"bleu4": bleu, "gleu": gleu_scores}
        if references is not None:
            reference_scores["embedding_similarity"] = similarity
        for key, values in reference_scores.items():
            if key in declared:
                metrics[key] = sum(values) / n
        results[name] = EvalResult({key: metrics[key] for key in declared if key in metrics}, rows)
    return results

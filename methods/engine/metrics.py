"""Text-only evaluation metrics (no torch), each declared with its direction.

`higher_is_better` follows lm-evaluation-harness: True or False where a metric has a direction,
None where it has none (a sample length is neither good nor bad by itself).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool | None
    help: str


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("accuracy", True, "fraction of queries whose majority-vote (or test-time selected) answer is correct"),
        MetricInfo("loglik_mean", True, "mean over samples of log p_base(Z, Y | X), per query"),
        MetricInfo("loglik_max", True, "max over samples of log p_base(Z, Y | X), per query"),
        MetricInfo("distinct_1", True, "unique word unigrams / all word unigrams of the samples"),
        MetricInfo("distinct_2", True, "unique word bigrams / all word bigrams of the samples"),
        MetricInfo("sample_length", None, "mean number of policy tokens per sample"),
        MetricInfo("embedding_diversity", True, "1 - mean pairwise cosine similarity of the samples' sentence "
                                                "embeddings (all-MiniLM-L6-v2 by default), per query"),
        MetricInfo("forward_tokens", False, "tokens run through a model per query at evaluation: sampling "
                                            "(prompt + sample) plus any test-time selection"),
    )
}


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common non-None answer; a tie goes to the tied answer that appears first in
    `answers`, so the vote is deterministic. None when every answer is None."""
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None
    # Counter keeps first-appearance order and max() returns the first maximum it meets.
    return max(counts, key=counts.__getitem__)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / total word n-grams over `texts` (n-grams never span two texts);
    0.0 when there are none."""
    if n < 1:
        raise ValueError(f"distinct_n: n={n} must be >= 1")
    ngrams = []
    for text in texts:
        words = text.split()
        ngrams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0

"""Text-only evaluation metrics (no torch), each declared with its direction.

`higher_is_better` follows lm-evaluation-harness: True or False where a metric has a direction,
None where it has none (a sample length is neither good nor bad by itself). A task's YAML file
lists the names of the metrics it reports; each is declared here, the one place of its direction.

BLEU-4 and GLEU are NLTK's, on whitespace tokens, as the paper's infilling evaluation computed them.
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
        MetricInfo("accuracy", True, "fraction of queries whose majority-vote (or test-time selected) answer is "
                                     "correct; an unparsable sample votes for \"no answer\", which is wrong"),
        MetricInfo("loglik_mean", True, "mean over samples of log p_base(Z | X) given the policy prompt (with "
                                        "the sample's end when it is text, the '.' of a sentence)"),
        MetricInfo("loglik_max", True, "max over samples of log p_base(Z | X) (as loglik_mean), per query"),
        MetricInfo("distinct_1", True, "unique word unigrams / all word unigrams of the samples"),
        MetricInfo("distinct_2", True, "unique word bigrams / all word bigrams of the samples"),
        MetricInfo("sample_length", None, "mean number of policy tokens per sample"),
        MetricInfo("embedding_diversity", True, "1 - mean pairwise cosine similarity of the samples' sentence "
                                                "embeddings (all-MiniLM-L6-v2 by default), per query"),
        MetricInfo("forward_tokens", False, "tokens run through a model per query at evaluation: sampling "
                                            "(prompt + sample) plus any test-time selection"),
        MetricInfo("bleu4", True, "sentence BLEU-4 (NLTK, smoothing method 1) of each sample against the "
                                  "reference, averaged over samples and queries"),
        MetricInfo("gleu", True, "sentence GLEU (NLTK, 1- to 4-grams) of each sample against the reference, "
                                 "averaged over samples and queries"),
        MetricInfo("embedding_similarity", True, "cosine similarity of each sample's sentence embedding "
                                                 "(all-MiniLM-L6-v2 by default) to the reference's, averaged "
                                                 "over samples and queries"),
    )
}
# What a task that declares no metrics reports: everything computed without a reference text.
FREE_FORM_METRICS = ("accuracy", "loglik_mean", "loglik_max", "distinct_2", "embedding_diversity",
                     "sample_length", "forward_tokens")
# NLTK (with scipy, ~1 s) is imported where BLEU and GLEU are computed: reading METRICS, as every
# sweep file does when it is checked, must not load it.


def bleu4(candidate: str, reference: str) -> float:
    """Sentence BLEU-4 of `candidate` against one `reference`, whitespace tokens, with NLTK's
    smoothing method 1 (an n-gram order without matches counts 0.1 / its n-gram total)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    words = candidate.split()
    return float(sentence_bleu([reference.split()], words, smoothing_function=SmoothingFunction().method1)) if words else 0.0


def gleu(candidate: str, reference: str) -> float:
    """Sentence GLEU (NLTK): matching 1- to 4-grams / max(candidate's, reference's n-grams)."""
    from nltk.translate.gleu_score import sentence_gleu

    words = candidate.split()
    return float(sentence_gleu([reference.split()], words)) if words else 0.0


def majority_vote(answers: list[str | None], tie_break: str | None = None) -> str | None:
    """The query's vote, with an unparsable sample (None) counted as a vote for "no answer", as the
    paper counts it: None when "no answer" has at least as many votes as every real answer.

    A tie between "no answer" and the top real answer goes to "no answer": a method is credited
    only for an answer it produces more often than invalid output, so emitting many invalid
    chains never helps. A tie among real answers (with fewer "no answer" votes) goes to
    `tie_break` when it is among the tied answers, else to the tied answer that appears first in
    `answers`, so the vote is deterministic. None when there are no answers.
    """
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return None
    top = max(counts.values())
    if answers.count(None) >= top:
        return None
    if tie_break is not None and counts.get(tie_break) == top:
        return tie_break
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

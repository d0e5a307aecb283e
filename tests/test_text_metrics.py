"""Text metrics: their declared direction, majority vote, distinct-n, BLEU-4 and GLEU."""
import math

import pytest

from methods.engine.metrics import FREE_FORM_METRICS, METRICS, bleu4, distinct_n, gleu, majority_vote
from tasks import TASKS
from tasks.spec import load_spec


def test_metric_directions():
    assert METRICS["accuracy"].higher_is_better is True
    assert METRICS["loglik_mean"].higher_is_better is True
    assert METRICS["loglik_max"].higher_is_better is True
    assert METRICS["distinct_1"].higher_is_better is True
    assert METRICS["distinct_2"].higher_is_better is True
    assert METRICS["sample_length"].higher_is_better is None
    assert all(name == info.name and info.help for name, info in METRICS.items())


def test_majority_vote():
    assert majority_vote(["3", "5", "5", None]) == "5"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_majority_vote_counts_unparsable_samples_as_no_answer():
    # The paper's vote: an unparsable sample (None) is a vote for "no answer", which is wrong.
    assert majority_vote(["5", None, None]) is None
    assert majority_vote(["3", "5", "5", None, None, None]) is None
    assert majority_vote(["5", "5", None]) == "5"
    assert majority_vote(["5", "5", "3", None]) == "5"


def test_majority_vote_tie_with_no_answer_is_no_answer():
    # An answer is credited only when it beats "no answer" outright, tie_break included.
    assert majority_vote(["5", None]) is None
    assert majority_vote(["5", "5", None, None, "3"]) is None
    assert majority_vote(["5", "3", None]) is None
    assert majority_vote(["subjective", None], tie_break="subjective") is None


def test_majority_vote_tie_goes_to_first_seen():
    assert majority_vote(["7", "2", "2", "7"]) == "7"
    assert majority_vote([None, "2", "7", "7", "2"]) == "2"


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "b c"], 2) == 1.0  # no bigram "b b" across the two texts
    assert distinct_n(["a", ""], 2) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_majority_vote_tie_break_wins_only_a_tie():
    assert majority_vote(["objective", "subjective"], tie_break="subjective") == "subjective"
    assert majority_vote(["objective", "objective", "subjective"], tie_break="subjective") == "objective"
    # The tie-break answer must be among the tied ones to win.
    assert majority_vote(["2", "7", "5"], tie_break="9") == "2"
    assert majority_vote([None, None], tie_break="subjective") is None


# --- BLEU-4 and GLEU (NLTK, whitespace tokens) ------------------------------------------------
def test_bleu4_on_a_hand_computed_pair():
    # 4 of 5 unigrams, 3 of 4 bigrams, 2 of 3 trigrams, 1 of 2 4-grams match; equal lengths: no
    # brevity penalty. BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25.
    assert bleu4("a b c d e", "a b c d f") == pytest.approx(0.2 ** 0.25, abs=1e-12)


def test_bleu4_brevity_penalty_and_smoothing_method_1():
    # 3 candidate words against 5: every 1-3-gram matches, no 4-gram exists, which method 1
    # counts as 0.1; brevity penalty exp(1 - 5/3).
    assert bleu4("a b c", "a b c d e") == pytest.approx(math.exp(1 - 5 / 3) * 0.1 ** 0.25, abs=1e-12)


def test_gleu_on_a_hand_computed_pair():
    # 10 matching 1-4-grams of 14 in the candidate and 14 in the reference: min(10/14, 10/14).
    assert gleu("a b c d e", "a b c d f") == pytest.approx(10 / 14, abs=1e-12)
    # A short candidate: 6 matching n-grams, 6 in it, 14 in the reference: recall 6/14 decides.
    assert gleu("a b c", "a b c d e") == pytest.approx(6 / 14, abs=1e-12)


def test_identical_sentences_score_one_and_disjoint_or_empty_ones_zero():
    sentence = "When she came back, smoke was rising from the toaster."
    assert bleu4(sentence, sentence) == pytest.approx(1.0)
    assert gleu(sentence, sentence) == pytest.approx(1.0)
    assert bleu4("x y z w", sentence) == 0.0 and gleu("x y z w", sentence) == 0.0
    assert bleu4("  ", sentence) == 0.0 and gleu("", sentence) == 0.0


def test_every_task_yaml_names_only_declared_metrics():
    """A task's YAML lists metric names; their directions are the registry's alone, so a name the
    registry lacks (a typo) has no direction and would be dropped from the task's results."""
    for name in TASKS:
        unknown = set(load_spec(name).metrics) - set(METRICS)
        assert not unknown, f"tasks/{name}.yaml: metrics not declared in methods/engine/metrics.py: {unknown}"
    assert set(FREE_FORM_METRICS) <= set(METRICS)
    assert METRICS["bleu4"].higher_is_better and METRICS["gleu"].higher_is_better
    assert METRICS["embedding_similarity"].higher_is_better

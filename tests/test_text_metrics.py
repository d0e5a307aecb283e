"""Text metrics: their declared direction, majority vote and distinct-n."""
import pytest

from methods.engine.metrics import METRICS, distinct_n, majority_vote


def test_metric_directions():
    assert METRICS["accuracy"].higher_is_better is True
    assert METRICS["loglik_mean"].higher_is_better is True
    assert METRICS["loglik_max"].higher_is_better is True
    assert METRICS["distinct_1"].higher_is_better is True
    assert METRICS["distinct_2"].higher_is_better is True
    assert METRICS["sample_length"].higher_is_better is None
    assert all(name == info.name and info.help for name, info in METRICS.items())


def test_majority_vote():
    assert majority_vote(["3", "5", "5", None, None, None]) == "5"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


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

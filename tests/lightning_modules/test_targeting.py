"""Targeting math: the chunked top-K equals a brute-force cosine ranking; the ranking scores
and the prompt-tuning and few-shot losses follow their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskstudy.lightning_modules.targeting import (
    balanced_weights, prototype_loss, prototype_scores, ranking_scores, top_k_cosine, triplet_loss,
)


def chunks(rows: torch.Tensor, size: int):
    for start in range(0, len(rows), size):
        yield list(range(start, min(start + size, len(rows)))), rows[start:start + size]


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
@pytest.mark.parametrize("k", [1, 5, 50, 300])
def test_chunked_top_k_equals_the_brute_force_cosine_ranking(size, k):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(257, 16, generator=gen) * torch.rand(257, 1, generator=gen)  # unnormalised
    query = torch.randn(16, generator=gen)
    keys, scores = top_k_cosine(query, chunks(rows, size), k)
    brute = F.cosine_similarity(rows, query[None], dim=-1)
    expected = torch.sort(brute, descending=True, stable=True).indices[:k].tolist()
    assert keys == expected
    np.testing.assert_allclose(scores, brute[expected].numpy(), rtol=1e-5, atol=1e-6)


def test_top_k_breaks_ties_by_the_earlier_row_and_checks_shapes():
    rows = torch.ones(5, 3)
    keys, _ = top_k_cosine(torch.ones(3), chunks(rows, 2), 3)
    assert keys == [0, 1, 2]
    with pytest.raises(ValueError, match="dimension 3, the query has 4"):
        top_k_cosine(torch.ones(4), chunks(rows, 2), 1)
    with pytest.raises(ValueError, match="k >= 1"):
        top_k_cosine(torch.ones(3), chunks(rows, 2), 0)


def test_ranking_scores_at_k_equal_to_the_positives():
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.3, 0.2, 0.7])  # top 3: rows 0, 1, 5 -> two positives
    out = ranking_scores(labels, scores)
    assert out["k"] == 3 and out["recall_at_k"] == out["precision_at_k"] == pytest.approx(2 / 3)
    assert out["auc"] == pytest.approx(5 / 9)  # of 9 (pos, neg) pairs: 3 + 0 + 2 ordered
    assert math.isnan(ranking_scores(np.zeros(4), np.arange(4.0))["auc"])


def test_prototype_loss_is_the_softmax_cross_entropy_over_cosines():
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    loss = prototype_loss(users, protos, torch.tensor([0, 0]), tau)
    # user 0: cosines (1, 0) -> -log(e^2 / (e^2 + 1)); user 1: (0, 1) -> -log(1 / (1 + e^2))
    expected = (-math.log(math.e ** 2 / (math.e ** 2 + 1)) - math.log(1 / (1 + math.e ** 2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # weights: each row's loss counts w_{y_i} / sum w; one class only -> the same mean
    weighted = prototype_loss(users, protos, torch.tensor([0, 1]), tau, torch.tensor([1.0, 3.0]))
    row = -math.log(math.e ** 2 / (math.e ** 2 + 1))  # both rows are right, by cosine 1 vs 0
    assert weighted.item() == pytest.approx(row, rel=1e-5)
    assert balanced_weights(np.array([0, 0, 0, 1])).tolist() == pytest.approx([4 / 6, 2.0])
    with pytest.raises(ValueError, match="a class has no example"):
        balanced_weights(np.zeros(3))
    assert prototype_scores(users, protos, tau).tolist() == pytest.approx(
        [1 / (1 + math.e ** 2), math.e ** 2 / (1 + math.e ** 2)], rel=1e-5)


def test_triplet_loss_is_the_hinge_over_every_positive_negative_pair():
    text = torch.tensor([1.0, 0.0])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines 1, 0
    neg = torch.tensor([[0.0, 1.0]])  # cosine 0
    # pairs: max(0, .5 - 1 + 0) = 0 and max(0, .5 - 0 + 0) = .5
    assert triplet_loss(text, pos, neg, 0.5).item() == pytest.approx(0.25)

"""The learning measures and their chance levels, on embeddings whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskstudy.lightning_modules.learning import (
    effective_rank, isotropic_spread, loss_chance, retrieval_accuracy, retrieval_chance, spread,
)
from maskstudy.lightning_modules.loss import info_nce_loss


def unit(x):
    return F.normalize(x, dim=-1)


def test_retrieval_accuracy_counts_users_whose_own_answer_wins():
    users = torch.eye(4)
    answers = torch.eye(4)[[0, 1, 3, 2]]  # rows 2 and 3 swapped
    assert retrieval_accuracy(users, answers) == pytest.approx(0.5)
    assert retrieval_accuracy(users, users) == 1.0
    same = unit(torch.ones(4, 3))  # every similarity ties: no user retrieves its answer
    assert retrieval_accuracy(same, same) == 0.0
    assert retrieval_chance(16) == 1 / 16


def test_loss_at_its_chance_value_when_embeddings_collapse():
    """All embeddings equal: every similarity equals the positive's, no negative exceeds it
    by the margin, so the loss is ln(3B - 2) and the kept chance equals it."""
    b = 16
    collapsed = unit(torch.ones(b, 8))
    out = info_nce_loss(collapsed, collapsed, temperature=0.05, margin=0.1)
    assert out.loss.item() == pytest.approx(loss_chance(b), abs=1e-4)
    assert out.kept_chance.item() == pytest.approx(math.log(3 * b - 2), abs=1e-5)
    assert out.retrieval_acc.item() == 0.0


def test_kept_chance_counts_only_the_negatives_the_filter_keeps():
    """Users nearly identical (user-user similarity 1 > positive + margin): the filter drops
    the 15 user-user negatives of every row, and the chance value drops with them."""
    torch.manual_seed(0)
    b = 16
    users = unit(torch.ones(b, 32) + 0.001 * torch.randn(b, 32))
    answers = unit(torch.randn(b, 32))
    out = info_nce_loss(users, answers, temperature=0.05, margin=0.1)
    kept_per_row = out.kept_chance.exp().item() - 1
    assert kept_per_row <= 2 * (b - 1)  # at most answer-answer and user-answer remain
    assert out.kept_chance.item() < loss_chance(b)


def test_spread_and_effective_rank_tell_collapse_from_spread():
    torch.manual_seed(0)
    spread_out = unit(torch.randn(512, 64))
    collapsed = unit(torch.ones(512, 64) + 1e-4 * torch.randn(512, 64))
    assert spread(spread_out).item() == pytest.approx(isotropic_spread(64), rel=0.1)
    assert spread(collapsed).item() < 0.01 * isotropic_spread(64)
    assert effective_rank(spread_out).item() > 50  # close to the 64 dimensions
    assert effective_rank(collapsed).item() < 1.5
    line = torch.randn(100, 1) * torch.randn(1, 64)  # every row on one line
    assert effective_rank(line).item() == pytest.approx(1.0, abs=0.01)

"""Whether a contrastive encoder is learning: small pure measures of a batch of embeddings.

Every measure comes with the value it takes for an encoder that learned nothing, so a logged
number can be read against its chance level:

    retrieval accuracy   share of users whose own answer is the most similar of the batch's
                         answers; chance 1 / B
    loss chance          the GG-SM loss when every kept similarity equals the positive's:
                         log(1 + kept negatives), ln(3B - 2) with every negative kept
    spread               mean over dimensions of the per-dimension standard deviation of the
                         user embeddings; 0 when every user gets the same embedding, about
                         1 / sqrt(D) for unit vectors spread evenly over D dimensions
    next-token chance    the next-token loss of a uniform guess over the vocabulary: ln V
    effective rank       RankMe (Garrido et al., 2023): exp of the entropy of the normalised
                         singular values; 1 when all embeddings lie on one line
"""

from __future__ import annotations

import math

import torch


def retrieval_accuracy(users: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Share of rows i with argmax_j s(u_i, a_j) = i (ties count as misses)."""
    sims = users @ answers.T
    own = sims.diagonal()
    others = sims.masked_fill(torch.eye(len(sims), dtype=torch.bool, device=sims.device),
                              float("-inf"))
    return (own > others.amax(1)).float().mean()


def retrieval_chance(batch_size: int) -> float:
    """The retrieval accuracy of embeddings that carry no information: 1 / B."""
    return 1.0 / batch_size


def ntp_chance(vocab_size: int) -> float:
    """The next-token loss of a uniform guess over ``vocab_size`` tokens: ln V."""
    return math.log(vocab_size)


def loss_chance(batch_size: int) -> float:
    """The GG-SM loss (``loss.info_nce_loss``) when every similarity is equal and no negative
    is filtered: the positive plus 3 (B - 1) negatives, ln(3B - 2)."""
    return math.log(3 * batch_size - 2)


def spread(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension standard deviation over rows."""
    return embeddings.float().std(0).mean()


def isotropic_spread(dim: int) -> float:
    """The spread of unit vectors spread evenly over ``dim`` dimensions: 1 / sqrt(D)."""
    return 1.0 / math.sqrt(dim)


def effective_rank(embeddings: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe: exp(-sum_k p_k log p_k) with p_k = sigma_k / sum sigma + eps, sigma the
    singular values of the (N, D) embedding matrix; between 1 and min(N, D)."""
    sigma = torch.linalg.svdvals(embeddings.float())
    p = sigma / sigma.sum().clamp_min(eps) + eps
    return torch.exp(-(p * p.log()).sum())

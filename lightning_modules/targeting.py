"""Targeting (FIND): rank users by cosine similarity to one sentence, and the losses that adapt a
frozen encoder to one scenario.

- :func:`top_k_cosine` ranks any number of users streamed in chunks: exact top-K, memory
  bounded by one chunk plus K.
- :func:`ranking_scores` scores a ranking against who actually did it.
- :func:`prototype_loss` is Query-as-Anchor's cluster-based prompt-tuning loss,
  :func:`triplet_loss` FIND's few-shot loss.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


def top_k_cosine(query: torch.Tensor, chunks: Iterable[tuple[list, torch.Tensor]],
                 k: int) -> tuple[list, np.ndarray]:
    """(keys, scores) of the ``k`` rows most cosine-similar to ``query`` (D,), best first,
    over ``chunks`` of (keys, (n, D) rows). Exact: each chunk's scores are merged with the
    best ``k`` so far, so memory holds one chunk and ``k`` candidates. Ties keep the earlier
    row."""
    if k < 1:
        raise ValueError(f"top-k: expected k >= 1, got {k}")
    q = F.normalize(query.float().flatten(), dim=0)
    best_scores = torch.empty(0)
    best_keys: list = []
    for keys, rows in chunks:
        if len(keys) != rows.shape[0]:
            raise ValueError(f"top-k: a chunk has {len(keys)} keys for {rows.shape[0]} rows")
        if rows.shape[-1] != q.numel():
            raise ValueError(f"top-k: rows of dimension {rows.shape[-1]}, the query has "
                             f"{q.numel()}")
        scores = F.normalize(rows.float(), dim=-1) @ q
        merged = torch.cat([best_scores, scores])
        # stable descending order: among equal scores the earlier row (lower index) wins
        order = torch.sort(merged, descending=True, stable=True).indices[:k]
        pool = best_keys + list(keys)
        best_scores, best_keys = merged[order], [pool[i] for i in order.tolist()]
    return best_keys, best_scores.numpy()


def targeting_direction(sentence: torch.Tensor, reference: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """The vector users are ranked by (cosine): the sentence's embedding t, or with a
    reference sentence t0, t/|t| - t0/|t0|. For unit user embeddings u the score
    u . (t/|t| - t0/|t0|) = s(u, t) - s(u, t0): what the sentence says beyond the reference
    (the activity every answer states)."""
    t = F.normalize(sentence.float(), dim=-1)
    return t if reference is None else t - F.normalize(reference.float(), dim=-1)


def ranking_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """How well ``scores`` rank the users whose ``labels`` are 1: AUC, and recall@K and
    precision@K at K = the number of positives (at that K the two are equal: both are the
    share of the top K who are positive, R-precision). NaN when a class is missing."""
    labels = np.asarray(labels).astype(bool)
    k = int(labels.sum())
    if k == 0 or k == len(labels):
        return {"auc": float("nan"), "recall_at_k": float("nan"),
                "precision_at_k": float("nan"), "k": k}
    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    hits = int(labels[top].sum())
    return {"auc": float(roc_auc_score(labels, scores)), "recall_at_k": hits / k,
            "precision_at_k": hits / k, "k": k}


def prototype_loss(users: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                   temperature: float, class_weights: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Query-as-Anchor's prompt-tuning loss over C class prototypes p_c, with cosine
    similarity s (both sides L2-normalised here), temperature tau and class weights w
    (default 1):

        l_i  = -log( exp(s(u_i, p_{y_i}) / tau) / sum_c exp(s(u_i, p_c) / tau) )
        loss = sum_i w_{y_i} l_i / sum_i w_{y_i}
    """
    logits = F.normalize(users, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return F.cross_entropy(logits, labels.long(), weight=class_weights)


def balanced_weights(labels: np.ndarray, classes: int = 2) -> torch.Tensor:
    """w_c = n / (C n_c): every class weighs as much in total, so a rare positive class is
    not outvoted (with it, l_i at equal similarities is ln C, the loss's chance value)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=classes).astype(float)
    if (counts == 0).any():
        raise ValueError(f"class weights: a class has no example (counts {counts.tolist()})")
    return torch.from_numpy(counts.sum() / (classes * counts)).float()


def prototype_scores(users: torch.Tensor, prototypes: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """P(class 1 | u) = softmax_c(s(u, p_c) / tau)[1]: the score a tuned prompt ranks by."""
    logits = F.normalize(users, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return logits.softmax(-1)[:, 1]


def triplet_loss(text: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """FIND's few-shot loss for one text embedding t (D,) and seed users: every (positive,
    negative) pair (u+, u-), with cosine similarity s and margin m,

        loss = mean over pairs of max(0, m - s(t, u+) + s(t, u-))
    """
    t = F.normalize(text.flatten(), dim=0)
    pos = F.normalize(positives, dim=-1) @ t  # (P,)
    neg = F.normalize(negatives, dim=-1) @ t  # (N,)
    return F.relu(margin - pos[:, None] + neg[None, :]).mean()

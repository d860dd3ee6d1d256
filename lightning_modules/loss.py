"""The contrastive loss of the GG-SM paper (eq. 6-8), with global negatives under DDP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .learning import retrieval_accuracy


@dataclass
class LossOutput:
    loss: torch.Tensor
    pos_sim: torch.Tensor  # mean s(u_i, a_i)
    neg_sim: torch.Tensor  # mean s(u_i, a_j), j != i
    fn_masked_frac: torch.Tensor  # share of negatives dropped by the false-negative filter
    kept_chance: torch.Tensor  # mean_i log(1 + kept negatives of row i): the loss at chance
    retrieval_acc: torch.Tensor  # share of users whose own answer is the batch's most similar
    ntp_loss: torch.Tensor | None = None  # the joint next-token term, when the module adds one


def info_nce_loss(users: torch.Tensor, answers: torch.Tensor, *, temperature: float = 0.02,
                  margin: float = 0.1, all_users: torch.Tensor | None = None,
                  all_answers: torch.Tensor | None = None, offset: int = 0) -> LossOutput:
    """InfoNCE with three kinds of in-batch negatives and a false-negative filter.

    With cosine similarity s (embeddings are L2-normalised), temperature tau and margin m,
    for each local row i (its global index is ``offset + i``):

        p_i   = s(u_i, a_i)
        Z_i   = exp(p_i / tau)
              + sum_{j != i} f_ij^ua exp(s(u_i, a_j) / tau)     user vs other answers
              + sum_{j != i} f_ij^uu exp(s(u_i, u_j) / tau)     user vs other users
              + sum_{j != i} f_ij^aa exp(s(a_i, a_j) / tau)     answer vs other answers
        f_ij  = 0 if s_ij > p_i + m else 1                      (false-negative filter)
        loss  = -1/B sum_i log(exp(p_i / tau) / Z_i)

    Besides the loss it returns what tells learning from chance: ``kept_chance`` =
    1/B sum_i log(1 + sum_j f_ij), the loss if every kept similarity equalled the positive
    (the filter lowers it below ln(3B - 2), so a filtered loss is read against it), and the
    user -> answer retrieval accuracy among the local batch (chance 1/B).

    ``all_users`` / ``all_answers`` hold the negatives (the global batch under DDP, the local
    batch by default); the local rows are ``all_*[offset : offset + B]``.
    """
    all_users = users if all_users is None else all_users
    all_answers = answers if all_answers is None else all_answers
    b, n = users.shape[0], all_users.shape[0]
    rows = torch.arange(b, device=users.device)
    pos = (users * answers).sum(-1)  # (B,)
    sims = torch.stack([users @ all_answers.T, users @ all_users.T, answers @ all_answers.T])
    is_self = torch.zeros(b, n, dtype=torch.bool, device=users.device)
    is_self[rows, rows + offset] = True
    false_negative = sims > (pos + margin)[None, :, None]
    keep = ~is_self[None] & ~false_negative.detach()
    logits = torch.cat([(pos / temperature)[:, None],
                        (sims / temperature).masked_fill(~keep, float("-inf"))
                        .permute(1, 0, 2).reshape(b, 3 * n)], dim=1)
    loss = -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()
    negatives = ~is_self[None].expand_as(sims)
    with torch.no_grad():
        neg_ua = sims[0][~is_self]
        stats = (pos.mean(), neg_ua.mean() if neg_ua.numel() else pos.new_zeros(()),
                 (false_negative & negatives).sum() / negatives.sum().clamp_min(1),
                 torch.log1p(keep.sum((0, 2)).float()).mean(),
                 retrieval_accuracy(users, answers))
    return LossOutput(loss, *stats)


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenates ``x`` from every rank, gradients flowing back to each rank's own rows.

    Returns (global tensor, offset of this rank's rows). Without a process group it is the
    identity. All ranks must pass the same batch size."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    import torch.distributed.nn.functional as dist_fn

    parts = dist_fn.all_gather(x)
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def contrastive_loss(users: torch.Tensor, answers: torch.Tensor, *, temperature: float,
                     margin: float, gather: bool = True) -> LossOutput:
    """:func:`info_nce_loss` with negatives gathered across DDP ranks when ``gather``."""
    if gather:
        all_users, offset = gather_with_grad(users)
        all_answers, _ = gather_with_grad(answers)
    else:
        all_users, all_answers, offset = users, answers, 0
    return info_nce_loss(users, answers, temperature=temperature, margin=margin,
                         all_users=all_users, all_answers=all_answers, offset=offset)

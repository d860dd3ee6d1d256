"""The answer after the anchor: Query-as-Anchor's joint next-token term (L_cl + w L_ntp).

With ``loss.ntp_weight > 0`` the user tower reads one sequence::

    [prefix: history, query, <USER> (as the batch holds it, padding included)] [answer]

in one forward that serves both losses: the contrastive embedding is read at the anchor as
before, and the answer's tokens are predicted from the states before them (the anchor's state
predicts the first). The answer keeps its own segment:

- no prefix row attends to an answer column, under any mask: the mask's own bias covers the
  prefix block only, every prefix-to-answer entry is blocked. The prefix's states, and so the
  embedding, are those of the prefix alone (tested by perturbing the answer);
- answer rows attend to every real prefix token and causally to the answer;
- answer positions continue after the prefix's last real token (explicit position ids), so
  RoPE sees the answer where it would follow the anchor in a single sequence.

    L_ntp = mean over real answer tokens k of -log softmax(W h_{k-1})[a_k]

where h_{-1} is the anchor's state and W the LM head (the pretrained model's own, or the
tiny model's tied or untied head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import blocked_value, last_index

NTP_HEADS = ("tied", "untied")


def joint_bias(prefix_bias: torch.Tensor, prefix_mask: torch.Tensor,
               answer_mask: torch.Tensor) -> torch.Tensor:
    """(..., B, 1, L + A, L + A) bias of ``prefix + answer`` from the mask's prefix bias
    (..., B, 1, L, L): prefix rows keep it and never see the answer; answer rows see the real
    prefix and the real answer tokens at or before them."""
    dtype, device = prefix_bias.dtype, prefix_bias.device
    *lead, batch, _, length, _ = prefix_bias.shape
    answer = answer_mask.shape[-1]
    blocked = torch.tensor(blocked_value(dtype), dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    hidden = blocked.expand(*lead, batch, 1, length, answer)
    sees_prefix = prefix_mask.bool()[:, None, None, :].expand(batch, 1, answer, length)
    causal = torch.ones(answer, answer, dtype=torch.bool, device=device).tril()
    sees_answer = causal[None, None] & answer_mask.bool()[:, None, None, :]
    rows = torch.cat([torch.where(sees_prefix, zero, blocked),
                      torch.where(sees_answer, zero, blocked)], -1)
    return torch.cat([torch.cat([prefix_bias, hidden], -1),
                      rows.expand(*lead, batch, 1, answer, length + answer)], -2)


def answer_positions(prefix_mask: torch.Tensor, answer_length: int) -> torch.Tensor:
    """(B, L + A) position ids: the prefix's own (0 .. L - 1, what the backbone uses without
    position ids), then the answer from one after the prefix's last real token."""
    batch, length = prefix_mask.shape
    device = prefix_mask.device
    answer = last_index(prefix_mask)[:, None] + 1 + torch.arange(answer_length, device=device)
    return torch.cat([torch.arange(length, device=device).expand(batch, -1), answer], -1)


def ntp_loss(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor
             ) -> torch.Tensor:
    """Mean cross-entropy of the real targets: ``logits`` (B, A, V) predict ``targets``
    (B, A) where ``target_mask`` is 1."""
    targets = targets.masked_fill(~target_mask.bool(), -100)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

"""The shared contrastive encoder: one backbone, two towers, a mask, pooling and a projector.

User tower: history + query + ``<USER>`` under the configured mask. Answer tower: the answer
text ending in ``<eos>``, under ``answer_mask`` (``same``: the user tower's mask, with the
answer's content as history and its final token as anchor; or ``causal`` / ``bidirectional``).
Both towers share the backbone and the projector (hidden -> 512 -> 128, GELU) and end
L2-normalised.

Pooling (user tower; the answer tower reads its last real token wherever the user tower reads
an anchor or last token):
    user_token     hidden state at the <USER> anchor (the paper)
    last           hidden state at the last real token (= <USER> with the standard template)
    mean           mean over real tokens (the authors' demo code)
    weighted_mean  position-weighted mean over real tokens, weight proportional to position
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import layer_biases
from .masks import ANCHOR, HISTORY, AttentionMask, BidirectionalMask, CausalMask

POOLINGS = ("user_token", "last", "mean", "weighted_mean")
ANSWER_MASKS = ("same", "causal", "bidirectional")


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token, for right or left padding."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).amax(-1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str,
         segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H) pooled hidden states. ``user_token`` needs segment ids with one anchor per row."""
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if how == "user_token":
        if segment_ids is None:
            raise ValueError("user_token pooling needs segment_ids")
        index = (segment_ids == ANCHOR).long().argmax(-1)
        return hidden[batch, index]
    if how == "last":
        return hidden[batch, last_index(attention_mask)]
    mask = attention_mask.to(hidden.dtype)
    if how == "weighted_mean":
        mask = mask * mask.cumsum(-1)
    elif how != "mean":
        raise ValueError(f"unknown pooling {how!r}: expected one of {POOLINGS}")
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)


class Projector(nn.Sequential):
    def __init__(self, hidden: int, inner: int = 512, out: int = 128):
        super().__init__(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, out))


class ContrastiveEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, mask: AttentionMask, *, hidden_size: int,
                 pooling: str = "user_token", projector_dims: tuple[int, int] = (512, 128),
                 answer_mask: str = "same"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: expected one of {POOLINGS}")
        if answer_mask not in ANSWER_MASKS:
            raise ValueError(f"unknown answer_mask {answer_mask!r}: expected one of {ANSWER_MASKS}")
        self.backbone = backbone
        self.mask = mask
        self.pooling = pooling
        self.answer_mask = answer_mask
        self.projector = Projector(hidden_size, *projector_dims)
        self._fixed_answer_mask = {"causal": CausalMask(), "bidirectional": BidirectionalMask()}
        # When set (GG-SM pre-warmup), the user tower also keeps the input of the last layer.
        self.capture_last_layer_input = False
        self.last_layer_input: torch.Tensor | None = None

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      segment_ids: torch.Tensor, mask: AttentionMask,
                      capture: bool = False) -> torch.Tensor:
        """Final-layer hidden states (B, L, H) under ``mask``, its bias built once. With
        ``capture``, the last layer's input is kept in ``last_layer_input``."""
        dtype = self.backbone.get_input_embeddings().weight.dtype
        bias = mask(segment_ids, attention_mask, dtype)
        kwargs = {"output_hidden_states": True} if capture else {}
        if mask.per_layer:
            with layer_biases(bias):
                out = self.backbone(input_ids=input_ids, attention_mask=bias[0], **kwargs)
        else:
            out = self.backbone(input_ids=input_ids, attention_mask=bias, **kwargs)
        if capture:
            self.last_layer_input = out.hidden_states[-2]
        return out.last_hidden_state

    def embed(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
              segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, pooling, segment_ids)
        return F.normalize(self.projector(pooled).float(), dim=-1)

    def encode_users(self, input_ids, attention_mask, segment_ids,
                     mask: AttentionMask | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, D), final hidden states (B, L, H)) of the user tower."""
        hidden = self.hidden_states(input_ids, attention_mask, segment_ids, mask or self.mask,
                                    capture=self.capture_last_layer_input and mask is None)
        return self.embed(hidden, attention_mask, self.pooling, segment_ids), hidden

    def answer_segments(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer content as history, its last real token (``<eos>``) as anchor."""
        seg = attention_mask.long() * HISTORY
        batch = torch.arange(seg.shape[0], device=seg.device)
        seg[batch, last_index(attention_mask)] = ANCHOR
        return seg

    def encode_answers(self, input_ids, attention_mask) -> torch.Tensor:
        segment_ids = self.answer_segments(attention_mask)
        mask = self.mask if self.answer_mask == "same" else self._fixed_answer_mask[self.answer_mask]
        hidden = self.hidden_states(input_ids, attention_mask, segment_ids, mask)
        pooling = "last" if self.pooling in ("user_token", "last") else self.pooling
        return self.embed(hidden, attention_mask, pooling)

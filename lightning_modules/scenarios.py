"""Several scenario queries per user in one forward: the user prefix computed once.

Query-as-Anchor reads one embedding per (user, scenario): the user's history, then the
scenario's query and the ``<USER>`` anchor. Recomputing the history for every scenario costs
N (P + Q) tokens for N queries of Q tokens after a P-token prefix; the *packed layout* costs
P + N Q. Each user becomes one sequence::

    [prefix (right-padded to the batch's longest)] [query 1, anchor] ... [query N, anchor]

- the attention bias of every block is the mask's own bias for the single sequence
  ``prefix + query n + anchor``, moved to the packed positions: prefix rows keep their
  prefix-to-prefix bias, the rows of block n see the prefix and their own block as they
  would in that single sequence, and no block sees another;
- position ids restart after the prefix for every block, so each block has the positions it
  has in its single sequence (RoPE sees the same distances);
- the embedding of scenario n is read at block n's anchor.

This equals recomputing each (user, query) sequence exactly when the prefix does not depend
on the query: the prefix rows never attend to query tokens and their bias over the prefix is
the same for every query. :func:`check_cacheable` verifies that on the biases themselves, so a
mask that lets the history see the query (bidirectional over the whole sequence) is refused
with a clear error, never silently approximated; such masks recompute per query. Masks that
insert a global token or read embeddings are refused too.
"""

from __future__ import annotations

import torch

from .attention import layer_biases
from .masks import ANCHOR, HISTORY, QUERY, AttentionMask, blocked_value


class NotCacheable(ValueError):
    """Packing would not equal per-query recompute (the mask lets the history see the query,
    or the pooling, the input or the mask needs more than the anchor's state): each query
    needs its own forward."""


def compact_prefix(ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """(ids, lengths): each row's real tokens moved to the front (left or right padding in,
    right padding out)."""
    real = attention_mask.bool()
    order = torch.argsort((~real).to(torch.int8), dim=-1, stable=True)
    return ids.gather(-1, order), real.sum(-1)


def single_layouts(prefix: torch.Tensor, lengths: torch.Tensor, suffix: torch.Tensor,
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, segment ids) of ``prefix + suffix`` per user, right-padded: the
    sequence a per-query recompute reads. ``suffix`` (Q,) ends with the anchor."""
    batch, width = prefix.shape
    q = suffix.numel()
    length = width + q
    pos = torch.arange(length, device=prefix.device)[None]  # (1, L)
    end = lengths[:, None]
    in_prefix = pos < end
    in_suffix = (pos >= end) & (pos < end + q)
    ids = torch.full((batch, length), pad_id, dtype=prefix.dtype, device=prefix.device)
    ids = torch.where(in_prefix, torch.nn.functional.pad(prefix, (0, q), value=pad_id), ids)
    offset = (pos - end).clamp(0, q - 1)
    ids = torch.where(in_suffix, suffix[offset], ids)
    segments = torch.where(in_prefix, HISTORY, torch.where(in_suffix, QUERY, 0))
    segments = torch.where(pos == end + q - 1, ANCHOR, segments)
    return ids, (in_prefix | in_suffix).long(), segments.long()


def _gather_columns(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[..., b, 0, i, index[b, k]]`` as (..., B, 1, I, K)."""
    shape = (*rows.shape[:-1], index.shape[-1])
    return rows.gather(-1, index[:, None, None, :].expand(shape))


def history_block(bias: torch.Tensor, lengths: torch.Tensor, q: int,
                  first: torch.Tensor | None) -> torch.Tensor:
    """The history-by-history bias of one single layout (blocked outside the history), after
    checking that no history row attends to a query column and that (given the first
    query's) the history's bias is the same for every query; raises :class:`NotCacheable`."""
    width = bias.shape[-1] - q
    blocked = blocked_value(bias.dtype)
    pos = torch.arange(width, device=bias.device)
    real = pos[None] < lengths[:, None]  # (B, W) the history's own tokens
    query_cols = lengths[:, None] + torch.arange(q, device=bias.device)  # (B, Q)
    peek = _gather_columns(bias[..., :width, :], query_cols)  # history rows, query columns
    if (torch.where(real[:, None, :, None], peek, blocked) > blocked).any():
        raise NotCacheable("the mask lets history tokens attend to the query, so the prefix "
                           "differs per query; embed each query with its own forward")
    pairs = (real[:, :, None] & real[:, None, :])[:, None]  # (B, 1, W, W)
    history = torch.where(pairs, bias[..., :width, :width], blocked)
    if first is not None and not torch.equal(history, first):
        raise NotCacheable("the mask's bias over the history changes with the query; embed "
                           "each query with its own forward")
    return history


@torch.no_grad()
def packed_anchor_states(encoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                         suffixes: list[torch.Tensor], mask: AttentionMask,
                         pad_id: int = 0) -> torch.Tensor:
    """(B, N, H) final hidden states at the anchor of each of N scenario suffixes (query ids
    then the anchor id) after each user's prefix (``ids`` with its ``attention_mask``, left
    or right padded: the history alone), from one packed forward of the encoder's backbone.
    Raises :class:`NotCacheable` for masks whose prefix depends on the query. ``pad_id`` fills
    padding, which no real token attends to."""
    if encoder.input_layer is not None:
        raise NotCacheable("packed scenarios read text input; hierarchical input embeds "
                           "each query with its own forward")
    if mask.global_token or mask.reads_embeddings:
        raise NotCacheable(f"mask {mask.name!r} inserts a token or reads embeddings; embed "
                           f"each query with its own forward")
    prefix, lengths = compact_prefix(ids, attention_mask)
    batch, width = prefix.shape
    dtype = encoder.backbone.get_input_embeddings().weight.dtype
    sizes = [int(s.numel()) for s in suffixes]
    offsets = [sum(sizes[:n]) for n in range(len(sizes))]
    total = width + sum(sizes)
    device = ids.device
    packed_ids = torch.cat([prefix, *[s.to(device).expand(batch, -1) for s in suffixes]], -1)
    lead = (encoder.backbone.config.num_hidden_layers,) if mask.per_layer else ()
    bias = torch.full((*lead, batch, 1, total, total), blocked_value(dtype), dtype=dtype,
                      device=device)
    positions = torch.zeros(batch, total, dtype=torch.long, device=device)
    positions[:, :width] = torch.arange(width, device=device)
    history = None
    for suffix, offset, q in zip(suffixes, offsets, sizes):
        _, single_mask, segments = single_layouts(prefix, lengths, suffix.to(device), pad_id)
        single_bias = mask(segments, single_mask, dtype)
        history = history_block(single_bias, lengths, q, history)
        # Block n's rows: in the single layout the query sits right after each history, at
        # lengths + k; its columns are the history (same positions) and the query itself.
        block = slice(width + offset, width + offset + q)
        query = lengths[:, None] + torch.arange(q, device=device)  # (B, Q)
        rows = single_bias.gather(-2, query[:, None, :, None].expand(
            *single_bias.shape[:-2], q, single_bias.shape[-1]))  # (..., B, 1, Q, L)
        real = torch.arange(width, device=device)[None] < lengths[:, None]
        bias[..., block, :width] = torch.where(real[:, None, None, :], rows[..., :width],
                                               blocked_value(dtype))
        bias[..., block, block] = _gather_columns(rows, query)
        positions[:, block] = query
    bias[..., :width, :width] = history
    inputs = {"input_ids": packed_ids}
    if mask.per_layer:
        with layer_biases(bias):
            out = encoder.backbone(**inputs, attention_mask=bias[0], position_ids=positions)
    else:
        out = encoder.backbone(**inputs, attention_mask=bias, position_ids=positions)
    anchors = torch.tensor([width + o + q - 1 for o, q in zip(offsets, sizes)], device=device)
    return out.last_hidden_state[:, anchors]

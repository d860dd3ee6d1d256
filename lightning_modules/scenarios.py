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

The *cached* path (:func:`cached_anchor_states`) runs the same biases and positions as two
forwards: the histories fill a KV cache, then every query block runs against it, so no score
is computed between a history row and a query column.

This equals recomputing each (user, query) sequence exactly when the prefix does not depend
on the query: the prefix rows never attend to query tokens and their bias over the prefix is
the same for every query. :func:`history_block` verifies that on the biases themselves, so a
mask that lets the history see the query (bidirectional over the whole sequence) is refused
with a clear error, never silently approximated; such masks recompute per query. Masks that
insert a global token or read embeddings are refused too. Hierarchical input works: its
history tokens (events, modality, user and tabular tokens) are computed from the history
alone, so the prefix enters as embeddings and the queries as token ids.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .attention import layer_biases
from .masks import ANCHOR, HISTORY, QUERY, AttentionMask, blocked_value


class NotCacheable(ValueError):
    """Packing would not equal per-query recompute (the mask lets the history see the query,
    or the pooling, the input or the mask needs more than the anchor's state): each query
    needs its own forward."""


def compaction_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) the positions that move each row's real tokens to the front, in order."""
    return torch.argsort((~attention_mask.bool()).to(torch.int8), dim=-1, stable=True)


def compacted(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values`` (B, L, ...) with each row's real positions moved to the front, in order."""
    order = compaction_order(attention_mask)
    order = order.view(*order.shape, *[1] * (values.dim() - 2)).expand_as(values)
    return values.gather(1, order)


def compact_prefix(ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """(ids, lengths): each row's real tokens moved to the front (left or right padding in,
    right padding out)."""
    return compacted(ids, attention_mask), attention_mask.bool().sum(-1)


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


def scenario_biases(mask: AttentionMask, prefix: torch.Tensor, lengths: torch.Tensor,
                    sizes: list[int], dtype: torch.dtype, pad_id: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The biases of N suffixes of ``sizes`` tokens after the right-padded ``prefix``:
    (history bias (..., B, 1, W, W), suffix bias (..., B, 1, S, W + S) over the history then
    the S = sum(sizes) suffix tokens laid one after another, suffix position ids (B, S)).

    A mask's bias depends on segment ids and the attention mask only (masks that read
    embeddings are refused before), so the single layouts of two suffixes of one length
    share their bias: it is built and checked once per distinct length."""
    batch, width = prefix.shape
    device = prefix.device
    blocked = blocked_value(dtype)
    real = torch.arange(width, device=device)[None] < lengths[:, None]
    history, rows_of = None, {}
    for q in sorted(set(sizes)):
        blank = torch.full((q,), pad_id, dtype=prefix.dtype, device=device)
        _, single_mask, segments = single_layouts(prefix, lengths, blank, pad_id)
        single_bias = mask(segments, single_mask, dtype)
        history = history_block(single_bias, lengths, q, history)
        # In the single layout the suffix sits right after each history, at lengths + k.
        query = lengths[:, None] + torch.arange(q, device=device)  # (B, q)
        rows = single_bias.gather(-2, query[:, None, :, None].expand(
            *single_bias.shape[:-2], q, single_bias.shape[-1]))  # (..., B, 1, q, L)
        rows_of[q] = (torch.where(real[:, None, None, :], rows[..., :width], blocked),
                      _gather_columns(rows, query), query)
    total = sum(sizes)
    suffix_bias = torch.full((*history.shape[:-2], total, width + total), blocked,
                             dtype=dtype, device=device)
    positions = torch.zeros(batch, total, dtype=torch.long, device=device)
    offset = 0
    for q in sizes:
        to_history, own, query = rows_of[q]
        block = slice(offset, offset + q)
        suffix_bias[..., block, :width] = to_history
        suffix_bias[..., block, width + offset:width + offset + q] = own
        positions[:, block] = query
        offset += q
    return history, suffix_bias, positions


def history_inputs(encoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                   mask: AttentionMask, slots: dict | None
                   ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """({"input_ids"} or, with hierarchical ``slots``, {"inputs_embeds"} of the right-padded
    histories, the compacted ids (B, W), lengths (B,)), after refusing what one history
    cannot serve."""
    if mask.global_token or mask.reads_embeddings:
        raise NotCacheable(f"mask {mask.name!r} inserts a token or reads embeddings; embed "
                           f"each query with its own forward")
    if (slots is None) != (encoder.input_layer is None):
        raise ValueError("hierarchical input needs its slots, and only it has slots")
    prefix, lengths = compact_prefix(ids, attention_mask)
    if slots is None:
        return {"input_ids": prefix}, prefix, lengths
    # slots index the batch's own positions: embed first, then compact
    embeds = compacted(encoder.input_embeddings(ids, slots), attention_mask)
    return {"inputs_embeds": embeds}, prefix, lengths


def backbone_forward(backbone, bias: torch.Tensor, per_layer: bool, **inputs):
    """The backbone under ``bias`` (one per layer when ``per_layer``)."""
    if per_layer:
        with layer_biases(bias):
            return backbone(**inputs, attention_mask=bias[0])
    return backbone(**inputs, attention_mask=bias)


def cache_keyword(backbone) -> str:
    """The forward keyword of a KV cache: ``cache`` in recent transformers 5.x,
    ``past_key_values`` before (still accepted, deprecated)."""
    model = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _anchors(width: int, sizes: list[int], device) -> torch.Tensor:
    ends = torch.tensor(sizes, device=device).cumsum(0)
    return width + ends - 1


@dataclass
class ScenarioLayout:
    """What both paths run: the histories (right-padded ``input_ids`` or, for hierarchical
    input, ``inputs_embeds``), the suffix ids (B, S), the biases and suffix positions of
    :func:`scenario_biases`, the history positions (B, W) and each suffix's size."""

    history_inputs: dict
    suffix_ids: torch.Tensor
    history_bias: torch.Tensor
    suffix_bias: torch.Tensor
    history_positions: torch.Tensor
    suffix_positions: torch.Tensor
    sizes: list[int]
    dtype: torch.dtype


def scenario_layout(encoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                    suffixes: list[torch.Tensor], mask: AttentionMask, pad_id: int = 0,
                    slots: dict | None = None) -> ScenarioLayout:
    """The layout of N suffixes after each user's history (see :func:`packed_anchor_states`
    for the arguments); raises :class:`NotCacheable` when one history cannot serve them."""
    inputs, prefix, lengths = history_inputs(encoder, ids, attention_mask, mask, slots)
    batch, width = prefix.shape
    device = ids.device
    dtype = encoder.backbone.get_input_embeddings().weight.dtype
    sizes = [int(s.numel()) for s in suffixes]
    history, suffix_bias, positions = scenario_biases(mask, prefix, lengths, sizes, dtype,
                                                      pad_id)
    suffix_ids = torch.cat([s.to(device).expand(batch, -1) for s in suffixes], -1)
    return ScenarioLayout(inputs, suffix_ids, history, suffix_bias,
                          torch.arange(width, device=device).expand(batch, -1), positions,
                          sizes, dtype)


@torch.no_grad()
def packed_anchor_states(encoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                         suffixes: list[torch.Tensor], mask: AttentionMask,
                         pad_id: int = 0, slots: dict | None = None) -> torch.Tensor:
    """(B, N, H) final hidden states at the anchor of each of N scenario suffixes (query ids
    then the anchor id) after each user's prefix (``ids`` with its ``attention_mask``, left
    or right padded: the history alone; with hierarchical input, ``slots`` of the batch the
    ids come from), from one packed forward of the encoder's backbone. Raises
    :class:`NotCacheable` for masks whose prefix depends on the query. ``pad_id`` fills
    padding, which no real token attends to."""
    lay = scenario_layout(encoder, ids, attention_mask, suffixes, mask, pad_id, slots)
    width = lay.history_positions.shape[1]
    total = width + sum(lay.sizes)
    bias = torch.cat([torch.nn.functional.pad(lay.history_bias, (0, total - width),
                                              value=blocked_value(lay.dtype)),
                      lay.suffix_bias], -2)
    (key, history), = lay.history_inputs.items()
    suffix = (encoder.input_embeddings(lay.suffix_ids) if key == "inputs_embeds"
              else lay.suffix_ids)
    out = backbone_forward(
        encoder.backbone, bias, mask.per_layer, **{key: torch.cat([history, suffix], 1)},
        position_ids=torch.cat([lay.history_positions, lay.suffix_positions], -1))
    return out.last_hidden_state[:, _anchors(width, lay.sizes, ids.device)]


@torch.no_grad()
def cached_anchor_states(encoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                         suffixes: list[torch.Tensor], mask: AttentionMask,
                         pad_id: int = 0, slots: dict | None = None) -> torch.Tensor:
    """:func:`packed_anchor_states` from a KV cache: one forward over the histories fills a
    ``DynamicCache``, a second runs every suffix token against it under the suffix bias.
    Same biases and positions, so the same states; no score is computed between a history
    row and a suffix column."""
    from transformers import DynamicCache

    lay = scenario_layout(encoder, ids, attention_mask, suffixes, mask, pad_id, slots)
    cache = {cache_keyword(encoder.backbone): DynamicCache()}
    backbone_forward(encoder.backbone, lay.history_bias, mask.per_layer, use_cache=True,
                     position_ids=lay.history_positions, **lay.history_inputs, **cache)
    out = backbone_forward(encoder.backbone, lay.suffix_bias, mask.per_layer,
                           input_ids=lay.suffix_ids, use_cache=True,
                           position_ids=lay.suffix_positions, **cache)
    return out.last_hidden_state[:, _anchors(0, lay.sizes, ids.device)]

"""Learnable prompt vectors in front of a frozen encoder.

User side (Query-as-Anchor's soft prompt tuning): K vectors sit after the scenario query and
before the anchor, as query tokens (segment ``QUERY``) under the mask, so the sequence is::

    [history] [query] [prompt 1 .. prompt K] [anchor]

and the embedding is read at the anchor as always. The history never depends on the prompts
where the mask keeps it blind to the query, so :class:`PromptedUsers` computes each user's
history once into a KV cache and every step runs only the query, the prompts and the anchor
against it; a mask that lets the history see the query (or inserts a token, or reads
embeddings) recomputes the whole sequence every step. Both give the same states where both
apply (tested).

Text side (FIND's few-shot targeting): K vectors sit before a sentence's tokens in the answer
tower (:func:`prompted_text`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import ContrastiveEncoder, pool
from .masks import AttentionMask
from .scenarios import (
    NotCacheable, backbone_forward, cache_keyword, compact_prefix, compacted, history_inputs,
    scenario_biases, single_layouts,
)


def init_prompts(encoder: ContrastiveEncoder, k: int, generator: torch.Generator) -> nn.Parameter:
    """(K, H) prompt vectors initialised as the embeddings of K random vocabulary tokens."""
    table = encoder.backbone.get_input_embeddings().weight.detach()
    rows = torch.randint(0, table.shape[0], (k,), generator=generator)
    return nn.Parameter(table[rows].clone().float())


def with_prompts(embeds: torch.Tensor, prompts: torch.Tensor, at: int) -> torch.Tensor:
    """(..., S + K, H): ``prompts`` (K, H) inserted into ``embeds`` (..., S, H) before
    position ``at``."""
    lead = embeds.shape[:-2]
    p = prompts.to(embeds.dtype).expand(*lead, *prompts.shape)
    return torch.cat([embeds[..., :at, :], p, embeds[..., at:, :]], -2)


class PromptedUsers:
    """One batch of users, frozen encoder, a fixed scenario suffix (query ids then the anchor
    id): :meth:`pooled` gives the anchor's hidden state (B, H) of ``[history, query, prompts,
    anchor]`` for any number of prompt vectors, differentiable in them.

    ``ids``/``attention_mask`` hold the history alone (with hierarchical input, ``slots`` of
    the batch they come from). ``cached``: None picks the KV-cache path when the mask allows
    it; False forces the full recompute. ``path`` says which runs (``reason``: why a
    recompute)."""

    def __init__(self, encoder: ContrastiveEncoder, ids: torch.Tensor,
                 attention_mask: torch.Tensor, suffix: list[int], mask: AttentionMask,
                 pad_id: int = 0, slots: dict | None = None, cached: bool | None = None):
        if len(suffix) < 1:
            raise ValueError("a prompted suffix needs at least the anchor")
        self.encoder, self.mask, self.pad_id = encoder, mask, pad_id
        self.suffix = torch.tensor(suffix, device=ids.device)
        self._layouts: dict[int, tuple] = {}
        self.path, self.reason = "recompute", "asked to recompute"
        if encoder.pooling not in ("user_token", "last"):
            self.reason = f"{encoder.pooling} pooling reads more than the anchor"
        elif cached is not False:
            try:
                self._fill_cache(ids, attention_mask, slots)
                self.path = "cache"
            except NotCacheable as e:
                self.reason = str(e)
        if self.path == "recompute":
            self._keep_history(ids, attention_mask, slots)

    def _biases(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(history bias, suffix bias, suffix positions) for a suffix of ``size`` tokens
        (raises NotCacheable when the history would see the suffix)."""
        return scenario_biases(self.mask, self.prefix, self.lengths, [size], self.dtype,
                               self.pad_id)

    def _suffix_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(suffix bias, suffix positions), built once per suffix size."""
        if size not in self._layouts:
            self._layouts[size] = self._biases(size)[1:]
        return self._layouts[size]

    @torch.no_grad()
    def _fill_cache(self, ids, attention_mask, slots) -> None:
        from transformers import DynamicCache

        self.dtype = self.encoder.backbone.get_input_embeddings().weight.dtype
        inputs, self.prefix, self.lengths = history_inputs(self.encoder, ids, attention_mask,
                                                    self.mask, slots)
        history_bias = self._biases(len(self.suffix))[0]
        batch, self.width = self.prefix.shape
        self.cache = DynamicCache()
        backbone_forward(self.encoder.backbone, history_bias, self.mask.per_layer, use_cache=True,
                 position_ids=torch.arange(self.width, device=ids.device).expand(batch, -1),
                 **inputs, **{cache_keyword(self.encoder.backbone): self.cache})
        self.history_states = [(layer.keys, layer.values) for layer in self.cache.layers]

    @torch.no_grad()
    def _keep_history(self, ids, attention_mask, slots) -> None:
        self.prefix, self.lengths = compact_prefix(ids, attention_mask)
        self.history = compacted(self.encoder.input_embeddings(ids, slots), attention_mask)

    def suffix_embeddings(self, prompts: torch.Tensor) -> torch.Tensor:
        """(S + K, H): the query's embeddings, the prompts, the anchor's embedding."""
        embeds = self.encoder.input_embeddings(self.suffix[None])[0]
        return with_prompts(embeds, prompts, len(self.suffix) - 1)

    def pooled(self, prompts: torch.Tensor) -> torch.Tensor:
        suffix = self.suffix_embeddings(prompts)
        if self.path == "cache":
            return self._cached(suffix)
        return self._recomputed(suffix)

    def _cached(self, suffix: torch.Tensor) -> torch.Tensor:
        bias, positions = self._suffix_bias(suffix.shape[0])
        try:
            out = backbone_forward(self.encoder.backbone, bias, self.mask.per_layer,
                           inputs_embeds=suffix[None].expand(self.prefix.shape[0], -1, -1),
                           use_cache=True, position_ids=positions,
                           **{cache_keyword(self.encoder.backbone): self.cache})
        finally:
            # The next call sees the history alone again, as computed (a cropped view of
            # this call's keys would tie the next backward to this call's graph).
            for layer, (keys, values) in zip(self.cache.layers, self.history_states):
                layer.keys, layer.values = keys, values
        return out.last_hidden_state[:, -1]

    def _recomputed(self, suffix: torch.Tensor) -> torch.Tensor:
        batch, width = self.prefix.shape
        size = suffix.shape[0]
        blank = torch.full((size,), self.pad_id, device=self.prefix.device)
        ids, attention_mask, segments = single_layouts(self.prefix, self.lengths, blank,
                                                       self.pad_id)
        pos = torch.arange(width + size, device=ids.device)[None]
        end = self.lengths[:, None]
        history = F.pad(self.history, (0, 0, 0, size))
        placed = suffix[(pos - end).clamp(0, size - 1)]  # (B, W + S, H)
        in_suffix = ((pos >= end) & (pos < end + size))[..., None]
        embeds = torch.where(in_suffix, placed.to(history.dtype), history)
        hidden, attention_mask, segments = self.encoder.hidden_states(
            ids, attention_mask, segments, self.mask,
            global_token=self.encoder.global_query is not None, embeds=embeds)
        return pool(hidden, attention_mask, self.encoder.pooling, segments)


def prompted_text(encoder: ContrastiveEncoder, ids: torch.Tensor, attention_mask: torch.Tensor,
                  prompts: torch.Tensor) -> torch.Tensor:
    """(B, D) answer-tower embeddings of right-padded sentences with ``prompts`` (K, H) before
    their tokens (the answer tower's own segments and mask, the prompts as content)."""
    k = prompts.shape[0]
    embeds = with_prompts(encoder.backbone.get_input_embeddings()(ids), prompts, 0)
    ids = F.pad(ids, (k, 0))
    attention_mask = F.pad(attention_mask, (k, 0), value=1)
    return encoder.encode_answers(ids, attention_mask, embeds=embeds)


__all__ = ["PromptedUsers", "init_prompts", "prompted_text", "with_prompts"]

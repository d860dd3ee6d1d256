"""The hierarchical input layer (Query-as-Anchor): event, modality, user and tabular tokens.

Given a batch laid out by ``datamodules/hierarchical.py``, it builds the backbone's
``inputs_embeds`` in one pass, without a Python loop over users:

    e_p       = sum_f E[feature_pf]               (learned)  or  x_p + sum_f E[...]   (text)
    event     = A_m(e_p)                            per-modality adapter A_m of the event's modality
    modality  = A_mod(mean of e_p over the user's events of modality m)   one shared adapter
    user      = A_user(mean of e_p over all the user's events)
    tabular   = v_f * W_f + b_f                     one token per feature value
    text      = the token embedding (tags, query, <USER>)

An adapter is LayerNorm -> Linear -> GELU -> Linear into the LLM's hidden size, as in the paper.
With the text event encoder, x_p is the frozen sentence vector (the batch's
``user_event_vectors``) and the hashed features add only hour and week.
"""

from __future__ import annotations

import torch
from torch import nn

from maskstudy.datamodules.hierarchical import (
    BUILTIN_SLOTS, SLOT_EVENT, SLOT_MODALITY, SLOT_TABULAR, SLOT_USER, InputConfig,
)

SLOT_KEYS = ("user_slot_types", "user_slot_index", "user_slot_values", "user_event_features",
             "user_event_vectors")


class Adapter(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Linear."""

    def __init__(self, width: int, hidden: int):
        super().__init__(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                         nn.Linear(hidden, hidden))


class HierarchicalInput(nn.Module):
    def __init__(self, config: InputConfig, hidden_size: int,
                 modality_slots: int = BUILTIN_SLOTS):
        super().__init__()
        self.config = config
        width = config.text_dim if config.event_encoder == "text" else config.event_dim
        self.width = width
        self.features = nn.Embedding(config.hash_buckets, width, padding_idx=0)
        nn.init.normal_(self.features.weight, std=width ** -0.5)
        with torch.no_grad():
            self.features.weight[0].zero_()
        self.event_adapters = nn.ModuleList(Adapter(width, hidden_size)
                                            for _ in range(modality_slots))
        self.modality_adapter = Adapter(width, hidden_size) if config.modality_tokens else None
        self.user_adapter = Adapter(width, hidden_size) if config.user_token else None
        self.tabular_weight = nn.Parameter(torch.randn(config.max_tabular, hidden_size) * 0.02)
        self.tabular_bias = nn.Parameter(torch.zeros(config.max_tabular, hidden_size))

    def event_vectors(self, slots: dict) -> torch.Tensor:
        """(B, L, width) e_p at every position (0 where no event)."""
        vectors = self.features(slots["user_event_features"]).sum(-2)
        if self.config.event_encoder == "text":
            vectors = vectors + slots["user_event_vectors"].to(vectors.dtype)
        return vectors

    def forward(self, token_embeds: torch.Tensor, slots: dict) -> torch.Tensor:
        """``token_embeds`` (B, L, H) with every slot position replaced by its vector."""
        types, index = slots["user_slot_types"], slots["user_slot_index"]
        batch, length, hidden = token_embeds.shape
        dtype = token_embeds.dtype
        is_event = types == SLOT_EVENT
        vectors = self.event_vectors(slots) * is_event[..., None]
        out = token_embeds
        # Events: each modality's adapter on that modality's events (a loop over the
        # modalities, never over users).
        events = torch.zeros_like(token_embeds)
        for m, adapter in enumerate(self.event_adapters):
            where = is_event & (index == m)
            if where.any():
                events[where] = adapter(vectors[where]).to(dtype)
        out = torch.where(is_event[..., None], events, out)
        if self.modality_adapter is not None:
            # Per user and modality: the mean event vector, through the shared adapter.
            n_mod = len(self.event_adapters)
            slot = torch.where(is_event, index, n_mod)  # non-events to a spill bucket
            sums = vectors.new_zeros(batch, n_mod + 1, self.width).scatter_add_(
                1, slot[..., None].expand(-1, -1, self.width), vectors)
            counts = is_event.new_zeros(batch, n_mod + 1, dtype=vectors.dtype).scatter_add_(
                1, slot, is_event.to(vectors.dtype))
            means = sums[:, :n_mod] / counts[:, :n_mod, None].clamp_min(1)
            tokens = self.modality_adapter(means).to(dtype)  # (B, M, H)
            picked = tokens.gather(1, index.clamp(0, n_mod - 1)[..., None].expand(-1, -1, hidden))
            out = torch.where((types == SLOT_MODALITY)[..., None], picked, out)
        if self.user_adapter is not None:
            mean = vectors.sum(1) / is_event.sum(1, keepdim=True).clamp_min(1).to(vectors.dtype)
            user = self.user_adapter(mean).to(dtype)[:, None]  # (B, 1, H)
            out = torch.where((types == SLOT_USER)[..., None], user, out)
        feature = index.clamp(0, self.config.max_tabular - 1)
        tabular = (slots["user_slot_values"][..., None].to(dtype) * self.tabular_weight[feature]
                   + self.tabular_bias[feature])
        return torch.where((types == SLOT_TABULAR)[..., None], tabular, out)


def slots_of(batch: dict, rows: slice | None = None, device=None) -> dict | None:
    """The hierarchical fields of a batch (``None`` for text input), optionally a row slice
    and on a device."""
    if "user_slot_types" not in batch:
        return None
    out = {}
    for key in SLOT_KEYS:
        if key in batch:
            value = batch[key] if rows is None else batch[key][rows]
            out[key] = value.to(device) if device is not None else value
    return out


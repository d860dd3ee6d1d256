"""The mask family: one owner for how every attention mask is computed.

A mask is an additive float bias over (query i, key j), broadcast over heads:

    0          attend fully
    log w      attend with weight w in (0, 1)   (the softmax multiplies exp(score) by w)
    BLOCKED    never attend (the dtype's most negative value, not -inf, so a row whose keys
               are all blocked gives a uniform softmax instead of NaN)

Padding keys are always blocked. Biases depend on positions and segments (and, for ``mlp``, on
the token embeddings), so each strategy builds its bias once per forward with tensor ops: no
Python loops over positions and no host syncs. Configs select a strategy by its name in
``MASKS`` or, for a mask class of one's own, by ``module:Class`` (``mask.target``):

    causal          0 for j <= i, blocked for j > i
    bidirectional   0 everywhere
    hybrid          bidirectional inside the user-history segment, causal for everything
                    after it (the query and the <USER> anchor), as the GG-SM paper defines it
    window          causal plus the next ``reach`` keys (a growing-window scheduler sets it)
    soft            causal plus soft weights w on future keys (bias log w), shared or per
                    layer, learnable or set from outside (callbacks); w = 1 everywhere is
                    bidirectional, w -> 0 is causal. ``scope="history"`` opens only future keys
                    inside the history segment (the hybrid form).
    mlp             hybrid (b): a small MLP reads token i's input embedding and predicts the
                    weight of query i's future keys (trained end to end)
    global_query    hybrid (c): causal, plus a learnable global token (inserted before the
                    history by the encoder) that attends to the whole history

Per-key soft weights are indexed by a key's position among the real tokens of its sequence
(0 for the first non-padding token), so left and right padding see the same weights.

Every strategy also states itself in FlexAttention's terms (:meth:`AttentionMask.flex`): a
``mask_mod`` (which keys a query may attend; the block mask's sparsity) and, for soft masks, a
``score_mod`` per layer (what to add to a score). Evaluated densely, the two give exactly the
bias ``forward`` builds (tested), so ``backbone.attention: flex`` trains the same model.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .hierarchical import slots_of

# Segment ids, the contract with the datamodules' template; GLOBAL marks the global-query token
# the encoder inserts (never the template).
PAD_SEGMENT, HISTORY, QUERY, ANCHOR, GLOBAL = 0, 1, 2, 3, 4


def blocked_value(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


def causal_allowed(length: int, device: torch.device) -> torch.Tensor:
    """(L, L) bool: key j is at or before query i."""
    idx = torch.arange(length, device=device)
    return idx[None, :] <= idx[:, None]


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) position of each token among its sequence's real tokens (padding: clamped 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token, for right or left padding."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).amax(-1)


def hard_bias(allowed: torch.Tensor, attention_mask: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, L, L) bias from a boolean pattern ((L, L) or (B, L, L)); padding keys blocked."""
    keys = attention_mask.bool()[:, None, None, :]
    if allowed.dim() == 2:
        allowed = allowed[None, None]
    else:
        allowed = allowed[:, None]
    ok = allowed & keys
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(ok, zero, torch.tensor(blocked_value(dtype), dtype=dtype,
                                              device=attention_mask.device))


@dataclass
class FlexMask:
    """A mask for ``torch.nn.attention.flex_attention``: ``mask_mod(b, h, q, kv)`` is True
    where query q of row b may attend key kv; ``score_mod(layer)``, for soft masks, returns
    that layer's ``(score, b, h, q, kv) -> score + bias``. The index arguments are tensors, so
    both also evaluate densely on broadcast index grids (:func:`dense_bias`)."""

    mask_mod: Callable
    score_mod: Callable[[int], Callable] | None = None


def dense_bias(flex: FlexMask, batch: int, length: int, layer: int = 0,
               dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(B, 1, L, L) the additive bias a FlexMask describes (blocked where ``mask_mod`` is
    False): what FlexAttention computes with, as a tensor (for tests and inspection)."""
    b = torch.arange(batch, device=device)[:, None, None]
    q = torch.arange(length, device=device)[None, :, None]
    kv = torch.arange(length, device=device)[None, None, :]
    h = torch.zeros((), dtype=torch.long, device=device)
    allowed = flex.mask_mod(b, h, q, kv).expand(batch, length, length)
    score = torch.zeros(batch, length, length, dtype=dtype, device=device)
    if flex.score_mod is not None:
        score = flex.score_mod(layer)(score, b, h, q, kv)
    return torch.where(allowed, score, blocked_value(dtype))[:, None]


def _future_in_scope(segment_ids: torch.Tensor, scope: str) -> Callable:
    """(b, q, kv) -> True where key kv lies after query q and within ``scope``."""
    hist = segment_ids == HISTORY
    if scope == "history":
        return lambda b, q, kv: (kv > q) & hist[b, q] & hist[b, kv]
    return lambda b, q, kv: kv > q


class AttentionMask(nn.Module):
    """Base class. ``forward`` returns the bias: (B, 1, L, L), or (layers, B, 1, L, L) for
    per-layer strategies (``per_layer = True``).

    A mask says what the rest of the framework needs to know about it, so no code outside
    this family asks for a mask by name:

    - ``reads_embeddings``: ``forward`` also takes ``inputs_embeds`` (B, L, H), the token
      embeddings the backbone receives.
    - ``global_token``: the encoder inserts a learnable global token (segment ``GLOBAL``)
      before the history.
    - ``stateful``: its weights are trained or moved by a schedule; it gets the mask monitor
      (:meth:`monitor_metrics`) and cannot stand in as an inference mask.
    - ``heatmap``: heat maps of its pattern are drawn during training (the pattern moves, or
      is not one of the plain causal, hybrid and bidirectional ones).
    - ``prewarmable`` / ``rampable``: a GG-SM pre-warmup may set its weights / a ramp may
      open it (:meth:`ramp_scheduler` gives the callback that does).
    - :meth:`complete_options`: options that come from the backbone (sizes).
    """

    name = "base"
    per_layer = False
    reads_embeddings = False
    global_token = False
    stateful = False
    heatmap = False
    prewarmable = False
    rampable = False

    @classmethod
    def complete_options(cls, options: dict, *, hidden_size: int, layers: int) -> dict:
        """``options`` with what the backbone decides filled in (default: as given)."""
        return dict(options)

    @classmethod
    def serves_inference(cls) -> bool:
        """Whether this mask may be ``mask.inference``: it has no state to train, and the
        sequence it reads is the one the training mask read (no token of its own)."""
        return not cls.stateful and not cls.global_token

    def forward(self, segment_ids: torch.Tensor, attention_mask: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def flex(self, segment_ids: torch.Tensor, attention_mask: torch.Tensor,
             dtype: torch.dtype = torch.float32) -> FlexMask:
        """The same mask for FlexAttention (padding keys blocked, as in ``forward``)."""
        raise NotImplementedError(f"mask {self.name!r} has no FlexAttention form; use "
                                  f"backbone.attention: sdpa")

    def ramp_scheduler(self, start_step: int, end_step: int, shape: str, max_tokens: int):
        """The callback that opens this mask from ``start_step`` to ``end_step``."""
        raise ValueError(f"mask {self.name!r} has no ramp; schedule.ramp needs a mask that "
                         f"can be opened (soft, not learnable; window)")

    def monitor_metrics(self, batch: dict, encoder) -> dict[str, torch.Tensor]:
        """``mask/*`` values the mask monitor logs each step (stateful masks)."""
        return {}


class CausalMask(AttentionMask):
    name = "causal"

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        return hard_bias(causal_allowed(attention_mask.shape[-1], attention_mask.device),
                         attention_mask, dtype)

    def flex(self, segment_ids, attention_mask, dtype=torch.float32):
        keys = attention_mask.bool()
        return FlexMask(lambda b, h, q, kv: keys[b, kv] & (kv <= q))


class BidirectionalMask(AttentionMask):
    name = "bidirectional"

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        length = attention_mask.shape[-1]
        everything = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device)
        return hard_bias(everything, attention_mask, dtype)

    def flex(self, segment_ids, attention_mask, dtype=torch.float32):
        keys = attention_mask.bool()
        return FlexMask(lambda b, h, q, kv: keys[b, kv])


def masked_stats(values: torch.Tensor, where: torch.Tensor):
    """(mean, min, max) of ``values`` where ``where`` holds (broadcast), 0 where it never
    holds; tensors, without the host sync that boolean indexing costs."""
    where = where.expand_as(values)
    count = where.sum()
    mean = (values * where).sum() / count.clamp_min(1)
    empty = count == 0
    low = torch.where(empty, 0.0, torch.where(where, values, torch.inf).amin())
    high = torch.where(empty, 0.0, torch.where(where, values, -torch.inf).amax())
    return mean, low, high


def history_pairs(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool: query i and key j both lie in the user-history segment."""
    hist = segment_ids == HISTORY
    return hist[:, :, None] & hist[:, None, :]


class HybridMask(AttentionMask):
    """Bidirectional inside the history segment, causal for the query and the anchor."""

    name = "hybrid"

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        causal = causal_allowed(attention_mask.shape[-1], attention_mask.device)
        return hard_bias(causal[None] | history_pairs(segment_ids), attention_mask, dtype)

    def flex(self, segment_ids, attention_mask, dtype=torch.float32):
        keys, hist = attention_mask.bool(), segment_ids == HISTORY
        return FlexMask(lambda b, h, q, kv: keys[b, kv] & ((kv <= q) | (hist[b, q] & hist[b, kv])))


def open_future(opened_bias: torch.Tensor, segment_ids: torch.Tensor,
                attention_mask: torch.Tensor, scope: str, dtype: torch.dtype) -> torch.Tensor:
    """Causal bias whose future keys in ``scope`` carry ``opened_bias`` instead of blocked.

    ``opened_bias`` broadcasts against (B, L, L) (query i, key j); leading dimensions (layers)
    are kept. ``scope``: ``all`` future keys, or ``history`` (query and key both in the history
    segment). Padding keys stay blocked.
    """
    device = attention_mask.device
    keys = attention_mask.bool()[:, None, :]  # (B, 1, L)
    future = ~causal_allowed(attention_mask.shape[-1], device)
    opened = future & keys  # (B, L, L)
    if scope == "history":
        opened = opened & history_pairs(segment_ids)
    # What is not opened is the past (0) or blocked: future keys out of scope, padding.
    base = torch.where((future | ~keys) & ~opened,
                       torch.tensor(blocked_value(dtype), dtype=dtype, device=device),
                       torch.zeros((), dtype=dtype, device=device))
    return torch.where(opened, opened_bias.to(dtype), base)


def check_scope(scope: str, mask: str) -> None:
    if scope not in ("all", "history"):
        raise ValueError(f"{mask} mask scope {scope!r}: expected 'all' or 'history'")


class SoftFutureMask(AttentionMask):
    """Causal plus soft weights w on future keys: bias = log w_j for j > i.

    Args:
        positions: number of key positions with their own weight; ``None`` gives one uniform
            weight for every future key (the scheduler-only baseline). Keys beyond the table
            use its last entry.
        layers: 1 for one weight table shared by all layers, else one table per layer.
        init: initial weight in [0, 1]; 0 starts hard causal, 1 bidirectional.
        learnable: weights are ``sigmoid(logits)`` with ``logits`` a parameter (gradients reach
            them); otherwise ``weight`` is a buffer that callbacks set with :meth:`set_weights`.
        scope: ``all`` opens every future key; ``history`` only future keys inside the history
            segment (queries and anchor stay causal), the hybrid form.
        index: how a key finds its weight: ``absolute``, its position among the real tokens
            (the paper); ``anchor``, its distance back from the sequence's last real token
            (the anchor), so the newest events share weights whatever the length.

    Schedules (callbacks) keep their state here too, so checkpoints carry it: ``frozen``
    (the weights a ramp starts from; the initial weights until a pre-warmup freezes its own),
    ``alpha`` (the ramp's progress), ``phase`` (0 warmup, 1 ramping, 2 open) and
    ``importance`` (the pre-warmup's gradient importance per key position).
    """

    name = "soft"
    stateful = True
    heatmap = True

    @classmethod
    def complete_options(cls, options, *, hidden_size, layers):
        """``layers: all`` is one weight table per backbone layer."""
        options = dict(options)
        if options.get("layers") == "all":
            options["layers"] = layers
        return options

    def __init__(self, positions: int | None = None, layers: int = 1, init: float = 0.5,
                 learnable: bool = False, scope: str = "all", index: str = "absolute"):
        super().__init__()
        check_scope(scope, "soft")
        if index not in ("absolute", "anchor"):
            raise ValueError(f"soft mask index {index!r}: expected 'absolute' or 'anchor'")
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"soft mask init={init}: expected a weight in [0, 1]")
        if layers < 1:
            raise ValueError(f"soft mask layers={layers}: expected at least 1")
        self.scope = scope
        self.index = index
        self.learnable = learnable
        self.prewarmable = self.rampable = not learnable  # schedules set the weights
        self.per_layer = layers > 1
        shape = (layers, positions or 1)
        if learnable:
            w = min(max(init, 1e-4), 1 - 1e-4)
            self.logits = nn.Parameter(torch.full(shape, math.log(w / (1 - w))))
        else:
            self.register_buffer("weight", torch.full(shape, float(init)))
            self.register_buffer("frozen", torch.full(shape, float(init)))
            self.register_buffer("alpha", torch.zeros(()))
            self.register_buffer("phase", torch.zeros((), dtype=torch.long))
            # gradient importance per key position (GG-SM pre-warmup)
            self.register_buffer("importance", torch.zeros(shape[-1]))

    @property
    def positions(self) -> int:
        return self.weights().shape[-1]

    def key_index(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) row of the weight table each key uses (clamped to the table)."""
        pos = real_positions(attention_mask)
        if self.index == "anchor":
            pos = (attention_mask.long().sum(-1, keepdim=True) - 1 - pos).clamp_min(0)
        return pos.clamp_max(self.positions - 1)

    def weights(self) -> torch.Tensor:
        """(layers, positions) current weights in [0, 1]."""
        return torch.sigmoid(self.logits) if self.learnable else self.weight

    @torch.no_grad()
    def set_weights(self, w: torch.Tensor | float, check: bool = True) -> None:
        """Sets the (non-learnable) weights; a tensor broadcasts to (layers, positions).

        ``check`` validates that they lie in [0, 1], which for a tensor reads it on the host
        (a device sync); schedules whose weights lie in [0, 1] by construction pass False."""
        if self.learnable:
            raise RuntimeError("set_weights() is for callback-driven soft masks; this one "
                               "is learnable")
        w = torch.as_tensor(w, dtype=self.weight.dtype, device=self.weight.device)
        if check and ((w < 0) | (w > 1)).any():
            raise ValueError("soft mask weights must lie in [0, 1]")
        self.weight.copy_(w.expand_as(self.weight))

    def key_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(layers, B, L) the bias of key j where it is an opened future key: log w_j
        (blocked for w_j = 0)."""
        w = self.weights()  # (layers, P)
        table = torch.where(w > 0, torch.log(w.clamp_min(1e-30)), blocked_value(dtype)).to(dtype)
        return table[:, self.key_index(attention_mask)]

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        key_bias = self.key_bias(attention_mask, dtype)[:, :, None, :]  # (layers, B, 1, L)
        bias = open_future(key_bias, segment_ids, attention_mask, self.scope, dtype)[:, :, None]
        return bias if self.per_layer else bias[0]  # (layers, B, 1, L, L) or (B, 1, L, L)

    def flex(self, segment_ids, attention_mask, dtype=torch.float32):
        keys, opened = attention_mask.bool(), _future_in_scope(segment_ids, self.scope)
        key_bias = self.key_bias(attention_mask, dtype)

        def score_mod(layer: int):
            bias = key_bias[layer if self.per_layer else 0]

            def add(score, b, h, q, kv):
                return score + torch.where(kv > q, bias[b, kv], 0).to(score.dtype)
            return add

        return FlexMask(lambda b, h, q, kv: keys[b, kv] & ((kv <= q) | opened(b, q, kv)), score_mod)

    def ramp_scheduler(self, start_step, end_step, shape, max_tokens):
        # imported here: the schedule callbacks import this module
        from maskstudy.callbacks.mask_schedule import LinearMaskScheduler

        return LinearMaskScheduler(start_step, end_step, shape=shape)

    def monitor_metrics(self, batch, encoder):
        """The mean and min weight over the batch's real keys; for a scheduled mask also the
        ramp's ``alpha`` and ``phase``."""
        attention_mask = batch["user_attention_mask"]
        w = self.weights().detach()[:, self.key_index(attention_mask)]  # (layers, B, L)
        mean, low, _ = masked_stats(w, attention_mask.bool())
        metrics = {"mask/future_weight_mean": mean, "mask/future_weight_min": low}
        if not self.learnable:
            metrics |= {"mask/alpha": self.alpha.float(), "mask/phase": self.phase.float()}
        return metrics


class WindowMask(AttentionMask):
    """Causal plus a growing window: query i sees keys j <= i + reach (positions among the
    real tokens). reach 0 is causal, reach >= the sequence length bidirectional. ``reach`` is a
    buffer a scheduler sets (the GG-SM paper's text baseline: D(t) grows linearly or cosinely).
    """

    name = "window"
    stateful = True
    heatmap = True
    rampable = True

    def __init__(self, reach: int = 0):
        super().__init__()
        if reach < 0:
            raise ValueError(f"window reach={reach}: expected >= 0")
        self.register_buffer("reach", torch.tensor(int(reach)))
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("phase", torch.zeros((), dtype=torch.long))

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        pos = real_positions(attention_mask)
        allowed = pos[:, None, :] <= pos[:, :, None] + self.reach  # (B, L, L)
        return hard_bias(allowed, attention_mask, dtype)

    def flex(self, segment_ids, attention_mask, dtype=torch.float32):
        keys, pos, reach = attention_mask.bool(), real_positions(attention_mask), self.reach
        return FlexMask(lambda b, h, q, kv: keys[b, kv] & (pos[b, kv] <= pos[b, q] + reach))

    def ramp_scheduler(self, start_step, end_step, shape, max_tokens):
        """The window grows to ``max_tokens``: the ramp ends bidirectional."""
        from maskstudy.callbacks.mask_schedule import WindowScheduler

        return WindowScheduler(start_step, end_step, max_tokens, shape=shape)

    def monitor_metrics(self, batch, encoder):
        return {"mask/alpha": self.alpha.float(), "mask/phase": self.phase.float(),
                "mask/reach": self.reach.float()}


class MlpOpeningMask(AttentionMask):
    """Hybrid (b), MLP-driven opening: causal, plus a weight w_i on every future key of query i,

        w_i = sigmoid(MLP(h_i)),   bias_ij = log w_i   for j > i (in scope)

    MLP: LayerNorm -> Linear(hidden, inner) -> GELU -> Linear(inner, 1), trained end to end with
    the encoder. h_i is token i's input embedding (the layer-0 hidden state): the bias must exist
    before the first layer runs, and one bias shared by all layers keeps the cost of one small
    MLP per forward. The last layer starts at zero weights and bias logit(init), so every query
    starts with weight ``init`` and the MLP learns which queries should look ahead. ``scope``:
    ``history`` (default, the hybrid form: query and anchor stay causal) or ``all``.
    """

    name = "mlp"
    reads_embeddings = True
    stateful = True
    heatmap = True

    @classmethod
    def complete_options(cls, options, *, hidden_size, layers):
        """The MLP reads token embeddings of the backbone's width."""
        if "hidden_size" in options:
            raise ValueError("mlp mask hidden_size is set from the backbone; remove it")
        return {**options, "hidden_size": hidden_size}

    def __init__(self, hidden_size: int, inner: int = 64, init: float = 0.5,
                 scope: str = "history"):
        super().__init__()
        check_scope(scope, "mlp")
        if not 0.0 < init < 1.0:
            raise ValueError(f"mlp mask init={init}: expected a weight in (0, 1)")
        if hidden_size < 1 or inner < 1:
            raise ValueError(f"mlp mask hidden_size={hidden_size}, inner={inner}: expected >= 1")
        self.scope = scope
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, inner),
                                 nn.GELU(), nn.Linear(inner, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, math.log(init / (1 - init)))

    def logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, L) MLP(h_i); w_i = sigmoid of it."""
        return self.net(inputs_embeds.to(self.net[1].weight.dtype)).squeeze(-1)

    def forward(self, segment_ids, attention_mask, dtype=torch.float32, inputs_embeds=None):
        if inputs_embeds is None:
            raise ValueError("the mlp mask reads the token embeddings: pass inputs_embeds")
        # logsigmoid stays finite, so a closed query is strongly down-weighted, never NaN.
        query_bias = F.logsigmoid(self.logits(inputs_embeds))[:, :, None]  # (B, L, 1): all future keys of query i
        return open_future(query_bias, segment_ids, attention_mask, self.scope, dtype)[:, None]

    def flex(self, segment_ids, attention_mask, dtype=torch.float32, inputs_embeds=None):
        if inputs_embeds is None:
            raise ValueError("the mlp mask reads the token embeddings: pass inputs_embeds")
        keys, opened = attention_mask.bool(), _future_in_scope(segment_ids, self.scope)
        query_bias = F.logsigmoid(self.logits(inputs_embeds)).to(dtype)  # (B, L)

        def score_mod(layer: int):  # one bias for every layer
            def add(score, b, h, q, kv):
                return score + torch.where(kv > q, query_bias[b, q], 0).to(score.dtype)
            return add

        return FlexMask(lambda b, h, q, kv: keys[b, kv] & ((kv <= q) | opened(b, q, kv)), score_mod)

    @torch.no_grad()
    def monitor_metrics(self, batch, encoder):
        """The mean and min of w_i over the batch's history queries."""
        embeds = encoder.input_embeddings(batch["user_input_ids"], slots_of(batch))
        w = torch.sigmoid(self.logits(embeds))
        mean, low, _ = masked_stats(w, batch["user_segment_ids"] == HISTORY)
        return {"mask/future_weight_mean": mean, "mask/future_weight_min": low}


class GlobalQueryMask(AttentionMask):
    """Hybrid (c), global query: causal for every token, except the global-query token
    (segment ``GLOBAL``), which attends to every history token, before and after it. The
    encoder inserts that token (a learnable vector, like a CLS token) before the first real
    token, so every later token sees it as part of its past; ``global_token`` pooling reads the
    user embedding there. Without a global token in the sequence this is the causal mask."""

    name = "global_query"
    global_token = True
    heatmap = True

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        causal = causal_allowed(attention_mask.shape[-1], attention_mask.device)
        reaches = (segment_ids == GLOBAL)[:, :, None] & (segment_ids == HISTORY)[:, None, :]
        return hard_bias(causal[None] | reaches, attention_mask, dtype)

    def flex(self, segment_ids, attention_mask, dtype=torch.float32):
        keys, glob, hist = attention_mask.bool(), segment_ids == GLOBAL, segment_ids == HISTORY
        return FlexMask(lambda b, h, q, kv: keys[b, kv] & ((kv <= q) | (glob[b, q] & hist[b, kv])))


MASKS: dict[str, Callable[..., AttentionMask]] = {
    "causal": CausalMask,
    "bidirectional": BidirectionalMask,
    "hybrid": HybridMask,
    "soft": SoftFutureMask,
    "window": WindowMask,
    "mlp": MlpOpeningMask,
    "global_query": GlobalQueryMask,
}


def mask_class(name: str, target: str | None = None) -> type[AttentionMask]:
    """The class of a configured mask: ``target`` (``package.module:Class``, a mask of one's
    own) when given, else ``MASKS[name]``."""
    if target is None:
        if name not in MASKS:
            raise ValueError(f"unknown mask {name!r}: expected one of {sorted(MASKS)}, or "
                             f"mask.target: package.module:Class")
        return MASKS[name]
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"mask.target {target!r}: expected package.module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"mask.target {target!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, AttentionMask)):
        raise ValueError(f"mask.target {target!r} is not an AttentionMask subclass")
    return cls


def build_mask(name: str, options: dict | None = None, *, target: str | None = None,
               hidden_size: int | None = None, layers: int | None = None) -> AttentionMask:
    """The configured strategy. With the backbone's ``hidden_size`` and ``layers``, the
    options the backbone decides are filled in (:meth:`AttentionMask.complete_options`);
    without them the options are taken as given."""
    cls = mask_class(name, target)
    options = dict(options or {})
    if hidden_size is not None and layers is not None:
        options = cls.complete_options(options, hidden_size=hidden_size, layers=layers)
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"mask {name!r}: bad options {options}: {e}") from e

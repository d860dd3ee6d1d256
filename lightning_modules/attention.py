"""The one place where masks enter Hugging Face attention.

Three attention implementations are registered with transformers' ``AttentionInterface``:
``maskstudy_sdpa``, ``maskstudy_eager`` and ``maskstudy_flex``. The encoder hands the backbone
a 4D float bias as ``attention_mask``; transformers passes a 4D mask through untouched to every
layer. For per-layer biases the encoder also opens a :func:`layer_biases` context, and the
registered function picks ``bias[module.layer_idx]`` instead. Either way the bias is cast to
the query's dtype (bf16 under autocast) and added to the attention scores.

``maskstudy_flex`` (``backbone.attention: flex``) never builds the L x L bias: the encoder
passes a :class:`~torch.nn.attention.flex_attention.BlockMask` built once per forward from the
mask's ``mask_mod`` (transformers passes 4D block masks through as well) and opens a
:func:`flex_scores` context with the mask's per-layer ``score_mod``. The kernel is
``torch.compile``'d FlexAttention on CUDA; on a CPU, FlexAttention runs forward only (no
backward), unfused, which serves embedding and the equivalence tests. A dense bias (the
monitoring forward, plain HF use) falls back to sdpa.

The matching ``AttentionMaskInterface`` entries are registered too, so a call without a 4D mask
(plain HF usage of the same model) still builds the standard causal mask with padding.

Inside a :func:`record_future_attention` block both functions also measure, per layer, how much
attention each query puts on later keys (the monitoring forward; training never pays for it).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

SDPA, EAGER, FLEX = "maskstudy_sdpa", "maskstudy_eager", "maskstudy_flex"
IMPLEMENTATIONS = {"sdpa": SDPA, "eager": EAGER, "flex": FLEX}

_LAYER_BIASES: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "maskstudy_layer_biases", default=None)


@contextlib.contextmanager
def layer_biases(bias: torch.Tensor | None):
    """Within the block, layer ``k`` attends with ``bias[k]`` ((layers, B, 1, L, L))."""
    token = _LAYER_BIASES.set(bias)
    try:
        yield
    finally:
        _LAYER_BIASES.reset(token)


_FUTURE_MASS: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "maskstudy_future_mass", default=None)


@contextlib.contextmanager
def record_future_attention():
    """Within the block, every attention layer adds ``{layer_idx: (B, H, L)}`` to the yielded
    dict: for each query i the softmax attention mass on keys j > i."""
    masses: dict[int, torch.Tensor] = {}
    token = _FUTURE_MASS.set(masses)
    try:
        yield masses
    finally:
        _FUTURE_MASS.reset(token)


def _attention_probs(module, query, key, attention_mask, scaling):
    key = repeat_kv(key, getattr(module, "num_key_value_groups", 1))
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


def _record_future_mass(module, probs: torch.Tensor) -> None:
    masses = _FUTURE_MASS.get()
    if masses is not None:
        length = probs.shape[-1]
        later = torch.ones(length, length, dtype=torch.bool, device=probs.device).triu(1)
        masses[module.layer_idx] = (probs * later).sum(-1).detach()


def _select(module, query: torch.Tensor, attention_mask: torch.Tensor | None):
    per_layer = _LAYER_BIASES.get()
    if per_layer is not None:
        attention_mask = per_layer[module.layer_idx]
    if attention_mask is not None and attention_mask.dtype != query.dtype:
        attention_mask = attention_mask.to(query.dtype)
    return attention_mask


def maskstudy_sdpa(module, query, key, value, attention_mask, **kwargs):
    attention_mask = _select(module, query, attention_mask)
    if _FUTURE_MASS.get() is not None:
        _record_future_mass(module, _attention_probs(module, query, key, attention_mask,
                                                     kwargs.get("scaling")))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def maskstudy_eager(module, query, key, value, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs):
    """Plain softmax attention with an additive bias (query, key: (B, H, L, D))."""
    attention_mask = _select(module, query, attention_mask)
    probs = _attention_probs(module, query, key, attention_mask, scaling)
    _record_future_mass(module, probs)
    weights = torch.nn.functional.dropout(probs.to(query.dtype), p=dropout,
                                          training=module.training)
    value = repeat_kv(value, getattr(module, "num_key_value_groups", 1))
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


_FLEX_SCORES: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "maskstudy_flex_scores", default=None)


@dataclass
class FlexBias:
    """What the encoder hands a flex backbone instead of a dense bias: the block mask (shared
    by every layer) and ``score_mod(layer)`` (None for hard masks)."""

    block_mask: BlockMask
    score_mod: Callable[[int], Callable] | None


@contextlib.contextmanager
def _unfused_is_expected():
    """FlexAttention warns when it runs without torch.compile; on a CPU that is the plan."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile.*")
        yield


def flex_bias(flex, batch: int, length: int, device) -> FlexBias:
    """Builds the block mask of a :class:`~maskstudy.lightning_modules.masks.FlexMask` once."""
    with _unfused_is_expected():
        block = create_block_mask(flex.mask_mod, batch, None, length, length, device=device)
    return FlexBias(block, flex.score_mod)


@contextlib.contextmanager
def flex_scores(score_mod: Callable[[int], Callable] | None):
    """Within the block, flex layer ``k`` adds ``score_mod(k)`` to its scores."""
    token = _FLEX_SCORES.set(score_mod)
    try:
        yield
    finally:
        _FLEX_SCORES.reset(token)


_COMPILED_FLEX = None


def _flex_kernel(query: torch.Tensor):
    """The fused (compiled) kernel on CUDA; the unfused reference elsewhere."""
    global _COMPILED_FLEX
    if query.is_cuda:
        if _COMPILED_FLEX is None:
            # dynamic=None: after the first new sequence length, lengths become symbolic
            # instead of recompiling for each one (dynamic padding)
            _COMPILED_FLEX = torch.compile(flex_attention)
        return _COMPILED_FLEX

    def unfused(*args, **kwargs):
        with _unfused_is_expected():
            return flex_attention(*args, **kwargs)
    return unfused


def maskstudy_flex(module, query, key, value, attention_mask, dropout: float = 0.0,
                   scaling: float | None = None, **kwargs):
    if not isinstance(attention_mask, BlockMask):  # a dense bias or HF's own mask
        return maskstudy_sdpa(module, query, key, value, attention_mask, dropout=dropout,
                              scaling=scaling, **kwargs)
    if dropout and module.training:
        raise ValueError("backbone.attention: flex has no attention dropout; use sdpa for a "
                         "backbone trained with attention_dropout > 0")
    mods = _FLEX_SCORES.get()
    out = _flex_kernel(query)(
        query, key, value, score_mod=None if mods is None else mods(module.layer_idx),
        block_mask=attention_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(SDPA, maskstudy_sdpa)
AttentionInterface.register(EAGER, maskstudy_eager)
AttentionInterface.register(FLEX, maskstudy_flex)
AttentionMaskInterface.register(SDPA, sdpa_mask)
AttentionMaskInterface.register(EAGER, eager_mask)
AttentionMaskInterface.register(FLEX, sdpa_mask)  # plain HF use: sdpa with HF's own mask


def implementation(backend: str) -> str:
    if backend not in IMPLEMENTATIONS:
        raise ValueError(f"attention backend {backend!r}: expected one of {list(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[backend]

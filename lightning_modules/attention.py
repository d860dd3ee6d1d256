"""The one place where masks enter Hugging Face attention.

Two attention implementations are registered with transformers' ``AttentionInterface``:
``maskstudy_sdpa`` and ``maskstudy_eager``. The encoder hands the backbone a 4D float bias as
``attention_mask``; transformers passes a 4D mask through untouched to every layer. For
per-layer biases the encoder also opens a :func:`layer_biases` context, and the registered
function picks ``bias[module.layer_idx]`` instead. Either way the bias is cast to the query's
dtype (bf16 under autocast) and added to the attention scores.

The matching ``AttentionMaskInterface`` entries are registered too, so a call without a 4D mask
(plain HF usage of the same model) still builds the standard causal mask with padding.

Inside a :func:`record_future_attention` block both functions also measure, per layer, how much
attention each query puts on later keys (the monitoring forward; training never pays for it).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

SDPA, EAGER = "maskstudy_sdpa", "maskstudy_eager"
IMPLEMENTATIONS = {"sdpa": SDPA, "eager": EAGER}

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


AttentionInterface.register(SDPA, maskstudy_sdpa)
AttentionInterface.register(EAGER, maskstudy_eager)
AttentionMaskInterface.register(SDPA, sdpa_mask)
AttentionMaskInterface.register(EAGER, eager_mask)


def implementation(backend: str) -> str:
    if backend not in IMPLEMENTATIONS:
        raise ValueError(f"attention backend {backend!r}: expected one of {list(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[backend]

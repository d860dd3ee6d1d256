"""The one place where masks enter Hugging Face attention.

Two attention implementations are registered with transformers' ``AttentionInterface``:
``maskstudy_sdpa`` and ``maskstudy_eager``. The encoder hands the backbone a 4D float bias as
``attention_mask``; transformers passes a 4D mask through untouched to every layer. For
per-layer biases the encoder also opens a :func:`layer_biases` context, and the registered
function picks ``bias[module.layer_idx]`` instead. Either way the bias is cast to the query's
dtype (bf16 under autocast) and added to the attention scores.

The matching ``AttentionMaskInterface`` entries are registered too, so a call without a 4D mask
(plain HF usage of the same model) still builds the standard causal mask with padding.
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


def _select(module, query: torch.Tensor, attention_mask: torch.Tensor | None):
    per_layer = _LAYER_BIASES.get()
    if per_layer is not None:
        attention_mask = per_layer[module.layer_idx]
    if attention_mask is not None and attention_mask.dtype != query.dtype:
        attention_mask = attention_mask.to(query.dtype)
    return attention_mask


def maskstudy_sdpa(module, query, key, value, attention_mask, **kwargs):
    return sdpa_attention_forward(module, query, key, value,
                                  _select(module, query, attention_mask), **kwargs)


def maskstudy_eager(module, query, key, value, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs):
    """Plain softmax attention with an additive bias (query, key: (B, H, L, D))."""
    attention_mask = _select(module, query, attention_mask)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
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

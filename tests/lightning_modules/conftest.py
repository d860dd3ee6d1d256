"""Tiny random decoders for the model tests (no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from maskstudy.lightning_modules.attention import implementation

VOCAB = 60
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
             use_cache=False)
ARCHITECTURES = {
    "qwen2": lambda: Qwen2Config(**SMALL),
    "qwen3": lambda: Qwen3Config(**SMALL, head_dim=8),
    "llama": lambda: LlamaConfig(**SMALL),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
}


def tiny_model(backend: str = "sdpa", arch: str = "qwen2", seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModel.from_config(ARCHITECTURES[arch](), attn_implementation=implementation(backend))
    return model.eval()


@pytest.fixture(params=["eager", "sdpa"])
def backend(request):
    return request.param

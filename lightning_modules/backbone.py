"""The decoder backbone: a tiny Qwen2 built from a config, or any local HF decoder.

The default needs no download: a Qwen2-architecture decoder sized for a CPU study, with the
tokenizer's vocabulary. ``name_or_path`` points at a pretrained model directory instead
(Qwen2/Qwen2.5, Qwen3, Llama, Mistral, ...); it is loaded with ``local_files_only``, its
embeddings are resized to the tokenizer, and LoRA (peft) and gradient checkpointing are
optional. The base model is built without an LM head: the encoder pools hidden states. The
joint next-token loss (``loss.ntp_weight``) asks :func:`build_decoder` for a pretrained model's
own head as well; a config-built model gets its head from the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, Qwen2Config

from .attention import IMPLEMENTATIONS, implementation


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 32
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class BackboneConfig:
    name_or_path: str | None = None  # None: the tiny Qwen2 below, randomly initialised
    attention: str = "sdpa"  # sdpa | eager | flex (FlexAttention; trains on a CUDA GPU only)
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 2048
    rope_theta: float = 10000.0
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def check(self) -> None:
        """Raises ValueError('backbone.<key> <what is wrong>')."""
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"backbone.attention expected one of {list(IMPLEMENTATIONS)}")
        if self.name_or_path is None and (self.hidden_size % self.heads
                                          or self.heads % self.kv_heads):
            raise ValueError(f"backbone.hidden_size {self.hidden_size} must divide by heads "
                             f"({self.heads}) and heads by kv_heads ({self.kv_heads})")


def tiny_qwen2_config(cfg: BackboneConfig, vocab_size: int) -> Qwen2Config:
    cfg.check()
    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, use_cache=False,
    )


def build_backbone(cfg: BackboneConfig, vocab_size: int,
                   special_token_ids: Sequence[int] = ()) -> nn.Module:
    """The base decoder (``AutoModel``), wired to maskstudy's attention implementation.
    ``special_token_ids``: the template's special tokens, whose embedding rows stay trainable
    under LoRA (a pretrained model never learned them)."""
    return build_decoder(cfg, vocab_size, special_token_ids)[0]


def build_decoder(cfg: BackboneConfig, vocab_size: int, special_token_ids: Sequence[int] = (),
                  lm_head: bool = False) -> tuple[nn.Module, nn.Module | None]:
    """(base decoder, LM head): :func:`build_backbone`, plus with ``lm_head`` a pretrained
    model's own vocabulary head (loaded with the model, so a tied head stays the embedding
    matrix; frozen under LoRA, like every weight the adapters do not own). The head is None
    for a config-built model or without ``lm_head``."""
    attn = implementation(cfg.attention)
    head = None
    if cfg.name_or_path is None:
        model = AutoModel.from_config(tiny_qwen2_config(cfg, vocab_size), attn_implementation=attn)
    else:
        loader = AutoModelForCausalLM if lm_head else AutoModel
        model = loader.from_pretrained(cfg.name_or_path, local_files_only=True,
                                       attn_implementation=attn)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            model.resize_token_embeddings(vocab_size)
        if lm_head:
            head, model = model.get_output_embeddings(), model.get_decoder()
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x naming
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.lora.enabled:
        model = _with_lora(model, cfg.lora, special_token_ids)
        if head is not None:
            head.requires_grad_(False)
    return model, head


def _with_lora(model: nn.Module, cfg: LoraConfig, special_token_ids: Sequence[int]) -> nn.Module:
    """LoRA adapters on ``cfg.targets``; the rows of ``special_token_ids`` in the input
    embedding train too (peft's trainable tokens), every other weight is frozen."""
    try:
        import peft
    except ImportError as e:
        raise ImportError("backbone.lora.enabled needs peft: pip install 'maskstudy[lora]'") from e
    tokens = {"trainable_token_indices": list(special_token_ids)} if special_token_ids else {}
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules=list(cfg.targets), bias="none", **tokens)
    return peft.get_peft_model(model, config)


def num_layers(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or config.get_text_config().num_hidden_layers


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size

"""A pretrained backbone from a local model directory, adapted with LoRA, as
docs/pretrained.md describes it: the run reads the model's own tokenizer, and the template's
special tokens, which the model never learned, train with the adapters."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, Qwen2Config

from maskstudy.datamodules.tokenizer import hf_tokenizer, load_tokenizer, special_ids
from maskstudy.experiments.config import load_config
from maskstudy.experiments.run import fit
from tests.helpers import tiny


@pytest.fixture
def model_dir(world, tmp_path):
    """A tiny Qwen2 saved as a pretrained model is, with a tokenizer of its own."""
    path = tmp_path / "pretrained"
    tokenizer = hf_tokenizer(world / "tokenizer.json")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    AutoModel.from_config(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64)).save_pretrained(path)
    return path


def test_lora_on_a_pretrained_directory_trains_adapters_and_the_template_tokens(
        model_dir, world, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_config("causal", tiny(world, tmp_path, f"backbone.name_or_path={model_dir}",
                                     "backbone.lora.enabled=true", "backbone.lora.r=4",
                                     "pretrain.steps=0", "eval.references=false"))
    assert cfg.data.tokenizer == str(model_dir)  # the model's own, not the dataset's BPE
    result = fit(cfg)
    saved = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state, hp = saved["state_dict"], saved["hyper_parameters"]
    assert hp["special_token_ids"] == special_ids(load_tokenizer(model_dir)).all()
    (delta,) = [v for k, v in state.items() if "trainable_tokens_delta" in k]
    assert delta.shape[0] == len(hp["special_token_ids"]) and delta.abs().sum() > 0
    (embedding,) = [v for k, v in state.items() if k.endswith("token_adapter.base_layer.weight")]
    original = AutoModel.from_pretrained(model_dir).get_input_embeddings().weight
    torch.testing.assert_close(embedding, original.detach())  # every other row as loaded

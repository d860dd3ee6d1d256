"""Pooling, the two towers, and backbones: tiny Qwen2 default, other architectures, local
pretrained directories, LoRA and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from maskstudy.lightning_modules.backbone import BackboneConfig, LoraConfig, build_backbone
from maskstudy.lightning_modules.encoder import ContrastiveEncoder, last_index, pool
from maskstudy.lightning_modules.masks import (
    ANCHOR, HISTORY, BidirectionalMask, CausalMask, HybridMask,
)
from tests.lightning_modules.conftest import ARCHITECTURES, VOCAB, tiny_model

H = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
MASK = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
SEG = torch.tensor([[1, 2, 3, 0, 0], [0, 1, 1, 2, 3]])


def test_pooling():
    torch.testing.assert_close(pool(H, MASK, "user_token", SEG), torch.stack([H[0, 2], H[1, 4]]))
    torch.testing.assert_close(pool(H, MASK, "last"), torch.stack([H[0, 2], H[1, 4]]))
    torch.testing.assert_close(pool(H, MASK, "mean"), torch.stack([H[0, :3].mean(0), H[1, 1:].mean(0)]))
    w0, w1 = torch.tensor([1.0, 2, 3]), torch.tensor([1.0, 2, 3, 4])
    expected = torch.stack([(H[0, :3] * w0[:, None]).sum(0) / 6, (H[1, 1:] * w1[:, None]).sum(0) / 10])
    torch.testing.assert_close(pool(H, MASK, "weighted_mean"), expected)
    assert last_index(MASK).tolist() == [2, 4]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(H, MASK, "max")


def encoder(model, mask, **kw):
    return ContrastiveEncoder(model, mask, hidden_size=32, projector_dims=(16, 8), **kw)


def test_embeddings_are_normalised_and_shaped():
    enc = encoder(tiny_model(), HybridMask())
    ids = torch.randint(3, VOCAB, (2, 5))
    users, hidden = enc.encode_users(ids, MASK, SEG)
    assert users.shape == (2, 8) and hidden.shape == (2, 5, 32)
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(2))
    answers = enc.encode_answers(ids, MASK)
    torch.testing.assert_close(answers.norm(dim=-1), torch.ones(2))


def test_answer_tower_mask_policy():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (1, 6))
    att = torch.ones(1, 6, dtype=torch.long)
    ids2 = ids.clone()
    ids2[0, 4] = (ids2[0, 4] + 5) % VOCAB

    def first_token_moves(policy):
        enc = encoder(model, HybridMask(), answer_mask=policy, pooling="mean")
        seg = enc.answer_segments(att)
        mask = enc.mask if policy == "same" else enc._fixed_answer_mask[policy]
        a, _, _ = enc.hidden_states(ids, att, seg, mask)
        b, _, _ = enc.hidden_states(ids2, att, seg, mask)
        return not torch.allclose(a[0, 0], b[0, 0])

    assert not first_token_moves("causal")
    assert first_token_moves("bidirectional")
    assert first_token_moves("same")  # hybrid: answer content is bidirectional
    assert encoder(model, CausalMask()).answer_segments(att)[0].tolist() == [HISTORY] * 5 + [ANCHOR]


def test_inference_mask_override():
    enc = encoder(tiny_model(), CausalMask())
    ids = torch.randint(3, VOCAB, (2, 5))
    causal, _ = enc.encode_users(ids, MASK, SEG)
    bidir, _ = enc.encode_users(ids, MASK, SEG, mask=BidirectionalMask())
    assert not torch.allclose(causal, bidir)


def test_default_backbone_is_a_tiny_qwen2():
    model = build_backbone(BackboneConfig(), vocab_size=500)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 4
    assert model.get_input_embeddings().num_embeddings == 500
    assert model.config._attn_implementation == "maskstudy_sdpa"
    with pytest.raises(ValueError, match="hidden_size 100 must divide by heads"):
        build_backbone(BackboneConfig(hidden_size=100, heads=3), 100)
    with pytest.raises(ValueError, match="attention backend"):
        build_backbone(BackboneConfig(attention="flash"), 100)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_causal_mask_reproduces_each_architecture(arch, backend):
    """Our causal bias through our attention equals the model's own causal attention."""
    ours = tiny_model(backend, arch)
    torch.manual_seed(0)
    native = AutoModel.from_config(ARCHITECTURES[arch](), attn_implementation="sdpa").eval()
    ids = torch.randint(3, VOCAB, (2, 7))
    att = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    seg = att * HISTORY
    with torch.no_grad():
        mine = ours(input_ids=ids, attention_mask=CausalMask()(seg, att)).last_hidden_state
        theirs = native(input_ids=ids, attention_mask=att).last_hidden_state
    real = att.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-4)


def test_local_pretrained_directory_is_loaded_and_resized(tmp_path):
    tiny_model("sdpa", "llama").save_pretrained(tmp_path / "llama")
    model = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "llama"), attention="eager"),
                           vocab_size=VOCAB + 20)
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().num_embeddings == VOCAB + 20
    assert model.config._attn_implementation == "maskstudy_eager"
    with pytest.raises(OSError):
        build_backbone(BackboneConfig(name_or_path=str(tmp_path / "missing")), VOCAB)


def test_lora_trains_only_adapters():
    pytest.importorskip("peft")
    cfg = BackboneConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64,
                         lora=LoraConfig(enabled=True, r=4, alpha=8))
    model = build_backbone(cfg, vocab_size=VOCAB)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    enc = ContrastiveEncoder(model, HybridMask(), hidden_size=32, projector_dims=(16, 8))
    users, _ = enc.encode_users(torch.randint(3, VOCAB, (2, 5)), MASK, SEG)
    users.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if "lora_B" in n or "lora_A" in n)


def test_lora_trains_the_template_tokens_rows_and_nothing_else_of_the_embedding():
    """A pretrained model never learned the template's special tokens: under LoRA their
    embedding rows train (peft's trainable tokens), every other row stays as it was."""
    pytest.importorskip("peft")
    cfg = BackboneConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64,
                         lora=LoraConfig(enabled=True, r=4, alpha=8))
    special = [5, 7]
    model = build_backbone(cfg, vocab_size=VOCAB, special_token_ids=special)
    embed = model.get_input_embeddings()
    probe_ids = torch.tensor([5, 7, 9, 11])
    before = embed(probe_ids).detach().clone()
    enc = ContrastiveEncoder(model, HybridMask(), hidden_size=32, projector_dims=(16, 8))
    params = [p for p in enc.parameters() if p.requires_grad]
    ids = torch.tensor([[5, 9, 7, 11, 3], [7, 11, 9, 5, 3]])
    users, _ = enc.encode_users(ids, MASK, SEG)
    users.sum().backward()
    torch.optim.SGD(params, lr=1.0).step()
    after = embed(probe_ids).detach()
    assert not torch.allclose(after[:2], before[:2])  # the special tokens' rows moved ...
    torch.testing.assert_close(after[2:], before[2:])  # ... no other row did



def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = BackboneConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64,
                             gradient_checkpointing=checkpointing)
        model = build_backbone(cfg, vocab_size=VOCAB).train()
        enc = ContrastiveEncoder(model, HybridMask(), hidden_size=32, projector_dims=(16, 8))
        torch.manual_seed(1)
        users, _ = enc.encode_users(torch.randint(3, VOCAB, (2, 5)), MASK, SEG)
        users.pow(2).sum().backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])

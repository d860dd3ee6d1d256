"""FlexAttention: every mask's mods equal its dense bias, and a flex backbone computes what the
sdpa one does (forward on any device; backward where FlexAttention has one, i.e. on CUDA)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskstudy.experiments.config import EXPERIMENTS_DIR, ConfigError, load_config
from maskstudy.lightning_modules.attention import FlexBias
from maskstudy.lightning_modules.masks import dense_bias
from maskstudy.lightning_modules.module import ContrastiveMaskingModule
from tests.helpers import tiny
from tests.lightning_modules.test_mask_path import CASES, SMALL, batch, module

IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
CUDA = torch.cuda.is_available()


def flex_twin(m: ContrastiveMaskingModule) -> ContrastiveMaskingModule:
    """The same module (same weights) with ``backbone.attention: flex``."""
    cfg = dataclasses.replace(m.config, backbone=dataclasses.replace(SMALL, attention="flex"))
    twin = ContrastiveMaskingModule(cfg, vocab_size=50)
    twin.load_state_dict(m.state_dict())
    return twin


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_flex_mods_are_the_dense_bias(name, options, left):
    m = module(name, options)
    b = batch(left)
    with torch.no_grad():
        model_inputs, att, seg, bias = m.encoder.inputs(
            b["user_input_ids"], b["user_attention_mask"], b["user_segment_ids"], m.mask,
            global_token=m.mask.global_token)
        extra = {"inputs_embeds": model_inputs["inputs_embeds"]} if m.mask.reads_embeddings else {}
        flex = m.mask.flex(seg, att, torch.float32, **extra)
    size, length = att.shape
    for layer in range(SMALL.layers):
        expected = bias[layer] if m.mask.per_layer else bias
        assert torch.equal(dense_bias(flex, size, length, layer), expected)


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_a_flex_backbone_computes_what_sdpa_does(name, options, left):
    m = module(name, options).eval()
    twin = flex_twin(m).eval()
    b = batch(left)
    args = b["user_input_ids"], b["user_attention_mask"], b["user_segment_ids"]
    with torch.no_grad():
        _, flex_bias = twin.encoder.inputs(*args, twin.mask, twin.mask.global_token)[2:]
        ours, hidden = m.encoder.encode_users(*args)
        theirs, flex_hidden = twin.encoder.encode_users(*args)
        answers = m.encoder.encode_answers(b["answer_input_ids"], b["answer_attention_mask"])
        flex_answers = twin.encoder.encode_answers(b["answer_input_ids"],
                                                   b["answer_attention_mask"])
    assert isinstance(flex_bias, FlexBias)  # the flex path ran, not an sdpa fallback
    real = b["user_attention_mask"].bool()
    if m.mask.global_token:  # one more position, before the first real token
        real = torch.cat([real[:, :1], real], 1) | torch.nn.functional.pad(real, (0, 1))
    torch.testing.assert_close(flex_hidden[real], hidden[real], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(flex_answers, answers, atol=2e-5, rtol=1e-4)


def test_hard_masks_skip_blocks():
    """FlexAttention skips whole 128 x 128 blocks that a mask blocks: a quarter of them under
    causal at 256 tokens, none under bidirectional."""
    b = batch(False, size=1, length=256)
    b["user_attention_mask"][:] = 1
    sparsity = {}
    for name in ("causal", "bidirectional"):
        twin = flex_twin(module(name, {}))
        bias = twin.encoder.inputs(b["user_input_ids"], b["user_attention_mask"],
                                   b["user_segment_ids"], twin.mask)[3]
        sparsity[name] = bias.block_mask.sparsity()
    assert sparsity == {"causal": pytest.approx(25.0), "bidirectional": 0.0}


@pytest.mark.skipif(CUDA, reason="on a CUDA machine flex trains")
def test_flex_training_on_a_cpu_fails_before_training(world, tmp_path):
    with pytest.raises(ConfigError, match="ggsm.yaml: key 'backbone.attention'.*CUDA"):
        load_config(EXPERIMENTS_DIR / "ggsm.yaml", tiny(world, tmp_path, "backbone.attention=flex"))
    # evaluating (forward only) is fine
    load_config(EXPERIMENTS_DIR / "ggsm.yaml",
                tiny(world, tmp_path, "backbone.attention=flex", "trainer.train=false"))


@pytest.mark.skipif(not CUDA, reason="FlexAttention has no backward on a CPU")
@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_flex_gradients_match_sdpa_on_cuda(name, options):
    m = module(name, options).cuda()
    twin = flex_twin(m).cuda()
    b = {k: v.cuda() for k, v in batch(False).items()}
    grads = []
    for model in (m, twin):
        model._loss(b).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-3)

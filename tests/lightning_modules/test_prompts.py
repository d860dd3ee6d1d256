"""Prompt vectors after the scenario query: the cached and the recomputed path agree, the
prompts sit before the anchor, gradients reach the prompts and nothing else."""

from __future__ import annotations

import pytest
import torch

from maskstudy.lightning_modules.encoder import ContrastiveEncoder
from maskstudy.lightning_modules.masks import build_mask
from maskstudy.lightning_modules.prompts import PromptedUsers, prompted_text, with_prompts
from maskstudy.lightning_modules.scenarios import (
    cached_anchor_states, compact_prefix, single_layouts,
)
from tests.lightning_modules.conftest import tiny_model
from tests.lightning_modules.test_scenarios import PAD, USER, users

QUERY = [5, 6, 7, USER]


def encoder(mask_name: str = "causal", backend: str = "sdpa", **options) -> ContrastiveEncoder:
    mask = build_mask(mask_name, options, hidden_size=32, layers=2)
    enc = ContrastiveEncoder(tiny_model(backend), mask, hidden_size=32, projector_dims=(16, 8))
    return enc.eval().requires_grad_(False)


def prompts(k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, 32, generator=torch.Generator().manual_seed(seed))


def test_with_prompts_inserts_before_the_given_position():
    embeds = torch.arange(3.0)[:, None].expand(3, 2)
    out = with_prompts(embeds, torch.full((2, 2), -1.0), 2)
    assert out[:, 0].tolist() == [0, 1, -1, -1, 2]


@pytest.mark.parametrize("mask_name,options", [("causal", {}), ("hybrid", {}),
                                               ("soft", {"init": 0.3, "scope": "history"})])
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_the_cached_history_equals_the_recomputed_sequence(backend, mask_name, options, left):
    """One cache serves any number of prompts; no prompt at all is the plain scenario
    embedding of the Query-as-Anchor path."""
    enc = encoder(mask_name, backend, **options)
    ids, attn = users(left)
    cached = PromptedUsers(enc, ids, attn, QUERY, enc.mask, PAD)
    full = PromptedUsers(enc, ids, attn, QUERY, enc.mask, PAD, cached=False)
    assert (cached.path, full.path) == ("cache", "recompute")
    with torch.no_grad():
        for k in (3, 0, 1):
            p = prompts(k)
            a, b = cached.pooled(p), full.pooled(p)
            again = cached.pooled(p)  # the cache is back to the history alone after each call
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(again, a)
        plain = cached_anchor_states(enc, ids, attn, [torch.tensor(QUERY)], enc.mask, PAD)
        torch.testing.assert_close(cached.pooled(prompts(0)), plain[:, 0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(cached.pooled(prompts(seed=1)), cached.pooled(prompts()))


def test_the_prompts_sit_after_the_query_and_before_the_anchor():
    """Writing the prompt vectors' own token ids into the suffix reproduces the prompted
    state: the sequence is [history, query, prompts, anchor]."""
    enc = encoder()
    ids, attn = users(False)
    prompt_ids = torch.tensor([20, 21])
    p = enc.backbone.get_input_embeddings().weight[prompt_ids]
    prefix, lengths = compact_prefix(ids, attn)
    suffix = torch.tensor([5, 6, 7, 20, 21, USER])
    single, mask, segments = single_layouts(prefix, lengths, suffix, PAD)
    with torch.no_grad():
        hidden, _, _ = enc.hidden_states(single, mask, segments, enc.mask)
        expected = hidden[torch.arange(3), lengths + suffix.numel() - 1]
        got = PromptedUsers(enc, ids, attn, QUERY, enc.mask, PAD).pooled(p)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_name", ["bidirectional", "global_query"])
def test_masks_that_cannot_share_the_history_recompute_with_gradients(mask_name):
    enc = encoder(mask_name)
    ids, attn = users(False)
    users_ = PromptedUsers(enc, ids, attn, QUERY, enc.mask, PAD)
    assert users_.path == "recompute"
    p = prompts(2).requires_grad_(True)
    users_.pooled(p).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(w.grad is None for w in enc.parameters())


def test_gradients_reach_the_prompts_through_the_cache_and_no_weight():
    enc = encoder()
    ids, attn = users(False)
    p = prompts().requires_grad_(True)
    prompted = PromptedUsers(enc, ids, attn, QUERY, enc.mask, PAD)
    first = prompted.pooled(p)
    first.sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(w.grad is None for w in enc.parameters())
    # a training loop: every step a fresh graph over the same cached history
    optimizer = torch.optim.SGD([p], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        prompted.pooled(p).pow(2).sum().backward()
        optimizer.step()
    full = PromptedUsers(enc, ids, attn, QUERY, enc.mask, PAD, cached=False)
    with torch.no_grad():
        torch.testing.assert_close(prompted.pooled(p), full.pooled(p), atol=1e-5, rtol=1e-5)


def test_text_prompts_change_the_sentence_embedding_and_take_gradients():
    enc = encoder()
    ids = torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    p = prompts(2).requires_grad_(True)
    out = prompted_text(enc, ids, attn, p)
    with torch.no_grad():
        plain = enc.encode_answers(ids, attn)
    assert out.shape == plain.shape == (2, 8)
    assert not torch.allclose(out, plain)
    out.sum().backward()
    assert p.grad.abs().sum() > 0

"""Multi-scenario embeddings, packed or from a KV cache, equal per-query recompute, or are
refused."""

from __future__ import annotations

import pytest
import torch

from maskstudy.lightning_modules.encoder import ContrastiveEncoder
from maskstudy.lightning_modules.masks import (
    BidirectionalMask, CausalMask, HybridMask, build_mask,
)
from maskstudy.lightning_modules.scenarios import (
    NotCacheable, cached_anchor_states, compact_prefix, packed_anchor_states, scenario_biases,
    single_layouts,
)
from tests.lightning_modules.conftest import VOCAB, tiny_model

PAD, USER = 0, 1


def users(left: bool, lengths=(9, 4, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefixes of different lengths, padded on the left or the right."""
    gen = torch.Generator().manual_seed(1)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        where = slice(width - n, width) if left else slice(0, n)
        ids[b, where] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[b, where] = 1
    return ids, mask


SUFFIXES = [torch.tensor([5, 6, 7, USER]), torch.tensor([8, USER]),
            torch.tensor([9, 10, 11, 12, 13, 14, USER])]


def recomputed(encoder, ids, mask, attn_mask) -> torch.Tensor:
    """(B, N, H) anchor states, each (user, query) its own forward."""
    prefix, lengths = compact_prefix(ids, mask)
    out = []
    for suffix in SUFFIXES:
        single, single_mask, segments = single_layouts(prefix, lengths, suffix, PAD)
        hidden, _, _ = encoder.hidden_states(single, single_mask, segments, attn_mask)
        anchor = lengths + suffix.numel() - 1
        out.append(hidden[torch.arange(len(ids)), anchor])
    return torch.stack(out, 1)


OPTIONS = {"causal": {}, "hybrid": {}, "soft": {"init": 0.3, "scope": "history"}}


PATHS = {"packed": packed_anchor_states, "cached": cached_anchor_states}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mask_name", list(OPTIONS) + ["soft-per-layer"])
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_one_history_for_every_query_equals_per_query_recompute(backend, mask_name, left, path):
    """Causal, hybrid and soft masks opened over the history only (one weight for all
    layers, or one per layer): the history never sees the query, so one history serves
    every query, laid out packed or held in a KV cache."""
    options = OPTIONS.get(mask_name, {"init": 0.3, "scope": "history", "layers": 2})
    mask = build_mask(mask_name.removesuffix("-per-layer"), options, hidden_size=32, layers=2)
    enc = ContrastiveEncoder(tiny_model(backend), mask, hidden_size=32, projector_dims=(16, 8))
    enc.eval()
    ids, attn = users(left)
    with torch.no_grad():
        expected = recomputed(enc, ids, attn, mask)
        states = PATHS[path](enc, ids, attn, SUFFIXES + SUFFIXES[:1], mask, PAD)
    assert states.shape == (3, len(SUFFIXES) + 1, 32)
    torch.testing.assert_close(states[:, :3], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[:, 3], expected[:, 0], atol=1e-5, rtol=1e-5)
    # The three queries see the same history yet read different states.
    assert not torch.allclose(states[:, 0], states[:, 1])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mask", [BidirectionalMask(), build_mask(
    "soft", {"init": 0.3, "scope": "all"}, hidden_size=32, layers=2)], ids=["bidirectional",
                                                                           "soft-all"])
def test_a_mask_whose_history_sees_the_query_is_refused(mask, path):
    enc = ContrastiveEncoder(tiny_model(), mask, hidden_size=32, projector_dims=(16, 8))
    ids, attn = users(False)
    with pytest.raises(NotCacheable, match="history tokens attend to the query"):
        PATHS[path](enc, ids, attn, SUFFIXES, enc.mask, PAD)


def test_suffix_bias_keeps_each_query_to_the_history_and_itself():
    prefix, lengths = compact_prefix(*users(False, lengths=(3, 2)))
    history, suffix, positions = scenario_biases(CausalMask(), prefix, lengths, [2, 1, 2],
                                                 torch.float32)
    seen = (suffix[:, 0] == 0).long()
    assert history.shape == (2, 1, 3, 3) and suffix.shape == (2, 1, 5, 8)
    # user 1 (2 history tokens): block rows see the history, then only their own block
    assert seen[1].tolist() == [[1, 1, 0, 1, 0, 0, 0, 0], [1, 1, 0, 1, 1, 0, 0, 0],
                                [1, 1, 0, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0, 1, 0],
                                [1, 1, 0, 0, 0, 0, 1, 1]]
    assert positions.tolist() == [[3, 4, 3, 3, 4], [2, 3, 2, 2, 3]]


def test_single_layouts_put_the_query_right_after_each_history():
    prefix, lengths = compact_prefix(*users(True, lengths=(2, 3)))
    ids, mask, segments = single_layouts(prefix, lengths, torch.tensor([7, USER]), PAD)
    assert ids[0, 2:4].tolist() == [7, USER] and ids[0, 4].item() == PAD
    assert ids[1, 3:5].tolist() == [7, USER]
    assert segments[0].tolist() == [1, 1, 2, 3, 0] and mask[0].tolist() == [1, 1, 1, 1, 0]
    assert isinstance(CausalMask(), CausalMask) and isinstance(HybridMask(), HybridMask)

"""Behavioural tests of every mask on a tiny random model, for eager and sdpa."""

from __future__ import annotations

import pytest
import torch

from maskstudy.lightning_modules.attention import layer_biases
from maskstudy.lightning_modules.masks import (
    ANCHOR, HISTORY, QUERY, BidirectionalMask, CausalMask, HybridMask, SoftFutureMask,
    blocked_value, build_mask,
)
from tests.lightning_modules.conftest import VOCAB, tiny_model

# 6 history tokens, 2 query tokens, the anchor; then 2 padding positions.
SEGMENTS = [HISTORY] * 6 + [QUERY] * 2 + [ANCHOR]
L_REAL = len(SEGMENTS)


def batch(ids=None, pad=2, left=False, pad_id=0):
    g = torch.Generator().manual_seed(1)
    real = ids if ids is not None else torch.randint(3, VOCAB, (L_REAL,), generator=g)
    seg = torch.tensor(SEGMENTS)
    pads = torch.full((pad,), pad_id)
    zeros = torch.zeros(pad, dtype=torch.long)
    if left:
        x, s, m = torch.cat([pads, real]), torch.cat([zeros, seg]), torch.cat([zeros, torch.ones(L_REAL, dtype=torch.long)])
    else:
        x, s, m = torch.cat([real, pads]), torch.cat([seg, zeros]), torch.cat([torch.ones(L_REAL, dtype=torch.long), zeros])
    return x[None], s[None], m[None]


def hidden(model, mask, ids, seg, att):
    bias = mask(seg, att)
    with torch.no_grad():
        if mask.per_layer:
            with layer_biases(bias):
                return model(input_ids=ids, attention_mask=bias[0]).last_hidden_state[0]
        return model(input_ids=ids, attention_mask=bias).last_hidden_state[0]


def changed_positions(model, mask, position):
    ids, seg, att = batch()
    base = hidden(model, mask, ids, seg, att)
    ids2 = ids.clone()
    ids2[0, position] = (ids2[0, position] + 7) % (VOCAB - 3) + 3
    moved = (hidden(model, mask, ids2, seg, att) - base).abs().amax(-1) > 1e-5
    return set(torch.nonzero(moved[:L_REAL]).flatten().tolist())


def test_causal_future_never_reaches_the_past(backend):
    model = tiny_model(backend)
    for p in range(L_REAL):
        assert changed_positions(model, CausalMask(), p) == set(range(p, L_REAL))


def test_bidirectional_everything_sees_everything(backend):
    model = tiny_model(backend)
    for p in (0, 3, 7, 8):
        assert changed_positions(model, BidirectionalMask(), p) == set(range(L_REAL))


def test_hybrid_history_is_bidirectional_query_and_anchor_causal(backend):
    model = tiny_model(backend)
    # a history token reaches all history (before and after it) and what follows
    assert changed_positions(model, HybridMask(), 2) == set(range(L_REAL))
    # the query never reaches the history, nor earlier query tokens
    assert changed_positions(model, HybridMask(), 7) == {7, 8}
    assert changed_positions(model, HybridMask(), 6) == {6, 7, 8}
    assert changed_positions(model, HybridMask(), 8) == {8}


def test_soft_mask_opens_future_keys(backend):
    model = tiny_model(backend)
    assert changed_positions(model, SoftFutureMask(positions=16, init=0.3), 8) == set(range(L_REAL))
    history_only = SoftFutureMask(positions=16, init=0.3, scope="history")
    assert changed_positions(model, history_only, 5) == set(range(L_REAL))
    assert changed_positions(model, history_only, 7) == {7, 8}


@pytest.mark.parametrize("soft_scope,hard", [("all", BidirectionalMask), ("history", HybridMask)])
def test_soft_limits_equal_the_hard_masks(backend, soft_scope, hard):
    model = tiny_model(backend)
    ids, seg, att = batch()
    closed = SoftFutureMask(positions=16, init=0.0, scope=soft_scope)
    opened = SoftFutureMask(positions=16, init=1.0, scope=soft_scope)
    causal = hidden(model, CausalMask(), ids, seg, att)
    torch.testing.assert_close(hidden(model, closed, ids, seg, att), causal)
    torch.testing.assert_close(hidden(model, opened, ids, seg, att), hidden(model, hard(), ids, seg, att))
    # log w -> -inf approaches causal continuously
    nearly = SoftFutureMask(positions=16, init=1e-12, scope=soft_scope)
    torch.testing.assert_close(hidden(model, nearly, ids, seg, att)[:L_REAL], causal[:L_REAL],
                               atol=1e-5, rtol=1e-4)


def test_soft_bias_is_log_w_on_future_keys():
    ids, seg, att = batch(pad=1)
    mask = SoftFutureMask(positions=32, init=0.25)
    bias = mask(seg, att)[0, 0]
    blocked = blocked_value(torch.float32)
    assert bias[0, 0] == 0 and bias[3, 1] == 0  # the past
    torch.testing.assert_close(bias[1, 4], torch.log(torch.tensor(0.25)))
    assert (bias[:, -1] == blocked).all()  # the padding key
    w = torch.linspace(0.1, 1.0, 32)
    mask.set_weights(w)
    torch.testing.assert_close(mask(seg, att)[0, 0, 2, 7], torch.log(w[7]))


def test_uniform_zero_weight_is_blocked_not_log_zero():
    ids, seg, att = batch()
    bias = SoftFutureMask(positions=None, init=0.0)(seg, att)
    assert torch.isfinite(bias).all()
    assert (bias[0, 0][~torch.tril(torch.ones(11, 11, dtype=torch.bool))] == blocked_value(torch.float32)).all()


@pytest.mark.parametrize("name,options", [("causal", {}), ("bidirectional", {}), ("hybrid", {}),
                                          ("soft", {"positions": 32, "init": 0.4})])
@pytest.mark.parametrize("pad", [1, 4])
def test_padding_content_and_amount_never_matter(backend, name, options, pad):
    model = tiny_model(backend)
    mask = build_mask(name, options)
    ids, seg, att = batch(pad=0)
    reference = hidden(model, mask, ids, seg, att)
    for left in (False, True):
        for pad_id in (0, 17):
            x, s, m = batch(ids[0], pad=pad, left=left, pad_id=pad_id)
            out = hidden(model, mask, x, s, m)
            real = out[pad:] if left else out[:L_REAL]
            torch.testing.assert_close(real, reference, atol=2e-5, rtol=1e-4)


def test_eager_and_sdpa_agree():
    ids, seg, att = batch()
    eager, sdpa = tiny_model("eager"), tiny_model("sdpa")
    for mask in (CausalMask(), HybridMask(), BidirectionalMask(), SoftFutureMask(positions=16, init=0.3)):
        torch.testing.assert_close(hidden(eager, mask, ids, seg, att)[:L_REAL],
                                   hidden(sdpa, mask, ids, seg, att)[:L_REAL], atol=1e-5, rtol=1e-4)


def test_per_layer_biases_reach_their_layers(backend):
    model = tiny_model(backend)
    ids, seg, att = batch()
    mixed = SoftFutureMask(positions=16, layers=2, init=0.0)
    mixed.set_weights(torch.tensor([[0.0], [1.0]]))  # layer 0 causal, layer 1 bidirectional
    out = hidden(model, mixed, ids, seg, att)[:L_REAL]
    for uniform in (0.0, 1.0):
        same = SoftFutureMask(positions=16, layers=2, init=uniform)
        assert not torch.allclose(out, hidden(model, same, ids, seg, att)[:L_REAL], atol=1e-4)
    # layer 1 lets the future into position 0; with both layers causal nothing would reach it
    assert changed_positions(model, mixed, 5) == set(range(L_REAL))
    causal_first = SoftFutureMask(positions=16, layers=2, init=0.0)
    causal_first.set_weights(torch.tensor([[1.0], [0.0]]))  # layer 0 open, layer 1 causal
    # after a bidirectional layer 0, every hidden state carries the future into layer 1
    assert changed_positions(model, causal_first, 5) == set(range(L_REAL))
    both_closed = SoftFutureMask(positions=16, layers=2, init=0.0)
    assert changed_positions(model, both_closed, 5) == set(range(5, L_REAL))


def test_gradients_reach_learnable_biases(backend):
    model = tiny_model(backend)
    mask = SoftFutureMask(positions=16, init=0.5, learnable=True)
    ids, seg, att = batch()
    bias = mask(seg, att)
    out = model(input_ids=ids, attention_mask=bias).last_hidden_state
    out[0, :L_REAL].pow(2).sum().backward()
    grad = mask.logits.grad[0]
    assert grad[1:L_REAL].abs().min() > 0  # every real future key position gets a gradient
    assert grad[L_REAL:].abs().max() == 0  # positions past the sequence get none


def test_set_weights_is_for_callback_masks():
    with pytest.raises(RuntimeError, match="learnable"):
        SoftFutureMask(positions=4, learnable=True).set_weights(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SoftFutureMask(positions=4).set_weights(1.5)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown mask 'causl'"):
        build_mask("causl")
    with pytest.raises(ValueError, match="scope"):
        build_mask("soft", {"scope": "everything"})
    with pytest.raises(ValueError, match="bad options"):
        build_mask("causal", {"init": 0.3})


def test_bias_is_broadcast_over_heads_and_built_without_loops():
    ids, seg, att = batch()
    for mask in (CausalMask(), HybridMask(), BidirectionalMask(), SoftFutureMask(positions=8)):
        bias = mask(seg.repeat(3, 1), att.repeat(3, 1))
        assert bias.shape == (3, 1, 11, 11)


def test_layer_k_attends_with_bias_k():
    model = tiny_model("eager")
    ids, seg, att = batch()
    mask = SoftFutureMask(positions=16, layers=2, init=0.0)
    mask.set_weights(torch.tensor([[0.0], [0.5]]))
    bias = mask(seg, att)
    with torch.no_grad(), layer_biases(bias):
        attn = model(input_ids=ids, attention_mask=bias[0], output_attentions=True).attentions
    future = ~torch.tril(torch.ones(11, 11, dtype=torch.bool))
    assert attn[0][0][:, future].abs().max() == 0  # layer 0: causal
    assert attn[1][0][:, :L_REAL, :L_REAL][:, future[:L_REAL, :L_REAL]].min() > 0  # layer 1: open


def test_bias_follows_the_query_dtype_under_autocast(backend):
    """bf16 autocast (the GPU recipe) works on the same bias; checked here with CPU autocast."""
    model = tiny_model(backend)
    ids, seg, att = batch()
    for mask in (HybridMask(), SoftFutureMask(positions=16, init=0.3)):
        reference = hidden(model, mask, ids, seg, att)[:L_REAL]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = hidden(model, mask, ids, seg, att)[:L_REAL]
        assert torch.isfinite(out).all()
        assert not torch.equal(out.float(), reference)  # computed in bf16 ...
        torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)  # ... correctly


def test_window_mask_opens_reach_keys_ahead(backend):
    from maskstudy.lightning_modules.masks import WindowMask
    model = tiny_model(backend)
    ids, seg, att = batch()
    assert changed_positions(model, WindowMask(reach=0), 6) == set(range(6, L_REAL))
    # two layers of reach 2: the perturbation travels 2 keys back per layer
    assert changed_positions(model, WindowMask(reach=2), 6) == set(range(2, L_REAL))
    assert changed_positions(model, WindowMask(reach=1), 6) == set(range(4, L_REAL))
    torch.testing.assert_close(hidden(model, WindowMask(reach=50), ids, seg, att),
                               hidden(model, BidirectionalMask(), ids, seg, att))
    torch.testing.assert_close(hidden(model, WindowMask(reach=0), ids, seg, att),
                               hidden(model, CausalMask(), ids, seg, att))
    # padding: the window counts real tokens, so left padding changes nothing
    real = ids[0, :L_REAL]
    x, s, m = batch(real, pad=3, left=True)
    torch.testing.assert_close(hidden(model, WindowMask(reach=2), x, s, m)[3:],
                               hidden(model, WindowMask(reach=2), *batch(real, pad=0)),
                               atol=2e-5, rtol=1e-4)

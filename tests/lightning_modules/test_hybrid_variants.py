"""The paper's hybrid variants (b) MLP-driven opening and (c) global query, through the encoder
on a tiny random model, for eager and sdpa."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskstudy.lightning_modules.encoder import ContrastiveEncoder, insert_global_token
from maskstudy.lightning_modules.masks import (
    GLOBAL, HISTORY, CausalMask, GlobalQueryMask, HybridMask, MlpOpeningMask, SoftFutureMask,
    blocked_value, build_mask,
)
from tests.lightning_modules.conftest import VOCAB, tiny_model
from tests.lightning_modules.test_masks import L_REAL, batch

HIDDEN = 32


def encoder(model, mask, **kw):
    return ContrastiveEncoder(model, mask, hidden_size=HIDDEN, projector_dims=(16, 8), **kw)


def states(enc, ids, seg, att):
    """Hidden states of the original positions (the global token removed) and, if any, the
    global token's own state."""
    with torch.no_grad():
        hidden, att2, seg2 = enc.hidden_states(ids, att, seg, enc.mask,
                                               global_token=enc.global_query is not None)
    glob = seg2 == GLOBAL
    if not glob.any():
        return hidden[0], None
    return hidden[0][~glob[0]], hidden[0][glob[0]][0]


def changed(enc, position):
    ids, seg, att = batch()
    base, base_g = states(enc, ids, seg, att)
    ids2 = ids.clone()
    ids2[0, position] = (ids2[0, position] + 7) % (VOCAB - 3) + 3
    moved, moved_g = states(enc, ids2, seg, att)
    out = set(torch.nonzero((moved - base).abs().amax(-1)[:L_REAL] > 1e-5).flatten().tolist())
    if base_g is not None and (moved_g - base_g).abs().max() > 1e-5:
        out.add("global")
    return out


def randomise(mask: MlpOpeningMask, seed: int = 0) -> MlpOpeningMask:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last = mask.net[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g))
    return mask


# --- (b) MLP-driven opening -------------------------------------------------------------


def test_mlp_mask_at_init_equals_the_uniform_soft_hybrid(backend):
    model = tiny_model(backend)
    ids, seg, att = batch()
    mlp = states(encoder(model, MlpOpeningMask(HIDDEN, init=0.3)), ids, seg, att)[0]
    soft = states(encoder(model, SoftFutureMask(positions=16, init=0.3, scope="history")),
                  ids, seg, att)[0]
    torch.testing.assert_close(mlp[:L_REAL], soft[:L_REAL])


def test_mlp_bias_is_log_sigmoid_of_the_mlp_per_query():
    ids, seg, att = batch(pad=1)
    mask = randomise(MlpOpeningMask(HIDDEN, inner=8))
    embeds = torch.randn(1, ids.shape[1], HIDDEN)
    bias = mask(seg, att, inputs_embeds=embeds)[0, 0]
    logw = F.logsigmoid(mask.logits(embeds))[0]
    assert bias[2, 1] == 0 and bias[4, 4] == 0  # the past and self
    torch.testing.assert_close(bias[1, 4], logw[1])  # history -> future history key: log w_i
    torch.testing.assert_close(bias[3, 5], logw[3])
    assert not torch.isclose(logw[1], logw[3])  # the weight depends on the query's embedding
    blocked = blocked_value(torch.float32)
    assert bias[2, 7] == blocked  # a query-segment key stays closed for history
    assert bias[6, 7] == blocked  # query tokens stay causal
    assert (bias[:, -1] == blocked).all()  # padding
    with pytest.raises(ValueError, match="inputs_embeds"):
        mask(seg, att)


def test_mlp_mask_opens_history_only(backend):
    enc = encoder(tiny_model(backend), randomise(MlpOpeningMask(HIDDEN, init=0.4)))
    assert changed(enc, 5) == set(range(L_REAL))  # a late history token reaches all of it
    assert changed(enc, 7) == {7, 8}  # the query stays causal
    assert changed(enc, 8) == {8}


def test_mlp_is_trained_end_to_end(backend):
    mask = MlpOpeningMask(HIDDEN, init=0.5)
    enc = encoder(tiny_model(backend), mask)
    ids, seg, att = batch()
    users, _ = enc.encode_users(ids, att, seg)
    users.pow(3).sum().backward()
    assert mask.net[-1].weight.grad.abs().max() > 0
    assert mask.net[-1].bias.grad.abs().max() > 0
    # the gradient also reaches the embeddings through the MLP's input
    assert enc.backbone.get_input_embeddings().weight.grad.abs().max() > 0


def test_mlp_option_errors():
    with pytest.raises(ValueError, match=r"init=1.0.*\(0, 1\)"):
        build_mask("mlp", {"hidden_size": 8, "init": 1.0})
    with pytest.raises(ValueError, match="scope"):
        build_mask("mlp", {"hidden_size": 8, "scope": "query"})


# --- (c) global query -------------------------------------------------------------------


@pytest.mark.parametrize("left", [False, True])
def test_global_token_goes_before_the_first_real_token(left):
    embeds = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    real = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    att = real.flip(-1) if left else real
    seg = att * HISTORY
    token = torch.tensor([-1.0, -2.0])
    out, att2, seg2 = insert_global_token(embeds, att, seg, token)
    assert out.shape == (2, 5, 2)
    for b in range(2):
        first = int(att[b].argmax())
        assert seg2[b, first] == GLOBAL and att2[b, first] == 1
        torch.testing.assert_close(out[b, first], token)
        keep = torch.ones(5, dtype=torch.bool)
        keep[first] = False
        torch.testing.assert_close(out[b][keep], embeds[b])  # everything else in order
        assert att2[b][keep].tolist() == att[b].tolist()
        assert seg2[b][keep].tolist() == seg[b].tolist()


def test_global_query_sees_all_history_and_everything_else_is_causal(backend):
    enc = encoder(tiny_model(backend), GlobalQueryMask())
    assert enc.global_query is not None and enc.global_query.requires_grad
    # the global token reads the last history token; every later layer-2 state reads the global
    # token, so with two layers the whole sequence moves
    assert changed(enc, 5) == set(range(L_REAL)) | {"global"}
    # the global token does not read the query: query tokens stay causal
    assert changed(enc, 7) == {7, 8}
    # a hard causal mask with the same inserted token: the future never moves the past
    causal = encoder(enc.backbone, GlobalQueryMask())
    causal.mask = CausalMask()
    assert changed(causal, 5) == set(range(5, L_REAL))


def test_global_query_without_the_token_is_causal():
    ids, seg, att = batch()
    torch.testing.assert_close(GlobalQueryMask()(seg, att), CausalMask()(seg, att))


@pytest.mark.parametrize("make", [lambda: GlobalQueryMask(),
                                  lambda: randomise(MlpOpeningMask(HIDDEN, init=0.4))])
def test_padding_side_and_amount_never_matter(backend, make):
    enc = encoder(tiny_model(backend), make())
    ids, seg, att = batch(pad=0)
    reference = enc.encode_users(ids, att, seg)[0]
    for left in (False, True):
        x, s, m = batch(ids[0], pad=3, left=left, pad_id=17)
        torch.testing.assert_close(enc.encode_users(x, m, s)[0], reference, atol=2e-5, rtol=1e-4)


def test_global_token_pooling_and_gradient(backend):
    enc = encoder(tiny_model(backend), GlobalQueryMask(), pooling="global_token")
    ids, seg, att = batch()
    users, hidden = enc.encode_users(ids, att, seg)
    assert hidden.shape[1] == ids.shape[1] + 1
    expected = F.normalize(enc.projector(hidden[:, 0]), dim=-1)  # right padding: token at 0
    torch.testing.assert_close(users, expected)
    users.sum().backward()
    assert enc.global_query.grad.abs().max() > 0
    with pytest.raises(ValueError, match="global_token pooling needs"):
        encoder(enc.backbone, HybridMask(), pooling="global_token")


def test_answer_tower_has_no_global_token():
    enc = encoder(tiny_model(), GlobalQueryMask(), pooling="global_token")
    ids = torch.randint(3, VOCAB, (2, 5))
    att = torch.ones(2, 5, dtype=torch.long)
    answers = enc.encode_answers(ids, att)
    causal = encoder(enc.backbone, CausalMask())
    causal.projector = enc.projector
    torch.testing.assert_close(answers, causal.encode_answers(ids, att))
    assert math.isclose(float(answers.norm(dim=-1).mean()), 1.0, rel_tol=1e-5)


# --- sampled attention on later keys --------------------------------------------------


def test_future_attention_mass_per_layer(backend):
    model = tiny_model(backend)
    ids, seg, att = batch(pad=2)

    def mass(mask):
        return encoder(model, mask).future_attention(ids, att, seg)

    assert mass(CausalMask()).tolist() == [0.0, 0.0]  # two layers, nothing ahead
    bidir = mass(build_mask("bidirectional"))
    assert (bidir > 0.2).all()  # uniform-ish attention: on average about half is ahead
    hybrid = mass(HybridMask())
    assert (hybrid > 0).all() and (hybrid < bidir).all()  # query and anchor stay causal
    gq = mass(GlobalQueryMask())
    assert (gq > 0).all() and (gq < hybrid).all()  # only the global token looks ahead


def test_future_attention_agrees_across_backends_and_changes_nothing():
    ids, seg, att = batch()
    eager, sdpa = encoder(tiny_model("eager"), HybridMask()), encoder(tiny_model("sdpa"), HybridMask())
    torch.testing.assert_close(eager.future_attention(ids, att, seg),
                               sdpa.future_attention(ids, att, seg))
    from maskstudy.lightning_modules.attention import record_future_attention
    with torch.no_grad():
        plain = sdpa.encode_users(ids, att, seg)[0]
        with record_future_attention() as masses:
            recorded = sdpa.encode_users(ids, att, seg)[0]
    assert sorted(masses) == [0, 1]
    torch.testing.assert_close(plain, recorded)

"""Hierarchical input, model side: the tokens the input layer builds, and every mask on them."""

from __future__ import annotations

import pytest
import torch

from maskstudy.datamodules.datamodules import ContrastiveDataModule
from maskstudy.datamodules.hierarchical import (
    MODALITY_INDEX, SLOT_EVENT, SLOT_MODALITY, SLOT_TABULAR, SLOT_USER, InputConfig,
)
from maskstudy.lightning_modules.backbone import BackboneConfig
from maskstudy.lightning_modules.hierarchical import HierarchicalInput, slots_of
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig, ModuleConfig

SMALL = BackboneConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def hier_batch(world):
    dm = ContrastiveDataModule(path=str(world), validate=False, max_tokens=128, num_workers=0,
                               batch_size=4, input=InputConfig(mode="hierarchical"))
    dm.setup()
    return next(iter(dm.train_dataloader())), dm.vocab_size


def module(vocab, mask="causal", options=None, **input_options):
    torch.manual_seed(0)
    cfg = ModuleConfig(backbone=SMALL, mask=MaskConfig(mask, options or {}),
                       input=InputConfig(mode="hierarchical", **input_options))
    return ContrastiveMaskingModule(cfg, vocab_size=vocab).eval()


def test_every_slot_gets_its_token(hier_batch):
    batch, vocab = hier_batch
    layer = module(vocab).encoder.input_layer
    slots = slots_of(batch)
    tokens = torch.randn(*batch["user_input_ids"].shape, 32)
    out = layer(tokens, slots)
    types, index = slots["user_slot_types"], slots["user_slot_index"]
    e = layer.features(slots["user_event_features"]).sum(-2)
    b = 0
    events = (types[b] == SLOT_EVENT)
    p = int(torch.nonzero(events)[0])  # the first event: its modality's adapter
    m = int(index[b, p])
    torch.testing.assert_close(out[b, p], layer.event_adapters[m](e[b, p]))
    bills = events & (index[b] == MODALITY_INDEX["bill"])
    q = int(torch.nonzero((types[b] == SLOT_MODALITY) & (index[b] == MODALITY_INDEX["bill"]))[0])
    torch.testing.assert_close(out[b, q], layer.modality_adapter(e[b, bills].mean(0)))
    u = int(torch.nonzero(types[b] == SLOT_USER)[0])
    torch.testing.assert_close(out[b, u], layer.user_adapter(e[b, events].mean(0)))
    t = int(torch.nonzero(types[b] == SLOT_TABULAR)[0])
    f = int(index[b, t])
    torch.testing.assert_close(out[b, t], slots["user_slot_values"][b, t] * layer.tabular_weight[f]
                               + layer.tabular_bias[f])
    text = types == 0
    torch.testing.assert_close(out[text], tokens[text])  # tags, query, <USER>, padding


def test_users_do_not_leak_into_each_other(hier_batch):
    batch, vocab = hier_batch
    layer = module(vocab).encoder.input_layer
    slots = slots_of(batch)
    tokens = torch.zeros(*batch["user_input_ids"].shape, 32)
    changed = {k: v.clone() for k, v in slots.items()}
    changed["user_event_features"][1] = torch.randint_like(changed["user_event_features"][1], 1, 999)
    a, b = layer(tokens, slots), layer(tokens, changed)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


@pytest.mark.parametrize("mask,options,future_matters", [
    ("causal", {}, False), ("hybrid", {}, True), ("bidirectional", {}, True),
    ("soft", {"positions": 256, "init": 0.5}, True), ("mlp", {}, True),
])
def test_masks_on_event_tokens(hier_batch, mask, options, future_matters):
    """Changing the last event of user 0 reaches the first event's hidden state exactly when
    the mask opens the future over the history. (Without summary tokens: they summarise every
    event and come first, so through them even a causal model sees later events; next test.)"""
    batch, vocab = hier_batch
    batch = dict(batch)
    keep = batch["user_slot_types"] != SLOT_USER
    keep &= batch["user_slot_types"] != SLOT_MODALITY
    assert keep.all(dim=0)[:6].sum() == 0  # (the fixture's sequences start with them)
    m = module(vocab, mask, options, user_token=False, modality_tokens=False)
    # Drop the summary positions: every row starts with the same 6 of them.
    for key, value in list(batch.items()):
        if torch.is_tensor(value) and key.startswith("user_"):
            batch[key] = value[:, 6:]
    slots = slots_of(batch)
    types = slots["user_slot_types"][0]
    events = torch.nonzero(types == SLOT_EVENT).flatten()
    first, last = int(events[0]), int(events[-1])
    changed = {k: v.clone() for k, v in slots.items()}
    changed["user_event_features"][0, last] = torch.arange(7, 7 + changed[
        "user_event_features"].shape[-1])
    args = (batch["user_input_ids"], batch["user_attention_mask"], batch["user_segment_ids"])
    with torch.no_grad():
        _, h0 = m.encoder.encode_users(*args, slots=slots)
        _, h1 = m.encoder.encode_users(*args, slots=changed)
    moved = not torch.allclose(h0[0, first], h1[0, first], atol=1e-6)
    assert moved == future_matters
    torch.testing.assert_close(h0[1:], h1[1:])


def test_summary_tokens_carry_every_event_to_the_start(hier_batch):
    """The paper's layout puts the user and modality tokens first; they are means over all
    events, so under a causal mask the first event already depends on the last one."""
    batch, vocab = hier_batch
    m = module(vocab, "causal")
    slots = slots_of(batch)
    events = torch.nonzero(slots["user_slot_types"][0] == SLOT_EVENT).flatten()
    changed = {k: v.clone() for k, v in slots.items()}
    changed["user_event_features"][0, int(events[-1])] = 5
    args = (batch["user_input_ids"], batch["user_attention_mask"], batch["user_segment_ids"])
    with torch.no_grad():
        _, h0 = m.encoder.encode_users(*args, slots=slots)
        _, h1 = m.encoder.encode_users(*args, slots=changed)
    assert not torch.allclose(h0[0, 0], h1[0, 0])  # the user token itself


@pytest.mark.parametrize("event_encoder", ["learned", "text"])
def test_training_reaches_features_and_adapters(hier_batch, event_encoder):
    batch, vocab = hier_batch
    batch = dict(batch)
    options = {}
    if event_encoder == "text":
        options = {"event_encoder": "text", "text_dim": 16}
        batch["user_event_vectors"] = torch.randn(*batch["user_input_ids"].shape, 16)
    m = module(vocab, **options).train()
    m._loss(batch).loss.backward()
    layer = m.encoder.input_layer
    assert layer.features.weight.grad.abs().sum() > 0
    assert layer.features.weight.grad[0].abs().sum() == 0  # padding id stays 0
    for adapter in (layer.event_adapters[MODALITY_INDEX["bill"]], layer.modality_adapter,
                    layer.user_adapter):
        assert adapter[1].weight.grad.abs().sum() > 0
    assert layer.tabular_weight.grad.abs().sum() > 0


def test_global_query_and_pooling_work_on_hierarchical_input(hier_batch):
    batch, vocab = hier_batch
    m = module(vocab, "global_query")
    m.encoder.pooling = "global_token"
    users, answers, hidden = m(batch)
    assert hidden.shape[1] == batch["user_input_ids"].shape[1] + 1
    assert torch.isfinite(users).all() and users.shape == answers.shape


def test_a_text_module_refuses_a_hierarchical_batch(hier_batch):
    batch, vocab = hier_batch
    cfg = ModuleConfig(backbone=SMALL)
    with pytest.raises(ValueError, match="needs an encoder built with input.mode: hierarchical"):
        ContrastiveMaskingModule(cfg, vocab_size=vocab)(batch)


def test_ablations_have_no_summary_adapters(hier_batch):
    _, vocab = hier_batch
    layer = module(vocab, user_token=False, modality_tokens=False).encoder.input_layer
    assert layer.user_adapter is None and layer.modality_adapter is None
    assert isinstance(module(vocab).encoder.input_layer, HierarchicalInput)

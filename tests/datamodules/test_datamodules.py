"""Batches, padding, splits and sharding of the DataModules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from maskstudy.datamodules import stream as stream_mod
from maskstudy.datamodules.datamodules import ContrastiveDataModule, ProbeDataModule, pad_sequences
from maskstudy.datamodules.splits import PROBE, TRAIN, VAL, stratified_split, user_splits
from maskstudy.datamodules.template import ANCHOR, PAD_SEGMENT


@pytest.fixture(scope="module")
def contrastive(world):
    dm = ContrastiveDataModule(path=str(world), batch_size=8, max_tokens=200,
                               answer_max_tokens=40, shuffle_buffer=32, topics_per_user=2,
                               num_workers=0)
    dm.setup()
    return dm


def test_contrastive_batch_shapes_and_right_padding(contrastive):
    batch = next(iter(contrastive.train_dataloader()))
    ids, mask, seg = (batch[k] for k in ("user_input_ids", "user_attention_mask", "user_segment_ids"))
    assert ids.shape == mask.shape == seg.shape and ids.shape[0] == 8 and ids.shape[1] <= 200
    assert ids.dtype == torch.long
    lengths = mask.sum(1)
    assert lengths.max() == ids.shape[1]  # dynamic padding: as long as the longest
    pad = contrastive.template.ids.pad
    for b in range(8):
        n = int(lengths[b])
        assert (mask[b, :n] == 1).all() and (mask[b, n:] == 0).all()
        assert (ids[b, n:] == pad).all() and (seg[b, n:] == PAD_SEGMENT).all()
        assert seg[b, n - 1] == ANCHOR and ids[b, n - 1] == contrastive.template.ids.user
    a_ids, a_mask = batch["answer_input_ids"], batch["answer_attention_mask"]
    assert a_ids.shape[1] <= 40
    last = a_mask.sum(1) - 1
    assert (a_ids[torch.arange(8), last] == contrastive.template.ids.eos).all()
    assert len(batch["user_ids"]) == 8 and len(batch["pair_kinds"]) == 8


def test_left_padding_and_multiple_of(world):
    dm = ContrastiveDataModule(path=str(world), batch_size=4, max_tokens=150, left_padding=True,
                               pad_to_multiple_of=8, validate=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    mask, seg = batch["user_attention_mask"], batch["user_segment_ids"]
    assert mask.shape[1] % 8 == 0
    assert (mask[:, -1] == 1).all()  # every sequence ends at the right edge
    assert (seg[:, -1] == ANCHOR).all()


def test_pad_sequences():
    out = pad_sequences([[1, 2, 3], [4]], 0, multiple_of=4)
    assert out.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert pad_sequences([[1, 2], [3]], 9, left=True).tolist() == [[1, 2], [9, 3]]


def test_both_pair_kinds_appear(contrastive):
    kinds = set()
    for batch in itertools.islice(contrastive.train_dataloader(), 6):
        kinds.update(k.split(":")[0] for k in batch["pair_kinds"])
    assert kinds == {"behaviour", "topic"}


def test_behaviour_answers_list_the_action_types_asked_for(world):
    """data.answer_actions: a behaviour answer lists at most that many action types, the most
    frequent first, so a longer list starts with the shorter one's."""
    def answers(n):
        dm = ContrastiveDataModule(path=str(world), batch_size=8, max_tokens=200,
                                   answer_max_tokens=200, answer_actions=n, num_workers=0,
                                   validate=False)
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        return [dm.template.tok.decode(ids.tolist(), skip_special_tokens=True)
                for ids in batch["answer_input_ids"]]
    two, ten = answers(2), answers(10)
    assert max(a.count(";") for a in two) == 2 and max(a.count(";") for a in ten) > 2
    for short, long in zip(two, ten):  # the same users, the opening and two most frequent
        assert ";".join(long.removesuffix(".").split(";")[:3]) == short.removesuffix(".")
    with pytest.raises(ValueError, match="data.answer_actions expected a whole number >= 1"):
        ContrastiveDataModule(path=str(world), answer_actions=0, validate=False)


def test_splits_are_disjoint_and_stable():
    ids = [f"u{i}" for i in range(5000)]
    s = user_splits(ids, probe_fraction=0.3, val_fraction=0.1, seed=0)
    assert abs((s == PROBE).mean() - 0.3) < 0.03 and abs((s == VAL).mean() - 0.1) < 0.02
    # a user's split depends on its id alone, not on who else is in the dataset
    assert (user_splits(ids[::-1], probe_fraction=0.3, val_fraction=0.1, seed=0) == s[::-1]).all()
    with pytest.raises(ValueError, match="split fractions"):
        user_splits(ids, probe_fraction=0.7, val_fraction=0.4, seed=0)


def test_stratified_split_keeps_both_classes():
    y = np.array([1, 1] + [0] * 20)
    test = stratified_split(y, test_fraction=0.3, seed=0)
    assert y[test].sum() == 1 and y[~test].sum() == 1


def shard_ids(dm, code, shard, shards, monkeypatch):
    s = dm.stream(code)
    s.cycle = False
    monkeypatch.setattr(s, "_shard", lambda: (shard, shards))
    return [x["user_id"] for x in s]


@pytest.mark.parametrize("shards", [2, 4, 9])  # 9 > 6 row groups: row-stride sharding
def test_shards_cover_the_split_without_duplicates(contrastive, monkeypatch, shards):
    dm = contrastive
    dm.cfg.topics_per_user = 0  # one sample per user
    try:
        expected = set()
        for g in stream_mod.row_groups(dm.files):
            import pyarrow.parquet as pq
            ids = pq.ParquetFile(g.file).read_row_group(g.index, columns=["user_id"])
            ids = ids.column("user_id").to_pylist()
            expected |= {u for u, keep in zip(ids, dm.split(TRAIN).mask(ids)) if keep}
        seen = []
        for shard in range(shards):
            seen += shard_ids(dm, TRAIN, shard, shards, monkeypatch)
        assert len(seen) == len(set(seen)) == len(expected)
        assert set(seen) == expected
    finally:
        dm.cfg.topics_per_user = 2


def test_train_stream_cycles_and_reshuffles(contrastive):
    dm = contrastive
    s = dm.stream(TRAIN)
    s.shuffle_buffer = 0
    n = s.count_users() * 3  # three pairs per user
    samples = list(itertools.islice(iter(s), 2 * n))
    first = [x["user_id"] for x in samples[:n]]
    second = [x["user_id"] for x in samples[n:]]
    assert sorted(first) == sorted(second) and first != second


def test_empty_shard_fails_loudly(contrastive, monkeypatch):
    s = contrastive.stream(VAL)
    s.cycle = True
    monkeypatch.setattr(s, "_shard", lambda: (0, 10_000))
    with pytest.raises(RuntimeError, match="holds no users"):
        next(iter(s))


def test_probe_batches_carry_aligned_labels(world):
    dm = ProbeDataModule(path=str(world), tasks="ggsm", max_tokens=128, eval_batch_size=50,
                         validate=False)
    dm.setup()
    assert dm.task_names[:2] == ["concert", "login"] and len(dm.task_names) == 9
    seen = []
    for batch in dm.probe_dataloader():
        idx = batch["probe_index"].numpy()
        assert (batch["labels"].numpy() == dm.probe.labels[idx]).all()
        assert batch["user_input_ids"].shape[1] <= 128
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(dm.probe.user_ids)))
    train_users = set(ContrastiveDataModule(path=str(world), validate=False).split(TRAIN).mask(
        dm.probe.user_ids).nonzero()[0])
    assert not train_users  # no probe user is a pretraining user


def test_validation_runs_before_anything_is_read(tmp_path):
    import pyarrow.parquet as pq
    from maskstudy.datamodules.schema import DataValidationError
    from tests.helpers import table_of, user_row
    pq.write_table(table_of(user_row("u1"), user_row("u2", bill=[(-1, "M", "dining", 1.0)])),
                   tmp_path / "users.parquet")
    dm = ContrastiveDataModule(path=str(tmp_path))
    with pytest.raises(DataValidationError, match="user_id='u1'.*no history events"):
        dm.setup()


def test_unknown_option_is_rejected(world):
    with pytest.raises(TypeError, match="unknown data option 'batchsize'"):
        ContrastiveDataModule(path=str(world), batchsize=3)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_a_resumed_loader_continues_where_the_old_one_stopped(contrastive, workers):
    """After ``skip_batches`` (a checkpoint's train_batches), the rebuilt loader yields the
    batches the uninterrupted loader would have yielded next, whatever the worker count."""
    from torch.utils.data import DataLoader

    dm = contrastive

    def users(skip, n):
        loader = DataLoader(dm.stream(TRAIN, skip_batches=skip), batch_size=dm.cfg.batch_size,
                            collate_fn=dm.collator.contrastive, num_workers=workers)
        return [tuple(b["user_ids"]) for b in itertools.islice(loader, n)]

    straight = users(0, 12)
    for skip in (1, 5, 7):
        assert users(skip, 12 - skip) == straight[skip:], skip
    dm._resume_batches = 5  # what load_state_dict sets from a checkpoint
    try:
        loader = dm.train_dataloader()
        assert loader.dataset.skip_batches == 5
    finally:
        dm._resume_batches = 0

"""Contrastive pairs, and that the future never reaches the user tower."""

from __future__ import annotations

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from maskstudy.datamodules.datamodules import ContrastiveDataModule
from maskstudy.datamodules.pairs import TOPICS, aggregate, behaviour_answer, user_pairs
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.schema import EVENT_MODALITIES, future_column
from maskstudy.datamodules.splits import TRAIN
from maskstudy.datamodules.tasks import compute_labels, event_counts, resolve_tasks
from tests.helpers import table_of, user_row


def test_topic_pool_is_large_and_grounded():
    assert len(TOPICS) >= 20
    assert len({t.name for t in TOPICS}) == len(TOPICS)
    assert all(t.queries and t.kinds for t in TOPICS)


def test_behaviour_answer_summarises_the_future():
    users = UserColumns(table_of(user_row(
        "u1", bill=[(-5, "Cinema", "movie", 40.0)],
        future_bill=[(d, "Ele.me", "takeout", 30.0) for d in (1, 2, 3, 8, 9)] +
                    [(20, "Damai", "concert", 600.0)])))
    answer = behaviour_answer(aggregate(users, 0, future=True), np.random.default_rng(0), k=6)
    assert answer.startswith("Next period: 6 events;")
    assert "5 takeout payments" in answer and "1 concert payments" in answer
    assert "movie" not in answer  # history is not the answer


def test_behaviour_answer_samples_a_subset_by_frequency():
    users = UserColumns(table_of(user_row(
        "u1", bill=[(-5, "A", "movie", 1.0)],
        future_search=[(1 + k % 28, f"q{k}") for k in range(12)])))
    answer = behaviour_answer(aggregate(users, 0, future=True), np.random.default_rng(0), k=3)
    assert answer.count("searches for") == 3


def test_behaviour_answer_without_a_generator_lists_the_most_frequent():
    """``top`` selection: the k most frequent action types, the same answer every time."""
    users = UserColumns(table_of(user_row(
        "u1", future_bill=[(d, "Ele.me", "takeout", 30.0) for d in (1, 2, 3, 4)] +
                          [(d, "Cafe", "coffee", 5.0) for d in (5, 6, 7)] +
                          [(9, "Damai", "concert", 600.0)],
        future_search=[(10, "gym"), (11, "gym")])))
    agg = aggregate(users, 0, future=True)
    answer = behaviour_answer(agg, k=3)
    assert answer == behaviour_answer(agg, k=3)
    assert "4 takeout payments" in answer and "3 coffee payments" in answer
    assert "searches for 'gym' x2" in answer and "concert" not in answer
    sampled = {behaviour_answer(agg, np.random.default_rng(s), k=3) for s in range(20)}
    assert len(sampled) > 1  # sampling varies the subset; top never does


def test_no_future_activity_is_said():
    users = UserColumns(table_of(user_row("u1", bill=[(-5, "A", "movie", 1.0)])))
    assert behaviour_answer(aggregate(users, 0, future=True), np.random.default_rng(0)) == \
        "Next period: no activity."


def test_topics_follow_the_history():
    users = UserColumns(table_of(user_row(
        "u1", bill=[(-k, "PowerHouse Gym", "fitness", 50.0) for k in range(1, 30)] +
                   [(-0.5, "Bean There", "coffee", 30.0)])))
    pairs = user_pairs(users, 0, np.random.default_rng(0), topics_per_user=1)
    assert [p.kind for p in pairs] == ["behaviour", "topic:fitness"]
    assert "29 events in 90 days" in pairs[1].answer


def swap_futures(table: pa.Table) -> pa.Table:
    """Every user gets the next user's future window."""
    for m in EVENT_MODALITIES:
        name = future_column(m)
        col = table.column(name).combine_chunks()
        rolled = pa.concat_arrays([col.slice(1), col.slice(0, 1)])
        table = table.set_column(table.schema.get_field_index(name), name, rolled)
    return table


def test_future_changes_labels_and_answers_never_the_user_input(world):
    dm = ContrastiveDataModule(path=str(world), validate=False, max_tokens=256)
    dm.setup()
    table = pq.read_table(world / "users-00000.parquet").slice(0, 60)
    swapped = swap_futures(table)
    tasks = resolve_tasks("all")
    assert (compute_labels(table, tasks) != compute_labels(swapped, tasks)).any()
    a, b = UserColumns(table), UserColumns(swapped)
    answers_differ = 0
    for i in range(len(a)):
        pa_, pb = dm._make_pairs(a, i, epoch=0), dm._make_pairs(b, i, epoch=0)
        assert [p["input_ids"] for p in pa_] == [p["input_ids"] for p in pb]
        assert [p["segment_ids"] for p in pa_] == [p["segment_ids"] for p in pb]
        answers_differ += any(x["answer_ids"] != y["answer_ids"] for x, y in zip(pa_, pb))
    assert answers_differ >= 0.9 * len(a)


def scenario_module(world, **options) -> ContrastiveDataModule:
    dm = ContrastiveDataModule(path=str(world), num_workers=0, batch_size=8, validate=False,
                               scenarios_per_user=2, scenario_tasks=["qanchor"], **options)
    dm.setup()
    return dm


def first_table(dm: ContrastiveDataModule) -> UserColumns:
    table = pq.ParquetFile(dm.files[0]).read(columns=dm.stream(TRAIN).columns)
    return UserColumns(table.slice(0, 40))


def test_scenario_pairs_answer_each_task_query_with_its_label(world):
    dm = scenario_module(world)
    users = first_table(dm)
    tasks = dm.scenario_tasks
    labels, counts = compute_labels(users.table, tasks), event_counts(users.table, tasks)
    by_name = {t.name: k for k, t in enumerate(tasks)}
    seen = 0
    for i in range(len(users)):
        pairs = dm._make_pairs(users, i, epoch=0)
        assert [p["kind"] for p in pairs][0] == "behaviour" and len(pairs) == 3
        for p in pairs[1:]:
            k = by_name[p["kind"].removeprefix("scenario:")]
            answer = dm.template.tok.decode(p["answer_ids"])
            assert answer.startswith("Yes." if labels[i, k] else "No.")
            assert f"{counts[i, k]} matching event" in answer and tasks[k].title in answer
            query = dm.template.tok.decode(p["input_ids"]).replace(" ", "")
            assert query.endswith(f"Instruction:{tasks[k].scenario}".replace(" ", ""))
            seen += 1
    assert seen == 80


def test_which_scenario_is_asked_never_depends_on_the_future(world, monkeypatch):
    """The query enters the user tower: its choice may not follow the label."""
    dm = scenario_module(world)
    users = first_table(dm)
    kinds = [[p["kind"] for p in dm._make_pairs(users, i, 0)] for i in range(len(users))]
    flipped = compute_labels(users.table, dm.scenario_tasks) ^ 1
    monkeypatch.setattr("maskstudy.datamodules.datamodules.compute_labels",
                        lambda table, tasks: flipped)
    dm._facts = (None, None, None)
    again = [dm._make_pairs(users, i, 0) for i in range(len(users))]
    assert [[p["kind"] for p in ps] for ps in again] == kinds
    assert any(dm.template.tok.decode(ps[1]["answer_ids"]).startswith("Yes.") for ps in again)


def test_without_scenario_pairs_the_stream_reads_no_label_column(world):
    dm = ContrastiveDataModule(path=str(world), num_workers=0, validate=False)
    dm.setup()
    assert dm.scenario_tasks == [] and not any(
        c.startswith(("attr_", "label_")) for c in dm.stream(TRAIN).columns)
    with pytest.raises(ValueError, match="movielens|rating"):
        ContrastiveDataModule(path=str(world), validate=False, scenarios_per_user=1,
                              scenario_tasks=["movielens"])

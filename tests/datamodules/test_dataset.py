"""Datasets declare their windows and modalities; everything that reads events follows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskstudy.datamodules import baseline
from maskstudy.datamodules.dataset import (
    BUILTIN_MODALITIES, DATASET_KEY, DatasetSpec, Modality, spec_of,
)
from maskstudy.datamodules.datamodules import ContrastiveDataModule, DataConfig
from maskstudy.datamodules.hierarchical import (
    BUILTIN_SLOTS, EVENT_FEATURES, InputConfig, modality_index,
)
from maskstudy.datamodules.pairs import behaviour_answer, topic_answer, TOPICS
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.schema import (
    DataValidationError, Problems, dataset_spec, user_schema, validate_dataset, validate_table,
)
from maskstudy.datamodules.synthetic import WorldConfig, write_world
from maskstudy.datamodules.tasks import EventRule, compute_labels, Task
from maskstudy.datamodules.template import event_pieces
from tests.helpers import REF, table_of, user_row

PURCHASE = Modality.declared("purchase", {
    "fields": {"item": "category", "tags": "list", "quantity": "number", "amount": "number",
               "shipped": "timestamp"},
    "kind_field": "item"})
SHOP = DatasetSpec((PURCHASE,), history_days=200, future_days=60, time_of_day=False)
DAY_MS = 86_400_000


def purchase(day: float, item: str, tags: str = "a|b", quantity: float = 1.0,
             amount: float = 10.0) -> dict:
    ts = REF.timestamp() * 1000 + day * DAY_MS
    return {"ts": pa.scalar(int(ts), pa.timestamp("ms", tz="UTC")).as_py(), "item": item,
            "tags": tags, "quantity": quantity, "amount": amount,
            "shipped": pa.scalar(int(ts + 2 * DAY_MS), pa.timestamp("ms", tz="UTC")).as_py()}


def shop_table(*users: tuple[str, list, list]) -> pa.Table:
    schema = user_schema(["age"], spec=SHOP, labels=["vip"])
    rows = [{"user_id": uid, "ref_time": REF, "tabular": [30.0], "purchase": hist,
             "future_purchase": fut, "label_vip": k % 2} for k, (uid, hist, fut)
            in enumerate(users)]
    return pa.Table.from_pylist(rows, schema=schema)


def test_a_declaration_round_trips_through_the_file_metadata(tmp_path):
    table = shop_table(("u1", [purchase(-150, "CD")], []))
    pq.write_table(table, tmp_path / "users-0.parquet")
    spec = dataset_spec(tmp_path)
    assert spec == SHOP and spec.segments == ("purchase", "tabular")
    assert json.loads(table.schema.metadata[DATASET_KEY])["history_days"] == 200
    assert validate_dataset(tmp_path) == 1
    # A file without a declaration is the payment-app world with the papers' windows.
    world = DatasetSpec()
    assert world.names == ("bill", "minipro", "spm", "app", "search")
    assert (world.history_days, world.future_days) == (90, 30)


@pytest.mark.parametrize("decl, message", [
    ({"modalities": {"bill": {"x": "category"}}}, "'bill' is built in"),
    ({"modalities": {"shop": {"item": "colour"}}}, "kind 'colour'"),
    ({"modalities": {"shop": {"ts": "number"}}}, "other than 'ts'"),
    ({"modalities": {"shop": {"fields": {"a": "number"}, "render": ["{b}"]}}},
     "render '{b}'"),
    ({"modalities": ["tweets"]}, "unknown modality 'tweets'"),
    ({"modalities": ["bill"], "history_days": 0}, "history_days 0"),
    ({"modalities": ["bill"], "windows": 3}, "unknown key"),
])
def test_bad_declarations_are_named(decl, message):
    schema = pa.schema([], metadata={DATASET_KEY: json.dumps(decl).encode()})
    with pytest.raises(ValueError, match=message):
        spec_of(schema, "f.parquet")


def test_windows_other_than_90_30_are_validated_and_read(tmp_path):
    inside = shop_table(("u1", [purchase(-199.5, "CD")], [purchase(59.5, "LP")]))
    assert list(validate_table(inside, "f")) == []
    outside = shop_table(("u1", [purchase(-201, "CD")], [purchase(61, "LP")]))
    found = [str(p) for p in validate_table(outside, "f")]
    assert any("purchase.ts" in p and "history window" in p for p in found)
    assert any("future_purchase.ts" in p and "future window" in p for p in found)
    # Rules take their slice of the 60-day window; -7 counts from its end.
    table = shop_table(("u1", [purchase(-3, "CD")], [purchase(55, "LP")]),
                       ("u2", [purchase(-3, "CD")], [purchase(20, "LP")]))
    last_week = Task("late", "late", {"own": "own"}, EventRule("purchase", day_from=-7))
    assert compute_labels(table, [last_week])[:, 0].tolist() == [1, 0]
    # Pairs speak of the declared windows.
    answer = topic_answer(TOPICS[0], {}, {}, SHOP)
    assert "last 200 days" in answer


def test_a_synthetic_world_with_other_windows(tmp_path):
    meta = write_world(WorldConfig(users=60, seed=1, history_days=45, future_days=14), tmp_path)
    spec = dataset_spec(tmp_path)
    assert (spec.history_days, spec.future_days) == (45, 14) == (meta["history_days"],
                                                                 meta["future_days"])
    assert validate_dataset(tmp_path) == 60
    # A config that states other windows fails before anything is read.
    with pytest.raises(DataValidationError, match="data.future_days is 30, but .* declares 14"):
        ContrastiveDataModule(DataConfig(path=str(tmp_path), future_days=30))


def test_a_declared_modality_renders_tokenises_and_counts(tmp_path):
    table = shop_table(("u1", [purchase(-2, "CD", "pop|rock", 2, 25.5)], []),
                       ("u2", [purchase(-9, "LP", "jazz", 1, 12)], [purchase(3, "LP")]))
    users = UserColumns(table)
    ev = users.history["purchase"]
    (words,) = event_pieces(PURCHASE, ev, 0, 1, time_of_day=False)
    # Date without an hour, then each field: numbers with their names, the timestamp a date.
    assert words == ("05-30", "CD", "pop|rock", "quantity 2", "amount 25.5", "06-01")
    # Bag of events: item and each tag counted, quantity and amount summed and maxed.
    sparse, dense = baseline.bag_of_events(table)
    assert sparse.shape == (2, 2 + 3)  # items CD, LP; tags pop, rock, jazz
    assert dense.shape[1] == 4 + 2 * 2 + 1  # counts/days/recent/last, 2 numbers x 2, tabular
    answer = behaviour_answer({("purchase", "LP"): np.array([REF.timestamp() + 86400])},
                              spec=SHOP)
    assert answer.startswith("Next period: 1 events; 1 LP purchases (weekdays")


def test_declared_modalities_reach_both_inputs(tmp_path):
    table = shop_table(*[(f"u{k}", [purchase(-k - 1, f"item{k % 3}")],
                          [purchase(k % 50, "LP")]) for k in range(40)])
    pq.write_table(table, tmp_path / "users-0.parquet")
    cfg = DataConfig(path=str(tmp_path), num_workers=0, max_tokens=64, batch_size=4,
                     tokenizer_users=40)
    text = ContrastiveDataModule(cfg)
    text.setup()
    batch = next(iter(text.train_dataloader()))
    decoded = text.template.tok.decode(batch["user_input_ids"][0].tolist(),
                                       skip_special_tokens=False)
    assert decoded.startswith("<purchase>") and "</purchase><tabular>" in decoded
    assert "<bill>" not in decoded
    hier = ContrastiveDataModule(cfg, input=InputConfig(mode="hierarchical"))
    hier.setup()
    batch = next(iter(hier.train_dataloader()))
    assert batch["user_event_features"].shape[-1] == 2 + 5 > EVENT_FEATURES
    assert hier.modality_slots == BUILTIN_SLOTS + 1
    assert modality_index(SHOP) == {"purchase": BUILTIN_SLOTS}
    assert int(batch["user_slot_index"].max()) == BUILTIN_SLOTS


def test_validation_counts_every_problem_and_shows_the_first_of_each_kind(tmp_path):
    good = user_row("ok", bill=[(-3, "M", "groceries", 1.0)])
    rows = [good] + [user_row(f"e{k}") for k in range(45)] + [
        user_row(f"n{k}", bill=[(-3, "M", "groceries", float("nan"))]) for k in range(3)]
    pq.write_table(table_of(*rows), tmp_path / "users-0.parquet")
    with pytest.raises(DataValidationError) as err:
        validate_dataset(tmp_path, examples=5)
    text = str(err.value)
    assert text.startswith("48 problem(s) in user data:")
    assert "events: user has no history events: 45 (first 5 shown)" in text
    assert "bill.amount: NaN or inf value in an event: 3" in text
    assert text.count("user has no history events in any modality") == 5
    # Keeping users without history leaves only the NaN amounts.
    with pytest.raises(DataValidationError, match=r"^3 problem\(s\)"):
        validate_dataset(tmp_path, empty_history="keep")


def test_problems_keep_examples_but_count_all():
    problems = Problems(examples=2)
    problems.add_rows("k", np.arange(1000), "f", "x", "bad", lambda r: f"u{r}")
    assert problems.total == 1000 and len(list(problems)) == 2
    assert "k: 1000 (first 2 shown)" in problems.report()


def test_builtin_modalities_keep_their_rendering():
    assert [m.pieces for m in map(BUILTIN_MODALITIES.get, ("bill", "app", "rating"))] == [
        ("{category}", "{merchant}", "{amount:.0f}"), ("{app}", "{minutes:.0f}min"),
        ("{title}", "{genres}", "rated {rating:g}")]

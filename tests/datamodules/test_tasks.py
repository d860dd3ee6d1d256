"""The task registry: the papers' suites, label rules, prevalence, learnability, no leakage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskstudy.datamodules import baseline
from maskstudy.datamodules.dataset import DatasetSpec
from maskstudy.datamodules.probe import ProbeSet
from maskstudy.datamodules.schema import dataset_files
from maskstudy.datamodules.splits import PROBE
from maskstudy.datamodules.stream import SplitSpec
from maskstudy.datamodules.tasks import (
    ANY, TASKS, EventRule, Task, compute_labels, resolve_tasks, task_names,
)
from tests.helpers import table_of, user_row


def test_suites_match_the_papers():
    ggsm, qa = task_names("ggsm"), task_names("qanchor")
    assert len(ggsm) == 9 and len(qa) == 10
    assert set(ggsm) & set(qa) == {"concert", "login"}
    assert len(task_names("all")) == 17 and len(task_names("movielens")) == 14
    assert {TASKS[t].domain("ggsm") for t in ggsm} == {
        "user_prediction", "behaviour_preference", "marketing_sensitivity"}
    assert {TASKS[t].domain("qanchor") for t in qa} == {
        "engagement", "risk", "marketing_sensitivity"}


def test_resolve_tasks_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown task 'conert'"):
        resolve_tasks(["conert"])
    assert [t.name for t in resolve_tasks(["concert", "ggsm"])][:2] == ["concert", "login"]


def test_rules_reject_bad_definitions():
    world = DatasetSpec()
    with pytest.raises(ValueError, match="rule field 'colour'"):
        EventRule("bill", "colour", value="red").check(world)
    with pytest.raises(ValueError, match="rule days"):
        EventRule("bill", day_from=10, day_to=40).check(world)
    with pytest.raises(ValueError, match="rule op 'ge' on bill.category"):
        EventRule("bill", "category", "ge", 3.0).check(world)
    with pytest.raises(ValueError, match="rule modality 'purchase'"):
        EventRule("purchase").check(world)
    with pytest.raises(ValueError, match="rule op 'near'"):
        EventRule("bill", op="near")
    # A longer future window admits the slice.
    EventRule("bill", day_from=10, day_to=40).check(DatasetSpec(future_days=90))


def labels(rule, *rows):
    return compute_labels(table_of(*rows), [Task("t", "t", {"ggsm": "x"}, rule)])[:, 0]


H = dict(bill=[(-3, "M", "groceries", 5.0)])  # every user needs some history


def test_at_least_one_target_event_in_the_window():
    rule = TASKS["concert"].rule
    y = labels(rule,
               user_row("a", **H, future_bill=[(3, "Damai", "concert", 500.0)]),
               user_row("b", **H, future_bill=[(3, "Cinema", "movie", 50.0)]),
               user_row("c", bill=[(-3, "Damai", "concert", 500.0)]))  # history only
    assert y.tolist() == [1, 0, 0]


def test_mau_loss_is_no_activity_at_all():
    y = labels(TASKS["mau_loss"].rule,
               user_row("a", **H),
               user_row("b", **H, future_search=[(29, "anything")]))
    assert y.tolist() == [1, 0]


def test_day_slice_and_prefix():
    rule = TASKS["login"].rule  # home page in the last week
    y = labels(rule,
               user_row("a", **H, future_spm=[(25, "a10.b1001.c1.d1")]),
               user_row("b", **H, future_spm=[(5, "a10.b1001.c1.d1")]),
               user_row("c", **H, future_spm=[(25, "a10.b10010.c1.d1")]))
    assert y.tolist() == [1, 0, 0]


def test_min_count_and_threshold():
    two = [(1, "B", "transfer_out", 10.0), (2, "B", "transfer_out", 10.0)]
    assert labels(TASKS["money"].rule, user_row("a", **H, future_bill=two),
                  user_row("b", **H, future_bill=two[:1])).tolist() == [1, 0]
    assert labels(TASKS["power"].rule,
                  user_row("a", **H, future_bill=[(1, "Apple Flagship", "electronics", 1500.0)]),
                  user_row("b", **H, future_bill=[(1, "Shop", "electronics", 1499.9)])
                  ).tolist() == [1, 0]


def test_any_modality_rule():
    rule = EventRule(ANY)
    assert labels(rule, user_row("a", **H, future_app=[(1, "X", "social", 3.0)]),
                  user_row("b", **H)).tolist() == [1, 0]


def test_labels_never_read_history(big_world):
    table = pa.concat_tables([pq.read_table(f) for f in dataset_files(big_world)])
    tasks = resolve_tasks("all")
    y = compute_labels(table, tasks)
    empty = pa.array([[]] * table.num_rows, table.schema.field("bill").type)
    wiped = table.set_column(table.schema.get_field_index("bill"), "bill", empty)
    assert (compute_labels(wiped, tasks) == y).all()


@pytest.fixture(scope="module")
def probe(big_world):
    files = dataset_files(big_world)
    return ProbeSet(files, SplitSpec(PROBE, 0.3, 0.05, 0), resolve_tasks("all")).load()


def test_prevalence_bounds(probe):
    prev = probe.prevalence()
    for name, p in prev.items():
        assert 0.01 <= p <= 0.85, (name, p)
    # difficulty and rarity differ as in the papers: concert is rare, login common
    assert prev["concert"] < 0.2 < prev["login"]


def test_tasks_learnable_but_not_trivial(probe):
    x = baseline.features(probe.history_table())
    auc = {}
    for k, name in enumerate(probe.task_names):
        auc[name] = baseline.probe_auc(x, probe.labels[:, k], probe.test_mask(name))
    common = [a for n, a in auc.items() if n not in ("fraud", "money")]  # few positives here
    assert all(0.55 < a < 0.99 for a in common), auc
    assert auc["concert"] < auc["mau_loss"]  # concert is the hard one, MAU loss near-trivial
    assert np.mean(common) > 0.7


def test_history_events_count_each_probe_users_events_in_label_order(probe):
    table = probe.history_table()
    assert table.column("user_id").to_pylist() == probe.user_ids
    expected = [sum(len(events or []) for events in row)
                for row in zip(*(table.column(m).to_pylist() for m in probe.modalities))]
    events = probe.history_events()
    assert events.tolist() == expected
    assert len(set(expected)) > 10  # users differ in activity, so the order is checked


def test_stratified_test_split_is_deterministic(probe):
    a, b = probe.test_mask("concert"), probe.test_mask("concert")
    assert (a == b).all()
    y = probe.labels[:, probe.task_names.index("concert")]
    assert abs(y[a].mean() - y[~a].mean()) < 0.02
    assert abs(a.mean() - 0.3) < 0.01


def probe_of(world, tasks, **kw) -> ProbeSet:
    return ProbeSet(dataset_files(world), SplitSpec(PROBE, 0.3, 0.05, 0), resolve_tasks(tasks),
                    test_fraction=0.3, seed=0, **kw).load()


def test_a_tasks_test_split_does_not_depend_on_the_other_tasks(world):
    alone = probe_of(world, ["transit"])
    among = probe_of(world, ["concert", "food", "transit"])
    assert (alone.test_mask("transit") == among.test_mask("transit")).all()
    own = {"name": "shopper", "event": {"modality": "bill", "min_count": 5}}
    assert (probe_of(world, [own]).test_mask("shopper")
            == probe_of(world, ["login", own]).test_mask("shopper")).all()


def test_tasks_from_yaml_files_and_inline_declarations(tmp_path, world):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text(
        "tasks:\n"
        "  big_bill: {title: A big bill, event: {modality: bill, field: amount, op: ge, "
        "value: 1500}}\n"
        "  coffee: {event: {modality: bill, field: category, op: in, value: coffee},\n"
        "           query: 'Will this user buy coffee next period?'}\n")
    tasks = resolve_tasks(["mine.yaml", {"name": "silent", "event": {"modality": "any",
                                                                     "negate": True}}],
                          (tmp_path,))
    assert [t.name for t in tasks] == ["big_bill", "coffee", "silent"]
    assert tasks[0].title == "A big bill" and tasks[0].domain("ggsm") == "own"
    assert tasks[1].rule.value == ("coffee",)
    # The scenario query a probe reads under eval.query: task; the title asked by default.
    assert tasks[1].scenario == "Will this user buy coffee next period?"
    assert tasks[0].scenario == "A big bill?"
    assert all(TASKS[t].query for t in TASKS)  # every registered task has its own
    assert len({TASKS[t].query for t in TASKS}) == len(TASKS)
    # The same rules as the registry's power and mau_loss tasks give the same labels.
    probe = probe_of(world, ["power", "mau_loss", *tasks])
    k = probe.task_names.index
    assert (probe.labels[:, k("big_bill")] == probe.labels[:, k("power")]).all()
    assert (probe.labels[:, k("silent")] == probe.labels[:, k("mau_loss")]).all()


def test_targeting_sentences_speak_the_answers_language():
    """A task's targeting sentence is what its positive users' behaviour answers say about
    the rule, at the reference count; declared where the answers cannot say it."""
    from maskstudy.datamodules.dataset import BUILTIN_MODALITIES
    from maskstudy.datamodules.pairs import REFERENCE_SENTENCE, behaviour_answer
    from maskstudy.datamodules.tasks import behaviour_sentence, task_from_declaration

    world = DatasetSpec()
    assert TASKS["concert"].targeting() == "Next period: 30 events; concert payments."
    assert TASKS["login"].targeting() == "Next period: 30 events; a10.b1001 views."
    assert TASKS["transit"].targeting() == (
        "Next period: 30 events; metro payments; bus payments.")
    assert TASKS["mau_loss"].targeting() == behaviour_answer({})  # "no activity", verbatim
    assert TASKS["power"].target and TASKS["brand"].target  # no amounts or merchants in answers
    assert REFERENCE_SENTENCE == "Next period: 30 events."
    # the phrase of an action type is the one behaviour answers use
    answer = behaviour_answer({("bill", "concert"): np.array([0, 86400])}, spec=world)
    assert "concert payments" in answer and answer.startswith("Next period: 2 events; ")
    ratings = DatasetSpec(modalities=(BUILTIN_MODALITIES["rating"],))
    assert TASKS["horror"].targeting(ratings) == "Next period: 30 events; Horror ratings."
    # what answers cannot say: a number field, an attribute; the title stands in
    assert behaviour_sentence(EventRule("bill", "amount", "ge", 9.0), world) is None
    assert TASKS["female"].targeting(ratings) == "Gender: female."
    own = task_from_declaration("vip", {"label": "vip", "target": "Next period: 30 events; "
                                                                  "luxury payments."})
    assert own.targeting() == "Next period: 30 events; luxury payments."
    searches = task_from_declaration("hot", {"event": {"modality": "search", "field": "query",
                                                       "op": "in", "value": "hotpot"}})
    assert searches.targeting() == "Next period: 30 events; searches for 'hotpot'."


@pytest.mark.parametrize("item, message", [
    ({"name": "x"}, "exactly one rule"),
    ({"name": "x", "event": {"modality": "bill"}, "label": "y"}, "exactly one rule"),
    ({"name": "x", "event": {"modality": "bill", "colour": "red"}}, "unexpected keyword"),
    ({"name": "x", "attribute": {"attribute": "age", "op": "between", "value": 3}},
     "op 'between'"),
    ({"event": {"modality": "bill"}}, "expected a 'name'"),
    ("nowhere.yaml", "task file 'nowhere.yaml' not found"),
])
def test_bad_task_declarations_are_named(item, message):
    with pytest.raises(ValueError, match=message):
        resolve_tasks([item])


def test_label_columns_are_tasks(tmp_path):
    from maskstudy.datamodules.dataset import DatasetSpec
    from maskstudy.datamodules.schema import user_schema

    rows = [{**user_row(f"u{k}", bill=[(-1, "M", "groceries", 1.0)]), "label_vip": k % 3 == 0}
            for k in range(30)]
    schema = user_schema(["a", "b"], spec=DatasetSpec(), labels=["vip"])
    schema = schema.set(schema.get_field_index("label_vip"), pa.field("label_vip", pa.bool_()))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "users-0.parquet")
    probe = ProbeSet(dataset_files(tmp_path), SplitSpec(None, 0, 0, 0),
                     resolve_tasks([{"name": "vip", "label": "vip"}])).load()
    assert probe.labels[:, 0].tolist() == [int(k % 3 == 0) for k in range(30)]


def test_too_few_positives_is_an_error_naming_the_task_or_a_reported_skip(world):
    rare = {"name": "rare", "event": {"modality": "bill", "min_count": 10_000}}
    from maskstudy.datamodules.schema import DataValidationError

    with pytest.raises(DataValidationError, match=r"rare: 0 positive\(s\), \d+ negative"):
        probe_of(world, ["login", rare], min_class_users=5)
    probe = probe_of(world, ["login", rare], min_class_users=5, sparse_tasks="skip")
    assert probe.task_names == ["login"] and probe.labels.shape[1] == 1
    assert probe.skipped["rare"]["positives"] == 0
    with pytest.raises(DataValidationError, match="every task is affected"):
        probe_of(world, [rare], min_class_users=5, sparse_tasks="skip")


def test_window_table_keeps_each_users_newest_events_and_leading_features():
    bills = [(-30 + k, f"Shop{k}", "food", 1.0) for k in range(5)]
    table = table_of(user_row("u1", bill=bills, search=[(-1, "hotpot")], tabular=(3.0, 4.0)),
                     user_row("u2", bill=bills[:2], tabular=(5.0, 6.0)))
    events = {"bill": np.array([2, 0]), "search": np.array([1, 0])}
    cut = baseline.window_table(table, events, tabular=np.array([1, 2]))
    merchants = [[e["merchant"] for e in row] for row in cut.column("bill").to_pylist()]
    assert merchants == [["Shop3", "Shop4"], []]
    assert cut.column("search").to_pylist()[0][0]["query"] == "hotpot"
    assert cut.column("tabular").to_pylist() == [[3.0, 0.0], [5.0, 6.0]]
    assert cut.column("app").to_pylist() == table.column("app").to_pylist()  # not windowed
    with pytest.raises(ValueError, match="window of 'bill': expected 2 counts"):
        baseline.window_table(table, {"bill": np.array([2, 3])}, tabular=np.array([2, 2]))
    with pytest.raises(ValueError, match="window of the tabular features"):
        baseline.window_table(table, {}, tabular=np.array([3, 0]))


def test_the_probe_window_is_the_history_when_everything_fits(world):
    from maskstudy.datamodules.datamodules import ProbeDataModule

    def window(max_tokens):
        dm = ProbeDataModule(path=str(world), validate=False, max_tokens=max_tokens, caps={},
                             num_workers=0, tasks="ggsm", sparse_tasks="skip")
        dm.setup()
        return dm.probe.history_table(), dm.window_table()

    full, same = window(100_000)
    assert same.equals(full)
    full, cut = window(128)
    assert cut.column("user_id").equals(full.column("user_id"))  # label order
    lengths = [np.array([len(r or []) for r in t.column(m).to_pylist()]) for t in (full, cut)
               for m in ("bill",)]
    assert (lengths[1] <= lengths[0]).all() and (lengths[1] < lengths[0]).any()

"""The event-log importer: every user kept, every dropped event counted by reason."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskstudy.datamodules.dataset import BUILTIN_MODALITIES
from maskstudy.datamodules.importer import (
    DROP_REASONS, DataImportError, ImportSpec, import_events, parse_times,
)
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.schema import dataset_spec, ts_seconds, validate_dataset

HEADER = "customer,when,kind,item,amount\n"
FIELDS = {"shop": {"item": "category", "amount": "number"},
          "visit": {"item": "category"}}


def write(path, text):
    path.write_text(text)
    return str(path)


def spec_for(tmp_path, events, users=None, **kw) -> ImportSpec:
    base = dict(events=events, users=users, out=str(tmp_path / "ds"), user_column="customer",
                time_column="when", modality_column="kind", modalities=FIELDS,
                split_time="2026-10-01", future_days=30)
    return ImportSpec(**{**base, **kw})


def test_every_drop_reason_is_counted(tmp_path):
    events = write(tmp_path / "events.csv", HEADER + "\n".join([
        "a,2026-09-01,shop,CD,10",            # kept: history
        "a,2026-10-05,shop,LP,20",            # kept: future
        "b,2026-09-20,visit,home,",           # kept: amount is not a visit field
        ",2026-09-01,shop,CD,10",             # missing_user
        "a,someday,shop,CD,10",               # bad_time
        "a,2026-09-02,call,CD,10",            # unknown_modality
        "a,2026-09-03,shop,,10",              # missing_field
        "a,2026-09-04,shop,CD,ten",           # bad_number
        "z,2026-09-05,shop,CD,10",            # unknown_user
        "a,2026-01-01,shop,CD,10",            # before_history_window (history_days=90)
        "a,2026-11-15,shop,CD,10",            # after_future_window
    ]) + "\n")
    users = write(tmp_path / "users.csv", "customer,age,vip,region\na,30,1,N\nb,40,0,S\n"
                                          "c,50,0,N\n")
    report = import_events(spec_for(tmp_path, events, users, history_days=90,
                                    tabular=["age"], labels=["vip"], attributes=["region"]))
    assert report["dropped"] == {reason: 1 for reason in DROP_REASONS}
    assert report["users"] == 3 and report["users_without_history"] == 1  # c: no events
    assert (report["history_events"], report["future_events"]) == (2, 1)
    out = tmp_path / "ds"
    assert validate_dataset(out, empty_history="keep") == 3
    saved = json.loads((out / "dataset.json").read_text())
    assert saved["dropped"] == report["dropped"] and not saved["time_of_day"]
    table = pq.read_table(out / "users-00000.parquet")
    assert table.column("user_id").to_pylist() == ["a", "b", "c"]
    assert table.column("label_vip").to_pylist() == [1, 0, 0]
    assert table.column("attr_region").to_pylist() == ["N", "S", "N"]
    assert [e["item"] for e in table.column("shop")[0].as_py()] == ["CD"]
    assert [e["item"] for e in table.column("future_shop")[0].as_py()] == ["LP"]
    spec = dataset_spec(out)
    assert spec.names == ("shop", "visit") and spec.history_days == 90
    assert spec.modality("shop").fields == {"item": "category", "amount": "number"}


def test_the_history_window_reaches_back_to_the_earliest_event(tmp_path):
    events = write(tmp_path / "e.csv", HEADER + "a,2025-10-01T08:30:00,shop,CD,1\n"
                                                "b,2026-09-30T23:00:00,shop,CD,1\n")
    report = import_events(spec_for(tmp_path, events))
    assert report["history_days"] == 365 and report["dropped"]["before_history_window"] == 0
    assert report["time_of_day"]  # the times carry hours
    assert dataset_spec(tmp_path / "ds").time_of_day


def test_per_user_split_times_and_other_formats(tmp_path):
    rows = pa.table({"customer": ["a", "a", "b"],
                     "when": pa.array([1_780_000_000, 1_790_000_000, 1_785_000_000],
                                      pa.int64()),  # epoch seconds
                     "item": ["x", "y", "z"], "amount": [1.0, 2.0, 3.0]})
    pq.write_table(rows, tmp_path / "events.parquet")
    users = tmp_path / "users.jsonl"
    users.write_text('{"customer": "a", "split": "2026-06-01"}\n'
                     '{"customer": "b", "split": "2026-07-01"}\n')
    spec = spec_for(tmp_path, str(tmp_path / "events.parquet"), str(users),
                    modality_column=None, modalities={"shop": FIELDS["shop"]},
                    split_time=None, split_column="split", future_days=200)
    report = import_events(spec)
    table = pq.read_table(tmp_path / "ds" / "users-00000.parquet")
    ref = ts_seconds(table.column("ref_time")).tolist()
    assert ref == [1_780_272_000, 1_782_864_000]  # each user's own split
    users_ = UserColumns(table)
    assert users_.history["shop"].span(0) == (0, 1) and users_.future["shop"].span(0) == (0, 1)
    assert report["dropped"] == {reason: 0 for reason in DROP_REASONS}


def test_a_builtin_modality_and_a_strptime_format(tmp_path):
    events = write(tmp_path / "e.csv", "customer,when,merchant,category,amount\n"
                                       "a,30/09/2026 10:15,Cafe,coffee,3.5\n")
    spec = spec_for(tmp_path, events, modality_column=None, modalities={"bill": "builtin"},
                    time_format="%d/%m/%Y %H:%M")
    import_events(spec)
    assert dataset_spec(tmp_path / "ds").modalities == (BUILTIN_MODALITIES["bill"],)
    ts = pq.read_table(tmp_path / "ds" / "users-00000.parquet").column("bill")[0].as_py()[0]["ts"]
    assert (ts.hour, ts.minute) == (10, 15)


@pytest.mark.parametrize("users_text, message", [
    ("customer,age\na,1\na,2\n", "row 1, column 'customer': user 'a' appears twice"),
    ("customer,age\na,\n", "row 0 \\(user 'a'\\), column 'age': expected a finite number"),
    ("customer,vip\na,2\n", "column 'vip': expected a 0/1 label, got 2"),
    ("customer,other\na,1\n", "no column 'age'"),
])
def test_user_table_problems_are_errors_naming_row_and_column(tmp_path, users_text, message):
    events = write(tmp_path / "e.csv", HEADER + "a,2026-09-01,shop,CD,1\n")
    users = write(tmp_path / "u.csv", users_text)
    columns = dict(tabular=["age"]) if "vip" not in users_text else dict(labels=["vip"])
    with pytest.raises(DataImportError, match=message):
        import_events(spec_for(tmp_path, events, users, **columns))


@pytest.mark.parametrize("change, message", [
    (dict(split_time=None), "exactly one of split_time"),
    (dict(modality_column=None), "declare exactly one"),
    (dict(modalities={}), "declare at least one"),
    (dict(tabular=["age"]), "give users"),
    (dict(modalities={"shop": {"item": "colour"}}), "kind 'colour'"),
    (dict(modalities=["shop"]), "as a mapping"),
    (dict(users="u.csv", tabular="age"), "tabular: expected a list"),
])
def test_spec_mistakes_fail_before_reading(tmp_path, change, message):
    events = write(tmp_path / "e.csv", HEADER + "a,2026-09-01,shop,CD,1\n")
    with pytest.raises(DataImportError, match=message):
        import_events(spec_for(tmp_path, events, **change))
    assert not (tmp_path / "ds").exists()


def test_times_parse_iso_dates_offsets_and_report_the_rest():
    got = parse_times(pa.array(["2026-10-01", "2026-10-01T02:00:00+02:00", "soon", None]))
    assert got[:2].tolist() == [1_790_812_800.0, 1_790_812_800.0]
    assert np.isnan(got[2:]).all()


def test_a_yaml_spec_resolves_paths_next_to_it(tmp_path):
    events = write(tmp_path / "e.csv", HEADER + "a,2026-09-01,shop,CD,1\n")
    (tmp_path / "import.yaml").write_text(
        "events: e.csv\nout: ds\nuser_column: customer\ntime_column: when\n"
        "modality_column: kind\nmodalities: {shop: {item: category, amount: number}}\n"
        "split_time: '2026-10-01'\n")
    spec = ImportSpec.from_yaml(tmp_path / "import.yaml", future_days=10)
    assert spec.events == events and spec.future_days == 10
    (tmp_path / "bad.yaml").write_text("events: e.csv\nsplit: 3\n")
    with pytest.raises(DataImportError, match="unknown key\\(s\\) \\['split'\\]"):
        ImportSpec.from_yaml(tmp_path / "bad.yaml")

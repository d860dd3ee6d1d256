"""Every validation error names the file, the row, the user id and the field."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskstudy.datamodules.schema import (
    DataValidationError, user_schema, validate_dataset, validate_table,
)
from tests.helpers import table_of, user_row

GOOD_BILL = [(-3, "FreshMart", "groceries", 12.5), (-1, "Metro", "metro", 4.0)]


def good(uid="u1", **kw):
    kw.setdefault("bill", GOOD_BILL)
    return user_row(uid, **kw)


def write(tmp_path, table, name="users-00000.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def problems_of(table):
    return [str(p) for p in validate_table(table, "f.parquet")]


def test_a_good_table_has_no_problems():
    assert problems_of(table_of(good("u1"), good("u2"))) == []


def test_missing_column_is_named(tmp_path):
    write(tmp_path, table_of(good()).drop_columns(["future_app"]))
    with pytest.raises(DataValidationError, match=r"users-00000.parquet, field 'future_app': missing column"):
        validate_dataset(tmp_path)


def test_missing_event_field_is_named():
    table = table_of(good())
    bill_type = pa.list_(pa.struct([("ts", pa.timestamp("ms", tz="UTC")), ("merchant", pa.string()),
                                    ("amount", pa.float64())]))
    bills = pa.array([[{"ts": e["ts"], "merchant": e["merchant"], "amount": e["amount"]}
                       for e in table.column("bill")[0].as_py()]], bill_type)
    table = table.set_column(table.schema.get_field_index("bill"), "bill", bills)
    assert any("field 'bill.category': missing event field" in p for p in problems_of(table))


def test_wrong_type_is_named():
    table = table_of(good())
    table = table.set_column(0, "user_id", pa.array([17], pa.int64()))
    found = problems_of(table)
    assert found == ["f.parquet, field 'user_id': expected string, got int64"]


def test_wrong_event_field_type_is_named():
    table = table_of(good())
    rows = table.column("bill")[0].as_py()
    typ = pa.list_(pa.struct([("ts", pa.timestamp("ms", tz="UTC")), ("merchant", pa.string()),
                              ("category", pa.string()), ("amount", pa.string())]))
    bills = pa.array([[{**e, "amount": str(e["amount"])} for e in rows]], typ)
    table = table.set_column(table.schema.get_field_index("bill"), "bill", bills)
    assert "field 'bill.amount': expected double, got string" in problems_of(table)[0]


def test_unsorted_timestamps_name_the_user_and_field():
    table = table_of(good("u1"), good("u2", minipro=[(-2, "A", "food"), (-5, "B", "food")]))
    (p,) = problems_of(table)
    assert "row 1 (user_id='u2'), field 'minipro.ts': events not sorted by time" in p


def test_history_event_outside_window():
    table = table_of(good("u1", search=[(-91, "too old")]))
    (p,) = problems_of(table)
    assert "user_id='u1'" in p and "field 'search.ts'" in p and "outside the history window" in p


def test_history_event_after_split_is_outside_window():
    (p,) = problems_of(table_of(good("u1", spm=[(0.1, "a.b.c.d")])))
    assert "field 'spm.ts'" in p and "history window" in p


def test_future_event_outside_window():
    table = table_of(good("u7", future_bill=[(-1, "M", "dining", 3.0)]))
    (p,) = problems_of(table)
    assert "user_id='u7'" in p and "field 'future_bill.ts'" in p and "future window" in p


def test_future_event_after_window():
    (p,) = problems_of(table_of(good("u7", future_app=[(30.5, "App", "social", 3.0)])))
    assert "future_app.ts" in p and "future window" in p


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_tabular(value):
    (p,) = problems_of(table_of(good("u1"), good("u2", tabular=(1.0, value))))
    assert "row 1 (user_id='u2'), field 'tabular': NaN or inf feature value" in p


def test_non_finite_event_amount():
    (p,) = problems_of(table_of(good("u3", bill=[(-2, "M", "dining", math.nan)])))
    assert "user_id='u3'" in p and "field 'bill.amount': NaN or inf" in p


def test_tabular_length_mismatch():
    (p,) = problems_of(table_of(good("u1"), good("u2", tabular=(1.0,))))
    assert "user_id='u2'" in p and "expected 2 features like row 0, got 1" in p


def test_duplicate_user_id_in_one_file():
    (p,) = problems_of(table_of(good("u1"), good("u2"), good("u1")))
    assert "row 2 (user_id='u1'), field 'user_id': duplicate user id (also at row 0)" in p


def test_duplicate_user_id_across_files(tmp_path):
    write(tmp_path, table_of(good("u1"), good("u2")), "users-00000.parquet")
    write(tmp_path, table_of(good("u3"), good("u2")), "users-00001.parquet")
    with pytest.raises(DataValidationError) as err:
        validate_dataset(tmp_path)
    assert "users-00001.parquet, row 1 (user_id='u2'), field 'user_id': duplicate user id " \
           "(already in an earlier file)" in str(err.value)


def test_user_without_events():
    (p,) = problems_of(table_of(good("u1"), user_row("u9", future_bill=[(2, "M", "dining", 1.0)])))
    assert "row 1 (user_id='u9'), field 'events': user has no history events" in p


def test_null_values_are_reported():
    table = table_of(good("u1"))
    table = table.set_column(table.schema.get_field_index("ref_time"), pa.field("ref_time", pa.timestamp("ms", tz="UTC")),
                             pa.array([None], pa.timestamp("ms", tz="UTC")))
    (p,) = problems_of(table)
    assert "user_id='u1'" in p and "field 'ref_time': null value" in p


def test_row_numbers_count_from_the_start_of_the_file(tmp_path):
    rows = [good(f"u{i}") for i in range(5)] + [good("bad", tabular=(math.nan, 1.0))]
    write(tmp_path, table_of(*rows))
    from maskstudy.datamodules import schema
    with pytest.raises(DataValidationError, match=r"row 5 \(user_id='bad'\)"):
        schema.validate_dataset(tmp_path, batch_rows=2)


def test_not_parquet(tmp_path):
    (tmp_path / "users-00000.parquet").write_text("hello")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        validate_dataset(tmp_path)


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no users\\*.parquet files"):
        validate_dataset(tmp_path)


def test_any_timestamp_unit_is_accepted():
    table = table_of(good("u1"))
    schema = user_schema(("a", "b"))
    assert table.schema.equals(schema)
    cast = table.set_column(1, "ref_time", table.column("ref_time").cast(pa.timestamp("us", tz="UTC")))
    assert problems_of(cast) == []

"""Helpers for building users by hand in the data schema."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from maskstudy.datamodules.schema import user_schema

REF = datetime(2026, 6, 1, tzinfo=timezone.utc)


def at(days: float, hours: float = 12.0) -> datetime:
    """A timestamp ``days`` after the reference time (negative: in the history window)."""
    return REF + timedelta(days=days, hours=hours - 12.0)


def user_row(uid: str = "u1", *, bill=(), minipro=(), spm=(), app=(), search=(),
             future_bill=(), future_minipro=(), future_spm=(), future_app=(), future_search=(),
             tabular=(1.0, 2.0)) -> dict:
    """One user as a dict in the schema; events given as (day, *fields) tuples."""
    def ev(items, *names):
        return [{"ts": at(d[0]), **dict(zip(names, d[1:]))} for d in items]

    return {
        "user_id": uid, "ref_time": REF, "tabular": list(tabular),
        "bill": ev(bill, "merchant", "category", "amount"),
        "minipro": ev(minipro, "name", "category"),
        "spm": ev(spm, "spm"),
        "app": ev(app, "app", "category", "minutes"),
        "search": ev(search, "query"),
        "future_bill": ev(future_bill, "merchant", "category", "amount"),
        "future_minipro": ev(future_minipro, "name", "category"),
        "future_spm": ev(future_spm, "spm"),
        "future_app": ev(future_app, "app", "category", "minutes"),
        "future_search": ev(future_search, "query"),
    }


def table_of(*rows: dict, tabular_names=("a", "b")) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=user_schema(tabular_names))

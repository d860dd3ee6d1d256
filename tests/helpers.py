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


def tiny(world, run_root, *extra):
    """Overrides that make any recipe a few-second run on a tiny world."""
    return [f"data.path={world}", f"run_root={run_root}", "data.max_tokens=96",
            "data.batch_size=4", "data.eval_batch_size=64", "data.num_workers=0",
            "data.answer_max_tokens=32", "backbone.hidden_size=32", "backbone.layers=2",
            "backbone.intermediate_size=64", "encoder.projector_inner=32",
            "encoder.projector_out=16", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            "optim.warmup_steps=1", "schedule.warmup_steps=2", *extra]

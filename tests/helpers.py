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
    """Overrides that make any recipe a few-second run on a tiny world. The probes fit at a
    fixed strength (eval.c=1): choosing it by cross-validation costs some 3,000 small fits a
    run; the tests that choose it say eval.c=null."""
    return [f"data.path={world}", f"run_root={run_root}", "data.max_tokens=96",
            "data.batch_size=4", "data.eval_batch_size=64", "data.num_workers=0",
            "data.answer_max_tokens=32", "backbone.hidden_size=32", "backbone.layers=2",
            "backbone.intermediate_size=64", "encoder.projector_inner=32",
            "encoder.projector_out=16", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            "optim.warmup_steps=1", "schedule.warmup_steps=2", "pretrain.steps=2",
            "pretrain.warmup_steps=0", "pretrain.batch_size=4", "eval.c=1", *extra]


GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Documentary", "Drama",
          "Film-Noir", "Horror", "Romance", "Sci-Fi", "Western")
OCCUPATIONS = ("student", "engineer", "programmer", "educator", "writer", "other")


def write_movielens_source(out, *, users: int = 60, items: int = 40, seed: int = 0,
                           start: int = 880_000_000) -> dict:
    """Generated MovieLens-style files in recbole's atomic format (never the real data):
    ``ml-100k.inter``, ``ml-100k.item`` and ``ml-100k.user``. Each user rates in a few
    sessions spread over up to 150 days; returns the generated users' ratings by user id."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    item_rows = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for i in range(1, items + 1):
        genres = rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False)
        year = "" if i == items else str(int(rng.integers(1930, 1998)))
        item_rows.append(f"{i}\tFilm {i}\t{year}\t{' '.join(sorted(genres))}")
    user_rows = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    inter_rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    ratings = {}
    for u in range(1, users + 1):
        zip_code = f"{int(rng.integers(10000, 99999))}" if u % 7 else "T8H1N"
        user_rows.append(f"{u}\t{int(rng.integers(15, 70))}\t{'F' if rng.random() < 0.3 else 'M'}"
                         f"\t{rng.choice(OCCUPATIONS)}\t{zip_code}")
        n = int(rng.integers(20, 40))
        sessions = np.sort(rng.integers(0, 150, size=int(rng.integers(1, 5))))
        day = rng.choice(sessions, size=n)
        ts = start + u * 3600 + day * 86_400 + rng.integers(0, 3600, size=n)
        picked = rng.choice(np.arange(1, items + 1), size=n, replace=False) if n <= items else \
            rng.integers(1, items + 1, size=n)
        stars = rng.integers(1, 6, size=n)
        ratings[str(u)] = list(zip(ts.tolist(), picked.tolist(), stars.tolist()))
        inter_rows += [f"{u}\t{i}\t{r}\t{t}" for t, i, r in ratings[str(u)]]
    for name, rows in (("inter", inter_rows), ("item", item_rows), ("user", user_rows)):
        (out / f"ml-100k.{name}").write_text("\n".join(rows) + "\n")
    return ratings


def write_tiny_text_encoder(out, hidden: int = 32):
    """A tiny random BERT sentence encoder saved as an HF model directory (offline stand-in
    for all-MiniLM-L6-v2 in tests): character-level WordPiece vocabulary, 2 layers."""
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *string.punctuation]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    return out

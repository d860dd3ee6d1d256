"""The synthetic world: deterministic, valid, and shaped like real behaviour."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maskstudy.datamodules.schema import DAY, EVENT_MODALITIES, ts_seconds, validate_dataset
from maskstudy.datamodules.synthetic import WorldConfig, generate_chunk, write_world


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    write_world(WorldConfig(users=250, seed=5, chunk_users=100), tmp_path / "a")
    write_world(WorldConfig(users=250, seed=5, chunk_users=100), tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_other_seed_other_world(tmp_path):
    write_world(WorldConfig(users=100, seed=5), tmp_path / "a")
    write_world(WorldConfig(users=100, seed=6), tmp_path / "b")
    a = pq.read_table(tmp_path / "a" / "users-00000.parquet").column("bill")
    b = pq.read_table(tmp_path / "b" / "users-00000.parquet").column("bill")
    assert not a.equals(b)


def test_world_is_valid_and_sized(world):
    assert validate_dataset(world) == 600
    pf = pq.ParquetFile(world / "users-00000.parquet")
    assert pf.metadata.num_row_groups == 6


def test_files_split_at_file_users(tmp_path):
    meta = write_world(WorldConfig(users=250, chunk_users=50, file_users=100), tmp_path)
    assert meta["files"] == ["users-00000.parquet", "users-00001.parquet", "users-00002.parquet"]
    assert validate_dataset(tmp_path) == 250


def test_activity_is_heavy_tailed():
    table = generate_chunk(WorldConfig(seed=0), 0, 1000)
    counts = sum(np.asarray(pc.list_value_length(table.column(m))) for m in EVENT_MODALITIES)
    assert counts.min() >= 1
    # a long right tail: the 99th percentile user is far busier than the median one
    assert np.percentile(counts, 99) > 4 * np.median(counts)


def test_weekday_rhythm_and_commute_hours():
    table = generate_chunk(WorldConfig(seed=0), 0, 1000)
    flat = pc.list_flatten(table.column("bill").combine_chunks())
    ts = ts_seconds(flat.field("ts"))
    category = np.asarray(flat.field("category").to_pylist())
    dow = ((ts // DAY) + 3) % 7  # Monday = 0
    metro = category == "metro"
    weekday_share = (dow[metro] < 5).mean()
    assert weekday_share > 0.8  # commuting happens on weekdays (5/7 = 0.71 if flat)
    hours = (ts[metro] % DAY) // 3600
    assert np.isin(hours, [7, 8, 9, 17, 18, 19]).mean() > 0.6


def test_history_drifts_into_the_future():
    """The future is related to the history (forecastable) but not a copy of it."""
    table = generate_chunk(WorldConfig(seed=0), 0, 2000)
    hist = np.asarray(pc.list_value_length(table.column("bill")))
    fut = np.asarray(pc.list_value_length(table.column("future_bill")))
    r = np.corrcoef(np.log1p(hist), np.log1p(fut))[0, 1]
    assert 0.4 < r < 0.95

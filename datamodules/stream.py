"""Streaming users out of Parquet a row group at a time, sharded without duplicates.

Datasets far larger than memory are read incrementally: only the row group at hand (and only
the columns asked for) is in memory. The work is split over ``world_size x num_workers``
shards. With at least as many row groups as shards, whole row groups go round-robin to shards;
with fewer (small worlds, many workers), every shard reads each row group and keeps every
n-th row. Either way each user of the split reaches exactly one shard per pass.

Training streams cycle forever (epoch after epoch, each reshuffled from ``seed`` and the
epoch number, identically on every shard) and are sized by ``trainer.max_steps``; evaluation
streams make one pass in file order.

Resuming: a stream is a pure function of its seed and shard, so a resumed run continues exactly
where it stopped by dropping the samples each shard had already delivered (``skip_batches``:
batches the whole loader delivered; a DataLoader takes batch k from worker k mod workers, so
the workers' shards are rotated to keep that order). Dropped samples are still generated, so
skipping costs about as much as producing them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .records import UserColumns
from .splits import user_splits


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int
    rows: int


@dataclass(frozen=True)
class SplitSpec:
    code: int | None  # splits.TRAIN / VAL / PROBE; None: every user
    probe_fraction: float
    val_fraction: float
    seed: int

    def mask(self, user_ids: list[str]) -> np.ndarray:
        if self.code is None:
            return np.ones(len(user_ids), dtype=bool)
        return user_splits(user_ids, probe_fraction=self.probe_fraction,
                           val_fraction=self.val_fraction, seed=self.seed) == self.code


def row_groups(files: list[Path]) -> list[RowGroup]:
    out = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        out += [RowGroup(str(f), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return out


def split_tables(files: list[Path], split: SplitSpec, columns: list[str]) -> Iterator:
    """Each row group of the dataset, read with ``columns`` and cut to the split's users, in
    file order (one row group in memory at a time)."""
    for g in row_groups(files):
        table = pq.ParquetFile(g.file).read_row_group(g.index, columns=columns)
        yield table.take(np.flatnonzero(split.mask(table.column("user_id").to_pylist())))


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed, else the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_plan(n_groups: int, shard: int, shards: int,
               order: np.ndarray) -> list[tuple[int, int | None]]:
    """Row-group indices this shard reads, in ``order``, each with the row residue it keeps
    (``None``: all rows of the group)."""
    if n_groups >= shards:
        return [(int(g), None) for k, g in enumerate(order) if k % shards == shard]
    return [(int(g), shard) for g in order]


class UserStream(IterableDataset):
    """Yields ``make(users, i, epoch)`` items for each user of a split.

    ``make`` returns a list of samples (a user may yield several contrastive pairs). With
    ``shuffle_buffer > 0`` samples pass through a seeded shuffle buffer, so the pairs of
    one user rarely share a batch.
    """

    def __init__(self, files: list[Path], split: SplitSpec,
                 make: Callable[[UserColumns, int, int], list], *, columns: list[str],
                 future: bool, cycle: bool, shuffle: bool, seed: int,
                 shuffle_buffer: int = 0, rank_sharded: bool = True,
                 batch_size: int = 1, skip_batches: int = 0):
        self.files = files
        self.groups = row_groups(files)
        self.split = split
        self.make = make
        self.columns = columns
        self.future = future
        self.cycle = cycle
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank_sharded = rank_sharded  # False: this rank reads every user (rank-0 evaluation)
        self.batch_size = batch_size
        self.skip_batches = skip_batches  # per rank, as counted by this rank's loader

    def _worker(self) -> tuple[int, int]:
        """(the shard's worker index, workers). A DataLoader takes batch k from worker
        k mod workers, starting again at worker 0 when it is rebuilt; after ``skip_batches``
        batches, worker 0 therefore plays the worker that batch ``skip_batches`` came from."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return (worker + self.skip_batches) % workers, workers

    def _shard(self) -> tuple[int, int]:
        rank, world = dist_info() if self.rank_sharded else (0, 1)
        worker, workers = self._worker()
        return rank * workers + worker, world * workers

    def _epoch(self, epoch: int, shard: int, shards: int) -> Iterator:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.groups)) if self.shuffle else np.arange(len(self.groups))
        # Rows of one group are visited in one permutation shared by every shard.
        row_seeds = rng.integers(0, 2**31, len(self.groups))
        for gi, stride_shard in shard_plan(len(self.groups), shard, shards, order):
            group = self.groups[gi]
            table = pq.ParquetFile(group.file).read_row_group(group.index, columns=self.columns)
            ids = table.column("user_id").to_pylist()
            keep = self.split.mask(ids)
            if stride_shard is not None:
                keep &= (np.arange(len(ids)) % shards) == stride_shard
            rows = np.flatnonzero(keep)
            if len(rows) == 0:
                continue
            if self.shuffle:
                rows = np.random.default_rng(row_seeds[gi]).permutation(rows)
            users = UserColumns(table.take(rows), future=self.future)
            for i in range(len(rows)):
                yield from self.make(users, i, epoch)

    def _skipped_samples(self) -> int:
        """Samples this shard delivered in the first ``skip_batches`` batches of the loader."""
        worker, workers = self._worker()
        batches = (self.skip_batches - worker + workers - 1) // workers
        return batches * self.batch_size

    def __iter__(self) -> Iterator:
        samples = self._samples()
        for _ in range(self._skipped_samples()):
            next(samples, None)
        yield from samples

    def _samples(self) -> Iterator:
        shard, shards = self._shard()
        epoch = 0
        buf: list = []
        rng = np.random.default_rng([self.seed, shard, 7])
        while True:
            produced = 0
            for sample in self._epoch(epoch, shard, shards):
                produced += 1
                if self.shuffle_buffer <= 0:
                    yield sample
                    continue
                if len(buf) < self.shuffle_buffer:
                    buf.append(sample)
                    continue
                j = int(rng.integers(len(buf)))
                yield buf[j]
                buf[j] = sample
            epoch += 1
            if not self.cycle:
                break
            if produced == 0:
                raise RuntimeError(
                    f"data shard {shard} of {shards} holds no users of split code "
                    f"{self.split.code}: use fewer dataloader workers or more users")
        rng.shuffle(buf)
        yield from buf

    def count_users(self) -> int:
        """Users of the split in the whole dataset (reads only the id column)."""
        return sum(t.num_rows for t in split_tables(self.files, self.split, ["user_id"]))

"""Data benchmarks: synthetic-world generation and DataModule throughput.

    python -m benchmarks.data_throughput [--users 20000] [--no-write]

Generation is pinned to one core (the target is 20,000 users per minute on one core). The
DataModule numbers are for the main process (num_workers=0), so they are what one dataloader
worker delivers; training uses workers to run beside the model.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_section
from maskstudy.datamodules.datamodules import ContrastiveDataModule, ProbeDataModule
from maskstudy.datamodules.synthetic import WorldConfig, write_world


def bench_generation(users: int, out: Path) -> float:
    start = time.perf_counter()
    write_world(WorldConfig(users=users, seed=0), out)
    return users / (time.perf_counter() - start) * 60


def bench_contrastive(path: Path, batches: int, max_tokens: int) -> tuple[float, float]:
    dm = ContrastiveDataModule(path=str(path), batch_size=16, max_tokens=max_tokens,
                               validate=False)
    dm.setup()
    it = iter(dm.train_dataloader())
    next(it)  # first row group read and warm caches
    start = time.perf_counter()
    for _ in itertools.islice(it, batches):
        pass
    per_batch = (time.perf_counter() - start) / batches
    return 16 / per_batch, per_batch * 1000


def bench_probe(path: Path, max_tokens: int) -> float:
    dm = ProbeDataModule(path=str(path), max_tokens=max_tokens, validate=False)
    dm.setup()
    start = time.perf_counter()
    n = sum(len(b["probe_index"]) for b in dm.probe_dataloader())
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        gen = bench_generation(args.users, world)
        rows = [f"| generator, {args.users:,} users, 1 core | {gen:,.0f} users/min | "
                f"target >= 20,000 users/min |"]
        print(rows[-1])
        ProbeDataModule(path=str(world), validate=False).prepare_data()  # tokenizer, untimed
        for max_tokens in (256, 512):
            sps, ms = bench_contrastive(world, args.batches, max_tokens)
            rows.append(f"| contrastive pairs, batch 16, max_tokens {max_tokens}, 1 process | "
                        f"{sps:,.0f} pairs/s ({ms:.0f} ms/batch) | |")
            print(rows[-1])
            ups = bench_probe(world, max_tokens)
            rows.append(f"| probe users, max_tokens {max_tokens}, 1 process | {ups:,.0f} users/s | |")
            print(rows[-1])
    body = (f"Machine: {machine()}.\n\nCommand: `python -m benchmarks.data_throughput "
            f"--users {args.users}`.\n\n| what | measured | note |\n|---|---|---|\n"
            + "\n".join(rows))
    if not args.no_write:
        write_section("Data: generation and loading", body)


if __name__ == "__main__":
    main()

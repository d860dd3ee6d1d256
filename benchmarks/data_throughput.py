"""Data benchmarks: synthetic-world generation, DataModule throughput, and how long training
waits for data.

    python -m benchmarks.data_throughput [--users 20000] [--train-steps 40] [--no-write]

Generation is pinned to one core (the target is 20,000 users per minute on one core). The
DataModule numbers are for the main process (num_workers=0), so they are what one dataloader
worker delivers. The training wait is measured in a real ``Trainer.fit`` of the causal recipe
on the generated world with the recipe's own loader settings (one worker beside the model, on
every core): Lightning's profiler times each fetch of the next batch
(``train_dataloader_next``) and each training step (``run_training_batch``); the first 5 are
left out (worker start). Target: waiting < 5% of step time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.profilers import SimpleProfiler

from benchmarks.common import publish, table
from maskstudy.datamodules.datamodules import ContrastiveDataModule, ProbeDataModule
from maskstudy.datamodules.synthetic import WorldConfig, write_world
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.lightning_modules.module import ContrastiveMaskingModule


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


def bench_training_wait(path: Path, steps: int) -> tuple[float, float, int]:
    """(median wait for the next batch, median step, workers), seconds, in a causal fit."""
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml",
                      [f"data.path={path}", "data.validate=false", "logging.wandb=false"])
    dm = ContrastiveDataModule(cfg.data, input=cfg.input)
    dm.setup()
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=dm.vocab_size)
    profiler = SimpleProfiler()
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", profiler=profiler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    durations = profiler.recorded_durations
    wait = durations["[_TrainingEpochLoop].train_dataloader_next"][5:]
    step = durations["run_training_batch"][5:]
    return statistics.median(wait), statistics.median(step), cfg.data.num_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cores:
        os.sched_setaffinity(0, {sorted(cores)[0]})
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
        if cores:
            os.sched_setaffinity(0, cores)
        wait, step, workers = bench_training_wait(world, args.train_steps)
        share = wait / step
        held = "holds" if share < 0.05 else "missed"
        rows.append(f"| training waits for data (causal recipe, {workers} loader worker) | "
                    f"{wait * 1000:.1f} ms per {step * 1000:.0f} ms step = {share:.1%} | "
                    f"target < 5%: {held} |")
        print(rows[-1])
    if not args.no_write:
        publish("Data: generation and loading",
                f"python -m benchmarks.data_throughput --users {args.users} --train-steps "
                f"{args.train_steps}", "", table(["what", "measured", "note"], rows),
                "data_throughput",
                [{"what": "data loading, share of step time", "measured": round(share, 4),
                  "interval": None, "target": "< 0.05", "verdict": held}])


if __name__ == "__main__":
    main()

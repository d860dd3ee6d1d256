"""Targeting at scale: rank 1,000,000 precomputed user embeddings for one sentence.

    python -m benchmarks.targeting [--users 1000000] [--dim 128] [--top-k 1000] [--rounds 3]

A ``maskstudy embed``-shaped Parquet file (user_id, embedding list<float32>) of random unit
vectors is written in row groups, then ranked two ways, each in a fresh process so its peak
memory is its own, the ways alternating round by round:

    streamed   what ``maskstudy target --embeddings`` runs: the file read in chunks of
               65,536 rows, an exact top K kept across chunks (experiments/targeting.py)
    in memory  the whole matrix read at once, one matrix product, one top K

Reported per way: the median seconds (reading included; the sentence is a fixed vector, the
answer tower's one forward is not what scales) and the peak resident memory; both rankings
must return the same users. Target: the streamed ranking of 1M users within 10 seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import CHILD_ENV, median_interval, peak_rss_mib, publish, table

TARGET_SECONDS = 10.0
ROW_GROUP = 65_536


def write_pool(path: Path, users: int, dim: int, seed: int = 0) -> None:
    """Random unit embeddings, one row group at a time."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, users, ROW_GROUP):
            n = min(ROW_GROUP, users - start)
            x = rng.standard_normal((n, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = pa.array([f"u{i:08d}" for i in range(start, start + n)], pa.string())
            values = pa.ListArray.from_arrays(np.arange(0, n * dim + 1, dim, dtype=np.int32),
                                              pa.array(x.ravel()))
            writer.write_table(pa.table({"user_id": ids, "embedding": values}, schema=schema))


def query_vector(dim: int) -> np.ndarray:
    q = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    return q / np.linalg.norm(q)


def rank(way: str, path: Path, dim: int, k: int) -> dict:
    """One ranking in this process: seconds, peak memory and the top user ids."""
    import torch

    from maskstudy.experiments.targeting import parquet_chunks
    from maskstudy.lightning_modules.targeting import top_k_cosine

    q = torch.from_numpy(query_vector(dim))
    start = time.perf_counter()
    if way == "streamed":
        users, _ = top_k_cosine(q, parquet_chunks(path, dim=dim), k)
    else:
        table = pq.read_table(path)
        column = table.column("embedding").combine_chunks()
        matrix = torch.from_numpy(np.asarray(column.values).reshape(len(table), dim).copy())
        scores = torch.nn.functional.normalize(matrix, dim=-1) @ q
        top = torch.sort(scores, descending=True, stable=True).indices[:k]
        ids = table.column("user_id").to_pylist()
        users = [ids[i] for i in top.tolist()]
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib(), "users": users}


def child(way: str, path: Path, dim: int, k: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.targeting", "--child", way,
                          "--path", str(path), "--dim", str(dim), "--top-k", str(k)],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, **CHILD_ENV})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", choices=["streamed", "in_memory"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(rank(args.child, Path(args.path), args.dim, args.top_k)))
        return
    root = Path(tempfile.mkdtemp(prefix="maskstudy-targeting-"))
    try:
        path = root / "users.parquet"
        start = time.perf_counter()
        write_pool(path, args.users, args.dim)
        written = time.perf_counter() - start
        size = path.stat().st_size / 2**20
        runs: dict[str, list[dict]] = {"streamed": [], "in_memory": []}
        for r in range(args.rounds):
            for way in (["streamed", "in_memory"] if r % 2 == 0 else ["in_memory", "streamed"]):
                runs[way].append(child(way, path, args.dim, args.top_k))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    same = all(a["users"] == b["users"] for a, b in zip(runs["streamed"], runs["in_memory"]))
    if not same:
        raise SystemExit("the streamed and in-memory rankings differ")
    rows, summary = [], {}
    for way, label in (("streamed", "streamed (`maskstudy target --embeddings`)"),
                       ("in_memory", "whole matrix in memory")):
        seconds = [r["seconds"] for r in runs[way]]
        peak = max(r["peak_mib"] for r in runs[way])
        summary[way] = (statistics.median(seconds), median_interval(seconds), peak)
        lo, hi = summary[way][1]
        rows.append(f"| {label} | {summary[way][0]:.2f} [{lo:.2f}, {hi:.2f}] | {peak:.0f} |")
    med, (lo, hi), _ = summary["streamed"]
    verdict = "holds" if hi <= TARGET_SECONDS else "missed" if lo > TARGET_SECONDS else "undecided"
    text = (f"{args.users:,} users x {args.dim} dimensions ({size:.0f} MiB of Parquet, "
            f"written in {written:.1f} s), top {args.top_k}; both ways return the same users."
            "\n\n" + table(["ranking", "seconds, median [95%]", "peak memory (MiB)"], rows)
            + f"\n\nPeak memory: streamed / in memory = "
              f"{summary['streamed'][2] / summary['in_memory'][2]:.2f}.")
    print(text)
    if not args.no_write:
        publish("Targeting: ranking precomputed users",
                f"python -m benchmarks.targeting --users {args.users} --rounds {args.rounds}",
                f"{args.rounds} rounds, the ways alternating, each in a fresh process", text,
                benchmark="targeting",
                targets=[{"what": f"ranking {args.users:,} precomputed users, streamed "
                                  f"(seconds)", "measured": round(med, 2),
                          "interval": [round(lo, 2), round(hi, 2)],
                          "target": f"<= {TARGET_SECONDS:.0f} s", "verdict": verdict}])


if __name__ == "__main__":
    main()

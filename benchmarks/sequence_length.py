"""Step time and memory per mask as the user sequence grows (128, 256, 512, 1024 tokens).

    python -m benchmarks.sequence_length [--batch 8] [--lengths 128 256 512 1024] [--steps 8]

The masks of the recipe rows (``benchmarks.recipes``: the sdpa floor, causal, hybrid,
bidirectional, the scheduler's uniform soft mask, GG-SM's per-position soft mask and the
naive GG-SM bias), each on the default tiny Qwen2, trained by hand (forward and backward of
both towers, AdamW; no callbacks, so this is the mask's own cost) on a fixed batch per length.
At each length the masks are interleaved step by step, the order rotating; ratio: per step
round, the mask's step over causal's, median over rounds with a 95% bootstrap interval.
Bias ms: the user tower's inputs and bias, built once without grad (median of 3). Memory:
what the forward saves for backward (exact, ``saved_activations``), and the size of one
B x L x L fp32 bias.
"""

from __future__ import annotations

import argparse
import statistics
import warnings


from benchmarks.common import make_batch, publish, ratio_row, table
from benchmarks.recipes import (
    FLOOR, NAIVE, activations_mib, build_bias, paired, prepared, train_step,
)

# the recipes' targets, applied at every length
TARGETS = {"hybrid": 1.10, "bidirectional": 1.10, "soft, uniform (scheduler)": 1.20,
           "soft, per position (GG-SM)": 1.20}
ROWS = {FLOOR: FLOOR, "causal": "causal", "hybrid": "hybrid", "bidirectional": "bidirectional",
        "soft, uniform (scheduler)": "scheduler",
        "soft, per position (GG-SM)": "ggsm, ramp", "naive (GG-SM)": NAIVE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    first = make_batch(args.batch, args.lengths[0])
    rows = {label: prepared(recipe_row, first) for label, recipe_row in ROWS.items()}
    labels = list(ROWS)
    lines, targets = [], []
    for length in args.lengths:
        data = make_batch(args.batch, length)
        for label in labels:  # warm-up at this length
            train_step(*rows[label], data)
        times: dict[str, list[float]] = {label: [] for label in labels}
        for r in range(args.steps):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                times[label].append(train_step(*rows[label], data))
        bias_mib = args.batch * length ** 2 * 4 / 2**20
        for label in labels:
            ratio, low, high = paired(times, label, "causal")
            module = rows[label][0]
            bias_ms = statistics.median(build_bias(module, data) for _ in range(3)) * 1000
            lines.append(f"| {length} | {label} | {statistics.median(times[label]) * 1000:.0f} "
                         f"| {ratio:.3f} [{low:.3f}, {high:.3f}] | {bias_ms:.1f} | "
                         f"{activations_mib(module, data):.0f} | {bias_mib:.1f} |")
            print(lines[-1], flush=True)
            target = TARGETS.get(label)
            if target is not None:
                targets.append(ratio_row(f"step time at {length} tokens, {label}", ratio,
                                         low, high, target, " causal"))
    if not args.no_write:
        publish("Sequence length: step time and memory per mask",
                f"python -m benchmarks.sequence_length --batch {args.batch} --lengths "
                f"{' '.join(map(str, args.lengths))} --steps {args.steps}",
                "default tiny Qwen2, sdpa, fp32; masks interleaved step by step at each "
                "length; no callbacks",
                table(["tokens", "mask", "step ms", "ratio to causal [95%]", "bias ms",
                       "activations MiB", "one bias MiB"], lines),
                "sequence_length", targets)


if __name__ == "__main__":
    main()

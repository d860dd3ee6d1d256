"""What each recipe costs on the default tiny model, as ratios to the causal recipe.

    python -m benchmarks.recipes [--batch 16] [--tokens 256] [--rounds 20]

Every row is a recipe from ``experiments/`` (its mask, options and extra parameters, built
from the YAML as ``maskstudy fit`` builds the module), on the default tiny Qwen2 (sdpa, fp32,
CPU), trained on one fixed batch (``benchmarks.common.make_batch``). Two more rows frame them:

    sdpa, no bias     the floor: the same model with transformers' own sdpa path and its own
                      causal mask (a 2D padding mask in, no maskstudy bias at all)
    naive mask        the demo code's way: the GG-SM bias rebuilt every forward with a Python
                      loop over rows, a host read of each length and boolean indexing

Columns:

    step ms, ratio    one training step: forward and backward of both towers, AdamW. All rows
                      are interleaved step by step in one process, the order rotating each
                      round, so drift of the machine hits them alike; ratio: per round the
                      row's step over causal's, the median over rounds with a 95% bootstrap
                      interval. The GG-SM pre-warmup row keeps the last layer's input, as the
                      pre-warmup makes it; the schedule callbacks' own hooks are measured by
                      ``benchmarks.schedule_overhead`` (interleaved inside one Trainer run).
    bias ms           the user tower's inputs and bias, built once without grad (interleaved)
    activations MiB   what the forward saves for backward (``saved_activations``)
    peak RSS MiB      a fresh process per recipe running 3 such steps (interpreter and
                      libraries included, identical for every recipe)
    embed users/s     ``embed_users`` under the recipe's inference mask, 64 users per batch,
                      and its ratio to causal's throughput (interleaved like the steps)

Targets (issue: performance): hard masks <= 1.10x causal, soft-bias recipes <= 1.20x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from benchmarks.common import (
    CHILD_ENV, VOCAB, config_world, make_batch, median_interval, peak_rss_mib, publish,
    ratio_row, saved_activations, table,
)
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.lightning_modules.masks import SoftFutureMask, blocked_value
from maskstudy.lightning_modules.module import ContrastiveMaskingModule

FLOOR, NAIVE = "sdpa, no bias (floor)", "naive mask (GG-SM)"
# label -> (recipe, target ratio to causal or None)
ROWS = {
    FLOOR: ("causal", None),
    "causal": ("causal", 1.10),
    "hybrid": ("hybrid", 1.10),
    "bidirectional": ("bidirectional", 1.10),
    "hybrid_gq": ("hybrid_gq", None),
    "hybrid_mlp": ("hybrid_mlp", None),
    "hybrid_soft": ("hybrid_soft", 1.20),
    "scheduler": ("scheduler", 1.20),
    "scheduler_window": ("scheduler_window", None),
    "ggsm, pre-warmup": ("ggsm", 1.20),
    "ggsm, ramp": ("ggsm", 1.20),
    NAIVE: ("ggsm", None),
}


class NaiveSoftMask(SoftFutureMask):
    """The demo code's bias: rebuilt every forward, one row at a time, its length read on the
    host, future keys set with boolean indexing. Same values as ``SoftFutureMask`` (scope
    ``all``, absolute index) for right padding, which :func:`check_naive` asserts."""

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        batch, length = attention_mask.shape
        log_w = torch.log(self.weights()[0].clamp_min(1e-30)).to(dtype)
        bias = torch.full((batch, 1, length, length), blocked_value(dtype))
        for row in range(batch):
            n = int(attention_mask[row].sum().item())  # a host sync per row
            future = torch.ones(n, n, dtype=torch.bool).triu(1)
            block = torch.zeros(n, n, dtype=dtype)
            block[future] = log_w[:n].expand(n, n)[future]
            bias[row, 0, :n, :n] = block
            bias[row, 0, n:, :n] = 0.0  # padding queries see the real keys (all in their past)
        return bias


def check_naive(module: ContrastiveMaskingModule, data: dict) -> None:
    ours = module.mask
    naive = NaiveSoftMask(positions=ours.positions)
    naive.load_state_dict(ours.state_dict())
    args = data["user_segment_ids"], data["user_attention_mask"]
    with torch.no_grad():
        if not torch.equal(ours(*args), naive(*args)):
            raise AssertionError("the naive mask does not reproduce the soft mask's bias")
    module.encoder.mask = naive


def use_plain_sdpa(module: ContrastiveMaskingModule) -> None:
    """transformers' own sdpa path: the encoder hands it the token ids and the 2D padding
    mask, and builds no bias (the causal recipe has no global token, no embedding-reading
    mask and no hierarchical slots, so token ids are all it needs)."""
    module.encoder.backbone.set_attn_implementation("sdpa")

    def plain(input_ids, attention_mask, segment_ids, mask, *args):
        return {"input_ids": input_ids}, attention_mask, segment_ids, attention_mask

    module.encoder.inputs = plain


def prepared(label: str, data: dict) -> tuple[ContrastiveMaskingModule, torch.optim.Optimizer]:
    """(module, AdamW) of one row; the module built from the recipe as ``maskstudy fit``
    builds it."""
    recipe, _ = ROWS[label]
    cfg = load_config(EXPERIMENTS_DIR / f"{recipe}.yaml",
                      [f"data.path={config_world()}", "logging.wandb=false"])
    torch.manual_seed(0)
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=VOCAB).train()
    if label == FLOOR:
        use_plain_sdpa(module)
    if label == NAIVE:
        check_naive(module, data)
    if label == "ggsm, pre-warmup":  # what the pre-warmup asks of every warmup forward
        module.encoder.capture_last_layer_input = True
    return module, torch.optim.AdamW(module.parameters(), lr=1e-4)


def train_step(module, optimizer, data: dict) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    module._loss(data).loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def memory_child(label: str, batch: int, tokens: int) -> None:
    data = make_batch(batch, tokens)
    module, optimizer = prepared(label, data)
    for _ in range(3):
        train_step(module, optimizer, data)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def peak_rss(labels: list[str], batch: int, tokens: int) -> dict[str, float]:
    """Peak RSS of a fresh process per row, two processes at a time."""
    def child(label: str) -> float:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.recipes", "--memory-child", label,
             "--batch", str(batch), "--tokens", str(tokens)],
            capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
        if out.returncode:
            raise RuntimeError(f"memory child for {label!r} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(labels, pool.map(child, labels)))


def build_bias(module, data: dict) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        module.encoder.inputs(data["user_input_ids"], data["user_attention_mask"],
                              data["user_segment_ids"], module.mask, module.mask.global_token)
    return time.perf_counter() - start


def embed(module, users: dict) -> float:
    start = time.perf_counter()
    module.embed_users(users)
    return time.perf_counter() - start


def activations_mib(module, data: dict) -> float:
    with saved_activations(module) as saved:
        loss = module._loss(data).loss
    loss.backward()
    module.zero_grad(set_to_none=True)
    return sum(saved.values()) / 2**20


def interleaved(labels: list[str], rounds: int, measure) -> dict[str, list[float]]:
    """``measure(label)`` for every label in every round, the order rotating each round, so
    drift of the machine hits every label alike. Returns each label's value per round."""
    out: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            out[label].append(measure(label))
    return out


def paired(values: dict[str, list[float]], label: str, reference: str):
    """(median ratio over rounds, 95% interval) of ``label`` to ``reference``."""
    ratios = [a / b for a, b in zip(values[label], values[reference])]
    return (statistics.median(ratios), *median_interval(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per row")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.tokens)
        return
    data = make_batch(args.batch, args.tokens)
    users = make_batch(64, args.tokens, seed=1)
    rows = {label: prepared(label, data) for label in ROWS}
    labels = list(ROWS)
    for label in labels:  # warm-up
        train_step(*rows[label], data)
        embed(rows[label][0], users)
    step = interleaved(labels, args.rounds, lambda label: train_step(*rows[label], data))
    print("training steps measured", flush=True)
    inference = interleaved(labels, 10, lambda label: embed(rows[label][0], users))
    bias = interleaved(labels, 25, lambda label: build_bias(rows[label][0], data))
    rss = peak_rss(labels, args.batch, args.tokens)
    lines, targets = [], []
    for label in labels:
        module = rows[label][0]
        mask = module.config.mask
        ratio, low, high = paired(step, label, "causal")
        target = ROWS[label][1]
        check = "-"
        if target is not None and label != "causal":
            targets.append(ratio_row(f"step time, {label}", ratio, low, high, target, " causal"))
            check = f"<= {target:.2f}: {targets[-1]['verdict']}"
        users_per_s = 64 / statistics.median(inference[label])
        embed_ratio = paired(inference, "causal", label)  # throughput: causal's time / ours
        lines.append(
            f"| {label} | {statistics.median(step[label]) * 1000:.0f} | {ratio:.3f} "
            f"[{low:.3f}, {high:.3f}] | {check} | {statistics.median(bias[label]) * 1000:.1f} "
            f"| {activations_mib(module, data):.0f} | {rss[label]:.0f} | "
            f"{mask.inference or mask.name} | {users_per_s:.0f} | {embed_ratio[0]:.2f} "
            f"[{embed_ratio[1]:.2f}, {embed_ratio[2]:.2f}] |")
        print(lines[-1], flush=True)
    floor = paired(step, "causal", FLOOR)
    naive = paired(step, NAIVE, "ggsm, ramp")
    naive_bias = paired(bias, NAIVE, "ggsm, ramp")
    targets += [ratio_row("causal step vs the sdpa floor", *floor),
                ratio_row("naive mask / ours (GG-SM ramp), step time", *naive),
                ratio_row("naive mask / ours (GG-SM ramp), bias build", *naive_bias)]
    summary = (f"Causal costs {floor[0]:.3f}x [{floor[1]:.3f}, {floor[2]:.3f}] the sdpa floor. "
               f"The naive mask path builds the GG-SM bias {naive_bias[0]:.1f}x slower than "
               f"maskstudy's; its training step takes {naive[0]:.3f}x [{naive[1]:.3f}, "
               f"{naive[2]:.3f}] ours.")
    print(summary)
    if not args.no_write:
        publish("Recipes: step time, bias, memory, inference",
                f"python -m benchmarks.recipes --batch {args.batch} --tokens {args.tokens} "
                f"--rounds {args.rounds}",
                "default tiny Qwen2: hidden 128, 4 layers, sdpa, fp32; one fixed batch, a "
                "quarter of its rows padded; both towers, AdamW; the rows interleaved step by "
                "step; intervals: 95% bootstrap over rounds; each column is described in the "
                "module docstring",
                table(["recipe", "step ms", "ratio to causal [95%]", "target", "bias ms",
                       "activations MiB", "peak RSS MiB", "inference mask", "embed users/s",
                       "embed vs causal [95%]"], lines) + f"\n\n{summary}",
                "recipes", targets)

if __name__ == "__main__":
    main()

"""Training step time and peak memory per mask on the default model, as ratios to causal.

    python -m benchmarks.mask_step_time [--batch 16] [--tokens 512] [--steps 12]

One step = forward and backward of both towers (user: ``--tokens`` long, answer: 64) plus an
AdamW step, on the default tiny Qwen2 (sdpa). Step times are measured side by side in one
process, the masks interleaved round-robin (the order rotating each round) so machine drift hits
all alike; the median per mask is reported. Peak memory is the peak resident set size of a fresh process per mask that runs
the same steps (so it includes the interpreter and libraries, identical for every mask).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import machine, write_section
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig, ModuleConfig

MASKS = {
    "causal": ("causal", {}),
    "hybrid": ("hybrid", {}),
    "bidirectional": ("bidirectional", {}),
    "soft (per-position weights)": ("soft", {"positions": 2048, "init": 0.5}),
    "soft (per-layer, per-position)": ("soft", {"positions": 2048, "init": 0.5, "layers": "all"}),
}
VOCAB = 4096


def make_batch(batch: int, tokens: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    seg = torch.ones(batch, tokens, dtype=torch.long)
    seg[:, -12:-1] = 2
    seg[:, -1] = 3
    return {
        "user_input_ids": torch.randint(20, VOCAB, (batch, tokens), generator=g),
        "user_attention_mask": torch.ones(batch, tokens, dtype=torch.long),
        "user_segment_ids": seg,
        "answer_input_ids": torch.randint(20, VOCAB, (batch, 64), generator=g),
        "answer_attention_mask": torch.ones(batch, 64, dtype=torch.long),
    }


def make_module(key: str) -> ContrastiveMaskingModule:
    name, options = MASKS[key]
    torch.manual_seed(0)
    return ContrastiveMaskingModule(ModuleConfig(mask=MaskConfig(name=name, options=options)),
                                    vocab_size=VOCAB)


def step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    model._loss(batch).loss.backward()
    optimizer.step()


def memory_child(key: str, batch: int, tokens: int, steps: int) -> None:
    model = make_module(key)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = make_batch(batch, tokens)
    for _ in range(steps):
        step(model, opt, data)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's resident high-water mark (VmHWM; unlike ru_maxrss it does not carry
    the parent's peak across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.tokens, 3)
        return
    data = make_batch(args.batch, args.tokens)
    models = {k: make_module(k) for k in MASKS}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in MASKS}
    bias_ms: dict[str, list[float]] = {k: [] for k in MASKS}
    for k in MASKS:  # warm-up
        step(models[k], opts[k], data)
    keys = list(MASKS)
    for r in range(args.steps):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate who goes first
            start = time.perf_counter()
            step(models[k], opts[k], data)
            times[k].append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                models[k].mask(data["user_segment_ids"], data["user_attention_mask"])
            bias_ms[k].append((time.perf_counter() - start) * 1000)
    memory = {}
    for k in MASKS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.mask_step_time", "--memory-child", k,
                              "--batch", str(args.batch), "--tokens", str(args.tokens)],
                             capture_output=True, text=True, check=True)
        memory[k] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    base = statistics.median(times["causal"])
    rows = []
    for k in MASKS:
        med = statistics.median(times[k])
        rows.append(f"| {k} | {med * 1000:.0f} | {med / base:.3f} | "
                    f"{statistics.median(bias_ms[k]):.1f} | {memory[k]:.0f} | "
                    f"{memory[k] - memory['causal']:+.0f} |")
        print(rows[-1])
    body = (f"Machine: {machine()}.\n\nCommand: `python -m benchmarks.mask_step_time --batch "
            f"{args.batch} --tokens {args.tokens} --steps {args.steps}` (default tiny Qwen2: "
            f"hidden 128, 4 layers, sdpa; both towers, AdamW; median of {args.steps} steps).\n\n"
            "| mask | step ms | ratio to causal | bias build ms | peak RSS MiB | vs causal MiB |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) +
            f"\n\nThe bias tensor itself is B x L x L x 4 bytes = "
            f"{args.batch * args.tokens ** 2 * 4 / 2**20:.0f} MiB (times the layer count for "
            "per-layer masks); peak-RSS differences between processes of about +-150 MiB are "
            "allocator noise, seen between repeated runs of the same mask.")
    if not args.no_write:
        write_section("Mask step time and memory", body)


if __name__ == "__main__":
    main()

"""Cost of the GG-SM pre-warmup and of the mask scheduler, side by side with the plain
bidirectional recipe, interleaved step by step in one training run.

    python -m benchmarks.schedule_overhead [--steps 240]

One ``Trainer.fit`` of the default tiny Qwen2 (batch 16, 256 user tokens, sdpa) on a fixed
batch. Optimiser step t runs configuration t mod 3 (the order rotating every 3 steps):

    bidirectional   the hard bidirectional mask, no schedule callback (the plain recipe)
    + pre-warmup    the soft mask with GradientGuidedPrewarmup active: last-layer capture,
                    retained gradient, per-position aggregation, weight update
    + scheduler     the soft mask with LinearMaskScheduler setting its weights

All three share one model, one optimiser and one data stream, so drift of the machine hits them
alike. Each step is timed from batch start to batch end (forward, backward, optimiser step and
every hook); the first 6 steps are left out. Every block of 3 consecutive steps holds each
configuration once, so each block gives a paired ratio (configuration / bidirectional of the
same block). Reported: the median step per configuration; the median paired ratio with a 95%
bootstrap interval over blocks; and the time spent inside the callback's own hooks per step
(the directly measured part of the overhead; the pre-warmup also makes backward keep one more
gradient, which only the step time shows).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import make_batch, median_interval, publish, ratio_row, table
from maskstudy.callbacks.mask_schedule import GradientGuidedPrewarmup, LinearMaskScheduler
from maskstudy.lightning_modules.masks import BidirectionalMask, SoftFutureMask
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig, ModuleConfig

KINDS = ("bidirectional", "+ pre-warmup", "+ scheduler")
TARGETS = {"+ pre-warmup": 1.05, "+ scheduler": 1.02}
SKIP = 6  # first steps: allocator and thread-pool warm-up
FORWARDED = ("on_train_batch_start", "on_before_backward", "on_after_backward",
             "on_before_optimizer_step")


class Interleave(L.Callback):
    """Step t runs configuration ``KINDS[order(t)]``: swaps the mask and forwards the hooks of
    that configuration's callback only; records each step's wall time."""

    def __init__(self, module: ContrastiveMaskingModule, steps: int):
        self.masks = {"bidirectional": BidirectionalMask(),
                      "soft": SoftFutureMask(positions=2048, init=1.0)}
        self.callbacks = {"+ pre-warmup": GradientGuidedPrewarmup(steps + 1),
                          "+ scheduler": LinearMaskScheduler(0, steps + 1)}
        self.times: dict[str, list[float]] = {k: [] for k in KINDS}
        self.blocks: dict[int, dict[str, float]] = {}  # step // 3 -> kind -> seconds
        self.hook_seconds: dict[str, list[float]] = {k: [] for k in KINDS}
        self._hooks = 0.0
        self.kind = KINDS[0]
        module.encoder.mask = self.masks["soft"]

    @staticmethod
    def order(step: int) -> str:
        rotation = (step // 3) % 3
        return KINDS[(step + rotation) % 3]

    def setup(self, trainer, pl_module, stage):
        self.callbacks["+ pre-warmup"].setup(trainer, pl_module, stage)

    def _forward(self, hook: str, trainer, pl_module, *args):
        callback = self.callbacks.get(self.kind)
        if callback is not None and hasattr(callback, hook):
            start = time.perf_counter()
            getattr(callback, hook)(trainer, pl_module, *args)
            self._hooks += time.perf_counter() - start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()
        self._hooks = 0.0
        self.kind = self.order(trainer.global_step)
        pl_module.encoder.mask = self.masks["bidirectional" if self.kind == "bidirectional"
                                            else "soft"]
        pl_module.encoder.capture_last_layer_input = False
        self._forward("on_train_batch_start", trainer, pl_module, batch, batch_idx)

    def on_before_backward(self, trainer, pl_module, loss):
        self._forward("on_before_backward", trainer, pl_module, loss)

    def on_after_backward(self, trainer, pl_module):
        self._forward("on_after_backward", trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._forward("on_before_optimizer_step", trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1  # the step that just ended
        if step < SKIP:
            return
        seconds = time.perf_counter() - self._start
        self.times[self.kind].append(seconds)
        self.hook_seconds[self.kind].append(self._hooks)
        self.blocks.setdefault(step // 3, {})[self.kind] = seconds

    def paired_ratios(self, kind: str) -> np.ndarray:
        return np.array([b[kind] / b["bidirectional"] for b in self.blocks.values()
                         if len(b) == len(KINDS)])


def run(steps: int) -> Interleave:
    torch.manual_seed(0)
    module = ContrastiveMaskingModule(
        ModuleConfig(mask=MaskConfig(name="soft", options={"positions": 2048, "init": 1.0})),
        vocab_size=4096)
    interleave = Interleave(module, steps)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[interleave])
    batch = make_batch(16, 256)
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return interleave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    result = run(args.steps)
    times = result.times
    rows, targets = [], []
    for kind in KINDS:
        med = statistics.median(times[kind])
        hooks = statistics.median(result.hook_seconds[kind]) * 1000
        if kind == "bidirectional":
            cells = "1.000 | - | - | - |"
        else:
            ratios = result.paired_ratios(kind)
            lo, hi = median_interval(ratios)
            targets.append(ratio_row(f"{kind.removeprefix('+ ')} overhead over the same recipe "
                                     "without the hook", float(np.median(ratios)), lo, hi,
                                     TARGETS[kind]))
            held = targets[-1]["verdict"]
            cells = (f"{np.median(ratios):.3f} | [{lo:.3f}, {hi:.3f}] | {hooks:.2f} ms "
                     f"({hooks / (med * 1000):.2%}) | <= {TARGETS[kind]:.2f}: {held} |")
        rows.append(f"| {kind} | {med * 1000:.0f} | {len(times[kind])} | {cells}")
        print(rows[-1])
    if not args.no_write:
        publish("GG-SM pre-warmup and scheduler overhead",
                f"python -m benchmarks.schedule_overhead --steps {args.steps}",
                "default tiny Qwen2, batch 16, 256 user tokens, sdpa; one run, the three "
                "configurations interleaved step by step; ratio = median over blocks of 3 "
                "consecutive steps of the paired ratio to bidirectional",
                table(["configuration", "median step ms", "steps", "ratio", "95% interval",
                       "hooks per step", "target"], rows),
                "schedule_overhead", targets)


if __name__ == "__main__":
    main()

"""Progress of long work, for people watching and for the sweep that runs it.

A run writes ``progress.json`` in its run directory as it goes: its stage (``setup``,
``pretrain``, ``train``, ``eval``, ``done``), the step and step count of that stage, when the
stage started and when the file was written. ``maskstudy sweep`` reads the files of its
running points and prints one status line at least every ``PRINT_EVERY`` seconds: points done,
running and pending, each running point's stage, step and ETA, the time elapsed and an
estimate of the time remaining.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L

PRINT_EVERY = 30.0  # seconds between status lines of long work
WRITE_EVERY = 5.0  # seconds between writes of one progress file within a stage


class ProgressFile:
    """``progress.json`` of one run, written atomically, at most every ``WRITE_EVERY``
    seconds within a stage (every stage change is written at once)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "progress.json"
        self.stage, self.started, self.written = "", 0.0, 0.0

    def update(self, stage: str, step: int = 0, steps: int = 0) -> None:
        now = time.time()
        if stage != self.stage:
            self.stage, self.started = stage, now
        elif now - self.written < WRITE_EVERY and step < steps:
            return
        self.written = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": stage, "step": step, "steps": steps,
                                   "stage_started": self.started, "updated": now}))
        os.replace(tmp, self.path)


class TrainingProgress(L.Callback):
    """Keeps a run's ``progress.json`` at the optimiser step it has reached."""

    def __init__(self, progress: ProgressFile):
        self.progress = progress

    def on_train_start(self, trainer, pl_module):
        self.progress.update("train", trainer.global_step, trainer.max_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.progress.update("train", trainer.global_step, trainer.max_steps)

    def on_train_end(self, trainer, pl_module):
        self.progress.update("eval")


def read_progress(run_root: Path) -> dict | None:
    """The newest ``progress.json`` under a point's run root (``<name>/<timestamp>/``)."""
    files = sorted(Path(run_root).glob("*/*/progress.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    try:
        return json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being replaced this instant
        return None


def eta_seconds(progress: dict, now: float) -> float | None:
    """Seconds left in the progress file's stage at its rate so far (None: no rate yet)."""
    step, steps = progress.get("step", 0), progress.get("steps", 0)
    spent = progress["updated"] - progress["stage_started"]
    if not steps or step <= 0 or spent <= 0:
        return None
    return (steps - step) * spent / step - (now - progress["updated"])


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    return f"{seconds / 60:.1f}m" if seconds >= 60 else f"{seconds:.0f}s"

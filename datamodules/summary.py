"""The world summary: per-task prevalence and the bag-of-events baseline AUC.

It shows that the tasks are learnable but not trivial, and fixes the reference row a trained
encoder has to beat: the same probe users, the same stratified test splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import baseline
from .probe import MIN_SCORABLE, ProbeSet
from .schema import DataValidationError, dataset_files, dataset_spec
from .splits import PROBE
from .stream import SplitSpec
from .tasks import resolve_tasks


def world_summary(path: str | Path, *, tasks: str | list = "all",
                  probe_fraction: float = 0.3, val_fraction: float = 0.05, split_seed: int = 0,
                  test_fraction: float = 0.3, task_dirs: tuple[Path, ...] = (),
                  min_class_users: int = MIN_SCORABLE) -> dict:
    """Per task: prevalence and the bag-of-events AUC on the probe users. Tasks with fewer
    than ``min_class_users`` of a class are listed under ``skipped``, not scored."""
    files = dataset_files(path)
    try:
        resolved = resolve_tasks(tasks, task_dirs)
    except ValueError as e:
        raise DataValidationError(f"tasks: {e}") from e
    probe = ProbeSet(files, SplitSpec(PROBE, probe_fraction, val_fraction, split_seed),
                     resolved, test_fraction=test_fraction, seed=split_seed,
                     min_class_users=min_class_users, sparse_tasks="skip").load()
    spec = dataset_spec(path)
    x = baseline.features(probe.history_table())
    rows = {}
    for k, task in enumerate(probe.tasks):
        y = probe.labels[:, k]
        test = probe.test_mask(task.name)
        rows[task.name] = {
            "title": task.title,
            "domains": task.domains,
            "rule": task.rule.describe(spec.future_days),
            "prevalence": float(y.mean()),
            "positives": int(y.sum()),
            "bag_of_events_auc": baseline.probe_auc(x, y, test),
        }
    meta = {}
    for name in ("world.json", "dataset.json"):  # synthetic world, converted public data
        if (Path(path) / name).exists():
            meta = json.loads((Path(path) / name).read_text())
    return {"path": str(path), "probe_users": len(probe.user_ids), "world": meta,
            "windows": {"history_days": spec.history_days, "future_days": spec.future_days},
            "modalities": list(spec.names), "tasks": rows, "skipped": probe.skipped}


def format_summary(summary: dict) -> str:
    lines = [f"{summary['path']}: {summary['probe_users']} probe users",
             f"{'task':<12} {'domain(s)':<44} {'prev.':>6} {'pos.':>6} {'BoE AUC':>8}"]
    aucs = []
    for name, r in summary["tasks"].items():
        domains = ", ".join(f"{p}:{d}" for p, d in r["domains"].items())
        auc = r["bag_of_events_auc"]
        aucs.append(auc)
        lines.append(f"{name:<12} {domains:<44} {r['prevalence']:>6.3f} {r['positives']:>6d} "
                     f"{auc:>8.3f}")
    if aucs:
        lines.append(f"{'average':<12} {'':<44} {'':>6} {'':>6} {np.mean(aucs):>8.3f}")
    for name, c in summary.get("skipped", {}).items():
        lines.append(f"{name:<12} skipped: {c['positives']} positive(s), {c['negatives']} "
                     f"negative(s) among the probe users")
    return "\n".join(lines)

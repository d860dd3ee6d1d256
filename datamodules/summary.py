"""The world summary: per-task prevalence, the bag-of-events baseline AUC and, on a synthetic
world, the ceiling (``datamodules/ceiling.py``).

It shows that the tasks are learnable but not trivial, and fixes the reference row a trained
encoder has to beat: the same probe users, the same stratified test splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from . import baseline, ceiling
from .datamodules import DataConfig, ProbeDataModule
from .hierarchical import InputConfig
from .probe import MIN_SCORABLE, ProbeSet
from .schema import DataValidationError, dataset_files, dataset_spec
from .splits import PROBE
from .stream import SplitSpec
from .tasks import resolve_tasks


def world_summary(path: str | Path, *, tasks: str | list = "all",
                  probe_fraction: float = 0.3, val_fraction: float = 0.05, split_seed: int = 0,
                  test_fraction: float = 0.3, task_dirs: tuple[Path, ...] = (),
                  min_class_users: int = MIN_SCORABLE, window_tokens: int | None = None,
                  window_input: str = "text", activity_header: bool = False,
                  ceiling_draws: int | None = None) -> dict:
    """Per task: prevalence and the bag-of-events AUC on the probe users. Tasks with fewer
    than ``min_class_users`` of a class are listed under ``skipped``, not scored. With
    ``window_tokens``, also the bag of events on the window a ``window_input`` user tower of
    that many tokens reads (``data.max_tokens``, the default caps and probe query; with
    ``activity_header``, the counts the header states as well). With ``ceiling_draws``, also
    the AUC of each label's probability given the world's latents, from that many redrawn
    futures."""
    files = dataset_files(path)
    try:
        resolved = resolve_tasks(tasks, task_dirs)
    except ValueError as e:
        raise DataValidationError(f"tasks: {e}") from e
    probe = ProbeSet(files, SplitSpec(PROBE, probe_fraction, val_fraction, split_seed),
                     resolved, test_fraction=test_fraction, seed=split_seed,
                     min_class_users=min_class_users, sparse_tasks="skip").load()
    spec = dataset_spec(path)
    x = probe.history_features()
    x_window = None
    if window_tokens is not None:
        window = ProbeDataModule(
            DataConfig(path=str(path), max_tokens=window_tokens, probe_fraction=probe_fraction,
                       val_fraction=val_fraction, split_seed=split_seed, num_workers=0,
                       activity_header=activity_header),
            tasks=probe.tasks, test_fraction=test_fraction, min_class_users=min_class_users,
            sparse_tasks="skip", input=InputConfig(mode=window_input))
        window.setup()
        x_window = window.window_features()
    p = None
    if ceiling_draws is not None:
        try:
            p = ceiling.label_probabilities(path, probe.user_ids, probe.tasks, ceiling_draws)
        except (FileNotFoundError, ValueError) as e:
            raise DataValidationError(f"--ceiling: {e}") from e
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
        if x_window is not None:
            rows[task.name]["window_bag_of_events_auc"] = baseline.probe_auc(x_window, y, test)
        if p is not None:
            rows[task.name]["ceiling_auc"] = float(roc_auc_score(y[test], p[test, k]))
    meta = {}
    for name in ("world.json", "dataset.json"):  # synthetic world, converted public data
        if (Path(path) / name).exists():
            meta = json.loads((Path(path) / name).read_text())
    window = None if window_tokens is None else {
        "max_tokens": window_tokens, "input": window_input, "activity_header": activity_header}
    return {"path": str(path), "probe_users": len(probe.user_ids), "world": meta,
            "encoder_window": window, "ceiling_draws": ceiling_draws,
            "windows": {"history_days": spec.history_days, "future_days": spec.future_days},
            "modalities": list(spec.names), "tasks": rows, "skipped": probe.skipped}


def format_summary(summary: dict) -> str:
    window = summary.get("encoder_window")
    head = f"{'task':<12} {'domain(s)':<44} {'prev.':>6} {'pos.':>6} {'BoE AUC':>8}"
    lines = [f"{summary['path']}: {summary['probe_users']} probe users"]
    if window:
        header = ", with the activity header's counts" if window["activity_header"] else ""
        lines.append(f"window: the events a {window['input']} user tower of "
                     f"{window['max_tokens']} tokens reads{header}")
        head += f" {'window':>8}"
    draws = summary.get("ceiling_draws")
    if draws:
        lines.append(f"ceiling: the AUC of P(label | the world's latents), {draws} redrawn "
                     f"futures a user")
        head += f" {'ceiling':>8}"
    lines.append(head)
    columns = (["bag_of_events_auc"] + (["window_bag_of_events_auc"] if window else [])
               + (["ceiling_auc"] if draws else []))
    aucs = []
    for name, r in summary["tasks"].items():
        domains = ", ".join(f"{p}:{d}" for p, d in r["domains"].items())
        aucs.append([r[c] for c in columns])
        lines.append(f"{name:<12} {domains:<44} {r['prevalence']:>6.3f} {r['positives']:>6d} "
                     + " ".join(f"{auc:>8.3f}" for auc in aucs[-1]))
    if aucs:
        lines.append(f"{'average':<12} {'':<44} {'':>6} {'':>6} "
                     + " ".join(f"{auc:>8.3f}" for auc in np.mean(aucs, axis=0)))
    for name, c in summary.get("skipped", {}).items():
        lines.append(f"{name:<12} skipped: {c['positives']} positive(s), {c['negatives']} "
                     f"negative(s) among the probe users")
    return "\n".join(lines)

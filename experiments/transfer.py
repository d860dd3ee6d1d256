"""The report's transfer tables: what a trained encoder does beyond the linear probe, read from
the files the commands leave beside each run.

    targeting.json          zero-shot targeting (``eval.targeting`` or ``maskstudy eval
                            --targeting``): per recipe, every task's targeting AUC, the
                            averages of AUC, recall@K and the plain-similarity AUC, beside the
                            AUC of ranking by history events alone, how closely the score
                            follows that number, and the probe's average AUC on the same runs
    tuned/*/results.json    prompt tuning (``maskstudy tune``): per recipe, the average over
                            tasks of the tuned AUC per prompt size, and per step for the
                            default size, beside the untuned probe and class-mean rows
    fewshot/results.json    few-shot targeting (``maskstudy fewshot``): per recipe and k, the
                            tuned sentence's and the seed probe's average AUC, and zero-shot

Every cell is a mean ± std over the seeds (runs) that hold the file; averages over tasks use
the tasks every such run holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from maskstudy.callbacks.linear_probe import TARGETING_AVERAGES

from .report import _cell as report_cell
from .report import mean_std

DEFAULT_PROMPT_TOKENS = 6  # the size whose step curve the table shows (the paper's best)


def _cell(ms: tuple[float, float]) -> str:
    return report_cell(ms, best=False)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def targeting_rows(recipes: dict) -> dict[str, dict]:
    """{recipe: {"seeds", "tasks": {task: (mean, std)}, "avg_auc", "avg_recall_at_k",
    "avg_auc_raw", "avg_auc_activity", "avg_abs_activity_rho", "probe_avg_auc"}} for the
    recipes whose runs hold targeting.json (NaN where a file predates a key)."""
    out = {}
    for name, rec in recipes.items():
        found = [(run, _read(run.dir / "targeting.json")) for run in rec.runs.values()]
        found = [(run, t) for run, t in found if t is not None]
        if not found:
            continue
        tasks = list(found[0][1]["tasks"])
        row = {"seeds": len(found),
               "tasks": {t: mean_std([f["tasks"][t]["auc"] for _, f in found
                                       if t in f["tasks"]]) for t in tasks}}
        for key in TARGETING_AVERAGES:
            row[key] = mean_std([f["metrics"].get(key, float("nan")) for _, f in found])
        row["probe_avg_auc"] = mean_std([run.results["metrics"]["eval/avg_auc"]
                                          for run, _ in found])
        out[name] = row
    return out


def targeting_markdown(rows: dict[str, dict]) -> list[str]:
    if not rows:
        return []
    tasks = list(dict.fromkeys(t for r in rows.values() for t in r["tasks"]))
    head = ["recipe", "seeds", *tasks, *(a.header for a in TARGETING_AVERAGES.values()),
            "probe avg AUC"]
    lines = ["## Zero-shot targeting (AUC per task)", "",
             "Each task's targeting sentence through the answer tower; the probe-test users "
             "ranked by similarity to it minus similarity to a sentence that states only an "
             "activity level (`targeting.json`; K = the task's test positives, where recall@K "
             "= precision@K). Chance AUC is 0.5. Activity alone: the AUC of ranking the same "
             "users by their number of history events; |rho|: the Spearman correlation of "
             "the targeting score with that number, by size (near 1: the sentence ranks users "
             "by how active they were, whatever it names). The last column is the linear "
             "probe on the same runs.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, str(r["seeds"]), *[_cell(r["tasks"].get(t, (math.nan, 0)))
                                          for t in tasks],
                 *[_cell(r[k]) for k in (*TARGETING_AVERAGES, "probe_avg_auc")]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _tuned_runs(run_dir: Path) -> list[dict]:
    return [r for p in sorted((run_dir / "tuned").glob("*/results.json"))
            if (r := _read(p)) is not None and "tuned" in r]


def tuning_rows(recipes: dict) -> dict[str, dict]:
    """{recipe: {"seeds", "sizes": {K: {"tasks", "probe", "base", "tuned"}}, "steps": {step:
    (mean, std)}}}: per prompt size the tasks every run tuned at that size, each run's
    average over them, then mean ± std over runs; the probe and base rows on the same tasks;
    the steps of the default size over its tasks."""
    out = {}
    for name, rec in recipes.items():
        runs = []
        for run in rec.runs.values():
            by_size: dict[int, dict[str, dict]] = {}
            for r in _tuned_runs(run.dir):
                by_size.setdefault(r["tune"]["prompt_tokens"], {})[r["task"]] = r
            if by_size:
                runs.append(by_size)
        if not runs:
            continue
        row: dict = {"seeds": len(runs), "sizes": {}, "steps": {}}
        for size in sorted({k for b in runs for k in b}):
            tasks = sorted(set.intersection(*(set(b.get(size, {})) for b in runs)))
            if not tasks:
                continue

            def over_runs(pick) -> tuple[float, float]:
                return mean_std([float(np.mean([pick(b[size][t]) for t in tasks]))
                                  for b in runs])

            row["sizes"][size] = {"tasks": len(tasks),
                                  **{key: over_runs(lambda r, key=key: r[key]["auc"])
                                     for key in ("probe", "base", "tuned")}}
            if size == DEFAULT_PROMPT_TOKENS:
                steps = sorted(set.intersection(*({h["step"] for t in tasks
                                                   for h in b[size][t]["history"]}
                                                  for b in runs)))
                for step in steps:
                    row["steps"][step] = over_runs(lambda r, step=step: next(
                        h["auc"] for h in r["history"] if h["step"] == step))
        out[name] = row
    return out


def tuning_markdown(rows: dict[str, dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Prompt tuning (average AUC over the tuned tasks)", "",
             "`maskstudy tune`: the checkpoint frozen, prompt vectors after each task's "
             "scenario query and one prototype per class, trained on the probe-train users; "
             "probe: a linear probe on the untuned scenario embeddings; base: the untuned "
             "embeddings scored by the train users' class means (where tuning starts). Each "
             "row over the tasks every run tuned at that size.", "",
             "| recipe | seeds | prompt tokens | tasks | probe | base | tuned |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for size, v in r["sizes"].items():
            lines.append(f"| {name} | {r['seeds']} | {size} | {v['tasks']} | "
                         f"{_cell(v['probe'])} | {_cell(v['base'])} | {_cell(v['tuned'])} |")
    steps = sorted({s for r in rows.values() for s in r["steps"]})
    if steps:
        lines += ["", f"Steps, {DEFAULT_PROMPT_TOKENS} prompt tokens (one run scored every "
                      f"`tune.eval_every` steps; Adam at a constant rate, so step s is the run "
                      f"that stops there):", "",
                  "| recipe | " + " | ".join(f"{s} steps" for s in steps) + " |",
                  "|" + "---|" * (1 + len(steps))]
        for name, r in rows.items():
            if r["steps"]:
                lines.append(f"| {name} | " + " | ".join(
                    _cell(r["steps"].get(s, (math.nan, 0))) for s in steps) + " |")
    return lines + [""]


def fewshot_rows(recipes: dict) -> dict[str, dict]:
    """{recipe: {"seeds", "shots": {k: {"tasks", "zero_shot", "fewshot", "probe"}}}}: per k
    the tasks every run scored at that k (a task with fewer train users of a class than k
    skips it), each run's average over them (a task's draws averaged first), then mean ± std
    over runs; zero-shot on the same tasks."""
    out = {}
    for name, rec in recipes.items():
        found = [f for run in rec.runs.values()
                 if (f := _read(run.dir / "fewshot" / "results.json")) is not None]
        if not found:
            continue
        shots = sorted({int(k) for f in found for t in f["tasks"].values() for k in t["shots"]})
        row: dict = {"seeds": len(found), "shots": {}}
        for k in shots:
            tasks = [t for t in found[0]["tasks"]
                     if all("skipped" not in f["tasks"].get(t, {}).get("shots", {}).get(
                         str(k), {"skipped": "missing"}) for f in found)]
            if not tasks:
                continue
            cell = {"tasks": len(tasks), "zero_shot": mean_std(
                [float(np.mean([f["tasks"][t]["zero_shot"] for t in tasks])) for f in found])}
            for key in ("fewshot", "probe"):
                cell[key] = mean_std([float(np.mean(
                    [np.mean(f["tasks"][t]["shots"][str(k)][key]) for t in tasks]))
                    for f in found])
            row["shots"][k] = cell
        out[name] = row
    return out


def fewshot_markdown(rows: dict[str, dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Few-shot targeting (average AUC over tasks)", "",
             "`maskstudy fewshot`: from k positive and k negative seed users, prompt vectors "
             "before each task's targeting sentence trained with a triplet loss (the encoder "
             "frozen), beside a linear probe fitted on the same 2k seeds; zero-shot: the "
             "sentence alone, on the same tasks (those with k train users of each class).", "",
             "| recipe | seeds | k | tasks | zero-shot | prompted sentence | probe on the seeds |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for k, v in r["shots"].items():
            lines.append(f"| {name} | {r['seeds']} | {k} | {v['tasks']} | "
                         f"{_cell(v['zero_shot'])} | {_cell(v['fewshot'])} | "
                         f"{_cell(v['probe'])} |")
    return lines + [""]


def transfer(recipes: dict) -> tuple[list[str], dict]:
    """(markdown lines, report.json entries) of every transfer table the runs hold."""
    targeting = targeting_rows(recipes)
    tuning = tuning_rows(recipes)
    fewshot = fewshot_rows(recipes)
    lines = targeting_markdown(targeting) + tuning_markdown(tuning) + fewshot_markdown(fewshot)
    return lines, {"targeting": targeting, "prompt_tuning": tuning, "fewshot": fewshot}

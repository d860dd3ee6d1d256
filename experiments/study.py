"""The default study: several recipes on one world, one comparison table.

``maskstudy study`` fits each recipe in turn (same data, seed and probe splits), then prints
and writes a table: one row per recipe plus the reference rows (untrained backbone,
bag-of-events on every event and on the encoder's window), columns the tasks' test AUC, each
domain's average and the overall average.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from .config import load_config, recipe_path
from .references import REFERENCE_NAMES
from .run import fit

DEFAULT_RECIPES = ("causal", "hybrid", "bidirectional", "scheduler", "ggsm")


def comparison_rows(results: list[dict]) -> tuple[list[str], list[str], list[tuple[str, dict]]]:
    """(tasks, domains, [(row name, metrics)]) with the reference rows first."""
    first = results[0]
    tasks = list(first["tasks"])
    domains = list(dict.fromkeys(k.split("/")[1] for k in first["metrics"]
                                 if k.endswith("/avg_auc") and k.count("/") == 2))
    rows = [(REFERENCE_NAMES[k], v["metrics"]) for k, v in first.get("references", {}).items()]
    rows += [(r["name"], r["metrics"]) for r in results]
    return tasks, domains, rows


def markdown_table(results: list[dict]) -> str:
    tasks, domains, rows = comparison_rows(results)
    head = ["recipe", *tasks, *(f"{d} avg" for d in domains), "avg AUC", "avg KS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {}
    for col in [f"eval/{t}/auc" for t in tasks] + [f"eval/{d}/avg_auc" for d in domains] + ["eval/avg_auc", "eval/avg_ks"]:
        best[col] = np.nanmax([m.get(col, np.nan) for _, m in rows])
    for name, m in rows:
        cells = [name]
        for col in ([f"eval/{t}/auc" for t in tasks] + [f"eval/{d}/avg_auc" for d in domains]
                    + ["eval/avg_auc", "eval/avg_ks"]):
            v = m.get(col, float("nan"))
            text = f"{v:.4f}"
            cells.append(f"**{text}**" if v == best[col] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_study(recipes: list[str], overrides: list[str], out_root: str = "runs") -> Path:
    start = time.perf_counter()
    configs = []
    for recipe in recipes:  # every config checked before any training
        configs.append(load_config(recipe_path(recipe), overrides))
    results = []
    for cfg in configs:
        print(f"== {cfg.name}: {cfg.description}", flush=True)
        results.append(fit(cfg).results)
        print(f"   avg AUC {results[-1]['metrics']['eval/avg_auc']:.4f} "
              f"({results[-1]['train_seconds']:.0f}s training)", flush=True)
    out = Path(out_root) / "study" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    seconds = time.perf_counter() - start
    text = (f"# Study: {', '.join(r['name'] for r in results)}\n\n"
            f"Linear-probe test AUC per task (best per column in bold), data "
            f"`{configs[0].data.path}`, seed {configs[0].seed}, {seconds / 60:.1f} min in all.\n\n"
            f"{table}\n")
    (out / "study.md").write_text(text)
    (out / "study.json").write_text(json.dumps({"results": results, "seconds": seconds},
                                               indent=2) + "\n")
    print()
    print(text)
    print(f"written to {out}/study.md")
    return out

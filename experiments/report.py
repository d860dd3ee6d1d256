"""``maskstudy report SWEEP_DIR``: the paper's Table 2 plus error bars and tests.

Every finished run under the directory (any ``results.json``) is one (recipe, seed) cell. The
report gives, per recipe, the test AUC and KS of every task (grouped by domain), the domain and
overall averages, as mean +- standard deviation over seeds (best mean per column in bold), and
for each recipe against the baseline (``causal``; in a sweep without it, ``qanchor``, so its
ablations are read against it) two paired comparisons of the average AUC:

    seeds         d_s = avgAUC(recipe, s) - avgAUC(baseline, s) over the seeds both ran;
                  mean d and a 95% t interval (needs 2 seeds)
    test users    bootstrap: B resamples of each task's test users, the same resample for
                  both recipes and every seed; per resample the mean over seeds of the
                  difference of average AUCs; 95% percentile interval and the two-sided
                  p = 2 min(P(d* <= 0), P(d* >= 0))

Runs that a sweep started say which parameters every point shared (their ``point.json``):
an override given to the whole sweep, such as ``encoder.pooling=mean``, heads the report, since
no recipe name shows it. A parameter the sweep varies beside the recipe (``encoder.pooling:
{values: [user_token, mean]}``) sets apart runs of one recipe and seed; the report names them
by its value (``causal [encoder.pooling=mean]``), reads each against the baseline and the
untrained model of its own value, and compares each recipe's other values with its first (in
the sweep file's order), paired by seed. Several sweep directories are read as one sweep, so two
sweeps that differ in one override are compared the same way.

Runs on a data option other than the default (``data=movielens``) are named
``<dataset>_<recipe>``; when every run of the sweep carries the same such prefix, the report
names recipes without it, so ``movielens_causal`` is the ``causal`` baseline.

Verdicts are decided across seeds: a difference counts as larger than noise when the seed
interval excludes 0; with one seed the verdict is "undecided". The test-user bootstrap is
printed beside it (how much fixed models' AUCs move with the sampled test users) and never
decides a verdict. Each comparison also gets its minimum detectable effect at 80% power for
its seed spread and count, and the seeds a 0.004 difference (the spread between the papers'
recipes) would need; the rule's own false-positive rate is measured on A/A comparisons
between disjoint seed groups of one recipe.

Runs probed under ``eval.query: task`` get the Query-as-Anchor table: every task's AUC and KS
under the fixed query and under its own scenario query, side by side on the same models, and
the paired seed comparison of the two protocols' average AUC with its verdict.

Each recipe is also set against the untrained model of its input (the backbone it started
from), paired by seed: what contrastive training added to the probe, on the probed
representation and on each representation (the projected embedding and the pooled state).

Runs with transfer results beside them get the transfer tables (``experiments/transfer.py``):
zero-shot targeting (``targeting.json``), prompt tuning (``tuned/``) and few-shot targeting
(``fewshot/``), per recipe beside the probe.

Runs carry a learning check (``results.json`` ``learning``, ``callbacks/learning_check.py``):
a trained run that failed it (collapsed, or retrieval and loss at chance) is listed in the
"Did the runs learn?" table and left out of every other table and comparison.

Outputs: ``report.md``, ``report.csv`` (long form), ``report.json``, figures in ``figures/``
(average AUC with error bars, training loss per recipe, mask evolution strips, stability),
and optionally a W&B Table.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import stats

from maskstudy.callbacks.linear_probe import REPRESENTATIONS, representation_metric
from maskstudy.experiments.references import PER_INPUT, REFERENCE_NAMES
from maskstudy.experiments.sweep import overrides_text, point_parameters

# The paper's Table 2 order; other recipes follow alphabetically.
ORDER = ("untrained", "causal", "hybrid", "hybrid_soft", "hybrid_mlp", "hybrid_gq",
         "bidirectional", "scheduler", "scheduler_window", "ggsm", "ggsm_calibrated")
# The recipe the others are compared with: the first of these the sweep ran.
BASELINES = ("causal", "qanchor")
PAPER_GAP = 0.004  # the spread between the GG-SM paper's recipes, in average AUC


class ReportError(ValueError):
    """A report that cannot be written from the directories given (a file below them that is
    not what it should be, several directories and no output directory); the message names
    the file or says why."""


@dataclass
class Run:
    name: str
    seed: int
    dir: Path
    results: dict
    predictions: dict | None = None  # tasks, labels, test, scores (predictions.npz)
    point: dict | None = None  # the sweep point's parameters; None for a run no sweep started
    variant: str = ""  # its values of the sweep's varied settings (varied_settings), or ""


@dataclass
class Recipe:
    name: str
    runs: dict[int, Run] = field(default_factory=dict)  # seed -> run
    recipe: str = ""  # the recipe the runs ran ("": name)
    variant: str = ""  # the runs' values of the varied settings, as in Run.variant

    def __post_init__(self):
        self.recipe = self.recipe or self.name


def variant_name(recipe: str, variant: str) -> str:
    """A row's name: the recipe, and the values of the varied settings when there are any."""
    return f"{recipe} [{variant}]" if variant else recipe


def sweep_dirs(dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    """One sweep directory or several, as a list."""
    return [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]


def collect(dirs: str | Path | Sequence[str | Path]) -> dict[str, Recipe]:
    """Finished runs under one sweep directory or several, by recipe and by the values of the
    varied settings (:func:`varied_settings`; two sweeps of the same recipes, one of them
    with ``encoder.pooling=mean``, are one sweep that varies it); the newest run wins a
    (name, seed) tie (a point run again)."""
    dirs = sweep_dirs(dirs)
    runs = [run for d in dirs for run in _finished_runs(d)]
    if not runs:
        raise FileNotFoundError(f"{', '.join(map(str, dirs))}: no finished run "
                                f"(results.json) below it")
    prefix = dataset_prefix(list({run.name for run in runs}))
    varied = varied_settings(runs)
    order = value_order(dirs, varied)
    recipes: dict[str, Recipe] = {}
    for run in runs:
        run.name = run.name.removeprefix(prefix)
        if varied and run.point is not None:
            run.variant = overrides_text({k: run.point.get(k, UNSET) for k in varied})
        name = variant_name(run.name, run.variant)
        recipes.setdefault(name, Recipe(name, recipe=run.name, variant=run.variant)
                           ).runs[run.seed] = run
    return dict(sorted(recipes.items(), key=lambda kv: (
        _rank(kv[1].recipe), order(next(iter(kv[1].runs.values()))))))


def _finished_runs(sweep_dir: Path) -> list[Run]:
    """Every finished run under ``sweep_dir`` (a ``results.json`` with metrics), in path
    order: a point's newer run after its older one."""
    if not sweep_dir.exists():
        raise FileNotFoundError(f"sweep directory {sweep_dir}: no such directory")
    runs: list[Run] = []
    for path in sorted(sweep_dir.rglob("results.json")):
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from e
        if "metrics" not in res or "tasks" not in res:
            continue
        for key in ("name", "seed", "input"):
            if key not in res:
                raise ReportError(f"{path}: key '{key}' missing: not a maskstudy results file")
        pred = None
        if (path.parent / "predictions.npz").exists():
            with np.load(path.parent / "predictions.npz") as z:
                pred = {k: z[k] for k in z.files}
        try:
            point = point_parameters(path.parent)
        except ValueError as e:
            raise ReportError(str(e)) from e
        runs.append(Run(res["name"], int(res["seed"]), path.parent, res, pred, point))
    return runs


UNSET = "(default)"  # a varied setting a point did not give: the recipe's default


def varied_settings(runs: list[Run]) -> list[str]:
    """The sweep parameters that set apart runs of one recipe and seed, such as
    ``encoder.pooling`` swept beside the recipes; the recipe name and seed already set apart
    the rest (``input=hierarchical`` names its runs ``hierarchical_<recipe>``). A point run
    again has the same parameters: the newest run of it is read."""
    points: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        if run.point is not None:
            points.setdefault((run.name, run.seed), []).append(run.point)
    varied: list[str] = []
    for group in points.values():
        for key in dict.fromkeys(k for point in group for k in point):
            values = {json.dumps(point.get(key, UNSET), sort_keys=True) for point in group}
            if len(values) > 1 and key not in varied:
                varied.append(key)
    return varied


def value_order(dirs: list[Path], varied: list[str]):
    """A sort key for a run: the directory it came from (in the order given), then the
    positions of its values of the ``varied`` settings among the values the sweep files
    list (``sweep.json``), so a recipe's first value is the first sweep's first; values no
    file lists sort after the listed ones, by their text."""
    listed: dict[str, list] = {k: [] for k in varied}
    for path in (d / "sweep.json" for d in dirs if varied):
        if not path.exists():
            continue
        try:
            parameters = json.loads(path.read_text())["spec"]["parameters"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ReportError(f"{path}: not a sweep state file (expected JSON with "
                              f"'spec' and its 'parameters': {e!r})") from e
        for k in varied:
            listed[k] += [v for v in parameters.get(k, {}).get("values", []) if v not in listed[k]]

    def key(run: Run) -> tuple:
        source = next(i for i, d in enumerate(dirs) if run.dir.is_relative_to(d))
        values = [(run.point or {}).get(k, UNSET) for k in varied]
        return (source, *((listed[k].index(v) if v in listed[k] else math.inf,
                           json.dumps(v, sort_keys=True)) for k, v in zip(varied, values)))
    return key


def shared_settings(recipes: dict[str, Recipe]) -> dict:
    """The sweep parameters every run shares (each run's sweep point), e.g. an override given
    to the whole sweep, which no recipe name shows; {} unless every run came from a sweep."""
    points = [run.point for rec in recipes.values() for run in rec.runs.values()]
    if not points or any(p is None for p in points):
        return {}
    return {k: v for k, v in points[0].items() if all(k in p and p[k] == v for p in points)}


def trained(run: Run) -> bool:
    """False for a run evaluated without training (``trainer.train=false``, the untrained
    reference recipe), which has no loss or gradient to describe."""
    return (run.results.get("learning") or {}).get("trained", True)


def did_not_learn(run: Run) -> bool:
    """A trained run whose learning check failed (``results.json`` ``learning``): its probe
    AUC is not a result."""
    check = run.results.get("learning")
    return bool(check) and trained(run) and not check.get("passed", True)


def learned_only(recipes: dict[str, Recipe]) -> dict[str, Recipe]:
    """The recipes with only the runs that passed (or had no) learning check."""
    out = {}
    for name, rec in recipes.items():
        runs = {s: r for s, r in rec.runs.items() if not did_not_learn(r)}
        if runs:
            out[name] = replace(rec, runs=runs)
    return out


def dataset_prefix(names: list[str]) -> str:
    """``<dataset>_`` when every recipe name starts with one option of the ``data`` group."""
    from maskstudy.experiments.config import group_options

    for dataset in group_options("data"):
        if all(n.startswith(f"{dataset}_") for n in names):
            return f"{dataset}_"
    return ""


def references(recipes: dict[str, Recipe]) -> dict[str, Recipe]:
    """The reference rows every run carries (``results.json`` ``references``), over the seeds
    they were computed for; the rows that depend on the input one per input (an untrained
    model reading one token per event is another reference than one reading text), the
    untrained row from the runs that are read against it (:func:`untrained_recipe`). A row
    whose values differ between the values of the varied settings (the untrained model
    mean-pooled and read at ``<USER>``) is one row per value, named like the recipes'."""
    found: dict[str, dict[str, dict[int, Run]]] = {}  # name -> variant -> seed -> row
    for rec in recipes.values():
        for seed, run in rec.runs.items():
            for kind, ref in (run.results.get("references") or {}).items():
                if kind not in REFERENCE_NAMES or (
                        kind == "untrained" and untrained_recipe(run, recipes) is not None):
                    continue
                name = reference_name(kind, input_of(run))
                found.setdefault(name, {}).setdefault(run.variant, {}).setdefault(
                    seed, Run(name, seed, run.dir, {"tasks": ref["tasks"],
                                                    "metrics": ref["metrics"]}))
    out: dict[str, Recipe] = {}
    for name, variants in found.items():
        if _same_everywhere(variants):
            out[name] = Recipe(name, {s: r for runs in variants.values() for s, r in runs.items()})
            continue
        for variant, runs in variants.items():
            label = variant_name(name, variant)
            out[label] = Recipe(label, runs, recipe=name, variant=variant)
    return out


def _same_everywhere(variants: dict[str, dict[int, Run]]) -> bool:
    """True when every seed's row has the same metrics under every value that holds it."""
    by_seed: dict[int, list[dict]] = {}
    for runs in variants.values():
        for seed, run in runs.items():
            by_seed.setdefault(seed, []).append(run.results["metrics"])
    return all(m == rows[0] for rows in by_seed.values() for m in rows)


def reference_label(name: str, variant: str, refs: dict[str, Recipe]) -> str:
    """The row of ``refs`` (:func:`references`) that holds reference ``name`` for a run of
    ``variant``: its own row when the values split it, else the shared one."""
    own = variant_name(name, variant)
    return own if own in refs else name


def reference_name(kind: str, source: str = "text") -> str:
    """The report's name of a reference row (``references.REFERENCE_NAMES``), of one input
    when the row depends on it."""
    name = REFERENCE_NAMES[kind]
    if kind in PER_INPUT and source != "text":
        name += f", {source} input"
    return f"{name} (reference)"


def input_of(run: Run) -> str:
    return run.results["input"]


def untrained_recipe(run: Run, recipes: dict[str, Recipe]) -> Recipe | None:
    """The sweep's own ``untrained`` recipe (of the run's values of the varied settings) when
    ``run`` is read against it instead of the reference it carries: the recipe ran (on text,
    its input) and ``run`` reads text."""
    return recipes.get(variant_name("untrained", run.variant)) if input_of(run) == "text" else None


def untrained_metrics(run: Run, recipes: dict[str, Recipe]) -> dict | None:
    """The metrics of the untrained model ``run`` is read against: the ``untrained`` recipe's
    run of its seed (:func:`untrained_recipe`), else the reference it carries; None when
    there is none."""
    ran = untrained_recipe(run, recipes)
    if ran is not None:
        same_seed = ran.runs.get(run.seed)
        return same_seed.results["metrics"] if same_seed else None
    carried = (run.results.get("references") or {}).get("untrained")
    return carried["metrics"] if carried else None


def against_untrained(recipes: dict[str, Recipe]) -> list[dict]:
    """Each trained recipe against the untrained model of its input, paired by seed
    (:func:`untrained_metrics`): what contrastive training added to the probe AUC (a 95% t
    interval with 2 or more seeds), on the probed representation (``eval/avg_auc``) and,
    where run and reference both hold it, on each representation (``by_representation``:
    the embedding and the pooled state)."""
    rows = []
    refs = references(recipes)
    for name, rec in recipes.items():
        if rec.recipe == "untrained":
            continue
        first = rec.runs[min(rec.runs)]
        pairs = {seed: (run.results["metrics"], ref) for seed, run in rec.runs.items()
                 if (ref := untrained_metrics(run, recipes))}
        if not pairs:
            continue
        ran = untrained_recipe(first, recipes) is not None
        by_rep = {r: paired_gain(pairs, representation_metric(r)) for r in REPRESENTATIONS}
        reference = (variant_name("untrained", rec.variant) if ran else reference_label(
            reference_name("untrained", input_of(first)), rec.variant, refs))
        rows.append({"recipe": name, "reference": reference,
                     "seeds": len(pairs), **paired_gain(pairs, "eval/avg_auc"),
                     "by_representation": {r: g for r, g in by_rep.items() if g is not None}})
    return rows


def paired_gain(pairs: dict[int, tuple[dict, dict]], metric: str) -> dict | None:
    """Mean over seeds of run minus reference on ``metric`` (``pairs``: seed -> the run's and
    its reference's metrics) with its 95% t interval; None when either side lacks it (a
    reference cached before it held every representation)."""
    values = [(m.get(metric), r.get(metric)) for m, r in pairs.values()]
    if any(a is None or b is None for a, b in values):
        return None
    mean, lo, hi = seed_interval([a - b for a, b in values])
    return {"diff": mean, "seed_low": lo, "seed_high": hi}


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name), "") if name in ORDER else (len(ORDER), name)


def columns(recipes: dict[str, Recipe]) -> tuple[list[str], dict[str, str]]:
    """Tasks in domain order, and each task's domain."""
    first = next(iter(next(iter(recipes.values())).runs.values())).results
    domains = first.get("domains") or {t: "tasks" for t in first["tasks"]}
    order = list(dict.fromkeys(domains.values()))
    tasks = sorted(first["tasks"], key=lambda t: order.index(domains.get(t, "tasks")))  # stable
    return tasks, domains


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summary(recipes: dict[str, Recipe], tasks: list[str], domains: dict[str, str]) -> dict:
    """{recipe: {column: (mean, std)}} with columns ``<task>/auc``, ``<task>/ks``,
    ``<domain>/avg_auc``, ``avg_auc``, ``avg_ks``."""
    out = {}
    for name, rec in recipes.items():
        cols: dict[str, list[float]] = {}
        for run in rec.runs.values():
            m = run.results["metrics"]
            for t in tasks:
                cols.setdefault(f"{t}/auc", []).append(run.results["tasks"][t]["auc"])
                cols.setdefault(f"{t}/ks", []).append(run.results["tasks"][t]["ks"])
            for d in dict.fromkeys(domains[t] for t in tasks):
                cols.setdefault(f"{d}/avg_auc", []).append(
                    m.get(f"eval/{d}/avg_auc", float(np.nanmean(
                        [run.results["tasks"][t]["auc"] for t in tasks if domains[t] == d]))))
            cols.setdefault("avg_auc", []).append(m["eval/avg_auc"])
            cols.setdefault("avg_ks", []).append(m["eval/avg_ks"])
        out[name] = {k: mean_std(v) for k, v in cols.items()}
    return out


# --- significance -------------------------------------------------------------------------


def query_protocols(recipes: dict[str, Recipe]) -> list[dict]:
    """Per recipe evaluated under ``eval.query: task``: the fixed and the task protocol's
    average AUC on the same models, and task minus fixed paired by seed (a 95% t interval
    with 2 or more seeds)."""
    rows = []
    for name, rec in recipes.items():
        pairs = [(run.results["metrics"]["eval/by_query/fixed/avg_auc"],
                  run.results["metrics"]["eval/by_query/task/avg_auc"])
                 for _, run in sorted(rec.runs.items())
                 if "eval/by_query/task/avg_auc" in run.results.get("metrics", {})]
        if not pairs:
            continue
        fixed, task = zip(*pairs)
        mean, lo, hi = seed_interval([t - f for f, t in pairs])
        rows.append({"recipe": name, "seeds": len(pairs), "fixed": mean_std(list(fixed)),
                     "task": mean_std(list(task)), "diff": mean, "seed_low": lo,
                     "seed_high": hi,
                     "verdict": ("undecided: one seed" if len(pairs) < 2 else
                                 f"task query {'better' if mean > 0 else 'worse'} beyond seed "
                                 f"noise" if excludes_zero(lo, hi) else "within seed noise")})
    return rows


PROTOCOL_NAMES = {"fixed": "fixed query", "task": "scenario query"}


def scenario_summary(recipes: dict[str, Recipe], tasks: list[str]) -> dict:
    """{(recipe, protocol): (seeds, {"<task>/auc" | "<task>/ks" | "avg_auc" | "avg_ks":
    (mean, std)})} for the recipes whose runs logged both protocols per task
    (``eval.query: task``)."""
    out = {}
    for name, rec in recipes.items():
        runs = [r for r in rec.runs.values()
                if f"eval/by_query/task/{tasks[0]}/auc" in r.results.get("metrics", {})]
        if not runs:
            continue
        for protocol in PROTOCOL_NAMES:
            cols: dict[str, list[float]] = {}
            for run in runs:
                m = run.results["metrics"]
                for t in tasks:
                    for metric in ("auc", "ks"):
                        cols.setdefault(f"{t}/{metric}", []).append(
                            m[f"eval/by_query/{protocol}/{t}/{metric}"])
                for metric in ("avg_auc", "avg_ks"):
                    cols.setdefault(metric, []).append(m[f"eval/by_query/{protocol}/{metric}"])
            out[(name, protocol)] = (len(runs), {k: mean_std(v) for k, v in cols.items()})
    return out


def scenario_markdown(rows: dict, references: dict, tasks: list[str]) -> list[str]:
    """The Query-as-Anchor table: per task AUC and KS under the fixed and the scenario query,
    with the reference rows (as they were probed) below."""
    if not rows:
        return []
    lines = ["## Query-as-Anchor table: fixed query and scenario query per task", "",
             "The same models probed twice: every task on one embedding per user (fixed "
             "query) and each task on the embeddings under its own scenario query. Reference "
             "rows as they were computed (the untrained model under the runs' protocol).", ""]
    for metric in ("auc", "ks"):
        avg = ["avg_auc", "avg_ks"] if metric == "auc" else ["avg_ks"]
        cols = [f"{t}/{metric}" for t in tasks] + avg
        head = ["recipe", "query", "seeds", *tasks, *[a.replace("_", " ") for a in avg]]
        lines += [f"### {metric.upper()}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        best = {c: np.nanmax([v[c][0] for _, v in rows.values()]) for c in cols}
        for (name, protocol), (seeds, values) in rows.items():
            cells = [name, PROTOCOL_NAMES[protocol], str(seeds)]
            lines.append("| " + " | ".join(cells + [_cell(values[c], values[c][0] == best[c])
                                                    for c in cols]) + " |")
        for name, values in references.items():
            lines.append("| " + " | ".join([name, "-", "-"] + [_cell(values[c], False)
                                                               for c in cols]) + " |")
        lines.append("")
    return lines


def query_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Scenario query against the fixed query (average AUC)", "",
             "The same models probed twice: each task on embeddings under its own scenario "
             "query (`eval.query: task`) and every task on one embedding per user (`fixed`); "
             "task minus fixed, paired by seed.", "",
             "| recipe | seeds | fixed | task | Δ (task - fixed) | seeds: 95% t interval | "
             "verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        iv = ("-" if math.isnan(r["seed_low"])
              else f"[{r['seed_low']:+.4f}, {r['seed_high']:+.4f}]")
        lines.append(f"| {r['recipe']} | {r['seeds']} | {_cell(r['fixed'], False)} | "
                     f"{_cell(r['task'], False)} | {r['diff']:+.4f} | {iv} | {r['verdict']} |")
    return lines + [""]


def seed_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of paired seed differences; a t interval (NaN with one seed)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def resampled_auc(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC of each resample (rows of ``idx``) by the rank-sum formula, ties averaged:
    AUC = (sum of positive ranks - P(P+1)/2) / (P N)."""
    yb, sb = y[idx], score[idx]
    ranks = stats.rankdata(sb, axis=1)
    pos = yb.sum(1)
    neg = yb.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * yb).sum(1) - pos * (pos + 1) / 2) / (pos * neg)


def bootstrap_difference(a: Recipe, b: Recipe, rounds: int = 2000,
                         seed: int = 0) -> np.ndarray | None:
    """Bootstrap distribution of mean_s [avgAUC(a, s) - avgAUC(b, s)] over test users, paired
    (one resample per round, shared by both recipes and every seed). ``None`` without
    predictions for the common seeds."""
    seeds = sorted(set(a.runs) & set(b.runs))
    if not seeds or any(r.runs[s].predictions is None for r in (a, b) for s in seeds):
        return None
    ref = a.runs[seeds[0]].predictions
    rng = np.random.default_rng(seed)
    diff = np.zeros(rounds)
    n_tasks = 0
    for k in range(len(ref["tasks"])):
        users = np.flatnonzero(ref["test"][:, k])
        y = ref["labels"][:, k].astype(float)
        if users.size == 0 or len(np.unique(y[users])) < 2:
            continue
        idx = users[rng.integers(0, users.size, (rounds, users.size))]
        per_seed = []
        for s in seeds:
            auc_a = resampled_auc(y, a.runs[s].predictions["scores"][:, k].astype(float), idx)
            auc_b = resampled_auc(y, b.runs[s].predictions["scores"][:, k].astype(float), idx)
            per_seed.append(auc_a - auc_b)
        diff += np.nan_to_num(np.mean(per_seed, axis=0))
        n_tasks += 1
    return diff / max(n_tasks, 1)


def baseline_of(recipes: dict[str, Recipe]) -> str | None:
    """The recipe the sweep's others are compared with (``BASELINES``), or None."""
    ran = {rec.recipe for rec in recipes.values()}
    return next((name for name in BASELINES if name in ran), None)


def compare(recipes: dict[str, Recipe], rounds: int = 2000,
            target: float = PAPER_GAP) -> list[dict]:
    """Each recipe against the baseline (see the module docstring) of its values of the
    varied settings."""
    baseline = baseline_of(recipes)
    rows = []
    for rec in recipes.values():
        base = recipes.get(variant_name(baseline, rec.variant)) if baseline else None
        if base is not None and rec.recipe != baseline:
            rows.append(comparison(rec, base, rounds, target))
    return rows


def compare_variants(recipes: dict[str, Recipe], rounds: int = 2000,
                     target: float = PAPER_GAP) -> list[dict]:
    """Each recipe at the other values of the varied settings against the same recipe at its
    first (in the order of ``collect``)."""
    first: dict[str, Recipe] = {}
    pairs = []
    for rec in recipes.values():
        if rec.variant:
            base = first.setdefault(rec.recipe, rec)
            if base is not rec:
                pairs.append((rec, base))
    return [comparison(rec, base, rounds, target) for rec, base in pairs]


def comparison(rec: Recipe, base: Recipe, rounds: int = 2000,
               target: float = PAPER_GAP) -> dict:
    """``rec`` against ``base`` on the average AUC, paired by seed, with the minimum
    detectable effect of the seed comparison and the seeds a difference of ``target`` would
    need."""
    seeds = sorted(set(rec.runs) & set(base.runs))
    diffs = [rec.runs[s].results["metrics"]["eval/avg_auc"]
             - base.runs[s].results["metrics"]["eval/avg_auc"] for s in seeds]
    mean, lo, hi = seed_interval(diffs)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")
    row = {"recipe": rec.name, "baseline": base.name, "seeds": len(seeds), "diff": mean,
           "seed_low": lo,
           "seed_high": hi, "boot_low": float("nan"), "boot_high": float("nan"),
           "p": float("nan"), "diff_sd": sd, "mde": detectable_effect(sd, len(seeds)),
           "seeds_for_target": seeds_needed(sd, target), "target": target}
    boot = bootstrap_difference(rec, base, rounds)
    if boot is not None:
        row["boot_low"], row["boot_high"] = (float(np.percentile(boot, 2.5)),
                                             float(np.percentile(boot, 97.5)))
        row["p"] = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    row["verdict"] = verdict(row)
    return row


def excludes_zero(lo: float, hi: float) -> bool:
    return not math.isnan(lo) and (lo > 0 or hi < 0)


def verdict(row: dict) -> str:
    """Decided across seeds (training noise) only. The test-user bootstrap measures how much
    the AUCs of fixed models move with the sampled test users; it is reported beside the
    verdict but never decides it."""
    if row["seeds"] < 2:
        return "undecided: one seed, training noise not measured"
    if excludes_zero(row["seed_low"], row["seed_high"]):
        return (f"{'better' if row['diff'] > 0 else 'worse'} than {row['baseline']} beyond "
                f"seed noise")
    return "within seed noise"


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided paired t-test over ``n`` seeds with paired
    differences of standard deviation ``sd``: (t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n)
    (NaN below 2 seeds)."""
    if n < 2 or math.isnan(sd):
        return float("nan")
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1))
                 * sd / math.sqrt(n))


def seeds_needed(sd: float, effect: float) -> float:
    """The fewest seeds whose minimum detectable effect is at most ``effect`` (NaN when the
    spread is unknown). The normal approximation ((z_.975 + z_.8) sd / effect)^2 is a lower
    bound; the t-based count is searched upward from it."""
    if math.isnan(sd):
        return float("nan")
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    n = max(2, math.floor((z * sd / effect) ** 2))
    while detectable_effect(sd, n) > effect:
        n += 1
    return n


def aa_false_positive_rate(recipes: dict[str, Recipe], max_splits: int = 200,
                           seed: int = 0) -> dict:
    """The verdict rule's false-positive rate measured on the runs at hand: every recipe with
    at least 4 seeds is split into two disjoint seed groups of equal size (up to
    ``max_splits`` splits per recipe), the groups are paired in seed order and compared
    with the rule the verdicts use (a 95% t interval of paired differences excluding 0).
    Both groups ran the same recipe, so every 'difference' found is a false positive."""
    from itertools import combinations

    rng = np.random.default_rng(seed)
    found = total = 0
    used = []
    for name, rec in recipes.items():
        seeds = sorted(rec.runs)
        k = len(seeds) // 2
        if k < 2:
            continue
        used.append(name)
        auc = {s: rec.runs[s].results["metrics"]["eval/avg_auc"] for s in seeds}
        splits = [c for c in combinations(seeds, k) if seeds[0] in c]  # each split once
        if len(splits) > max_splits:
            splits = [splits[i] for i in rng.choice(len(splits), max_splits, replace=False)]
        for group in splits:
            rest = [s for s in seeds if s not in group][:k]
            _, lo, hi = seed_interval([auc[a] - auc[b] for a, b in zip(group, rest)])
            found += excludes_zero(lo, hi)
            total += 1
    return {"comparisons": total, "false_positives": found,
            "rate": found / total if total else float("nan"), "recipes": used}


# --- stability ------------------------------------------------------------------------------


def training_series(run_dir: Path, key: str) -> dict[int, float]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def loss_spikes(losses: list[float], window: int = 20, z: float = 5.0) -> int:
    """Steps whose loss exceeds the median of the previous ``window`` steps by more than
    ``z`` robust standard deviations (1.4826 MAD)."""
    count = 0
    for i in range(window, len(losses)):
        past = np.asarray(losses[i - window:i])
        med = np.median(past)
        mad = 1.4826 * np.median(np.abs(past - med)) + 1e-8
        count += losses[i] > med + z * mad
    return int(count)


def stability(recipes: dict[str, Recipe]) -> dict[str, dict]:
    """Per recipe that trained, over its trained seeds: loss spikes (total), gradient-norm max
    and median."""
    out = {}
    for name, rec in recipes.items():
        runs = [run for run in rec.runs.values() if trained(run)]
        if not runs:
            continue
        spikes, norms = 0, []
        for run in runs:
            loss = training_series(run.dir, "train/loss")
            spikes += loss_spikes([loss[k] for k in sorted(loss)])
            norms += list(training_series(run.dir, "train/grad_norm").values())
        out[name] = {"loss_spikes": spikes,
                     "grad_norm_max": float(np.max(norms)) if norms else float("nan"),
                     "grad_norm_median": float(np.median(norms)) if norms else float("nan")}
    return out


# --- output -----------------------------------------------------------------------------------


def _cell(ms: tuple[float, float], best: bool) -> str:
    mean, std = ms
    text = "-" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"
    return f"**{text}**" if best else text


def _aa_sentence(aa: dict) -> str:
    if not aa["comparisons"]:
        return ("A/A false-positive rate: not measured (needs a recipe with at least 4 seeds "
                "that learned).")
    return (f"A/A false-positive rate of the seed rule: {aa['false_positives']} of "
            f"{aa['comparisons']} comparisons between disjoint seed groups of one recipe "
            f"({', '.join(aa['recipes'])}) found a difference: {aa['rate']:.1%} (nominal 5%).")


def learning_rows(recipes: dict[str, Recipe]) -> list[dict]:
    """One row per run with its learning check (``results.json`` ``learning``)."""
    rows = []
    for name, rec in recipes.items():
        for seed, run in sorted(rec.runs.items()):
            check = run.results.get("learning")
            if check:
                rows.append({"recipe": name, "seed": seed, **check})
    return rows


def learning_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Did the runs learn?", "",
             "Final model on the validation pairs. A trained run that fails the check "
             "(collapse, retrieval or loss near chance, no spread) is left out of every "
             "table and comparison below: its AUC is not a result. The untrained row is a "
             "reference and is expected to sit at chance.", "",
             "| recipe | seed | val retrieval (x chance) | val loss (x its chance) | user spread "
             "(x isotropic) | effective rank | check |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        check = ("reference (untrained)" if not r.get("trained", True)
                 else "passed" if r["passed"] else "FAILED: " + "; ".join(r["reasons"]))
        lines.append(
            f"| {r['recipe']} | {r['seed']} | {r['retrieval_acc']:.3f} "
            f"({r['retrieval_ratio']:.1f}x) | {r['loss']:.3f} ({r['loss_ratio']:.2f}x) | "
            f"{r['user_spread']:.4f} ({r['user_spread'] / r['spread_isotropic']:.2f}x) | "
            f"{r['user_rank']:.1f} | {check} |")
    return lines + [""]


def _gain_cell(g: dict | None) -> str:
    if g is None:
        return "-"
    iv = "" if math.isnan(g["seed_low"]) else f" [{g['seed_low']:+.4f}, {g['seed_high']:+.4f}]"
    return f"{g['diff']:+.4f}{iv}"


def untrained_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Against the untrained model (average AUC)", "",
             "What contrastive training added to the probe: each recipe minus the untrained "
             "model of its input (the backbone it started from), paired by seed; then the "
             "same for each representation probed (the projected embedding, the pooled hidden "
             "state before the projector; \"-\": the reference did not record it).", "",
             "| recipe | reference | paired seeds | Δ avg AUC | seeds: 95% t interval | "
             + " | ".join(f"Δ {r}, interval" for r in REPRESENTATIONS) + " |",
             "|---|---|---|---|---|" + "---|" * len(REPRESENTATIONS)]
    for r in rows:
        iv = ("-" if math.isnan(r["seed_low"])
              else f"[{r['seed_low']:+.4f}, {r['seed_high']:+.4f}]")
        reps = " | ".join(_gain_cell(r["by_representation"].get(k)) for k in REPRESENTATIONS)
        lines.append(f"| {r['recipe']} | {r['reference']} | {r['seeds']} | {r['diff']:+.4f} | "
                     f"{iv} | {reps} |")
    return lines + [""]


def comparison_markdown(rows: list[dict], against: bool = False) -> list[str]:
    """The table of :func:`comparison` rows; ``against``: with the column of what each row is
    read against."""
    def iv(lo, hi):
        return "-" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]"

    head = ["recipe", *(["against"] if against else []), "paired seeds", "Δ avg AUC",
            "seeds: 95% t interval", "test users: 95% bootstrap interval", "p (bootstrap)",
            "MDE (80% power)", f"seeds for {PAPER_GAP}", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        p = "-" if math.isnan(c["p"]) else f"{c['p']:.3f}"
        mde = "-" if math.isnan(c["mde"]) else f"{c['mde']:.4f}"
        need = "-" if math.isnan(c["seeds_for_target"]) else f"{c['seeds_for_target']:.0f}"
        cells = [c["recipe"], *([c["baseline"]] if against else []), str(c["seeds"]),
                 f"{c['diff']:+.4f}", iv(c["seed_low"], c["seed_high"]),
                 iv(c["boot_low"], c["boot_high"]), p, mde, need, c["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(recipes, tasks, domains, table, comparisons, stab, title: str,
             learning: list[dict] | None = None, aa: dict | None = None,
             gains: list[dict] | None = None, queries: list[dict] | None = None,
             scenario_lines: list[str] | None = None,
             transfer_lines: list[str] | None = None, settings: dict | None = None,
             variants: list[dict] | None = None, varied: list[str] | None = None) -> str:
    doms = list(dict.fromkeys(domains[t] for t in tasks))
    seeds = sorted({s for r in recipes.values() for s in r.runs})
    trained = {n: r for n, r in recipes.items() if not r.recipe.endswith("(reference)")}
    lines = [f"# Report: {title}", "",
             f"{sum(len(r.runs) for r in trained.values())} runs, {len(trained)} recipes, seeds "
             f"{seeds}. Cells: mean ± std over seeds; best mean per column in bold. Reference "
             f"rows come with every run (the bag-of-events rows: the same value for every "
             f"seed).", ""]
    if settings:
        lines += [f"Every run: `{overrides_text(settings)}` (the sweep parameters its points "
                  f"share).", ""]
    if varied:
        lines += [f"Varied beside the recipes: {', '.join(f'`{k}`' for k in varied)}; each "
                  f"row's name carries its value.", ""]
    lines += learning_markdown(learning or [])
    for metric in ("auc", "ks"):
        cols = [f"{t}/{metric}" for t in tasks]
        extra = ([f"{d}/avg_auc" for d in doms] + ["avg_auc", "avg_ks"]) if metric == "auc" else ["avg_ks"]
        head = ["recipe", "seeds", *[f"{t} ({domains[t]})" for t in tasks],
                *[c.replace("/avg_auc", " avg") for c in extra]]
        lines += [f"## Test {metric.upper()} per task", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        best = {c: np.nanmax([table[n][c][0] for n in table]) for c in cols + extra}
        for name in table:
            cells = [name, str(len(recipes[name].runs))]
            cells += [_cell(table[name][c], table[name][c][0] == best[c]) for c in cols + extra]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += untrained_markdown(gains or [])
    lines += query_markdown(queries or [])
    lines += scenario_lines or []
    lines += transfer_lines or []
    varied_text = ", ".join(f"`{k}`" for k in varied or [])
    if comparisons:
        baseline = recipes[comparisons[0]["baseline"]].recipe
        lines += [f"## Against {baseline} (average AUC)", "",
                  "Verdicts are decided across seeds (training noise): a 95% t interval of the "
                  "paired per-seed differences that excludes 0. The test-user bootstrap shows "
                  "how much fixed models' AUCs move with the sampled test users; it never "
                  "decides a verdict. MDE: the difference this comparison detects with 80% "
                  f"power at its seed spread and seed count; the last column, the seeds a "
                  f"difference of {PAPER_GAP} (the spread between the papers' recipes) would "
                  f"need at that spread."
                  + (f" Each recipe is read against {baseline} at its own {varied_text}."
                     if varied else ""), ""]
        if aa is not None:
            lines += [_aa_sentence(aa), ""]
        lines += comparison_markdown(comparisons)
    if variants:
        lines += [f"## Across {varied_text} (average AUC)", "",
                  "Each recipe at another value against the same recipe at its first value "
                  "(the first sweep directory's, in its sweep file's order), paired by seed; "
                  "verdicts, MDE and seeds as above.", "",
                  *comparison_markdown(variants, against=True)]
    lines += ["## Training stability", "", "| recipe | loss spikes | grad-norm max | "
              "grad-norm median |", "|---|---|---|---|"]
    for name, s in stab.items():
        lines.append(f"| {name} | {s['loss_spikes']} | {s['grad_norm_max']:.3f} | "
                     f"{s['grad_norm_median']:.3f} |")
    lines += ["", "Loss spikes: steps whose loss exceeds the median of the previous 20 steps by "
              "more than 5 robust standard deviations, summed over seeds.", "",
              "Figures: `figures/avg_auc.png`, `figures/loss.png`, `figures/mask_strips.png`."]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, recipes, table) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "seeds", "column", "mean", "std"])
        for name, cols in table.items():
            for col, (mean, std) in cols.items():
                w.writerow([name, len(recipes[name].runs), col, mean, std])


def figures(out: Path, recipes, table) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    names = list(table)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    means = [table[n]["avg_auc"][0] for n in names]
    stds = [table[n]["avg_auc"][1] for n in names]
    ax.bar(names, means, yerr=stds, capsize=4, color="C0")
    lo = min(m - s for m, s in zip(means, stds) if not math.isnan(m))
    ax.set(ylabel="average test AUC", ylim=(max(0.0, lo - 0.02), None),
           title="average AUC per recipe (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths.append(out / "avg_auc.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rec in recipes.items():
        curves = [training_series(r.dir, "train/loss") for r in rec.runs.values()]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves and all(curves) else []
        if steps:
            ax.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], label=name, lw=1)
    ax.set(xlabel="optimiser step", ylabel="train/loss (mean over seeds)", title="training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "loss.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    strips = []
    for name, rec in recipes.items():
        run = rec.runs[min(rec.runs)]
        frames = sorted(run.dir.glob("plots/mask_step*.npy"),
                        key=lambda p: int(p.stem.removeprefix("mask_step")))
        if frames:
            strips.append((name, frames))
    if strips:
        fig, axes = plt.subplots(len(strips), 1, figsize=(7, 1.8 * len(strips) + 0.6),
                                 squeeze=False, constrained_layout=True)
        for ax, (name, frames) in zip(axes[:, 0], strips):
            rows = []
            for frame in frames:
                w = np.load(frame)
                # the mean weight key j receives from the queries before it (j >= 1)
                rows.append(np.triu(w, 1).sum(0)[1:] / np.arange(1, len(w)))
            width = min(len(r) for r in rows)
            strip = np.stack([r[:width] for r in rows])
            image = ax.imshow(strip, aspect="auto", vmin=0, vmax=1, cmap="viridis",
                              interpolation="nearest")
            ax.set(ylabel="step", title=f"{name}: future-key weight by key position",
                   yticks=range(len(frames)),
                   yticklabels=[f.stem.removeprefix("mask_step") for f in frames])
        axes[-1, 0].set_xlabel("key position j")
        fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.03)
        paths.append(out / "mask_strips.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def report(dirs: str | Path | Sequence[str | Path], out: str | Path | None = None, *,
           rounds: int = 2000, wandb_table: bool = False) -> Path:
    """Writes the report of one sweep directory or several (read as one sweep, ``out``
    required) and returns the report.md path."""
    dirs = sweep_dirs(dirs)
    if out is None and len(dirs) > 1:
        raise ReportError(f"a report of {len(dirs)} sweep directories needs an output "
                          f"directory (--out): none of theirs is its own")
    title = " + ".join(d.name for d in dirs)
    collected = collect(dirs)
    settings = shared_settings(collected)
    varied = varied_settings([run for rec in collected.values() for run in rec.runs.values()])
    learning = learning_rows(collected)
    recipes = learned_only(collected)
    out = Path(out) if out else dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not recipes:  # the learning table is the whole report
        (out / "report.md").write_text("\n".join(
            [f"# Report: {title}", "", *learning_markdown(learning),
             "No trained run passed its learning check: there is no AUC to compare."]) + "\n")
        (out / "report.json").write_text(json.dumps({"learning": learning}, indent=2) + "\n")
        return out / "report.md"
    tasks, domains = columns(recipes)
    refs = references(recipes)
    table = summary({**refs, **recipes}, tasks, domains)
    comparisons = compare(recipes, rounds)
    variants = compare_variants(recipes, rounds)
    aa = aa_false_positive_rate(recipes)
    gains = against_untrained(recipes)
    stab = stability(recipes)
    queries = query_protocols(recipes)
    scenarios = scenario_summary(recipes, tasks)
    from .transfer import transfer  # transfer.py formats its cells with this module's

    transfer_lines, transfer_tables = transfer(recipes)
    text = markdown({**refs, **recipes}, tasks, domains, table, comparisons, stab, title,
                    learning, aa, gains, queries,
                    scenario_markdown(scenarios, {n: table[n] for n in refs}, tasks),
                    transfer_lines, settings, variants, varied)
    (out / "report.md").write_text(text)
    write_csv(out / "report.csv", {**refs, **recipes}, table)
    (out / "report.json").write_text(json.dumps(
        {"table": {n: {c: list(v) for c, v in cols.items()} for n, cols in table.items()},
         "comparisons": comparisons, "against_untrained": gains, "query_protocols": queries,
         "scenario_table": {f"{n} ({PROTOCOL_NAMES[p]})": {"seeds": k, **{
             c: list(v) for c, v in cols.items()}} for (n, p), (k, cols) in scenarios.items()},
         "aa_false_positive_rate": aa, "learning": learning, "transfer": transfer_tables,
         "shared_settings": settings, "varied_settings": varied, "across_variants": variants,
         "stability": stab}, indent=2) + "\n")
    paths = figures(out / "figures", recipes, table)
    if wandb_table:
        _log_wandb(title, out, table, comparisons, variants, paths)
    return out / "report.md"


def _log_wandb(title, out, table, comparisons, variants, paths) -> None:
    import wandb

    run = wandb.init(project="maskstudy", job_type="report", name=f"report-{title}",
                     group=title, dir=str(out))
    cols = sorted({c for t in table.values() for c in t})
    rows = [[n, *[table[n].get(c, (float("nan"), 0))[0] for c in cols],
             *[table[n].get(c, (0, float("nan")))[1] for c in cols]] for n in table]
    run.log({"report/table": wandb.Table(columns=["recipe", *cols, *[f"{c} std" for c in cols]],
                                         data=rows),
             "report/vs_causal": _wandb_rows(comparisons),
             **({"report/across_variants": _wandb_rows(variants)} if variants else {}),
             **{f"report/{p.stem}": wandb.Image(str(p)) for p in paths}})
    run.finish()


def _wandb_rows(rows: list[dict]):
    import wandb

    return wandb.Table(columns=list(rows[0]) if rows else ["recipe"],
                       data=[list(r.values()) for r in rows])

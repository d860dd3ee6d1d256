"""Linear-probe evaluation on frozen user embeddings (the papers' protocol).

Each evaluation embeds every probe user once (``embed_users`` under the module's inference
mask), then per task fits a standardised logistic regression on the task's train split (its
L2 strength chosen by cross-validation on that split unless ``c`` fixes it,
``datamodules/logistic.py``) and scores its test split:

    AUC  area under the ROC curve
    KS   max over thresholds of TPR - FPR (the Kolmogorov-Smirnov statistic)

Two representations are probed from one forward: ``projected`` (the L2-normalised embedding
the contrastive loss reads) and ``pooled`` (the pooled hidden state before the projector);
``representation`` picks the one the main metrics describe.

Two query protocols: ``fixed`` embeds every user once with the data's probe query; ``task``
(Query-as-Anchor) embeds the users once per task, each with that task's scenario query after
the history, and probes each task on its own embeddings. The history, truncated once for the
longest query, is computed once for all queries where the mask keeps it blind to the query
(a KV cache, ``lightning_modules/scenarios.py``), else once per distinct query; which one
ran is ``scenario_path`` in the results.

Logged as ``eval/<task>/auc``, ``eval/<task>/ks``, ``eval/<domain>/avg_auc``, ``eval/avg_auc``
and ``eval/avg_ks``, plus ``eval/by_representation/<name>/avg_auc|avg_ks`` for both
representations and, under the ``task`` protocol, ``eval/by_query/fixed|task/avg_auc|avg_ks``
for both protocols side by side, at ``every_n_steps`` and at the end of training; the final
evaluation is also written to ``results.json`` and, for W&B, as the table ``eval/results``.

Zero-shot targeting (``targeting``, FIND): each task's targeting sentence goes through the
answer tower, the probe-test users (embedded under the query the answers were trained
against, ``targeting_query``) are ranked by their similarity to it minus their similarity to
a reference sentence that states only an activity level (``targeting_reference``), and the
ranking is scored against the label: ``eval/targeting/<task>/auc``, ``recall_at_k`` and
``precision_at_k`` at K = the task's test positives, ``auc_raw`` (the plain similarity),
``auc_activity`` (the same users ranked by their number of history events alone) and
``activity_rho`` (how closely the targeting score follows that number), and the averages
``eval/targeting/avg_auc``, ``avg_recall_at_k``, ``avg_auc_raw``, ``avg_auc_activity`` and
``avg_abs_activity_rho``; the final evaluation writes them to ``targeting.json``.

The callback does not know where users come from: it takes a *probe source* with
``task_names``, ``domains`` (task -> domain), ``queries`` (task -> scenario query),
``targets`` (task -> targeting sentence), ``targeting_query``, ``targeting_reference``,
``labels`` (users x tasks), ``test_mask(task)``, ``history_events()`` (history events per
probe user, in label order), ``suffix(query)`` (the ids a query adds
after the history), ``sentences(texts)`` (right-padded answer-tower ids and mask) and
``dataloader(query=None, reserve=0)`` yielding batches with ``probe_index``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import lightning as L
import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from maskstudy.datamodules.logistic import logistic_scores
from maskstudy.lightning_modules.scenarios import NotCacheable
from maskstudy.lightning_modules.targeting import ranking_scores, targeting_direction


class ProbeSource(Protocol):
    task_names: list[str]
    domains: dict[str, str]
    queries: dict[str, str]
    targets: dict[str, str]
    targeting_query: str
    targeting_reference: str
    labels: np.ndarray

    def test_mask(self, task: str) -> np.ndarray: ...

    def history_events(self) -> np.ndarray: ...

    def sentences(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def dataloader(self, query: str | None = None, reserve: int = 0): ...

    def suffix(self, query: str) -> list[int]: ...


QUERY_PROTOCOLS = ("fixed", "task")


def ks_statistic(y: np.ndarray, score: np.ndarray) -> float:
    """max_t TPR(t) - FPR(t)."""
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.max(tpr - fpr))


def scores(y: np.ndarray | None, score: np.ndarray | None) -> dict[str, float]:
    """AUC and KS of test scores; NaN for both when there is nothing to score."""
    if score is None or y is None or len(np.unique(y)) < 2:
        return {"auc": float("nan"), "ks": float("nan")}
    return {"auc": float(roc_auc_score(y, score)), "ks": ks_statistic(y, score)}


def probe_scores(x: np.ndarray, y: np.ndarray, test: np.ndarray, *,
                 c: float | None = None) -> np.ndarray | None:
    """Test-side scores of a standardised logistic regression fitted on the train side at
    inverse strength ``c`` (None: chosen on the train side, ``datamodules/logistic.py``);
    ``None`` when either side lacks a class."""
    fitted = logistic_scores(x, y, test, c=c, standardise=True)
    return None if fitted is None else fitted[0]


def summarise(per_task: dict[str, dict[str, float]], domains: dict[str, str]) -> dict[str, float]:
    """Flat ``eval/...`` metrics: per task, per domain average AUC, overall averages."""
    out: dict[str, float] = {}
    for task, m in per_task.items():
        out[f"eval/{task}/auc"] = m["auc"]
        out[f"eval/{task}/ks"] = m["ks"]
    by_domain: dict[str, list[float]] = {}
    for task, m in per_task.items():
        by_domain.setdefault(domains[task], []).append(m["auc"])
    for domain, aucs in by_domain.items():
        out[f"eval/{domain}/avg_auc"] = float(np.nanmean(aucs))
    out["eval/avg_auc"] = float(np.nanmean([m["auc"] for m in per_task.values()]))
    out["eval/avg_ks"] = float(np.nanmean([m["ks"] for m in per_task.values()]))
    return out


def probe_all(embeddings: np.ndarray | dict[str, np.ndarray], source: ProbeSource,
              c: float | None = None, standardise: bool = True) -> tuple[dict[str, dict], np.ndarray]:
    """(AUC, KS and the probe's ``c`` per task, test scores (users, tasks), NaN off each
    task's test side). ``embeddings``: one (users, D) matrix for every task, or one per task
    (a dict); ``standardise``: scale each column first (off for the bag of events' counts)."""
    per_task, table = {}, np.full(source.labels.shape, np.nan, dtype=np.float32)
    for k, task in enumerate(source.task_names):
        y, test = source.labels[:, k], source.test_mask(task)
        x = embeddings[task] if isinstance(embeddings, dict) else embeddings
        fitted = logistic_scores(x, y, test, c=c, standardise=standardise)
        if fitted is None:
            per_task[task] = scores(None, None)
            continue
        per_task[task] = {**scores(y[test], fitted[0]), "c": fitted[1]}
        table[test, k] = fitted[0]
    return per_task, table


REPRESENTATIONS = ("projected", "pooled")


def representation_metric(name: str, key: str = "avg_auc") -> str:
    """The metric holding representation ``name``'s ``avg_auc`` (or ``avg_ks``)."""
    return f"eval/by_representation/{name}/{key}"


@torch.no_grad()
def embed_probe_users(module, source: ProbeSource, query: str | None = None,
                      reserve: int = 0) -> dict[str, np.ndarray]:
    """Per representation (``projected``: the embedding; ``pooled``: the hidden state the
    projector reads), the (users, D) matrix in label order, each probe user embedded once
    with ``query`` after the history (None: the source's fixed probe query), the history
    truncated to leave ``reserve`` tokens for the query and the anchor."""
    n = source.labels.shape[0]
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    for batch in source.dataloader(query, reserve):
        reps = module.user_representations(batch)
        idx = batch["probe_index"].numpy()
        for name, emb in reps.items():
            emb = emb.float().cpu().numpy()
            if name not in out:
                out[name] = np.zeros((n, emb.shape[1]), dtype=np.float32)
            out[name][idx] = emb
        seen[idx] = True
    if not out or not seen.all():
        raise RuntimeError(f"probe evaluation embedded {int(seen.sum())} of {n} probe users")
    return out


TARGETING_METRICS = ("auc", "recall_at_k", "precision_at_k", "auc_raw", "auc_activity",
                     "activity_rho")


@dataclass(frozen=True)
class TargetingAverage:
    """An average over tasks of one targeting metric, and how a report heads its column."""
    metric: str
    header: str
    absolute: bool = False  # average the sizes (activity_rho's sign differs between models)

    def of(self, per_task: dict[str, dict[str, float]]) -> float:
        values = [m[self.metric] for m in per_task.values()]
        return float(np.nanmean(np.abs(values) if self.absolute else values))


# Keyed as targeting.json's "metrics" and eval/targeting/<key> hold them.
TARGETING_AVERAGES = {
    "avg_auc": TargetingAverage("auc", "avg AUC"),
    "avg_recall_at_k": TargetingAverage("recall_at_k", "avg recall@K"),
    "avg_auc_raw": TargetingAverage("auc_raw", "avg AUC, plain similarity"),
    "avg_auc_activity": TargetingAverage("auc_activity", "avg AUC, activity alone"),
    "avg_abs_activity_rho": TargetingAverage("activity_rho", "avg abs(rho) score~activity",
                                             absolute=True),
}


def targeting_scores(module, source: ProbeSource) -> dict[str, dict[str, float]]:
    """Per task, the zero-shot ranking of its probe-test users by their similarity to its
    targeting sentence minus their similarity to ``source.targeting_reference``
    (:func:`targeting_direction`), scored against the label (:func:`ranking_scores`);
    ``auc_raw``: the AUC of the plain similarity to the sentence; ``auc_activity``: the AUC
    of ranking the same users by their number of history events alone; ``activity_rho``:
    the Spearman correlation of the targeting score with that number (near +-1: the sentence
    ranks users by how active they were, whatever it names)."""
    users = embed_probe_users(module, source, source.targeting_query)["projected"]
    ids, mask = source.sentences([source.targets[t] for t in source.task_names]
                                 + [source.targeting_reference])
    embedded = module.embed_answers(ids, mask).float().cpu()
    sentences, reference = embedded[:-1], embedded[-1]
    events = source.history_events()
    out = {}
    for k, task in enumerate(source.task_names):
        test, y = source.test_mask(task), source.labels[:, k]
        direction = targeting_direction(sentences[k], reference).numpy()
        score = users[test] @ direction
        plain = ranking_scores(y[test], users[test] @ sentences[k].numpy())
        out[task] = {**ranking_scores(y[test], score), "auc_raw": plain["auc"],
                     "auc_activity": ranking_scores(y[test], events[test])["auc"],
                     "activity_rho": spearman(score, events[test])}
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's of the average ranks); NaN when either side is
    constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def targeting_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """``eval/targeting/<task>/<metric>`` and the averages over tasks (``activity_rho`` as
    ``avg_abs_activity_rho``)."""
    out = {f"eval/targeting/{task}/{key}": m[key]
           for task, m in per_task.items() for key in TARGETING_METRICS}
    for key, average in TARGETING_AVERAGES.items():
        out[f"eval/targeting/{key}"] = average.of(per_task)
    return out


@dataclass
class Evaluation:
    step: int
    per_task: dict[str, dict[str, float]]
    metrics: dict[str, float]
    seconds: float
    representation: str = "projected"  # the one per_task and the main metrics describe
    query: str = "fixed"  # the query protocol they were probed under
    # under the task protocol: how the users were embedded per query (ONE_HISTORY, or
    # RECOMPUTE and the reason)
    scenario_path: str | None = None
    targeting: dict[str, dict[str, float]] | None = None  # per task, with eval targeting


ONE_HISTORY = "one history per user for every query (KV cache)"
RECOMPUTE = "recomputed per query"


@torch.no_grad()
def scenario_passes(module, dataloader, suffix, queries: list[str], key: str,
                    share_history: bool = True) -> tuple[list, dict[str, np.ndarray], str]:
    """(keys, {representation: (users, N, D)}, path): the users ``dataloader(query,
    reserve)`` yields, in its order (``batch[key]`` of each), under each of N queries. Every
    query reads the history truncated once for the longest suffix (``suffix(query)``: query
    and anchor ids); it is computed once for all queries where the module's mask allows
    (``share_history``), else once per query. ``path`` says which, and why a recompute."""
    reserve = max(len(suffix(q)) for q in queries)
    suffixes = [suffix(q) for q in queries]

    def one_pass(query: str, represent) -> tuple[list, dict[str, np.ndarray]]:
        keys, parts = [], {}
        for batch in dataloader(query, reserve):
            for name, emb in represent(batch).items():
                parts.setdefault(name, []).append(emb.float().cpu().numpy())
            found = batch[key]
            keys += found.tolist() if isinstance(found, torch.Tensor) else list(found)
        return keys, {name: np.concatenate(v) for name, v in parts.items()}

    path = f"{RECOMPUTE}: not asked to share the history"
    if share_history:
        try:
            return (*one_pass(queries[0],
                              lambda batch: module.scenario_representations(batch, suffixes)),
                    ONE_HISTORY)
        except NotCacheable as e:
            path = f"{RECOMPUTE}: {e}"
    passes = [one_pass(q, module.user_representations) for q in queries]
    return passes[0][0], {name: np.stack([reps[name] for _, reps in passes], 1)
                          for name in passes[0][1]}, path


def task_query_embeddings(module, source: ProbeSource, share_history: bool = True
                          ) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """(per representation, per task the users' embeddings under the task's scenario query;
    the path, see :func:`scenario_passes`: one history, truncated for the longest query, for
    all)."""
    queries = list(dict.fromkeys(source.queries[t] for t in source.task_names))
    keys, reps, path = scenario_passes(module, source.dataloader, source.suffix, queries,
                                       "probe_index", share_history)
    n = source.labels.shape[0]
    if len(set(keys)) != n:
        raise RuntimeError(f"probe evaluation embedded {len(set(keys))} of {n} probe users")
    out = {}
    for name, emb in reps.items():
        matrix = np.zeros((n, *emb.shape[1:]), dtype=np.float32)
        matrix[keys] = emb
        column = {q: matrix[:, k] for k, q in enumerate(queries)}
        out[name] = {t: column[source.queries[t]] for t in source.task_names}
    return out, path


def evaluate(module, source: ProbeSource, c: float | None = None, step: int = 0,
             representation: str = "projected", query: str = "fixed",
             targeting: bool = False) -> Evaluation:
    """Probes every representation; ``per_task`` and the ``eval/...`` metrics describe
    ``representation`` under the ``query`` protocol. Every representation's averages are
    logged as ``eval/by_representation/<name>/avg_auc`` and ``.../avg_ks``; under the
    ``task`` protocol the fixed one is probed too, and both protocols' averages and per-task
    values are logged as ``eval/by_query/<protocol>/avg_auc`` (``avg_ks``) and
    ``eval/by_query/<protocol>/<task>/auc`` (``ks``). ``targeting``: zero-shot targeting
    too (:func:`targeting_scores`)."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"eval representation {representation!r}: expected one of "
                         f"{REPRESENTATIONS}")
    if query not in QUERY_PROTOCOLS:
        raise ValueError(f"eval query {query!r}: expected one of {QUERY_PROTOCOLS}")
    start = time.perf_counter()
    metrics, main = {}, None
    protocols = {"fixed": embed_probe_users(module, source)}
    path = None
    if query == "task":
        protocols["task"], path = task_query_embeddings(module, source)
    for protocol, embeddings in protocols.items():
        for name, x in embeddings.items():
            per_task, test_scores = probe_all(x, source, c)
            summary = summarise(per_task, source.domains)
            for key in ("avg_auc", "avg_ks"):
                if protocol == query:
                    metrics[representation_metric(name, key)] = summary[f"eval/{key}"]
                if name == representation and len(protocols) > 1:
                    metrics[f"eval/by_query/{protocol}/{key}"] = summary[f"eval/{key}"]
            if name == representation and len(protocols) > 1:
                for task, values in per_task.items():
                    for key in ("auc", "ks"):
                        metrics[f"eval/by_query/{protocol}/{task}/{key}"] = values[key]
            if name == representation and protocol == query:
                main = (per_task, summary, test_scores)
    per_task, summary, test_scores = main
    targets = targeting_scores(module, source) if targeting else None
    if targets is not None:
        metrics.update(targeting_metrics(targets))
    result = Evaluation(step, per_task, {**summary, **metrics}, time.perf_counter() - start,
                        representation, query, path, targets)
    result.test_scores = test_scores  # not fields: kept out of checkpoints
    result.embeddings = protocols["fixed"]
    return result


TARGETING_FILE = "targeting.json"


def save_targeting(path: Path, source: ProbeSource, result: Evaluation) -> None:
    """``targeting.json``: per task its targeting sentence and ranking scores, the averages,
    the query the users were embedded under, the reference sentence and the step."""
    tasks = {t: {"sentence": source.targets[t], **m} for t, m in result.targeting.items()}
    averages = {k.removeprefix("eval/targeting/"): v for k, v in result.metrics.items()
                if k.startswith("eval/targeting/avg_")}
    path.write_text(json.dumps({"step": result.step, "users_query": source.targeting_query,
                                "reference": source.targeting_reference, "tasks": tasks,
                                "metrics": averages}, indent=2) + "\n")


def save_predictions(path: Path, source: ProbeSource, test_scores: np.ndarray) -> None:
    """``predictions.npz``: task names, labels and test masks (users, tasks), and the probe's
    test scores (NaN off the test side), so reports can bootstrap over test users."""
    test = np.stack([source.test_mask(t) for t in source.task_names], axis=1)
    np.savez_compressed(path, tasks=np.array(source.task_names), labels=source.labels,
                        test=test, scores=test_scores)


class LinearProbeEvaluation(L.Callback):
    """Evaluates at every ``every_n_steps`` optimiser steps (0: only at the end) and at the
    end of training, on global rank 0; the final evaluation's test scores go to
    ``out_dir/predictions.npz``, its summary to :meth:`results`."""

    def __init__(self, source: ProbeSource, *, every_n_steps: int = 0, c: float | None = None,
                 out_dir: str | Path | None = None, representation: str = "projected",
                 query: str = "fixed", targeting: bool = False):
        self.source = source
        self.representation = representation
        self.query = query
        self.targeting = targeting
        self.every_n_steps = every_n_steps
        self.c = c
        self.out_dir = Path(out_dir) if out_dir else None
        self.history: list[Evaluation] = []

    def _run(self, trainer: L.Trainer, module) -> Evaluation | None:
        if trainer.global_rank != 0:
            return None
        result = evaluate(module, self.source, self.c, trainer.global_step, self.representation,
                          self.query, self.targeting)
        self.history.append(result)
        for logger in trainer.loggers:
            logger.log_metrics({**result.metrics, "eval/seconds": result.seconds},
                               step=trainer.global_step)
        return result

    def state_dict(self) -> dict:
        # Evaluations made before an interruption stay in results.json after a resume.
        return {"history": [asdict(e) for e in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [Evaluation(**e) for e in state.get("history", [])]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (self.every_n_steps and step % self.every_n_steps == 0 and step > 0
                and (not self.history or self.history[-1].step != step)
                and step < (trainer.max_steps or 0)):
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        result = self._run(trainer, pl_module)
        if result is None:
            return
        rows = [[task, m["auc"], m["ks"], self.source.domains[task]]
                for task, m in result.per_task.items()]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):  # WandbLogger
                logger.log_table("eval/results", columns=["task", "auc", "ks", "domain"],
                                 data=rows, step=trainer.global_step)
        if self.out_dir is not None:
            save_predictions(self.out_dir / "predictions.npz", self.source, result.test_scores)
            if result.targeting is not None:
                save_targeting(self.out_dir / TARGETING_FILE, self.source, result)

    def results(self) -> dict:
        """The final evaluation (the last one made): step, representation, query protocol,
        metrics, per-task AUC and KS, its seconds, and the average AUC of every evaluation by
        step."""
        final = self.history[-1]
        return {"step": final.step, "representation": final.representation,
                "query": final.query, "scenario_path": final.scenario_path,
                "targeting": final.targeting,
                "metrics": final.metrics, "tasks": final.per_task, "eval_seconds": final.seconds,
                "history": [{"step": e.step, "avg_auc": e.metrics["eval/avg_auc"]}
                            for e in self.history]}

"""Soft prompt tuning of a frozen checkpoint, one scenario at a time (``maskstudy tune``).

Query-as-Anchor's cluster-based prompt tuning: the backbone, the input layer and the
projector stay frozen; K prompt vectors sit after the task's scenario query and before the
anchor (``lightning_modules/prompts.py``, the user history computed once into a KV cache
where the mask allows), and one prototype per class is learned beside them with
:func:`~maskstudy.lightning_modules.targeting.prototype_loss`, its classes weighted to
balance (the paper does not say; unweighted, a rare positive class is outvoted and the tuned
score falls below the untuned one). Training reads the task's
probe-train users, scoring its probe-test users: the tuned prototypes' P(class 1) against
two untuned rows on the same users and history truncation,

    probe  a standardised logistic regression on the untuned scenario embeddings (the
           Query-as-Anchor row of the probe)
    base   the untuned embeddings scored by the class means of the train users (the
           prototypes the tuning starts from)

Each task writes ``<run>/tuned/<task>-p<K>-s<steps>-seed<seed>/``: ``tune.yaml`` (what ran),
``prompt.pt`` (prompts, prototypes, the query's ids), ``results.json`` and ``metrics.csv``
(and a W&B run when enabled).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from maskstudy.callbacks.linear_probe import probe_scores, scores
from maskstudy.lightning_modules.hierarchical import slots_of
from maskstudy.lightning_modules.masks import HISTORY
from maskstudy.lightning_modules.prompts import PromptedUsers, init_prompts
from maskstudy.lightning_modules.targeting import (
    balanced_weights, prototype_loss, prototype_scores,
)

from .checkpoints import load_run
from .config import ConfigError, ExperimentConfig, TuneConfig
from .data import ProbeSourceAdapter, probe_datamodule, suite_of
from .loggers import finish_wandb, make_loggers

log = logging.getLogger(__name__)
TUNED_DIR = "tuned"


def tune_dir(run_dir: Path, task: str, tune: TuneConfig) -> Path:
    return run_dir / TUNED_DIR / f"{task}-p{tune.prompt_tokens}-s{tune.steps}-seed{tune.seed}"


def select_rows(batch: dict, rows: np.ndarray) -> dict:
    """The users ``rows`` (a boolean mask) of a collated batch: every tensor and list is
    batch-first."""
    index = np.flatnonzero(rows)
    return {key: value[torch.from_numpy(index)] if isinstance(value, torch.Tensor)
            else [value[i] for i in index] for key, value in batch.items()}


class TaskUsers:
    """The probe users of one task under its scenario query, the history truncated to leave
    room for the query, ``prompt_tokens`` prompts and the anchor: per loader batch and side
    of the task's split (train, test), its :class:`PromptedUsers` and probe indices, and the
    untuned embedding (no prompt) of every user."""

    def __init__(self, module, source: ProbeSourceAdapter, task: str, prompt_tokens: int):
        encoder = module.encoder
        mask = module.inference_mask or encoder.mask
        suffix = source.suffix(source.queries[task])
        test = source.test_mask(task)
        n = len(test)
        self.train: list[tuple[PromptedUsers, np.ndarray]] = []
        self.test: list[tuple[PromptedUsers, np.ndarray]] = []
        self.untuned = np.zeros((n, module.config.encoder.projector_out), dtype=np.float32)
        no_prompt = torch.zeros(0, encoder.backbone.get_input_embeddings().weight.shape[1])
        seen = np.zeros(n, dtype=bool)
        for batch in source.dataloader(source.queries[task], len(suffix) + prompt_tokens):
            for side, rows in ((self.train, ~test[batch["probe_index"].numpy()]),
                               (self.test, test[batch["probe_index"].numpy()])):
                if not rows.any():
                    continue
                part = select_rows(batch, rows)
                history = ((part["user_segment_ids"] == HISTORY)
                           & part["user_attention_mask"].bool()).long()
                prompted = PromptedUsers(encoder, part["user_input_ids"], history, suffix, mask,
                                         slots=slots_of(part))
                index = part["probe_index"].numpy()
                side.append((prompted, index))
                with torch.no_grad():
                    self.untuned[index] = encoder.project(prompted.pooled(no_prompt)).numpy()
                seen[index] = True
        if not seen.all():
            raise RuntimeError(f"prompt tuning embedded {int(seen.sum())} of {n} probe users")
        first = self.train[0][0]
        self.path = first.path if first.path == "cache" else f"recompute: {first.reason}"


def class_means(x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """(2, D) the normalised mean embedding of each class."""
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])
    return nn.functional.normalize(torch.from_numpy(means).float(), dim=-1)


def tune_task(module, source: ProbeSourceAdapter, task: str, tune: TuneConfig,
              users: TaskUsers, loggers: list = (), c: float | None = None) -> tuple[dict, dict]:
    """(results, state): prompt tuning of ``task`` on its probe-train ``users``, scored on
    its probe-test users beside the untuned ``probe`` and ``base`` rows; ``state`` holds the
    prompts and prototypes."""
    start = time.perf_counter()
    k = source.task_names.index(task)
    y, test = source.labels[:, k].astype(int), source.test_mask(task)
    train = ~test
    gen = torch.Generator().manual_seed(tune.seed)
    prompts = init_prompts(module.encoder, tune.prompt_tokens, gen)
    start_prototypes = class_means(users.untuned[train], y[train])
    prototypes = nn.Parameter(start_prototypes.clone())
    optimizer = torch.optim.Adam([prompts, prototypes], lr=tune.lr)
    batches = users.train
    labels = torch.from_numpy(y)
    weights = balanced_weights(y[train])

    def tuned_scores() -> np.ndarray:
        out = np.zeros(len(y), dtype=np.float32)
        with torch.no_grad():
            for prompted, idx in users.test:
                u = module.encoder.project(prompted.pooled(prompts))
                out[idx] = prototype_scores(u, prototypes, tune.temperature).numpy()
        return out

    losses, history = [], []
    order: list[int] = []
    for step in range(1, tune.steps + 1):
        if not order:
            order = torch.randperm(len(batches), generator=gen).tolist()
        prompted, idx = batches[order.pop()]
        u = module.encoder.project(prompted.pooled(prompts))
        loss = prototype_loss(u, prototypes, labels[idx], tune.temperature, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % tune.eval_every == 0 or step == tune.steps:
            score = tuned_scores()
            history.append({"step": step, **scores(y[test], score[test])})
            metrics = {f"tune/{task}/test_auc": history[-1]["auc"],
                       f"tune/{task}/test_ks": history[-1]["ks"]}
        else:
            metrics = {}
        for logger in loggers:
            logger.log_metrics({f"tune/{task}/loss": losses[-1], **metrics}, step=step)
    base = prototype_scores(torch.from_numpy(users.untuned), start_prototypes,
                            tune.temperature).numpy()
    window = min(len(losses), 20)
    results = {
        "task": task, "query": source.queries[task], "path": users.path,
        "tune": asdict(tune), "train_users": int(train.sum()), "test_users": int(test.sum()),
        "tuned": {key: v for key, v in history[-1].items() if key != "step"},
        "history": history,
        "probe": scores(y[test], probe_scores(users.untuned, y, test, c=c)),
        "base": scores(y[test], base[test]),
        # the loss against its chance value: ln 2 when both prototypes are equally similar
        "loss": {"first": float(np.mean(losses[:window])),
                 "last": float(np.mean(losses[-window:])), "chance": math.log(2)},
        "seconds": time.perf_counter() - start,
    }
    state = {"prompts": prompts.detach().clone(), "prototypes": prototypes.detach().clone(),
             "suffix": source.suffix(source.queries[task]), "task": task,
             "query": source.queries[task], "temperature": tune.temperature}
    return results, state


def tune_checkpoint(checkpoint: str | Path, tasks: list[str],
                    overrides: list[str] | None = None,
                    prompt_tokens: list[int] | None = None) -> list[dict]:
    """Tunes one prompt per task on a frozen checkpoint, each written beside the run.
    ``prompt_tokens``: several prompt sizes, each tuned on the same cached histories
    (truncated for the largest); default ``tune.prompt_tokens``."""
    cfg, module, run_dir = load_run(checkpoint, overrides)
    module.requires_grad_(False)
    sizes = prompt_tokens or [cfg.tune.prompt_tokens]
    if min(sizes) < 1:
        raise ConfigError(f"--prompt-tokens {sizes}: expected at least 1 each")
    cfg.eval.tasks = list(tasks)
    source = ProbeSourceAdapter(probe_datamodule(cfg), suite_of(list(cfg.eval.tasks)))
    out = []
    for task in source.task_names:
        users = TaskUsers(module, source, task, max(sizes))
        for size in sizes:
            tune = dataclasses.replace(cfg.tune, prompt_tokens=size)
            out.append(_tune_and_write(checkpoint, cfg, module, source, task, tune, users,
                                       tune_dir(run_dir, task, tune)))
    return out


def _tune_and_write(checkpoint, cfg: ExperimentConfig, module, source, task: str,
                    tune: TuneConfig, users: TaskUsers, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tune.yaml").write_text(yaml.safe_dump(
        {"checkpoint": str(checkpoint), "task": task, "tune": asdict(tune)}, sort_keys=False))
    loggers = make_loggers(_tune_config(cfg, task), out_dir)
    try:
        results, state = tune_task(module, source, task, tune, users, loggers, cfg.eval.c)
    except BaseException:
        finish_wandb(exit_code=1)
        raise
    for logger in loggers:
        logger.finalize("success")
    finish_wandb()
    results["checkpoint"] = str(checkpoint)
    torch.save(state, out_dir / "prompt.pt")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log.info("tuned %s: %s", task, out_dir)
    return results | {"dir": str(out_dir)}


def _tune_config(cfg: ExperimentConfig, task: str) -> ExperimentConfig:
    """The run's config, named and typed for the tuning's own logger run."""
    tuned = copy.deepcopy(cfg)
    tuned.name = f"{cfg.name}-tune-{task}"
    tuned.logging.job_type = "tune"
    return tuned

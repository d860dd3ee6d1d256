"""Launching runs: ``fit`` an experiment, ``evaluate`` or ``embed`` from a checkpoint.

A run lives in ``<run_root>/<name>/<timestamp>/`` (``rundir.py``): ``config.yaml`` (resolved),
``tokenizer.json``, ``checkpoints/last.ckpt`` (``checkpoints.py``), ``metrics.csv`` and, with
W&B on, ``wandb/`` (``loggers.py``), ``progress.json`` (``progress.py``), ``predictions.npz``
(the probe callback), ``plots/`` and ``results.json``, which ``fit`` writes once at the end.
Reference rows (``references.py``) and the pre-trained backbone (``pretraining.py``) are
computed once per dataset and cached in ``cache_dir``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from maskstudy.callbacks.learning_check import CollapseDetector, LearningCheck
from maskstudy.callbacks.linear_probe import (
    TARGETING_FILE, LinearProbeEvaluation, evaluate, save_targeting, scenario_passes,
)
from maskstudy.callbacks.mask_schedule import (
    FutureAttentionMonitor, GradientGuidedPrewarmup, MaskHeatmap, MaskMonitor,
)
from maskstudy.datamodules import ceiling
from maskstudy.datamodules.datamodules import UserDataModule
from maskstudy.datamodules.tokenizer import save_tokenizer, tags
from maskstudy.lightning_modules.masks import AttentionMask
from maskstudy.lightning_modules.module import ContrastiveMaskingModule

from .checkpoints import (
    CheckpointError, check_same_model, checkpoint_state, load_run, run_config_path,
)
from .config import ExperimentConfig, resolve_precision, to_yaml
from .data import ProbeSourceAdapter, build_datamodules, probe_datamodule, suite_of
from .loggers import SampleTable, finish_wandb, make_loggers
from .pretraining import load_pretrained, pretrained_backbone
from .progress import ProgressFile, TrainingProgress
from .references import reference_rows
from .rundir import barrier, shared_run_dir

log = logging.getLogger(__name__)


def schedule_callbacks(cfg: ExperimentConfig, mask: AttentionMask,
                       plots: Path | None = None) -> list:
    """The recipe's mask schedule and mask monitors, as the mask asks for them."""
    s = cfg.schedule
    out: list = []
    if s.prewarmup:
        out.append(GradientGuidedPrewarmup(s.warmup_steps, variant=s.variant, ema=s.ema,
                                           source=s.source, out_dir=plots))
    if s.ramp != "none":
        out.append(mask.ramp_scheduler(s.warmup_steps, s.total_steps, s.ramp,
                                       cfg.data.max_tokens))
    if mask.stateful:
        out.append(MaskMonitor())
    if mask.heatmap and cfg.logging.mask_heatmap_every > 0:
        out.append(MaskHeatmap(plots, cfg.logging.mask_heatmap_every))
    if cfg.logging.future_attention_every > 0:
        out.append(FutureAttentionMonitor(cfg.logging.future_attention_every,
                                          cfg.logging.future_attention_users))
    return out


@dataclass
class RunResult:
    run_dir: Path
    results: dict


class OutOfMemory(RuntimeError):
    """Training ran out of (GPU or host) memory; the message lists what to change."""


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or \
        "can't allocate memory" in text


def out_of_memory_message(cfg: ExperimentConfig, step: int, error: BaseException) -> str:
    d, b = cfg.data, cfg.backbone
    return (f"out of memory at optimiser step {step} (data.batch_size={d.batch_size}, "
            f"data.max_tokens={d.max_tokens}, trainer.precision="
            f"{resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)}, "
            f"backbone.gradient_checkpointing={b.gradient_checkpointing}, "
            f"backbone.lora.enabled={b.lora.enabled}). Lower data.batch_size (with "
            f"trainer.accumulate_grad_batches to keep the effective batch) or data.max_tokens, "
            f"set backbone.gradient_checkpointing=true, trainer.precision=bf16-mixed on GPUs, "
            f"or backbone.lora.enabled=true. ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})")


def fit(cfg: ExperimentConfig, *, resume: str | Path | None = None,
        callbacks: list | None = None) -> RunResult:
    """Trains one recipe, evaluates it, and writes the run directory.

    ``resume``: a checkpoint of an earlier run of the same model; training continues from it
    in that run's directory (model, optimiser, LR schedule, mask state, data-stream position
    and RNG state restored), so the result equals an uninterrupted run. ``callbacks`` are
    added to the recipe's own."""
    ckpt_step = 0
    if resume is not None:
        resume = Path(resume)
        if not resume.exists():
            raise FileNotFoundError(f"checkpoint {resume}: no such file")
        state = checkpoint_state(resume)
        check_same_model(cfg, resume, state)
        ckpt_step = int(state.get("global_step", 0))
        run_dir = run_config_path(resume).parent
    else:
        run_dir = shared_run_dir(cfg)
    rank_zero = rank_zero_only.rank == 0
    progress = ProgressFile(run_dir) if rank_zero else None
    if rank_zero:  # fully resolved, with the group choices it was composed from
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        progress.update("setup")
    L.seed_everything(cfg.seed, verbose=False)
    try:
        train_dm, probe_dm = build_datamodules(cfg)
    except Exception:
        if resume is None and rank_zero:  # a data mistake: no half-made run is left behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if rank_zero:  # as loaded: a pretrained model's tokenizer with the template's tokens added
        save_tokenizer(train_dm.template.tok, run_dir / "tokenizer.json")
    source = ProbeSourceAdapter(probe_dm, suite_of(list(cfg.eval.tasks)))
    # rank 0 computes and caches the backbone and the references; the other ranks read them
    backbone = (pretrained_backbone(cfg, train_dm.tokenizer_path,
                                    on_step=lambda k, n: progress.update("pretrain", k, n))
                if rank_zero else None)
    barrier()
    if not rank_zero:
        backbone = pretrained_backbone(cfg, train_dm.tokenizer_path)
    refs = {}
    if cfg.eval.references:
        if rank_zero:
            progress.update("references")
            refs = reference_rows(cfg, probe_dm, source, backbone)
        barrier()
        if not rank_zero:
            refs = reference_rows(cfg, probe_dm, source, backbone)
    L.seed_everything(cfg.seed, verbose=False)
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=train_dm.vocab_size,
                                      special_token_ids=train_dm.template.ids.all(),
                                      modality_slots=train_dm.modality_slots)
    if resume is None:
        load_pretrained(module, backbone)
    if cfg.trainer.compile:
        module.encoder.backbone.compile()
    probe_cb = LinearProbeEvaluation(source, every_n_steps=cfg.eval.every_n_steps, c=cfg.eval.c,
                                     out_dir=run_dir, representation=cfg.eval.representation,
                                     query=cfg.eval.query, targeting=cfg.eval.targeting)
    t = cfg.trainer
    max_steps = t.max_steps if t.train else 0
    detector = CollapseDetector(cfg.learning)
    learning = LearningCheck(train_dm.val_dataloader, cfg.learning, detector=detector,
                             trained=max_steps > 0)
    callbacks = [detector, learning, probe_cb,
                 *schedule_callbacks(cfg, module.mask, run_dir / "plots"), *(callbacks or [])]
    if rank_zero:
        callbacks.append(TrainingProgress(progress))
    if cfg.logging.sample_tables:
        callbacks.append(SampleTable(train_dm.template.tok))
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=cfg.trainer.val_check_interval)
    trainer = L.Trainer(
        max_steps=max_steps, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches,
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic, log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=t.num_sanity_val_steps, enable_progress_bar=t.enable_progress_bar,
        logger=make_loggers(cfg, run_dir, resume_step=ckpt_step if resume else None),
        callbacks=[*callbacks, checkpoint], default_root_dir=str(run_dir),
        enable_model_summary=False)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=train_dm, ckpt_path=resume,
                    weights_only=True if resume else None)
    except BaseException as e:
        finish_wandb(exit_code=1)  # the W&B run ends as failed, never left open
        if is_out_of_memory(e):
            raise OutOfMemory(out_of_memory_message(cfg, trainer.global_step, e)) from e
        raise
    train_seconds = time.perf_counter() - start
    if max_steps == 0:  # the untrained model: Lightning runs no training hooks at all
        if rank_zero:
            progress.update("eval")
        learning.summary = learning.check(module)
        probe_cb.on_train_end(trainer, module)
    # last.ckpt is the final model even when max_steps is not a multiple of the interval.
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    for logger in trainer.loggers:
        logger.finalize("success")
    if trainer.global_rank != 0:
        return RunResult(run_dir, {})
    results = {"name": cfg.name, "description": cfg.description, "mask": cfg.mask.name,
               "choices": cfg.choices, "input": cfg.input.label, "seed": cfg.seed,
               "domains": source.domains, "skipped_tasks": probe_dm.probe.skipped,
               "references": refs, **probe_cb.results(),
               "train_seconds": train_seconds, "learning": learning.summary}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plots(run_dir, results)
    finish_wandb()
    progress.update("done")
    return RunResult(run_dir, results)


def _plots(run_dir: Path, results: dict) -> None:
    """plots/loss.png (train loss by step) and plots/auc.png (probe AUC per task)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    steps, losses = [], []
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                steps.append(int(row["step"]))
                losses.append(float(row["train/loss"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    ax.set(xlabel="optimiser step", ylabel="train/loss", title=f"{results['name']}: training loss")
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=100)
    plt.close(fig)
    tasks = list(results["tasks"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(tasks, [results["tasks"][t]["auc"] for t in tasks])
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set(ylabel="test AUC", ylim=(0.4, 1.0), title=f"{results['name']}: linear probe")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(plots / "auc.png", dpi=100)
    plt.close(fig)


def evaluate_checkpoint(checkpoint: str | Path, tasks: list[str] | None = None,
                        targeting: bool | None = None, latents: bool = False,
                        overrides: list[str] | None = None) -> dict:
    """The linear probe (and with ``targeting``, or the run's ``eval.targeting``, zero-shot
    targeting, also written to the run's ``targeting.json``) of a checkpoint, under its run's
    config with ``overrides`` (e.g. ``eval.c=0.01``). ``latents`` (a synthetic world): how
    much of each latent every representation holds, beside the bag of events and its window
    (:func:`latent_recovery`)."""
    cfg, module, run_dir = load_run(checkpoint, overrides)
    if tasks:
        cfg.eval.tasks = tasks
    if targeting is not None:
        cfg.eval.targeting = targeting
    if latents:
        ceiling.world_config(cfg.data.path)  # a synthetic world, before any embedding
    source = ProbeSourceAdapter(probe_datamodule(cfg), suite_of(list(cfg.eval.tasks)))
    result = evaluate(module, source, cfg.eval.c, module.checkpoint_step,
                      representation=cfg.eval.representation,
                      query=cfg.eval.query, targeting=cfg.eval.targeting)
    if result.targeting is not None:
        save_targeting(run_dir / TARGETING_FILE, source, result)
    return {"checkpoint": str(checkpoint), "metrics": result.metrics, "tasks": result.per_task,
            "targeting": result.targeting, "skipped_tasks": source.dm.probe.skipped,
            "latents": latent_recovery(cfg, source.dm, result.embeddings) if latents else None}


def latent_recovery(cfg: ExperimentConfig, probe_dm, embeddings: dict[str, np.ndarray]) -> dict:
    """Per representation (the run's, then the bag of events on every history event and on
    the encoder's window), the test R^2 of each latent of the world's probe users
    (``ceiling.latent_recovery``), on one split of ``eval.test_fraction`` fixed by
    ``data.split_seed``."""
    users = probe_dm.probe.user_ids
    latents = ceiling.latent_features(cfg.data.path, users)
    test = np.random.default_rng(cfg.data.split_seed).random(len(users)) < cfg.eval.test_fraction
    representations = {
        **embeddings,
        "bag_of_events": probe_dm.probe.history_features().toarray(),
        "bag_of_events_window": probe_dm.window_features().toarray()}
    return {name: ceiling.latent_recovery(x, latents, test)
            for name, x in representations.items()}


def scenario_queries(cfg: ExperimentConfig, queries: str) -> dict[str, str]:
    """Scenario name -> query: ``tasks`` (the run's tasks and their scenario queries) or a
    text file of queries, one a line (each its own name)."""
    if queries == "tasks":
        return {t.name: t.scenario for t in cfg.eval.resolved_tasks()}
    path = Path(queries)
    if not path.is_file():
        raise FileNotFoundError(f"--queries {queries}: no such file (give a text file of "
                                f"queries, one a line, or 'tasks')")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise FileNotFoundError(f"--queries {queries}: the file holds no query")
    return {q: q for q in lines}


QUERY_KEY = b"maskstudy.query"  # Parquet metadata: the query the users read when embedded


def embed_checkpoint(checkpoint: str | Path, out: str | Path, split: str = "all",
                     data: str | None = None, queries: str | None = None,
                     query: str | None = None) -> int:
    """Writes ``user_id`` and ``embedding`` (list<float>) for every user of ``split``, one
    loader batch at a time (memory bounded by a batch), the users reading ``query`` after
    their history (None: ``data.probe_query``; ``behaviour``: ``data.behaviour_query``, the
    one targeting ranks under), kept in the file's metadata. With ``queries`` (``tasks`` or
    a file, see :func:`scenario_queries`) one row per (user, scenario), with ``scenario``
    and ``query`` columns, written at the end. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg, module, _ = load_run(checkpoint)
    if data:
        cfg.data.path = data
    dm = UserDataModule(cfg.data, input=cfg.input)
    if data and cfg.data.tokenizer and Path(cfg.data.tokenizer).is_file():
        known = Tokenizer.from_file(cfg.data.tokenizer)  # the run's, with its segments' tags
        if any(known.token_to_id(t) is None for t in tags(dm.spec.segments)):
            raise CheckpointError(
                f"{data} declares modalities {list(dm.spec.names)}, which the model of "
                f"{checkpoint} was not trained on; embed data with the modalities of its run")
    if queries and query is not None:
        raise ValueError("--query and --queries: give one query for every user, or a list")
    scenarios = scenario_queries(cfg, queries) if queries else None
    dm.setup()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if scenarios is None:
        text = {None: cfg.data.probe_query, "behaviour": cfg.data.behaviour_query}.get(query, query)
        schema = pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32()))],
                           metadata={QUERY_KEY: text.encode()})
        rows = 0
        with pq.ParquetWriter(out, schema) as writer, torch.no_grad():
            for batch in dm.users_dataloader(split, text):
                embs = module.embed_users(batch).float().numpy()
                writer.write_table(pa.table({"user_id": batch["user_ids"],
                                             "embedding": list(embs)}, schema=schema))
                rows += len(embs)
        return rows
    names = list(scenarios)
    ids, reps, path = scenario_passes(
        module, lambda q, reserve: dm.users_dataloader(split, q, reserve),
        dm.suffix, [scenarios[n] for n in names], "user_ids")
    log.info("embedded %d users under %d queries: %s", len(ids), len(names), path)
    matrix = reps["projected"]
    columns = {"user_id": pa.array(np.repeat(ids, len(names)).tolist(), pa.string()),
               "scenario": pa.array(names * len(ids), pa.string()),
               "query": pa.array([scenarios[n] for n in names] * len(ids), pa.string())}
    matrix = matrix.reshape(-1, matrix.shape[-1])
    table = pa.table({**columns, "embedding": pa.array(list(matrix), pa.list_(pa.float32()))})
    pq.write_table(table, out)
    return len(table)

"""Launching runs: ``fit`` a recipe, ``evaluate`` or ``embed`` from a checkpoint.

A run lives in ``<run_root>/<name>/<timestamp>/``: ``config.yaml`` (resolved), ``tokenizer.json``,
``checkpoints/last.ckpt``, ``metrics.csv``, ``results.json``, ``plots/`` and, with W&B on,
``wandb/``. Reference rows (the untrained backbone and the bag-of-events baseline) are computed
once per dataset, probe split and backbone, and cached in ``cache_dir`` (``<run_root>/.cache/``
unless set), as is the pre-trained backbone every run starts from (``pretraining.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from maskstudy.callbacks.learning_check import CollapseDetector, LearningCheck
from maskstudy.callbacks.linear_probe import LinearProbeEvaluation, evaluate, scores, summarise
from maskstudy.callbacks.mask_schedule import (
    FutureAttentionMonitor, GradientGuidedPrewarmup, MaskHeatmap, MaskMonitor,
)
from maskstudy.datamodules import baseline
from maskstudy.datamodules.schema import dataset_files
from maskstudy.datamodules.tokenizer import save_tokenizer
from maskstudy.datamodules.datamodules import (
    ContrastiveDataModule, ProbeDataModule, UserDataModule,
)
from maskstudy.lightning_modules.masks import AttentionMask
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig, ModuleConfig

from .config import ExperimentConfig, cache_dir, resolve_precision, to_dict, to_yaml
from .pretraining import PretrainedBackbone, load_pretrained, pretrained_backbone
from .progress import ProgressFile, TrainingProgress

log = logging.getLogger(__name__)


class ProbeSourceAdapter:
    """The linear-probe callback's view of a ProbeDataModule (callbacks never import data)."""

    def __init__(self, dm: ProbeDataModule, suite: str):
        self.dm = dm
        self.task_names = dm.task_names
        self.labels = dm.probe.labels
        self.domains = {t.name: t.domain(suite) for t in dm.probe.tasks}

    def test_mask(self, task: str) -> np.ndarray:
        return self.dm.probe.test_mask(task)

    def dataloader(self):
        return self.dm.probe_dataloader(all_ranks=True)


def suite_of(tasks: list[str]) -> str:
    return "qanchor" if tasks == ["qanchor"] else "ggsm"


def launched_world_size() -> int:
    """Processes started by a launcher (torchrun, SLURM via Lightning's environment)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shared_run_dir(cfg: ExperimentConfig) -> Path:
    """The run directory, created once: with several launched processes, rank 0 creates it and
    broadcasts its path (the process group is opened here, Lightning reuses it)."""
    if launched_world_size() <= 1:
        return make_run_dir(cfg)
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)  # env:// from the launcher
    path = [str(make_run_dir(cfg)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def make_run_dir(cfg: ExperimentConfig) -> Path:
    root = Path(cfg.run_root) / cfg.name
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = root / stamp
    k = 1
    while run.exists():
        run = root / f"{stamp}-{k}"
        k += 1
    try:
        run.mkdir(parents=True)
        probe = run / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"run directory {run}: not writable ({e}); set run_root") from e
    return run


def wandb_mode(cfg: ExperimentConfig) -> str:
    """WANDB_MODE wins; ``auto`` is online only when credentials are configured."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if cfg.logging.mode != "auto":
        return cfg.logging.mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def _wandb_run_id(run_dir: Path) -> str | None:
    """The id of the newest W&B run in a run directory (``wandb/[offline-]run-<time>-<id>``)."""
    runs = sorted(p.name for p in (run_dir / "wandb").glob("*run-*-*") if p.is_dir())
    return runs[-1].rsplit("-", 1)[1] if runs else None


def make_loggers(cfg: ExperimentConfig, run_dir: Path, resume_step: int | None = None) -> list:
    """CSV (always) and W&B loggers. ``resume_step``: the run continues from that step, so
    metrics.csv keeps its earlier rows and the W&B run is continued."""
    import csv

    # metrics.csv sits beside config.yaml; the CSV logger only ever writes its own file.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    csv_logger = CSVLogger(save_dir=str(run_dir), name="", version="")
    metrics = run_dir / "metrics.csv"
    if resume_step is not None and metrics.exists() and rank_zero_only.rank == 0:
        columns, rows = _metrics_before(metrics, resume_step)
        csv_logger.experiment  # creating the writer deletes metrics.csv ...
        # ... and it appends once the file and its columns are back.
        with open(metrics, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        csv_logger.experiment.metrics_keys = sorted(columns)
    loggers: list = [csv_logger]
    mode = wandb_mode(cfg)
    if cfg.logging.wandb and mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        run_id = _wandb_run_id(run_dir) if resume_step is not None else None  # continue its W&B run
        loggers.append(WandbLogger(
            name=f"{cfg.name}-{run_dir.name}", project=cfg.logging.project,
            entity=cfg.logging.entity, group=cfg.logging.group, tags=list(cfg.logging.tags),
            job_type=cfg.logging.job_type, save_dir=str(run_dir), mode=mode,
            config=to_dict(cfg), **({"id": run_id, "resume": "allow"} if run_id else {})))
    return loggers


def _cache_key(cfg: ExperimentConfig, kind: str,
               backbone: PretrainedBackbone | None = None) -> str:
    stat = [(f.name, f.stat().st_size, int(f.stat().st_mtime))
            for f in dataset_files(cfg.data.path)]
    d = cfg.data
    parts = [kind, str(Path(d.path).resolve()), stat, d.probe_fraction, d.val_fraction,
             d.split_seed, list(cfg.eval.tasks), cfg.eval.test_fraction, cfg.eval.c]
    if kind == "untrained":
        model = to_dict(cfg)
        parts += [model["backbone"], model["encoder"], d.max_tokens,
                  d.probe_query, d.anchor, cfg.seed, d.caps]
        if cfg.input.mode != "text":  # text-mode keys stay what they were
            parts.append(model["input"])
        if cfg.eval.representation != "projected":
            parts.append(cfg.eval.representation)
        if backbone is not None:  # the reference is that pre-trained backbone
            parts.append(backbone.key)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference_rows(cfg: ExperimentConfig, probe_dm: ProbeDataModule,
                   source: ProbeSourceAdapter, vocab_size: int,
                   backbone: PretrainedBackbone | None = None) -> dict[str, dict]:
    """The untrained model (the backbone as pre-trained, no contrastive training; causal mask,
    the run's seed) and the bag-of-events baseline, cached in the cache directory."""
    cache = cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    rows = {}
    for kind in ("untrained", "bag_of_events"):
        path = cache / f"{kind}-{_cache_key(cfg, kind, backbone)}.json"
        if path.exists():
            rows[kind] = json.loads(path.read_text())
            continue
        start = time.perf_counter()
        if kind == "untrained":
            L.seed_everything(cfg.seed, verbose=False)
            module_cfg = cfg.module_config()
            module_cfg.mask = MaskConfig(name="causal")  # the decoder as it comes, every recipe alike
            module = ContrastiveMaskingModule(module_cfg, vocab_size=vocab_size)
            load_pretrained(module, backbone)
            per_task = evaluate(module, source, cfg.eval.c,
                                representation=cfg.eval.representation).per_task
        else:
            x = baseline.features(probe_dm.probe.history_table())
            per_task = {}
            for k, task in enumerate(source.task_names):
                y, test = source.labels[:, k], source.test_mask(task)
                per_task[task] = scores(y[test], baseline.fit_predict(x, y, test))
        rows[kind] = {"tasks": per_task, "metrics": summarise(per_task, source.domains),
                      "seconds": time.perf_counter() - start}
        path.write_text(json.dumps(rows[kind], indent=2) + "\n")
    return rows


class SampleTable(L.Callback):
    """``logging.sample_tables: true`` only: at the first step, a W&B Table ``data/samples`` of
    the batch's first ``rows`` pairs as text (user sequence, answer). Off by default, because it
    sends user behaviour to W&B."""

    def __init__(self, tokenizer, rows: int = 8):
        self.tokenizer, self.rows = tokenizer, rows

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != 0 or trainer.global_rank != 0:
            return

        def text(ids, mask):
            return self.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=False)

        data = [[text(batch["user_input_ids"][i], batch["user_attention_mask"][i]),
                 text(batch["answer_input_ids"][i], batch["answer_attention_mask"][i])]
                for i in range(min(self.rows, batch["user_input_ids"].shape[0]))]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table("data/samples", columns=["user", "answer"], data=data, step=0)


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


def probe_datamodule(cfg: ExperimentConfig, template=None) -> ProbeDataModule:
    """The probe users of ``cfg`` as its model reads them (``cfg.input``); ``template``: one
    already validated and tokenised, shared with the training data module."""
    shared = {"validate": False} if template is not None else {}
    dm = ProbeDataModule(cfg.data, tasks=list(cfg.eval.tasks), input=cfg.input,
                         test_fraction=cfg.eval.test_fraction, **shared)
    if template is not None:
        dm.template = template
    dm.setup()
    return dm


def build_datamodules(cfg: ExperimentConfig) -> tuple[ContrastiveDataModule, ProbeDataModule]:
    train_dm = ContrastiveDataModule(cfg.data, input=cfg.input)
    train_dm.setup()
    return train_dm, probe_datamodule(cfg, train_dm.template)


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


class CheckpointError(ValueError):
    """A checkpoint that cannot serve the request (unreadable, or from another model)."""


def checkpoint_state(checkpoint: Path) -> dict:
    """A Lightning checkpoint's dict, loaded with ``weights_only=True`` (maskstudy checkpoints
    hold tensors and plain containers only)."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # every load failure gets the same explanation
        raise CheckpointError(f"checkpoint {checkpoint}: cannot be read as a maskstudy checkpoint "
                         f"({type(e).__name__}: {e})") from e


def check_same_model(cfg: ExperimentConfig, checkpoint: Path, state: dict) -> None:
    """The checkpoint must hold the model the config describes: backbone, mask, encoder."""
    saved = state.get("hyper_parameters", {}).get("config")
    if saved is None:
        raise CheckpointError(f"checkpoint {checkpoint}: no maskstudy module config inside")
    wanted = dataclasses.asdict(cfg.module_config())
    for section in ("backbone", "mask", "encoder", "input"):
        for key, value in wanted[section].items():
            found = saved.get(section, {}).get(key)
            if found != value:
                raise CheckpointError(
                    f"checkpoint {checkpoint}: key '{section}.{key}' is "
                    f"{found!r} in the checkpoint but {value!r} in "
                    f"the config: a checkpoint of another recipe or backbone (resume and "
                    f"evaluate with the run's own config.yaml)")


def _metrics_before(path: Path, step: int) -> tuple[list[str], list[dict]]:
    """Columns and rows of a metrics.csv logged before ``step``: what a run resumed from that
    step keeps (the interrupted run's later steps are repeated by the resumed run)."""
    import csv

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), [r for r in reader if int(r["step"]) < step]


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
    train_dm, probe_dm = build_datamodules(cfg)
    if rank_zero:  # as loaded: a pretrained model's tokenizer with the template's tokens added
        save_tokenizer(train_dm.template.tok, run_dir / "tokenizer.json")
    source = ProbeSourceAdapter(probe_dm, suite_of(list(cfg.eval.tasks)))
    # rank 0 computes and caches the backbone and the references; the other ranks read them
    backbone = (pretrained_backbone(cfg, train_dm.tokenizer_path,
                                    on_step=lambda k, n: progress.update("pretrain", k, n))
                if rank_zero else None)
    _barrier()
    if not rank_zero:
        backbone = pretrained_backbone(cfg, train_dm.tokenizer_path)
    refs = {}
    if cfg.eval.references:
        if rank_zero:
            progress.update("references")
            refs = reference_rows(cfg, probe_dm, source, train_dm.vocab_size, backbone)
        _barrier()
        if not rank_zero:
            refs = reference_rows(cfg, probe_dm, source, train_dm.vocab_size, backbone)
    L.seed_everything(cfg.seed, verbose=False)
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=train_dm.vocab_size,
                                      special_token_ids=train_dm.template.ids.all())
    if resume is None:
        load_pretrained(module, backbone)
    if cfg.trainer.compile:
        module.encoder.backbone.compile()
    probe_cb = LinearProbeEvaluation(
        source, every_n_steps=cfg.eval.every_n_steps, c=cfg.eval.c, out_dir=run_dir,
        extra_results={"name": cfg.name, "description": cfg.description, "mask": cfg.mask.name,
                       "input": cfg.input.label, "seed": cfg.seed, "domains": source.domains,
                       "references": refs}, representation=cfg.eval.representation)
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
        _finish_wandb(exit_code=1)  # the W&B run ends as failed, never left open
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
    results = json.loads((run_dir / "results.json").read_text())
    results["train_seconds"] = train_seconds
    results["learning"] = learning.summary
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _plots(run_dir, results)
    _finish_wandb()
    progress.update("done")
    return RunResult(run_dir, results)


def _finish_wandb(exit_code: int = 0) -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    except ImportError:
        pass


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


def run_config_path(checkpoint: str | Path) -> Path:
    """``config.yaml`` of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``)."""
    config_path = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: the checkpoint's run has no config.yaml")
    return config_path


def load_run(checkpoint: str | Path) -> tuple[ExperimentConfig, ContrastiveMaskingModule, Path]:
    """The module of a checkpoint and the config of its run directory."""
    from .config import load_config

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such file")
    config_path = run_config_path(checkpoint)
    run_dir = config_path.parent
    cfg = load_config(config_path)
    state = checkpoint_state(checkpoint)  # weights_only=True
    check_same_model(cfg, checkpoint, state)
    hp = state["hyper_parameters"]
    module = ContrastiveMaskingModule(hp["config"], vocab_size=hp["vocab_size"],
                                      special_token_ids=hp["special_token_ids"])
    module.load_state_dict(state["state_dict"])
    if (run_dir / "tokenizer.json").exists():
        cfg.data.tokenizer = str(run_dir / "tokenizer.json")
    return cfg, module.eval(), run_dir


def evaluate_checkpoint(checkpoint: str | Path, tasks: list[str] | None = None) -> dict:
    cfg, module, run_dir = load_run(checkpoint)
    if tasks:
        cfg.eval.tasks = tasks
    source = ProbeSourceAdapter(probe_datamodule(cfg), suite_of(list(cfg.eval.tasks)))
    result = evaluate(module, source, cfg.eval.c, representation=cfg.eval.representation)
    return {"checkpoint": str(checkpoint), "metrics": result.metrics, "tasks": result.per_task}


def embed_checkpoint(checkpoint: str | Path, out: str | Path, split: str = "all",
                     data: str | None = None) -> int:
    """Writes ``user_id`` and ``embedding`` (list<float>) for every user of ``split``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg, module, _ = load_run(checkpoint)
    if data:
        cfg.data.path = data
    dm = UserDataModule(cfg.data, input=cfg.input)
    dm.setup()
    ids, embs = [], []
    with torch.no_grad():
        for batch in dm.users_dataloader(split):
            embs.append(module.embed_users(batch).float().numpy())
            ids += batch["user_ids"]
    matrix = np.concatenate(embs) if embs else np.zeros((0, module.config.encoder.projector_out))
    table = pa.table({"user_id": pa.array(ids, pa.string()),
                      "embedding": pa.array(list(matrix), pa.list_(pa.float32()))})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return len(ids)

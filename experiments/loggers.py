"""Where metrics go: ``metrics.csv`` always, W&B when enabled (online only with credentials)."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from .config import ExperimentConfig, to_dict


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


def _metrics_before(path: Path, step: int) -> tuple[list[str], list[dict]]:
    """Columns and rows of a metrics.csv logged before ``step``: what a run resumed from that
    step keeps (the interrupted run's later steps are repeated by the resumed run)."""

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), [r for r in reader if int(r["step"]) < step]


def finish_wandb(exit_code: int = 0) -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    except ImportError:
        pass


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

"""Checkpoints: read safely, matched against the config that wants them, and the run they
belong to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from maskstudy.datamodules.hierarchical import BUILTIN_SLOTS
from maskstudy.lightning_modules.module import ContrastiveMaskingModule

from .config import ExperimentConfig, load_config


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


def run_config_path(checkpoint: str | Path) -> Path:
    """``config.yaml`` of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``)."""
    config_path = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: the checkpoint's run has no config.yaml")
    return config_path


def load_run(checkpoint: str | Path, overrides: list[str] | None = None
             ) -> tuple[ExperimentConfig, ContrastiveMaskingModule, Path]:
    """The module of a checkpoint and the config of its run directory (with ``overrides``,
    checked like any config)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such file")
    config_path = run_config_path(checkpoint)
    run_dir = config_path.parent
    cfg = load_config(config_path, overrides)
    state = checkpoint_state(checkpoint)  # weights_only=True
    check_same_model(cfg, checkpoint, state)
    hp = state["hyper_parameters"]
    module = ContrastiveMaskingModule(hp["config"], vocab_size=hp["vocab_size"],
                                      special_token_ids=hp["special_token_ids"],
                                      modality_slots=hp.get("modality_slots", BUILTIN_SLOTS))
    module.load_state_dict(state["state_dict"])
    module.checkpoint_step = int(state.get("global_step", 0))
    if (run_dir / "tokenizer.json").exists():
        cfg.data.tokenizer = str(run_dir / "tokenizer.json")
    return cfg, module.eval(), run_dir

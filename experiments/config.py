"""Experiment configs: a structured schema, recipe inheritance and dotlist overrides.

``experiments/base.yaml`` holds every default. A recipe names what it ``extends`` (a path
relative to itself) and holds only its differences. Command-line overrides are OmegaConf
dotlists (``trainer.max_steps=50 mask.name=hybrid``). Everything is merged onto the schema
below, so an unknown key, a wrong type or an impossible value fails before training starts,
naming the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskstudy.callbacks.learning_check import LearningConfig
from maskstudy.callbacks.linear_probe import REPRESENTATIONS
from maskstudy.datamodules.datamodules import DataConfig
from maskstudy.datamodules.hierarchical import InputConfig, default_text_encoder
from maskstudy.datamodules.pairs import ANSWER_SELECTIONS
from maskstudy.datamodules.probe import check_task_columns
from maskstudy.datamodules.schema import dataset_files
from maskstudy.datamodules.tasks import resolve_tasks
from maskstudy.lightning_modules.attention import IMPLEMENTATIONS
from maskstudy.lightning_modules.backbone import BackboneConfig
from maskstudy.lightning_modules.encoder import ANSWER_MASKS, POOLINGS
from maskstudy.lightning_modules.masks import MASKS, build_mask
from maskstudy.lightning_modules.pretrain import PretrainConfig
from maskstudy.lightning_modules.module import (
    EncoderConfig, LossConfig, MaskConfig, ModuleConfig, OptimConfig,
)

PRECISIONS = ["auto", *get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)]
EXPERIMENTS_DIR = Path(__file__).resolve().parent
BASE = EXPERIMENTS_DIR / "base.yaml"


@dataclass
class TrainerConfig:
    max_steps: int = 300
    train: bool = True  # false: evaluate the model as pre-trained (the untrained row)
    val_check_interval: int = 100
    limit_val_batches: int = 4
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on a CUDA GPU with bf16, else 32-true
    compile: bool = False  # torch.compile the backbone
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["ggsm"])
    every_n_steps: int = 0  # 0: evaluate at the end of training only
    test_fraction: float = 0.3
    c: float = 1.0  # inverse L2 strength of the probe's logistic regression
    references: bool = True  # untrained-backbone and bag-of-events rows (cached per dataset)
    representation: str = "projected"  # projected | pooled: what eval/* describes (both probed)


@dataclass
class ScheduleConfig:
    """GG-SM pre-warmup and the ramp to full attention (soft masks; the ramp also drives the
    growing window of a ``window`` mask)."""

    prewarmup: bool = False  # gradient-guided weights for the first warmup_steps steps
    variant: str = "paper"  # paper: sigmoid(g); calibrated: 2 sigmoid(g / mean g) - 1
    ema: float | None = None  # importance smoothing over warmup steps; null: last step only
    source: str = "auto"  # where h_j is read: auto | final | last_layer_input
    warmup_steps: int = 0  # T_warm, optimiser steps
    ramp: str = "none"  # none | linear | cosine: frozen weights -> 1 from T_warm to T_total
    total_steps: int = 0  # T_total


@dataclass
class LoggingConfig:
    wandb: bool = True
    project: str = "maskstudy"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    mode: str = "auto"  # auto | online | offline | disabled; WANDB_MODE wins when set
    sample_tables: bool = False  # never send user behaviour text to W&B unless enabled
    future_attention_every: int = 50  # steps between samples of attention on later keys; 0: off
    future_attention_users: int = 4  # sequences of the batch in each sample
    mask_heatmap_every: int = 100  # steps between mask heat maps (masks other than causal/bidirectional/hybrid); 0: off


@dataclass
class ExperimentConfig:
    name: str = "base"
    description: str = ""
    extends: Any = None  # a file or a list of files, relative to the recipe
    seed: int = 0
    run_root: str = "runs"
    cache_dir: str | None = None  # reference rows and pre-trained backbones; None: <run_root>/.cache
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def module_config(self) -> ModuleConfig:
        """A deep copy: the module may change its config without touching the experiment's."""
        return copy.deepcopy(ModuleConfig(backbone=self.backbone, mask=self.mask,
                                          encoder=self.encoder, loss=self.loss,
                                          input=self.input,
                                          optim=self.optim))


def cache_dir(cfg: ExperimentConfig) -> Path:
    """Where computed-once artefacts of a dataset live (reference rows, the pre-trained
    backbone): ``cache_dir``, or ``<run_root>/.cache``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.run_root) / ".cache"


def uses_cuda(accelerator: str) -> bool:
    """Whether a run with this ``trainer.accelerator`` trains on a CUDA GPU."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a CUDA GPU that supports bf16, else 32-true; anything else
    as given."""
    if precision != "auto":
        return precision
    bf16 = uses_cuda(accelerator) and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if bf16 else "32-true"


class ConfigError(ValueError):
    """A config problem, found before training; the message names the file and key."""


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """The recipe and everything it extends, base first. ``extends`` is one file or a list
    (a recipe plus a dataset file, say); each file enters the chain once, where it first
    appears, so two parents that both extend base.yaml do not merge it twice."""
    return [node for _, node in _load_files(path, seen)]


def _load_files(path: Path, seen: tuple[Path, ...]) -> list[tuple[Path, DictConfig]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml errors
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parents = node.get("extends") or []
    if isinstance(parents, str):
        parents = [parents]
    chain: list[tuple[Path, DictConfig]] = []
    for parent in parents:
        for file, loaded in _load_files(path.parent / parent, seen + (path,)):
            if all(file != f for f, _ in chain):
                chain.append((file, loaded))
    return chain + [(path, node)]


def _explain(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    return ConfigError(f"{where}: key '{key}': {msg}" if key else f"{where}: {msg}")


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Recipe file + overrides, merged onto the schema, resolved and checked."""
    path = Path(path)
    schema = OmegaConf.structured(ExperimentConfig)
    merged = schema
    for node in _load_chain(path):
        try:
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as e:
            raise _explain(e, str(path)) from e
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides {bad}: expected key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise _explain(e, "command-line override") from e
    try:
        OmegaConf.resolve(merged)
        config: ExperimentConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, str(path)) from e
    check(config, str(path))
    return config


def recipe_path(recipe: str) -> Path:
    """A recipe file as given, or a recipe name (``ggsm``) as ``experiments/<name>.yaml``."""
    path = Path(recipe)
    return path if path.suffix in (".yaml", ".yml") else EXPERIMENTS_DIR / f"{recipe}.yaml"


def check(cfg: ExperimentConfig, where: str = "config") -> None:
    """Values the schema's types cannot catch; each error names its key."""
    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{where}: key '{key}': {msg}")

    for section in (cfg.input, cfg.learning, cfg.pretrain):
        try:
            section.check()
        except ValueError as e:
            key, _, message = str(e).partition(" ")  # "<section>.<field> <what is wrong>"
            fail(key, message)
    if cfg.input.mode == "hierarchical" and cfg.input.event_encoder == "text":
        if cfg.input.text_encoder is None:
            try:
                default_text_encoder()
            except FileNotFoundError as e:
                fail("input.text_encoder", str(e))
        elif not Path(cfg.input.text_encoder).is_dir():
            fail("input.text_encoder", f"{cfg.input.text_encoder}: no such model directory")
    try:
        mask = build_mask(cfg.mask.name, cfg.mask.options, target=cfg.mask.target,
                          hidden_size=cfg.backbone.hidden_size, layers=cfg.backbone.layers)
    except ValueError as e:
        fail("mask.target" if cfg.mask.target else "mask.options"
             if cfg.mask.name in MASKS else "mask.name", str(e))
    if cfg.mask.inference is not None:
        serving = sorted(n for n, c in MASKS.items() if c.serves_inference())
        if cfg.mask.inference not in serving:
            fail("mask.inference", f"{cfg.mask.inference!r}: the inference mask has no trained "
                                   f"state and no token of its own, so it is one of {serving}")
    if cfg.encoder.pooling not in POOLINGS:
        fail("encoder.pooling", f"unknown pooling {cfg.encoder.pooling!r}; expected one of "
                                f"{list(POOLINGS)}")
    if cfg.encoder.pooling == "global_token" and not mask.global_token:
        fail("encoder.pooling", f"global_token pooling reads a global token, which mask "
                                f"{cfg.mask.name!r} does not insert (global_query does)")
    if cfg.encoder.pooling == "user_token" and not cfg.data.anchor:
        fail("encoder.pooling", "user_token pooling needs the <USER> anchor, but "
                                "data.anchor is false")
    if cfg.encoder.answer_mask not in ANSWER_MASKS:
        fail("encoder.answer_mask", f"expected one of {list(ANSWER_MASKS)}")
    if cfg.trainer.max_steps < 0:
        fail("trainer.max_steps", "expected >= 0 (0: evaluate the untrained model)")
    trains = cfg.trainer.train and cfg.trainer.max_steps > 0
    if trains and cfg.optim.total_steps <= 0:
        fail("optim.total_steps", "must be positive")
    if trains and cfg.optim.warmup_steps >= cfg.optim.total_steps:
        fail("optim.warmup_steps", f"{cfg.optim.warmup_steps} >= optim.total_steps "
                                   f"{cfg.optim.total_steps}: warmup must end before training")
    if cfg.optim.lr <= 0:
        fail("optim.lr", "must be positive")
    if cfg.optim.nonfinite not in ("stop", "skip"):
        fail("optim.nonfinite", "expected stop or skip")
    if cfg.loss.temperature <= 0:
        fail("loss.temperature", "must be positive")
    if cfg.pretrain.steps and cfg.backbone.lora.enabled:
        fail("pretrain.steps", "LoRA adapts a backbone that is already pre-trained; set "
                               "pretrain.steps=0 with backbone.lora.enabled")
    if not 0 < cfg.optim.backbone_lr_scale <= 1:
        fail("optim.backbone_lr_scale", "expected a value in (0, 1]")
    if cfg.data.answer_selection not in ANSWER_SELECTIONS:
        fail("data.answer_selection", f"expected one of {list(ANSWER_SELECTIONS)}")
    if cfg.data.batch_size < 2:
        fail("data.batch_size", "contrastive training needs at least 2 pairs per batch")
    if cfg.trainer.val_check_interval <= 0:
        fail("trainer.val_check_interval", "must be a positive number of steps")
    sched = cfg.schedule
    if sched.prewarmup and not mask.prewarmable:
        fail("schedule", f"the pre-warmup sets a soft mask's weights; mask {cfg.mask.name!r} "
                         f"has none to set (set mask.name: soft, not learnable)")
    if sched.ramp != "none" and not mask.rampable:
        fail("schedule", f"a ramp opens a mask that can be opened; mask {cfg.mask.name!r} "
                         f"cannot (set mask.name: soft, not learnable, or window)")
    if sched.source not in ("auto", "final", "last_layer_input"):
        fail("schedule.source", "expected auto, final or last_layer_input")
    if sched.variant not in ("paper", "calibrated"):
        fail("schedule.variant", "expected paper or calibrated")
    if sched.ramp not in ("none", "linear", "cosine"):
        fail("schedule.ramp", "expected none, linear or cosine")
    if sched.prewarmup and sched.warmup_steps < 1:
        fail("schedule.warmup_steps", "the pre-warmup needs at least one step")
    if sched.ramp != "none" and not 0 <= sched.warmup_steps < sched.total_steps:
        fail("schedule.warmup_steps", f"{sched.warmup_steps} >= schedule.total_steps "
                                      f"{sched.total_steps}: the ramp must have room")
    if sched.ema is not None and not 0 <= sched.ema < 1:
        fail("schedule.ema", "expected a decay in [0, 1) or null")
    if cfg.logging.future_attention_every < 0 or cfg.logging.future_attention_users < 1:
        fail("logging.future_attention_every", "expected steps >= 0 (0: off) and "
                                               "future_attention_users >= 1")
    if cfg.logging.mode not in ("auto", "online", "offline", "disabled"):
        fail("logging.mode", "expected auto, online, offline or disabled")
    if cfg.backbone.attention not in IMPLEMENTATIONS:
        fail("backbone.attention", f"expected one of {list(IMPLEMENTATIONS)}")
    if cfg.backbone.attention == "flex" and trains and not uses_cuda(cfg.trainer.accelerator):
        fail("backbone.attention", "flex trains on a CUDA GPU only (FlexAttention has no "
                                   "backward on a CPU); use sdpa here")
    if cfg.trainer.precision not in PRECISIONS:
        fail("trainer.precision", f"{cfg.trainer.precision!r}: expected one of {PRECISIONS}")
    if cfg.backbone.name_or_path is None and (
            cfg.backbone.hidden_size % cfg.backbone.heads or cfg.backbone.heads % cfg.backbone.kv_heads):
        fail("backbone.hidden_size", "hidden_size must divide by heads and heads by kv_heads")
    if cfg.eval.representation not in REPRESENTATIONS:
        fail("eval.representation", f"expected one of {list(REPRESENTATIONS)}")
    if not 0 < cfg.eval.test_fraction < 1:
        fail("eval.test_fraction", "expected a value in (0, 1)")
    try:
        tasks = resolve_tasks(list(cfg.eval.tasks))
    except ValueError as e:
        fail("eval.tasks", str(e))
    if not Path(cfg.data.path).exists():
        command = "movielens" if "movielens" in cfg.eval.tasks else "synth"
        fail("data.path", f"{cfg.data.path}: no such file or directory (build one with "
                          f"`maskstudy data {command} --out {cfg.data.path}`)")
    try:
        check_task_columns(tasks, dataset_files(cfg.data.path)[0])
    except FileNotFoundError as e:
        fail("data.path", str(e))
    except ValueError as e:
        fail("eval.tasks", str(e))


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ExperimentConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))

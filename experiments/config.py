"""Experiment configs: one schema with every default, config groups, recipes and overrides.

The dataclasses below (and the section dataclasses they hold) own every default; each section
checks its own values (``check()``), and :func:`check` keeps only the rules that span
sections. A config is composed, in this order, from

1. the schema's defaults;
2. one option of each group, ``<group>/<option>.yaml`` (``data``, ``input``, ``mask``): the
   recipe's choices (its ``defaults: {mask: ggsm}``), overridden by ``group=option`` on the
   command line, defaulting to ``data=world input=text mask=causal``;
3. the recipe's own keys (``experiments/<recipe>.yaml``), after those of the recipe it
   ``extends`` (a recipe name or file; an ablation holds only what it changes);
4. ``key=value`` overrides (OmegaConf dotlists: ``trainer.max_steps=50``).

Group options and recipes are looked up in the directories of ``MASKSTUDY_CONFIG_PATH``
(``os.pathsep``-separated; a user's own groups and recipes) before ``experiments/``; an option
may also be a file path (``mask=my/mask.yaml``). The composed config records the choices
(``choices``), and its ``name`` is the recipe's (or the mask option's), prefixed by every data
and input option that differs from the recipe's own (``maskstudy fit ggsm data=movielens``
is ``movielens_ggsm``). An unknown key, a wrong type or an impossible value fails before
training starts, naming the key.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskstudy.callbacks.learning_check import LearningConfig
from maskstudy.callbacks.linear_probe import QUERY_PROTOCOLS, REPRESENTATIONS
from maskstudy.callbacks.mask_schedule import RAMPS, check_prewarmup, check_ramp
from maskstudy.datamodules import ceiling
from maskstudy.datamodules.datamodules import DataConfig
from maskstudy.datamodules.hierarchical import InputConfig, default_text_encoder
from maskstudy.datamodules.schema import dataset_files, dataset_spec
from maskstudy.datamodules.probe import MIN_SCORABLE, SPARSE_TASKS, check_task_columns
from maskstudy.datamodules.tasks import Task, resolve_tasks
from maskstudy.lightning_modules.backbone import BackboneConfig
from maskstudy.lightning_modules.masks import MASKS, build_mask
from maskstudy.lightning_modules.pretrain import PretrainConfig
from maskstudy.lightning_modules.module import (
    EncoderConfig, LossConfig, MaskConfig, ModuleConfig, OptimConfig,
)

PRECISIONS = ["auto", *get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)]
EXPERIMENTS_DIR = Path(__file__).resolve().parent
GROUPS = ("data", "input", "mask")  # composed in this order
DEFAULT_CHOICES = {"data": "world", "input": "text", "mask": "causal"}
CONFIG_PATH_ENV = "MASKSTUDY_CONFIG_PATH"


@dataclass
class TrainerConfig:
    max_steps: int = 300
    train: bool = True  # false: evaluate the model as pre-trained (the untrained row)
    val_check_interval: int = 100  # steps between validation passes and checkpoints
    limit_val_batches: int = 4  # validation batches of each pass (the final check reads all)
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on a CUDA GPU with bf16, else 32-true
    compile: bool = False  # torch.compile the backbone (long GPU runs; the first steps compile)
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True

    def check(self) -> None:
        if self.max_steps < 0:
            raise ValueError("trainer.max_steps expected >= 0 (0: evaluate the untrained model)")
        if self.val_check_interval <= 0:
            raise ValueError("trainer.val_check_interval must be a positive number of steps")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision {self.precision!r}: expected one of "
                             f"{PRECISIONS}")

    @property
    def trains(self) -> bool:
        return self.train and self.max_steps > 0


@dataclass
class EvalConfig:
    # Task names, suites (ggsm, qanchor, movielens, all), task files (*.yaml, looked up in the
    # config directories and their tasks/ folders) and inline declarations ({name, event|...}).
    tasks: list[Any] = field(default_factory=lambda: ["ggsm"])
    # A task with fewer positives or negatives among the probe users cannot be scored: an
    # error before training (sparse_tasks: error) or left out and reported (skip).
    min_class_users: int = 5
    sparse_tasks: str = "error"  # error | skip
    every_n_steps: int = 0  # 0: evaluate at the end of training only
    test_fraction: float = 0.3
    # Inverse L2 strength of the probes' logistic regressions. null: each fit chooses its own
    # by cross-validation on the task's train side (datamodules/logistic.py), the embeddings,
    # the latents and the bag of events alike; a number: that strength for the embeddings'
    # and latents' probes, the bag-of-events rows at baseline.FIXED_C.
    c: float | None = None
    references: bool = True  # untrained backbone, bag of events (all / window); cached
    # On a synthetic world: the ceiling row, each label's probability given the latents the
    # world drew the user from (datamodules/ceiling.py; cached; about 100 s for the default
    # world's 1,801 probe users on 2 cores)
    ceiling: bool = False
    representation: str = "projected"  # projected | pooled: what eval/* describes (both probed)
    # fixed: every task probes one embedding per user (data.probe_query); task: each task probes
    # the embeddings under its own scenario query (Query-as-Anchor), the fixed protocol beside it
    query: str = "fixed"
    # Zero-shot targeting (FIND): every task's targeting sentence through the answer tower,
    # the probe-test users ranked by cosine similarity (AUC, recall@K and precision@K).
    targeting: bool = False

    def check(self) -> None:
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"eval.representation expected one of {list(REPRESENTATIONS)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError("eval.test_fraction expected a value in (0, 1)")
        if self.c is not None and not self.c > 0:
            raise ValueError("eval.c expected a positive number, or null (chosen per fit)")
        if self.min_class_users < MIN_SCORABLE:
            raise ValueError(f"eval.min_class_users expected at least {MIN_SCORABLE} (one user "
                             f"of each class on each side of a task's split)")
        if self.query not in QUERY_PROTOCOLS:
            raise ValueError(f"eval.query expected one of {list(QUERY_PROTOCOLS)}")
        if self.sparse_tasks not in SPARSE_TASKS:
            raise ValueError(f"eval.sparse_tasks expected one of {list(SPARSE_TASKS)}")
        try:
            self.resolved_tasks()
        except ValueError as e:
            raise ValueError(f"eval.tasks {e}") from e

    def resolved_tasks(self) -> list[Task]:
        """The tasks ``tasks`` names, task files read from the config directories."""
        return resolve_tasks(list(self.tasks), tuple(config_dirs()))


@dataclass
class ScheduleConfig:
    """GG-SM pre-warmup and the ramp to full attention (masks that say they are
    ``prewarmable`` / ``rampable``: soft, and window for the growing-window ramp)."""

    prewarmup: bool = False  # gradient-guided weights for the first warmup_steps steps
    variant: str = "paper"  # paper: sigmoid(g); calibrated: 2 sigmoid(g / mean g) - 1
    ema: float | None = None  # importance smoothing over warmup steps; null: last step only
    source: str = "auto"  # where h_j is read: auto | final | last_layer_input
    warmup_steps: int = 0  # T_warm, optimiser steps
    ramp: str = "none"  # none | linear | cosine: frozen weights -> 1 from T_warm to T_total
    total_steps: int | None = None  # T_total; None: trainer.max_steps

    def check(self) -> None:
        if self.ramp != "none" and self.ramp not in RAMPS:
            raise ValueError(f"schedule.ramp {self.ramp!r}: expected none or one of {list(RAMPS)}")
        if self.prewarmup:
            check_prewarmup(self.warmup_steps, self.variant, self.ema, self.source)
        if self.ramp != "none" and self.total_steps is not None:
            check_ramp(self.warmup_steps, self.total_steps, self.ramp)


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
    mask_heatmap_every: int = 100  # steps between heat maps of masks that draw them; 0: off

    def check(self) -> None:
        if self.future_attention_every < 0 or self.future_attention_users < 1:
            raise ValueError("logging.future_attention_every expected steps >= 0 (0: off) "
                             "and future_attention_users >= 1")
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError("logging.mode expected auto, online, offline or disabled")


@dataclass
class TuneConfig:
    """Soft prompt tuning of a frozen encoder for one scenario (``maskstudy tune``, Query-as-
    Anchor): ``prompt_tokens`` vectors after the scenario query, one prototype per class,
    the prototype loss at ``temperature``; each step reads one batch of the task's probe-train
    users (``data.eval_batch_size``)."""

    prompt_tokens: int = 6
    steps: int = 500
    lr: float = 0.01
    temperature: float = 0.1
    seed: int = 0
    eval_every: int = 100  # steps between scorings of the test users (and the last step)

    def check(self) -> None:
        if self.prompt_tokens < 1 or self.steps < 1 or self.eval_every < 1:
            raise ValueError("tune.prompt_tokens, tune.steps and tune.eval_every expected at "
                             "least 1")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("tune.lr and tune.temperature expected positive values")


@dataclass
class FewShotConfig:
    """Few-shot targeting (``maskstudy fewshot``, FIND): from ``shots`` positive and as many
    negative seed users of a task's probe-train split, ``prompt_tokens`` vectors before the
    task's targeting sentence in the answer tower, trained with the triplet loss (``margin``)
    for ``steps``; ``draws`` seed draws per k."""

    shots: list[int] = field(default_factory=lambda: [8, 32, 128])
    prompt_tokens: int = 4
    steps: int = 100
    lr: float = 0.01
    margin: float = 0.2
    draws: int = 3
    seed: int = 0

    def check(self) -> None:
        if not self.shots or min(self.shots) < 1:
            raise ValueError("fewshot.shots expected a list of positive seed counts")
        if self.prompt_tokens < 1 or self.steps < 1 or self.draws < 1:
            raise ValueError("fewshot.prompt_tokens, fewshot.steps and fewshot.draws expected "
                             "at least 1")
        if self.lr <= 0 or self.margin < 0:
            raise ValueError("fewshot.lr expected a positive value and fewshot.margin >= 0")


@dataclass
class ExperimentConfig:
    name: str = "causal"  # the run's name: runs go to <run_root>/<name>/<timestamp>/
    description: str = ""
    choices: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CHOICES))  # group options it was composed from
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
    tune: TuneConfig = field(default_factory=TuneConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)

    def __post_init__(self) -> None:
        # Values that follow others unless set: the data's seed is the run's, a pretrained
        # backbone reads its own tokenizer, and the LR decay and the mask ramp end where
        # training ends.
        if self.data.seed is None:
            self.data.seed = self.seed
        if self.data.tokenizer is None and self.backbone.name_or_path is not None:
            self.data.tokenizer = self.backbone.name_or_path  # a pretrained model's own
        if self.optim.total_steps is None:
            self.optim.total_steps = self.trainer.max_steps
        if self.schedule.total_steps is None:
            self.schedule.total_steps = self.trainer.max_steps

    def sections(self) -> list:
        """Every section that checks itself."""
        return [self.data, self.input, self.backbone, self.pretrain, self.encoder, self.loss,
                self.optim, self.trainer, self.eval, self.schedule, self.learning,
                self.logging, self.tune, self.fewshot]

    def scenario_tasks(self) -> list[Task]:
        """The tasks ``data.scenarios_per_user`` asks about: ``data.scenario_tasks``, or the
        evaluation's tasks when that is empty (none without scenario pairs)."""
        if not self.data.scenarios_per_user:
            return []
        if not self.data.scenario_tasks:
            return self.eval.resolved_tasks()
        return resolve_tasks(list(self.data.scenario_tasks), tuple(config_dirs()))

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


def config_dirs() -> list[Path]:
    """Where recipes and group options are looked up: ``MASKSTUDY_CONFIG_PATH``'s
    directories, then ``experiments/``."""
    extra = [Path(d) for d in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if d]
    return [*extra, EXPERIMENTS_DIR]


def _first(relative: str) -> Path | None:
    """``<dir>/<relative>`` in the first config directory that has it."""
    return next((d / relative for d in config_dirs() if (d / relative).exists()), None)


def _names(folder: str) -> list[str]:
    """The ``*.yaml`` stems of ``<dir>/<folder>`` over every config directory."""
    return sorted({p.stem for d in config_dirs() for p in (d / folder).glob("*.yaml")})


def group_options(group: str) -> list[str]:
    """The options of a config group, over every config directory."""
    return _names(group)


def group_file(group: str, option: str) -> Path:
    """``<dir>/<group>/<option>.yaml`` in the first config directory that has it, or
    ``option`` itself when it is a YAML file path."""
    if option.endswith((".yaml", ".yml")):
        path = Path(option)
        if not path.exists():
            raise ConfigError(f"{group}={option}: no such config file")
        return path
    path = _first(f"{group}/{option}.yaml")
    if path is None:
        raise ConfigError(f"{group}={option}: unknown option of group '{group}'; expected one "
                          f"of {group_options(group)} (or a .yaml file)")
    return path


def recipe_path(recipe: str | Path) -> Path:
    """A recipe file as given, or a recipe name (``ggsm``) as ``<dir>/<name>.yaml`` in the
    first config directory that has it."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        return path
    found = _first(f"{recipe}.yaml")
    if found is None:
        raise ConfigError(f"recipe {recipe!r}: no such recipe; expected one of {_names('.')} "
                          f"or a group choice (mask=..., data=..., input=...)")
    return found


def _load(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml errors
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return node


def _recipe_node(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe's keys merged over those of the recipe it ``extends``, recursively."""
    node = _load(path)
    parent = node.pop("extends", None)
    if parent is None:
        return node
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: key 'extends': expected one recipe (a name or a file)")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: key 'extends': recipes extend each other in a cycle")
    base = _recipe_node(recipe_path(parent), (*seen, path.resolve()))
    try:
        return OmegaConf.merge(base, node)
    except OmegaConfBaseException as e:
        raise _explain(e, str(path)) from e


def _explain(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    return ConfigError(f"{where}: key '{key}': {msg}" if key else f"{where}: {msg}")


def split_overrides(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """(group choices ``group=option``, ``key=value`` overrides)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides {bad}: expected key=value or group=option")
    choices, keys = {}, []
    for item in overrides:
        key, value = item.split("=", 1)
        if key in GROUPS:
            choices[key] = value
        else:
            keys.append(item)
    return choices, keys


def compose(recipe: str | Path | None, overrides: list[str] | None = None) -> DictConfig:
    """The merged (unresolved) config of a recipe, group choices and overrides."""
    path = recipe_path(recipe) if recipe is not None else None
    node = _recipe_node(path) if path is not None else OmegaConf.create({})
    where = str(path) if path is not None else "config"
    own = node.pop("defaults", None) or {}
    if not isinstance(own, (dict, DictConfig)) or set(own) - set(GROUPS):
        raise ConfigError(f"{where}: key 'defaults': expected a mapping of groups "
                          f"{list(GROUPS)} to options")
    cli, keys = split_overrides(list(overrides or []))
    choices = {**DEFAULT_CHOICES, **{k: str(v) for k, v in own.items()}, **cli}
    merged = OmegaConf.structured(ExperimentConfig)
    for group in GROUPS:
        option = group_file(group, choices[group])
        try:
            merged = OmegaConf.merge(merged, _load(option))
        except OmegaConfBaseException as e:
            raise _explain(e, str(option)) from e
    try:
        merged = OmegaConf.merge(merged, node)
        explicit_name = "name" in node
        if keys:
            dotlist = OmegaConf.from_dotlist(keys)
            explicit_name = explicit_name or "name" in dotlist
            merged = OmegaConf.merge(merged, dotlist)
    except OmegaConfBaseException as e:
        raise _explain(e, where if not keys else "command-line override") from e
    if not explicit_name:
        base = path.stem if path is not None else Path(choices["mask"]).stem
        own_choice = {**DEFAULT_CHOICES, **own}
        prefix = [Path(choices[g]).stem for g in ("data", "input") if choices[g] != own_choice[g]]
        merged.name = "_".join([*prefix, base])
    if "choices" not in node:
        merged.choices = {**choices, **({"recipe": path.stem} if path is not None else {})}
    return merged


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Recipe (a file, a name or None) + group choices + overrides, merged onto the schema,
    resolved and checked."""
    merged = compose(recipe, overrides)
    where = str(recipe) if recipe is not None else "config"
    try:
        OmegaConf.resolve(merged)
        config: ExperimentConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, where) from e
    check(config, where)
    return config


def check(cfg: ExperimentConfig, where: str = "config") -> None:
    """Every section's own check, then the rules that span sections; each error names its
    key."""
    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{where}: key '{key}': {msg}")

    for section in cfg.sections():
        try:
            section.check()
        except ValueError as e:
            key, _, message = str(e).partition(" ")  # "<section>.<field> <what is wrong>"
            fail(key, message)
    if cfg.input.mode == "hierarchical" and cfg.data.activity_header:
        fail("data.activity_header", "a header of text segments; hierarchical input reads one "
                                     "token per event (set it false or input=text)")
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
        key = ("mask.target" if cfg.mask.target else
               "mask.options" if cfg.mask.name in MASKS else "mask.name")
        fail(key, str(e))
    if cfg.mask.inference is not None:
        serving = sorted(n for n, c in MASKS.items() if c.serves_inference())
        if cfg.mask.inference not in serving:
            fail("mask.inference", f"{cfg.mask.inference!r}: the inference mask has no trained "
                                   f"state and no token of its own, so it is one of {serving}")
    if cfg.encoder.pooling == "global_token" and not mask.global_token:
        fail("encoder.pooling", f"global_token pooling reads a global token, which mask "
                                f"{cfg.mask.name!r} does not insert (global_query does)")
    if cfg.encoder.pooling == "user_token" and not cfg.data.anchor:
        fail("encoder.pooling", "user_token pooling needs the <USER> anchor, but "
                                "data.anchor is false")
    trains = cfg.trainer.trains
    if trains and cfg.optim.total_steps <= 0:
        fail("optim.total_steps", "must be positive")
    if trains and cfg.optim.warmup_steps >= cfg.optim.total_steps:
        fail("optim.warmup_steps", f"{cfg.optim.warmup_steps} >= optim.total_steps "
                                   f"{cfg.optim.total_steps}: warmup must end before training")
    if cfg.pretrain.steps and cfg.backbone.lora.enabled:
        fail("pretrain.steps", "LoRA adapts a backbone that is already pre-trained; set "
                               "pretrain.steps=0 with backbone.lora.enabled")
    if cfg.schedule.prewarmup and not mask.prewarmable:
        fail("schedule", f"the pre-warmup sets a soft mask's weights; mask {cfg.mask.name!r} "
                         f"has none to set (set mask.name: soft, not learnable)")
    if cfg.schedule.ramp != "none" and not mask.rampable:
        fail("schedule", f"a ramp opens a mask that can be opened; mask {cfg.mask.name!r} "
                         f"cannot (set mask.name: soft, not learnable, or window)")
    if cfg.loss.ntp_weight > 0 and cfg.backbone.attention == "flex":
        fail("loss.ntp_weight", "the joint next-token loss builds a dense bias over prefix and "
                                "answer; use backbone.attention sdpa or eager")
    if cfg.loss.ntp_head is not None and cfg.backbone.name_or_path is not None:
        fail("loss.ntp_head", "a pretrained backbone predicts with its own LM head; leave "
                              "loss.ntp_head null (tied/untied choose the head of a "
                              "config-built backbone)")
    if cfg.backbone.attention == "flex" and trains and not uses_cuda(cfg.trainer.accelerator):
        fail("backbone.attention", "flex trains on a CUDA GPU only (FlexAttention has no "
                                   "backward on a CPU); use sdpa here")
    if not Path(cfg.data.path).exists():
        command = "movielens" if "movielens" in cfg.eval.tasks else "synth"
        fail("data.path", f"{cfg.data.path}: no such file or directory (build one with "
                          f"`maskstudy data {command} --out {cfg.data.path}`)")
    try:
        cfg.data.check_against(dataset_spec(cfg.data.path))
    except FileNotFoundError as e:
        fail("data.path", str(e))
    except ValueError as e:
        message = str(e)
        fail(message.split(" ", 1)[0] if message.startswith("data.") else "data.path", message)
    try:
        check_task_columns(cfg.eval.resolved_tasks(), dataset_files(cfg.data.path)[0])
    except ValueError as e:
        fail("eval.tasks", str(e))
    try:
        check_task_columns(cfg.scenario_tasks(), dataset_files(cfg.data.path)[0])
    except ValueError as e:
        fail("data.scenario_tasks", str(e))
    if cfg.eval.ceiling:
        if not cfg.eval.references:
            fail("eval.ceiling", "the ceiling is a reference row; set eval.references true")
        try:
            ceiling.world_config(cfg.data.path)
            ceiling.check_tasks(cfg.eval.resolved_tasks())
        except (FileNotFoundError, ValueError) as e:
            fail("eval.ceiling", str(e))


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ExperimentConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))

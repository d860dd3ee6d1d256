"""The pre-trained backbone every run of a dataset starts from, computed once and cached.

``pretrained_backbone(cfg)`` returns the backbone after the ``pretrain`` stage
(``lightning_modules/pretrain.py``) on the dataset's training users, as its state dict and
cache key (the untrained reference row is keyed on it too), or ``None`` when
``pretrain.steps`` is 0. It is cached as ``backbone-<key>.pt`` in the cache directory
(``cache_dir``, default ``<run_root>/.cache``; a sweep gives all its points one), the key
covering the dataset files, the tokenizer, the text template, the backbone and the stage's
settings; a file lock makes parallel sweep points wait for one computation instead of
repeating it. The stage always reads text (a hierarchical recipe's backbone is pre-trained
on the same text as a text recipe's), with ``pretrain.seed`` for weights and data order, so
every run seed and every recipe of a dataset share one pre-trained backbone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torch import nn

from maskstudy.datamodules.datamodules import ContrastiveDataModule
from maskstudy.datamodules.hierarchical import InputConfig
from maskstudy.datamodules.schema import dataset_files
from maskstudy.lightning_modules.backbone import build_backbone, hidden_size
from maskstudy.lightning_modules.pretrain import pretrain_backbone

from .config import ExperimentConfig, cache_dir, to_dict
from .locks import file_lock

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PretrainedBackbone:
    key: str  # what the backbone was pre-trained from and how (see cache_key)
    state: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None  # its vocabulary head (None: an older cache)


def text_datamodule(cfg: ExperimentConfig) -> ContrastiveDataModule:
    """The training pairs as text, in the pre-training stage's own order. Scenario pairs stay
    out: they are a recipe's training signal, and recipes share one pre-trained backbone."""
    data = dataclasses.replace(cfg.data, seed=cfg.pretrain.seed, scenarios_per_user=0,
                               batch_size=cfg.pretrain.batch_size)
    dm = ContrastiveDataModule(data, input=InputConfig())
    dm.setup()
    return dm


def cache_key(cfg: ExperimentConfig, tokenizer: Path) -> str:
    d = cfg.data
    files = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in dataset_files(d.path)]
    model = to_dict(cfg)
    # The stage's batch size stands where the contrastive one stood while the stage read
    # data.batch_size, so backbones cached then keep their keys.
    stage = {k: v for k, v in model["pretrain"].items() if k != "batch_size"}
    parts = ["backbone", str(Path(d.path).resolve()), files,
             hashlib.sha256(tokenizer.read_bytes()).hexdigest(), model["backbone"], stage,
             d.max_tokens, d.caps, d.answer_max_tokens, d.answer_selection, d.topics_per_user,
             d.behaviour_query, d.anchor, cfg.pretrain.batch_size, d.probe_fraction,
             d.val_fraction, d.split_seed, *d.opt_in_key_parts()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrained_backbone(cfg: ExperimentConfig, tokenizer: Path | None = None, *,
                        on_step: Callable[[int, int], None] | None = None
                        ) -> PretrainedBackbone | None:
    """The pre-trained backbone (cached), or None without pre-training.
    ``tokenizer``: the run's tokenizer file, when its data module already found it (else the
    text data module is set up to find it). ``on_step(step, steps)``: called after every
    pre-training step, when this call pre-trains."""
    if cfg.pretrain.steps == 0:
        return None
    dm = None
    if tokenizer is None:
        dm = text_datamodule(cfg)
        tokenizer = dm.tokenizer_path
    cache = cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    key = cache_key(cfg, Path(tokenizer))
    path = cache / f"backbone-{key}.pt"
    with file_lock(path):
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return PretrainedBackbone(key, saved["state_dict"], saved.get("head"))
        dm = dm or text_datamodule(cfg)
        start = time.perf_counter()
        log.info("pre-training the backbone: %d next-token steps (cached at %s)",
                 cfg.pretrain.steps, path)
        L.seed_everything(cfg.pretrain.seed, verbose=False)
        backbone = build_backbone(cfg.backbone, dm.vocab_size)
        head = nn.Linear(hidden_size(backbone), dm.vocab_size, bias=False)
        losses = pretrain_backbone(backbone, iter(dm.train_dataloader()), cfg.pretrain,
                                   dm.vocab_size, on_step=on_step, head=head)
        state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
        head_state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
        torch.save({"state_dict": state, "head": head_state, "losses": losses,
                    "seconds": time.perf_counter() - start}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        log.info("pre-training done in %.0fs: next-token loss %.3f -> %.3f",
                 time.perf_counter() - start, losses[0], losses[-1])
        return PretrainedBackbone(key, state, head_state)


def load_pretrained(module, backbone: PretrainedBackbone | None) -> None:
    """Puts the pre-trained weights into a module's backbone and, when the module has an
    untied next-token head (``loss.ntp_weight``), the pre-training stage's head into it: the
    head the backbone learned language with, as a pretrained LLM's own."""
    if backbone is None:
        return
    module.encoder.backbone.load_state_dict(backbone.state)
    head = module.encoder.lm_head
    if head is None:
        return
    if backbone.head is None:
        log.warning("the cached pre-trained backbone %s has no head (an older cache): the "
                    "next-token head starts fresh; delete the cache file to pre-train it "
                    "again with its head", backbone.key)
        return
    head.load_state_dict(backbone.head)

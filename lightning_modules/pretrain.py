"""Next-token pre-training of a backbone on the dataset's own text.

The papers adapt a pretrained LLM; a backbone built from a config knows nothing of language,
so contrastive training from random weights must learn token meanings and the routing of a
whole history to one anchor from one similarity per user per step, and on a CPU budget it
collapses or stays at chance (docs/learning.md). A short causal language-model stage on the
training users' sequences and answers gives it what a pretrained LLM brings: every token of
every sequence is a training signal. The stage uses the causal mask (as LLM pre-training
does), whatever mask the recipe then trains with.

    loss = mean over real tokens t < L of -log softmax(W h_t)[x_{t+1}]

with ``W`` a vocabulary head, kept with the backbone: it becomes the model's own head when the
joint next-token loss (``loss.ntp_weight``, untied head) trains after this stage, as a
pretrained LLM brings its own.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import hidden_size
from .masks import CausalMask
from .module import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """The ``pretrain`` config section."""

    # 0: train the contrastive recipe from the backbone as built or loaded. The amount of
    # pre-training decides how far contrastive training gets (docs/learning.md).
    steps: int = 600
    # Users per step, its own setting: runs that differ only in the contrastive batch
    # (data.batch_size) start from one backbone, as a paper's runs share one LLM.
    batch_size: int = 16
    lr: float = 1.0e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    # Every run seed starts from one pre-trained backbone, as a paper's runs share one LLM.
    seed: int = 0

    def check(self) -> None:
        """Raises ValueError('pretrain.<key> <what is wrong>') for an impossible value."""
        if self.steps < 0:
            raise ValueError("pretrain.steps must be >= 0 (0: no pre-training)")
        if self.batch_size < 1:
            raise ValueError("pretrain.batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("pretrain.lr must be positive")
        if self.steps and not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"pretrain.warmup_steps {self.warmup_steps} must lie in "
                             f"[0, pretrain.steps {self.steps})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("pretrain.min_lr_ratio must lie in [0, 1]")


def next_token_loss(backbone: nn.Module, head: nn.Module, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each real token given the tokens before it (causal mask)."""
    dtype = backbone.get_input_embeddings().weight.dtype
    bias = CausalMask()(attention_mask.long(), attention_mask, dtype)
    hidden = backbone(input_ids=input_ids, attention_mask=bias).last_hidden_state
    logits = head(hidden[:, :-1])
    targets = input_ids[:, 1:].masked_fill(~attention_mask[:, 1:].bool(), -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100)


def pretrain_backbone(backbone: nn.Module, batches: Iterable[dict], cfg: PretrainConfig,
                      vocab_size: int, *, log_every: float = 20.0,
                      on_step: Callable[[int, int], None] | None = None,
                      head: nn.Module | None = None) -> list[float]:
    """Trains ``backbone`` in place for ``cfg.steps`` steps on the user sequences and answers
    of contrastive batches (``user_input_ids``, ``answer_input_ids`` and their masks), the two
    losses averaged per step. Logs the loss at the first and last step and at least every
    ``log_every`` seconds; ``on_step(step, steps)`` follows every step. Returns the loss per
    step. ``head``: the vocabulary head to train with it (None: a new one, discarded)."""
    head = head if head is not None else nn.Linear(hidden_size(backbone), vocab_size, bias=False)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps,
                                              cfg.min_lr_ratio))
    backbone.train()
    losses = []
    start = last_log = time.monotonic()
    for step, batch in enumerate(itertools.islice(batches, cfg.steps)):
        loss = (next_token_loss(backbone, head, batch["user_input_ids"],
                                batch["user_attention_mask"])
                + next_token_loss(backbone, head, batch["answer_input_ids"],
                                  batch["answer_attention_mask"])) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, cfg.steps)
        now = time.monotonic()
        if step == 0 or step == cfg.steps - 1 or now - last_log >= log_every:
            last_log = now
            left = (now - start) / (step + 1) * (cfg.steps - step - 1)
            log.info("pretrain step %d/%d: next-token loss %.3f (%.0fs left)", step + 1,
                     cfg.steps, losses[-1], left)
    if len(losses) < cfg.steps:
        raise ValueError(f"pre-training ran out of batches after {len(losses)} of "
                         f"{cfg.steps} steps")
    return losses

"""GG-SM: the gradient-guided pre-warmup and the schedulers that open attention.

Both act on a ``soft`` mask (``lightning_modules/masks.py``) whose state lives in module
buffers (``weight``, ``frozen``, ``alpha``, ``phase``) plus the pre-warmup's ``importance``,
so a checkpoint carries everything a resumed run needs. Steps are optimiser steps
(``trainer.global_step``), so gradient accumulation is respected.

Paper (GG-SM, PAPERS.md), for future keys j > i, T_warm and T_total in optimiser steps:

    w_j(t) = sigmoid(g_j)                              t < T_warm
    w_j(t) = (1 - alpha_t) sigmoid(g_j*) + alpha_t      T_warm <= t < T_total
    alpha_t = (t - T_warm) / (T_total - T_warm)        (linear; cosine: (1 - cos(pi p)) / 2)
    w_j(t) = 1                                          t >= T_total

g_j is the importance of key position j: the norm of dL/dh_j, h_j the user tower's final
hidden state of token j (``source: final``), averaged over the valid tokens of the batch at that position (``mean``), across
micro-batches of one optimiser step and across DDP ranks (all-reduced, so every rank holds the
same weights), optionally smoothed by an EMA. The weights used at step t come from the
importance measured up to step t - 1; g* is the importance after the last warmup step
(t = T_warm - 1), when the weights freeze. sigmoid of a norm is at least 0.5, so the paper's
warmup never starts causal.

Where h_j is read: with ``user_token`` or ``last`` pooling only the anchor's final state reaches
the loss, so dL/dh_j is exactly zero for every other token and the paper's formula gives
sigmoid(0) everywhere. ``source: auto`` therefore reads the final hidden states under ``mean``
and ``weighted_mean`` pooling (the paper, and the authors' demo pooling) and the input of the
last layer (the deepest states whose gradient reaches the anchor through attention) under
``user_token`` and ``last`` pooling; ``final`` and ``last_layer_input`` force either.

``variant: calibrated`` (a labelled deviation from the paper) uses w_j = 2 sigmoid(g_j / mean g)
- 1 instead: 0 (causal) before any gradient, about 0.46 for a key of average importance, near 1
for the most important keys.

The scheduler-only baseline is the ramp alone on a uniform soft mask started at weight 0:
w = alpha_t from a hard causal start (alpha 0 is a blocked key, never log 0). The paper's text
describes the other scheduler baseline, a growing window: ``WindowScheduler`` on a ``window``
mask lets query i attend up to key i + D(t), D(t) = round(alpha_t * max_reach).
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.distributed as dist

from maskstudy.lightning_modules.hierarchical import slots_of
from maskstudy.lightning_modules.masks import SoftFutureMask, WindowMask, masked_stats

WARMUP, RAMP, OPEN = 0, 1, 2


def ramp_alpha(step: int, start: int, end: int, shape: str = "linear") -> float:
    """alpha_t: 0 before ``start``, 1 from ``end``, linear or cosine in between."""
    if step < start:
        return 0.0
    if step >= end:
        return 1.0
    p = (step - start) / (end - start)
    return p if shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * p))


def importance_weights(importance: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Key weights from importance: sigmoid(g) (paper) or 2 sigmoid(g / mean g) - 1."""
    if variant == "paper":
        return torch.sigmoid(importance)
    if variant == "calibrated":
        # the mean over measured keys (1 before any gradient), computed without a host sync
        seen = importance > 0
        count = seen.sum()
        mean = torch.where(count > 0, (importance * seen).sum() / count.clamp_min(1), 1.0)
        return 2 * torch.sigmoid(importance / mean.clamp_min(1e-12)) - 1
    raise ValueError(f"schedule.variant {variant!r}: expected one of {list(VARIANTS)}")


SOURCES = ("auto", "final", "last_layer_input")
VARIANTS = ("paper", "calibrated")
RAMPS = ("linear", "cosine")


def check_prewarmup(warmup_steps: int, variant: str, ema: float | None, source: str) -> None:
    """Raises ValueError('schedule.<key> <what is wrong>'): the pre-warmup's settings (the
    ``schedule`` config section and the callback share this check)."""
    if source not in SOURCES:
        raise ValueError(f"schedule.source {source!r}: expected one of {list(SOURCES)}")
    if variant not in VARIANTS:
        raise ValueError(f"schedule.variant {variant!r}: expected one of {list(VARIANTS)}")
    if warmup_steps < 1:
        raise ValueError(f"schedule.warmup_steps {warmup_steps}: the pre-warmup needs at "
                         f"least 1 step")
    if ema is not None and not 0 <= ema < 1:
        raise ValueError(f"schedule.ema {ema}: expected a decay in [0, 1) or null")


def check_ramp(start_step: int, end_step: int, shape: str) -> None:
    """Raises ValueError('schedule.<key> <what is wrong>') for a ramp that cannot run."""
    if shape not in RAMPS:
        raise ValueError(f"schedule.ramp {shape!r}: expected none or one of {list(RAMPS)}")
    if not 0 <= start_step < end_step:
        raise ValueError(f"schedule.warmup_steps {start_step} >= schedule.total_steps "
                         f"{end_step}: the ramp must have room (0 <= start < end)")


def _soft_mask(pl_module) -> SoftFutureMask:
    mask = pl_module.mask
    if not isinstance(mask, SoftFutureMask) or mask.learnable:
        raise TypeError(f"mask schedules need a callback-driven soft mask (mask.name: soft), "
                        f"got {type(mask).__name__}")
    return mask


class GradientGuidedPrewarmup(L.Callback):
    """Sets the soft mask's weights from gradient importance for the first ``warmup_steps``
    optimiser steps, then freezes them (``mask.frozen``)."""

    def __init__(self, warmup_steps: int, *, variant: str = "paper", ema: float | None = None,
                 source: str = "auto", out_dir=None):
        check_prewarmup(warmup_steps, variant, ema, source)
        self.warmup_steps = warmup_steps
        self.out_dir = out_dir  # importance.npy/.png at the freeze
        self.source = source
        self.variant = variant
        self.ema = ema
        self._hidden: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None

    def _reads_last_layer_input(self, pl_module) -> bool:
        if self.source == "auto":
            return pl_module.encoder.pooling in ("user_token", "last")
        return self.source == "last_layer_input"

    def setup(self, trainer, pl_module, stage: str) -> None:
        mask = _soft_mask(pl_module)
        if trainer.global_step == 0:  # a fresh run starts from the variant's zero-gradient weights
            mask.set_weights(importance_weights(mask.importance, self.variant), check=False)
            mask.phase.fill_(WARMUP)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        warm = trainer.global_step < self.warmup_steps
        # Capture costs nothing once the warmup is over.
        pl_module.encoder.capture_last_layer_input = warm and self._reads_last_layer_input(pl_module)
        if warm:
            mask = _soft_mask(pl_module)
            self._index = mask.key_index(batch["user_attention_mask"])
            self._valid = batch["user_attention_mask"].bool()

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step < self.warmup_steps:
            hidden = (pl_module.encoder.last_layer_input if self._reads_last_layer_input(pl_module)
                      else pl_module.last_user_hidden)
            hidden.retain_grad()
            self._hidden = hidden

    def on_after_backward(self, trainer, pl_module):
        if self._hidden is None or self._hidden.grad is None:
            return
        mask = _soft_mask(pl_module)
        # (B, L): the user positions (a joint next-token answer may follow them)
        norms = self._hidden.grad.detach().float().norm(dim=-1)[:, :self._index.shape[1]]
        # Padding adds zeros: weighting instead of boolean indexing keeps the host unsynced.
        index, valid = self._index.flatten(), self._valid.flatten().float()
        if self._sums is None:
            self._sums = torch.zeros(mask.positions, device=norms.device)
            self._counts = torch.zeros(mask.positions, device=norms.device)
        self._sums.index_add_(0, index, norms.flatten() * valid)
        self._counts.index_add_(0, index, valid)
        self._hidden = None
        pl_module.encoder.last_layer_input = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step
        if step >= self.warmup_steps or self._sums is None:
            return
        mask = _soft_mask(pl_module)
        sums, counts = self._sums, self._counts
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        seen = counts > 0
        measured = torch.where(seen, sums / counts.clamp_min(1), mask.importance)
        if self.ema is not None and step > 0:
            measured = torch.where(seen, self.ema * mask.importance + (1 - self.ema) * measured,
                                   mask.importance)
        mask.importance.copy_(measured)
        self._sums = self._counts = None
        weights = importance_weights(mask.importance, self.variant)
        mask.set_weights(weights, check=False)  # in [0, 1] by construction; next step on
        if step == self.warmup_steps - 1:
            mask.frozen.copy_(weights.expand_as(mask.frozen))
            mask.phase.fill_(RAMP)
            if self.out_dir is not None and trainer.global_rank == 0:
                self._save_importance(mask, step)
        mean, _, top = masked_stats(mask.importance, seen)
        pl_module.log_dict({"mask/importance_mean": mean, "mask/importance_max": top},
                           on_step=True, batch_size=1)
        _log_histogram(trainer, "mask/grad_norm_hist", sums / counts.clamp_min(1), seen, step)

    def _save_importance(self, mask: SoftFutureMask, step: int) -> None:
        """importance.npy (per key position: importance, frozen weight) and importance.png."""
        import numpy as np
        from pathlib import Path

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        seen = int(torch.nonzero(mask.importance).max()) + 1 if mask.importance.any() else 1
        imp = mask.importance[:seen].cpu().numpy()
        frozen = mask.frozen[0, :seen].cpu().numpy()
        np.save(out / "importance.npy", np.stack([imp, frozen]))
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(imp, lw=0.8, label="importance g_j")
        ax.set(xlabel=f"key position j ({mask.index} index)", ylabel="gradient norm",
               title=f"GG-SM importance at the freeze (step {step})")
        twin = ax.twinx()
        twin.plot(frozen, lw=0.8, color="C1", label="frozen weight w_j")
        twin.set(ylabel="w_j", ylim=(0, 1.05))
        fig.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "importance.png", dpi=90)
        plt.close(fig)


def _log_histogram(trainer, key: str, values: torch.Tensor, where: torch.Tensor,
                   step: int) -> None:
    """A W&B histogram of ``values[where]`` (W&B loggers only; CSV has no histogram type)."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            picked = values[where].float().cpu().numpy()  # the host needs the values anyway
            if picked.size:
                logger.log_metrics({key: wandb.Histogram(picked)}, step=step)


class LinearMaskScheduler(L.Callback):
    """From ``start_step`` to ``end_step`` moves every future-key weight from ``mask.frozen`` to 1:
    w = (1 - alpha_t) w_frozen + alpha_t; fully open from ``end_step``. ``shape``: linear or
    cosine. On a uniform soft mask started at 0 this is the scheduler-only baseline."""

    def __init__(self, start_step: int, end_step: int, *, shape: str = "linear"):
        check_ramp(start_step, end_step, shape)
        self.start_step, self.end_step, self.shape = start_step, end_step, shape

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step < self.start_step:
            return
        mask = _soft_mask(pl_module)
        alpha = ramp_alpha(step, self.start_step, self.end_step, self.shape)
        mask.alpha.fill_(alpha)
        mask.phase.fill_(OPEN if alpha >= 1.0 else RAMP)
        mask.set_weights((1 - alpha) * mask.frozen + alpha, check=False)  # in [0, 1]


class WindowScheduler(L.Callback):
    """The growing-window baseline: query i may attend up to key i + D(t), with
    D(t) = round(alpha_t * max_reach) growing linearly or cosinely from ``start_step`` to
    ``end_step`` (``max_reach`` at least the longest sequence makes the end bidirectional)."""

    def __init__(self, start_step: int, end_step: int, max_reach: int, *, shape: str = "linear"):
        check_ramp(start_step, end_step, shape)
        if max_reach < 1:
            raise ValueError(f"max_reach={max_reach}: expected at least 1")
        self.start_step, self.end_step = start_step, end_step
        self.max_reach, self.shape = max_reach, shape

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        mask = pl_module.mask
        if not isinstance(mask, WindowMask):
            raise TypeError(f"the window scheduler drives a window mask, got {type(mask).__name__}")
        alpha = ramp_alpha(trainer.global_step, self.start_step, self.end_step, self.shape)
        mask.alpha.fill_(alpha)
        mask.phase.fill_(OPEN if alpha >= 1.0 else RAMP if alpha > 0 else WARMUP)
        mask.reach.fill_(round(alpha * self.max_reach))


class MaskMonitor(L.Callback):
    """Logs, every step, what the mask reports of its own state (``mask/*``: for soft masks
    the ramp's ``phase`` and ``alpha`` and ``future_weight_mean``/``_min`` over the batch's
    keys; for a window mask its ``reach``; for the mlp mask w_i over the history queries)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        metrics = pl_module.mask.monitor_metrics(batch, pl_module.encoder)
        if metrics:
            pl_module.log_dict(metrics, on_step=True, batch_size=1)


class FutureAttentionMonitor(L.Callback):
    """Every ``every_n_steps`` optimiser steps, runs the user tower on the batch's first
    ``users`` sequences and logs ``mask/future_attention/layer<k>``: the attention mass a real
    query token puts on later keys, averaged over heads and tokens (0 under a causal mask; how
    much of the opened future a model actually reads)."""

    def __init__(self, every_n_steps: int = 100, users: int = 4):
        if every_n_steps < 1 or users < 1:
            raise ValueError(f"every_n_steps={every_n_steps}, users={users}: expected >= 1")
        self.every_n_steps, self.users = every_n_steps, users

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.every_n_steps:
            return
        k = self.users
        mass = pl_module.encoder.future_attention(batch["user_input_ids"][:k],
                                                  batch["user_attention_mask"][:k],
                                                  batch["user_segment_ids"][:k],
                                                  slots_of(batch, slice(0, k)))
        pl_module.log_dict({f"mask/future_attention/layer{i}": m for i, m in enumerate(mass)},
                           on_step=True, batch_size=1)


class MaskHeatmap(L.Callback):
    """Every ``every_n_steps`` optimiser steps (and at step 0) saves the attention weight
    pattern exp(bias) of the batch's first user sequence, an L x L matrix in [0, 1] (1: full
    attention, 0: blocked), as ``mask_step<t>.npy`` and ``.png`` in ``out_dir`` and logs the
    image to W&B as ``mask/heatmap``."""

    def __init__(self, out_dir, every_n_steps: int = 100):
        from pathlib import Path

        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: expected at least 1")
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step % self.every_n_steps or trainer.global_rank != 0:
            return
        import numpy as np

        encoder = pl_module.encoder
        with torch.no_grad():
            _, att, _, bias = encoder.inputs(
                batch["user_input_ids"][:1], batch["user_attention_mask"][:1],
                batch["user_segment_ids"][:1], encoder.mask,
                global_token=encoder.global_query is not None,
                slots=slots_of(batch, slice(0, 1)), dense=True)  # the matrix, also under flex
        if bias.dim() == 5:  # per layer: show the first layer
            bias = bias[0]
        real = att[0].bool()
        weights = torch.exp(bias[0, 0][real][:, real].float()).cpu().numpy()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.out_dir / f"mask_step{step}.npy", weights)
        path = self.out_dir / f"mask_step{step}.png"
        _save_heatmap(weights, path, f"{pl_module.mask.name} mask, step {step}")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image("mask/heatmap", [str(path)], step=step)


def _save_heatmap(weights, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    image = ax.imshow(weights, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set(xlabel="key j", ylabel="query i", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

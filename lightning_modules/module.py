"""``ContrastiveMaskingModule``: the LightningModule every recipe trains.

It reads ``ContrastiveDataModule`` batches (keys documented in ``datamodules/datamodules.py``),
encodes the user and answer towers through one shared backbone, and minimises the GG-SM
contrastive loss (plus, with ``loss.ntp_weight``, Query-as-Anchor's next-token loss of the
answer read after the anchor in the same user-tower forward; ``ntp.py``). The attention mask
is the one thing recipes swap (``mask.name`` and its options); callbacks may update a mask's
state, which lives in module buffers and therefore in checkpoints.

Logged every optimiser step under ``train/`` and averaged over the validation batches under
``val/``: ``loss``, ``pos_sim``, ``neg_sim``, ``sim_gap`` (pos - neg), ``fn_masked_frac``,
``retrieval_acc`` (user -> own answer among the batch), ``kept_chance`` (the loss at chance
given the negatives the filter kept), ``user_spread`` and ``user_rank`` (spread and RankMe
effective rank of the user embeddings; at validation over all validation users) and the
reference lines ``loss_chance`` (ln(3B - 2)), ``retrieval_chance`` (1/B) and
``spread_isotropic`` (1/sqrt(D)); see ``learning.py``. Training also logs ``train/lr``,
``train/grad_norm`` and ``train/skipped_steps`` (cumulative). With the next-token term, also
``ntp_loss``, its reference ``ntp_chance`` (ln V) and ``objective`` (what is minimised:
``loss + ntp_weight * ntp_loss``); ``loss`` stays the contrastive term, read against
``loss_chance``.

A NaN or inf loss or gradient never reaches the weights (``optim.nonfinite``): ``stop`` raises
:class:`NonFiniteError` naming the step and the tensor (the run ends, its last checkpoint is
the last good one); ``skip`` drops the update (every DDP rank agrees) and counts it in
``train/skipped_steps``: a non-finite loss drops its batch (the optimiser step is taken with
the next batch), a non-finite gradient drops that optimiser step's update.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import lightning as L
import torch
from torch import nn

from maskstudy.datamodules.hierarchical import BUILTIN_SLOTS, InputConfig

from .backbone import BackboneConfig, build_decoder, hidden_size, num_layers
from .encoder import ContrastiveEncoder, check_encoder_options
from .hierarchical import HierarchicalInput, slots_of
from .learning import (
    effective_rank, isotropic_spread, loss_chance, ntp_chance, retrieval_chance, spread,
)
from .loss import LossOutput, contrastive_loss
from .masks import HISTORY, AttentionMask, build_mask
from .ntp import NTP_HEADS, ntp_loss
from .scenarios import NotCacheable, cached_anchor_states, compact_prefix


@dataclass
class MaskConfig:
    name: str = "causal"  # a mask of MASKS (masks.py), or the label of ``target``
    options: dict = field(default_factory=dict)  # passed to the strategy (e.g. soft: init, scope)
    inference: str | None = None  # mask for embed_users(); None: the training mask as it stands
    target: str | None = None  # package.module:Class, an AttentionMask of one's own


@dataclass
class EncoderConfig:
    pooling: str = "user_token"  # user_token | last | mean | weighted_mean | global_token
    projector_inner: int = 512
    projector_out: int = 128
    answer_mask: str = "same"  # same | causal | bidirectional: the answer tower's mask

    def check(self) -> None:
        """Raises ValueError('encoder.<key> <what is wrong>')."""
        check_encoder_options(self.pooling, self.answer_mask)
        if self.projector_inner < 1 or self.projector_out < 1:
            raise ValueError("encoder.projector_out projector sizes must be at least 1")


@dataclass
class LossConfig:
    temperature: float = 0.05
    margin: float = 0.1  # false-negative filter: drop negatives above the positive + margin
    gather: bool = True  # negatives from every DDP rank
    # Query-as-Anchor's joint loss: L_cl + ntp_weight * L_ntp, the answer's next-token loss
    # after the anchor in the user tower's forward (ntp.py). 0: no answer tokens, no logits.
    ntp_weight: float = 0.0
    # The vocabulary head of a config-built backbone: untied (a linear layer of its own, the
    # next-token pre-training's head when there was one) or tied (the input embedding).
    # null: untied, or a pretrained model's own head.
    ntp_head: str | None = None

    def check(self) -> None:
        if self.temperature <= 0:
            raise ValueError("loss.temperature must be positive")
        if self.ntp_weight < 0:
            raise ValueError(f"loss.ntp_weight must be >= 0 (0: no next-token term), "
                             f"got {self.ntp_weight}")
        if self.ntp_head is not None and self.ntp_head not in NTP_HEADS:
            raise ValueError(f"loss.ntp_head {self.ntp_head!r}: expected one of "
                             f"{list(NTP_HEADS)} or null")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    # The backbone's parameters learn at lr * backbone_lr_scale, the parts built for the
    # encoder (projector, learnable masks, input adapters) at lr.
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 30
    total_steps: int | None = None  # end of the cosine decay; None: the trainer's max_steps
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (raise) or skip the step

    def check(self) -> None:
        if self.lr <= 0:
            raise ValueError("optim.lr must be positive")
        if not 0 < self.backbone_lr_scale <= 1:
            raise ValueError("optim.backbone_lr_scale expected a value in (0, 1]")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError("optim.nonfinite expected stop or skip")


@dataclass
class ModuleConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    input: InputConfig = field(default_factory=InputConfig)


class NonFiniteError(FloatingPointError):
    """A NaN or inf loss or gradient with ``optim.nonfinite: stop``."""


def all_ranks_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every DDP rank (one host sync, one all-reduce)."""
    ok = torch.isfinite(value).all().to(torch.int32)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine to ``min_ratio``
    at ``total`` steps (and ``min_ratio`` after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ntp_head(config: ModuleConfig, own_head: nn.Module | None, hidden: int,
             vocab_size: int) -> nn.Module | None:
    """The LM head of the joint next-token loss: a pretrained model's own, an untied linear
    layer (initialised as HF initialises heads; ``experiments.pretraining.load_pretrained``
    puts the pre-training stage's head into it), or None for the tied input embedding."""
    if own_head is not None:
        return own_head
    if config.loss.ntp_head == "tied":
        return None
    head = nn.Linear(hidden, vocab_size, bias=False)
    nn.init.normal_(head.weight, std=0.02)
    return head


def _from_dict(cls, data):
    """Rebuilds nested config dataclasses from ``asdict`` output (checkpoint hparams)."""
    if not isinstance(data, dict):
        return data
    kwargs = {}
    for name, f in cls.__dataclass_fields__.items():
        if name in data:
            value = data[name]
            if isinstance(f.default_factory, type) and hasattr(f.default_factory, "__dataclass_fields__"):
                value = _from_dict(f.default_factory, value)
            kwargs[name] = value
    return cls(**kwargs)


class ContrastiveMaskingModule(L.LightningModule):
    def __init__(self, config: ModuleConfig | dict | None = None, vocab_size: int = 4096,
                 special_token_ids: list[int] | tuple[int, ...] = (),
                 modality_slots: int = BUILTIN_SLOTS):
        super().__init__()
        if isinstance(config, dict):
            config = _from_dict(ModuleConfig, config)
        self.config = config = config or ModuleConfig()
        self.save_hyperparameters({"config": asdict(config), "vocab_size": vocab_size,
                                   "special_token_ids": list(special_token_ids),
                                   "modality_slots": modality_slots})
        ntp = config.loss.ntp_weight > 0
        backbone, own_head = build_decoder(config.backbone, vocab_size, special_token_ids,
                                           lm_head=ntp)
        sizes = {"hidden_size": hidden_size(backbone), "layers": num_layers(backbone)}
        mask = build_mask(config.mask.name, config.mask.options, target=config.mask.target,
                          **sizes)
        input_layer = (HierarchicalInput(config.input, hidden_size(backbone), modality_slots)
                       if config.input.mode == "hierarchical" else None)
        self.encoder = ContrastiveEncoder(
            backbone, mask, hidden_size=hidden_size(backbone), pooling=config.encoder.pooling,
            projector_dims=(config.encoder.projector_inner, config.encoder.projector_out),
            answer_mask=config.encoder.answer_mask, input_layer=input_layer)
        if ntp:  # drawn last: every other weight starts as it would without the NTP term
            self.encoder.lm_head = ntp_head(config, own_head, hidden_size(backbone), vocab_size)
        self.inference_mask = (None if config.mask.inference is None
                               else build_mask(config.mask.inference, **sizes))

    @property
    def mask(self) -> AttentionMask:
        return self.encoder.mask

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user embeddings, answer embeddings, user-tower final hidden states)."""
        users, hidden = self.encoder.encode_users(
            batch["user_input_ids"], batch["user_attention_mask"], batch["user_segment_ids"],
            slots=slots_of(batch))
        answers = self.encoder.encode_answers(batch["answer_input_ids"],
                                              batch["answer_attention_mask"])
        return users, answers, hidden

    def _loss(self, batch: dict) -> LossOutput:
        return self._loss_and_users(batch)[0]

    def _loss_and_users(self, batch: dict, gather: bool | None = None
                        ) -> tuple[LossOutput, torch.Tensor]:
        """(loss output, user embeddings); ``gather``: negatives from every DDP rank (None:
        ``loss.gather``). With ``loss.ntp_weight`` the user tower's forward also reads the
        answer after the anchor, and ``ntp_loss`` holds its next-token loss."""
        cfg = self.config.loss
        ntp = None
        if cfg.ntp_weight > 0:
            answer_ids, lengths = compact_prefix(batch["answer_input_ids"],
                                                 batch["answer_attention_mask"])
            answer_mask = (torch.arange(answer_ids.shape[1], device=answer_ids.device)[None]
                           < lengths[:, None]).long()
            users, hidden, logits = self.encoder.encode_users_and_answer(
                batch["user_input_ids"], batch["user_attention_mask"],
                batch["user_segment_ids"], answer_ids, answer_mask, slots=slots_of(batch))
            answers = self.encoder.encode_answers(batch["answer_input_ids"],
                                                  batch["answer_attention_mask"])
            ntp = ntp_loss(logits, answer_ids, answer_mask)
        else:
            users, answers, hidden = self(batch)
        # callbacks (GG-SM) read its gradient; (B, L [+ 1 global] [+ A answer], H)
        self.last_user_hidden = hidden
        out = contrastive_loss(users, answers, temperature=cfg.temperature, margin=cfg.margin,
                               gather=cfg.gather if gather is None else gather)
        out.ntp_loss = ntp
        return out, users

    def objective(self, out: LossOutput) -> torch.Tensor:
        """What training minimises: the contrastive loss, plus ``ntp_weight`` times the
        next-token loss when there is one."""
        if out.ntp_loss is None:
            return out.loss
        return out.loss + self.config.loss.ntp_weight * out.ntp_loss

    def chance_levels(self, batch_size: int, gather: bool | None = None) -> dict[str, float]:
        """Reference lines: what the learning metrics read for an encoder that learned nothing
        (``batch_size`` local; the loss's negatives span every rank when gathered)."""
        gather = self.config.loss.gather if gather is None else gather
        world = self.trainer.world_size if self._trainer is not None and gather else 1
        return {"loss_chance": loss_chance(batch_size * world),
                "retrieval_chance": retrieval_chance(batch_size),
                "spread_isotropic": isotropic_spread(self.config.encoder.projector_out)}

    def _log(self, stage: str, out: LossOutput, batch_size: int) -> None:
        on_step = stage == "train"
        values = {"loss": out.loss, "pos_sim": out.pos_sim, "neg_sim": out.neg_sim,
                  "sim_gap": out.pos_sim - out.neg_sim, "fn_masked_frac": out.fn_masked_frac,
                  "kept_chance": out.kept_chance, "retrieval_acc": out.retrieval_acc,
                  **self.chance_levels(batch_size)}
        if out.ntp_loss is not None:
            values.update(ntp_loss=out.ntp_loss, objective=self.objective(out),
                          ntp_chance=ntp_chance(self.hparams["vocab_size"]))
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()},
                      on_step=on_step, on_epoch=not on_step, batch_size=batch_size,
                      prog_bar=False, sync_dist=not on_step)

    def _log_spread(self, stage: str, users: torch.Tensor) -> None:
        users = users.detach()
        self.log_dict({f"{stage}/user_spread": spread(users),
                       f"{stage}/user_rank": effective_rank(users)},
                      on_step=stage == "train", on_epoch=stage != "train", batch_size=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        out, users = self._loss_and_users(batch)
        loss = self.objective(out)
        if not all_ranks_finite(loss.detach()):
            self._nonfinite(f"train/{'loss' if out.ntp_loss is None else 'objective'} is "
                            f"{loss.item()}")
            return None  # Lightning skips backward and the optimiser step
        self._log("train", out, batch["user_input_ids"].shape[0])
        self._log_spread("train", users)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True,
                 batch_size=1)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_users: list[torch.Tensor] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out, users = self._loss_and_users(batch)
        self._log("val", out, batch["user_input_ids"].shape[0])
        self._val_users.append(users.detach())

    def on_validation_epoch_end(self) -> None:
        # spread and rank over every validation user of this rank at once, not per batch
        if self._val_users:
            self._log_spread("val", torch.cat(self._val_users))
        self._val_users = []

    skipped_steps = 0
    checkpoint_step = 0  # the optimiser step of the checkpoint it was loaded from (load_run)

    def _nonfinite(self, what: str) -> None:
        step = self.trainer.global_step if self._trainer is not None else 0
        if self.config.optim.nonfinite == "stop":
            raise NonFiniteError(f"step {step}: {what}; stopping (optim.nonfinite: stop). "
                                 f"The last checkpoint holds the last good state; lower "
                                 f"optim.lr or set optim.nonfinite: skip")
        self.skipped_steps += 1

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # cumulative, every step, so dashboards show when skips happened
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, batch_size=1)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Once per optimiser step, after gradient accumulation.
        named = [(n, p) for n, p in self.named_parameters() if p.grad is not None]
        params = [p for _, p in named]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not all_ranks_finite(norm):
            bad = next((n for n, p in named if not torch.isfinite(p.grad).all()), "another rank's")
            self._nonfinite(f"the gradient of {bad} is not finite")
            for p in params:  # AdamW leaves parameters without a gradient untouched
                p.grad = None
            return
        if self.config.optim.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.config.optim.grad_clip, norm)
        self.log("train/grad_norm", norm, on_step=True, batch_size=1)

    def configure_optimizers(self):
        cfg = self.config.optim
        backbone = {id(p) for p in self.encoder.backbone.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for p in self.parameters():
            if p.requires_grad:
                groups.setdefault((id(p) in backbone, p.dim() >= 2), []).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0,
              "lr": cfg.lr * (cfg.backbone_lr_scale if in_backbone else 1.0)}
             for (in_backbone, decays), params in sorted(groups.items())],
            lr=cfg.lr, betas=tuple(cfg.betas))
        total = cfg.total_steps if cfg.total_steps is not None else self.trainer.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, total,
                                                  cfg.min_lr_ratio))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Random state travels too, so a resumed run draws what an uninterrupted one would
        # (dropout, LoRA dropout). Ranks share one seed, so rank 0's state is every rank's.
        checkpoint["maskstudy_rng"] = {"torch": torch.get_rng_state(),
                                       "python": random.getstate()}
        checkpoint["maskstudy_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = int(checkpoint.get("maskstudy_skipped_steps", 0))
        state = checkpoint.get("maskstudy_rng")
        if state is not None:
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])

    @torch.no_grad()
    def measure_learning(self, batches, max_batches: int | None = None) -> dict[str, float]:
        """The learning metrics of the current model over ``batches`` (contrastive batches,
        the first ``max_batches``): batch means of the loss, its kept chance, similarities and
        retrieval accuracy with its chance, and spread and effective rank over all users.
        Negatives stay within each batch of this process (no DDP gather), so ranks holding
        different numbers of batches never wait on each other; a batch smaller than the first
        (the partial last one) is left out, so every measured batch has one chance level."""
        was_training = self.training
        self.eval()
        sums: dict[str, float] = {}
        users, n = [], 0
        try:
            full = None
            for k, batch in enumerate(batches):
                if max_batches is not None and k >= max_batches:
                    break
                size = len(batch["user_input_ids"])
                full = full or size
                if size < full:  # a last, partial batch would have another chance level
                    continue
                batch = {key: v.to(self.device) if torch.is_tensor(v) else v
                         for key, v in batch.items()}
                out, u = self._loss_and_users(batch, gather=False)
                values = {"loss": out.loss, "kept_chance": out.kept_chance,
                          "pos_sim": out.pos_sim, "neg_sim": out.neg_sim,
                          "retrieval_acc": out.retrieval_acc,
                          **self.chance_levels(len(u), gather=False)}
                for key, v in values.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
                users.append(u.float())
                n += 1
        finally:
            self.train(was_training)
        if n == 0:
            raise ValueError("measure_learning: no batch to measure (empty validation split?)")
        out = {key: v / n for key, v in sums.items()}
        out["sim_gap"] = out["pos_sim"] - out["neg_sim"]
        all_users = torch.cat(users)
        out["user_spread"] = float(spread(all_users))
        out["user_rank"] = float(effective_rank(all_users))
        out["users"] = int(len(all_users))
        return out

    @torch.no_grad()
    def embed_users(self, batch: dict) -> torch.Tensor:
        """Frozen user embeddings (B, D) under the inference mask."""
        return self.user_representations(batch)["projected"]

    @torch.no_grad()
    def embed_answers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Frozen answer-tower embeddings (B, D) of right-padded texts (answers, targeting
        sentences)."""
        was_training = self.training
        self.eval()
        try:
            return self.encoder.encode_answers(input_ids.to(self.device),
                                               attention_mask.to(self.device))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def scenario_representations(self, batch: dict,
                                 suffixes: list[list[int]]) -> dict[str, torch.Tensor]:
        """Both frozen representations ((B, N, D) and (B, N, H)) of every user under each of
        N scenario suffixes (query ids, then the anchor) after the batch's history, the
        history computed once into a KV cache under the inference mask
        (``lightning_modules/scenarios.py``). Raises NotCacheable when the mask or the
        pooling does not allow it."""
        if self.encoder.pooling not in ("user_token", "last"):
            raise NotCacheable(f"{self.encoder.pooling} pooling reads more than the anchor")
        was_training = self.training
        self.eval()
        try:
            ids = batch["user_input_ids"].to(self.device)
            history = ((batch["user_segment_ids"] == HISTORY)
                       & batch["user_attention_mask"].bool())
            pooled = cached_anchor_states(
                self.encoder, ids, history.long().to(self.device),
                [torch.tensor(s, device=self.device) for s in suffixes],
                self.inference_mask or self.encoder.mask,
                slots=slots_of(batch, device=self.device))
            projected = self.encoder.project(pooled.flatten(0, 1)).unflatten(0, pooled.shape[:2])
        finally:
            self.train(was_training)
        return {"projected": projected, "pooled": pooled}

    @torch.no_grad()
    def user_representations(self, batch: dict) -> dict[str, torch.Tensor]:
        """Both frozen user representations under the inference mask, from one forward:
        ``projected`` (B, D), the embedding, and ``pooled`` (B, H), the pooled hidden state
        the projector reads."""
        was_training = self.training
        self.eval()
        try:
            pooled, _ = self.encoder.pooled_users(
                batch["user_input_ids"].to(self.device),
                batch["user_attention_mask"].to(self.device),
                batch["user_segment_ids"].to(self.device), mask=self.inference_mask,
                slots=slots_of(batch, device=self.device))
            projected = self.encoder.project(pooled)
        finally:
            self.train(was_training)
        return {"projected": projected, "pooled": pooled}

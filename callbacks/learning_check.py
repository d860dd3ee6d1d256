"""Is the encoder learning? A collapse detector during training and a learning check at the end.

``CollapseDetector`` watches every optimiser step's ``train/user_spread`` and ``train/loss``.
It fires when, for ``patience`` steps in a row, either

    spread < min_spread_ratio * min(1/sqrt(D), spread at step 0)
                                        the users' embeddings lost their spread
    |loss - kept_chance| < loss_tolerance * kept_chance, from step grace_steps on
                                        the loss sits at its chance value

(``kept_chance``: the loss of equal similarities over the negatives the filter kept; an
untrained model sits there too, hence the grace steps; a small model can start with little
spread, hence the floor follows the spread it started with). It then
logs ``learning/collapsed`` = 1 and warns (``action: warn``) or also stops training
(``action: stop``); the run still evaluates, and its learning check fails.

``LearningCheck`` measures, after training, the final model on the validation pairs (the
module's ``measure_learning``; every validation batch unless ``val_batches`` says fewer) and decides whether the run learned:

    passed = not collapsed
             and val retrieval accuracy >= min_retrieval_ratio * chance (1 / B)
             and val loss <= max_loss_ratio * val kept_chance
             and val user spread >= the detector's spread floor

Its ``summary`` goes into ``results.json`` as ``learning``; reports keep the probe AUC of a
run that failed out of every comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop", "off")


@dataclass
class LearningConfig:
    """What counts as learned (one owner for the detector and the final check), and what the
    detector does when it fires (the ``learning`` config section)."""

    collapse: str = "warn"  # warn | stop | off
    min_spread_ratio: float = 0.1  # of the isotropic spread 1/sqrt(D)
    loss_tolerance: float = 0.02  # |loss / kept_chance - 1| below this sits at chance
    patience: int = 10  # consecutive steps before the detector fires
    grace_steps: int = 50  # steps before a loss at its chance value counts
    min_retrieval_ratio: float = 2.0  # final val retrieval accuracy over its chance 1/B
    max_loss_ratio: float = 0.9  # final val loss over its kept chance
    # validation batches the final check measures; None: all of them (a batch of 16 moves
    # retrieval accuracy in steps of 1/16, so a few batches make a noisy verdict)
    val_batches: int | None = None

    def check(self) -> None:
        """Raises ValueError('learning.<key> <what is wrong>') for an impossible value."""
        if self.collapse not in ACTIONS:
            raise ValueError(f"learning.collapse expected one of {list(ACTIONS)}, "
                             f"not {self.collapse!r}")
        for key in ("min_spread_ratio", "loss_tolerance", "min_retrieval_ratio",
                    "max_loss_ratio"):
            if getattr(self, key) < 0:
                raise ValueError(f"learning.{key} must be >= 0")
        if self.patience < 1:
            raise ValueError("learning.patience must be at least 1 step")
        if self.grace_steps < 0:
            raise ValueError("learning.grace_steps must be >= 0")
        if self.val_batches is not None and self.val_batches < 1:
            raise ValueError("learning.val_batches must be at least 1 batch, or null for all")


def spread_floor(thresholds: LearningConfig, isotropic: float,
                 initial: float | None = None) -> float:
    """The spread below which user embeddings count as collapsed."""
    reference = isotropic if initial is None else min(isotropic, initial)
    return thresholds.min_spread_ratio * reference


class CollapseDetector(L.Callback):
    def __init__(self, thresholds: LearningConfig | None = None):
        self.thresholds = thresholds or LearningConfig()
        self.thresholds.check()
        self.action = self.thresholds.collapse
        self.streak = 0
        self.fired_at: int | None = None
        self.reason = ""
        self.initial_spread: float | None = None

    def state_dict(self) -> dict:
        return {"streak": self.streak, "fired_at": self.fired_at, "reason": self.reason,
                "initial_spread": self.initial_spread}

    def load_state_dict(self, state: dict) -> None:
        self.streak = state["streak"]
        self.fired_at = state["fired_at"]
        self.reason = state["reason"]
        self.initial_spread = state["initial_spread"]

    def symptom(self, metrics: dict, step: int) -> str:
        """Why this step looks collapsed ('' when it does not)."""
        t = self.thresholds
        spread, iso = metrics.get("train/user_spread"), metrics.get("train/spread_isotropic")
        if spread is not None and iso is not None:
            if self.initial_spread is None:
                self.initial_spread = float(spread)
            floor = spread_floor(t, float(iso), self.initial_spread)
            if float(spread) < floor:
                return (f"user embeddings lost their spread ({float(spread):.4f} < {floor:.4f}: "
                        f"{t.min_spread_ratio} x the lower of isotropic {float(iso):.4f} and "
                        f"step 0's {self.initial_spread:.4f})")
        loss, chance = metrics.get("train/loss"), metrics.get("train/kept_chance")
        if step >= t.grace_steps and loss is not None and chance is not None and \
                abs(float(loss) / float(chance) - 1) < t.loss_tolerance:
            return f"loss {float(loss):.4f} sits at its chance value {float(chance):.4f}"
        return ""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.action == "off" or self.fired_at is not None:
            return
        symptom = self.symptom(trainer.callback_metrics, trainer.global_step)
        self.streak = self.streak + 1 if symptom else 0
        if self.streak < self.thresholds.patience:
            return
        self.fired_at, self.reason = trainer.global_step, symptom
        pl_module.log("learning/collapsed", 1.0, batch_size=1)
        message = (f"collapse at step {trainer.global_step}: {symptom} for "
                   f"{self.thresholds.patience} steps; its probe AUC is not a result")
        if self.action == "stop":
            log.error("%s; stopping (learning.collapse: stop)", message)
            trainer.should_stop = True
        else:
            log.warning("%s (learning.collapse: warn)", message)

    @property
    def collapsed(self) -> bool:
        return self.fired_at is not None


class LearningCheck(L.Callback):
    """At the end of training (and for an untrained model, when called by hand), measures
    the model on the validation pairs and keeps the verdict in ``summary``."""

    def __init__(self, dataloader, thresholds: LearningConfig | None = None, *,
                 detector: CollapseDetector | None = None, trained: bool = True):
        self.dataloader = dataloader
        self.thresholds = thresholds or LearningConfig()
        self.detector = detector
        self.trained = trained
        self.summary: dict | None = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.summary = self.check(pl_module, step=trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics({f"learning/{k}": float(v) for k, v in self.summary.items()
                                if isinstance(v, (int, float, bool))}, step=trainer.global_step)

    def check(self, module, step: int = 0) -> dict:
        m = module.measure_learning(self.dataloader(), self.thresholds.val_batches)
        t = self.thresholds
        reasons = []
        if self.detector is not None and self.detector.collapsed:
            reasons.append(f"collapse detected at step {self.detector.fired_at}: "
                           f"{self.detector.reason}")
        initial = self.detector.initial_spread if self.detector is not None else None
        floor = spread_floor(t, m["spread_isotropic"], initial)
        if m["user_spread"] < floor:
            reasons.append(f"val user spread {m['user_spread']:.4f} < {floor:.4f} "
                           f"(collapsed)")
        retrieval_ratio = m["retrieval_acc"] / m["retrieval_chance"]
        if retrieval_ratio < t.min_retrieval_ratio:
            reasons.append(f"val retrieval {m['retrieval_acc']:.3f} is {retrieval_ratio:.1f}x "
                           f"chance {m['retrieval_chance']:.3f} (< {t.min_retrieval_ratio}x)")
        loss_ratio = m["loss"] / m["kept_chance"]
        if loss_ratio > t.max_loss_ratio:
            reasons.append(f"val loss {m['loss']:.3f} is {loss_ratio:.2f}x its chance value "
                           f"{m['kept_chance']:.3f} (> {t.max_loss_ratio}x)")
        return {**m, "step": step, "retrieval_ratio": retrieval_ratio, "loss_ratio": loss_ratio,
                "trained": self.trained, "collapsed": bool(self.detector and self.detector.collapsed),
                "passed": not reasons, "reasons": reasons}

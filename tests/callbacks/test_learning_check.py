"""The collapse detector and the learning check on real tiny runs: a configuration built to
collapse (no pre-training, a learning rate far too high for the backbone) trips the detector
and fails the check; the defaults stay quiet."""

from __future__ import annotations

import json

import pytest

from maskstudy.callbacks.learning_check import CollapseDetector, LearningCheck, LearningConfig
from maskstudy.experiments.config import EXPERIMENTS_DIR, ConfigError, load_config
from maskstudy.experiments.data import build_datamodules
from maskstudy.experiments.run import fit
from maskstudy.lightning_modules.module import ContrastiveMaskingModule
from tests.helpers import tiny

COLLAPSING = ["pretrain.steps=0", "optim.lr=0.05", "optim.backbone_lr_scale=1.0",
              "optim.grad_clip=null", "trainer.max_steps=30", "learning.patience=3"]


def run(world, tmp_path, *overrides):
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml",
                      tiny(world, tmp_path, "trainer.val_check_interval=100", *overrides))
    result = fit(cfg)
    return result, json.loads((result.run_dir / "results.json").read_text())["learning"]


def test_detector_fires_on_a_collapsing_configuration(world, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        _, check = run(world, tmp_path, *COLLAPSING)
    assert check["collapsed"] and not check["passed"]
    assert any(r.startswith("collapse detected at step") for r in check["reasons"])
    assert "its probe AUC is not a result" in caplog.text


def test_detector_can_stop_the_run(world, tmp_path):
    result, check = run(world, tmp_path, *COLLAPSING, "learning.collapse=stop")
    assert check["collapsed"] and check["step"] < 30  # stopped early, then evaluated
    assert result.results["step"] == check["step"]


def test_detector_stays_quiet_on_the_defaults(world, tmp_path):
    _, check = run(world, tmp_path, "pretrain.steps=30", "trainer.max_steps=30")
    assert not check["collapsed"]
    assert not any("collapse" in reason for reason in check["reasons"])


def test_detector_reads_spread_and_chance_from_the_logged_metrics():
    detector = CollapseDetector(LearningConfig(grace_steps=50))
    healthy = {"train/user_spread": 0.06, "train/spread_isotropic": 0.088,
               "train/loss": 2.0, "train/kept_chance": 3.8}
    assert detector.symptom(healthy, step=0) == ""
    assert detector.initial_spread == 0.06  # step 0 sets the reference
    assert "lost their spread" in detector.symptom({**healthy, "train/user_spread": 0.001}, 1)
    at_chance = {**healthy, "train/loss": 3.81}
    assert detector.symptom(at_chance, step=10) == ""  # untrained models sit there too
    assert "sits at its chance value" in detector.symptom(at_chance, step=60)
    narrow = CollapseDetector(LearningConfig())  # a small model that starts with little spread
    assert narrow.symptom({**healthy, "train/user_spread": 0.005}, 0) == ""
    assert narrow.symptom({**healthy, "train/user_spread": 0.004}, 1) == ""
    assert "lost their spread" in narrow.symptom({**healthy, "train/user_spread": 0.0004}, 2)


@pytest.mark.parametrize("override, message", [
    ("learning.collapse=maybe", "learning.collapse"),
    ("learning.patience=0", "learning.patience"),
    ("learning.val_batches=0", "learning.val_batches"),
])
def test_bad_learning_settings_fail_before_training(world, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(world, tmp_path, override))


def test_the_check_measures_every_validation_user_unless_told_fewer_batches(world, tmp_path):
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(world, tmp_path))
    train_dm, _ = build_datamodules(cfg)
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=train_dm.vocab_size)
    sizes = [len(b["user_input_ids"]) for b in train_dm.val_dataloader()]
    assert len(sizes) > 1
    every = LearningCheck(train_dm.val_dataloader, LearningConfig()).check(module)
    first = LearningCheck(train_dm.val_dataloader, LearningConfig(val_batches=1)).check(module)
    full = [n for n in sizes if n == sizes[0]]  # a last, partial batch has another chance
    assert every["users"] == sum(full) and first["users"] == sizes[0]
    assert every["retrieval_chance"] == pytest.approx(1 / sizes[0])

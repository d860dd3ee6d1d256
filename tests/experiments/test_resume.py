"""Exact resume: N steps straight equal k steps, an interruption, and a resume for the rest,
for a GG-SM run stopped mid-warmup and mid-ramp (CPU)."""

from __future__ import annotations

import csv
import json
import time

import lightning as L
import pytest
import torch

from maskstudy.experiments.cli import main
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.experiments.checkpoints import CheckpointError
from maskstudy.experiments.run import fit
from tests.helpers import tiny


class Interrupted(RuntimeError):
    pass


class StopAt(L.Callback):
    """Fails the run as it is about to train optimiser step ``step`` (a crash, a preemption)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupted(f"stopped before step {self.step}")


def ggsm(world, run_root, workers: int):
    # warmup steps 0-3, ramp 4-7; checkpoints every 3 steps
    return load_config(EXPERIMENTS_DIR / "ggsm.yaml", tiny(
        world, run_root, "trainer.max_steps=8", "schedule.warmup_steps=4",
        "trainer.val_check_interval=3", f"data.num_workers={workers}",
        "eval.references=false", "logging.wandb=false"))


def losses(run_dir) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice: {sorted(steps)}"
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


def final_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
    runs = {}
    for workers in (0, 2):
        result = fit(ggsm(world, tmp_path_factory.mktemp(f"straight{workers}"), workers))
        runs[workers] = result.run_dir
    return runs


@pytest.mark.parametrize("stop,workers,resume_step,phase", [
    (4, 0, 3, "warmup"), (7, 0, 6, "ramp"), (4, 2, 3, "warmup")])
def test_resume_equals_an_uninterrupted_run(world, tmp_path, straight, stop, workers,
                                            resume_step, phase):
    cfg = ggsm(world, tmp_path, workers)
    with pytest.raises(Interrupted):
        fit(cfg, callbacks=[StopAt(stop)])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == resume_step
    assert int(saved["state_dict"]["encoder.mask.phase"]) == {"warmup": 0, "ramp": 1}[phase]

    result = fit(ggsm(world, tmp_path, workers), resume=checkpoint)
    assert result.run_dir == checkpoint.parent.parent  # the same run directory
    reference = straight[workers]
    a, b = final_state(reference), final_state(result.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # weights and every mask buffer, bit for bit
    assert float(b["encoder.mask.alpha"]) == pytest.approx(0.75)  # (7 - 4) / (8 - 4) at step 7
    assert losses(result.run_dir) == losses(reference)
    ours = json.loads((result.run_dir / "results.json").read_text())
    theirs = json.loads((reference / "results.json").read_text())
    assert ours["metrics"] == theirs["metrics"] and ours["step"] == theirs["step"] == 8


def test_resume_refuses_a_checkpoint_of_another_model(world, tmp_path, straight, capsys):
    checkpoint = straight[0] / "checkpoints" / "last.ckpt"
    cfg = ggsm(world, tmp_path, 0)
    cfg.mask.name = "hybrid"
    with pytest.raises(CheckpointError, match=r"key 'mask.name' is 'soft' in the checkpoint "
                                              r"but 'hybrid' in the config"):
        fit(cfg, resume=checkpoint)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    cfg.mask.name = "soft"
    with pytest.raises(CheckpointError, match="cannot be read"):
        fit(cfg, resume=bad)
    assert main(["resume", str(tmp_path / "missing" / "checkpoints" / "last.ckpt")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_cli_resume_continues_the_run_and_its_wandb_run(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(EXPERIMENTS_DIR / "ggsm.yaml", tiny(
        world, tmp_path, "trainer.max_steps=6", "schedule.warmup_steps=3",
        "eval.references=false"))
    with pytest.raises(Interrupted):
        fit(cfg, callbacks=[StopAt(3)])
    # fit() ended the failed W&B run itself (otherwise the resumed run would reuse it)
    time.sleep(1.1)  # W&B names run directories by the second
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    assert main(["resume", str(checkpoint)]) == 0
    assert "(resumed): eval/avg_auc" in capsys.readouterr().out
    run_dir = checkpoint.parent.parent
    assert sorted(losses(run_dir)) == list(range(6))
    ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1

"""Fault injection: non-finite losses and gradients, out-of-memory, checkpoints of another
model, user text and W&B, and distributed training on 2 CPU processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch

from maskstudy.experiments.cli import main
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.experiments.run import OutOfMemory, fit
from maskstudy.lightning_modules.module import NonFiniteError
from tests.helpers import tiny
from tests.wandb_records import wait_until_closed


def config(world, tmp_path, recipe="causal", *extra):
    return load_config(EXPERIMENTS_DIR / f"{recipe}.yaml", tiny(
        world, tmp_path, "trainer.max_steps=5", "eval.references=false", "logging.wandb=false",
        *extra))


class NaNLossAt(L.Callback):
    """Makes the user embeddings NaN in the forward of optimiser step ``step``."""

    def __init__(self, step: int):
        self.step, self.handle = step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.handle = pl_module.encoder.projector.register_forward_hook(
                lambda module, args, out: out * float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class InfGradAt(L.Callback):
    """Puts an inf into one gradient after the backward of optimiser step ``step``."""

    name = "encoder.projector.0.weight"

    def __init__(self, step: int):
        self.step = step
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            dict(pl_module.named_parameters())[self.name].grad[0, 0] = float("inf")
            self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step + 1:
            self.after = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def run_dir_of(tmp_path, recipe="causal"):
    (run,) = (tmp_path / recipe).iterdir()
    return run


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(world, tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 3: train/loss is nan"):
        fit(config(world, tmp_path), callbacks=[NaNLossAt(3)])
    run = run_dir_of(tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2  # the checkpoint before the fault
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (run / "results.json").exists()


def test_nan_loss_is_skipped_when_configured(world, tmp_path):
    result = fit(config(world, tmp_path, "causal", "optim.nonfinite=skip"),
                 callbacks=[NaNLossAt(2)])
    logged = rows(result.run_dir)
    skipped = [(int(r["step"]), float(r["train/skipped_steps"])) for r in logged
               if r.get("train/skipped_steps")]
    # cumulative; the dropped batch is not an optimiser step: step 2 is taken with the next
    assert skipped == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (4, 1.0)]
    losses = [(int(r["step"]), float(r["train/loss"])) for r in logged if r.get("train/loss")]
    assert [s for s, _ in losses] == [0, 1, 2, 3, 4]  # the dropped batch logs no loss
    assert all(loss == loss for _, loss in losses)  # all finite
    state = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert state["maskstudy_skipped_steps"] == 1


def test_inf_gradient_stops_naming_the_parameter(world, tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 1: the gradient of "
                                             r"encoder.projector.0.weight is not finite"):
        fit(config(world, tmp_path), callbacks=[InfGradAt(1)])


def test_inf_gradient_skip_leaves_the_weights_untouched(world, tmp_path):
    probe = InfGradAt(2)
    result = fit(config(world, tmp_path, "causal", "optim.nonfinite=skip"), callbacks=[probe])
    assert probe.before and probe.after
    for name, value in probe.before.items():
        assert torch.equal(value, probe.after[name]), name  # no update at step 2
    skipped = {int(r["step"]): float(r["train/skipped_steps"]) for r in rows(result.run_dir)
               if r.get("train/skipped_steps")}
    assert skipped == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}


class OOMAt(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_names_the_settings_to_change(world, tmp_path):
    with pytest.raises(OutOfMemory, match=r"out of memory at optimiser step 1 "
                                          r"\(data.batch_size=4, data.max_tokens=96") as e:
        fit(config(world, tmp_path), callbacks=[OOMAt()])
    text = str(e.value)
    for hint in ("trainer.accumulate_grad_batches", "backbone.gradient_checkpointing=true",
                 "bf16-mixed", "Tried to allocate 20.00 GiB"):
        assert hint in text


def test_checkpoint_of_another_model_is_refused(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ggsm = fit(config(world, tmp_path / "a", "ggsm")).run_dir
    causal = fit(config(world, tmp_path / "b", "causal")).run_dir
    foreign = causal / "checkpoints" / "foreign.ckpt"
    shutil.copy(ggsm / "checkpoints" / "last.ckpt", foreign)
    assert main(["eval", str(foreign)]) == 2
    assert "key 'mask.name' is 'soft' in the checkpoint but 'causal'" in capsys.readouterr().err
    assert main(["eval", str(causal / "checkpoints" / "last.ckpt"), "--tasks", "login"]) == 0


@pytest.mark.parametrize("enabled", [False, True])
def test_user_text_reaches_wandb_only_with_sample_tables(world, tmp_path, monkeypatch, enabled):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(
        world, tmp_path, "trainer.max_steps=2", "eval.references=false",
        f"logging.sample_tables={str(enabled).lower()}"))
    (wandb_file,) = fit(cfg).run_dir.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_closed(wandb_file)
    tables = list(wandb_file.parent.rglob("data/samples*.table.json"))
    assert bool(tables) == enabled
    if enabled:
        rows_ = json.loads(tables[0].read_text())["data"]
        assert "Instruction:" in rows_[0][0]  # the user sequence as text
    # the template's words never appear in the run's files unless enabled
    blobs = b"".join(p.read_bytes() for p in wandb_file.parent.rglob("*") if p.is_file())
    assert (b"Instruction:" in blobs) == enabled


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, lightning as L
    from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
    from maskstudy.experiments.run import fit

    out = sys.argv[1]

    class Dump(L.Callback):
        def on_train_end(self, trainer, pl_module):
            m = pl_module.mask
            torch.save({"importance": m.importance, "frozen": m.frozen, "weight": m.weight,
                        "params": [p.detach() for p in pl_module.parameters()]},
                       f"{out}/rank{trainer.global_rank}.pt")

    fit(load_config(EXPERIMENTS_DIR / "ggsm.yaml", sys.argv[2:]), callbacks=[Dump()])
""")


def test_ddp_two_cpu_processes_agree_and_write_once(world, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    overrides = tiny(world, tmp_path / "runs", "trainer.max_steps=4", "schedule.warmup_steps=2",
                     "trainer.devices=2", "trainer.strategy=ddp", "eval.references=true",
                     "logging.wandb=false")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    proc = subprocess.run([*torchrun, str(script), str(tmp_path), *overrides], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["importance"] > 0).any()  # the pre-warmup measured something ...
    for key in ("importance", "frozen", "weight"):
        assert torch.equal(r0[key], r1[key]), key  # ... and every rank holds the same mask
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # DDP kept the replicas identical
    runs = list((tmp_path / "runs" / "ggsm").iterdir())
    assert len(runs) == 1  # one run directory for both ranks
    run = runs[0]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    res = json.loads((run / "results.json").read_text())
    assert res["step"] == 4 and set(res["references"]) == {
        "untrained", "bag_of_events", "bag_of_events_window"}
    steps = [int(r["step"]) for r in rows(run) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]  # each step logged once

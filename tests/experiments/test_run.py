"""Run directories, W&B mode selection and the study table."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maskstudy.experiments import rundir
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.experiments.loggers import wandb_mode
from maskstudy.experiments.rundir import make_run_dir
from maskstudy.experiments.study import markdown_table


@pytest.fixture
def cfg(world, tmp_path):
    return load_config(EXPERIMENTS_DIR / "causal.yaml", [f"data.path={world}",
                                                         f"run_root={tmp_path}"])


def test_wandb_mode(cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode(cfg) == "offline"  # no credentials
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password x\n")
    assert wandb_mode(cfg) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(cfg) == "disabled"  # the environment wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode(cfg) == "offline"
    monkeypatch.delenv("WANDB_MODE")
    cfg.logging.mode = "offline"
    assert wandb_mode(cfg) == "offline"


def test_run_dirs_are_unique(cfg):
    a, b = make_run_dir(cfg), make_run_dir(cfg)
    assert a != b and a.parent == b.parent and a.parent.name == "causal"


def test_runs_started_in_one_second_claim_distinct_dirs(cfg, monkeypatch):
    """Parallel launches (e.g. `make transfer-study`'s seeds) share run_root and name: all
    reach their first claim of the same timestamp together, and each still gets its own."""
    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0)

    n, together, first = 4, threading.Barrier(4, timeout=10), threading.local()
    mkdir = Path.mkdir

    def mkdir_together(self, *args, **kwargs):
        if self.name.startswith("20260101") and not getattr(first, "done", False):
            first.done = True
            together.wait()
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(rundir.dt, "datetime", Frozen)
    monkeypatch.setattr(Path, "mkdir", mkdir_together)
    with ThreadPoolExecutor(max_workers=n) as pool:
        dirs = list(pool.map(lambda _: make_run_dir(cfg), range(n)))
    assert sorted(d.name for d in dirs) == [
        "20260101-120000", *(f"20260101-120000-{k}" for k in range(1, n))]


def test_unwritable_run_root_is_a_file(cfg, tmp_path):
    (tmp_path / "file").write_text("")
    cfg.run_root = str(tmp_path / "file")
    with pytest.raises(OSError, match="not writable"):
        make_run_dir(cfg)


def test_markdown_table_marks_the_best():
    def result(name, aucs):
        metrics = {f"eval/{t}/auc": a for t, a in aucs.items()}
        metrics |= {"eval/user_prediction/avg_auc": sum(aucs.values()) / 2,
                    "eval/avg_auc": sum(aucs.values()) / 2, "eval/avg_ks": 0.1}
        return {"name": name, "metrics": metrics, "tasks": {t: {} for t in aucs}}
    first = result("causal", {"concert": 0.6, "login": 0.8})
    first["references"] = {"untrained": {"metrics": result("u", {"concert": 0.5, "login": 0.7})["metrics"]}}
    table = markdown_table([first, result("hybrid", {"concert": 0.65, "login": 0.75})])
    lines = table.splitlines()
    assert lines[0] == "| recipe | concert | login | user_prediction avg | avg AUC | avg KS |"
    assert lines[2].startswith("| untrained backbone | 0.5000 | 0.7000")
    assert "| causal | 0.6000 | **0.8000** |" in table
    assert "| hybrid | **0.6500** | 0.7500 |" in table

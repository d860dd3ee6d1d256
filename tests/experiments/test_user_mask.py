"""A mask of one's own, named in a config as ``mask.target: module:Class``: it trains, logs
what it says of itself, checkpoints, resumes and shows in the report, without touching the
package."""

from __future__ import annotations

import csv
import json
import textwrap

import pytest
import torch

from maskstudy.experiments.cli import main
from maskstudy.experiments.config import EXPERIMENTS_DIR, ConfigError, load_config
from maskstudy.experiments.run import fit
from tests.experiments.test_resume import Interrupted, StopAt
from tests.helpers import tiny

USER_MODULE = '''
import torch
from torch import nn

from maskstudy.lightning_modules.masks import AttentionMask, open_future


class OneLookAhead(AttentionMask):
    """Causal plus one learned weight w on every future key (bias log w)."""

    name = "one_look_ahead"
    stateful = True
    heatmap = True

    def __init__(self, init: float = 0.5):
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(float(init)).logit())

    def forward(self, segment_ids, attention_mask, dtype=torch.float32):
        bias = nn.functional.logsigmoid(self.logit)
        return open_future(bias, segment_ids, attention_mask, "all", dtype)[:, None]

    def monitor_metrics(self, batch, encoder):
        return {"mask/look_ahead": torch.sigmoid(self.logit.detach())}
'''


@pytest.fixture
def user_mask(tmp_path, monkeypatch):
    (tmp_path / "my_masks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return ["mask.name=one_look_ahead", "mask.target=my_masks:OneLookAhead",
            "mask.options.init=0.3"]


def test_a_mask_from_a_user_module_trains_resumes_and_reports(user_mask, world, tmp_path):
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(
        world, tmp_path / "runs", *user_mask, "name=look_ahead", "trainer.max_steps=6",
        "trainer.val_check_interval=3", "logging.mask_heatmap_every=3"))
    with pytest.raises(Interrupted):
        fit(cfg, callbacks=[StopAt(4)])
    (run_dir,) = (tmp_path / "runs" / "look_ahead").iterdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    result = fit(cfg, resume=ckpt)
    assert result.run_dir == run_dir and result.results["step"] == 6

    state = torch.load(ckpt, weights_only=True)["state_dict"]
    logit = state["encoder.mask.logit"]
    assert float(torch.sigmoid(logit)) != pytest.approx(0.3)  # the mask's weight trained
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask/look_ahead")]
    assert [int(r["step"]) for r in rows][-1] == 5  # the monitor asked the mask each step
    assert (run_dir / "plots" / "mask_step3.npy").exists()
    assert json.loads((run_dir / "results.json").read_text())["mask"] == "one_look_ahead"

    assert main(["eval", str(ckpt), "--tasks", "concert", "--json",
                 str(tmp_path / "e.json")]) == 0  # the checkpoint rebuilds the user's mask
    assert main(["report", str(tmp_path / "runs")]) == 0
    report = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "look_ahead" in report


def test_a_bad_target_fails_before_training(world, tmp_path):
    for target, message in [("my_masks", "expected package.module:Class"),
                            ("no_such_module:Mask", "No module named 'no_such_module'"),
                            ("torch.nn:Linear", "not an AttentionMask subclass")]:
        with pytest.raises(ConfigError, match=f"key 'mask.target'.*{message}"):
            load_config(EXPERIMENTS_DIR / "causal.yaml",
                        tiny(world, tmp_path, f"mask.target={target}"))

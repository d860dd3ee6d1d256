"""GG-SM pre-warmup and the ramps: the formulas, on real short runs."""

from __future__ import annotations

import csv

import pytest
import torch

from maskstudy.callbacks.mask_schedule import (
    GradientGuidedPrewarmup, LinearMaskScheduler, importance_weights, ramp_alpha,
)
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.experiments.run import fit
from maskstudy.lightning_modules.module import ContrastiveMaskingModule
from tests.helpers import tiny


def test_ramp_alpha():
    assert [ramp_alpha(t, 2, 6) for t in range(8)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1]
    assert ramp_alpha(4, 2, 6, "cosine") == pytest.approx(0.5)
    assert ramp_alpha(3, 2, 6, "cosine") == pytest.approx((1 - 2 ** -0.5) / 2)


def test_importance_weights():
    g = torch.tensor([0.0, 1.0, 3.0])
    torch.testing.assert_close(importance_weights(g, "paper"), torch.sigmoid(g))
    assert (importance_weights(g, "paper") >= 0.5).all()  # the paper never starts causal
    cal = importance_weights(g, "calibrated")
    assert cal[0] == 0 and 0 < cal[1] < cal[2] < 1  # calibrated: unseen keys stay causal
    assert (importance_weights(torch.zeros(4), "calibrated") == 0).all()
    with pytest.raises(ValueError, match="variant"):
        importance_weights(g, "sigmoid")


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f)]


def series(rows, key):
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def run(world, tmp_path, recipe, *extra):
    cfg = load_config(EXPERIMENTS_DIR / f"{recipe}.yaml",
                      tiny(world, tmp_path, "trainer.max_steps=8", "eval.references=false",
                           "logging.wandb=false", *extra))
    result = fit(cfg)
    module = ContrastiveMaskingModule.load_from_checkpoint(
        result.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return metrics(result.run_dir), module.mask


@pytest.mark.parametrize("source,pooling", [("auto", "user_token"), ("final", "mean")])
def test_the_prewarmup_measures_user_positions_with_a_joint_answer_after_them(world, tmp_path,
                                                                              source, pooling):
    """With loss.ntp_weight the user tower also reads the answer; the importance is still the
    gradient at the user positions (the last layer's input, or the final states that mean
    pooling reads everywhere)."""
    _, mask = run(world, tmp_path, "ggsm", "schedule.warmup_steps=3", "loss.ntp_weight=1",
                  f"schedule.source={source}", f"encoder.pooling={pooling}",
                  "trainer.max_steps=4")
    assert (mask.importance[:50] > 0).all()


def test_ggsm_alpha_and_weights_follow_the_formula(world, tmp_path):
    rows, mask = run(world, tmp_path, "ggsm", "schedule.warmup_steps=3")
    alpha = series(rows, "mask/alpha")
    assert [alpha[t] for t in range(8)] == pytest.approx([0, 0, 0, 0, 0.2, 0.4, 0.6, 0.8])
    phase = series(rows, "mask/phase")
    assert [phase[t] for t in range(8)] == [0, 0, 0, 1, 1, 1, 1, 1]
    mean_w = series(rows, "mask/future_weight_mean")
    assert mean_w[0] == pytest.approx(0.5)  # sigmoid(0): the paper's warmup starts at 0.5
    assert all(0.5 <= mean_w[t] < 1 for t in range(3))
    assert all(mean_w[t] < mean_w[t + 1] for t in range(3, 7))  # the ramp opens attention
    # frozen = sigmoid(importance after the last warmup step); weights = (1 - a) frozen + a
    torch.testing.assert_close(mask.frozen[0], torch.sigmoid(mask.importance))
    assert (mask.importance[:50] > 0).all()  # measured where tokens were
    torch.testing.assert_close(mask.weight, 0.2 * mask.frozen + 0.8)
    assert series(rows, "mask/importance_mean")  # logged during warmup
    # the opened future is read: attention mass on later keys at step 0 (weights 0.5)
    for layer in (0, 1):
        assert 0 < series(rows, f"mask/future_attention/layer{layer}")[0] < 1
    # the importance at the freeze, as saved for reviewers
    import numpy as np
    saved = np.load(next(tmp_path.rglob("plots/importance.npy")))
    n = saved.shape[1]
    np.testing.assert_allclose(saved[0], mask.importance[:n].numpy())
    np.testing.assert_allclose(saved[1], mask.frozen[0, :n].numpy())
    assert (mask.importance[n:] == 0).all() and next(tmp_path.rglob("plots/importance.png"))


def test_warmup_counts_optimiser_steps(world, tmp_path):
    rows, mask = run(world, tmp_path, "ggsm", "schedule.warmup_steps=2",
                     "trainer.accumulate_grad_batches=2", "trainer.max_steps=4",
                     "trainer.val_check_interval=4")
    phase = series(rows, "mask/phase")
    assert [phase[t] for t in range(4)] == [0, 0, 1, 1]
    assert series(rows, "mask/alpha")[3] == pytest.approx(0.5)


def test_scheduler_only_starts_hard_causal(world, tmp_path):
    rows, mask = run(world, tmp_path, "scheduler", "schedule.warmup_steps=0")
    alpha = series(rows, "mask/alpha")
    assert [alpha[t] for t in range(8)] == pytest.approx([t / 8 for t in range(8)])
    assert series(rows, "mask/future_weight_min")[0] == 0  # w = 0: a blocked key, not log 0
    assert mask.weight.shape == (1, 1)


def test_hybrid_soft_keeps_its_frozen_weights(world, tmp_path):
    rows, mask = run(world, tmp_path, "hybrid_soft", "schedule.warmup_steps=3")
    assert set(series(rows, "mask/alpha").values()) == {0.0}
    torch.testing.assert_close(mask.weight, mask.frozen)
    torch.testing.assert_close(mask.frozen[0], torch.sigmoid(mask.importance))


def test_calibrated_starts_causal(world, tmp_path):
    rows, mask = run(world, tmp_path, "ggsm_calibrated", "schedule.warmup_steps=3")
    assert series(rows, "mask/future_weight_mean")[0] == 0
    assert 0 < series(rows, "mask/future_weight_mean")[2] < 1


def test_bad_schedules():
    with pytest.raises(ValueError, match="at least 1"):
        GradientGuidedPrewarmup(0)
    with pytest.raises(ValueError, match="0 <= start < end"):
        LinearMaskScheduler(5, 5)
    with pytest.raises(ValueError, match="schedule.ramp .step.: expected none or one of"):
        LinearMaskScheduler(0, 5, shape="step")


def test_schedule_config_errors(world):
    with pytest.raises(ValueError, match="key 'schedule': a ramp opens a mask that can be "
                                         "opened; mask 'causal' cannot"):
        load_config(EXPERIMENTS_DIR / "causal.yaml", [f"data.path={world}", "schedule.ramp=linear"])
    with pytest.raises(ValueError, match="key 'schedule': the pre-warmup sets a soft mask's "
                                         "weights; mask 'soft' has none"):
        load_config(EXPERIMENTS_DIR / "ggsm.yaml",
                    [f"data.path={world}", "mask.options.learnable=true"])
    with pytest.raises(ValueError, match="key 'schedule.warmup_steps'"):
        load_config(EXPERIMENTS_DIR / "ggsm.yaml", [f"data.path={world}", "schedule.warmup_steps=400"])


@pytest.mark.parametrize("pooling,source,zero", [("user_token", "final", True),
                                                 ("user_token", "auto", False),
                                                 ("mean", "final", False)])
def test_where_importance_is_read(world, tmp_path, pooling, source, zero):
    """Under user_token pooling the final states of other tokens never reach the loss."""
    rows, mask = run(world, tmp_path, "hybrid_soft", "schedule.warmup_steps=3",
                     "trainer.max_steps=3", "trainer.val_check_interval=3",
                     f"encoder.pooling={pooling}", f"schedule.source={source}")
    # position 0 is never the anchor, so its importance is exactly zero only in the dead case
    assert (mask.importance[0] == 0) == zero


def test_window_scheduler_grows_the_reach(world, tmp_path):
    rows, mask = run(world, tmp_path, "scheduler_window", "schedule.warmup_steps=0")
    reach = series(rows, "mask/reach")
    assert [reach[t] for t in range(8)] == [round(t / 8 * 96) for t in range(8)]
    assert int(mask.reach) == 84  # the checkpoint carries the reach of the last step


def test_mask_heatmaps_show_the_weights(world, tmp_path):
    import numpy as np
    cfg = load_config(EXPERIMENTS_DIR / "ggsm.yaml",
                      tiny(world, tmp_path, "trainer.max_steps=8", "eval.references=false",
                           "logging.wandb=false", "schedule.warmup_steps=3",
                           "logging.mask_heatmap_every=4"))
    plots = fit(cfg).run_dir / "plots"
    assert sorted(p.name for p in plots.glob("mask_step*")) == [
        "mask_step0.npy", "mask_step0.png", "mask_step4.npy", "mask_step4.png"]
    w0, w4 = np.load(plots / "mask_step0.npy"), np.load(plots / "mask_step4.npy")
    # each map covers its own batch's positions, which may differ in length
    past0, past4 = (np.tril(np.ones_like(w, dtype=bool)) for w in (w0, w4))
    assert (w0[past0] == 1).all() and np.allclose(w0[~past0], 0.5)  # sigmoid(0) at step 0
    assert (w4[past4] == 1).all()
    assert (w4[~past4] > 0.5).all() and (w4[~past4] < 1).all()  # ramping at step 4 (alpha 0.2)


def test_mlp_mask_weights_are_monitored_and_drawn(world, tmp_path):
    import numpy as np
    rows, mask = run(world, tmp_path, "hybrid_mlp", "logging.mask_heatmap_every=4")
    mean, low = series(rows, "mask/future_weight_mean"), series(rows, "mask/future_weight_min")
    assert mean[0] == pytest.approx(0.5) and low[0] == pytest.approx(0.5)  # init 0.5
    assert any(abs(mean[t] - 0.5) > 1e-4 for t in range(1, 8))  # the MLP learns
    assert all(low[t] <= mean[t] for t in range(8))
    w4 = np.load(next(tmp_path.rglob("mask_step4.npy")))
    future = ~np.tril(np.ones_like(w4, dtype=bool))
    opened = future & (w4 > 0)
    assert opened.any() and (w4[opened] < 1).all()  # soft weights on future history keys
    per_query = [np.unique(w4[i][opened[i]]) for i in range(len(w4)) if opened[i].any()]
    assert all(len(v) == 1 for v in per_query)  # one weight w_i for all future keys of query i
    assert np.ptp([v[0] for v in per_query]) > 0  # ... that differs between queries


def test_global_query_heatmap_row(world, tmp_path):
    import numpy as np
    run(world, tmp_path, "hybrid_gq", "logging.mask_heatmap_every=4")
    w = np.load(next(tmp_path.rglob("mask_step0.npy")))
    future = ~np.tril(np.ones_like(w, dtype=bool))
    assert w[0][future[0]].sum() > 0  # the global token (position 0) sees future keys ...
    assert w[1:][future[1:]].sum() == 0  # ... and nothing else does


def test_ggsm_histograms_and_heatmaps_reach_wandb(world, tmp_path, monkeypatch):
    from tests.wandb_records import history, wait_until_closed

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(EXPERIMENTS_DIR / "ggsm.yaml",
                      tiny(world, tmp_path, "eval.references=false", "schedule.warmup_steps=3",
                           "logging.mask_heatmap_every=2"))
    (wandb_file,) = fit(cfg).run_dir.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_closed(wandb_file)
    rows = history(wandb_file)
    # W&B stores media as nested keys: <key>/_type, <key>/values, ...
    hists = [r for r in rows if "mask/grad_norm_hist/_type" in r]
    assert len(hists) == 3  # one per warmup step
    assert all(h["mask/grad_norm_hist/_type"] == "histogram"
               and sum(h["mask/grad_norm_hist/values"]) > 0 for h in hists)
    images = [r for r in rows if r.get("mask/heatmap/_type") == "images/separated"]
    assert len(images) == 2  # steps 0 and 2
    assert {"mask/alpha", "mask/future_attention/layer0"} <= {k for r in rows for k in r}

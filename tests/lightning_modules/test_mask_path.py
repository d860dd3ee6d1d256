"""The training step's mask path: no host syncs, and one bias per tower per forward, shared by
every layer (DESIGN.md: build once per forward, broadcast, no ``.item()``)."""

from __future__ import annotations

import functools

import pytest
import torch

from maskstudy.callbacks import mask_schedule
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.experiments.run import fit
from maskstudy.lightning_modules import attention
from maskstudy.lightning_modules.backbone import BackboneConfig
from maskstudy.lightning_modules.encoder import ContrastiveEncoder
from maskstudy.lightning_modules.masks import ANCHOR, HISTORY, MASKS, QUERY
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig, ModuleConfig
from tests.helpers import tiny
from tests.host_syncs import HostSyncs

SMALL = BackboneConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)
OPTIONS = {"soft": [{}, {"positions": 64, "layers": "all", "scope": "history"},
                    {"positions": 64, "index": "anchor", "learnable": True}],
           "window": [{"reach": 3}], "mlp": [{}], "global_query": [{}]}
CASES = [(name, opts) for name in MASKS for opts in OPTIONS.get(name, [{}])]


def batch(left: bool, size: int = 3, length: int = 20, vocab: int = 50) -> dict:
    """Users of 20, 15 and 9 real tokens (history, 3 query tokens, the anchor) and answers of
    8, 6 and 5, padded on the left or the right."""
    ids = torch.randint(3, vocab, (size, length))
    att = torch.zeros(size, length, dtype=torch.long)
    seg = torch.zeros(size, length, dtype=torch.long)
    answer = torch.zeros(size, 8, dtype=torch.long)
    for row, (n, k) in enumerate(list(zip((20, 15, 9), (8, 6, 5)))[:size]):
        span = slice(length - n, length) if left else slice(0, n)
        att[row, span] = 1
        seg[row, span] = torch.tensor([HISTORY] * (n - 4) + [QUERY] * 3 + [ANCHOR])
        answer[row, slice(8 - k, 8) if left else slice(0, k)] = 1
    return {"user_input_ids": ids, "user_attention_mask": att, "user_segment_ids": seg,
            "answer_input_ids": torch.randint(3, vocab, (size, 8)), "answer_attention_mask": answer}


def module(name: str, options: dict) -> ContrastiveMaskingModule:
    torch.manual_seed(0)
    pooling = "global_token" if name == "global_query" else "user_token"
    cfg = ModuleConfig(backbone=SMALL, mask=MaskConfig(name, dict(options)))
    cfg.encoder.pooling = pooling
    return ContrastiveMaskingModule(cfg, vocab_size=50)


def test_the_detector_sees_syncs():
    x = torch.randn(6)
    with HostSyncs() as syncs:
        x.sum().item()
        x[x > 0]
        _ = x * 2
    assert syncs.ops == ["aten::_local_scalar_dense", "aten::index (boolean mask)"]


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_building_the_bias_never_syncs_the_host(name, options, left):
    m = module(name, options)
    b = batch(left)
    with HostSyncs() as syncs:
        m.encoder.inputs(b["user_input_ids"], b["user_attention_mask"], b["user_segment_ids"],
                         m.mask, global_token=m.mask.global_token)
    assert syncs.ops == []


@pytest.mark.parametrize("name,options", CASES[:3] + [("soft", {"layers": "all"})])
def test_one_bias_per_tower_shared_by_every_layer(name, options, monkeypatch):
    m = module(name, options)
    built, seen = [], []
    real_forward = type(m.mask).forward

    def counting(self, *args, **kwargs):
        built.append(real_forward(self, *args, **kwargs))
        return built[-1]

    def select(module, query, attention_mask):
        bias = real_select(module, query, attention_mask)
        seen.append((module.layer_idx, bias.data_ptr()))
        return bias

    real_select = attention._select
    monkeypatch.setattr(type(m.mask), "forward", counting)
    monkeypatch.setattr(attention, "_select", select)
    m._loss(batch(left=False)).loss.backward()
    assert len(built) == 2  # the user tower's bias and the answer tower's
    layers = SMALL.layers
    assert [layer for layer, _ in seen] == [0, 1] * 2
    for tower, bias in enumerate(built):
        ptrs = {ptr for _, ptr in seen[tower * layers:(tower + 1) * layers]}
        if bias.dim() == 5:  # per-layer: each layer reads its slice of the one tensor
            assert ptrs == {bias[k].data_ptr() for k in range(layers)}
        else:
            assert ptrs == {bias.data_ptr()}
    assert not hasattr(m.encoder.backbone, "lm_head")  # no vocabulary logits are computed


HOOKS = ("setup", "on_train_batch_start", "on_before_backward", "on_after_backward",
         "on_before_optimizer_step")


@pytest.mark.parametrize("recipe,extra", [
    ("ggsm", ["schedule.warmup_steps=2", "trainer.max_steps=4"]),
    ("ggsm_calibrated", ["schedule.warmup_steps=2", "trainer.max_steps=3"]),
    ("scheduler_window", []), ("hybrid_mlp", [])])
def test_schedule_callbacks_never_sync_the_host(recipe, extra, world, tmp_path, monkeypatch):
    """Every hook of the mask schedules and monitors that runs each step, plus the training
    forward's bias, watched during a real fit (the W&B histogram and the importance plot at
    the freeze are host work by design and stay out: no W&B, no plots)."""
    syncs: list[tuple[str, str]] = []

    def watch(owner, name):
        real = getattr(owner, name)

        @functools.wraps(real)
        def watched(*args, **kwargs):
            with HostSyncs() as found:
                out = real(*args, **kwargs)
            syncs.extend((f"{owner.__name__}.{name}", op) for op in found.ops)
            return out
        monkeypatch.setattr(owner, name, watched)

    for cls in (mask_schedule.GradientGuidedPrewarmup, mask_schedule.LinearMaskScheduler,
                mask_schedule.WindowScheduler, mask_schedule.MaskMonitor):
        for hook in HOOKS:
            if hook in vars(cls):
                watch(cls, hook)
    watch(ContrastiveEncoder, "inputs")
    monkeypatch.setattr(mask_schedule.GradientGuidedPrewarmup, "_save_importance",
                        lambda *a: None)
    cfg = load_config(EXPERIMENTS_DIR / f"{recipe}.yaml",
                      tiny(world, tmp_path, "eval.references=false", "logging.wandb=false",
                           "logging.future_attention_every=0", "logging.mask_heatmap_every=0",
                           "eval.tasks=[concert]", *extra))
    fit(cfg)
    assert sorted(set(syncs)) == [], "\n".join(map(str, sorted(set(syncs))))


"""The next-token pre-training stage: it lowers the next-token loss, is computed once per
dataset and backbone (shared by seeds, recipes and sweep points), and every run and the
untrained reference start from it."""

from __future__ import annotations

import json

import pytest
import torch

from maskstudy.experiments.config import EXPERIMENTS_DIR, ConfigError, cache_dir, load_config
from maskstudy.experiments.pretraining import (
    PretrainedBackbone, cache_key, load_pretrained, pretrained_backbone, text_datamodule,
)
from maskstudy.experiments.run import fit
from maskstudy.lightning_modules.backbone import build_backbone
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, ModuleConfig
from maskstudy.lightning_modules.pretrain import PretrainConfig, next_token_loss, pretrain_backbone
from tests.helpers import tiny


def config(world, tmp_path, *extra):
    return load_config(EXPERIMENTS_DIR / "causal.yaml",
                       tiny(world, tmp_path, "pretrain.steps=12", "pretrain.warmup_steps=2",
                            *extra))


def test_pretraining_lowers_the_next_token_loss(world, tmp_path):
    cfg = config(world, tmp_path)
    dm = text_datamodule(cfg)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone, dm.vocab_size)
    batch = next(iter(dm.val_dataloader()))
    losses = pretrain_backbone(backbone, iter(dm.train_dataloader()),
                               PretrainConfig(steps=25, lr=3e-3, warmup_steps=2), dm.vocab_size)
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]  # about ln(800) = 6.7 at the start
    # the stage changed the backbone: a fresh head reads it differently from the random one
    fresh = build_backbone(cfg.backbone, dm.vocab_size)
    head = torch.nn.Linear(cfg.backbone.hidden_size, dm.vocab_size, bias=False)
    with torch.no_grad():
        assert not torch.allclose(
            next_token_loss(backbone, head, batch["user_input_ids"], batch["user_attention_mask"]),
            next_token_loss(fresh, head, batch["user_input_ids"], batch["user_attention_mask"]))


def test_pretraining_needs_enough_batches():
    with pytest.raises(ValueError, match="ran out of batches after 0 of 3 steps"):
        pretrain_backbone(build_backbone(ModuleConfig().backbone, 50), iter([]),
                          PretrainConfig(steps=3, warmup_steps=0), 50)


def test_one_pretrained_backbone_per_dataset_shared_by_seeds(world, tmp_path):
    a = pretrained_backbone(config(world, tmp_path, "seed=0")).state
    (cached,) = cache_dir(config(world, tmp_path)).glob("backbone-*.pt")
    stamp = cached.stat().st_mtime_ns
    b = pretrained_backbone(config(world, tmp_path, "seed=5")).state  # another seed: same file
    assert cached.stat().st_mtime_ns == stamp
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = pretrained_backbone(config(world, tmp_path, "pretrain.seed=1")).state
    assert len(list(cache_dir(config(world, tmp_path)).glob("backbone-*.pt"))) == 2
    assert not all(torch.equal(a[k], other[k]) for k in a)
    assert pretrained_backbone(config(world, tmp_path, "pretrain.steps=0")) is None


def test_the_activity_header_has_a_backbone_of_its_own(world, tmp_path):
    """The header changes what the backbone reads; without it the key is what it was, so
    backbones cached before the option existed stay valid."""
    tok = world / "tokenizer.json"
    plain = cache_key(config(world, tmp_path), tok)
    assert cache_key(config(world, tmp_path, "data.activity_header=false"), tok) == plain
    assert cache_key(config(world, tmp_path, "data.activity_header=true"), tok) != plain


def test_longer_answers_have_a_backbone_of_their_own(world, tmp_path):
    """The backbone reads the answers in pre-training: data.answer_actions other than the
    default changes the key; the default keeps the key it had before the option existed."""
    tok = world / "tokenizer.json"
    plain = cache_key(config(world, tmp_path), tok)
    assert cache_key(config(world, tmp_path, "data.answer_actions=6"), tok) == plain
    assert cache_key(config(world, tmp_path, "data.answer_actions=12"), tok) != plain


def test_the_contrastive_batch_size_shares_the_backbone_and_the_stages_own_does_not(
        world, tmp_path):
    tok = world / "tokenizer.json"
    plain = cache_key(config(world, tmp_path), tok)
    assert cache_key(config(world, tmp_path, "data.batch_size=12"), tok) == plain
    assert cache_key(config(world, tmp_path, "pretrain.batch_size=12"), tok) != plain
    cfg = config(world, tmp_path, "data.batch_size=12", "pretrain.batch_size=3")
    batch = next(iter(text_datamodule(cfg).train_dataloader()))
    assert len(batch["user_input_ids"]) == 3


def test_runs_and_the_untrained_reference_start_from_the_pretrained_backbone(world, tmp_path):
    cfg = config(world, tmp_path, "trainer.train=false", "eval.references=false")
    state = pretrained_backbone(cfg).state
    result = fit(cfg)
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=800)
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    module.load_state_dict(ckpt["state_dict"])
    for key, value in module.encoder.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the untrained reference row is that backbone, probed: equal to an untrained run's AUC
    with_refs = fit(config(world, tmp_path, "trainer.train=false"))
    reference = with_refs.results["references"]["untrained"]["metrics"]["eval/avg_auc"]
    assert reference == pytest.approx(result.results["metrics"]["eval/avg_auc"])
    assert json.loads((result.run_dir / "results.json").read_text())["learning"]["trained"] is False


def test_the_backbone_learns_at_a_scaled_rate(world, tmp_path):
    cfg = config(world, tmp_path, "optim.backbone_lr_scale=0.1", "optim.lr=0.002")
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=800)
    optimizer = module.configure_optimizers()["optimizer"]
    backbone = {id(p) for p in module.encoder.backbone.parameters()}
    for group in optimizer.param_groups:
        inside = {id(p) in backbone for p in group["params"]}
        assert len(inside) == 1  # a group is all backbone or all encoder-built parameters
        assert group["lr"] == pytest.approx(0.0002 if inside == {True} else 0.002)
    grouped = sum(len(g["params"]) for g in optimizer.param_groups)
    assert grouped == sum(1 for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("override, message", [
    ("pretrain.steps=-1", "pretrain.steps"),
    ("pretrain.batch_size=0", "pretrain.batch_size"),
    ("pretrain.warmup_steps=50", "pretrain.warmup_steps"),
    ("optim.backbone_lr_scale=0", "optim.backbone_lr_scale"),
    ("backbone.lora.enabled=true", "pretrain.steps"),
    ("data.answer_selection=random", "data.answer_selection"),
])
def test_bad_settings_fail_before_training(world, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config(world, tmp_path, override)


def test_the_pretrain_command_fills_the_cache_fit_reads(world, tmp_path, capsys):
    from maskstudy.experiments.cli import main

    overrides = tiny(world, tmp_path, "pretrain.steps=3", f"cache_dir={tmp_path / 'shared'}")
    assert main(["pretrain", "causal", *overrides]) == 0
    assert f"pre-trained backbone ready in {tmp_path / 'shared'}" in capsys.readouterr().out
    (cached,) = (tmp_path / "shared").glob("backbone-*.pt")
    assert len(torch.load(cached, weights_only=True)["losses"]) == 3
    assert main(["pretrain", "causal", *tiny(world, tmp_path, "pretrain.steps=0")]) == 0
    assert "nothing to pre-train" in capsys.readouterr().out
    assert main(["pretrain", "causal", *tiny(world, tmp_path, "pretrain.steps=-2")]) == 2
    assert "pretrain.steps" in capsys.readouterr().err


def test_the_next_token_head_starts_as_the_pretraining_stage_left_it(world, tmp_path, caplog):
    """With loss.ntp_weight the tiny model's untied head is its own: the one pre-training
    trained with the backbone (a fresh head would start at ln V and pull the backbone)."""
    cfg = config(world, tmp_path, "loss.ntp_weight=1")
    pretrained = pretrained_backbone(cfg)
    assert set(pretrained.head) == {"weight"}
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=800)
    load_pretrained(module, pretrained)
    torch.testing.assert_close(module.encoder.lm_head.weight, pretrained.head["weight"])
    old = PretrainedBackbone(pretrained.key, pretrained.state)  # a cache from before heads
    fresh = ContrastiveMaskingModule(cfg.module_config(), vocab_size=800)
    before = fresh.encoder.lm_head.weight.detach().clone()
    load_pretrained(fresh, old)
    assert torch.equal(fresh.encoder.lm_head.weight, before)
    assert "has no head" in caplog.text

"""The joint next-token loss: the answer after the anchor in the user tower's forward.

Nothing before the answer may see it under any mask (perturbing the answer leaves every prefix
state and the embedding unchanged), answer tokens see the prefix and earlier answer tokens
only, and with ``loss.ntp_weight: 0`` no answer enters the user tower and no logits exist."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from maskstudy.experiments.config import EXPERIMENTS_DIR, ConfigError, load_config
from maskstudy.experiments.run import fit
from maskstudy.lightning_modules.encoder import insert_global_token
from maskstudy.lightning_modules.masks import CausalMask
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig, ModuleConfig
from maskstudy.lightning_modules.ntp import answer_positions, joint_bias, ntp_loss
from maskstudy.lightning_modules.scenarios import compact_prefix
from tests.helpers import tiny
from tests.host_syncs import HostSyncs
from tests.lightning_modules.test_mask_path import CASES, SMALL, batch

VOCAB = 50


def joint_module(name: str, options: dict, attention: str = "sdpa",
                 head: str | None = None) -> ContrastiveMaskingModule:
    torch.manual_seed(0)
    backbone = SMALL.__class__(**{**SMALL.__dict__, "attention": attention})
    cfg = ModuleConfig(backbone=backbone, mask=MaskConfig(name, dict(options)))
    cfg.encoder.pooling = "global_token" if name == "global_query" else "user_token"
    cfg.loss.ntp_weight, cfg.loss.ntp_head = 1.0, head
    return ContrastiveMaskingModule(cfg, vocab_size=VOCAB).eval()


def joint(m: ContrastiveMaskingModule, b: dict, answer_ids: torch.Tensor):
    answer_mask = torch.ones_like(answer_ids)
    answer_mask[1, 6:] = 0  # a shorter answer, right-padded
    return m.encoder.encode_users_and_answer(
        b["user_input_ids"], b["user_attention_mask"], b["user_segment_ids"], answer_ids,
        answer_mask)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{i}" for i, (n, _) in enumerate(CASES)])
def test_no_token_before_the_answer_sees_it_under_any_mask(name, options, left, attention):
    m = joint_module(name, options, attention)
    b = batch(left)
    answer = torch.randint(3, VOCAB, (3, 8))
    with torch.no_grad():
        users, prefix, logits = joint(m, b, answer)
        alone, hidden = m.encoder.encode_users(b["user_input_ids"], b["user_attention_mask"],
                                               b["user_segment_ids"])
        changed = answer.clone()
        changed[:, 4] = (changed[:, 4] + 7) % VOCAB  # the fifth answer token
        users2, prefix2, logits2 = joint(m, b, changed)
    real = b["user_attention_mask"].bool()
    if name == "global_query":  # the encoder's inserted token is real too
        real = insert_global_token(hidden[..., :1, :1].expand(-1, real.shape[1], 1), real,
                                   b["user_segment_ids"], torch.zeros(1))[1].bool()
    prefix, prefix2 = prefix[:, :real.shape[1]], prefix2[:, :real.shape[1]]  # answer after
    torch.testing.assert_close(users, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(prefix[real], hidden[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(users2, users, atol=1e-6, rtol=0)
    torch.testing.assert_close(prefix2[real], prefix[real], atol=1e-6, rtol=0)
    # logits[:, k] predicts answer token k from tokens before it: up to k = 4 unchanged ...
    torch.testing.assert_close(logits2[:, :5], logits[:, :5], atol=1e-5, rtol=0)
    # ... and the tokens after the changed one read it
    assert (logits2[:, 5:] - logits[:, 5:]).abs().amax() > 1e-3


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_under_a_causal_mask_the_joint_forward_is_one_causal_sequence(left):
    """Positions and bias: the answer's logits equal those of a plain causal forward over the
    user's real tokens followed by the answer, as a language model reads it."""
    m = joint_module("causal", {}, head="untied")
    b = batch(left)
    answer = torch.randint(3, VOCAB, (3, 8))
    with torch.no_grad():
        _, _, logits = joint(m, b, answer)
        for row, answer_length in enumerate((8, 6, 8)):
            real = b["user_attention_mask"][row].bool()
            ids = torch.cat([b["user_input_ids"][row][real], answer[row, :answer_length]])[None]
            att = torch.ones_like(ids)
            bias = CausalMask()(att, att)
            hidden = m.encoder.backbone(input_ids=ids, attention_mask=bias).last_hidden_state
            n = int(real.sum())
            expected = m.encoder.lm_head(hidden[0, n - 1:n - 1 + answer_length])
            torch.testing.assert_close(logits[row, :answer_length], expected, atol=1e-5,
                                       rtol=1e-5)


def test_joint_bias_blocks_the_answer_for_prefix_rows_and_is_causal_inside_it():
    prefix_mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    answer_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    prefix_bias = torch.zeros(2, 1, 4, 4)
    bias = joint_bias(prefix_bias, prefix_mask, answer_mask)
    allowed = bias[:, 0] == 0
    assert not allowed[:, :4, 4:].any()  # the prefix never sees the answer
    assert allowed[0, 4:, :4].tolist() == [[True, True, True, False]] * 3
    assert allowed[1, 4:, :4].tolist() == [[False, True, True, True]] * 3
    assert allowed[1, 4:, 4:].tolist() == [[True, False, False], [True, True, False],
                                           [True, True, True]]
    assert not allowed[0, 4:, 6].any()  # the padded answer position is nobody's key
    assert answer_positions(prefix_mask, 3).tolist() == [[0, 1, 2, 3, 3, 4, 5],
                                                         [0, 1, 2, 3, 4, 5, 6]]


def test_ntp_loss_is_the_mean_cross_entropy_of_real_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6 at the first position
    targets, mask = torch.tensor([[2, 1, 0]]), torch.tensor([[1, 1, 0]])
    expected = (-math.log(0.5) - math.log(1 / 4)) / 2
    assert ntp_loss(logits, targets, mask).item() == pytest.approx(expected)


def test_without_ntp_weight_no_answer_enters_the_user_tower_and_no_head_exists(monkeypatch):
    torch.manual_seed(0)
    m = ContrastiveMaskingModule(ModuleConfig(backbone=SMALL), vocab_size=VOCAB)
    assert m.encoder.lm_head is None
    monkeypatch.setattr(m.encoder, "encode_users_and_answer",
                        lambda *a, **k: pytest.fail("logits computed with ntp_weight 0"))
    out = m._loss(batch(False))
    assert out.ntp_loss is None and m.objective(out) is out.loss


def test_heads_tied_untied_and_the_objective():
    tied, untied = joint_module("causal", {}, head="tied"), joint_module("causal", {})
    assert tied.encoder.lm_head is None
    assert sum(p.numel() for p in untied.parameters()) - sum(
        p.numel() for p in tied.parameters()) == VOCAB * SMALL.hidden_size
    out = tied._loss(batch(False))
    assert out.ntp_loss.item() > 0
    tied.config.loss.ntp_weight = 0.5
    torch.testing.assert_close(tied.objective(out), out.loss + 0.5 * out.ntp_loss)
    out.ntp_loss.backward()  # the tied head trains the input embedding
    assert tied.encoder.backbone.get_input_embeddings().weight.grad.abs().sum() > 0


def test_a_pretrained_backbone_predicts_with_its_own_head(tmp_path):
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=64, tie_word_embeddings=False)
                     ).save_pretrained(tmp_path)
    saved = Qwen2ForCausalLM.from_pretrained(tmp_path).lm_head.weight
    cfg = ModuleConfig()
    cfg.backbone.name_or_path = str(tmp_path)
    cfg.loss.ntp_weight = 1.0
    m = ContrastiveMaskingModule(cfg, vocab_size=VOCAB)
    torch.testing.assert_close(m.encoder.lm_head.weight, saved)
    out = m._loss(batch(False))
    assert 0 < out.ntp_loss.item() < 2 * math.log(VOCAB)


def test_config_mistakes_about_the_joint_loss_fail_before_training(world, tmp_path):
    with pytest.raises(ConfigError, match="loss.ntp_weight"):
        load_config("causal", tiny(world, tmp_path, "loss.ntp_weight=-1"))
    with pytest.raises(ConfigError, match="loss.ntp_head"):
        load_config("causal", tiny(world, tmp_path, "loss.ntp_weight=1", "loss.ntp_head=shared"))
    with pytest.raises(ConfigError, match="loss.ntp_weight.*sdpa or eager"):
        load_config("causal", tiny(world, tmp_path, "loss.ntp_weight=1",
                                   "backbone.attention=flex"))
    with pytest.raises(ConfigError, match="own LM head"):
        load_config("causal", tiny(world, tmp_path, f"backbone.name_or_path={tmp_path}",
                                   "loss.ntp_weight=1", "loss.ntp_head=tied"))


def test_the_joint_inputs_never_sync_the_host():
    b = batch(left=True)
    logits = torch.randn(3, 8, VOCAB)
    with HostSyncs() as syncs:
        answer_ids, lengths = compact_prefix(b["answer_input_ids"], b["answer_attention_mask"])
        answer_mask = (torch.arange(8)[None] < lengths[:, None]).long()
        joint_bias(torch.zeros(3, 1, 20, 20), b["user_attention_mask"], answer_mask)
        answer_positions(b["user_attention_mask"], 8)
        ntp_loss(logits, answer_ids, answer_mask)
    assert syncs.ops == []


def test_the_next_token_loss_falls_during_training(world, tmp_path):
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml",
                      tiny(world, tmp_path, "loss.ntp_weight=1", "trainer.max_steps=24",
                           "optim.lr=3e-3", "eval.references=false", "logging.wandb=false",
                           "eval.tasks=[concert]"))
    result = fit(cfg)
    with open(result.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    ntp = [float(r["train/ntp_loss"]) for r in rows if r.get("train/ntp_loss")]
    chance = {float(r["train/ntp_chance"]) for r in rows if r.get("train/ntp_chance")}
    objective = [float(r["train/objective"]) for r in rows if r.get("train/objective")]
    vocab = torch.load(result.run_dir / "checkpoints" / "last.ckpt",
                       weights_only=True)["hyper_parameters"]["vocab_size"]
    assert len(ntp) == 24 and len(chance) == 1
    assert chance.pop() == pytest.approx(math.log(vocab), rel=1e-6)
    assert sum(ntp[-4:]) / 4 < sum(ntp[:4]) / 4 - 0.5  # nats; it falls by about 1
    assert objective[0] > ntp[0]  # the contrastive term is in it
    assert any(r.get("val/ntp_loss") for r in rows)


def test_the_head_is_drawn_last_so_a_seed_starts_alike_with_and_without_ntp():
    """The NTP ablation pairs by seed: every weight but the head starts the same."""
    torch.manual_seed(0)
    plain = ContrastiveMaskingModule(ModuleConfig(backbone=SMALL), vocab_size=VOCAB)
    joint = joint_module("causal", {})
    extra = set(joint.state_dict()) - set(plain.state_dict())
    assert extra == {"encoder.lm_head.weight"}
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(joint.state_dict()[key], value, rtol=0, atol=0)

"""The GPU path without config changes: precision ``auto``, optional ``torch.compile``, and the
FlexAttention backend (whose CPU forward serves evaluation)."""

from __future__ import annotations

import pytest
import torch

from maskstudy.experiments.config import (
    EXPERIMENTS_DIR, ConfigError, load_config, resolve_precision,
)
from maskstudy.experiments.run import fit
from tests.helpers import tiny
from tests.lightning_modules.test_mask_path import batch, module


def test_precision_auto_is_bf16_mixed_on_a_bf16_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"  # asked for the CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    assert resolve_precision("16-mixed", "auto") == "16-mixed"  # explicit wins


def test_a_bad_precision_fails_before_training(world, tmp_path):
    with pytest.raises(ConfigError, match="'trainer.precision': 'fp8'.*bf16-mixed"):
        load_config(EXPERIMENTS_DIR / "causal.yaml",
                    tiny(world, tmp_path, "trainer.precision=fp8"))


@pytest.mark.parametrize("compile_", [False, True])
def test_fit_compiles_the_backbone_when_asked(compile_, world, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: compiled.append(type(self).__name__))
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml",
                      tiny(world, tmp_path, f"trainer.compile={compile_}", "trainer.max_steps=2",
                           "eval.references=false", "logging.wandb=false"))
    fit(cfg)
    assert compiled == (["Qwen2Model"] if compile_ else [])


def test_a_compiled_backbone_keeps_per_layer_biases():
    """Per-layer biases reach the layers through a context variable; compiled code must still
    read each layer's own slice, and the current values (a scheduler changes them)."""
    m = module("soft", {"positions": 64, "layers": "all"}).eval()
    b = batch(True)
    args = b["user_input_ids"], b["user_attention_mask"], b["user_segment_ids"]
    weights = torch.stack([torch.full((64,), 0.05), torch.full((64,), 0.95)])
    with torch.no_grad():
        expected = []
        for w in (weights, weights.flip(0)):
            m.mask.set_weights(w)
            expected.append(m.encoder.encode_users(*args)[0])
        m.encoder.backbone.compile()
        for w, want in zip((weights, weights.flip(0)), expected):
            m.mask.set_weights(w)
            torch.testing.assert_close(m.encoder.encode_users(*args)[0], want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the layers' weights matter


def test_flex_evaluates_like_sdpa(world, tmp_path):
    """The untrained recipe on the flex backend (forward only, so it runs on a CPU) gives the
    probe results of sdpa."""
    results = {}
    for backend in ("sdpa", "flex"):
        cfg = load_config(EXPERIMENTS_DIR / "untrained.yaml",
                          tiny(world, tmp_path / backend, f"backbone.attention={backend}",
                               "eval.references=false", "logging.wandb=false",
                               "mask.name=hybrid"))
        results[backend] = fit(cfg).results["metrics"]
    assert results["flex"].keys() == results["sdpa"].keys()
    for key, value in results["sdpa"].items():
        assert results["flex"][key] == pytest.approx(value, abs=2e-3), key

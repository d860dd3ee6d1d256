"""The benchmarks' own logic (not their timings): the naive baseline is the same mask built the
slow way, the memory probe counts what autograd keeps, verdicts and the RESULTS.md writer."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import common, targets
from benchmarks.recipes import NAIVE, NaiveSoftMask, prepared
from tests.host_syncs import HostSyncs


def test_the_naive_mask_builds_the_same_bias_the_slow_way():
    data = common.make_batch(4, 48)
    assert (data["user_attention_mask"].sum(1) < 48).any()  # some rows are padded
    module, _ = prepared(NAIVE, data)  # asserts the biases are equal
    naive = module.mask
    assert isinstance(naive, NaiveSoftMask)
    args = data["user_segment_ids"], data["user_attention_mask"]
    with HostSyncs() as syncs:
        naive(*args)
    assert syncs.ops.count("aten::_local_scalar_dense") == 4  # one length read per row
    ours = prepared("ggsm, ramp", data)[0].mask
    with HostSyncs() as syncs:
        ours(*args)
    assert syncs.ops == []


def test_saved_activations_counts_what_backward_keeps():
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)
    with common.saved_activations(layer) as saved:
        y = torch.relu(layer(x))  # keeps x (for the weight's gradient) and relu's output
    assert sum(saved.values()) == 2 * 64 * 256 * 4
    y.sum().backward()


def test_verdicts():
    assert common.verdict(0.98, 1.04, 1.10) == "holds"
    assert common.verdict(1.02, 1.12, 1.10) == "undecided"
    assert common.verdict(1.12, 1.20, 1.10) == "missed"
    assert common.ratio_row("step", 1.01234, 0.98, 1.12, 1.10, " causal") == {
        "what": "step", "measured": 1.012, "interval": [0.98, 1.12],
        "target": "<= 1.10x causal", "verdict": "undecided"}
    assert common.ratio_row("floor", 0.99, 0.95, 1.01)["verdict"] == "-"


def test_results_sections_are_replaced_and_targets_go_first(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(common, "TARGETS", tmp_path / "targets.json")
    monkeypatch.setattr(targets, "TARGETS", tmp_path / "targets.json")
    common.write_section("A", "first")
    common.write_section("B", "second")
    common.write_section("A", "replaced")
    common.record_targets("recipes", [{"what": "step time, hybrid", "measured": 1.01,
                                       "interval": [0.97, 1.04], "target": "<= 1.10x causal",
                                       "verdict": "holds"}])
    targets.main()
    text = (tmp_path / "RESULTS.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## Targets", "## A", "## B"]
    assert "replaced" in text and "first" not in text
    assert "| step time, hybrid | 1.01 [0.97, 1.04] | <= 1.10x causal | holds | recipes |" in text
    assert json.loads((tmp_path / "targets.json").read_text())["recipes"]["rows"][0]["verdict"] \
        == "holds"


def test_the_target_table_needs_results(tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "TARGETS", tmp_path / "missing.json")
    with pytest.raises(SystemExit, match="make bench"):
        targets.main()


def test_the_scenario_benchmark_runs(monkeypatch, capsys):
    from benchmarks import scenarios

    monkeypatch.setattr("sys.argv", ["scenarios", "--batch", "2", "--prefixes", "32",
                                     "--queries", "2", "--rounds", "1", "--no-write"])
    scenarios.main()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 32 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["32", "2"] and float(cells[8]) == pytest.approx(2 * 48 / 64)
    assert float(cells[2]) > 0 and float(cells[3]) > 0  # cached and packed both timed


def test_the_targeting_benchmark_runs(monkeypatch, capsys):
    """Both rankings of a small pool return the same users (the benchmark refuses otherwise)."""
    from benchmarks import targeting

    monkeypatch.setattr("sys.argv", ["targeting", "--users", "3000", "--dim", "8", "--top-k",
                                     "50", "--rounds", "1", "--no-write"])
    targeting.main()
    out = capsys.readouterr().out
    assert "3,000 users x 8 dimensions" in out and "both ways return the same users" in out


def test_a_longer_template_keeps_more_history_events(world):
    """The lexical section's event and feature counts read the rendered template: more
    tokens, more events and no fewer features, and the matcher's hit rate is a share."""
    from benchmarks.learning import lexical_retrieval

    short = lexical_retrieval(str(world), ["data.max_tokens=128"], batches=1)
    long = lexical_retrieval(str(world), ["data.max_tokens=512"], batches=1)
    assert 0 < short["events"] < long["events"]
    assert 0 < short["features"] <= long["features"]
    assert short["users"] == long["users"] == 16  # one full batch
    assert 0 <= short["retrieval"] <= 1 and 0 <= long["retrieval"] <= 1

"""The README's "Your own data" walk-through, end to end from the command line: an example
purchase log is generated, imported with every user kept, summarised, trained on with the
shop's own tasks (labels shipped with the data and YAML event rules), evaluated and studied,
all without Python."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from maskstudy.experiments.cli import main
from tests.helpers import tiny


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "shop"
    assert main(["data", "example-log", "--out", str(out), "--customers", "300"]) == 0
    assert main(["data", "import", "--spec", str(out / "import.yaml")]) == 0
    return out


def shop_overrides(shop, tmp_path):
    # The data option keeps its own path and tasks; tiny() sizes the model and run.
    return ["data=shop", *[o for o in tiny(shop / "dataset", tmp_path)
                           if not o.startswith("data.path=")]]


def test_import_keeps_every_customer_and_reports_drops(shop, capsys):
    report = json.loads((shop / "dataset" / "dataset.json").read_text())
    customers = sum(1 for _ in (shop / "customers.csv").open()) - 1
    assert report["users"] == customers == 300
    assert report["users_without_history"] > 0  # joined after the split: kept all the same
    # The example's broken lines, one reason each, and the export's tail past the window.
    dropped = report["dropped"]
    assert all(dropped[r] > 0 for r in ("missing_user", "bad_time", "bad_number",
                                        "unknown_user", "after_future_window"))
    assert report["history_days"] > 90 and report["future_days"] == 90
    assert not report["time_of_day"]
    # A plain validate names the users without history; keeping them, the data is valid.
    assert main(["data", "validate", str(shop / "dataset")]) == 1
    assert "user has no history events" in capsys.readouterr().err
    assert main(["data", "validate", str(shop / "dataset"), "--empty-history", "keep"]) == 0


def test_summary_takes_task_lists_and_errors_in_one_line(shop, monkeypatch, capsys):
    monkeypatch.setenv("MASKSTUDY_CONFIG_PATH", str(shop))
    out = shop / "summary.json"
    assert main(["data", "summary", str(shop / "dataset"), "--tasks", "shop.yaml",
                 "--probe-fraction", "0.4", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert list(summary["tasks"]) == ["repurchase", "big_spender", "music", "bulk"]
    assert summary["windows"]["future_days"] == 90
    capsys.readouterr()
    # The payment-app tasks read modalities this shop does not have: one line, no traceback.
    assert main(["data", "summary", str(shop / "dataset"), "--tasks", "ggsm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "rule modality 'bill'" in err
    assert "Traceback" not in err


def test_fit_eval_and_study_on_the_shop(shop, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MASKSTUDY_CONFIG_PATH", str(shop))
    overrides = shop_overrides(shop, tmp_path)
    assert main(["fit", "causal", *overrides]) == 0
    run_dir = next((tmp_path / "shop_causal").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["tasks"]) == {"repurchase", "big_spender", "music", "bulk"}
    assert results["skipped_tasks"] == {}
    assert all(0 <= t["auc"] <= 1 for t in results["tasks"].values())
    # Every customer has an embedding, those without history too.
    emb = tmp_path / "emb.parquet"
    assert main(["embed", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(emb)]) == 0
    assert pq.read_table(emb).num_rows == 300
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir / "checkpoints" / "last.ckpt"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"].keys() == results["tasks"].keys()
    capsys.readouterr()
    assert main(["study", "causal", "hybrid", *overrides, f"--out={tmp_path / 'studies'}"]) == 0
    study = next((tmp_path / "studies" / "study").iterdir())
    assert "shop_hybrid" in (study / "study.md").read_text()


def test_a_task_without_positives_fails_before_training(shop, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MASKSTUDY_CONFIG_PATH", str(shop))
    never = "{name: hoarder, event: {modality: purchase, field: quantity, op: ge, value: 99}}"
    overrides = [*shop_overrides(shop, tmp_path), f"eval.tasks=[shop.yaml,{never}]"]
    assert main(["fit", "causal", *overrides]) == 2
    err = capsys.readouterr().err
    assert "hoarder: 0 positive(s)" in err and "eval.sparse_tasks=skip" in err
    assert not list(tmp_path.glob("shop_causal/*"))  # no run directory left behind
    assert main(["fit", "causal", *overrides, "eval.sparse_tasks=skip"]) == 0
    run_dir = next((tmp_path / "shop_causal").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["skipped_tasks"]["hoarder"]["positives"] == 0
    assert "hoarder" not in results["tasks"]


def test_embedding_other_modalities_fails_in_one_line(shop, world, tmp_path, monkeypatch,
                                                      capsys):
    """A model of the payment-app world cannot read the shop's purchases: said, not crashed."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["fit", "causal", *tiny(world, tmp_path), "trainer.max_steps=2",
                 "eval.references=false"]) == 0
    ckpt = next((tmp_path / "causal").iterdir()) / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["embed", str(ckpt), "--out", str(tmp_path / "e.parquet"), "--data",
                 str(shop / "dataset")]) == 2
    assert "declares modalities ['purchase']" in capsys.readouterr().err

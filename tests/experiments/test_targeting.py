"""maskstudy tune, target, fewshot and eval --targeting on checkpoints of a tiny world: frozen
weights stay bit-identical, rankings equal a brute-force cosine ranking, outputs land beside
the run, bad input fails in one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from maskstudy.callbacks.linear_probe import spearman
from maskstudy.datamodules.datamodules import UserDataModule
from maskstudy.experiments.checkpoints import load_run
from maskstudy.experiments.cli import main
from maskstudy.experiments.config import EXPERIMENTS_DIR, TuneConfig, load_config
from maskstudy.experiments.data import ProbeSourceAdapter, probe_datamodule
from maskstudy.experiments.run import fit
from maskstudy.experiments.targeting import direction
from maskstudy.experiments.tune import TaskUsers, tune_task
from maskstudy.lightning_modules.prompts import init_prompts
from tests.helpers import tiny
from tests.wandb_records import history, records, wait_until_closed

SENTENCE = "Next period: 30 events; concert payments."


@pytest.fixture(scope="module")
def checkpoints(world, tmp_path_factory):
    """A text-input causal run, a hierarchical one and a bidirectional one (the history sees
    the query: prompts recompute the whole sequence)."""
    root = tmp_path_factory.mktemp("targeting")
    out = {}
    for name, recipe, extra in (("text", "causal", ()),
                                ("hierarchical", "causal", ("input=hierarchical",)),
                                ("bidirectional", "bidirectional", ())):
        cfg = load_config(EXPERIMENTS_DIR / f"{recipe}.yaml",
                          [*extra, *tiny(world, root / name, "eval.tasks=[concert,login]")])
        out[name] = fit(cfg).run_dir / "checkpoints" / "last.ckpt"
    return out


@pytest.mark.parametrize("name,path", [("text", "cache"), ("hierarchical", "cache"),
                                       ("bidirectional", "recompute")])
def test_prompt_tuning_keeps_the_checkpoint_frozen_and_learns_its_prompt(checkpoints, name,
                                                                        path):
    cfg, module, _ = load_run(checkpoints[name])
    module.requires_grad_(False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    source = ProbeSourceAdapter(probe_datamodule(cfg), "ggsm")
    users = TaskUsers(module, source, "login", 2)
    tune = TuneConfig(prompt_tokens=2, steps=6, lr=0.05, eval_every=3)
    results, state = tune_task(module, source, "login", tune, users)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert results["path"].startswith(path)
    assert state["prompts"].shape == (2, 32) and state["prototypes"].shape == (2, 16)
    assert [h["step"] for h in results["history"]] == [3, 6]
    assert 0 <= results["tuned"]["auc"] <= 1 and 0 <= results["probe"]["auc"] <= 1
    assert results["loss"]["chance"] == pytest.approx(np.log(2))
    assert results["train_users"] + results["test_users"] == len(source.labels)
    # the prompts moved away from their initial vocabulary embeddings
    start = init_prompts(module.encoder, 2, torch.Generator().manual_seed(tune.seed))
    assert not torch.allclose(state["prompts"], start)


def test_the_tune_command_writes_each_prompt_size_beside_the_run(checkpoints, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    ckpt = checkpoints["text"]
    assert main(["tune", str(ckpt), "steps=2", "eval_every=1", "--tasks", "login",
                 "concert", "--prompt-tokens", "1", "3"]) == 0
    tuned = ckpt.parent.parent / "tuned"
    assert sorted(p.name for p in tuned.iterdir()) == [
        "concert-p1-s2-seed0", "concert-p3-s2-seed0", "login-p1-s2-seed0", "login-p3-s2-seed0"]
    out = tuned / "login-p3-s2-seed0"
    res = json.loads((out / "results.json").read_text())
    assert res["tune"]["prompt_tokens"] == 3 and res["query"].startswith("Will this user")
    assert torch.load(out / "prompt.pt", weights_only=True)["prompts"].shape == (3, 32)
    assert "tune/login/loss" in (out / "metrics.csv").read_text()
    (wandb_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_closed(wandb_file)
    logged = {k for row in history(wandb_file) for k in row}
    assert {"tune/login/loss", "tune/login/test_auc"} <= logged
    run_record = [r.run for r in records(wandb_file) if r.WhichOneof("record_type") == "run"][0]
    assert run_record.job_type == "tune"
    assert "login" in capsys.readouterr().out
    assert main(["tune", str(ckpt), "--task", "login", "steps=0"]) == 2
    assert "tune.steps" in capsys.readouterr().err
    assert main(["tune", str(ckpt), "--task", "login", "--prompt-tokens", "two"]) == 2


def brute_force(vector: torch.Tensor, ids: list, rows: np.ndarray, k: int) -> list:
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(rows), vector[None], dim=-1)
    return [ids[i] for i in torch.sort(cos, descending=True, stable=True).indices[:k]]


@pytest.mark.parametrize("name", ["text", "hierarchical"])
def test_target_ranks_users_as_a_brute_force_cosine_ranking(checkpoints, name, tmp_path):
    ckpt = checkpoints[name]
    users = tmp_path / "users.parquet"
    assert main(["embed", str(ckpt), "--out", str(users), "--query", "behaviour"]) == 0
    table = pq.read_table(users)
    cfg, module, _ = load_run(ckpt)
    assert table.schema.metadata[b"maskstudy.query"].decode() == cfg.data.behaviour_query
    dm = UserDataModule(cfg.data, input=cfg.input)
    dm.setup()
    ids = table.column("user_id").to_pylist()
    rows = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    for flag, vector in (([], direction(module, dm, SENTENCE)),
                         (["--no-reference"], direction(module, dm, SENTENCE, False))):
        expected = brute_force(vector, ids, rows, 25)
        out = tmp_path / "ranked.csv"
        assert main(["target", str(ckpt), SENTENCE, "--top-k", "25", "--out", str(out),
                     "--embeddings", str(users), *flag]) == 0
        with open(out) as f:
            got = [r["user_id"] for r in csv.DictReader(f)]
        assert got == expected
    # embedding the users on the fly ranks them the same way
    assert main(["target", str(ckpt), SENTENCE, "--top-k", "25", "--out",
                 str(tmp_path / "own.parquet")]) == 0
    assert pq.read_table(tmp_path / "own.parquet").column("user_id").to_pylist() == \
        brute_force(direction(module, dm, SENTENCE), ids, rows, 25)


def test_target_refuses_files_it_cannot_rank(checkpoints, tmp_path, capsys):
    ckpt = str(checkpoints["text"])
    wide = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "embedding": [[0.1] * 8, [0.2] * 8]}), wide)
    assert main(["target", ckpt, SENTENCE, "--embeddings", str(wide)]) == 2
    assert "embeddings of 8 values, the checkpoint's have 16" in capsys.readouterr().err
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "embedding": [[0.1] * 16, [0.2] * 15]}),
                   ragged)
    assert main(["target", ckpt, SENTENCE, "--embeddings", str(ragged)]) == 2
    assert "row 1 has an embedding of 15 values" in capsys.readouterr().err
    scen = tmp_path / "scen.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "scenario": ["x"], "embedding": [[0.1] * 16]}),
                   scen)
    assert main(["target", ckpt, SENTENCE, "--embeddings", str(scen)]) == 2
    assert "one row per (user, scenario)" in capsys.readouterr().err
    assert main(["target", ckpt, SENTENCE, "--embeddings", str(tmp_path / "no.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_eval_targeting_scores_every_task_and_writes_targeting_json(checkpoints, capsys):
    ckpt = checkpoints["text"]
    assert main(["eval", str(ckpt), "--targeting"]) == 0
    out = capsys.readouterr().out
    assert "targeting AUC" in out and "activity alone AUC" in out
    saved = json.loads((ckpt.parent.parent / "targeting.json").read_text())
    assert set(saved["tasks"]) == {"concert", "login"}
    login = saved["tasks"]["login"]
    assert login["sentence"] == "Next period: 30 events; a10.b1001 views."
    assert login["recall_at_k"] == login["precision_at_k"] and login["k"] > 0
    assert saved["reference"] == "Next period: 30 events."
    assert saved["step"] == 4  # the checkpoint's training step, not the evaluation's 0
    assert saved["metrics"]["avg_auc"] == pytest.approx(
        np.mean([t["auc"] for t in saved["tasks"].values()]))
    # beside the ranking: the same users ranked by their history events alone
    cfg, _, _ = load_run(ckpt)
    probe = probe_datamodule(cfg).probe.load()
    events = probe.history_events()
    for k, task in enumerate(probe.task_names):
        test = probe.test_mask(task)
        assert saved["tasks"][task]["auc_activity"] == pytest.approx(
            roc_auc_score(probe.labels[test, k], events[test]))
        assert -1 <= saved["tasks"][task]["activity_rho"] <= 1
    assert saved["metrics"]["avg_abs_activity_rho"] == pytest.approx(
        np.mean([abs(t["activity_rho"]) for t in saved["tasks"].values()]))


def test_spearman_is_the_rank_correlation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0])
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # monotone: ranks agree
    assert spearman(a, -a ** 3) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones(200)))


def test_fewshot_draws_seeds_from_the_train_side_and_writes_its_curve(checkpoints, capsys):
    ckpt = checkpoints["text"]
    assert main(["fewshot", str(ckpt), "--tasks", "login", "concert", "shots=[2,1000]",
                 "steps=2", "draws=2"]) == 0
    out = json.loads((ckpt.parent.parent / "fewshot" / "results.json").read_text())
    login = out["tasks"]["login"]
    assert len(login["shots"]["2"]["fewshot"]) == 2 and len(login["shots"]["2"]["probe"]) == 2
    assert all(len(pair) == 2 and min(pair) >= 0 for pair in login["shots"]["2"]["loss"])
    assert "skipped" in login["shots"]["1000"]
    assert 0 <= login["zero_shot"] <= 1
    assert "zero-shot" in capsys.readouterr().out
    assert main(["fewshot", str(ckpt), "shots=[0]"]) == 2
    assert "fewshot.shots" in capsys.readouterr().err

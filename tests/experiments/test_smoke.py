"""Every experiments/*.yaml trains and evaluates for a few steps on a tiny world; the run
directory, the CSV metrics and the offline W&B run hold what the docs promise."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from maskstudy.experiments.cli import main
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.callbacks.linear_probe import embed_probe_users
from maskstudy.experiments.checkpoints import load_run
from maskstudy.experiments.data import ProbeSourceAdapter, build_datamodules
from maskstudy.experiments.run import fit
from maskstudy.experiments.study import markdown_table
from maskstudy.datamodules import baseline
from maskstudy.datamodules.ceiling import LATENTS
from maskstudy.datamodules.logistic import C_GRID
from tests.helpers import tiny, write_tiny_text_encoder
from tests.wandb_records import history, records, wait_until_closed

RECIPES = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
# every recipe on the defaults, and every other option of the data and input groups once
EXPERIMENTS = [(r, ()) for r in RECIPES] + [
    ("untrained", ("data=movielens",)), ("ggsm", ("data=movielens",)),
    ("scheduler", ("input=hierarchical",)), ("hybrid_gq", ("input=hierarchical",)),
    ("ggsm", ("input=hierarchical_text",)),
    (None, ("mask=ggsm", "data=movielens", "input=hierarchical"))]  # the groups alone


@pytest.mark.parametrize("recipe,choices", EXPERIMENTS,
                         ids=lambda x: x if isinstance(x, str) else "-".join(x or ()) or "-")
def test_every_experiment_runs(recipe, choices, request, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    on_movielens = "data=movielens" in choices
    data = request.getfixturevalue("movielens" if on_movielens else "world")
    # the untrained rows evaluate only, whatever trainer.max_steps says
    steps = 0 if recipe == "untrained" else 4
    overrides = [*choices, *tiny(data, tmp_path)]
    if on_movielens:  # 60 users: some tasks have too few positives among the probe users
        overrides.append("eval.sparse_tasks=skip")
    if "input=hierarchical_text" in choices:  # a tiny stand-in for the sentence encoder
        encoder = write_tiny_text_encoder(tmp_path / "encoder")
        overrides += [f"input.text_encoder={encoder}", "input.text_dim=32",
                      f"input.cache_dir={tmp_path / 'event_cache'}"]
    cfg = load_config(recipe, overrides)
    result = fit(cfg)
    assert cfg == load_config(recipe, overrides)  # fitting never edits the config
    run = result.run_dir
    for name in ("config.yaml", "tokenizer.json", "metrics.csv", "results.json",
                 "checkpoints/last.ckpt", "plots/loss.png", "plots/auc.png"):
        assert (run / name).exists(), name
    res = json.loads((run / "results.json").read_text())
    options = {c.split("=")[0]: c.split("=")[1] for c in choices}
    named = [options[g] for g in ("data", "input") if g in options]
    assert res["name"] == "_".join(named + [recipe or options["mask"]])
    assert res["choices"] == cfg.choices and options.items() <= cfg.choices.items()
    assert cfg.choices.get("recipe") == recipe
    assert res["step"] == steps
    assert res["input"] == ("text" if cfg.input.mode == "text" else
                            f"hierarchical ({cfg.input.event_encoder})")
    assert len(res["tasks"]) + len(res["skipped_tasks"]) == (14 if on_movielens else 9)
    assert bool(res["skipped_tasks"]) == on_movielens
    progress = json.loads((run / "progress.json").read_text())
    assert progress["stage"] == "done"
    assert 0 <= res["metrics"]["eval/avg_auc"] <= 1
    assert set(res["references"]) == {"untrained", "bag_of_events", "bag_of_events_window"}
    check = res["learning"]  # every run is measured on the validation pairs at its end
    assert check["trained"] == (steps > 0) and check["step"] == steps
    assert check["retrieval_chance"] == pytest.approx(1 / 4)  # tiny batches of 4
    assert isinstance(check["passed"], bool) and check["passed"] == (not check["reasons"])
    for rep in ("projected", "pooled"):
        assert 0 <= res["metrics"][f"eval/by_representation/{rep}/avg_auc"] <= 1


def test_metrics_reach_csv_and_offline_wandb(world, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(EXPERIMENTS_DIR / "hybrid.yaml",
                      tiny(world, tmp_path, "eval.every_n_steps=2", "logging.tags=[smoke]"))
    run = fit(cfg).run_dir
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for r in rows for k, v in r.items() if v}
    for key in ("train/loss", "train/lr", "train/pos_sim", "train/neg_sim",
                "train/fn_masked_frac", "train/grad_norm", "val/loss", "train/retrieval_acc",
                "train/retrieval_chance", "train/loss_chance", "train/kept_chance",
                "train/sim_gap", "train/user_spread", "train/user_rank",
                "train/spread_isotropic", "val/retrieval_acc", "val/user_spread",
                "val/user_rank", "learning/passed", "eval/by_representation/pooled/avg_auc",
                "eval/avg_auc",
                "eval/avg_ks", "eval/concert/auc", "eval/concert/ks",
                "eval/user_prediction/avg_auc", "eval/marketing_sensitivity/avg_auc"):
        assert key in logged, key
    evals = [r for r in rows if r.get("eval/avg_auc")]
    assert [int(r["step"]) for r in evals] == [2, 4]  # every_n_steps and the end
    (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_closed(wandb_file)
    hist = history(wandb_file)
    keys = {k for row in hist for k in row}
    assert {"train/loss", "train/lr", "eval/avg_auc", "eval/concert/auc"} <= keys
    final = [row for row in hist if "eval/avg_auc" in row][-1]
    res = json.loads((run / "results.json").read_text())
    assert final["eval/avg_auc"] == pytest.approx(res["metrics"]["eval/avg_auc"])
    assert any(k.startswith("eval/results/") for k in keys)  # the per-task W&B Table
    run_record = [r.run for r in records(wandb_file) if r.WhichOneof("record_type") == "run"][0]
    assert "smoke" in run_record.tags and run_record.project == "maskstudy"
    config_keys = {item.key for item in run_record.config.update}
    assert {"mask", "data", "trainer"} <= config_keys


@pytest.mark.parametrize("input", ["text", "hierarchical"])
def test_eval_and_embed_from_a_checkpoint(input, world, tmp_path, monkeypatch, capsys):
    """``eval`` and ``embed`` read the checkpoint as its run did, whatever the input mode:
    the same probe AUC as the run's own evaluation, and the same embeddings."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_config("causal", [f"input={input}", *tiny(world, tmp_path)])
    result = fit(cfg)
    ckpt = result.run_dir / "checkpoints" / "last.ckpt"
    assert main(["eval", str(ckpt), "--json", str(tmp_path / "all.json")]) == 0
    again = json.loads((tmp_path / "all.json").read_text())["metrics"]
    assert again["eval/avg_auc"] == pytest.approx(result.results["metrics"]["eval/avg_auc"])
    assert main(["eval", str(ckpt), "--tasks", "concert", "login", "--json",
                 str(tmp_path / "e.json")]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    assert list(out["tasks"]) == ["concert", "login"]
    # eval section keys after the tasks: the probe at a fixed strength
    assert main(["eval", str(ckpt), "--tasks", "concert", "c=0.5", "--json",
                 str(tmp_path / "c.json")]) == 0
    fixed = json.loads((tmp_path / "c.json").read_text())["tasks"]
    assert list(fixed) == ["concert"] and fixed["concert"]["c"] == 0.5
    assert main(["eval", str(ckpt), "--tasks", "concert", "c=null", "--json",
                 str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["tasks"]["concert"]["c"] in C_GRID

    assert main(["embed", str(ckpt), "--out", str(tmp_path / "u.parquet")]) == 0
    table = pq.read_table(tmp_path / "u.parquet")
    assert table.num_rows == 600 and len(table.column("embedding")[0]) == 16
    _, module, _ = load_run(ckpt)
    own = embed_probe_users(module, ProbeSourceAdapter(build_datamodules(cfg)[1], "ggsm"))
    rows = dict(zip(table.column("user_id").to_pylist(), table.column("embedding").to_pylist()))
    probe_ids = build_datamodules(cfg)[1].probe.user_ids
    exported = np.array([rows[u] for u in probe_ids], dtype=np.float32)
    np.testing.assert_allclose(exported, own["projected"], atol=1e-5)

    # One row per (user, scenario): the run's tasks under their scenario queries, equal to
    # what the task-query probe reads (one history per user for every query).
    from maskstudy.callbacks.linear_probe import task_query_embeddings

    assert main(["embed", str(ckpt), "--out", str(tmp_path / "s.parquet"), "--split", "probe",
                 "--queries", "tasks"]) == 0
    scen = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert len(scen["user_id"]) == len(probe_ids) * 9
    source = ProbeSourceAdapter(build_datamodules(cfg)[1], "ggsm")
    by_task = task_query_embeddings(module, source)[0]["projected"]
    index = {u: k for k, u in enumerate(probe_ids)}
    for task in ("concert", "physical"):
        rows = [(index[u], e) for u, t, e in zip(scen["user_id"], scen["scenario"],
                                                  scen["embedding"]) if t == task]
        got = np.zeros_like(by_task[task])
        for k, e in rows:
            got[k] = e
        np.testing.assert_allclose(got, by_task[task], atol=1e-5)
    (tmp_path / "q.txt").write_text("Will this user travel?\n\nWill this user save money?\n")
    assert main(["embed", str(ckpt), "--out", str(tmp_path / "q.parquet"), "--queries",
                 str(tmp_path / "q.txt")]) == 0
    assert set(pq.read_table(tmp_path / "q.parquet").column("query").to_pylist()) == {
        "Will this user travel?", "Will this user save money?"}
    assert main(["embed", str(ckpt), "--out", str(tmp_path / "x.parquet"), "--queries",
                 str(tmp_path / "none.txt")]) == 2

    assert main(["eval", str(tmp_path / "missing.ckpt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_reference_rows_are_shared_across_recipes(world, tmp_path, monkeypatch):
    """The untrained backbone row is the causal decoder whatever the recipe's mask, computed
    once per dataset and cached."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    a = fit(load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(world, tmp_path))).results
    cache = sorted((tmp_path / ".cache").glob("*.json"))
    assert [p.name.split("-")[0] for p in cache] == ["bag_of_events", "bag_of_events_window",
                                                    "untrained"]
    stamps = [p.stat().st_mtime_ns for p in cache]
    b = fit(load_config(EXPERIMENTS_DIR / "ggsm.yaml", tiny(world, tmp_path))).results
    assert a["references"] == b["references"]
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / ".cache").glob("*.json"))] == stamps


def test_every_probe_chooses_its_strength_unless_eval_c_fixes_it(world, tmp_path, monkeypatch):
    """By default each task's probe, on the run's embeddings and on every reference row,
    records the strength it chose from the grid; eval.c fixes the embeddings' probes to it
    and the bag-of-events rows to their own fixed strength, cached under other keys."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    chosen = fit(load_config(EXPERIMENTS_DIR / "causal.yaml",
                             tiny(world, tmp_path, "eval.c=null"))).results
    rows = [chosen["tasks"], *(r["tasks"] for r in chosen["references"].values())]
    assert all(m["c"] in C_GRID for tasks in rows for m in tasks.values())
    fixed = fit(load_config(EXPERIMENTS_DIR / "causal.yaml",
                            tiny(world, tmp_path, "eval.c=1"))).results
    assert {m["c"] for m in fixed["tasks"].values()} == {1.0}
    refs = fixed["references"]
    assert {m["c"] for m in refs["untrained"]["tasks"].values()} == {1.0}
    for kind in ("bag_of_events", "bag_of_events_window"):
        assert {m["c"] for m in refs[kind]["tasks"].values()} == {baseline.FIXED_C}
    assert len(list((tmp_path / ".cache").glob("bag_of_events-*.json"))) == 2


def test_the_ceiling_row_is_read_beside_the_others(world, tmp_path, monkeypatch):
    """eval.ceiling adds the world's ceiling to the references: cached per dataset, scored on
    the probe's test users like the other rows, above the bag of events, and named in the
    study's table."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(world, tmp_path, "eval.ceiling=true"))
    results = fit(cfg).results
    refs = results["references"]
    assert set(refs) == {"untrained", "bag_of_events", "bag_of_events_window", "ceiling"}
    cached = json.loads(next((tmp_path / ".cache").glob("ceiling-*.json")).read_text())
    assert cached["tasks"] == refs["ceiling"]["tasks"]
    assert set(cached["tasks"]) == set(refs["bag_of_events"]["tasks"])
    ceiling = refs["ceiling"]["metrics"]
    assert ceiling["eval/avg_auc"] > refs["bag_of_events"]["metrics"]["eval/avg_auc"]
    assert 0.5 < ceiling["eval/by_representation/latents/avg_auc"] <= 1  # the latents, probed
    assert "| ceiling, P(label given the world's latents) |" in markdown_table([results])


def test_the_probe_reads_the_representation_asked_for(world, tmp_path, monkeypatch):
    """eval.representation: pooled makes eval/* describe the hidden state before the
    projector (a 32-wide state here, against the 16-wide embedding); both are logged."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    res = fit(load_config(EXPERIMENTS_DIR / "causal.yaml",
                          tiny(world, tmp_path, "eval.representation=pooled"))).results
    m = res["metrics"]
    assert res["representation"] == "pooled"
    assert m["eval/avg_auc"] == m["eval/by_representation/pooled/avg_auc"]
    assert m["eval/avg_auc"] != m["eval/by_representation/projected/avg_auc"]
    # the untrained reference records both, so each is read against its own
    ref = res["references"]["untrained"]["metrics"]
    assert ref["eval/avg_auc"] == ref["eval/by_representation/pooled/avg_auc"]
    assert ref["eval/by_representation/projected/avg_auc"] != ref["eval/avg_auc"]
    ckpt = next((tmp_path / "causal").glob("*/checkpoints/last.ckpt"))
    assert main(["eval", str(ckpt), "--json", str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert again["eval/avg_auc"] == pytest.approx(m["eval/avg_auc"])


def test_eval_reads_how_much_of_each_latent_a_representation_holds(world, tmp_path, monkeypatch,
                                                                   capsys):
    """eval --latents: per representation (both of the run's, the bag of events, its window)
    the test R^2 of every latent of the world; the event counts hold the users' activity."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    fit(load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(world, tmp_path)))
    ckpt = next((tmp_path / "causal").glob("*/checkpoints/last.ckpt"))
    out = tmp_path / "e.json"
    assert main(["eval", str(ckpt), "--latents", "--json", str(out)]) == 0
    assert "R^2 of each latent (test users): projected, pooled, bag_of_events" in (
        capsys.readouterr().out)
    latents = json.loads(out.read_text())["latents"]
    assert list(latents) == ["projected", "pooled", "bag_of_events", "bag_of_events_window"]
    assert all(list(r) == list(LATENTS) for r in latents.values())
    assert latents["bag_of_events"]["log_activity"] > 0.5
    assert all(r <= 1 for rows in latents.values() for r in rows.values())


def test_eval_latents_needs_a_synthetic_world(movielens, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    fit(load_config("untrained", ["data=movielens", *tiny(movielens, tmp_path),
                                  "eval.sparse_tasks=skip"]))
    ckpt = next(tmp_path.glob("*/*/checkpoints/last.ckpt"))
    assert main(["eval", str(ckpt), "--latents"]) == 2
    assert f"{movielens}/world.json: no world.json" in capsys.readouterr().err


@pytest.mark.parametrize("inputs", ["text", "hierarchical"])
def test_the_task_query_protocol_reads_each_tasks_scenario(world, tmp_path, monkeypatch,
                                                           inputs):
    """eval.query: task embeds the probe users once per task, the task's scenario query after
    the history, and probes each task on its own embeddings; the fixed protocol is probed
    beside it."""
    from maskstudy.callbacks.linear_probe import (
        ONE_HISTORY, RECOMPUTE, evaluate, probe_all, task_query_embeddings,
    )
    from maskstudy.lightning_modules.masks import BidirectionalMask
    from maskstudy.lightning_modules.module import ContrastiveMaskingModule

    monkeypatch.setenv("WANDB_MODE", "disabled")
    overrides = tiny(world, tmp_path, "eval.query=task", "eval.tasks=[concert,transit,power]",
                     f"input={inputs}")
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", overrides)
    train_dm, probe_dm = build_datamodules(cfg)
    source = ProbeSourceAdapter(probe_dm, "ggsm")
    assert source.queries["concert"] == "Will this user buy concert tickets next period?"
    batch = next(iter(source.dataloader(source.queries["concert"])))
    tok = probe_dm.template.tok
    assert "Instruction: Will this user buy concert tickets next period?" in tok.decode(
        batch["user_input_ids"][0].tolist())
    module = ContrastiveMaskingModule(cfg.module_config(), vocab_size=train_dm.vocab_size).eval()
    embeddings, path = task_query_embeddings(module, source)
    by_task = embeddings["projected"]
    assert path == ONE_HISTORY
    assert not np.allclose(by_task["concert"], by_task["transit"])
    # Causal keeps the history blind to the query: one history (cached) serves every query
    # and equals a pass per query over the same histories, for text and hierarchical input.
    suffixes = [source.suffix(source.queries[t]) for t in ("concert", "transit")]
    reps = module.scenario_representations(batch, suffixes)
    assert reps["projected"].shape[:2] == (len(batch["probe_index"]), 2)
    per_query, recomputed = task_query_embeddings(module, source, share_history=False)
    per_query = per_query["projected"]
    assert recomputed.startswith(RECOMPUTE)
    for task in by_task:
        np.testing.assert_allclose(by_task[task], per_query[task], atol=1e-5)
    result = evaluate(module, source, cfg.eval.c, query="task")
    assert result.per_task == probe_all(by_task, source, cfg.eval.c)[0]
    m = result.metrics
    assert m["eval/avg_auc"] == m["eval/by_query/task/avg_auc"]
    assert m["eval/by_query/task/concert/auc"] == result.per_task["concert"]["auc"]
    assert {f"eval/by_query/fixed/{t}/ks" for t in by_task} <= set(m)
    assert m["eval/by_query/fixed/avg_auc"] == evaluate(module, source, cfg.eval.c).metrics[
        "eval/avg_auc"]
    assert result.scenario_path == ONE_HISTORY
    module.inference_mask = BidirectionalMask()  # the history sees the query: recompute
    path = evaluate(module, source, cfg.eval.c, query="task").scenario_path
    assert path.startswith(RECOMPUTE) and "history tokens attend to the query" in path
    module.inference_mask = None
    res = fit(cfg).results
    assert res["query"] == "task" and "eval/by_query/fixed/avg_auc" in res["metrics"]
    assert res["scenario_path"] == ONE_HISTORY


def test_training_mixes_scenario_pairs_from_the_evaluation_tasks(world, tmp_path, monkeypatch):
    """data.scenarios_per_user: each training user adds scenario pairs (a task's scenario
    query, answered by its label); the shared pre-training never reads them."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_config("qanchor", tiny(world, tmp_path, "data.scenarios_per_user=2",
                                      "eval.tasks=[concert,login]", "eval.references=false"))
    train_dm, _ = build_datamodules(cfg)
    kinds = [k for b, _ in zip(train_dm.train_dataloader(), range(6)) for k in b["pair_kinds"]]
    assert {"behaviour", "scenario:concert", "scenario:login"} <= set(kinds)
    from maskstudy.experiments.pretraining import text_datamodule

    pre = text_datamodule(cfg)
    assert {k for b, _ in zip(pre.train_dataloader(), range(3)) for k in b["pair_kinds"]} == {
        "behaviour"}
    assert fit(cfg).results["step"] == 4

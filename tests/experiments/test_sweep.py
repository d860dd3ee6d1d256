"""Sweeps (W&B format, run locally and resumably), the report and the dashboard spec."""

from __future__ import annotations

import json
import shutil
import sys
import time

import numpy as np
import pytest

from maskstudy.experiments.cli import main, recipe_and_overrides
from maskstudy.experiments.config import EXPERIMENTS_DIR, load_config
from maskstudy.experiments.dashboard import SECTIONS, build_workspace, workspace_json
from maskstudy.experiments.report import (
    aa_false_positive_rate, against_untrained, bootstrap_difference, collect,
    detectable_effect, loss_spikes, references, report, resampled_auc, seed_interval,
    seeds_needed,
)
from maskstudy.experiments.progress import ProgressFile
from maskstudy.experiments.sweep import (
    PointRun, SweepError, expand, load_sweep, point_id, render_command, run_sweep, status_line,
)
from tests.helpers import tiny

SWEEPS = EXPERIMENTS_DIR / "sweeps"


def write(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- expansion ----------------------------------------------------------------------------


def test_table2_lists_every_recipe_and_seed(capsys, tmp_path):
    sweep = load_sweep(SWEEPS / "table2.yaml")
    recipes = ["untrained", "causal", "hybrid_soft", "hybrid_mlp", "hybrid_gq", "bidirectional",
               "scheduler", "ggsm"]
    assert [(p["recipe"], p["seed"]) for p in sweep.points] == [
        (r, s) for s in range(5) for r in recipes]
    for r in recipes:  # every row of the paper's Table 2 has a recipe file
        assert (EXPERIMENTS_DIR / f"{r}.yaml").exists(), r
    # its own output directory: finished points under ./runs would be counted as done
    assert main(["sweep", str(SWEEPS / "table2.yaml"), "--out", str(tmp_path / "table2"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "40 points, 0 finished, 40 to run" in out
    assert out.count("pending") == 40 and "first command: /usr/bin/env maskstudy fit" in out


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_point_of_every_shipped_sweep_composes_a_checked_config(path, request):
    """A mistyped key or value in a sweep file fails here, not after hours of earlier points.
    The sweep's dataset (built by a make target) is stood in for by the fixture of its kind."""
    sweep = load_sweep(path)
    for point in sweep.points:
        recipe, overrides = recipe_and_overrides(render_command(sweep.spec, point)[3:])
        kind = "movielens" if "movielens" in point.get("data.path", "") else "world"
        cfg = load_config(recipe, [*overrides, f"data.path={request.getfixturevalue(kind)}"])
        assert cfg.seed == point.get("seed", 0)
    if path.stem in ("default", "long", "table2"):  # they score zero-shot targeting too
        assert cfg.eval.targeting


def test_a_sweep_crosses_group_options_without_a_recipe_per_combination(tmp_path, movielens):
    """mask x data: every point is a command line of group choices that composes."""
    path = write(tmp_path, "program: maskstudy\nmethod: grid\nparameters:\n"
                           "  mask: {values: [causal, ggsm]}\n"
                           "  data: {values: [world, movielens]}\n"
                           "command:\n  - ${env}\n  - ${program}\n  - fit\n"
                           "  - ${args_no_hyphens}\n")
    sweep = load_sweep(path)
    names = []
    for point in sweep.points:
        command = render_command(sweep.spec, point)
        assert command[2:] == ["fit", f"mask={point['mask']}", f"data={point['data']}"]
        recipe, overrides = recipe_and_overrides(command[3:])
        cfg = load_config(recipe, [*overrides, f"data.path={movielens}", "eval.tasks=[movielens]"])
        assert cfg.choices["mask"] == point["mask"] and cfg.choices["data"] == point["data"]
        names.append(cfg.name)
    assert names == ["causal", "movielens_causal", "ggsm", "movielens_ggsm"]


def test_grid_is_the_product_in_file_order(tmp_path):
    path = write(tmp_path, "method: grid\nprogram: p\ncommand: [a, '${args}']\nparameters:\n"
                           "  x: {values: [1, 2]}\n  y: {values: [a, b, c]}\n  z: {value: 7}\n")
    points = load_sweep(path).points
    assert points == [{"x": x, "y": y, "z": 7} for x in (1, 2) for y in "abc"]
    assert len({point_id(p) for p in points}) == 6
    assert point_id({"y": "a", "x": 1, "z": 7}) == point_id(points[0])  # order-independent


def test_random_draws_are_seeded_and_in_range():
    spec = {"method": "random", "run_cap": 50, "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "steps": {"min": 10, "max": 20}, "temp": {"min": 0.01, "max": 0.1},
        "mask": {"values": ["causal", "ggsm"]}, "seed": {"value": 3}}}
    a, b = expand(spec), expand(spec)
    assert a == b and len(a) == 50
    assert all(1e-4 <= p["lr"] <= 1e-2 and 10 <= p["steps"] <= 20 and isinstance(p["steps"], int)
               and 0.01 <= p["temp"] <= 0.1 and p["seed"] == 3 for p in a)
    assert {p["mask"] for p in a} == {"causal", "ggsm"} and len({p["lr"] for p in a}) == 50
    assert len(expand(spec, count=5)) == 5
    with pytest.raises(SweepError, match="run_cap"):
        expand({**spec, "run_cap": None})


@pytest.mark.parametrize("text,message", [
    ("method: bayes\nparameters: {x: {values: [1]}}\ncommand: ['${args}']", "key 'method'"),
    ("method: grid\ncommand: ['${args}']", "key 'parameters'"),
    ("method: grid\nparameters: {x: {min: 1, max: 2}}\ncommand: ['${args}']",
     "key 'parameters.x': grid search needs value or values"),
    ("method: grid\nparameters: {x: {values: [1]}}\ncommand: [run]", "key 'command'"),
    ("method: grid\nparameters: {x: {values: [1]}}\ncommand: ['${program}', '${args}']",
     "key 'program'"),
    ("method: random\nparameters: {x: {distribution: beta, min: 0, max: 1}}\n"
     "command: ['${args}']", "distribution 'beta'"),
])
def test_bad_sweep_files_name_the_key(tmp_path, text, message):
    with pytest.raises(SweepError, match=message):
        load_sweep(write(tmp_path, text))


def test_command_macros_expand_as_the_agent_does():
    spec = {"program": "maskstudy", "command": ["${env}", "${interpreter}", "${program}", "fit",
                                                 "${args}", "${args_no_hyphens}",
                                                 "${args_json}"]}
    params = {"recipe": "ggsm", "seed": 1, "eval.tasks": ["ggsm"]}
    cmd = render_command(spec, params)
    assert cmd[:4] == ["/usr/bin/env", sys.executable, "maskstudy", "fit"]
    assert cmd[4:7] == ["--recipe=ggsm", "--seed=1", '--eval.tasks=["ggsm"]']
    assert cmd[7:10] == ["recipe=ggsm", "seed=1", 'eval.tasks=["ggsm"]']
    assert json.loads(cmd[10]) == params


def test_fit_takes_recipe_names_and_hyphenated_args(tmp_path):
    recipe, overrides = recipe_and_overrides(["recipe=ggsm", "seed=2", "--trainer.max_steps=5"])
    assert recipe == "ggsm" and overrides == ["seed=2", "trainer.max_steps=5"]
    assert recipe_and_overrides(["experiments/causal.yaml", "a=1"])[0] == "experiments/causal.yaml"
    assert recipe_and_overrides(["mask=ggsm", "data=movielens"]) == (
        None, ["mask=ggsm", "data=movielens"])
    from maskstudy.experiments.config import ConfigError
    with pytest.raises(ConfigError, match="expected at most one recipe"):
        recipe_and_overrides(["causal", "recipe=ggsm"])


# --- running, resuming ----------------------------------------------------------------------


def test_sweep_runs_points_and_resumes_without_rerunning(world, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    path = write(tmp_path, "program: maskstudy\nmethod: grid\nparameters:\n"
                           "  recipe: {values: [causal, hybrid]}\n  seed: {value: 0}\n"
                           "command:\n  - ${env}\n  - ${program}\n  - fit\n"
                           "  - ${args_no_hyphens}\n")
    overrides = [o for o in tiny(world, tmp_path) if not o.startswith("run_root")]
    overrides.append("eval.references=false")
    out = tmp_path / "sweep"
    # an earlier, interrupted sweep already finished the causal point
    planned = run_sweep(path, out, dry_run=True, overrides=overrides, echo=lambda *_: None)
    causal = next(r for r in planned if r.point["recipe"] == "causal")
    done = causal.dir / "causal" / "20260101-000000"
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"name": "causal", "seed": 0}))
    lines = []
    monkeypatch.setattr("maskstudy.experiments.sweep.PRINT_EVERY", 0.5)
    runs = run_sweep(path, out, overrides=overrides, echo=lines.append)
    assert [r.status for r in runs] == ["skipped", "done"]
    assert "2 points, 1 finished, 1 to run" in lines[0]
    # while the point ran, a status line every PRINT_EVERY seconds said where it was
    status = [line for line in lines if line.startswith("[")]
    assert status and all("0 done, 1 running, 0 pending" in line for line in status)
    assert any("hybrid s0 train " in line or "hybrid s0 eval" in line for line in status), status
    hybrid = runs[1]
    (run_dir,) = [p.parent for p in hybrid.dir.glob("hybrid/*/results.json")]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["name"] == "hybrid" and (run_dir / "predictions.npz").exists()
    state = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in state["points"]] == ["skipped", "done"]
    config = (run_dir / "config.yaml").read_text()
    assert f"group: {state['id']}" in config  # the runs are grouped under the sweep id
    # nothing left to do: a rerun starts no process
    again = run_sweep(path, out, overrides=overrides, echo=lambda *_: None)
    assert [r.status for r in again] == ["skipped", "skipped"]


def test_status_line_counts_points_and_reads_their_progress(tmp_path, monkeypatch):
    monkeypatch.setattr("maskstudy.experiments.progress.WRITE_EVERY", 0.0)
    runs = [PointRun({"recipe": r, "seed": 0}, r, tmp_path / r, []) for r in ("a", "b", "c", "d")]
    runs[0].status, runs[0].seconds = "done", 100.0
    runs[1].status = runs[2].status = "running"
    now = time.time()
    progress = ProgressFile(tmp_path / "b" / "b" / "t0")
    progress.path.parent.mkdir(parents=True)
    progress.update("train", 0, 100)
    progress.started = now - 50
    progress.update("train", 50, 100)  # half-way after 50 s: 50 s to go
    line = status_line(runs, start=now - 150, workers=2)
    assert line.startswith("[2.5m elapsed, ~1.7m left] 1 done, 2 running, 1 pending")
    assert "b s0 train 50/100 (ETA 50s)" in line and "c s0 starting" in line


def test_a_failing_point_is_reported_and_retried(tmp_path, capsys):
    path = write(tmp_path, "program: maskstudy\nmethod: grid\nparameters:\n"
                           "  recipe: {value: no_such_recipe}\n"
                           "command:\n  - ${env}\n  - ${program}\n  - fit\n"
                           "  - ${args_no_hyphens}\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 1
    (log,) = (tmp_path / "o" / "points").glob("*/log.txt")
    assert "no_such_recipe" in log.read_text()
    assert "failed" in capsys.readouterr().err
    state = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert state["points"][0]["status"] == "failed"


# --- the report -----------------------------------------------------------------------------


def fabricate(root, name, seed, aucs, scores=None, labels=None, test=None, learning=None):
    """A finished run with known numbers (and, optionally, probe predictions and a learning
    check)."""
    run = root / name / f"s{seed}"
    run.mkdir(parents=True)
    tasks = {f"t{k}": {"auc": a, "ks": a / 2} for k, a in enumerate(aucs)}
    domains = {"t0": "d1", "t1": "d1", "t2": "d2"}
    metrics = {"eval/avg_auc": float(np.mean(aucs)), "eval/avg_ks": float(np.mean(aucs)) / 2}
    results = {"name": name, "seed": seed, "input": "text", "tasks": tasks, "metrics": metrics,
               "domains": domains}
    if learning is not None:
        results["learning"] = learning
    (run / "results.json").write_text(json.dumps(results))
    if scores is not None:
        np.savez(run / "predictions.npz", tasks=np.array(list(tasks)), labels=labels,
                 test=test, scores=scores)
    with open(run / "metrics.csv", "w") as f:
        f.write("step,train/loss,train/grad_norm\n")
        for step in range(40):
            loss = 9.0 if (name == "ggsm" and step == 30) else 1.0 + 0.01 * (step % 3)
            f.write(f"{step},{loss},{0.5 + step / 100}\n")
    return run


def test_report_on_known_numbers(tmp_path):
    rng = np.random.default_rng(0)
    users = 400
    labels = rng.integers(0, 2, (users, 3))
    test = np.zeros((users, 3), dtype=bool)
    test[200:] = True
    for seed, shift in ((0, 0.00), (1, 0.02), (2, -0.01)):
        noise = rng.normal(size=(users, 3))
        causal = np.where(test, noise, np.nan)  # chance
        strong = np.where(test, labels * 2.0 + noise, np.nan)  # far better than chance
        fabricate(tmp_path, "causal", seed, [0.60 + shift, 0.70, 0.80], causal, labels, test)
        fabricate(tmp_path, "ggsm", seed, [0.70 + shift, 0.75, 0.82], strong, labels, test)
        fabricate(tmp_path, "hybrid", seed, [0.60 + shift + 0.001 * seed, 0.70, 0.80],
                  causal, labels, test)
    md = report(tmp_path, rounds=500).read_text()
    # mean +- std over seeds, best in bold, domains named
    mean, std = np.mean([0.70, 0.72, 0.69]), np.std([0.70, 0.72, 0.69], ddof=1)
    assert f"**{mean:.4f} ± {std:.4f}**" in md
    assert "t0 (d1)" in md and "d2 avg" in md
    # ggsm vs causal: real; hybrid: identical predictions, a tiny seed gap -> within noise
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()
            if line.startswith(("| ggsm |", "| hybrid |")) and "[" in line}
    assert "better than causal beyond seed noise" in rows["ggsm"]
    assert "within seed noise" in rows["hybrid"]
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    ggsm = next(c for c in data["comparisons"] if c["recipe"] == "ggsm")
    assert ggsm["diff"] == pytest.approx(np.mean([0.70, 0.75, 0.82]) - np.mean([0.60, 0.70, 0.80]))
    assert ggsm["boot_low"] > 0.2 and ggsm["p"] < 0.01 and ggsm["seeds"] == 3
    assert data["stability"]["ggsm"]["loss_spikes"] == 3  # one spike per seed
    assert data["stability"]["causal"]["loss_spikes"] == 0
    assert data["stability"]["causal"]["grad_norm_max"] == pytest.approx(0.89)
    csv_text = (tmp_path / "report" / "report.csv").read_text()
    assert "ggsm,3,avg_auc," in csv_text
    for fig in ("avg_auc.png", "loss.png"):
        assert (tmp_path / "report" / "figures" / fig).exists()


def test_report_statistics():
    mean, lo, hi = seed_interval([0.01, 0.02, 0.03])
    assert mean == pytest.approx(0.02) and lo < 0.02 < hi
    assert np.isnan(seed_interval([0.01])[1])  # one seed: no interval
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    from sklearn.metrics import roc_auc_score
    idx = np.array([[0, 1, 2, 3, 4, 5], [0, 2, 2, 3, 1, 5]])
    np.testing.assert_allclose(resampled_auc(y, s, idx),
                               [roc_auc_score(y[i], s[i]) for i in idx])
    assert loss_spikes([1.0] * 25 + [5.0] + [1.0] * 5) == 1
    assert loss_spikes([1.0 + 0.1 * (i % 2) for i in range(40)]) == 0


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        collect(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text('{"tasks": {}, "metrics": {}}')
    with pytest.raises(ValueError, match="key 'name' missing"):
        collect(tmp_path)


def test_no_predictions_no_bootstrap_and_reference_rows(tmp_path):
    run = fabricate(tmp_path, "causal", 0, [0.6, 0.7, 0.8])
    fabricate(tmp_path, "ggsm", 0, [0.7, 0.7, 0.8])
    res = json.loads((run / "results.json").read_text())
    boe = {"tasks": {f"t{k}": {"auc": 0.9, "ks": 0.5} for k in range(3)},
           "metrics": {"eval/avg_auc": 0.9, "eval/avg_ks": 0.5}}
    res["references"] = {"bag_of_events": boe}
    (run / "results.json").write_text(json.dumps(res))
    recipes = collect(tmp_path)
    assert bootstrap_difference(recipes["ggsm"], recipes["causal"]) is None
    md = report(tmp_path, rounds=100).read_text()
    assert ("| ggsm | 1 | +0.0333 | - | - | - | - | - | undecided: one seed, training noise "
            "not measured |") in md
    assert "| bag-of-events LR (reference) | 1 | **0.9000 ± 0.0000** |" in md


def test_the_ceiling_is_one_row_whatever_the_input(tmp_path):
    """The ceiling reads the world's latents, not the run's input: text and hierarchical runs
    share its row."""
    for name, source in (("causal", "text"), ("hierarchical_causal", "hierarchical (learned)")):
        run = fabricate(tmp_path, name, 0, [0.7, 0.7, 0.7])
        res = json.loads((run / "results.json").read_text())
        res.update(input=source, references={"ceiling": {
            "tasks": {f"t{k}": {"auc": 0.95, "ks": 0.8} for k in range(3)},
            "metrics": {"eval/avg_auc": 0.95, "eval/avg_ks": 0.8,
                        "eval/by_representation/latents/avg_auc": 0.93}}})
        (run / "results.json").write_text(json.dumps(res))
    assert list(references(collect(tmp_path))) == [
        "ceiling, P(label given the world's latents) (reference)"]
    md = report(tmp_path, rounds=50).read_text()
    assert "| ceiling, P(label given the world's latents) (reference) | 1 | **0.9500" in md


def test_dataset_recipes_are_reported_by_their_mask_recipe(tmp_path):
    """A MovieLens sweep's runs (movielens_causal, ...) compare against movielens_causal."""
    fabricate(tmp_path, "movielens_causal", 0, [0.6, 0.7, 0.8])
    fabricate(tmp_path, "movielens_ggsm", 0, [0.7, 0.7, 0.8])
    assert list(collect(tmp_path)) == ["causal", "ggsm"]
    assert "| ggsm | 1 | +0.0333 |" in report(tmp_path, rounds=100).read_text()
    fabricate(tmp_path, "causal", 1, [0.6, 0.7, 0.8])  # mixed names: kept as they are
    assert set(collect(tmp_path)) == {"movielens_causal", "movielens_ggsm", "causal"}


def test_untrained_and_window_references_are_kept_per_input(tmp_path):
    """Text and hierarchical runs carry different untrained and window references (the bag
    of events on every event is one row); the report shows each."""
    def ref(value):
        return {"tasks": {f"t{k}": {"auc": value, "ks": 0.3} for k in range(3)},
                "metrics": {"eval/avg_auc": value, "eval/avg_ks": 0.3}}
    for name, source, value in (("causal", "text", 0.6),
                                ("hierarchical_causal", "hierarchical (learned)", 0.75)):
        run = fabricate(tmp_path, name, 0, [0.7, 0.7, 0.7])
        res = json.loads((run / "results.json").read_text())
        res.update(input=source, references={"untrained": ref(value),
                                             "bag_of_events_window": ref(value + 0.1),
                                             "bag_of_events": ref(0.9)})
        (run / "results.json").write_text(json.dumps(res))
    refs = references(collect(tmp_path))
    assert {n: r.runs[0].results["metrics"]["eval/avg_auc"] for n, r in refs.items()} == {
        "untrained backbone (reference)": 0.6,
        "bag-of-events LR, the encoder's window (reference)": 0.7,
        "bag-of-events LR (reference)": 0.9,
        "untrained backbone, hierarchical (learned) input (reference)": 0.75,
        "bag-of-events LR, the encoder's window, hierarchical (learned) input (reference)":
            0.85}
    md = report(tmp_path, rounds=50).read_text()
    assert "2 runs, 2 recipes" in md  # references apart
    # each recipe against the untrained model of its own input, paired by seed
    gains = {g["recipe"]: g for g in json.loads(
        (tmp_path / "report" / "report.json").read_text())["against_untrained"]}
    assert gains["causal"]["diff"] == pytest.approx(0.1)
    assert gains["hierarchical_causal"]["diff"] == pytest.approx(-0.05)
    assert gains["hierarchical_causal"]["reference"].startswith("untrained backbone, hierarchical")
    assert "## Against the untrained model (average AUC)" in md


def test_untrained_recipe_stands_for_text_runs_only(tmp_path):
    """With an ``untrained`` recipe in the sweep, text runs are read against it and their
    carried reference disappears; a hierarchical run keeps its own, in the gains and in the
    reference rows alike."""
    fabricate(tmp_path, "untrained", 0, [0.65, 0.65, 0.65])
    for name, source in (("causal", "text"), ("hierarchical_causal", "hierarchical")):
        run = fabricate(tmp_path, name, 0, [0.7, 0.7, 0.7])
        res = json.loads((run / "results.json").read_text())
        res.update(input=source, references={"untrained": {
            "tasks": {f"t{k}": {"auc": 0.6, "ks": 0.3} for k in range(3)},
            "metrics": {"eval/avg_auc": 0.6, "eval/avg_ks": 0.3}}})
        (run / "results.json").write_text(json.dumps(res))
    recipes = collect(tmp_path)
    assert list(references(recipes)) == [
        "untrained backbone, hierarchical input (reference)"]
    gains = {g["recipe"]: g for g in against_untrained(recipes)}
    assert gains["causal"]["reference"] == "untrained"
    assert gains["causal"]["diff"] == pytest.approx(0.05)
    assert gains["hierarchical_causal"]["diff"] == pytest.approx(0.1)


def test_gains_over_untrained_per_representation(tmp_path):
    """The embedding and the pooled state are each read against the same representation of
    the untrained model; a reference without them leaves their cells empty, not zero."""
    def metrics(projected, pooled):
        return {"eval/avg_auc": projected, "eval/avg_ks": 0.3,
                "eval/by_representation/projected/avg_auc": projected,
                "eval/by_representation/pooled/avg_auc": pooled}

    for seed, (run_pooled, ref_pooled) in enumerate([(0.78, 0.74), (0.80, 0.74)]):
        run = fabricate(tmp_path, "causal", seed, [0.7, 0.7, 0.7])
        res = json.loads((run / "results.json").read_text())
        res["metrics"] |= metrics(0.7, run_pooled)
        res["references"] = {"untrained": {
            "tasks": {f"t{k}": {"auc": 0.69, "ks": 0.3} for k in range(3)},
            "metrics": metrics(0.69, ref_pooled)}}
        (run / "results.json").write_text(json.dumps(res))
    md = report(tmp_path, rounds=50).read_text()
    (gain,) = json.loads((tmp_path / "report" / "report.json").read_text())["against_untrained"]
    assert gain["diff"] == pytest.approx(0.01)
    assert gain["by_representation"]["projected"]["diff"] == pytest.approx(0.01)
    assert gain["by_representation"]["pooled"]["diff"] == pytest.approx(0.05)
    assert gain["by_representation"]["pooled"]["seed_low"] < 0.05 < gain[
        "by_representation"]["pooled"]["seed_high"]
    assert "| Δ projected, interval | Δ pooled, interval |" in md
    assert "| causal | untrained backbone (reference) | 2 | +0.0100 |" in md
    assert "| +0.0500 [" in md

    for seed in (0, 1):  # a reference cached before it held every representation
        path = tmp_path / "causal" / f"s{seed}" / "results.json"
        res = json.loads(path.read_text())
        del res["references"]["untrained"]["metrics"]["eval/by_representation/pooled/avg_auc"]
        path.write_text(json.dumps(res))
    report(tmp_path, rounds=50)
    (gain,) = json.loads((tmp_path / "report" / "report.json").read_text())["against_untrained"]
    assert set(gain["by_representation"]) == {"projected"}


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_spec_is_built_offline(tmp_path, capsys):
    spec = workspace_json(build_workspace("table2-abc", ["concert", "login"], ["user_prediction"],
                                          entity="team", project="maskstudy"))
    assert spec["entity"] == "team" and spec["project"] == "maskstudy"
    text = json.dumps(spec)
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == list(SECTIONS)
    for key in ("eval/avg_auc", "eval/concert/auc", "eval/login/auc",
                "eval/user_prediction/avg_auc", "train/loss", "mask/alpha",
                "mask/future_weight_mean", "mask/heatmap", "val/retrieval_acc",
                "val/retrieval_chance", "train/kept_chance", "train/user_spread",
                "learning/passed"):
        assert key in text, key
    assert "table2-abc" in text and "logging.group" in text  # runs filtered to the sweep
    # the CLI reads the sweep id from a sweep directory
    (tmp_path / "sweep.json").write_text(json.dumps({"id": "default-123"}))
    assert main(["dashboard", str(tmp_path), "--entity", "team", "--dry-run"]) == 0
    assert "default-123" in capsys.readouterr().out
    assert main(["dashboard", str(tmp_path / "missing"), "--dry-run"]) == 2


@pytest.mark.parametrize("command", ["sweep", "report", "dashboard"])
def test_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert f"usage: maskstudy {command}" in out


def test_report_tables_reach_offline_wandb(tmp_path, monkeypatch):
    from tests.wandb_records import history, wait_until_closed

    monkeypatch.setenv("WANDB_MODE", "offline")
    for seed in (0, 1):
        fabricate(tmp_path, "causal", seed, [0.6, 0.7, 0.8])
        fabricate(tmp_path, "ggsm", seed, [0.7, 0.7, 0.8 + seed / 100])
    report(tmp_path, rounds=50, wandb_table=True)
    (wandb_file,) = tmp_path.glob("report/wandb/offline-run-*/run-*.wandb")
    wait_until_closed(wandb_file)
    keys = {k for row in history(wandb_file) for k in row}
    assert "report/table/_type" in keys and "report/vs_causal/_type" in keys
    assert "report/avg_auc/_type" in keys  # the figure as an image


# --- calibrated verdicts and the learning check -----------------------------------------------


def check(passed: bool, trained: bool = True, **extra) -> dict:
    """A learning check as results.json carries it."""
    return {"loss": 2.0, "kept_chance": 3.8, "loss_ratio": 0.53, "retrieval_acc": 0.4,
            "retrieval_chance": 0.0625, "retrieval_ratio": 6.4, "user_spread": 0.05,
            "spread_isotropic": 0.088, "user_rank": 20.0, "trained": trained,
            "collapsed": not passed, "passed": passed,
            "reasons": [] if passed else ["collapse detected at step 20"], **extra}


def test_a_single_bootstrap_never_turns_a_verdict(tmp_path):
    """One seed with predictions far apart: the bootstrap interval excludes 0, yet the
    verdict stays undecided because training noise was not measured."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (300, 3))
    test = np.zeros((300, 3), dtype=bool)
    test[100:] = True
    noise = rng.normal(size=(300, 3))
    fabricate(tmp_path, "causal", 0, [0.5] * 3, np.where(test, noise, np.nan), labels, test)
    fabricate(tmp_path, "ggsm", 0, [0.9] * 3, np.where(test, labels * 3.0 + noise, np.nan),
              labels, test)
    report(tmp_path, rounds=200)
    (row,) = json.loads((tmp_path / "report" / "report.json").read_text())["comparisons"]
    assert row["boot_low"] > 0.2  # test-user noise alone would call it
    assert row["verdict"] == "undecided: one seed, training noise not measured"


def test_minimum_detectable_effect_and_seeds_needed():
    from scipy import stats

    sd = 0.01
    n = 5
    expected = (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * sd / np.sqrt(5)
    assert detectable_effect(sd, n) == pytest.approx(expected)
    assert np.isnan(detectable_effect(sd, 1))
    need = seeds_needed(sd, 0.004)
    assert detectable_effect(sd, need) <= 0.004 < detectable_effect(sd, need - 1)
    assert 45 < need < 60  # about ((1.96 + 0.84) * 0.01 / 0.004)^2 = 49, a little more for t
    assert seeds_needed(0.0, 0.004) == 2


def test_aa_false_positive_rate_is_measured_on_disjoint_seed_groups(tmp_path):
    """12 seeds of pure noise for one recipe: the seed rule's A/A false-positive rate comes
    out near its nominal 5%; a recipe with fewer than 4 seeds takes no part."""
    rng = np.random.default_rng(1)
    for seed in range(12):
        fabricate(tmp_path, "causal", seed, list(0.7 + 0.01 * rng.normal(size=3)))
    for seed in range(3):
        fabricate(tmp_path, "ggsm", seed, [0.7, 0.7, 0.7])
    aa = aa_false_positive_rate(collect(tmp_path))
    assert aa["recipes"] == ["causal"]
    assert aa["comparisons"] == 200  # C(11, 5) = 462 splits with seed 0 in group 1, capped
    assert 0.0 <= aa["rate"] <= 0.15
    md = report(tmp_path, rounds=50).read_text()
    assert f"{aa['false_positives']} of 200 comparisons" in md
    # a recipe that always differs between its seed groups is caught as a false positive
    shifted = tmp_path / "shifted"
    for seed in range(4):
        fabricate(shifted, "causal", seed, [0.7 + (0.05 if seed % 2 else 0.0) + 0.001 * seed] * 3)
    aa = aa_false_positive_rate(collect(shifted))
    assert aa["comparisons"] == 3 and aa["false_positives"] >= 1


def test_runs_that_did_not_learn_are_listed_and_left_out(tmp_path):
    fabricate(tmp_path, "causal", 0, [0.6, 0.6, 0.6], learning=check(True))
    fabricate(tmp_path, "causal", 1, [0.9, 0.9, 0.9], learning=check(False))  # collapsed
    fabricate(tmp_path, "untrained", 0, [0.55] * 3, learning=check(False, trained=False))
    md = report(tmp_path, rounds=50).read_text()
    assert "## Did the runs learn?" in md
    assert "| causal | 1 | 0.400 (6.4x) |" in md and "FAILED: collapse detected at step 20" in md
    assert "reference (untrained)" in md  # the untrained row is expected at chance
    table = json.loads((tmp_path / "report" / "report.json").read_text())["table"]
    assert table["causal"]["avg_auc"][0] == pytest.approx(0.6)  # the collapsed 0.9 is not read
    assert table["untrained"]["avg_auc"][0] == pytest.approx(0.55)
    stability = json.loads((tmp_path / "report" / "report.json").read_text())["stability"]
    assert set(stability) == {"causal"}  # the untrained run has no training to describe
    # nothing learned: the report is the learning table and says so
    only_failed = tmp_path / "failed"
    fabricate(only_failed, "causal", 0, [0.9] * 3, learning=check(False))
    md = report(only_failed, rounds=50).read_text()
    assert "No trained run passed its learning check" in md


def test_the_report_sets_the_scenario_query_beside_the_fixed_one(tmp_path):
    """Runs probed under eval.query: task carry both protocols' averages; the report pairs
    them by seed and decides across seeds."""
    for seed, gain in ((0, 0.030), (1, 0.034), (2, 0.026)):
        for name, delta in (("causal", gain), ("hybrid", 0.001 * (seed - 1))):
            run = fabricate(tmp_path, name, seed, [0.6, 0.7, 0.8])
            results = json.loads((run / "results.json").read_text())
            fixed = results["metrics"]["eval/avg_auc"]
            results["metrics"].update({"eval/by_query/fixed/avg_auc": fixed,
                                       "eval/by_query/task/avg_auc": fixed + delta})
            (run / "results.json").write_text(json.dumps(results))
    md = report(tmp_path, rounds=100).read_text()
    assert "## Scenario query against the fixed query" in md
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()
            if "| 3 |" in line and ("task query" in line or "within seed noise" in line)}
    assert "task query better beyond seed noise" in rows["causal"] and "+0.0300" in rows["causal"]
    assert "within seed noise" in rows["hybrid"]
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["recipe"] for r in data["query_protocols"]} == {"causal", "hybrid"}


def test_the_query_as_anchor_table_and_ablations_against_qanchor(tmp_path):
    """Without causal in the sweep, qanchor is the baseline its ablations are read against;
    runs that logged both protocols per task get the per-task table of both queries."""
    for seed in range(3):
        for name, shift in (("qanchor", 0.0), ("qanchor_no_ntp", -0.02 - 0.002 * seed)):
            aucs = [0.70 + shift + 0.01 * seed, 0.75 + shift, 0.80 + shift]
            run = fabricate(tmp_path, name, seed, aucs)
            results = json.loads((run / "results.json").read_text())
            m = results["metrics"]
            for protocol, delta in (("fixed", -0.05), ("task", 0.0)):
                for k, auc in enumerate(aucs):
                    m[f"eval/by_query/{protocol}/t{k}/auc"] = auc + delta
                    m[f"eval/by_query/{protocol}/t{k}/ks"] = (auc + delta) / 2
                m[f"eval/by_query/{protocol}/avg_auc"] = float(np.mean(aucs)) + delta
                m[f"eval/by_query/{protocol}/avg_ks"] = (float(np.mean(aucs)) + delta) / 2
            (run / "results.json").write_text(json.dumps(results))
    md = report(tmp_path, rounds=50).read_text()
    assert "## Against qanchor (average AUC)" in md
    assert "worse than qanchor beyond seed noise" in md
    assert "## Query-as-Anchor table: fixed query and scenario query per task" in md
    assert "| qanchor | fixed query | 3 | 0.6600 ± 0.0100 |" in md
    assert "| qanchor | scenario query | 3 | **0.7100 ± 0.0100** |" in md
    table = json.loads((tmp_path / "report" / "report.json").read_text())["scenario_table"]
    assert table["qanchor_no_ntp (scenario query)"]["seeds"] == 3
    assert table["qanchor (fixed query)"]["avg_auc"][0] == pytest.approx(0.75 + 0.01 / 3 - 0.05)


def test_the_report_adds_the_transfer_tables_from_the_files_beside_each_run(tmp_path):
    """targeting.json, tuned/*/results.json and fewshot/results.json beside the runs become
    the targeting, prompt-tuning and few-shot tables, averaged over tasks, then seeds."""
    for seed in (0, 1):
        run = fabricate(tmp_path, "qanchor", seed, [0.7, 0.75, 0.8])
        (run / "targeting.json").write_text(json.dumps({
            "tasks": {"t0": {"auc": 0.60 + 0.02 * seed}, "t1": {"auc": 0.70}},
            "metrics": {"avg_auc": 0.65 + 0.01 * seed, "avg_recall_at_k": 0.4,
                        "avg_auc_raw": 0.55, "avg_auc_activity": 0.62,
                        "avg_abs_activity_rho": 0.3 + 0.1 * seed}}))
        for task, base in (("t0", 0.6), ("t1", 0.7)):
            for size in (1, 6):
                out = run / "tuned" / f"{task}-p{size}-s200-seed0"
                out.mkdir(parents=True)
                tuned = base + 0.01 * size + 0.02 * seed
                out.joinpath("results.json").write_text(json.dumps({
                    "task": task, "tune": {"prompt_tokens": size},
                    "tuned": {"auc": tuned}, "probe": {"auc": base + 0.05},
                    "base": {"auc": base},
                    "history": [{"step": 100, "auc": tuned - 0.01},
                                {"step": 200, "auc": tuned}]}))
        (run / "fewshot").mkdir()
        (run / "fewshot" / "results.json").write_text(json.dumps({"tasks": {
            "t0": {"zero_shot": 0.6, "shots": {"8": {"fewshot": [0.62, 0.64],
                                                     "probe": [0.58, 0.60]},
                                              "128": {"skipped": "too few"}}},
            "t1": {"zero_shot": 0.7, "shots": {"8": {"fewshot": [0.72], "probe": [0.7]},
                                              "128": {"fewshot": [0.8], "probe": [0.8]}}}}}))
    md = report(tmp_path, rounds=50).read_text()
    assert "## Zero-shot targeting (AUC per task)" in md
    assert ("| qanchor | 2 | 0.6100 ± 0.0141 | 0.7000 ± 0.0000 | 0.6550 ± 0.0071 "
            "| 0.4000 ± 0.0000 | 0.5500 ± 0.0000 | 0.6200 ± 0.0000 | 0.3500 ± 0.0707 |") in md
    assert "## Prompt tuning (average AUC over the tuned tasks)" in md
    # per seed the average over t0 and t1: 0.65 + 0.01 K + 0.02 s
    assert "| qanchor | 2 | 1 | 2 | 0.7000 ± 0.0000 | 0.6500 ± 0.0000 | 0.6700 ± 0.0141 |" in md
    assert "| qanchor | 2 | 6 | 2 | 0.7000 ± 0.0000 | 0.6500 ± 0.0000 | 0.7200 ± 0.0141 |" in md
    assert "| qanchor | 0.7100 ± 0.0141 | 0.7200 ± 0.0141 |" in md  # K = 6 by step
    assert "## Few-shot targeting (average AUC over tasks)" in md
    # k = 8 over both tasks: fewshot (0.63 + 0.72) / 2; k = 128 only over t1 (t0 skips it)
    assert "| qanchor | 2 | 8 | 2 | 0.6500 ± 0.0000 | 0.6750 ± 0.0000 | 0.6450 ± 0.0000 |" in md
    assert "| qanchor | 2 | 128 | 1 | 0.7000 ± 0.0000 | 0.8000 ± 0.0000 | 0.8000 ± 0.0000 |" in md
    data = json.loads((tmp_path / "report" / "report.json").read_text())["transfer"]
    assert set(data) == {"targeting", "prompt_tuning", "fewshot"}


def test_the_report_names_the_parameters_every_sweep_point_shared(tmp_path):
    for k, (name, seed) in enumerate([("causal", 0), ("causal", 1), ("hybrid", 0)]):
        point = tmp_path / "points" / f"p{k}"
        fabricate(point, name, seed, [0.6, 0.7, 0.8])
        (point / "point.json").write_text(json.dumps({"id": f"p{k}", "parameters": {
            "recipe": name, "seed": seed, "trainer.max_steps": 400,
            "encoder.pooling": "mean"}}))
    md = report(tmp_path, rounds=50).read_text()
    assert "Every run: `trainer.max_steps=400 encoder.pooling=mean`" in md
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["shared_settings"] == {"trainer.max_steps": 400, "encoder.pooling": "mean"}
    # a run no sweep started: nothing can be said of every run
    fabricate(tmp_path / "extra", "bidirectional", 0, [0.6, 0.7, 0.8])
    assert "Every run:" not in report(tmp_path, rounds=50).read_text()
    # a broken point file is named, not skipped
    (tmp_path / "points" / "p0" / "point.json").write_text("{")
    with pytest.raises(ValueError, match="p0/point.json: not a sweep point file"):
        report(tmp_path, rounds=50)


def test_a_broken_file_below_a_sweep_ends_the_report_command_with_one_line(tmp_path, capsys):
    run = fabricate(tmp_path / "points" / "p0", "causal", 0, [0.6, 0.7, 0.8])
    (tmp_path / "points" / "p0" / "point.json").write_text("{")
    assert main(["report", str(tmp_path)]) == 2
    assert "p0/point.json: not a sweep point file" in capsys.readouterr().err
    (tmp_path / "points" / "p0" / "point.json").unlink()
    (run / "results.json").write_text('{"metrics": {}, "tasks": {}}')
    assert main(["report", str(tmp_path)]) == 2
    assert "key 'name' missing: not a maskstudy results file" in capsys.readouterr().err


def test_a_setting_swept_beside_the_recipes_gets_rows_references_and_comparisons(tmp_path):
    """encoder.pooling swept beside the recipes: each value is a row of its own, read against
    the baseline and the untrained model of its value, and each recipe's other value against
    its first in the sweep file's order (user_token before mean), paired by seed."""
    def point(pid, recipe, seed, pooling, aucs, untrained, run="s0"):
        root = tmp_path / "points" / pid
        if not root.exists():
            path = fabricate(root, recipe, seed, aucs) / "results.json"
            res = json.loads(path.read_text())
            res["references"] = {
                "untrained": {"tasks": {f"t{k}": {"auc": untrained, "ks": 0.1}
                                        for k in range(3)},
                              "metrics": {"eval/avg_auc": untrained, "eval/avg_ks": 0.1}},
                "bag_of_events": {"tasks": {f"t{k}": {"auc": 0.9, "ks": 0.4} for k in range(3)},
                                  "metrics": {"eval/avg_auc": 0.9, "eval/avg_ks": 0.4}}}
            path.write_text(json.dumps(res))
        else:  # the same point run again: another run directory beside the first
            shutil.copytree(root / recipe / f"s{seed}", root / recipe / run)
        (root / "point.json").write_text(json.dumps({"id": pid, "parameters": {
            "recipe": recipe, "seed": seed, "encoder.pooling": pooling}}))

    (tmp_path / "sweep.json").write_text(json.dumps({"spec": {"parameters": {
        "recipe": {"values": ["causal", "hybrid"]}, "seed": {"values": [0, 1]},
        "encoder.pooling": {"values": ["user_token", "mean"]}}}}))
    for seed in (0, 1):
        for recipe, lift in (("causal", 0.0), ("hybrid", 0.01)):
            point(f"{recipe}{seed}u", recipe, seed, "user_token",
                  [0.6 + lift, 0.7, 0.8 + 0.003 * seed], untrained=0.6)
            point(f"{recipe}{seed}m", recipe, seed, "mean",
                  [0.65 + lift, 0.75, 0.85 + 0.006 * seed], untrained=0.62)
    point("causal0u", "causal", 0, "user_token", [], 0.6, run="s9")  # a rerun is read once
    md = report(tmp_path, rounds=20).read_text()
    assert "Varied beside the recipes: `encoder.pooling`" in md
    assert "| causal [encoder.pooling=user_token] | 2 |" in md
    assert "| hybrid [encoder.pooling=mean] | 2 |" in md
    # the untrained model differs by pooling: a row per value; the bag of events is one row
    assert "| untrained backbone (reference) [encoder.pooling=mean] | 2 |" in md
    assert "| bag-of-events LR (reference) | 2 |" in md
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["varied_settings"] == ["encoder.pooling"]
    assert "encoder.pooling" not in data["shared_settings"]
    against = {r["recipe"]: r for r in data["comparisons"]}
    assert against["hybrid [encoder.pooling=mean]"]["baseline"] == "causal [encoder.pooling=mean]"
    assert against["hybrid [encoder.pooling=mean]"]["diff"] == pytest.approx(0.01 / 3)
    gains = {r["recipe"]: r for r in data["against_untrained"]}
    mean_gain = gains["causal [encoder.pooling=mean]"]
    assert mean_gain["reference"] == "untrained backbone (reference) [encoder.pooling=mean]"
    assert mean_gain["diff"] == pytest.approx((0.65 + 0.75 + 0.853) / 3 - 0.62)
    across = {r["recipe"]: r for r in data["across_variants"]}
    assert set(across) == {"causal [encoder.pooling=mean]", "hybrid [encoder.pooling=mean]"}
    causal = across["causal [encoder.pooling=mean]"]
    assert causal["baseline"] == "causal [encoder.pooling=user_token]"
    assert causal["seeds"] == 2
    assert causal["diff"] == pytest.approx(0.0505)  # per seed 0.05 + 0.003 s / 3, s in 0, 1
    assert "## Across `encoder.pooling` (average AUC)" in md
    assert ("| causal [encoder.pooling=mean] | causal [encoder.pooling=user_token] | 2 | "
            "+0.0505 |") in md

def test_two_sweep_directories_read_as_one_sweep_that_varies_their_difference(tmp_path, capsys):
    """The study at its defaults and again with encoder.pooling=mean, each in its own
    directory: read together, the setting names the runs (the first directory's first)."""
    for sweep, extra, lift in (("plain", {}, 0.0), ("mean", {"encoder.pooling": "mean"}, 0.02)):
        for seed in (0, 1):
            root = tmp_path / sweep / "points" / f"causal{seed}"
            fabricate(root, "causal", seed, [0.6 + lift + 0.01 * seed, 0.7, 0.8])
            (root / "point.json").write_text(json.dumps({"id": f"causal{seed}", "parameters": {
                "recipe": "causal", "seed": seed, "trainer.max_steps": 400, **extra}}))
    dirs = [tmp_path / "plain", tmp_path / "mean"]
    assert list(collect(dirs)) == ["causal [encoder.pooling=(default)]",
                                   "causal [encoder.pooling=mean]"]
    assert list(collect(dirs[::-1]))[0] == "causal [encoder.pooling=mean]"
    assert main(["report", *map(str, dirs)]) == 2
    assert "needs an output directory (--out)" in capsys.readouterr().err
    assert main(["report", *map(str, dirs), "--out", str(tmp_path / "both"),
                 "--rounds", "20"]) == 0
    md = (tmp_path / "both" / "report.md").read_text()
    assert md.startswith("# Report: plain + mean")
    assert "Every run: `recipe=causal trainer.max_steps=400`" in md
    assert ("| causal [encoder.pooling=mean] | causal [encoder.pooling=(default)] | 2 | "
            "+0.0067 |") in md

"""Configs compose from the schema's defaults, group options, recipes and overrides; every
config mistake fails before training, naming its key."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import yaml

from maskstudy.datamodules.datamodules import DataConfig
from maskstudy.experiments.config import (
    DEFAULT_CHOICES, EXPERIMENTS_DIR, GROUPS, ConfigError, ExperimentConfig, group_file,
    group_options,
    load_config, to_yaml,
)
from maskstudy.lightning_modules.module import OptimConfig

RECIPES = sorted(p for p in EXPERIMENTS_DIR.glob("*.yaml"))


@pytest.fixture
def data_ok(world):
    return [f"data.path={world}"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_composes(recipe, data_ok):
    cfg = load_config(recipe, data_ok)
    assert cfg.name == recipe.stem and cfg.choices["recipe"] == recipe.stem
    assert cfg.optim.total_steps == cfg.trainer.max_steps  # follows unless set
    assert cfg.description  # every mask option describes itself


def flat_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        if isinstance(value, dict) and key not in ("options", "caps"):
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_recipes_pick_from_groups_and_hold_only_their_differences():
    """A recipe is its group choices (or the recipe it extends) plus the keys that make it
    what it is: no recipe sets a key a group option owns (a mask, a schedule, a dataset, an
    input mode), so ``group=option`` on the command line always takes effect."""
    owned = set()
    for group in GROUPS:
        for option in group_options(group):
            owned |= flat_keys(yaml.safe_load(group_file(group, option).read_text()) or {})
    owned -= {"description"}  # every recipe and mask option describes itself
    assert {"mask.name", "schedule.prewarmup", "data.path", "input.mode", "eval.tasks"} <= owned
    for recipe in RECIPES:
        node = yaml.safe_load(recipe.read_text()) or {}
        assert "defaults" in node or "extends" in node, recipe
        assert not flat_keys(node) & owned, (recipe, flat_keys(node) & owned)
    for group in GROUPS:
        assert DEFAULT_CHOICES[group] in group_options(group)


def test_groups_combine_on_the_command_line(movielens):
    """``mask=ggsm data=movielens input=hierarchical`` with no recipe file: the mask option's
    settings, MovieLens' data and tasks, one token per event; the name says the choices."""
    cfg = load_config(None, ["mask=ggsm", "data=movielens", "input=hierarchical",
                             f"data.path={movielens}"])
    ggsm = load_config("ggsm", [f"data.path={movielens}", "eval.tasks=[movielens]"])
    assert cfg.mask == ggsm.mask and cfg.schedule == ggsm.schedule and cfg.mask.name == "soft"
    assert list(cfg.eval.tasks) == ["movielens"] and cfg.data.caps["rating"] == 250
    assert cfg.input.mode == "hierarchical" and cfg.data.probe_fraction == 0.5
    assert cfg.name == "movielens_hierarchical_ggsm"
    assert cfg.choices == {"data": "movielens", "input": "hierarchical", "mask": "ggsm"}
    named = load_config("untrained", [f"data.path={movielens}", "data=movielens"])
    assert named.name == "movielens_untrained" and not named.trainer.train
    assert "choices:" in to_yaml(cfg) and "input: hierarchical" in to_yaml(cfg)


def test_a_saved_config_loads_back_as_it_was(tmp_path, movielens):
    cfg = load_config("ggsm", ["data=movielens", f"data.path={movielens}", "seed=3"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "config.yaml") == cfg


def test_a_users_config_directory_adds_groups_and_recipes(tmp_path, monkeypatch, data_ok):
    (tmp_path / "mask").mkdir()
    (tmp_path / "mask" / "wide_soft.yaml").write_text(textwrap.dedent("""\
        description: soft weights opened half-way from the start
        mask: {name: soft, options: {positions: 64, init: 0.5}}
        """))
    (tmp_path / "mine.yaml").write_text("defaults: {mask: wide_soft}\ntrainer: {max_steps: 70}\n")
    monkeypatch.setenv("MASKSTUDY_CONFIG_PATH", str(tmp_path))
    cfg = load_config("mine", data_ok)
    assert cfg.mask.options == {"positions": 64, "init": 0.5} and cfg.trainer.max_steps == 70
    assert cfg.name == "mine" and cfg.choices["mask"] == "wide_soft"
    assert load_config(None, [*data_ok, "mask=wide_soft"]).name == "wide_soft"
    assert "wide_soft" in group_options("mask") and "ggsm" in group_options("mask")


def test_a_pretrained_backbone_reads_its_own_tokenizer_unless_told(data_ok, tmp_path):
    pretrained = [*data_ok, f"backbone.name_or_path={tmp_path}", "pretrain.steps=0"]
    assert load_config("causal", pretrained).data.tokenizer == str(tmp_path)
    chosen = load_config("causal", [*pretrained, f"data.tokenizer={tmp_path / 't.json'}"])
    assert chosen.data.tokenizer == str(tmp_path / "t.json")
    assert load_config("causal", data_ok).data.tokenizer is None  # the dataset's own BPE


def test_python_built_configs_run_the_same_experiment(data_ok):
    """The defaults have one owner: a section built in Python equals the composed one."""
    composed = load_config(None, data_ok)
    built = ExperimentConfig(data=dataclasses.replace(DataConfig(), path=data_ok[0].split("=")[1]),
                             description=composed.description)
    assert dataclasses.replace(built, choices=composed.choices) == composed
    assert OptimConfig().lr == composed.optim.lr and DataConfig().max_tokens == composed.data.max_tokens


def test_overrides_apply(data_ok):
    cfg = load_config(EXPERIMENTS_DIR / "hybrid.yaml",
                      data_ok + ["trainer.max_steps=50", "mask.name=causal", "eval.tasks=[qanchor]"])
    assert cfg.trainer.max_steps == 50 and cfg.optim.total_steps == 50
    assert cfg.mask.name == "causal" and cfg.eval.tasks == ["qanchor"]
    assert "max_steps: 50" in to_yaml(cfg)


@pytest.mark.parametrize("override,message", [
    ("data.batchsize=3", "key 'data.batchsize'"),
    ("trainer.max_steps=abc", "key 'trainer.max_steps'"),
    ("mask.name=hybird", "key 'mask.name': unknown mask 'hybird'"),
    ("mask.target=nomodule", "key 'mask.target': mask.target 'nomodule': expected"),
    ("mask.inference=bidi", "key 'mask.inference'"),
    ("optim.warmup_steps=400", "key 'optim.warmup_steps': 400 >= optim.total_steps 300"),
    ("data.anchor=false", "key 'encoder.pooling': user_token pooling needs the <USER> anchor"),
    ("encoder.pooling=max", "key 'encoder.pooling': unknown pooling"),
    ("mask.options.init=0.3", "key 'mask.options'"),
    ("eval.tasks=[conert]", "key 'eval.tasks': unknown task 'conert'"),
    ("loss.temperature=0", "key 'loss.temperature'"),
    ("data.batch_size=1", "key 'data.batch_size'"),
    ("logging.mode=sometimes", "key 'logging.mode'"),
    ("backbone.heads=3", "key 'backbone.hidden_size'"),
    ("data.path=/nonexistent/world", "key 'data.path': /nonexistent/world: no such file"),
    ("eval.tasks=[movielens]", "key 'eval.tasks': .*task 'horror': rule modality 'rating': "
                               "the dataset has"),
    ("eval.tasks=[female]", "key 'eval.tasks': task 'female' reads column 'attr_gender'"),
    ("data.history_days=60", "key 'data.history_days': data.history_days is 60, but"),
    ("eval.sparse_tasks=drop", "key 'eval.sparse_tasks'"),
    ("eval.c=0", "key 'eval.c': expected a positive number, or null"),
    ("data.scenarios_per_user=-1", "key 'data.scenarios_per_user': expected a whole number"),
    ("data.scenarios_per_user=1 data.scenario_tasks=[conert]",
     "key 'data.scenario_tasks': unknown task 'conert'"),
    ("data.scenarios_per_user=1 data.scenario_tasks=[female]",
     "key 'data.scenario_tasks': task 'female' reads column 'attr_gender'"),
    ("loss.ntp_weight=-0.5", "key 'loss.ntp_weight': must be >= 0"),
    ("eval.tasks=[nowhere.yaml]", "key 'eval.tasks': task file 'nowhere.yaml' not found"),
    ("input.mode=tree", "key 'input.mode': 'tree': expected one of"),
    ("input.event_encoder=gte", "key 'input.event_encoder': 'gte'"),
    ("input.hash_buckets=1", "key 'input.hash_buckets': 1: expected at least 2"),
    ("input.mode=hierarchical data.activity_header=true",
     "key 'data.activity_header': a header of text segments"),
    ("input.mode=hierarchical input.event_encoder=text input.text_encoder=/no/model",
     "key 'input.text_encoder': /no/model: no such model directory"),
    ("encoder.pooling=global_token", "key 'encoder.pooling': global_token pooling reads"),
    ("mask.inference=soft", "key 'mask.inference': 'soft': the inference mask has no trained"),
    ("mask.name=mlp mask.options.init=0", "key 'mask.options': mlp mask init=0"),
    ("mask.name=mlp mask.options.hidden_size=8",
     "key 'mask.options': mlp mask hidden_size is set from the backbone"),
    ("eval.ceiling=true eval.references=false",
     "key 'eval.ceiling': the ceiling is a reference row"),
])
def test_bad_values_name_the_key(override, message, data_ok):
    overrides = override.split()
    if not override.startswith("data.path"):
        overrides = data_ok + overrides
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(EXPERIMENTS_DIR / "hybrid.yaml", overrides)


def test_the_ceiling_needs_a_synthetic_world(movielens):
    """Only a world written by the generator has latents to condition on: elsewhere the
    ceiling fails before training, naming the file it looked for."""
    with pytest.raises(ConfigError, match=f"key 'eval.ceiling': {movielens}/world.json: no "
                                          f"world.json"):
        load_config("causal", [f"data.path={movielens}", "eval.tasks=[movielens]",
                               "eval.ceiling=true"])


def test_an_ablation_extends_its_recipe_and_holds_only_what_it_changes(data_ok, tmp_path):
    base, ablation = load_config("qanchor", data_ok), load_config("qanchor_no_ntp", data_ok)
    assert base.loss.ntp_weight == 1.0 and ablation.loss.ntp_weight == 0.0
    assert ablation.input.mode == "hierarchical" and ablation.eval.query == "task"
    assert ablation.name == "qanchor_no_ntp"
    assert load_config("qanchor_no_ntp", data_ok + ["input=text"]).input.mode == "text"
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="key 'extends': recipes extend each other in a cycle"):
        load_config(tmp_path / "a.yaml", data_ok)
    (tmp_path / "c.yaml").write_text("extends: nosuchrecipe\n")
    with pytest.raises(ConfigError, match="recipe 'nosuchrecipe': no such recipe"):
        load_config(tmp_path / "c.yaml", data_ok)


def test_scenario_pairs_ask_the_evaluation_tasks_unless_told(data_ok):
    cfg = load_config("causal", data_ok + ["data.scenarios_per_user=2", "eval.tasks=[qanchor]"])
    assert [t.name for t in cfg.scenario_tasks()] == [t.name for t in cfg.eval.resolved_tasks()]
    cfg = load_config("causal", data_ok + ["data.scenarios_per_user=2",
                                           "data.scenario_tasks=[concert,login]"])
    assert [t.name for t in cfg.scenario_tasks()] == ["concert", "login"]
    assert load_config("causal", data_ok).scenario_tasks() == []


def test_bad_files(tmp_path, data_ok):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("defaults: {mask: hybrid}\nmodel:\n  x: 1\n")
    with pytest.raises(ConfigError, match="key 'model'"):
        load_config(tmp_path / "typo.yaml", data_ok)
    (tmp_path / "groups.yaml").write_text("defaults: {masks: hybrid}\n")
    with pytest.raises(ConfigError, match="key 'defaults': expected a mapping of groups"):
        load_config(tmp_path / "groups.yaml", data_ok)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(EXPERIMENTS_DIR / "causal.yaml", ["trainer.max_steps"])
    with pytest.raises(ConfigError, match="mask=hybird: unknown option of group 'mask'"):
        load_config(None, [*data_ok, "mask=hybird"])
    with pytest.raises(ConfigError, match="recipe 'hybird': no such recipe"):
        load_config("hybird", data_ok)


def test_cli_fit_stops_before_training_on_a_bad_key(capsys, data_ok):
    from maskstudy.experiments.cli import main
    code = main(["fit", str(EXPERIMENTS_DIR / "causal.yaml"), *data_ok, "optim.lr=-1"])
    assert code == 2
    assert "key 'optim.lr': must be positive" in capsys.readouterr().err


def test_task_files_are_found_in_the_config_directories(data_ok, tmp_path, monkeypatch):
    cfg = load_config("causal", [*data_ok, "eval.tasks=[habits.yaml,login]"])
    assert [t.name for t in cfg.eval.resolved_tasks()] == [
        "coffee", "big_spender", "quiet_week", "searcher", "login"]
    # A user's config directory is searched first, its tasks/ folder included.
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "habits.yaml").write_text(
        "tasks:\n  tea: {event: {modality: bill, field: category, op: in, value: [tea]}}\n")
    monkeypatch.setenv("MASKSTUDY_CONFIG_PATH", str(tmp_path))
    cfg = load_config("causal", [*data_ok, "eval.tasks=[habits.yaml]"])
    assert [t.name for t in cfg.eval.resolved_tasks()] == ["tea"]

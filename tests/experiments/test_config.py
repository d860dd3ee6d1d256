"""Recipes compose from base.yaml; every config mistake fails before training, naming its key."""

from __future__ import annotations

import pytest

from maskstudy.experiments.config import EXPERIMENTS_DIR, ConfigError, load_config, to_yaml
from tests.helpers import write_tiny_text_encoder

RECIPES = sorted(p for p in EXPERIMENTS_DIR.glob("*.yaml"))


@pytest.fixture
def data_ok(world):
    return [f"data.path={world}"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_composes(recipe, request, tmp_path):
    data = request.getfixturevalue("movielens" if recipe.stem.startswith("movielens_")
                                   else "world")
    data_ok = [f"data.path={data}"]
    if recipe.stem.startswith("hier_text_"):  # no sentence-encoder package needed
        data_ok.append(f"input.text_encoder={write_tiny_text_encoder(tmp_path / 'enc')}")
    cfg = load_config(recipe, data_ok)
    assert cfg.name == recipe.stem
    assert cfg.optim.total_steps == cfg.trainer.max_steps  # interpolated
    if recipe.stem.startswith("movielens_"):
        mask_recipe = recipe.stem.removeprefix("movielens_")
        assert list(cfg.extends) == [f"{mask_recipe}.yaml", "datasets/movielens.yaml"]
    elif recipe.stem.startswith("hier_"):
        text = recipe.stem.startswith("hier_text_")
        mask_recipe = recipe.stem.removeprefix("hier_text_" if text else "hier_")
        inputs = "inputs/hierarchical_text.yaml" if text else "inputs/hierarchical.yaml"
        assert list(cfg.extends) == [f"{mask_recipe}.yaml", inputs]
        assert cfg.input.event_encoder == ("text" if text else "learned")
        assert cfg.input.mode == "hierarchical"
        assert cfg.mask == load_config(EXPERIMENTS_DIR / f"{mask_recipe}.yaml", data_ok).mask
    elif recipe.stem != "base":
        assert cfg.extends == "base.yaml"


def test_recipes_hold_only_their_differences():
    base_keys = {"data", "backbone", "encoder", "loss", "optim", "trainer", "eval", "logging"}
    for recipe in RECIPES:
        if recipe.stem == "base":
            continue
        text = recipe.read_text()
        if recipe.stem.startswith(("movielens_", "hier_")):  # a mask recipe plus one file
            top = {line.split(":")[0] for line in text.splitlines()
                   if line and not line.startswith((" ", "#"))}
            assert top == {"extends", "name", "description"}, (recipe, top)
            continue
        assert text.splitlines()[0].startswith("# Paper row:"), recipe
        top = {line.split(":")[0] for line in text.splitlines()
               if line and not line.startswith((" ", "#"))}
        assert not (top & base_keys) - {"eval", "trainer"}, (recipe, top)


def test_a_recipe_extends_a_mask_recipe_and_a_dataset_file(movielens):
    """``extends: [ggsm.yaml, datasets/movielens.yaml]``: base.yaml, which both reach, is
    merged once, first, so the dataset file cannot reset GG-SM's mask to base's causal."""
    data = [f"data.path={movielens}"]
    cfg = load_config(EXPERIMENTS_DIR / "movielens_ggsm.yaml", data)
    ggsm = load_config(EXPERIMENTS_DIR / "ggsm.yaml", data + ["eval.tasks=[movielens]"])
    assert cfg.mask == ggsm.mask and cfg.schedule == ggsm.schedule and cfg.mask.name == "soft"
    assert list(cfg.eval.tasks) == ["movielens"] and cfg.data.caps["rating"] == 250
    assert cfg.data.probe_fraction == 0.5 and cfg.name == "movielens_ggsm"


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
    ("eval.tasks=[movielens]", "key 'eval.tasks': task 'female' reads column 'attr_gender'"),
    ("input.mode=tree", "key 'input.mode': 'tree': expected one of"),
    ("input.event_encoder=gte", "key 'input.event_encoder': 'gte'"),
    ("input.hash_buckets=1", "key 'input.hash_buckets': 1: expected at least 2"),
    ("input.mode=hierarchical input.event_encoder=text input.text_encoder=/no/model",
     "key 'input.text_encoder': /no/model: no such model directory"),
    ("encoder.pooling=global_token", "key 'encoder.pooling': global_token pooling reads"),
    ("mask.inference=soft", "key 'mask.inference': 'soft': the inference mask has no trained"),
    ("mask.name=mlp mask.options.init=0", "key 'mask.options': mlp mask init=0"),
    ("mask.name=mlp mask.options.hidden_size=8",
     "key 'mask.options': mlp mask hidden_size is set from the backbone"),
])
def test_bad_values_name_the_key(override, message, data_ok):
    overrides = override.split()
    if not override.startswith("data.path"):
        overrides = data_ok + overrides
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(EXPERIMENTS_DIR / "hybrid.yaml", overrides)


def test_bad_files(tmp_path, data_ok):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(f"extends: {EXPERIMENTS_DIR / 'base.yaml'}\nmodel:\n  x: 1\n")
    with pytest.raises(ConfigError, match="key 'model'"):
        load_config(tmp_path / "typo.yaml", data_ok)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(EXPERIMENTS_DIR / "causal.yaml", ["trainer.max_steps"])


def test_cli_fit_stops_before_training_on_a_bad_key(capsys, data_ok):
    from maskstudy.experiments.cli import main
    code = main(["fit", str(EXPERIMENTS_DIR / "causal.yaml"), *data_ok, "optim.lr=-1"])
    assert code == 2
    assert "key 'optim.lr': must be positive" in capsys.readouterr().err

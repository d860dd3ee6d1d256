"""The ceiling of a synthetic world: each label's probability given the user's latents."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from maskstudy.callbacks.linear_probe import probe_scores
from maskstudy.datamodules import baseline, ceiling
from maskstudy.datamodules import world_vocab as V
from maskstudy.datamodules.probe import history_columns
from maskstudy.datamodules.splits import stratified_split
from maskstudy.datamodules.synthetic import WorldConfig, chunk_latents
from maskstudy.datamodules.tasks import compute_labels, resolve_tasks


@pytest.fixture(scope="module")
def world_labels(big_world):
    """The big world's users, their labels on the GG-SM tasks and the ceiling's p_hat."""
    table = pq.read_table(big_world / "users-00000.parquet")
    tasks = resolve_tasks(["ggsm"])
    ids = table.column("user_id").to_pylist()
    p = ceiling.label_probabilities(big_world, ids, tasks, draws=30)
    return table, tasks, compute_labels(table, tasks), p


def test_redrawn_futures_have_the_worlds_label_rates(world_labels):
    """The redraws follow the generator: over 3000 users each task's mean p_hat matches the
    share of its real labels (within 3 standard errors)."""
    _, tasks, labels, p = world_labels
    assert p.shape == labels.shape and ((p >= 0) & (p <= 1)).all()
    for k, task in enumerate(tasks):
        rate = labels[:, k].mean()
        se = np.sqrt(rate * (1 - rate) / len(labels))
        assert abs(p[:, k].mean() - rate) < 3 * se + 0.005, task.name


def test_churned_users_lose_activity_in_every_draw(big_world, world_labels):
    """A user the world churned has no future events: MAU loss is 1 in every redraw, and the
    others keep some activity in most of theirs."""
    _, tasks, labels, p = world_labels
    config = ceiling.world_config(big_world)
    churned = np.concatenate([chunk_latents(config, c, config.chunk_users)[0].churned
                              for c in range(config.users // config.chunk_users)])
    mau = [t.name for t in tasks].index("mau_loss")
    assert churned.any() and (p[churned, mau] == 1).all() and (labels[churned, mau] == 1).all()
    assert np.median(p[~churned, mau]) < 0.5


def test_the_ceiling_ranks_above_the_bag_of_events(world_labels):
    """No score computed from the history ranks the labels better than p. p_hat estimates p
    from 30 redraws and the test sides hold 900 users, so per task it may fall short of the
    bag-of-events regression by noise (0.01); on average over the tasks it ranks clearly
    above."""
    table, tasks, labels, p = world_labels
    x = baseline.features(table.select(history_columns()))
    gaps = []
    for k, task in enumerate(tasks):
        y = labels[:, k]
        test = stratified_split(y, test_fraction=0.3, seed=k)
        gaps.append(roc_auc_score(y[test], p[test, k]) - baseline.probe_auc(x, y, test))
        assert gaps[-1] > -0.01, task.name
    assert np.mean(gaps) > 0.03, gaps


def test_the_latents_as_an_embedding(big_world, world_labels):
    """latent_features holds each user's latents in the order asked for; a linear probe
    reads the labels from them better, on average over the tasks, than from the bag of
    events."""
    table, tasks, labels, _ = world_labels
    ids = table.column("user_id").to_pylist()
    x = ceiling.latent_features(big_world, ids)
    config = ceiling.world_config(big_world)
    first = chunk_latents(config, 0, config.chunk_users)[0]
    traits, one_hot = len(V.TRAITS), len(V.AGE_BANDS) + len(V.CITY_TIER_P)
    assert x.shape == (len(ids), len(ceiling.LATENTS) + one_hot)
    assert np.array_equal(x[: config.chunk_users, :traits], first.traits["z"])
    churned = ceiling.LATENTS.index("churned")
    assert np.array_equal(x[: config.chunk_users, churned], first.churned)
    assert (x[:, -one_hot:].sum(axis=1) == 2).all()  # one age band, one city tier
    reversed_ids = ids[::-1]
    assert np.array_equal(ceiling.latent_features(big_world, reversed_ids), x[::-1])
    bag = baseline.features(table.select(history_columns()))
    gains = []
    for k in range(len(tasks)):
        y = labels[:, k]
        test = stratified_split(y, test_fraction=0.3, seed=k)
        gains.append(roc_auc_score(y[test], probe_scores(x, y, test))
                     - baseline.probe_auc(bag, y, test))
    assert np.mean(gains) > 0.02


def test_latent_recovery_reads_what_a_representation_holds(big_world, world_labels):
    """R^2 per latent: the latents themselves recover each (near 1), noise none (near 0),
    and the bag of events reads activity from the event counts far better than the rare
    risk profiles."""
    table, _, _, _ = world_labels
    latents = ceiling.latent_features(big_world, table.column("user_id").to_pylist())
    test = np.random.default_rng(0).random(len(latents)) < 0.3
    itself = ceiling.latent_recovery(latents, latents, test)
    assert list(itself) == list(ceiling.LATENTS)
    assert min(itself.values()) > 0.99
    noise = ceiling.latent_recovery(np.random.default_rng(1).normal(size=(len(latents), 8)),
                                    latents, test)
    assert max(noise.values()) < 0.05
    bag = ceiling.latent_recovery(baseline.features(table.select(history_columns())).toarray(),
                                  latents, test)
    assert bag["log_activity"] > 0.8 and bag["launder"] < bag["log_activity"] - 0.3


def test_probabilities_follow_the_seed(big_world):
    ids = [f"u001-{i:08d}" for i in (5, 1500, 2999)]
    tasks = resolve_tasks(["ggsm"])
    a = ceiling.label_probabilities(big_world, ids, tasks, draws=8)
    assert np.array_equal(a, ceiling.label_probabilities(big_world, ids, tasks, draws=8))
    # a user's p does not depend on which other users are asked for
    alone = ceiling.label_probabilities(big_world, ids[1:2], tasks, draws=8)
    assert np.array_equal(alone[0], a[1])


def test_bad_input_is_named(big_world, tmp_path):
    tasks = resolve_tasks(["ggsm"])
    with pytest.raises(ValueError, match="user 'u002-00000005' is not one of the 3000 users"):
        ceiling.label_probabilities(big_world, ["u002-00000005"], tasks)
    with pytest.raises(ValueError, match="user 'u001-00003000'"):
        ceiling.label_probabilities(big_world, ["u001-00003000"], tasks)
    with pytest.raises(FileNotFoundError, match="world.json"):
        ceiling.world_config(tmp_path)
    shutil.copy(big_world / "world.json", tmp_path / "world.json")
    meta = json.loads((tmp_path / "world.json").read_text()) | {"generator_version": 0}
    (tmp_path / "world.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="world.json: generator_version 0"):
        ceiling.world_config(tmp_path)
    young = resolve_tasks([{"name": "young", "attribute": {"attribute": "age", "op": "lt",
                                                           "value": 30}}])
    with pytest.raises(ValueError, match="task 'young' .* not read from future events"):
        ceiling.check_tasks(young)
    with pytest.raises(ValueError, match="draws 0"):
        ceiling.label_probabilities(big_world, ["u001-00000005"], tasks, draws=0)


def test_world_config_is_the_one_written(big_world):
    assert ceiling.world_config(big_world) == WorldConfig(users=3000, seed=1)

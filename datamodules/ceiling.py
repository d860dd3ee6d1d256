"""The ceiling of a synthetic world: how well any model of a user's history could rank a label.

The world draws each user's history and future from the user's latents
(:class:`~maskstudy.datamodules.synthetic.ChunkLatents`: traits, activity, its trend, churn).
Given the latents the future is independent of the history, so the probability of a label
given them, ``p(u) = P(y_u = 1 | latents_u)``, is the most any score computed from the history
can know. By the Neyman-Pearson lemma the ROC curve of ``p`` over the world's users lies on or
above that of every such score, so its AUC bounds the AUC of every probe, trained or not, and
of the bag of events (on a finite test split, up to that split's sampling noise).
The bound is loose where the history shows a latent only faintly (a trait behind a few events).

``p`` is estimated by drawing each user's future window again, ``draws`` times, from the
user's latents, and reading the task's rule on every draw: ``p_hat(u) = hits(u) / draws``.
A finite ``draws`` adds noise to ``p_hat``, which lowers its AUC a little: on the default
world's probe users the average AUC reads 0.9030, 0.9048 and 0.9057 from 200, 400 and 800
draws (docs/learning.md, "How much there is to learn").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from . import world_vocab as V
from .schema import EVENT_MODALITIES, future_column, seconds_to_ts, user_schema
from .synthetic import (GENERATOR_VERSION, ChunkLatents, WorldConfig, chunk_latents,
                        future_traits, future_window, user_id, user_position, world_config)
from .tasks import EventRule, Task, compute_labels

DRAWS = 400
USER_DRAWS_PER_CALL = 100_000  # user-futures drawn in one call: bounds the memory of a call
_STREAM = 1  # the redraws' generators: [seed, chunk, GENERATOR_VERSION, _STREAM, call]


def user_positions(config: WorldConfig, user_ids: list[str]) -> np.ndarray:
    """Each user's position in the world."""
    out = np.empty(len(user_ids), dtype=np.int64)
    for k, uid in enumerate(user_ids):
        position = user_position(config, uid)
        if position is None:
            raise ValueError(f"user {uid!r} is not one of the {config.users} users of world "
                             f"seed {config.seed} ({user_id(config, 0)} ..)")
        out[k] = position
    return out


def _take(latents: ChunkLatents, index: np.ndarray) -> ChunkLatents:
    return ChunkLatents({k: v[index] for k, v in latents.traits.items()},
                        latents.churned[index], latents.trend[index])


def _tile(latents: ChunkLatents, times: int) -> ChunkLatents:
    def tile(v: np.ndarray) -> np.ndarray:
        return np.tile(v, (times,) + (1,) * (v.ndim - 1))
    return ChunkLatents({k: tile(v) for k, v in latents.traits.items()},
                        tile(latents.churned), tile(latents.trend))


def _future_hits(config: WorldConfig, latents: ChunkLatents, tasks: list[Task],
                 rng: np.random.Generator) -> np.ndarray:
    """(users, tasks) labels of one fresh future window per user."""
    future = future_traits(rng, latents)
    columns = [future_column(m) for m in EVENT_MODALITIES]
    full = user_schema(V.TABULAR_NAMES, spec=config.spec)
    schema = pa.schema([full.field("ref_time")] + [full.field(c) for c in columns],
                       metadata=full.metadata)
    arrays = [seconds_to_ts(np.full(latents.users, config.ref_epoch()))]
    arrays += [future_window(rng, config, m, future, latents.churned) for m in EVENT_MODALITIES]
    return compute_labels(pa.Table.from_arrays(arrays, schema=schema), tasks)


def check_tasks(tasks: list[Task]) -> None:
    """The world draws future events only: a task read from an attribute or a shipped label
    column has no probability given the latents."""
    for task in tasks:
        if not isinstance(task.rule, EventRule):
            raise ValueError(f"task {task.name!r} ({task.rule.describe()}) is not read from "
                             f"future events, the only labels a synthetic world draws; the "
                             f"ceiling needs future-event tasks")


def _users_latents(config: WorldConfig, user_ids: list[str]):
    """Per chunk of the world that holds some of the users: (chunk, the users' rows in
    ``user_ids``, their latents in that order)."""
    positions = user_positions(config, user_ids)
    chunks = positions // config.chunk_users
    for chunk in np.unique(chunks):
        rows = np.flatnonzero(chunks == chunk)
        n = min(config.chunk_users, config.users - chunk * config.chunk_users)
        yield int(chunk), rows, _take(chunk_latents(config, int(chunk), n)[0],
                                      positions[rows] - chunk * config.chunk_users)


# The columns of latent_features that hold one number a user (the rest: age band and city
# tier one-hot, which youth and urban carry on a scale)
LATENTS = (*V.TRAITS, "log_activity", "trend", "churned")


def latent_features(world: str | Path, user_ids: list[str]) -> np.ndarray:
    """(users, features): the latents themselves as a representation (:data:`LATENTS`, then
    age band and city tier one-hot), the embedding of an encoder that recovered all of them,
    for the run's own linear probe to read."""
    config = world_config(world)
    out = np.zeros((len(user_ids), len(LATENTS) + len(V.AGE_BANDS) + len(V.CITY_TIER_P)))
    for _, rows, lat in _users_latents(config, user_ids):
        tr = lat.traits
        out[rows] = np.column_stack([
            tr["z"], tr["log_activity"], lat.trend, lat.churned,
            np.eye(len(V.AGE_BANDS))[tr["age"]], np.eye(len(V.CITY_TIER_P))[tr["tier"] - 1]])
    return out


def label_probabilities(world: str | Path, user_ids: list[str], tasks: list[Task],
                        draws: int = DRAWS) -> np.ndarray:
    """``p_hat``: (users, tasks), each user's share of ``draws`` redrawn futures in which the
    task's label is 1."""
    if draws < 1:
        raise ValueError(f"draws {draws}: expected at least 1")
    config = world_config(world)
    check_tasks(tasks)
    hits = np.zeros((len(user_ids), len(tasks)))
    for chunk, rows, latents in _users_latents(config, user_ids):
        per_call = max(1, USER_DRAWS_PER_CALL // len(rows))
        for call, start in enumerate(range(0, draws, per_call)):
            times = min(per_call, draws - start)
            rng = np.random.default_rng([config.seed, chunk, GENERATOR_VERSION, _STREAM, call])
            labels = _future_hits(config, _tile(latents, times), tasks, rng)
            hits[rows] += labels.reshape(times, len(rows), -1).sum(axis=0)
    return hits / draws


def latent_recovery(x, latents: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """How much of each latent (:data:`LATENTS`, columns of :func:`latent_features`) a
    representation ``x`` (users, D) holds linearly: the test-side R^2 = 1 - SSE / SST of a
    ridge regression on the standardised ``x`` fitted on the train side (``~test``), its
    strength chosen by leave-one-out on that side. 0: no better than the train mean."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    out = {}
    for j, name in enumerate(LATENTS):
        y = latents[:, j]
        pred = model.fit(x[~test], y[~test]).predict(x[test])
        sst = float(((y[test] - y[test].mean()) ** 2).sum())
        out[name] = 1.0 - float(((y[test] - pred) ** 2).sum()) / sst if sst > 0 else float("nan")
    return out

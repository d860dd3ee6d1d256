"""Shared fixtures: tiny synthetic worlds built by the real generator, and a hand-made user."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

from maskstudy.datamodules.datamodules import DataConfig, UserDataModule, build_tokenizer  # noqa: E402
from maskstudy.datamodules.synthetic import WorldConfig, write_world  # noqa: E402


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """600 users in 6 row groups of 100, with a small tokenizer beside them."""
    out = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(users=600, seed=3, chunk_users=100), out)
    dm = UserDataModule(DataConfig(path=str(out), vocab_size=800, validate=False))
    build_tokenizer(dm, out / "tokenizer.json", users=150)
    return out


@pytest.fixture(scope="session")
def big_world(tmp_path_factory):
    """3000 users: enough for prevalence bounds and the baseline."""
    out = tmp_path_factory.mktemp("big_world")
    write_world(WorldConfig(users=3000, seed=1), out)
    return out


@pytest.fixture(scope="session")
def movielens(tmp_path_factory):
    """A MovieLens-format dataset built by the real converter from generated files (60 users,
    40 films), with a small tokenizer beside it."""
    from maskstudy.datamodules.movielens import build_movielens
    from tests.helpers import write_movielens_source

    source = tmp_path_factory.mktemp("ml_source")
    write_movielens_source(source, users=60)
    out = tmp_path_factory.mktemp("movielens")
    build_movielens(out, source)
    dm = UserDataModule(DataConfig(path=str(out), vocab_size=600, validate=False))
    build_tokenizer(dm, out / "tokenizer.json", users=60)
    return out

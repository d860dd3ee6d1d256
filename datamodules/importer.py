"""``maskstudy data import``: a long-format event log and a user table into the user schema.

Input:

- an event table (CSV, Parquet or JSON lines), one row per event: a user column, a time column,
  a modality column (or one modality for every row) and the declared fields' columns;
- optionally a user table (same formats), one row per user: tabular feature columns,
  attribute columns (``attr_<name>``), label columns (``label_<name>``) and optionally a per-user
  split time. With a user table, its users are the dataset (a user without events is kept
  with empty windows); without one, every user id of the event table is;
- a split time: one for everyone (``split_time``) or per user (``split_column``).

Events before the split form the history, events from the split on the future. The future
window is ``future_days`` long; the history window ``history_days`` (default: long enough for
every user's earliest event, so no history event is lost). The dataset's declaration (windows,
modalities with their fields and kinds, whether times carry an hour) goes into the files'
metadata, a report into ``dataset.json``.

Events that cannot be placed are dropped and counted per reason (:data:`DROP_REASONS`);
problems of the user table (duplicate ids, missing or non-finite values) are errors naming
the row and column, never drops: a user table is expected to be clean.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import yaml

from .dataset import BUILTIN_MODALITIES, DatasetSpec, Modality
from .schema import (
    ATTRIBUTE_PREFIX, DAY, LABEL_PREFIX, DataValidationError, future_column,
    user_schema, validate_dataset,
)

DROP_REASONS = {
    "missing_user": "no user id",
    "bad_time": "time missing or not readable",
    "unknown_modality": "modality not declared",
    "missing_field": "a declared field is missing",
    "bad_number": "a number field is not a finite number",
    "unknown_user": "user not in the user table",
    "before_history_window": "before the history window",
    "after_future_window": "after the future window",
}
FORMATS = (".csv", ".parquet", ".jsonl", ".json", ".ndjson")


class DataImportError(DataValidationError):
    """An import that cannot proceed; the message names the file, column or key."""


@dataclass
class ImportSpec:
    """Everything ``maskstudy data import`` needs; a YAML file (``--spec``) holds the same
    keys, flags override them."""

    events: str = ""  # the event table
    out: str = ""  # the dataset directory to write
    users: str | None = None  # the user table
    user_column: str = "user_id"
    time_column: str = "time"
    time_format: str | None = None  # strptime format of string times; None: ISO 8601
    modality_column: str | None = None  # None: every event is the one declared modality
    # name -> {field: kind} (or a full declaration, or "builtin" for a built-in modality)
    modalities: dict = field(default_factory=dict)
    split_time: str | None = None  # one split for everyone (ISO date or time, UTC)
    split_column: str | None = None  # or a per-user split time in the user table
    history_days: int | None = None  # None: back to the earliest event
    future_days: int = DatasetSpec().future_days
    tabular: list[str] = field(default_factory=list)  # user-table number columns
    attributes: list[str] = field(default_factory=list)  # user-table columns -> attr_<name>
    labels: list[str] = field(default_factory=list)  # user-table 0/1 columns -> label_<name>
    row_group_users: int = 10_000

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "ImportSpec":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataImportError(f"{path}: cannot read the import spec ({e})") from e
        if not isinstance(data, dict):
            raise DataImportError(f"{path}: expected a mapping of import keys")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataImportError(f"{path}: unknown key(s) {unknown}; expected {sorted(known)}")
        base = Path(path).parent
        for key in ("events", "users", "out"):  # relative to the spec file
            if data.get(key) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
        data.update({k: v for k, v in overrides.items() if v not in (None, [], {})})
        return cls(**data)

    def dataset_spec(self, history_days: int, time_of_day: bool) -> DatasetSpec:
        mods = []
        for name, decl in self.modalities.items():
            if decl in (None, "builtin"):
                if name not in BUILTIN_MODALITIES:
                    raise DataImportError(f"modalities: {name!r} is not built in; declare its "
                                          f"fields")
                mods.append(BUILTIN_MODALITIES[name])
                continue
            try:
                mods.append(Modality.declared(str(name), decl))
            except ValueError as e:
                raise DataImportError(f"modalities: {e}") from e
        try:
            return DatasetSpec(tuple(mods), history_days, self.future_days, time_of_day)
        except ValueError as e:
            raise DataImportError(str(e)) from e

    def check(self) -> None:
        if not self.events:
            raise DataImportError("events: the event table to import is required")
        if not self.modalities or not isinstance(self.modalities, dict):
            raise DataImportError("modalities: declare at least one as a mapping, e.g. "
                                  "{purchase: {item: category, amount: number}}")
        for key in ("tabular", "attributes", "labels"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataImportError(f"{key}: expected a list of user-table column names, "
                                      f"got {value!r}")
        if not self.out:
            raise DataImportError("out: the dataset directory to write is required")
        if (self.split_time is None) == (self.split_column is None):
            raise DataImportError("give exactly one of split_time (one for everyone) and "
                                  "split_column (per user, in the user table)")
        if self.split_column is not None and not self.users:
            raise DataImportError("split_column is read from the user table: give users")
        if (self.tabular or self.attributes or self.labels) and not self.users:
            raise DataImportError("tabular, attributes and labels are columns of the user "
                                  "table: give users")
        if self.modality_column is None and len(self.modalities) != 1:
            raise DataImportError("without a modality_column every event is of one modality: "
                                  f"declare exactly one (got {list(self.modalities)})")
        if self.future_days < 1 or (self.history_days is not None and self.history_days < 1):
            raise DataImportError("history_days and future_days: expected whole days >= 1")


def read_table(path: str | Path) -> pa.Table:
    """A CSV, Parquet or JSON-lines file as an Arrow table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # Every column as read: types are decided per declared kind below.
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                strings_can_be_null=True))
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pjson.read_json(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataImportError(f"{path}: cannot read it as {suffix[1:]} ({e})") from e
    raise DataImportError(f"{path}: unknown format; expected one of {list(FORMATS)}")


def _column(table: pa.Table, name: str, file: str, role: str) -> pa.Array:
    if name not in table.column_names:
        raise DataImportError(f"{file}: no column {name!r} ({role}); columns are "
                              f"{table.column_names}")
    return table.column(name).combine_chunks()


def parse_times(values: pa.Array, time_format: str | None = None) -> np.ndarray:
    """Seconds since the epoch (UTC; naive times read as UTC) as float, NaN where a value is
    missing or not readable."""
    t = values.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        ts = pc.cast(values, pa.timestamp("s", tz="UTC") if pa.types.is_timestamp(t)
                     else pa.timestamp("s"))
        return pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False).astype(float)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(float)
    values = pc.cast(values, pa.string())
    if time_format is not None:
        ts = pc.strptime(values, format=time_format, unit="s", error_is_null=True)
        return pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False).astype(float)
    out = np.full(len(values), np.nan)
    memo: dict[str, float] = {}
    for k, v in enumerate(values.to_pylist()):
        if v is None:
            continue
        found = memo.get(v)
        if found is None:
            try:
                when = datetime.fromisoformat(v.strip())
            except ValueError:
                found = math.nan
            else:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                found = when.timestamp()
            memo[v] = found
        out[k] = found
    return out


def _numbers(values: pa.Array) -> np.ndarray:
    """Floats, NaN where a value is missing or not a number."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(float)
    out = np.full(len(values), np.nan)
    for k, v in enumerate(pc.cast(values, pa.string()).to_pylist()):
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


@dataclass
class UserTable:
    ids: list[str]
    split: np.ndarray | None  # per-user split seconds
    tabular: np.ndarray  # (users, features)
    attributes: dict[str, pa.Array]
    labels: dict[str, np.ndarray]


def read_users(spec: ImportSpec) -> UserTable:
    """The user table, checked: unique ids, finite features, 0/1 labels, a split per user."""
    file = str(spec.users)
    table = read_table(spec.users)
    ids = pc.cast(_column(table, spec.user_column, file, "user ids"), pa.string())
    if ids.null_count:
        row = int(np.flatnonzero(np.asarray(ids.is_null()))[0])
        raise DataImportError(f"{file}, row {row}, column {spec.user_column!r}: no user id "
                              f"({ids.null_count} row(s) in all)")
    id_list = ids.to_pylist()
    seen: dict[str, int] = {}
    for row, u in enumerate(id_list):
        if u in seen:
            raise DataImportError(f"{file}, row {row}, column {spec.user_column!r}: user "
                                  f"{u!r} appears twice (also row {seen[u]})")
        seen[u] = row

    def finite(name: str, role: str) -> np.ndarray:
        values = _numbers(_column(table, name, file, role))
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataImportError(f"{file}, row {bad[0]} (user {id_list[bad[0]]!r}), column "
                                  f"{name!r}: expected a finite number for {role} "
                                  f"({len(bad)} row(s) in all)")
        return values

    split = None
    if spec.split_column is not None:
        split = parse_times(_column(table, spec.split_column, file, "split time"),
                            spec.time_format)
        bad = np.flatnonzero(np.isnan(split))
        if len(bad):
            raise DataImportError(f"{file}, row {bad[0]} (user {id_list[bad[0]]!r}), column "
                                  f"{spec.split_column!r}: no readable split time "
                                  f"({len(bad)} row(s) in all)")
    tabular = (np.stack([finite(c, "a tabular feature") for c in spec.tabular], axis=1)
               if spec.tabular else np.zeros((len(id_list), 0)))
    attributes = {}
    for name in spec.attributes:
        col = _column(table, name, file, "an attribute")
        if col.null_count:
            row = int(np.flatnonzero(np.asarray(col.is_null()))[0])
            raise DataImportError(f"{file}, row {row} (user {id_list[row]!r}), column {name!r}: "
                                  f"missing attribute ({col.null_count} row(s) in all)")
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            attributes[name] = pa.array(finite(name, "a number attribute"))
        else:
            attributes[name] = pc.cast(col, pa.string())
    labels = {}
    for name in spec.labels:
        col = _column(table, name, file, "a label")
        values = (pc.cast(col, pa.int8()).to_numpy(zero_copy_only=False)
                  if pa.types.is_boolean(col.type) else _numbers(col))
        bad = np.flatnonzero(~np.isin(values, (0, 1)))
        if len(bad):
            raise DataImportError(f"{file}, row {bad[0]} (user {id_list[bad[0]]!r}), column "
                                  f"{name!r}: expected a 0/1 label, got "
                                  f"{col[int(bad[0])].as_py()!r} ({len(bad)} row(s) in all)")
        labels[name] = values.astype(np.int8)
    return UserTable(id_list, split, tabular, attributes, labels)


def _split_seconds(text: str) -> float:
    found = parse_times(pa.array([text]))[0]
    if np.isnan(found):
        raise DataImportError(f"split_time {text!r}: expected an ISO date or time "
                              f"(2026-10-01 or 2026-10-01T00:00:00)")
    return float(found)


def import_events(spec: ImportSpec) -> dict:
    """Writes the dataset (``users-00000.parquet``, ``dataset.json``) and returns the
    report: users, events kept per window, events dropped per reason."""
    spec.check()
    events_file = str(spec.events)
    events = read_table(spec.events)
    n = events.num_rows
    dropped: Counter[str] = Counter()
    keep = np.ones(n, dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        mask = mask & keep
        dropped[reason] += int(mask.sum())
        keep[mask] = False

    user_col = pc.cast(_column(events, spec.user_column, events_file, "user ids"), pa.string())
    drop(np.asarray(pc.is_null(user_col)) | (np.asarray(pc.fill_null(
        pc.equal(pc.utf8_trim_whitespace(user_col), ""), True))), "missing_user")
    times = parse_times(_column(events, spec.time_column, events_file, "event times"),
                        spec.time_format)
    drop(np.isnan(times), "bad_time")

    # Per event, its modality's index among the declared ones.
    names = list(spec.modalities)
    if spec.modality_column is None:
        which = np.zeros(n, dtype=np.int64)
    else:
        col = pc.cast(_column(events, spec.modality_column, events_file, "modalities"),
                      pa.string())
        which = pc.fill_null(pc.index_in(col, value_set=pa.array(names, pa.string())),
                             -1).to_numpy(zero_copy_only=False).astype(np.int64)
        drop(which < 0, "unknown_modality")
    declared = spec.dataset_spec(1, True)  # the fields; windows and clock are settled below
    values: dict[tuple[str, str], np.ndarray | list] = {}
    for k, modality in enumerate(declared.modalities):
        rows = which == k
        for name, kind in modality.fields.items():
            col = _column(events, name, events_file, f"field {name!r} of {modality.name}")
            drop(rows & np.asarray(col.is_null()), "missing_field")
            if kind == "number":
                nums = _numbers(col)
                drop(rows & ~np.isfinite(nums), "bad_number")
                values[(modality.name, name)] = nums
            elif kind == "timestamp":
                stamps = parse_times(col, spec.time_format)
                drop(rows & np.isnan(stamps), "bad_time")
                values[(modality.name, name)] = stamps
            else:
                values[(modality.name, name)] = pc.cast(col, pa.string())

    # The users and their split times.
    user_ids = user_col.to_pylist()
    if spec.users:
        users = read_users(spec)
        index = {u: k for k, u in enumerate(users.ids)}
        owner = np.array([index.get(u, -1) if u is not None else -1 for u in user_ids],
                         dtype=np.int64)
        drop(owner < 0, "unknown_user")
        ids = users.ids
    else:
        users = None
        ids = sorted({u for u, k in zip(user_ids, keep) if k})
        index = {u: k for k, u in enumerate(ids)}
        owner = np.array([index.get(u, -1) if k else -1 for u, k in zip(user_ids, keep)],
                         dtype=np.int64)
    split = (users.split if spec.split_column is not None
             else np.full(len(ids), _split_seconds(spec.split_time)))
    at = np.where(keep, times, 0.0)
    split_of = split[np.maximum(owner, 0)]
    before = keep & (at < split_of)
    if spec.history_days is None:  # back to the earliest kept history event
        earliest = (split_of - at)[before]
        history_days = max(1, int(math.ceil(earliest.max() / DAY))) if len(earliest) else 1
    else:
        history_days = spec.history_days
    drop(before & (at < split_of - history_days * DAY), "before_history_window")
    drop(keep & (at >= split_of + spec.future_days * DAY), "after_future_window")
    kept_times = at[keep]
    time_of_day = bool(len(kept_times) and (np.mod(kept_times, DAY) != 0).any())
    dataset = spec.dataset_spec(history_days, time_of_day)

    table = _user_table(dataset, ids, split, owner, at, which, keep, values, users, spec)
    _write(table, spec)
    history = keep & (at < split_of)
    report = {
        "source": {"events": events_file, "users": spec.users},
        "import": {k: v for k, v in asdict(spec).items() if k not in ("events", "users")},
        "users": len(ids),
        "users_without_history": int(len(ids) - len(np.unique(owner[history]))),
        "events_read": n,
        "history_events": int(history.sum()),
        "future_events": int((keep & ~history).sum()),
        "dropped": {reason: dropped.get(reason, 0) for reason in DROP_REASONS},
        "history_days": history_days,
        "future_days": spec.future_days,
        "time_of_day": time_of_day,
        "modalities": [m.declaration() for m in dataset.modalities],
        "files": ["users-00000.parquet"],
    }
    (Path(spec.out) / "dataset.json").write_text(json.dumps(report, indent=2) + "\n")
    validate_dataset(spec.out, empty_history="keep")
    return report


def _events_column(modality: Modality, rows: np.ndarray, owner: np.ndarray, at: np.ndarray,
                   values: dict, users: int) -> pa.ListArray:
    """One list<struct> column: the events ``rows`` grouped by user in time order."""
    order = rows[np.lexsort((at[rows], owner[rows]))]
    children = [pa.array((at[order] * 1000).astype(np.int64)).cast(
        pa.timestamp("ms", tz="UTC"))]
    for name, kind in modality.fields.items():
        v = values[(modality.name, name)]
        if kind == "number":
            children.append(pa.array(v[order], pa.float64()))
        elif kind == "timestamp":
            children.append(pa.array((v[order] * 1000).astype(np.int64)).cast(
                pa.timestamp("ms", tz="UTC")))
        else:
            children.append(v.take(pa.array(order)))
    struct = pa.StructArray.from_arrays(children, fields=list(modality.struct()))
    offsets = np.zeros(users + 1, dtype=np.int32)
    np.cumsum(np.bincount(owner[order], minlength=users), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), struct,
                                    type=pa.list_(modality.struct()))


def _user_table(dataset: DatasetSpec, ids: list[str], split: np.ndarray, owner: np.ndarray,
                at: np.ndarray, which: np.ndarray, keep: np.ndarray, values: dict,
                users: UserTable | None, spec: ImportSpec) -> pa.Table:
    n = len(ids)
    split_of = split[np.maximum(owner, 0)]
    tab = users.tabular if users is not None else np.zeros((n, 0))
    width = tab.shape[1]
    columns = {
        "user_id": pa.array(ids, pa.string()),
        "ref_time": pa.array((split * 1000).astype(np.int64)).cast(pa.timestamp("ms", tz="UTC")),
        "tabular": pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, pa.int32()),
                                            pa.array(tab.ravel(), pa.float64())),
    }
    for k, modality in enumerate(dataset.modalities):
        mine = keep & (which == k)
        columns[modality.name] = _events_column(
            modality, np.flatnonzero(mine & (at < split_of)), owner, at, values, n)
        columns[future_column(modality.name)] = _events_column(
            modality, np.flatnonzero(mine & (at >= split_of)), owner, at, values, n)
    attributes = {}
    if users is not None:
        for name, col in users.attributes.items():
            columns[ATTRIBUTE_PREFIX + name] = col
            attributes[name] = col.type
        for name, labels in users.labels.items():
            columns[LABEL_PREFIX + name] = pa.array(labels, pa.int8())
    schema = user_schema(spec.tabular, spec=dataset, attributes=attributes,
                         labels=list(users.labels) if users is not None else [])
    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


def _write(table: pa.Table, spec: ImportSpec) -> None:
    """Writes the user file; old user files, and the tokenizer and event cache built from
    them, go."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("users*.parquet"), out / "tokenizer.json", out / "event_cache"]:
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    tmp = out / ".users-00000.parquet.tmp"
    pq.write_table(table, tmp, row_group_size=spec.row_group_users, compression="zstd")
    tmp.replace(out / "users-00000.parquet")


def format_report(report: dict) -> str:
    dropped = {k: v for k, v in report["dropped"].items() if v}
    lines = [f"imported {report['users']} users ({report['users_without_history']} without "
             f"history events), {report['history_events']} history and "
             f"{report['future_events']} future events of {report['events_read']} read; "
             f"windows: {report['history_days']} days of history, {report['future_days']} of "
             f"future; times {'with' if report['time_of_day'] else 'without'} a time of day",
             f"dropped {sum(dropped.values())} event(s)" + (":" if dropped else "")]
    lines += [f"  {n:>8}  {reason}: {DROP_REASONS[reason]}" for reason, n in dropped.items()]
    return "\n".join(lines)

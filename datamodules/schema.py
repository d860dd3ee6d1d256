"""The user data schema: one Parquet row per user, and its validation.

Every input file, synthetic or a user's own, goes through :func:`validate_table` before
anything reads it. Errors name the file, the row, the user id and the field; nothing is
silently dropped or repaired.

Columns (see docs/data.md for the field-by-field table):

- ``user_id``: string, unique across all files of a dataset.
- ``ref_time``: timestamp (any unit; UTC, naive values read as UTC). The history window is
  ``[ref_time - history_days, ref_time)``, the future window ``[ref_time, ref_time +
  future_days)``; the dataset declares both (``datamodules/dataset.py``; 90 and 30 days by
  default).
- ``tabular``: list<double>, one fixed-length feature vector per user; feature names live in
  the Parquet key-value metadata under ``maskstudy.tabular_names`` (JSON list).
- one list<struct<ts, ...fields>> column per event modality the dataset declares, the history
  events in ascending time order (the payment-app world's ``bill``, ``minipro``, ``spm``,
  ``app``, ``search`` when nothing is declared).
- ``future_<modality>``: the same for the future window. They feed labels and contrastive
  answers only, never the user-tower input.
- optional ``attr_<name>`` columns (string or number, one value per user): attributes such as
  age or gender that label tasks may read; optional ``label_<name>`` columns (0/1 or boolean):
  labels shipped with the data. Like the future columns they never reach the model.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .dataset import (
    BUILTIN_MODALITIES, TS_TYPE, WORLD_MODALITIES, DatasetSpec, spec_of,
)

DAY = 86_400
# "recent" events: within this many days before the reference time (the bag of events'
# recent count, the template's activity header)
RECENT_DAYS = 14


def recent(days_before):
    """Which events are recent, from their whole days before the reference time."""
    return days_before <= RECENT_DAYS


# The payment-app world's modalities (the papers' data): what a file without a declaration has.
EVENT_MODALITIES = WORLD_MODALITIES
# The template's segments for those: the event modalities and the tabular feature vector.
SEGMENTS = EVENT_MODALITIES + ("tabular",)

TABULAR_NAMES_KEY = b"maskstudy.tabular_names"
ATTRIBUTE_PREFIX = "attr_"
LABEL_PREFIX = "label_"
EMPTY_HISTORY = ("error", "keep")  # what validation makes of a user without history events


def segments(modalities: Iterable[str]) -> tuple[str, ...]:
    """The template's segments for a dataset's modalities: each modality, then tabular."""
    return tuple(modalities) + ("tabular",)


def schema_spec(schema: pa.Schema, file: str = "") -> DatasetSpec:
    """The dataset declaration a file's schema carries (the world's when it has none)."""
    try:
        return spec_of(schema, file)
    except ValueError as e:
        raise DataValidationError(str(e)) from e


def schema_modalities(schema: pa.Schema, file: str = "") -> tuple[str, ...]:
    """The event modalities a file declares, in template order."""
    return schema_spec(schema, file).names


def dataset_spec(path: str | Path) -> DatasetSpec:
    """The declaration of a dataset (its first file's)."""
    first = dataset_files(path)[0]
    return schema_spec(pq.ParquetFile(first).schema_arrow, str(first))


def dataset_modalities(path: str | Path) -> tuple[str, ...]:
    """The event modalities of a dataset (its first file's declaration)."""
    return dataset_spec(path).names


def table_spec(table: pa.Table) -> DatasetSpec:
    return schema_spec(table.schema)


def table_modalities(table: pa.Table, *, future: bool = False) -> tuple[str, ...]:
    """The declared modalities whose history (or future) columns a table holds."""
    names = set(table.column_names)
    return tuple(m for m in table_spec(table).names
                 if (future_column(m) if future else m) in names)


def attribute_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n.startswith(ATTRIBUTE_PREFIX)]


def label_columns_of(schema: pa.Schema) -> list[str]:
    """The ``label_<name>`` columns a file ships."""
    return [n for n in schema.names if n.startswith(LABEL_PREFIX)]


def future_column(modality: str) -> str:
    return f"future_{modality}"


def event_struct(modality: str) -> pa.StructType:
    """The event struct of a built-in modality."""
    return BUILTIN_MODALITIES[modality].struct()


def user_schema(tabular_names: Iterable[str] | None = None,
                modalities: Iterable[str] = EVENT_MODALITIES,
                attributes: dict[str, pa.DataType] | None = None, *,
                spec: DatasetSpec | None = None,
                labels: Iterable[str] = ()) -> pa.Schema:
    """The canonical Arrow schema of a user file, its declaration in the metadata.
    ``spec`` declares modalities and windows (default: the built-in ``modalities`` with 90 and
    30 days); ``attributes`` become ``attr_<name>`` columns, ``labels`` ``label_<name>``."""
    if spec is None:
        spec = DatasetSpec(tuple(BUILTIN_MODALITIES[m] for m in modalities))
    fields = [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ref_time", TS_TYPE, nullable=False),
        pa.field("tabular", pa.list_(pa.float64()), nullable=False),
    ]
    for m in spec.modalities:
        fields.append(pa.field(m.name, pa.list_(m.struct()), nullable=False))
    for m in spec.modalities:
        fields.append(pa.field(future_column(m.name), pa.list_(m.struct()), nullable=False))
    for name, typ in (attributes or {}).items():
        fields.append(pa.field(ATTRIBUTE_PREFIX + name, typ, nullable=False))
    for name in labels:
        fields.append(pa.field(LABEL_PREFIX + name, pa.int8(), nullable=False))
    metadata = spec.metadata()
    if tabular_names is not None:
        metadata[TABULAR_NAMES_KEY] = json.dumps(list(tabular_names)).encode()
    return pa.schema(fields, metadata=metadata)


class DataValidationError(ValueError):
    """A user data file breaks the schema. The message names file, row, user and field."""


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    message: str
    row: int | None = None
    user_id: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.user_id is not None:
            where += f" (user_id={self.user_id!r})"
        return f"{where}, field '{self.field}': {self.message}"


class Problems:
    """Every problem of a dataset counted by kind; the first ``examples`` of each kind kept
    with file, row, user and field (a file with a million bad rows costs no more memory
    than one with twenty)."""

    def __init__(self, examples: int = 20):
        self.examples = examples
        self.counts: Counter[str] = Counter()
        self.first: dict[str, list[Problem]] = {}
        self.row0 = 0  # added to row numbers: the batch's first row in its file

    def add(self, kind: str, problem: Problem, count: int = 1) -> None:
        self.counts[kind] += count
        kept = self.first.setdefault(kind, [])
        if len(kept) < self.examples:
            row = None if problem.row is None else problem.row + self.row0
            kept.append(Problem(problem.file, problem.field, problem.message, row,
                                problem.user_id))

    def add_rows(self, kind: str, rows: np.ndarray, file: str, field: str, message,
                 user_id) -> None:
        """One problem per row of ``rows``; ``message`` a string or a function of the row."""
        rows = np.asarray(rows)
        for r in rows[: max(self.examples - len(self.first.get(kind, ())), 0)]:
            r = int(r)
            self.add(kind, Problem(file, field, message(r) if callable(message) else message,
                                   r, user_id(r)), count=0)
        self.counts[kind] += len(rows)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        """The kept examples, kind by kind in the order the kinds were first found."""
        for kept in self.first.values():
            yield from kept

    def report(self) -> str:
        lines = [f"{self.total} problem(s) in user data:"]
        for kind, kept in self.first.items():
            n = self.counts[kind]
            lines.append(f"  {kind}: {n}" + (f" (first {len(kept)} shown)" if n > len(kept)
                                             else ""))
            lines += [f"    {p}" for p in kept]
        return "\n".join(lines)

    def raise_if_any(self) -> None:
        if self:
            raise DataValidationError(self.report())


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if _is_string(expected):
        return _is_string(actual)
    if pa.types.is_floating(expected):
        return _is_float(actual)
    return actual.equals(expected)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _check_types(schema: pa.Schema, file: str, problems: Problems) -> None:
    """Column presence and types; types must be right before values are read."""
    def add(field: str, message: str) -> None:
        problems.add(f"{field}: {message}", Problem(file, field, message))

    try:
        spec = schema_spec(schema, file)
    except DataValidationError as e:
        problems.add("dataset declaration", Problem(file, "metadata", str(e)))
        return
    for name in attribute_columns(schema):
        actual = schema.field(name).type
        if not (_is_string(actual) or _is_float(actual)):
            add(name, f"expected a string or number attribute, got {actual}")
    for name in label_columns_of(schema):
        actual = schema.field(name).type
        if not (pa.types.is_integer(actual) or pa.types.is_boolean(actual)):
            add(name, f"expected a 0/1 integer or boolean label, got {actual}")
    want = user_schema(spec=spec)
    for f in want:
        if f.name not in schema.names:
            add(f.name, "missing column")
            continue
        actual = schema.field(f.name).type
        if f.name in ("user_id", "ref_time"):
            if not _type_ok(actual, f.type):
                add(f.name, f"expected {f.type}, got {actual}")
            continue
        if not _is_list(actual):
            add(f.name, f"expected a list column ({f.type}), got {actual}")
            continue
        if f.name == "tabular":
            if not _is_float(actual.value_type):
                add("tabular", f"expected list<double>, got {actual}")
            continue
        item = actual.value_type
        if not pa.types.is_struct(item):
            add(f.name, f"expected list<struct>, got {actual}")
            continue
        present = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
        expected = f.type.value_type
        for k in range(expected.num_fields):
            name, typ = expected.field(k).name, expected.field(k).type
            if name not in present:
                add(f"{f.name}.{name}", "missing event field")
            elif not _type_ok(present[name], typ):
                add(f"{f.name}.{name}", f"expected {typ}, got {present[name]}")


def seconds_to_ts(seconds: np.ndarray) -> pa.Array:
    """int64 seconds since the epoch as the schema's timestamp type."""
    return pa.array(np.asarray(seconds, dtype=np.int64) * 1000).cast(TS_TYPE)


def ts_seconds(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Timestamps of any unit as int64 seconds since the epoch (nulls must be checked first).
    Time-zone-naive timestamps are read as UTC."""
    return pc.cast(arr, pa.timestamp("s", tz="UTC"), safe=False).cast(pa.int64()).to_numpy(
        zero_copy_only=False
    )


def validate_table(table: pa.Table, file: str, *, seen_ids: set[str] | None = None,
                   problems: Problems | None = None, empty_history: str = "error") -> Problems:
    """Every schema problem of one table, counted by kind (see :class:`Problems`).

    ``seen_ids`` carries user ids across the files of one dataset so duplicates between
    files are found too; it is updated in place. ``empty_history``: ``error`` makes a user
    without history events a problem, ``keep`` accepts them. Windows and modalities are the
    table's declaration."""
    problems = Problems() if problems is None else problems
    before = problems.total
    _check_types(table.schema, file, problems)
    if problems.total > before:
        return problems  # values cannot be read meaningfully with the wrong types
    spec = schema_spec(table.schema, file)
    ids = table.column("user_id").combine_chunks()
    id_list = ids.to_pylist()

    def uid(row: int) -> str | None:
        return id_list[row]

    def add(rows, field: str, message, kind: str | None = None) -> None:
        problems.add_rows(kind or f"{field}: {message if isinstance(message, str) else ''}"
                          .rstrip(": "), rows, file, field, message, uid)

    # Nulls anywhere a value is required.
    for name in ("user_id", "ref_time", "tabular", *spec.names,
                 *map(future_column, spec.names), *attribute_columns(table.schema),
                 *label_columns_of(table.schema)):
        col = table.column(name).combine_chunks()
        if col.null_count:
            add(np.flatnonzero(np.asarray(col.is_null())), name, "null value")
    if problems.total > before:
        return problems

    # Duplicate user ids, inside the file and against earlier files.
    seen_here: dict[str, int] = {}
    dup_rows, dup_msgs = [], {}
    for row, u in enumerate(id_list):
        if u in seen_here:
            dup_rows.append(row)
            dup_msgs[row] = f"duplicate user id (also at row {seen_here[u] + problems.row0})"
        elif seen_ids is not None and u in seen_ids:
            dup_rows.append(row)
            dup_msgs[row] = "duplicate user id (already in an earlier file)"
        else:
            seen_here[u] = row
    if dup_rows:
        add(np.array(dup_rows), "user_id", dup_msgs.__getitem__, "user_id: duplicate user id")
    if seen_ids is not None:
        seen_ids.update(seen_here)

    ref = ts_seconds(table.column("ref_time").combine_chunks())
    n = table.num_rows

    # Tabular: one length for all users, finite values.
    tab = table.column("tabular").combine_chunks()
    lengths = np.asarray(pc.list_value_length(tab))
    if n and (lengths != lengths[0]).any():
        add(np.flatnonzero(lengths != lengths[0]), "tabular",
            lambda r: f"expected {lengths[0]} features like row 0, got {lengths[r]}",
            "tabular: feature count differs between users")
    values = pc.list_flatten(tab)
    if values.null_count:
        parents = np.asarray(pc.list_parent_indices(tab))
        add(np.unique(parents[np.asarray(values.is_null())]), "tabular", "null feature")
    vals = values.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        parents = np.asarray(pc.list_parent_indices(tab))
        add(np.unique(parents[bad]), "tabular", "NaN or inf feature value")

    for name in attribute_columns(table.schema):
        col = table.column(name).combine_chunks()
        if _is_float(col.type) and not _is_string(col.type):
            nonfinite = ~np.isfinite(col.to_numpy(zero_copy_only=False).astype(np.float64))
            add(np.flatnonzero(nonfinite), name, "NaN or inf attribute value")
    for name in label_columns_of(table.schema):
        col = table.column(name).combine_chunks()
        if pa.types.is_integer(col.type):
            v = col.to_numpy(zero_copy_only=False)
            add(np.flatnonzero((v != 0) & (v != 1)), name,
                lambda r: f"label {col[r].as_py()}, expected 0 or 1", f"{name}: not 0 or 1")

    total_events = np.zeros(n, dtype=np.int64)
    for modality in spec.modalities:
        m = modality.name
        for name, lo_days, hi_days in ((m, -spec.history_days, 0),
                                       (future_column(m), 0, spec.future_days)):
            col = table.column(name).combine_chunks()
            counts = np.asarray(pc.list_value_length(col))
            if name == m:
                total_events += counts
            flat = pc.list_flatten(col)
            if len(flat) == 0:
                continue
            parents = np.asarray(pc.list_parent_indices(col))
            nulls = False
            for fname in ["ts", *modality.fields]:
                field = flat.field(fname)
                if field.null_count:
                    nulls = True
                    add(np.unique(parents[np.asarray(field.is_null())]), f"{name}.{fname}",
                        "null value in an event")
            if nulls:
                continue
            ts = ts_seconds(flat.field("ts"))
            # Sorted within each user: a decrease between neighbours of the same user.
            backwards = np.flatnonzero((parents[1:] == parents[:-1]) & (np.diff(ts) < 0))
            if len(backwards):
                add(parents[backwards + 1], f"{name}.ts", lambda r, b=dict(
                    zip(parents[backwards + 1].tolist(), backwards.tolist())):
                    f"events not sorted by time (event at {_fmt(ts[b[r] + 1])} comes after "
                    f"{_fmt(ts[b[r]])})", f"{name}.ts: events not sorted by time")
            lo = ref[parents] + lo_days * DAY
            hi = ref[parents] + hi_days * DAY
            outside = np.flatnonzero((ts < lo) | (ts >= hi))
            if len(outside):
                window = "history" if name == m else "future"
                days = spec.history_days if name == m else spec.future_days
                first = dict(zip(parents[outside][::-1].tolist(), outside[::-1].tolist()))
                add(parents[outside], f"{name}.ts", lambda r: (
                    f"event at {_fmt(ts[first[r]])} lies outside the {window} window "
                    f"[{_fmt(lo[first[r]])}, {_fmt(hi[first[r]])})"),
                    f"{name}.ts: event outside the {window} window ({days} days)")
            for fname in modality.number_fields:
                v = flat.field(fname).to_numpy(zero_copy_only=False).astype(np.float64)
                nonfinite = ~np.isfinite(v)
                if nonfinite.any():
                    add(np.unique(parents[nonfinite]), f"{name}.{fname}",
                        "NaN or inf value in an event")
    if empty_history == "error":
        empty = np.flatnonzero(total_events == 0)
        if len(empty):
            add(empty, "events", "user has no history events in any modality (keep such users "
                "with data.empty_history=keep)", "events: user has no history events")
    return problems


def _fmt(seconds: int | np.integer) -> str:
    return str(np.datetime64(int(seconds), "s")).replace("T", " ")


def dataset_files(path: str | Path) -> list[Path]:
    """The Parquet user files of a dataset: a file, or ``users*.parquet`` in a directory."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory of user Parquet files")
    files = sorted(path.glob("users*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path}: no users*.parquet files in this directory")
    return files


def validate_dataset(path: str | Path, *, batch_rows: int = 65_536,
                     empty_history: str = "error", examples: int = 20) -> int:
    """Validate every file of a dataset, reading it a row group at a time.

    Returns the number of users; raises :class:`DataValidationError` with every problem
    counted by kind and the first ``examples`` of each kind."""
    if empty_history not in EMPTY_HISTORY:
        raise ValueError(f"empty_history {empty_history!r}: expected one of {EMPTY_HISTORY}")
    seen: set[str] = set()
    problems = Problems(examples)
    n_users = 0
    tab_len: int | None = None
    spec: DatasetSpec | None = None
    for file in dataset_files(path):
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataValidationError(f"{file}: not a readable Parquet file ({e})") from e
        before = problems.total
        _check_types(pf.schema_arrow, str(file), problems)
        if problems.total > before:
            continue
        declared = schema_spec(pf.schema_arrow, str(file))
        if spec is None:
            spec = declared
        elif declared != spec:
            problems.add("dataset declaration differs between files",
                         Problem(str(file), "metadata", f"declares {declared.metadata()}, "
                                 f"earlier files {spec.metadata()}"))
            continue
        row0 = 0
        for batch in pf.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch]).replace_schema_metadata(
                pf.schema_arrow.metadata)
            problems.row0 = row0
            validate_table(table, str(file), seen_ids=seen, problems=problems,
                           empty_history=empty_history)
            if table.num_rows:
                lengths = pc.list_value_length(table.column("tabular"))
                first = pc.min(lengths).as_py()
                if tab_len is None:
                    tab_len = first
                elif first != tab_len:
                    problems.add("tabular: feature count differs between files",
                                 Problem(str(file), "tabular", f"expected {tab_len} features "
                                         f"like earlier files, got {first}", 0))
            row0 += table.num_rows
        problems.row0 = 0
        n_users += row0
    problems.raise_if_any()
    return n_users


def tabular_names(path: str | Path) -> list[str]:
    """Feature names from the first file's metadata, or ``f0, f1, ...`` when absent."""
    file = dataset_files(path)[0]
    pf = pq.ParquetFile(file)
    meta = pf.schema_arrow.metadata or {}
    if TABULAR_NAMES_KEY in meta:
        return list(json.loads(meta[TABULAR_NAMES_KEY]))
    first = next(pf.iter_batches(batch_size=1, columns=["tabular"]), None)
    n = 0 if first is None or first.num_rows == 0 else len(first.column(0)[0])
    return [f"f{i}" for i in range(n)]

"""The user data schema: one Parquet row per user, and its validation.

Every input file, synthetic or a user's own, goes through :func:`validate_table` before
anything reads it. Errors name the file, the row, the user id and the field; nothing is
silently dropped or repaired.

Columns (see README "Data schema" for the field-by-field table):

- ``user_id``: string, unique across all files of a dataset.
- ``ref_time``: timestamp (any unit; UTC, naive values read as UTC). The history window is
  ``[ref_time - 90 days, ref_time)``, the future window ``[ref_time, ref_time + 30 days)``.
- ``tabular``: list<double>, one fixed-length feature vector per user; feature names live in
  the Parquet key-value metadata under ``maskstudy.tabular_names`` (JSON list).
- one list<struct<ts, ...fields>> column per event modality, the history events in ascending
  time order: ``bill``, ``minipro``, ``spm``, ``app``, ``search`` for the payment-app world of
  the papers (the default), or the modalities the file declares in its key-value metadata under
  ``maskstudy.modalities`` (JSON list; e.g. ``["rating"]`` for MovieLens).
- ``future_<modality>``: the same for the future window. They feed labels and contrastive
  answers only, never the user-tower input.
- optional ``attr_<name>`` columns (string or number, one value per user): attributes such as
  age or gender that label tasks may read. Like the future columns they never reach the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HISTORY_DAYS = 90
FUTURE_DAYS = 30
DAY = 86_400

# The payment-app world's modalities (the papers' data): what a file without a declaration has.
EVENT_MODALITIES = ("bill", "minipro", "spm", "app", "search")
# The template's segments for those: the event modalities and the tabular feature vector.
SEGMENTS = EVENT_MODALITIES + ("tabular",)

TS_TYPE = pa.timestamp("ms", tz="UTC")  # what Parquet stores; any unit is accepted on read

# Per modality, the event fields besides ``ts`` and their Arrow types.
EVENT_FIELDS: dict[str, dict[str, pa.DataType]] = {
    "bill": {"merchant": pa.string(), "category": pa.string(), "amount": pa.float64()},
    "minipro": {"name": pa.string(), "category": pa.string()},
    "spm": {"spm": pa.string()},
    "app": {"app": pa.string(), "category": pa.string(), "minutes": pa.float64()},
    "search": {"query": pa.string()},
    # A rated movie: "Toy Story (1995)", genres joined by "|", the rating (MovieLens: 1-5).
    "rating": {"title": pa.string(), "genres": pa.string(), "rating": pa.float64()},
}

TABULAR_NAMES_KEY = b"maskstudy.tabular_names"
MODALITIES_KEY = b"maskstudy.modalities"
ATTRIBUTE_PREFIX = "attr_"


def segments(modalities: Iterable[str]) -> tuple[str, ...]:
    """The template's segments for a dataset's modalities: each modality, then tabular."""
    return tuple(modalities) + ("tabular",)


def schema_modalities(schema: pa.Schema, file: str = "") -> tuple[str, ...]:
    """The event modalities a file declares (registry order), or the default five."""
    meta = schema.metadata or {}
    if MODALITIES_KEY not in meta:
        return EVENT_MODALITIES
    where = f"{file}, metadata '{MODALITIES_KEY.decode()}'"
    try:
        declared = json.loads(meta[MODALITIES_KEY])
    except ValueError as e:
        raise DataValidationError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(declared, list) or not declared or not all(
            isinstance(m, str) for m in declared):
        raise DataValidationError(f"{where}: expected a non-empty JSON list of modality names, "
                                  f"got {declared!r}")
    unknown = [m for m in declared if m not in EVENT_FIELDS]
    if unknown:
        raise DataValidationError(f"{where}: unknown modality {unknown[0]!r}; expected names "
                                  f"among {list(EVENT_FIELDS)}")
    return tuple(m for m in EVENT_FIELDS if m in declared)


def dataset_modalities(path: str | Path) -> tuple[str, ...]:
    """The event modalities of a dataset (its first file's declaration)."""
    return schema_modalities(pq.ParquetFile(dataset_files(path)[0]).schema_arrow,
                             str(dataset_files(path)[0]))


def table_modalities(table: pa.Table, *, future: bool = False) -> tuple[str, ...]:
    """The modalities whose history (or future) columns a table holds, in registry order."""
    names = set(table.column_names)
    return tuple(m for m in EVENT_FIELDS if (future_column(m) if future else m) in names)


def attribute_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n.startswith(ATTRIBUTE_PREFIX)]


def future_column(modality: str) -> str:
    return f"future_{modality}"


def event_struct(modality: str) -> pa.StructType:
    fields = [pa.field("ts", TS_TYPE, nullable=False)]
    fields += [pa.field(k, t, nullable=False) for k, t in EVENT_FIELDS[modality].items()]
    return pa.struct(fields)


def user_schema(tabular_names: Iterable[str] | None = None,
                modalities: Iterable[str] = EVENT_MODALITIES,
                attributes: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The canonical Arrow schema of a user file; modalities other than the default five are
    declared in the metadata, ``attributes`` become ``attr_<name>`` columns."""
    modalities = tuple(modalities)
    fields = [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ref_time", TS_TYPE, nullable=False),
        pa.field("tabular", pa.list_(pa.float64()), nullable=False),
    ]
    for m in modalities:
        fields.append(pa.field(m, pa.list_(event_struct(m)), nullable=False))
    for m in modalities:
        fields.append(pa.field(future_column(m), pa.list_(event_struct(m)), nullable=False))
    for name, typ in (attributes or {}).items():
        fields.append(pa.field(ATTRIBUTE_PREFIX + name, typ, nullable=False))
    metadata = {}
    if tabular_names is not None:
        metadata[TABULAR_NAMES_KEY] = json.dumps(list(tabular_names)).encode()
    if modalities != EVENT_MODALITIES:
        metadata[MODALITIES_KEY] = json.dumps(list(modalities)).encode()
    return pa.schema(fields, metadata=metadata or None)


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


def _check_types(schema: pa.Schema, file: str) -> list[Problem]:
    """Column presence and types. Returns problems; types must be right before values are read."""
    problems: list[Problem] = []
    want = user_schema(modalities=schema_modalities(schema, file))
    for name in attribute_columns(schema):
        actual = schema.field(name).type
        if not (_is_string(actual) or _is_float(actual)):
            problems.append(Problem(file, name, f"expected a string or number attribute, "
                                                f"got {actual}"))
    for f in want:
        if f.name not in schema.names:
            problems.append(Problem(file, f.name, "missing column"))
            continue
        actual = schema.field(f.name).type
        if f.name in ("user_id", "ref_time"):
            if not _type_ok(actual, f.type):
                problems.append(Problem(file, f.name, f"expected {f.type}, got {actual}"))
            continue
        if not _is_list(actual):
            problems.append(Problem(file, f.name, f"expected a list column ({f.type}), got {actual}"))
            continue
        if f.name == "tabular":
            if not _is_float(actual.value_type):
                problems.append(
                    Problem(file, "tabular", f"expected list<double>, got {actual}")
                )
            continue
        item = actual.value_type
        modality = f.name.removeprefix("future_")
        if not pa.types.is_struct(item):
            problems.append(Problem(file, f.name, f"expected list<struct>, got {actual}"))
            continue
        present = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
        for name, expected in [("ts", TS_TYPE)] + list(EVENT_FIELDS[modality].items()):
            if name not in present:
                problems.append(Problem(file, f"{f.name}.{name}", "missing event field"))
            elif not _type_ok(present[name], expected):
                problems.append(
                    Problem(file, f"{f.name}.{name}", f"expected {expected}, got {present[name]}")
                )
    return problems


def seconds_to_ts(seconds: np.ndarray) -> pa.Array:
    """int64 seconds since the epoch as the schema's timestamp type."""
    return pa.array(np.asarray(seconds, dtype=np.int64) * 1000).cast(TS_TYPE)


def ts_seconds(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Timestamps of any unit as int64 seconds since the epoch (nulls must be checked first).
    Time-zone-naive timestamps are read as UTC."""
    return pc.cast(arr, pa.timestamp("s", tz="UTC"), safe=False).cast(pa.int64()).to_numpy(
        zero_copy_only=False
    )


def _first_rows(mask: np.ndarray, limit: int) -> np.ndarray:
    return np.flatnonzero(mask)[:limit]


def validate_table(
    table: pa.Table, file: str, *, seen_ids: set[str] | None = None, limit: int = 20
) -> list[Problem]:
    """All schema problems of one table (at most ``limit`` per check), in reading order.

    ``seen_ids`` carries user ids across the files of one dataset so duplicates between
    files are found too; it is updated in place.
    """
    problems = _check_types(table.schema, file)
    if problems:
        return problems  # values cannot be read meaningfully with the wrong types
    modalities = schema_modalities(table.schema, file)

    ids = table.column("user_id").combine_chunks()
    id_list = ids.to_pylist()

    def uid(row: int) -> str | None:
        return id_list[row]

    def add(rows: Iterable[int], field: str, message) -> None:
        for r in rows:
            problems.append(Problem(file, field, message(r) if callable(message) else message,
                                    int(r), uid(int(r))))

    # Nulls anywhere a value is required.
    for name in ("user_id", "ref_time", "tabular", *modalities,
                 *map(future_column, modalities), *attribute_columns(table.schema)):
        col = table.column(name).combine_chunks()
        if col.null_count:
            add(_first_rows(np.asarray(col.is_null()), limit), name, "null value")
    if problems:
        return problems

    # Duplicate user ids, inside the file and against earlier files.
    seen_here: dict[str, int] = {}
    for row, u in enumerate(id_list):
        if u in seen_here:
            add([row], "user_id", f"duplicate user id (also at row {seen_here[u]})")
        elif seen_ids is not None and u in seen_ids:
            add([row], "user_id", "duplicate user id (already in an earlier file)")
        else:
            seen_here[u] = row
        if len(problems) >= limit:
            break
    if seen_ids is not None:
        seen_ids.update(seen_here)

    ref = ts_seconds(table.column("ref_time").combine_chunks())
    n = table.num_rows

    # Tabular: one length for all users, finite values.
    tab = table.column("tabular").combine_chunks()
    lengths = np.asarray(pc.list_value_length(tab))
    if n and (lengths != lengths[0]).any():
        add(_first_rows(lengths != lengths[0], limit), "tabular",
            lambda r: f"expected {lengths[0]} features like row 0, got {lengths[r]}")
    values = pc.list_flatten(tab)
    if values.null_count:
        parents = np.asarray(pc.list_parent_indices(tab))
        add(np.unique(parents[np.asarray(values.is_null())])[:limit], "tabular", "null feature")
    vals = values.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        parents = np.asarray(pc.list_parent_indices(tab))
        add(np.unique(parents[bad])[:limit], "tabular", "NaN or inf feature value")

    for name in attribute_columns(table.schema):
        col = table.column(name).combine_chunks()
        if _is_float(col.type) and not _is_string(col.type):
            nonfinite = ~np.isfinite(col.to_numpy(zero_copy_only=False).astype(np.float64))
            add(_first_rows(nonfinite, limit), name, "NaN or inf attribute value")

    total_events = np.zeros(n, dtype=np.int64)
    for modality in modalities:
        for name, lo_days, hi_days in (
            (modality, -HISTORY_DAYS, 0),
            (future_column(modality), 0, FUTURE_DAYS),
        ):
            col = table.column(name).combine_chunks()
            counts = np.asarray(pc.list_value_length(col))
            if name == modality:
                total_events += counts
            flat = pc.list_flatten(col)
            if len(flat) == 0:
                continue
            parents = np.asarray(pc.list_parent_indices(col))
            for fname in ["ts", *EVENT_FIELDS[modality]]:
                field = flat.field(fname)
                if field.null_count:
                    rows = np.unique(parents[np.asarray(field.is_null())])[:limit]
                    add(rows, f"{name}.{fname}", "null value in an event")
            if problems:
                return problems
            ts = ts_seconds(flat.field("ts"))
            # Sorted within each user: a decrease between neighbours of the same user.
            same_user = parents[1:] == parents[:-1]
            backwards = same_user & (np.diff(ts) < 0)
            if backwards.any():
                idx = np.flatnonzero(backwards)[:limit]
                for i in idx:
                    r = int(parents[i + 1])
                    problems.append(Problem(
                        file, f"{name}.ts",
                        f"events not sorted by time (event at {_fmt(ts[i + 1])} comes after "
                        f"{_fmt(ts[i])})", r, uid(r)))
            lo = ref[parents] + lo_days * DAY
            hi = ref[parents] + hi_days * DAY
            outside = (ts < lo) | (ts >= hi)
            if outside.any():
                window = "history" if name == modality else "future"
                for i in np.flatnonzero(outside)[:limit]:
                    r = int(parents[i])
                    problems.append(Problem(
                        file, f"{name}.ts",
                        f"event at {_fmt(ts[i])} lies outside the {window} window "
                        f"[{_fmt(lo[i])}, {_fmt(hi[i])})", r, uid(r)))
            for fname, ftype in EVENT_FIELDS[modality].items():
                if pa.types.is_floating(ftype):
                    v = flat.field(fname).to_numpy(zero_copy_only=False).astype(np.float64)
                    nonfinite = ~np.isfinite(v)
                    if nonfinite.any():
                        rows = np.unique(parents[nonfinite])[:limit]
                        add(rows, f"{name}.{fname}", "NaN or inf value in an event")
    empty = total_events == 0
    if empty.any():
        add(_first_rows(empty, limit), "events", "user has no history events in any modality")
    return problems


def _fmt(seconds: int | np.integer) -> str:
    return str(np.datetime64(int(seconds), "s")).replace("T", " ")


def raise_problems(problems: list[Problem]) -> None:
    if problems:
        head = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataValidationError(f"{len(problems)} problem(s) in user data:\n  {head}{more}")


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


def validate_dataset(path: str | Path, *, batch_rows: int = 65_536) -> int:
    """Validate every file of a dataset, reading it a row group at a time.

    Returns the number of users; raises :class:`DataValidationError` listing the problems.
    """
    seen: set[str] = set()
    problems: list[Problem] = []
    n_users = 0
    tab_len: int | None = None
    modalities: tuple[str, ...] | None = None
    for file in dataset_files(path):
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataValidationError(f"{file}: not a readable Parquet file ({e})") from e
        type_problems = _check_types(pf.schema_arrow, str(file))
        if type_problems:
            problems += type_problems
            continue
        declared = schema_modalities(pf.schema_arrow, str(file))
        if modalities is None:
            modalities = declared
        elif declared != modalities:
            problems.append(Problem(str(file), MODALITIES_KEY.decode(),
                                    f"declares modalities {list(declared)}, earlier files "
                                    f"{list(modalities)}"))
            continue
        row0 = 0
        for batch in pf.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch]).replace_schema_metadata(
                pf.schema_arrow.metadata)
            found = validate_table(table, str(file), seen_ids=seen)
            for p in found:  # row numbers relative to the file, not the batch
                problems.append(Problem(p.file, p.field, p.message,
                                        None if p.row is None else p.row + row0, p.user_id))
            if table.num_rows:
                lengths = pc.list_value_length(table.column("tabular"))
                first = pc.min(lengths).as_py()
                if tab_len is None:
                    tab_len = first
                elif first != tab_len:
                    problems.append(Problem(str(file), "tabular",
                                            f"expected {tab_len} features like earlier files, "
                                            f"got {first}", row0))
            row0 += table.num_rows
            if len(problems) >= 20:
                raise_problems(problems)
        n_users += row0
    raise_problems(problems)
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

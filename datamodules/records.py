"""Columnar access to a batch of users, without a Python object per event.

A :class:`UserColumns` holds one Arrow table's event columns as numpy arrays plus list offsets;
string fields are dictionary-encoded once, so reading a user's events is a slice, and only
the strings actually rendered are touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .dataset import DatasetSpec, Modality
from .schema import future_column, table_modalities, table_spec, ts_seconds


@dataclass
class FieldColumn:
    """One event field: floats as ``values``, strings as ``codes`` into ``vocab``."""

    values: np.ndarray | None = None
    codes: np.ndarray | None = None
    vocab: list[str] | None = None

    def strings(self, lo: int, hi: int) -> list[str]:
        vocab = self.vocab
        return [vocab[c] for c in self.codes[lo:hi]]


@dataclass
class EventColumns:
    offsets: np.ndarray  # users + 1
    ts: np.ndarray  # seconds since the epoch
    fields: dict[str, FieldColumn]

    def span(self, i: int) -> tuple[int, int]:
        return int(self.offsets[i]), int(self.offsets[i + 1])


def _event_columns(col: pa.ChunkedArray | pa.Array, modality: Modality) -> EventColumns:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = np.asarray(col.offsets).astype(np.int64)
    offsets = offsets - offsets[0]
    flat = pc.list_flatten(col)
    ts = ts_seconds(flat.field("ts")) if len(flat) else np.zeros(0, np.int64)
    fields = {}
    for name, kind in modality.fields.items():
        arr = flat.field(name)
        if kind == "number":
            fields[name] = FieldColumn(values=arr.to_numpy(zero_copy_only=False).astype(float))
        elif kind == "timestamp":
            fields[name] = FieldColumn(values=ts_seconds(arr) if len(arr) else np.zeros(0))
        else:
            if pa.types.is_dictionary(arr.type):
                enc = arr
            else:
                enc = pc.dictionary_encode(arr)
            fields[name] = FieldColumn(codes=enc.indices.to_numpy(zero_copy_only=False),
                                       vocab=enc.dictionary.to_pylist())
    return EventColumns(offsets, ts, fields)


class UserColumns:
    """History (and optionally future) events, tabular features and ids of a user table; the
    modalities are the declared ones whose history columns the table holds, ``spec`` the
    table's declaration."""

    def __init__(self, table: pa.Table, *, future: bool = True):
        self.table = table  # its label columns serve scenario pairs
        self.n = table.num_rows
        self.user_ids: list[str] = table.column("user_id").to_pylist()
        self.ref_time = ts_seconds(table.column("ref_time"))
        tab = table.column("tabular").combine_chunks()
        width = len(tab[0]) if self.n else 0
        self.tabular = pc.list_flatten(tab).to_numpy(zero_copy_only=False).reshape(self.n, width)
        self.spec: DatasetSpec = table_spec(table)
        self.modalities = table_modalities(table)
        self.history = {m: _event_columns(table.column(m), self.spec.modality(m))
                        for m in self.modalities}
        self.future = ({m: _event_columns(table.column(future_column(m)),
                                          self.spec.modality(m))
                        for m in self.modalities} if future else None)

    def __len__(self) -> int:
        return self.n

"""The bag-of-events reference: logistic regression on history event counts.

Features, from the history columns only: for every event field that names a thing (the
fields a modality declares as category, text, list or path: merchants, mini-programs, pages,
apps, queries, movie titles, each genre of a movie, a shop's items), ``log1p`` of how often
each value occurs; per modality ``log1p`` of the event count, of the active days, of the
recent events (the last ``schema.RECENT_DAYS`` days) and of the days since the last event; the
summaries a modality declares of its number fields (the bill amount's sum and largest value,
the mean movie rating; a declared modality's numbers: sum and largest, as signed ``log1p``);
and the tabular vector. On MovieLens this is the bag-of-items baseline. The same features,
splits and logistic regression (``logistic.py``, its strength chosen like the embeddings'
probe's) serve the world summary and the study's reference row, so a trained encoder is
compared against exactly this number.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from .logistic import logistic_scores
from .schema import DAY, recent, table_modalities, table_spec, ts_seconds


def _page(values: pa.Array) -> pa.Array:
    """A dotted page id's first two parts (an spm id's page: a10.b1001)."""
    return pc.replace_substring_regex(values, r"^([^.]*\.[^.]*).*$", r"\1")


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _number_summaries(kinds: tuple[str, ...], values: np.ndarray, parents: np.ndarray,
                      counts: np.ndarray, n: int) -> list[np.ndarray]:
    out = []
    for kind in kinds:
        if kind == "sum":
            out.append(_signed_log1p(np.bincount(parents, weights=values, minlength=n)))
        elif kind == "max":
            largest = np.zeros(n)
            np.maximum.at(largest, parents, values)
            out.append(_signed_log1p(largest))
        else:  # mean
            out.append(np.bincount(parents, weights=values, minlength=n)
                       / np.maximum(counts, 1))
    return out


def _tabular(table: pa.Table) -> np.ndarray:
    """The tabular vectors (users x features)."""
    n = table.num_rows
    flat = pc.list_flatten(table.column("tabular").combine_chunks()).to_numpy(
        zero_copy_only=False)
    return flat.reshape(n, len(flat) // n if n else 0)


def _events(table: pa.Table, m: str, ref_day: np.ndarray):
    """Modality ``m``'s flattened events, each user's event count, and per event its user
    and its whole days before the user's reference time."""
    col = table.column(m).combine_chunks()
    flat = pc.list_flatten(col)
    counts = np.asarray(pc.list_value_length(col)).astype(float)
    parents = np.asarray(pc.list_parent_indices(col)).astype(np.int64)
    days = ts_seconds(flat.field("ts")) // DAY if len(flat) else np.zeros(0, np.int64)
    return flat, counts, parents, days, ref_day[parents] - days


def recent_events(parents: np.ndarray, ago: np.ndarray, n: int) -> np.ndarray:
    """Per user the recent events (``schema.recent``; ``ago``: each event's days before the
    reference time, ``parents``: its user)."""
    return np.bincount(parents[recent(ago)], minlength=n)


def activity(table: pa.Table) -> np.ndarray:
    """Per modality ``log1p`` of each user's events and recent events: the counts the
    template's activity header states (users x 2 * modalities)."""
    n = table.num_rows
    ref_day = ts_seconds(table.column("ref_time")) // DAY
    out = []
    for m in table_modalities(table):
        _, counts, parents, _, ago = _events(table, m, ref_day)
        out += [np.log1p(counts), np.log1p(recent_events(parents, ago, n))]
    return np.column_stack(out) if out else np.zeros((n, 0))


def bag_of_events(table: pa.Table) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse name-count features and dense summary features (users x features)."""
    n = table.num_rows
    spec = table_spec(table)
    rows, cols, vals = [], [], []
    offset = 0
    dense = []
    ref_day = ts_seconds(table.column("ref_time")) // DAY
    for m in table_modalities(table):
        modality = spec.modality(m)
        flat, counts, parents, days, ago = _events(table, m, ref_day)  # ago: 1..history_days
        dense.append(np.log1p(counts))
        pairs = np.unique(np.stack([parents, days]), axis=1) if len(flat) else np.zeros((2, 0))
        dense.append(np.log1p(np.bincount(pairs[0].astype(np.int64), minlength=n)))
        dense.append(np.log1p(recent_events(parents, ago, n)))
        last = np.full(n, float(spec.history_days + 1))
        np.minimum.at(last, parents, ago)
        dense.append(np.log1p(last))
        for f, kinds in modality.number_summaries.items():
            values = (flat.field(f).to_numpy(zero_copy_only=False).astype(float) if len(flat)
                      else np.zeros(0))
            dense += _number_summaries(kinds, values, parents, counts, n)
        for f in modality.counted_fields:
            if len(flat) == 0:
                continue
            values = flat.field(f)
            owners = parents
            kind = modality.fields[f]
            if kind == "path":
                values = _page(values)
            if kind == "list":
                items = pc.split_pattern(values, "|")
                owners = parents[np.asarray(pc.list_parent_indices(items))]
                values = pc.list_flatten(items)
            enc = pc.dictionary_encode(values).combine_chunks() if isinstance(
                values, pa.ChunkedArray) else pc.dictionary_encode(values)
            codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            k = len(enc.dictionary)
            key = owners.astype(np.int64) * k + codes
            uniq, cnt = np.unique(key, return_counts=True)
            rows.append(uniq // k)
            cols.append(offset + uniq % k)
            vals.append(np.log1p(cnt))
            offset += k
    sparse = sp.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0),
         (np.concatenate(rows) if rows else np.zeros(0, int),
          np.concatenate(cols) if cols else np.zeros(0, int))),
        shape=(n, offset))
    return sparse, np.column_stack(dense + [_tabular(table)])


def window_table(table: pa.Table, events: dict[str, np.ndarray],
                 tabular: np.ndarray) -> pa.Table:
    """``table`` cut to what a user tower reads: per modality each user's newest
    ``events[m][i]`` events, and the first ``tabular[i]`` tabular features (the others set to
    0). The bag of events on it is the linear reference of the same window the encoder sees."""
    n = table.num_rows
    for m, counts in events.items():
        col = table.column(m).combine_chunks()
        offsets = np.asarray(col.offsets).astype(np.int64)
        offsets -= offsets[0]
        lengths = np.diff(offsets)
        if len(counts) != n or np.any(counts < 0) or np.any(counts > lengths):
            raise ValueError(f"window of {m!r}: expected {n} counts, each between 0 and "
                             f"the user's number of {m!r} events")
        # the newest events are the last of each list
        starts = np.repeat(offsets[1:] - counts, counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        kept = pc.list_flatten(col).take(pa.array(starts + within))
        cut = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(counts)]), type=col.offsets.type), kept,
            type=col.type)
        table = table.set_column(table.schema.get_field_index(m), table.schema.field(m), cut)
    tab = _tabular(table).copy()
    if len(tabular) != n or np.any(tabular < 0) or np.any(tabular > tab.shape[1]):
        raise ValueError(f"window of the tabular features: expected {n} counts within "
                         f"0..{tab.shape[1]}")
    tab[np.arange(tab.shape[1]) >= tabular[:, None]] = 0
    field = table.schema.field("tabular")
    return table.set_column(table.schema.get_field_index("tabular"), field,
                            pa.array(list(tab), type=field.type))


def features(table: pa.Table, extra: np.ndarray | None = None) -> sp.csr_matrix:
    """The baseline's feature matrix: name counts plus standardised dense summaries (and the
    ``extra`` dense columns, e.g. :func:`activity` of a table before :func:`window_table`)."""
    sparse, dense = bag_of_events(table)
    if extra is not None:
        dense = np.column_stack([dense, extra])
    dense = StandardScaler().fit_transform(dense)
    return sp.hstack([sparse, sp.csr_matrix(dense)], format="csr")


# The rows' strength where ``eval.c`` fixes the embeddings' probe instead of letting each fit
# choose: the counts, unscaled, want a stronger regularisation than standardised embeddings.
FIXED_C = 0.1


def probe_auc(x, y: np.ndarray, test: np.ndarray, *, c: float | None = None) -> float:
    """Test AUC of a logistic regression on the train side at inverse strength ``c`` (None:
    chosen on the train side, ``logistic.py``); NaN when a side lacks a class."""
    fitted = logistic_scores(x, y, test, c=c)
    return float("nan") if fitted is None else float(roc_auc_score(y[test], fitted[0]))

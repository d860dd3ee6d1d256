"""The probe set: users held out from pretraining, their task labels and per-task splits.

Labels are computed once per dataset from the future, attribute and label columns (a row
group at a time); each task's train/test split is stratified and fixed by the split seed and
the task itself (see :func:`split_key`), never by which other tasks are requested, so every
recipe, seed and reference row is scored on the same test users.

A task whose probe users hold fewer than ``min_class_users`` positives or negatives cannot be
scored meaningfully: it is an error naming the task and its counts, or, with
``sparse_tasks="skip"``, left out and listed in :attr:`ProbeSet.skipped`, never averaged as
NaN.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import baseline
from .schema import EVENT_MODALITIES, DataValidationError, future_column, schema_spec
from .splits import stratified_split
from .stream import SplitSpec, split_tables
from .tasks import PAPERS, TASKS, Task, check_tasks, compute_labels, label_columns, task_names

SPARSE_TASKS = ("error", "skip")
# The fewest users of a class that leave one on each side of a task's train/test split: below
# it a test AUC does not exist.
MIN_SCORABLE = 2


def split_key(task: Task) -> int:
    """What fixes a task's test split besides the seed: a registered task's position in the
    list it is documented in (the papers' 17 tasks, ``all``, whose first 9 are the GG-SM
    suite; or the MovieLens suite), a study's own task its name."""
    if TASKS.get(task.name) == task:
        suite = "all" if set(task.papers) & set(PAPERS) else task.papers[0]
        return task_names(suite).index(task.name)
    return zlib.crc32(task.name.encode())


def history_columns(modalities: tuple[str, ...] = EVENT_MODALITIES) -> list[str]:
    """What the user tower may read: ids, reference time, tabular features, history events."""
    return ["user_id", "ref_time", "tabular", *modalities]


def all_columns(modalities: tuple[str, ...] = EVENT_MODALITIES) -> list[str]:
    """History plus future events (training pairs; attributes are for labels only)."""
    return history_columns(modalities) + [future_column(m) for m in modalities]


def check_task_columns(tasks: list[Task], file: Path) -> None:
    """Every column the tasks' labels read exists in the dataset (its first file)."""
    schema = pq.ParquetFile(file).schema_arrow
    spec = schema_spec(schema, str(file))
    modalities = spec.names
    try:
        check_tasks(tasks, spec)
    except ValueError as e:
        raise DataValidationError(f"{file}: {e}") from e
    for task in tasks:
        for column in task.rule.columns(modalities):
            if column not in schema.names:
                raise DataValidationError(
                    f"task {task.name!r} reads column {column!r}, which {file} does not have "
                    f"(modalities: {list(modalities)}); choose tasks of this dataset")


class ProbeSet:
    def __init__(self, files: list[Path], split: SplitSpec, tasks: list[Task], *,
                 test_fraction: float = 0.3, seed: int = 0,
                 min_class_users: int = MIN_SCORABLE,
                 sparse_tasks: str = "error"):
        if sparse_tasks not in SPARSE_TASKS:
            raise ValueError(f"sparse_tasks {sparse_tasks!r}: expected one of {SPARSE_TASKS}")
        self.files = files
        self.split = split
        self.tasks = tasks
        self.modalities = schema_spec(pq.ParquetFile(files[0]).schema_arrow,
                                      str(files[0])).names
        self.test_fraction = test_fraction
        self.seed = seed
        self.min_class_users = min_class_users
        self.sparse_tasks = sparse_tasks
        self.user_ids: list[str] = []
        self.labels: np.ndarray | None = None
        self.index: dict[str, int] = {}
        self.skipped: dict[str, dict[str, int]] = {}  # task -> positives, negatives
        self._history_events: np.ndarray | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _tables(self, columns: list[str]):
        return split_tables(self.files, self.split, columns)

    def load(self) -> "ProbeSet":
        if self.labels is not None:
            return self
        check_task_columns(self.tasks, self.files[0])
        columns = label_columns(self.tasks, self.modalities)
        ids, labels = [], []
        for table in self._tables(["user_id", "ref_time", *columns]):
            ids += table.column("user_id").to_pylist()
            labels.append(compute_labels(table, self.tasks))
        if not ids:
            raise ValueError(f"{self.files[0].parent}: no probe users (probe_fraction="
                             f"{self.split.probe_fraction})")
        self.user_ids = ids
        self.index = {u: k for k, u in enumerate(ids)}
        self.labels = self._enough_of_each_class(np.concatenate(labels))
        return self

    def _enough_of_each_class(self, labels: np.ndarray) -> np.ndarray:
        """The labels of the tasks that can be scored; the others fail or are skipped."""
        positives = labels.sum(0).astype(int)
        negatives = len(labels) - positives
        sparse = [k for k in range(len(self.tasks))
                  if min(positives[k], negatives[k]) < self.min_class_users]
        if not sparse:
            return labels
        counts = {self.tasks[k].name: {"positives": int(positives[k]),
                                       "negatives": int(negatives[k])} for k in sparse}
        if self.sparse_tasks == "error" or len(sparse) == len(self.tasks):
            listed = "; ".join(f"{t}: {c['positives']} positive(s), {c['negatives']} "
                               f"negative(s)" for t, c in counts.items())
            raise DataValidationError(
                f"{len(sparse)} task(s) cannot be scored on the {len(labels)} probe users "
                f"(at least {self.min_class_users} of each class needed): {listed}. Choose "
                f"other tasks, or set eval.sparse_tasks=skip to leave them out"
                + (" (every task is affected)" if len(sparse) == len(self.tasks) else ""))
        self.skipped = counts
        keep = [k for k in range(len(self.tasks)) if k not in sparse]
        self.tasks = [self.tasks[k] for k in keep]
        return labels[:, keep]

    def test_mask(self, task: str) -> np.ndarray:
        """Boolean mask over probe users: the task's deterministic stratified test split."""
        k = self.task_names.index(task)
        return stratified_split(self.labels[:, k], test_fraction=self.test_fraction,
                                seed=self.seed * 1000 + split_key(self.tasks[k]))

    def prevalence(self) -> dict[str, float]:
        return {t: float(self.labels[:, k].mean()) for k, t in enumerate(self.task_names)}

    def history_events(self) -> np.ndarray:
        """Each probe user's number of history events over every modality, in label order:
        how active the user was, the ranking zero-shot targeting is read against (read once,
        then every evaluation reuses it)."""
        if self._history_events is not None:
            return self._history_events
        self.load()
        events = np.zeros(len(self.user_ids), dtype=np.int64)
        start = 0
        for table in self._tables(["user_id", *self.modalities]):
            for m in self.modalities:
                lengths = pc.fill_null(pc.list_value_length(table.column(m)), 0)
                events[start:start + table.num_rows] += np.asarray(lengths, dtype=np.int64)
            start += table.num_rows
        if start != len(events):
            raise RuntimeError(f"read {start} probe users' histories, {len(events)} labelled")
        self._history_events = events
        return events

    def history_table(self) -> pa.Table:
        """The probe users' history columns, in label order (for the bag-of-events row)."""
        return pa.concat_tables(list(self._tables(history_columns(self.modalities))))

    def history_features(self):
        """The bag-of-events features of every history event of the probe users, in label
        order (``baseline.features``)."""
        return baseline.features(self.history_table())

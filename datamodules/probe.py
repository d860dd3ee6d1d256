"""The probe set: users held out from pretraining, their task labels and per-task splits.

Labels are computed once per dataset from the future columns (a row group at a time); each
task's train/test split is stratified and fixed by the split seed and the task's position,
so every recipe, seed and reference row is scored on the same test users.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import EVENT_MODALITIES, future_column, schema_modalities
from .splits import stratified_split
from .stream import SplitSpec, split_tables
from .tasks import Task, compute_labels, label_columns


def history_columns(modalities: tuple[str, ...] = EVENT_MODALITIES) -> list[str]:
    """What the user tower may read: ids, reference time, tabular features, history events."""
    return ["user_id", "ref_time", "tabular", *modalities]


def all_columns(modalities: tuple[str, ...] = EVENT_MODALITIES) -> list[str]:
    """History plus future events (training pairs; attributes are for labels only)."""
    return history_columns(modalities) + [future_column(m) for m in modalities]


def check_task_columns(tasks: list[Task], file: Path) -> None:
    """Every column the tasks' labels read exists in the dataset (its first file)."""
    schema = pq.ParquetFile(file).schema_arrow
    modalities = schema_modalities(schema, str(file))
    for task in tasks:
        for column in task.rule.columns(modalities):
            if column not in schema.names:
                raise ValueError(f"task {task.name!r} reads column {column!r}, which {file} "
                                 f"does not have (modalities: {list(modalities)}); choose "
                                 f"tasks of this dataset")


class ProbeSet:
    def __init__(self, files: list[Path], split: SplitSpec, tasks: list[Task], *,
                 test_fraction: float = 0.3, seed: int = 0):
        self.files = files
        self.split = split
        self.tasks = tasks
        self.modalities = schema_modalities(pq.ParquetFile(files[0]).schema_arrow, str(files[0]))
        self.test_fraction = test_fraction
        self.seed = seed
        self.user_ids: list[str] = []
        self.labels: np.ndarray | None = None
        self.index: dict[str, int] = {}

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
        self.labels = np.concatenate(labels)
        self.index = {u: k for k, u in enumerate(ids)}
        return self

    def test_mask(self, task: str) -> np.ndarray:
        """Boolean mask over probe users: the task's deterministic stratified test split."""
        k = self.task_names.index(task)
        return stratified_split(self.labels[:, k], test_fraction=self.test_fraction,
                                seed=self.seed * 1000 + k)

    def prevalence(self) -> dict[str, float]:
        return {t: float(self.labels[:, k].mean()) for k, t in enumerate(self.task_names)}

    def history_table(self) -> pa.Table:
        """The probe users' history columns, in label order (for the bag-of-events row)."""
        return pa.concat_tables(list(self._tables(history_columns(self.modalities))))

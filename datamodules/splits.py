"""Deterministic user splits.

A user's split follows from a stable hash of ``seed:user_id`` alone, so it does not depend on
file order, sharding or the number of users. Pretraining (train/val) and probe users are
disjoint: contrastive answers are built from the future window, the same window the task
labels come from, so a probe user seen in pretraining would leak its labels.
"""

from __future__ import annotations

import zlib

import numpy as np

TRAIN, VAL, PROBE = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "probe": PROBE}


def user_splits(user_ids, *, probe_fraction: float, val_fraction: float, seed: int) -> np.ndarray:
    """Split code per user: TRAIN, VAL or PROBE (fractions of all users)."""
    if not (0 <= probe_fraction < 1 and 0 <= val_fraction < 1
            and probe_fraction + val_fraction < 1):
        raise ValueError(f"split fractions probe={probe_fraction}, val={val_fraction}: each "
                         f"must lie in [0, 1) and their sum below 1")
    prefix = f"{seed}:".encode()
    u = np.fromiter((zlib.crc32(prefix + uid.encode()) for uid in user_ids), dtype=np.uint64,
                    count=len(user_ids)) / 2.0**32
    return np.where(u < probe_fraction, PROBE,
                    np.where(u < probe_fraction + val_fraction, VAL, TRAIN)).astype(np.int8)


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask with ``test_fraction`` of each class (rounded), fixed by ``seed``.

    Each class contributes at least one user to each side when it has two or more."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        k = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        test[rng.permutation(idx)[:k]] = True
    return test

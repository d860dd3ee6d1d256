"""Reference rows are computed once, however many processes ask for them at once."""

import json
import threading
import time

from maskstudy.experiments.config import EXPERIMENTS_DIR, cache_dir, load_config
from maskstudy.experiments.data import ProbeSourceAdapter, build_datamodules
from maskstudy.experiments.locks import file_lock
from maskstudy.experiments.references import _cache_key, reference_rows
from tests.helpers import tiny


def test_a_held_lock_is_reported_not_waited_for(tmp_path):
    path = tmp_path / "row.json"
    with file_lock(path) as held:
        with file_lock(path, wait=False) as other:
            assert held and not other
    with file_lock(path, wait=False) as free:
        assert free


def test_rows_another_process_is_computing_are_waited_for_and_read(world, tmp_path):
    """While another holder computes the bag-of-events row, reference_rows computes the
    others first, then waits for the holder and reads its row instead of computing it."""
    cfg = load_config(EXPERIMENTS_DIR / "causal.yaml", tiny(world, tmp_path))
    probe_dm = build_datamodules(cfg)[1]
    source = ProbeSourceAdapter(probe_dm, "ggsm")
    cache = cache_dir(cfg)
    cache.mkdir(parents=True)
    held = cache / f"bag_of_events-{_cache_key(cfg, 'bag_of_events', probe_dm.probe.tasks)}.json"
    holder_row = {"tasks": {}, "metrics": {"eval/avg_auc": 0.123}, "seconds": 0.0}
    locked = threading.Event()

    def holder():
        with file_lock(held):
            locked.set()
            while len(list(cache.glob("*.json"))) < 2:  # the untrained and window rows
                time.sleep(0.05)
            held.write_text(json.dumps(holder_row))

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(10)
    rows = reference_rows(cfg, probe_dm, source)
    thread.join(10)
    assert rows["bag_of_events"] == holder_row
    assert set(rows) == {"untrained", "bag_of_events", "bag_of_events_window"}
    assert 0 < rows["bag_of_events_window"]["metrics"]["eval/avg_auc"] <= 1  # computed here

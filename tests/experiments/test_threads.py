"""Cores handed on to running processes: the share file and signal, and a sweep's tail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from maskstudy.experiments.sweep import run_sweep
from maskstudy.experiments.threads import give_threads, share_env

# A process that follows its share, waits up to ``wait`` seconds until it is handed other
# threads than it started with, and records both counts where a sweep looks for a finished run.
POINT = """
import json, sys, time
from pathlib import Path
import torch
from maskstudy.experiments.threads import follow_share
follow_share()
args = dict(a.split("=", 1) for a in sys.argv[1:])
start = torch.get_num_threads()
deadline = time.time() + float(args["wait"])
while torch.get_num_threads() == start and time.time() < deadline:
    time.sleep(0.02)
run = Path(args["run_root"]) / "point" / "s0"
run.mkdir(parents=True)
(run / "results.json").write_text(json.dumps([start, torch.get_num_threads()]))
"""


def wait_for(path, seconds=60.0):
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_running_process_takes_the_threads_it_is_handed(tmp_path):
    script = tmp_path / "point.py"
    script.write_text(POINT)
    share = tmp_path / "threads"
    share.with_suffix(".pid").write_text("1")  # left by an earlier process: never signalled
    env = share_env(dict(os.environ), share, 1)
    assert not share.with_suffix(".pid").exists() and env["OMP_NUM_THREADS"] == "1"
    assert not give_threads(share, 3)  # not listening yet
    child = subprocess.Popen([sys.executable, str(script), f"run_root={tmp_path}", "wait=60"],
                             env=env)
    wait_for(share.with_suffix(".pid"))
    assert give_threads(share, 3)
    assert child.wait(timeout=60) == 0
    assert json.loads((tmp_path / "point" / "s0" / "results.json").read_text()) == [1, 3]
    assert not give_threads(share, 2)  # it has exited


def sweep_threads(tmp_path, monkeypatch, waits: list[int], **kwargs) -> list[list[int]]:
    """Each point's thread counts at its start and end, on four cores and two workers."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("maskstudy.experiments.threads.cores", lambda: 4)
    monkeypatch.setattr("maskstudy.experiments.sweep.PRINT_EVERY", 0.2)
    (tmp_path / "point.py").write_text(POINT)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"program: point\nmethod: grid\nparameters:\n  wait: {{values: {waits}}}\n"
                    f"command: ['${{interpreter}}', '{tmp_path / 'point.py'}', "
                    "'${args_no_hyphens}']\n")
    runs = run_sweep(path, tmp_path / "out", workers=2, echo=lambda *_: None, **kwargs)
    assert [r.status for r in runs] == ["done", "done"]
    return [json.loads(next(r.dir.glob("*/*/results.json")).read_text()) for r in runs]


def test_the_last_point_of_a_sweep_takes_the_freed_cores(tmp_path, monkeypatch):
    """Two points on two workers: when the first finishes, the second gets every core."""
    assert sweep_threads(tmp_path, monkeypatch, [0, 60], hand_on_cores=True) == [[2, 2], [2, 4]]


def test_by_default_a_point_keeps_its_share(tmp_path, monkeypatch):
    """Without hand_on_cores a point's thread count, and so its numbers, never depend on when
    the others finish."""
    assert sweep_threads(tmp_path, monkeypatch, [0, 3]) == [[2, 2], [2, 2]]

"""The CPU threads of processes that run side by side, and cores handed on as they free up.

Parallel processes (a sweep's points, a benchmark's rows) each get an equal share of the
cores (``OMP_NUM_THREADS``), so they do not oversubscribe them. When the last processes of a
sweep run and the others have finished, their cores would sit idle; ``maskstudy sweep
--hand-on-cores`` then gives the running ones the freed cores (off by default: a run's
numbers depend on its thread count). A process cannot be given threads through its
environment once it runs, so the handover is a file and a signal:

- the parent names a share file in the child's environment (``SHARE_ENV``) and writes the
  thread count into it before signalling;
- the child (:func:`follow_share`, at the start of the CLI) installs a ``SIGUSR1`` handler
  that sets torch's thread count from the file, then writes its pid beside the file (the
  ``.pid`` file) to say it listens: a signal sent before the handler exists would kill it,
  so the parent signals only a pid it read there (:func:`give_threads`).

Python runs the handler in the main thread between two statements, so a running matrix
product finishes with the threads it started with.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

SHARE_ENV = "MASKSTUDY_THREAD_SHARE"


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def share(processes: int) -> int:
    """Threads per process when ``processes`` run side by side (at least one)."""
    return max(1, cores() // max(1, processes))


def share_env(env: dict, file: Path, threads: int) -> dict:
    """``env`` for a child that starts with ``threads`` threads and follows ``file``; the pid
    file of an earlier child (an interrupted sweep's) goes first, so its pid is never
    signalled."""
    file.with_suffix(".pid").unlink(missing_ok=True)
    file.write_text(str(threads))
    return {**env, "OMP_NUM_THREADS": str(threads), SHARE_ENV: str(file)}


def follow_share() -> None:
    """In a child started with ``SHARE_ENV``: follow the thread count its parent hands out
    (see the module docstring). Without it, nothing happens."""
    path = os.environ.get(SHARE_ENV)
    if not path:
        return
    file = Path(path)

    def take_threads(signum, frame):
        import torch

        torch.set_num_threads(int(file.read_text()))

    signal.signal(signal.SIGUSR1, take_threads)
    written = file.with_suffix(".pid.tmp")  # renamed, so the parent never reads half a pid
    written.write_text(str(os.getpid()))
    written.replace(file.with_suffix(".pid"))


def give_threads(file: Path, threads: int) -> bool:
    """In the parent: hand ``threads`` to the child following ``file``. False when it does
    not listen (yet, or any more): its handler is not installed, or it has exited."""
    pid_file = file.with_suffix(".pid")
    if not pid_file.exists():
        return False
    file.write_text(str(threads))
    try:
        os.kill(int(pid_file.read_text()), signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True

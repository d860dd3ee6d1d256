"""The run directory, and the one thing ranks must agree on before training: where it is."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path

import torch

from .config import ExperimentConfig


def launched_world_size() -> int:
    """Processes started by a launcher (torchrun, SLURM via Lightning's environment)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shared_run_dir(cfg: ExperimentConfig) -> Path:
    """The run directory, created once: with several launched processes, rank 0 creates it and
    broadcasts its path (the process group is opened here, Lightning reuses it)."""
    if launched_world_size() <= 1:
        return make_run_dir(cfg)
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)  # env:// from the launcher
    path = [str(make_run_dir(cfg)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def make_run_dir(cfg: ExperimentConfig) -> Path:
    """``run_root/name/<timestamp>``, suffixed ``-1``, ``-2``, ... when a run started in the
    same second already holds that name (mkdir is the claim, so parallel launches never
    share a directory)."""
    root = Path(cfg.run_root) / cfg.name
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for k in itertools.count():
            run = root / (f"{stamp}-{k}" if k else stamp)
            try:
                run.mkdir()
                break
            except FileExistsError:
                continue
        probe = run / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"run directory under {root}: not writable ({e}); set run_root") from e
    return run

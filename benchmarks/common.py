"""What the benchmarks share: machine facts, the RESULTS.md writer, a fixed training batch,
memory probes, paired-ratio statistics and the targets file."""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import re
import resource
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from maskstudy.datamodules.synthetic import WorldConfig, write_world

RESULTS = Path(__file__).with_name("RESULTS.md")
TARGETS = Path(__file__).with_name("targets.json")
VOCAB = 4096


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
    except (OSError, AttributeError):
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    libs = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "lightning",
                                                    "pyarrow", "tokenizers", "numpy"))
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}; {libs}; "
            f"{dt.date.today().isoformat()}")


def write_section(title: str, body: str, first: bool = False) -> None:
    """Replaces the ``## title`` section of RESULTS.md, or adds it (at the end, or with
    ``first`` right after the page title)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    elif first:
        head, _, rest = text.partition("\n")
        text = f"{head}\n\n{section}\n{rest.lstrip()}".rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


@functools.cache
def config_world() -> Path:
    """A 100-user synthetic world in a temporary directory, removed at exit. Recipes are
    checked against a dataset when they load; the benchmarks' batches are synthetic, so any
    valid world serves."""
    root = Path(tempfile.mkdtemp(prefix="maskstudy-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    write_world(WorldConfig(users=100, seed=0), root / "world")
    return root / "world"


def make_batch(batch: int, tokens: int, seed: int = 0, answer_tokens: int = 64) -> dict:
    """A training batch shaped like the datamodule's: right padding, history, 11 query
    tokens, the anchor. A quarter of the rows are shorter (60-100% of ``tokens``), as
    dynamic padding to the longest row leaves them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((batch,), tokens)
    short = batch // 4
    lengths[batch - short:] = torch.randint(int(tokens * 0.6), tokens + 1, (short,), generator=g)
    positions = torch.arange(tokens)[None]
    att = (positions < lengths[:, None]).long()
    seg = att.clone()  # history
    seg[(positions >= lengths[:, None] - 12) & (positions < lengths[:, None] - 1)] = 2  # query
    seg[positions == lengths[:, None] - 1] = 3  # anchor
    return {
        "user_input_ids": torch.randint(20, VOCAB, (batch, tokens), generator=g) * att,
        "user_attention_mask": att,
        "user_segment_ids": seg,
        "answer_input_ids": torch.randint(20, VOCAB, (batch, answer_tokens), generator=g),
        "answer_attention_mask": torch.ones(batch, answer_tokens, dtype=torch.long),
    }


def peak_rss_mib() -> float:
    """This process's resident high-water mark (VmHWM; unlike ru_maxrss it does not carry
    the parent's peak across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# glibc keeps freed blocks below this size in its arenas; above it, tensors are mmapped and
# returned on free, so a child's resident peak follows its live tensors (less allocator noise).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}


@contextlib.contextmanager
def saved_activations(module: torch.nn.Module):
    """Yields a dict that fills, during the block, with the storages autograd saves for
    backward (deduplicated, parameters excluded): ``sum(d.values())`` bytes is the activation
    memory a training step holds at the end of its forward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def median_interval(values, rounds: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, (rounds, values.size)), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def verdict(low: float, high: float, target: float) -> str:
    """``holds`` when the whole interval is within the target, ``missed`` when all of it is
    beyond, else ``undecided``."""
    return "holds" if high <= target else "missed" if low > target else "undecided"


def table(header: list[str], rows: list[str]) -> str:
    """A markdown table from its column names and already formatted ``| ... |`` rows."""
    return "\n".join([f"| {' | '.join(header)} |", "|" + "---|" * len(header), *rows])


def publish(title: str, command: str, notes: str, text: str, benchmark: str | None = None,
            targets: list[dict] | None = None) -> None:
    """Writes a benchmark's RESULTS.md section (the machine, the command and its notes, then
    ``text``) and, for a benchmark with targets, its rows of targets.json."""
    notes = f" ({notes})" if notes else ""
    write_section(title, f"Machine: {machine()}.\n\nCommand: `{command}`{notes}.\n\n{text}")
    if benchmark is not None:
        record_targets(benchmark, targets or [])


def ratio_row(what: str, ratio: float, low: float, high: float, target: float | None = None,
              of: str = "") -> dict:
    """A targets.json row for a ratio and its 95% interval, with the verdict against
    ``target`` (``<= target`` + ``of``), or reported only when ``target`` is None."""
    row = {"what": what, "measured": round(ratio, 3), "interval": [round(low, 3), round(high, 3)]}
    if target is None:
        return row | {"target": "report", "verdict": "-"}
    return row | {"target": f"<= {target:.2f}x{of}", "verdict": verdict(low, high, target)}


def record_targets(benchmark: str, rows: list[dict]) -> None:
    """Stores a benchmark's target checks in targets.json (``python -m benchmarks.targets``
    prints them all). Each row: what, measured, interval, target, verdict."""
    data = json.loads(TARGETS.read_text()) if TARGETS.exists() else {}
    data[benchmark] = {"machine": machine(), "rows": rows}
    TARGETS.write_text(json.dumps(data, indent=1) + "\n")

"""Sweeps in W&B sweep format, run by ``wandb agent`` anywhere or by ``maskstudy sweep`` here.

A sweep file (``experiments/sweeps/*.yaml``) holds ``program``, ``method`` (``grid`` or
``random``), ``metric``, ``parameters`` and ``command``, exactly as ``wandb sweep`` reads it.
Parameters are recipe names (``recipe``), group options (``mask``, ``data``, ``input``) and
config keys (``seed``, ``trainer.max_steps``, ...), which ``maskstudy fit`` takes as
``key=value``.

``maskstudy sweep FILE`` expands the same file locally: ``grid`` is the Cartesian product of
every parameter's ``values`` (in file order, the last parameter varying fastest); ``random``
draws ``run_cap`` (or ``--count``) points from the distributions with a fixed seed. Each point
runs as its own process from the file's ``command`` (the W&B macros ``${env}``,
``${interpreter}``, ``${program}``, ``${args}``, ``${args_no_hyphens}``, ``${args_json}`` are
expanded as the agent would), with three extra parameters: ``run_root`` (the point's own
directory), ``cache_dir`` (``<out>/.cache``, shared by every point, so the pre-trained
backbone and the reference rows are computed once) and ``logging.group`` (the sweep id, so
W&B groups the sweep's runs). A point whose
run directory holds a ``results.json`` is finished and skipped, so an interrupted sweep picks
up where it stopped.

Parallel points share the cores (``OMP_NUM_THREADS``). With ``hand_on_cores``, once no point
waits to start, the running ones take over the cores of the finished ones
(``experiments/threads.py``), so the last point of a sweep does not run on one core of two.
It is off by default because it costs reproducibility: a point's numbers depend on its thread
count (the order of floating-point sums), so they then depend on when it got the cores. In
the default study the last point took 78 s with the cores handed on and 114 s without, and
its task AUCs moved by up to 0.0007 (docs/results.md, "The study").

While points run, a status line every ``PRINT_EVERY`` (30) seconds says how many are done,
running and pending, where each running point is (its run's ``progress.json``: stage, step,
ETA), the time elapsed and an estimate of the time left.

Layout: ``<out>/sweep.json`` (the file, its id and every point's state) and
``<out>/points/<point id>/`` with ``point.json``, ``log.txt`` and the run directory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .progress import PRINT_EVERY, eta_seconds, minutes, read_progress
from .threads import give_threads, share, share_env

METHODS = ("grid", "random")
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}",
          "${args_json}")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "log_uniform_values",
                 "q_uniform")


class SweepError(ValueError):
    """A sweep file that cannot be run; the message names the file and key."""


@dataclass
class Sweep:
    path: Path
    spec: dict
    id: str
    points: list[dict] = field(default_factory=list)


def _fail(path, key: str, msg: str):
    raise SweepError(f"{path}: key '{key}': {msg}")


def load_sweep(path: str | Path, count: int | None = None) -> Sweep:
    """Reads, checks and expands a sweep file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep file {path}: no such file")
    text = path.read_text()
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a mapping with method, parameters and command")
    method = spec.get("method")
    if method not in METHODS:
        _fail(path, "method", f"{method!r}: maskstudy sweep runs {' or '.join(METHODS)} "
                              f"(bayes needs the W&B server: use wandb agent)")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        _fail(path, "parameters", "expected a non-empty mapping of parameter -> spec")
    for name, p in params.items():
        _check_parameter(path, name, p, method)
    command = spec.get("command", ["${env}", "${interpreter}", "${program}", "${args}"])
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        _fail(path, "command", "expected a list of strings")
    if "${program}" in command and not spec.get("program"):
        _fail(path, "program", "the command uses ${program} but the file names none")
    if not any(a in command for a in ("${args}", "${args_no_hyphens}", "${args_json}")):
        _fail(path, "command", "no ${args}, ${args_no_hyphens} or ${args_json}: the points' "
                               "parameters would never reach the program")
    spec["command"] = command
    metric = spec.get("metric")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric):
        _fail(path, "metric", "expected {name: ..., goal: maximize|minimize}")
    sweep_id = f"{path.stem}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    sweep = Sweep(path, spec, sweep_id)
    sweep.points = expand(spec, count=count, where=path)
    return sweep


def _check_parameter(path, name: str, p, method: str) -> None:
    key = f"parameters.{name}"
    if not isinstance(p, dict):
        _fail(path, key, "expected a mapping such as {values: [...]} or {value: ...}")
    if "parameters" in p:
        _fail(path, key, "nested parameters are not supported; use dotted names "
                         "(e.g. trainer.max_steps)")
    kinds = [k for k in ("value", "values", "distribution", "min") if k in p]
    if not kinds:
        _fail(path, key, "expected value, values, or a distribution with min/max")
    if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
        _fail(path, key, "values must be a non-empty list")
    dist = p.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        _fail(path, key, f"distribution {dist!r}: expected one of {list(DISTRIBUTIONS)}")
    if method == "grid" and not ("value" in p or "values" in p):
        _fail(path, key, "grid search needs value or values for every parameter")
    if ("min" in p) != ("max" in p):
        _fail(path, key, "min and max go together")


def expand(spec: dict, count: int | None = None, where="sweep") -> list[dict]:
    """The sweep's points as {parameter: value} dicts, in a stable order."""
    params = spec["parameters"]
    if spec["method"] == "grid":
        names = list(params)
        choices = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
        return [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    n = count or spec.get("run_cap")
    if not n:
        raise SweepError(f"{where}: key 'run_cap': a random sweep needs run_cap in the file "
                         f"or --count")
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    return [{name: _draw(p, rng) for name, p in params.items()} for _ in range(int(n))]


def _draw(p: dict, rng: np.random.Generator):
    if "value" in p:
        return p["value"]
    if "values" in p:
        return p["values"][int(rng.integers(len(p["values"])))]
    lo, hi = p["min"], p["max"]
    dist = p.get("distribution") or ("int_uniform" if isinstance(lo, int) and isinstance(hi, int)
                                     else "uniform")
    if dist == "int_uniform":
        return int(rng.integers(lo, hi + 1))
    if dist == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist == "q_uniform":
        q = p.get("q", 1)
        return float(round(rng.uniform(lo, hi) / q) * q)
    return float(rng.uniform(lo, hi))


def point_id(point: dict) -> str:
    """A stable id from the point's parameters (order-independent)."""
    return hashlib.sha1(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _fmt(value) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def overrides_text(params: dict) -> str:
    """Parameters as a point's command line gives them: ``key=value`` separated by spaces."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def point_parameters(run_dir: Path) -> dict | None:
    """The parameters of the sweep point a run directory belongs to (the ``point.json`` two
    levels above it: ``points/<id>/<name>/<time>``), or None for a run no sweep started."""
    path = Path(run_dir).parent.parent / "point.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["parameters"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a sweep point file (expected JSON with 'parameters': "
                         f"{e!r})") from e


def render_command(spec: dict, params: dict) -> list[str]:
    """The command the W&B agent would run for ``params``, macros expanded."""
    out: list[str] = []
    for part in spec["command"]:
        if part == "${env}":
            out.append("/usr/bin/env")
        elif part == "${interpreter}":
            out.append(sys.executable)
        elif part == "${program}":
            out.append(str(spec["program"]))
        elif part == "${args}":
            out += [f"--{k}={_fmt(v)}" for k, v in params.items()]
        elif part == "${args_no_hyphens}":
            out += [f"{k}={_fmt(v)}" for k, v in params.items()]
        elif part == "${args_json}":
            out.append(json.dumps(params))
        else:
            out.append(part)
    return out


def finished_run(point_dir: Path) -> Path | None:
    """The point's finished run directory (one holding results.json), if any."""
    done = sorted(point_dir.glob("*/*/results.json"))
    return done[-1].parent if done else None


@dataclass
class PointRun:
    point: dict
    id: str
    dir: Path
    command: list[str]
    status: str = "pending"  # pending | running | skipped (already finished) | done | failed
    seconds: float = 0.0
    threads: int | None = None  # the share it follows (hand_on_cores); None: fixed at start

    @property
    def share_file(self) -> Path:
        return self.dir / "threads"


def plan(sweep: Sweep, out: Path) -> list[PointRun]:
    runs = []
    for point in sweep.points:
        pid = point_id(point)
        pdir = out / "points" / pid
        # one cache for every point: the pre-trained backbone and references are shared
        extra = {"run_root": str(pdir.resolve()), "logging.group": sweep.id,
                 "cache_dir": str((out / ".cache").resolve())}
        run = PointRun(point, pid, pdir, render_command(sweep.spec, {**point, **extra}))
        if finished_run(pdir) is not None:
            run.status = "skipped"
        runs.append(run)
    return runs


def _execute(run: PointRun, workers: int = 1, follow: bool = False) -> PointRun:
    run.status = "running"
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "point.json").write_text(json.dumps(
        {"id": run.id, "parameters": run.point, "command": run.command}, indent=2) + "\n")
    start = time.perf_counter()
    with open(run.dir / "log.txt", "a") as log:
        log.write(f"$ {shlex.join(run.command)}\n")
        log.flush()
        code = subprocess.call(run.command, stdout=log, stderr=subprocess.STDOUT,
                               env=_env(run, workers, follow))
    run.seconds = time.perf_counter() - start
    run.status = "done" if code == 0 and finished_run(run.dir) else "failed"
    return run


def _env(run: PointRun, workers: int, follow: bool = False) -> dict:
    """The environment of a point: this interpreter's bin directory first on PATH, so the
    ``maskstudy`` of the running installation is the one ``${program}`` finds; with several
    workers the CPU threads are shared out (unless OMP_NUM_THREADS is set), so parallel points
    do not oversubscribe the cores; with ``follow`` the point follows its share
    (:func:`_hand_on_cores`)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if workers > 1 and "OMP_NUM_THREADS" not in env:
        threads = share(workers)
        if follow:
            run.threads = threads
            env = share_env(env, run.share_file, threads)
        else:
            env["OMP_NUM_THREADS"] = str(threads)
    return env


def _hand_on_cores(runs: list[PointRun]) -> None:
    """Once no point waits to start, the running points share the cores of the finished
    ones (``experiments/threads.py``); a point that does not listen yet is tried again at
    the next call."""
    if any(r.status == "pending" for r in runs):
        return
    running = [r for r in runs if r.status == "running" and r.threads is not None]
    threads = share(len(running))
    for r in running:
        if r.threads != threads and give_threads(r.share_file, threads):
            r.threads = threads


def _write_state(sweep: Sweep, out: Path, runs: list[PointRun]) -> None:
    state = {"id": sweep.id, "file": str(sweep.path), "spec": sweep.spec,
             "points": [{"id": r.id, "parameters": r.point, "status": r.status,
                         "seconds": round(r.seconds, 1), "command": r.command} for r in runs]}
    (out / "sweep.json").write_text(json.dumps(state, indent=2) + "\n")


def run_sweep(path: str | Path, out: str | Path | None = None, *, workers: int = 1,
              dry_run: bool = False, count: int | None = None,
              overrides: list[str] | None = None, hand_on_cores: bool = False,
              echo=print) -> list[PointRun]:
    """Runs every unfinished point (``workers`` at a time); with ``dry_run`` only lists them.
    ``overrides`` (``key=value``) join every point's parameters (and so its id);
    ``hand_on_cores``: see the module docstring."""
    sweep = load_sweep(path, count=count)
    extra = {}
    for item in overrides or []:
        if "=" not in item:
            raise SweepError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        extra[key] = value
    sweep.points = [{**p, **extra} for p in sweep.points]
    out = Path(out) if out else Path("runs") / "sweeps" / Path(path).stem
    runs = plan(sweep, out)
    todo = [r for r in runs if r.status == "pending"]
    echo(f"sweep {sweep.id}: {len(runs)} points, {len(runs) - len(todo)} finished, "
         f"{len(todo)} to run -> {out}")
    for r in runs:
        echo(f"  {r.id}  {r.status:<8} {overrides_text(r.point)}")
    if dry_run:
        if todo:
            echo(f"first command: {shlex.join(todo[0].command)}")
        return runs
    out.mkdir(parents=True, exist_ok=True)
    _write_state(sweep, out, runs)
    start = time.time()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        waiting = {pool.submit(_execute, r, workers, hand_on_cores) for r in todo}
        while waiting:
            finished, waiting = wait(waiting, timeout=PRINT_EVERY, return_when=FIRST_COMPLETED)
            for future in finished:
                r = future.result()
                echo(f"  {r.id}  {r.status} in {r.seconds:.0f}s ({r.dir / 'log.txt'})")
                _write_state(sweep, out, runs)
            if waiting:
                if hand_on_cores:
                    _hand_on_cores(todo)
                echo(status_line(todo, start, workers))
    return runs


def _label(point: dict) -> str:
    """A point's short name: its recipe and group choices, then its seed."""
    parts = [str(point[k]) for k in ("recipe", "data", "input", "mask") if k in point]
    return "/".join(parts or [point_id(point)]) + (f" s{point['seed']}" if "seed" in point else "")


def status_line(runs: list[PointRun], start: float, workers: int) -> str:
    """One line on a sweep in progress: counts, each running point's stage, step and ETA,
    elapsed and remaining time (from the points finished so far, else the running ones'
    ETAs)."""
    now = time.time()
    done = [r for r in runs if r.status in ("done", "failed")]
    running = [r for r in runs if r.status == "running"]
    pending = [r for r in runs if r.status == "pending"]
    parts, etas = [], []
    for r in running:
        p = read_progress(r.dir)
        if p is None:
            parts.append(f"{_label(r.point)} starting")
            continue
        eta = eta_seconds(p, now)
        etas.append(eta)
        steps = f" {p['step']}/{p['steps']}" if p.get("steps") else ""
        parts.append(f"{_label(r.point)} {p['stage']}{steps} (ETA {minutes(eta)})")
    if done:
        per_point = sum(r.seconds for r in done) / len(done)
        remaining = per_point * (len(pending) + 0.5 * len(running)) / max(1, workers)
    elif etas and all(e is not None for e in etas) and not pending:
        remaining = max(etas)
    else:
        remaining = None
    return (f"[{minutes(now - start)} elapsed, ~{minutes(remaining)} left] {len(done)} done, "
            f"{len(running)} running, {len(pending)} pending" +
            (": " + "; ".join(parts) if parts else ""))

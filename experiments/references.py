"""The reference rows every run is read against, computed once per dataset and cached in the
cache directory: the untrained model (the backbone as pre-trained, probed without contrastive
training), the bag-of-events logistic regression on every history event, and the same
regression on the window the user tower reads (each user's newest events that fit in
``data.max_tokens``): the gap between the two is what the window hides from any encoder, the
gap from a trained run to the window's row what the encoder does not extract of what it sees.
On a synthetic world, ``eval.ceiling`` adds the ceiling: each label's probability given the
latents the world drew the user from, which no score computed from the history can beat
(``datamodules/ceiling.py``)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import lightning as L

from maskstudy.callbacks.linear_probe import (REPRESENTATIONS, evaluate, probe_all,
                                              representation_metric, scores, summarise)
from maskstudy.datamodules import baseline, ceiling, logistic
from maskstudy.datamodules.datamodules import ProbeDataModule
from maskstudy.datamodules.schema import dataset_files
from maskstudy.lightning_modules.module import ContrastiveMaskingModule, MaskConfig

from .config import ExperimentConfig, cache_dir, to_dict
from .data import ProbeSourceAdapter
from .locks import file_lock
from .pretraining import PretrainedBackbone, load_pretrained

# kind -> what the row is (the report and the study table name the rows with it)
REFERENCE_NAMES = {"untrained": "untrained backbone", "bag_of_events": "bag-of-events LR",
                   "bag_of_events_window": "bag-of-events LR, the encoder's window",
                   "ceiling": "ceiling, P(label given the world's latents)"}
# the ceiling row's second reading: the latents as an embedding, through the run's probe
LATENTS = "latents"
# the rows that differ with the run's input (text or hierarchical): one row per input
PER_INPUT = ("untrained", "bag_of_events_window")


def _cache_key(cfg: ExperimentConfig, kind: str, tasks: list,
               backbone: PretrainedBackbone | None = None) -> str:
    stat = [(f.name, f.stat().st_size, int(f.stat().st_mtime))
            for f in dataset_files(cfg.data.path)]
    d = cfg.data
    parts = [kind, str(Path(d.path).resolve()), stat, d.probe_fraction, d.val_fraction,
             d.split_seed, [repr(t) for t in tasks], cfg.eval.test_fraction,
             cfg.eval.c, logistic.C_GRID, logistic.FOLDS]
    model = to_dict(cfg)
    if kind == "untrained":
        parts += [model["backbone"], model["encoder"], model["input"], d.tokenizer,
                  d.vocab_size, d.max_tokens, d.probe_query, d.anchor, cfg.seed, d.caps,
                  cfg.eval.representation, cfg.eval.query, REPRESENTATIONS]
        if backbone is not None:  # the reference is that pre-trained backbone
            parts.append(backbone.key)
    elif kind == "bag_of_events_window":  # what decides the window: the template
        parts += [model["input"], d.tokenizer, d.vocab_size, d.max_tokens, d.probe_query,
                  d.anchor, d.caps]
    elif kind == "ceiling":
        parts += [ceiling.DRAWS, ceiling.GENERATOR_VERSION]
    if kind not in ("bag_of_events", "ceiling"):  # the template decides what these rows read
        parts += d.opt_in_key_parts()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference_rows(cfg: ExperimentConfig, probe_dm: ProbeDataModule, source: ProbeSourceAdapter,
                   backbone: PretrainedBackbone | None = None) -> dict[str, dict]:
    """The untrained model (the backbone as pre-trained, no contrastive training; causal mask,
    the run's seed), the bag-of-events baseline on every event and on the encoder's window,
    and with ``eval.ceiling`` the world's ceiling, cached in the cache directory. Processes
    that need the same rows at once (a sweep's parallel points) share the work: each computes
    the rows no other is computing (a lock file per row), then waits for the others'."""
    cache = cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in REFERENCE_NAMES if k != "ceiling" or cfg.eval.ceiling]
    paths = {kind: cache / f"{kind}-{_cache_key(cfg, kind, probe_dm.probe.tasks, backbone)}.json"
             for kind in kinds}
    pending = list(kinds)
    for wait in (False, True):
        for kind in list(pending):
            with file_lock(paths[kind], wait=wait) as held:
                if not held:
                    continue
                if not paths[kind].exists():
                    row = _reference_row(kind, cfg, probe_dm, source, backbone)
                    paths[kind].write_text(json.dumps(row, indent=2) + "\n")
                pending.remove(kind)
    return {kind: json.loads(paths[kind].read_text()) for kind in kinds}


def _reference_row(kind: str, cfg: ExperimentConfig, probe_dm: ProbeDataModule,
                   source: ProbeSourceAdapter, backbone: PretrainedBackbone | None) -> dict:
    """One reference row: per-task scores, their summary and how long it took."""
    start = time.perf_counter()
    if kind == "untrained":
        L.seed_everything(cfg.seed, verbose=False)
        module_cfg = cfg.module_config()
        module_cfg.mask = MaskConfig(name="causal")  # the decoder as it comes, every recipe alike
        module_cfg.loss.ntp_weight = 0.0  # no training, no head: one reference per seed
        module = ContrastiveMaskingModule(module_cfg, vocab_size=probe_dm.vocab_size,
                                          modality_slots=probe_dm.modality_slots)
        load_pretrained(module, backbone)
        evaluation = evaluate(module, source, cfg.eval.c,
                              representation=cfg.eval.representation,
                              query=cfg.eval.query)
        per_task = evaluation.per_task
        # every representation's averages, so runs are read against the same one
        extra = {k: evaluation.metrics[k] for k in (
            representation_metric(name, key)
            for name in REPRESENTATIONS for key in ("avg_auc", "avg_ks"))}
    elif kind == "ceiling":
        users = probe_dm.probe.user_ids
        p = ceiling.label_probabilities(cfg.data.path, users, probe_dm.probe.tasks)
        latents = ceiling.latent_features(cfg.data.path, users)
        per_task = {}
        for k, task in enumerate(source.task_names):
            y, test = source.labels[:, k], source.test_mask(task)
            per_task[task] = scores(y[test], p[test, k])
        probed = probe_all(latents, source, cfg.eval.c)[0]
        # what the run's own probe reads from an embedding that holds every latent
        probed_metrics = summarise(probed, source.domains)
        extra = {representation_metric(LATENTS, key): probed_metrics[f"eval/{key}"]
                 for key in ("avg_auc", "avg_ks")}
    else:
        x = (probe_dm.probe.history_features() if kind == "bag_of_events"
             else probe_dm.window_features())
        c = None if cfg.eval.c is None else baseline.FIXED_C
        per_task, extra = probe_all(x, source, c, standardise=False)[0], {}
    return {"tasks": per_task, "metrics": summarise(per_task, source.domains) | extra,
            "seconds": time.perf_counter() - start}

"""Targeting with a frozen checkpoint (FIND): one sentence in, a ranked list of users out
(``maskstudy target``), and few-shot targeting from seed users (``maskstudy fewshot``).

A sentence goes through the answer tower; users are ranked by the cosine similarity of their
embeddings to the sentence's minus that to the reference sentence that states only an
activity level (:func:`~maskstudy.lightning_modules.targeting.targeting_direction`; every
answer the tower was trained on states its user's activity, which otherwise outweighs what a
sentence names). The users' embeddings are computed under the query the answers were trained
against (``data.behaviour_query``), or read from a ``maskstudy embed`` Parquet file in
chunks, so a pool of any size is ranked with memory for one chunk and the top K.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from maskstudy.callbacks.linear_probe import embed_probe_users, probe_scores, scores
from maskstudy.datamodules.datamodules import UserDataModule
from maskstudy.datamodules.pairs import REFERENCE_SENTENCE
from maskstudy.datamodules.schema import DataValidationError
from maskstudy.lightning_modules.prompts import init_prompts, prompted_text
from maskstudy.lightning_modules.targeting import (
    ranking_scores, targeting_direction, top_k_cosine, triplet_loss,
)

from .checkpoints import load_run
from .run import QUERY_KEY
from .data import ProbeSourceAdapter, probe_datamodule, suite_of

log = logging.getLogger(__name__)
CHUNK_ROWS = 65_536


def sentence_embeddings(module, dm: UserDataModule, texts: list[str]) -> torch.Tensor:
    """(N, D) answer-tower embeddings of ``texts``."""
    return module.embed_answers(*dm.sentences(texts)).float().cpu()


def direction(module, dm: UserDataModule, sentence: str, reference: bool = True) -> torch.Tensor:
    """The vector users are ranked by for ``sentence`` (see the module docstring)."""
    texts = [sentence, REFERENCE_SENTENCE] if reference else [sentence]
    embedded = sentence_embeddings(module, dm, texts)
    return targeting_direction(embedded[0], embedded[1] if reference else None)


def parquet_chunks(path: str | Path, rows: int = CHUNK_ROWS, dim: int | None = None
                   ) -> Iterator[tuple[list, torch.Tensor]]:
    """(user ids, (n, D) embeddings) of a ``maskstudy embed`` file, ``rows`` at a time;
    ``dim``: the dimension the embeddings must have."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--embeddings {path}: no such file")
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    missing = {"user_id", "embedding"} - set(names)
    if missing:
        raise DataValidationError(f"{path}: expected the columns user_id and embedding of "
                                  f"`maskstudy embed`, missing {sorted(missing)}")
    if "scenario" in names:
        raise DataValidationError(f"{path}: one row per (user, scenario); rank a file with one "
                                  f"embedding per user (`maskstudy embed` without --queries)")
    start = 0
    for batch in file.iter_batches(batch_size=rows, columns=["user_id", "embedding"]):
        column = batch.column("embedding")
        if column.null_count:
            raise DataValidationError(f"{path}: rows {start}-{start + len(batch) - 1} hold a "
                                      f"null embedding")
        offsets = np.asarray(column.offsets)
        widths = np.diff(offsets)
        odd = np.flatnonzero(widths != widths[0]) if len(widths) else []
        if len(odd):
            raise DataValidationError(f"{path}: row {start + int(odd[0])} has an embedding of "
                                      f"{widths[odd[0]]} values, earlier rows {widths[0]}")
        if dim is not None and len(widths) and widths[0] != dim:
            raise DataValidationError(f"{path}: embeddings of {widths[0]} values, the "
                                      f"checkpoint's have {dim}: a file of another model")
        values = np.asarray(column.values)[offsets[0]:offsets[-1]]
        yield (batch.column("user_id").to_pylist(),
               torch.from_numpy(values.reshape(len(batch), -1).astype(np.float32)))
        start += len(batch)


def model_chunks(module, dm: UserDataModule, split: str, query: str
                 ) -> Iterator[tuple[list, torch.Tensor]]:
    """(user ids, embeddings) of a split's users, one loader batch at a time."""
    for batch in dm.users_dataloader(split, query):
        yield batch["user_ids"], module.embed_users(batch).float().cpu()


def target_checkpoint(checkpoint: str | Path, sentence: str, *, top_k: int = 100,
                      embeddings: str | Path | None = None, split: str = "all",
                      reference: bool = True) -> tuple[list, np.ndarray, str]:
    """(user ids, scores, source): the ``top_k`` users for ``sentence``, best first, from
    ``embeddings`` (a ``maskstudy embed`` file) or computed for ``split``."""
    if embeddings is not None and not Path(embeddings).is_file():
        raise FileNotFoundError(f"--embeddings {embeddings}: no such file")
    cfg, module, _ = load_run(checkpoint)
    dm = UserDataModule(cfg.data, input=cfg.input)
    dm.setup()
    vector = direction(module, dm, sentence, reference)
    if embeddings is not None:
        query = pq.ParquetFile(embeddings).schema_arrow.metadata or {}
        found = query.get(QUERY_KEY, b"").decode() or None
        if found != cfg.data.behaviour_query:
            log.warning("%s: its users were embedded under %r, the answers were trained "
                        "against %r (`maskstudy embed --query behaviour` exports that)",
                        embeddings, found, cfg.data.behaviour_query)
        chunks = parquet_chunks(embeddings, dim=module.config.encoder.projector_out)
        where = str(embeddings)
    else:
        chunks = model_chunks(module, dm, split, cfg.data.behaviour_query)
        where = f"{split} users of {cfg.data.path}"
    keys, values = top_k_cosine(vector, chunks, top_k)
    return keys, values, where


def write_ranking(path: str | Path, users: list, values: np.ndarray) -> None:
    """rank, user_id, score as CSV or (``.parquet``) Parquet."""
    table = pa.table({"rank": pa.array(np.arange(1, len(users) + 1), pa.int64()),
                      "user_id": pa.array([str(u) for u in users], pa.string()),
                      "score": pa.array(values.astype(np.float32))})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)


def few_shot_task(module, sentence: tuple[torch.Tensor, torch.Tensor], reference: torch.Tensor,
                  users: np.ndarray, y: np.ndarray, test: np.ndarray, task: str, shots: int,
                  draw: int, fewshot, c: float | None = None) -> dict:
    """One draw of ``shots`` positive and negative seed users from the train side (fixed by
    the seed, the task, k and the draw): the test AUC of the prompt-tuned sentence (its ids
    and mask, (1, L); triplet loss, ranked against the ``reference`` embedding) and of a
    linear probe fitted on the same seeds."""
    rng = np.random.default_rng([fewshot.seed, draw, shots, zlib.crc32(task.encode())])
    train = ~test
    pos = rng.choice(np.flatnonzero(train & (y == 1)), shots, replace=False)
    neg = rng.choice(np.flatnonzero(train & (y == 0)), shots, replace=False)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    prompts = init_prompts(module.encoder, fewshot.prompt_tokens, gen)
    optimizer = torch.optim.Adam([prompts], lr=fewshot.lr)
    ids, mask = sentence
    u = torch.from_numpy(users)
    losses = []
    for _ in range(fewshot.steps):
        text = prompted_text(module.encoder, ids, mask, prompts)[0]
        loss = triplet_loss(targeting_direction(text, reference), u[pos], u[neg], fewshot.margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        text = prompted_text(module.encoder, ids, mask, prompts)[0]
        tuned = (u[test] @ targeting_direction(text, reference)).numpy()
    seeds = np.concatenate([pos, neg])
    x = np.concatenate([users[seeds], users[test]])
    side = np.r_[np.zeros(len(seeds), bool), np.ones(int(test.sum()), bool)]
    probe = probe_scores(x, np.concatenate([y[seeds], y[test]]), side, c=c)
    return {"fewshot": ranking_scores(y[test], tuned)["auc"],
            "probe": scores(y[test], probe)["auc"],
            # the triplet loss at the first and the last step: did the prompts move it?
            "loss": [losses[0], losses[-1]]}


def few_shot_checkpoint(checkpoint: str | Path, tasks: list[str] | None = None,
                        overrides: list[str] | None = None) -> dict:
    """The few-shot curve of a frozen checkpoint: per task and k in ``fewshot.shots``, the
    test AUC of the tuned sentence and of a linear probe on the same 2k seed users, over
    ``fewshot.draws`` draws, beside the zero-shot sentence (k = 0); written to
    ``<run>/fewshot/results.json``."""
    cfg, module, run_dir = load_run(checkpoint, overrides)
    module.requires_grad_(False)
    if tasks:
        cfg.eval.tasks = list(tasks)
    source = ProbeSourceAdapter(probe_datamodule(cfg), suite_of(list(cfg.eval.tasks)))
    dm = source.dm
    users = embed_probe_users(module, source, source.targeting_query)["projected"]
    reference = sentence_embeddings(module, dm, [REFERENCE_SENTENCE])[0]  # once for all tasks
    fs = cfg.fewshot
    out: dict = {"checkpoint": str(checkpoint), "fewshot": dataclasses.asdict(fs), "tasks": {}}
    for k, task in enumerate(source.task_names):
        y, test = source.labels[:, k].astype(int), source.test_mask(task)
        sentence = source.targets[task]
        ids = dm.sentences([sentence])
        text = module.embed_answers(*ids).float().cpu()[0]
        zero = ranking_scores(y[test], users[test] @ targeting_direction(text, reference).numpy())
        row: dict = {"sentence": sentence, "zero_shot": zero["auc"], "shots": {}}
        available = min(int((y[~test] == 1).sum()), int((y[~test] == 0).sum()))
        for shots in fs.shots:
            if shots > available:
                row["shots"][str(shots)] = {"skipped": f"{available} seed users of the "
                                                       f"rarer class on the train side"}
                continue
            draws = [few_shot_task(module, ids, reference, users, y, test, task, shots, d,
                                   fs, cfg.eval.c) for d in range(fs.draws)]
            row["shots"][str(shots)] = {key: [d[key] for d in draws]
                                        for key in ("fewshot", "probe", "loss")}
        out["tasks"][task] = row
        log.info("few-shot %s: %s", task, row)
    path = run_dir / "fewshot" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    out["path"] = str(path)
    return out


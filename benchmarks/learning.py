"""What makes the encoder learn, in two RESULTS.md sections.

    python -m benchmarks.learning [--data data/world] [--steps 160] [--workers 2] [--lexical-only]

"How far an answer can be told from its history": before any model, how well a lexical
matcher (TF-IDF over words, cosine) retrieves each validation user's own behaviour answer
among a batch of 16 from the user's template text, for each way of building answers and
history lengths, beside the number of history events and tabular features the template
keeps per user. This says how well-posed the contrastive task is.

"What makes the encoder learn": each row is one ``maskstudy fit causal`` (seed 0) on the
default world; the rows differ only in the overrides shown (the previous defaults, each fix
added in turn, each fix taken out of the defaults). Columns come from the run's
``results.json``: its learning check on the validation pairs (retrieval of the user's own
answer among the batch against chance 1/B; loss against the chance value of the negatives the
filter kept; spread of the user embeddings against the isotropic 1/sqrt(D)) and its probe
AUC on the projected and pooled representations, beside the untrained reference of the same
backbone. Runs go to ``runs/learning/`` and are reused when the script runs again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import publish, table
from maskstudy.callbacks.linear_probe import representation_metric
from maskstudy.experiments.threads import share

# The previous defaults, then each fix added in turn, then each fix taken out of the defaults.
OLD = ["pretrain.steps=0", "optim.backbone_lr_scale=1.0", "data.answer_selection=sampled"]
ROWS = {
    "previous defaults": OLD,
    "+ answers: top action types": OLD[:2],
    "+ backbone lr x0.1": OLD[:1],
    "+ next-token pre-training (the defaults)": [],
    "defaults, answers sampled": OLD[2:],
    "defaults, backbone lr x1": OLD[1:2],
    "defaults, no false-negative filter (margin 10)": ["loss.margin=10"],
}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def run(label: str, overrides: list[str], args, root: Path) -> dict:
    """One fit; every row shares ``root``, so the pre-trained backbone and the references
    are computed once (cached in ``root/.cache``), and each row has its own run name."""
    out = root / slug(label)
    done = sorted(out.rglob("results.json"))
    if not done:
        env = dict(os.environ, WANDB_MODE="disabled")
        if args.workers > 1:
            env.setdefault("OMP_NUM_THREADS", str(share(args.workers)))
        cmd = [sys.executable, "-m", "maskstudy.experiments.cli", "fit", "causal",
               f"name={slug(label)}", f"data.path={args.data}", f"run_root={root}",
               f"trainer.max_steps={args.steps}", "trainer.enable_progress_bar=false",
               "logging.wandb=false", f"seed={args.seed}", *overrides]
        start = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        log = root / f"{slug(label)}.log"
        with open(log, "w") as f:
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        if code:
            raise RuntimeError(f"{label}: fit failed (exit {code}); see {log}")
        print(f"{label}: {time.perf_counter() - start:.0f}s", flush=True)
        done = sorted(out.rglob("results.json"))
    return json.loads(done[-1].read_text())


def row(label: str, overrides: list[str], res: dict) -> str:
    check = res["learning"]
    m = res["metrics"]
    untrained = res["references"]["untrained"]["metrics"]["eval/avg_auc"]
    return (f"| {label} | {' '.join(overrides) or '-'} | "
            f"{check['retrieval_acc']:.3f} ({check['retrieval_ratio']:.1f}x) | "
            f"{check['loss']:.2f} ({check['loss_ratio']:.2f}x) | "
            f"{check['user_spread'] / check['spread_isotropic']:.2f}x | {check['user_rank']:.1f} | "
            f"{'yes' if check['passed'] else 'no'} | "
            f"{m[representation_metric('projected')]:.4f} | "
            f"{m[representation_metric('pooled')]:.4f} | {untrained:.4f} | "
            f"{res['train_seconds']:.0f} |")


# The lexical matcher's batch: each user's answer is retrieved among this many.
LEXICAL_BATCH = 16
# An event's text opens with its date (``05-31 19h takeout ...``); tabular features do not.
EVENT_DATE = re.compile(r"\b\d\d-\d\d\b")
# A tabular feature renders as ``name=value``; no event or query text holds ``=``.
FEATURE = re.compile(r"\w=")


def lexical_retrieval(data: str, overrides: list[str], batches: int = 20) -> dict[str, float]:
    """``retrieval``: the share of validation users (the first ``batches`` batches of
    ``LEXICAL_BATCH``, ``users`` of them) whose own answer is the TF-IDF nearest, among the
    answers of their batch, to their template text; ``events`` and ``features``: the median
    number of history events and tabular features the template kept per user."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from maskstudy.datamodules.datamodules import ContrastiveDataModule
    from maskstudy.experiments.config import load_config, recipe_path

    cfg = load_config(recipe_path("causal"),
                      [f"data.path={data}", f"data.batch_size={LEXICAL_BATCH}", *overrides])
    train_dm = ContrastiveDataModule(cfg.data, input=cfg.input)  # no probe set needed
    train_dm.setup()
    tok = train_dm.template.tok
    users, answers = [], []
    for k, batch in enumerate(train_dm.val_dataloader()):
        if k >= batches:
            break
        for side, out in (("user", users), ("answer", answers)):
            ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
            out += [tok.decode(ids[i][mask[i].bool()].tolist()) for i in range(len(ids))]
    vectors = TfidfVectorizer(token_pattern=r"[A-Za-z_]{3,}").fit(users + answers)
    sims = (vectors.transform(users) @ vectors.transform(answers).T).toarray()
    b = LEXICAL_BATCH
    hits = [np.mean(sims[i:i + b, i:i + b].argmax(1) == np.arange(b))
            for i in range(0, len(users) - b + 1, b)]
    events = np.median([len(EVENT_DATE.findall(text)) for text in users])
    features = np.median([len(FEATURE.findall(text)) for text in users])
    return {"retrieval": float(np.mean(hits)), "events": float(events),
            "features": float(features), "users": b * len(hits)}


ANSWER_ROWS = {
    "sampled action types (previous default), 256 tokens": ["data.answer_selection=sampled"],
    "top action types (default), 256 tokens": [],
    "top action types, 512 tokens": ["data.max_tokens=512"],
    "top action types, 1024 tokens": ["data.max_tokens=1024"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/world")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/learning")
    parser.add_argument("--lexical-only", action="store_true",
                        help="publish the first section only (no fits)")
    args = parser.parse_args(argv)
    rows, users = [], set()
    for label, overrides in ANSWER_ROWS.items():
        m = lexical_retrieval(args.data, overrides)
        users.add(m["users"])
        rows.append(f"| {label} | {' '.join(overrides) or '-'} | {m['events']:.0f} | "
                    f"{m['features']:.0f} | "
                    f"{m['retrieval']:.3f} ({m['retrieval'] * LEXICAL_BATCH:.1f}x) |")
    publish("How far an answer can be told from its history",
            "python -m benchmarks.learning --lexical-only",
            f"{' / '.join(map(str, sorted(users)))} validation users in batches of "
            f"{LEXICAL_BATCH}; chance 1/{LEXICAL_BATCH} = {1 / LEXICAL_BATCH:.4f}",
            table(["answers and history", "overrides", "history events kept per user (median)",
                   "tabular features kept per user (median)",
                   f"TF-IDF retrieval among {LEXICAL_BATCH} (x chance)"], rows))
    if args.lexical_only:
        return 0
    command = (f"python -m benchmarks.learning --steps {args.steps} --seed {args.seed} "
               f"--workers {args.workers}")
    root = Path(args.out)
    with ThreadPoolExecutor(args.workers) as pool:
        results = dict(zip(ROWS, pool.map(lambda kv: run(*kv, args, root), ROWS.items())))
    header = ["configuration", "overrides", "val retrieval (x chance 1/16)",
              "val loss (x its chance)", "user spread (x isotropic)", "effective rank",
              "learned", "avg AUC, projected", "avg AUC, pooled", "untrained reference",
              "train seconds"]
    publish("What makes the encoder learn", command,
            f"causal recipe, {args.steps} steps, seed {args.seed}, default world; the fits "
            f"live in {root} and are reused when the command runs again",
            "Learned: the run passed its learning check (`learning.*`: no collapse, val "
            "retrieval at least 2x chance, val loss at most 0.9x its chance value). The "
            "untrained reference is the backbone the run started from, probed without "
            "contrastive training (pre-trained where the row pre-trains).\n\n"
            + table(header, [row(label, ROWS[label], res) for label, res in results.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

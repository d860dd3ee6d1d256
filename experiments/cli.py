"""The ``maskstudy`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _data_synth(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.schema import validate_dataset
    from maskstudy.datamodules.synthetic import WorldConfig, write_world

    config = WorldConfig(users=args.users, seed=args.seed, ref_date=args.ref_date,
                         activity=args.activity)
    start = time.perf_counter()
    meta = write_world(config, args.out)
    elapsed = time.perf_counter() - start
    validate_dataset(args.out)
    print(f"wrote {meta['users']} users (seed {meta['seed']}) to {args.out} in {elapsed:.1f}s "
          f"({meta['users'] / max(elapsed, 1e-9) * 60:,.0f} users/min); files: "
          f"{', '.join(meta['files'])}")
    return 0


def _data_validate(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.schema import DataValidationError, validate_dataset

    try:
        n = validate_dataset(args.path)
    except (DataValidationError, FileNotFoundError) as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    print(f"{args.path}: {n} users, valid")
    return 0


def _data_summary(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.summary import format_summary, world_summary

    summary = world_summary(args.path, tasks=args.tasks, probe_fraction=args.probe_fraction,
                            split_seed=args.split_seed)
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _data_tokenizer(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.datamodules import DataConfig, UserDataModule, build_tokenizer

    dm = UserDataModule(DataConfig(path=args.path, vocab_size=args.vocab_size, validate=False))
    out = Path(args.out) if args.out else Path(args.path) / "tokenizer.json"
    build_tokenizer(dm, out, users=args.users)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskstudy",
        description="Study attention masks in decoder-only LLMs used as user encoders.")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate, validate and summarise user data",
                               description="Generate, validate and summarise user data.")
    data_cmds = data.add_subparsers(dest="data_command", required=True)

    synth = data_cmds.add_parser(
        "synth", help="write a synthetic user world as Parquet",
        description="Write a deterministic synthetic user world (users-*.parquet, world.json) "
                    "and validate it. Same arguments, same bytes.")
    synth.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    synth.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--ref-date", default="2026-06-01",
                       help="history/future split date, UTC (default 2026-06-01)")
    synth.add_argument("--activity", type=float, default=0.5,
                       help="scale of all event rates (default 0.5)")
    synth.set_defaults(func=_data_synth)

    validate = data_cmds.add_parser(
        "validate", help="check user Parquet files against the schema",
        description="Check a user Parquet file or directory of users*.parquet against the "
                    "schema; errors name the file, row, user id and field. Exit 1 if invalid.")
    validate.add_argument("path")
    validate.set_defaults(func=_data_validate)

    summary = data_cmds.add_parser(
        "summary", help="task prevalence and bag-of-events baseline AUC",
        description="Per-task prevalence on the probe users and the test AUC of a "
                    "bag-of-events logistic regression on each task's stratified split.")
    summary.add_argument("path")
    summary.add_argument("--tasks", default="all", help="ggsm, qanchor, all (default all)")
    summary.add_argument("--probe-fraction", type=float, default=0.3)
    summary.add_argument("--split-seed", type=int, default=0)
    summary.add_argument("--json", help="also write the summary as JSON to this file")
    summary.set_defaults(func=_data_summary)

    tok = data_cmds.add_parser(
        "tokenizer", help="train a tokenizer on a dataset's text",
        description="Train a BPE tokenizer with the template's special tokens on the text of "
                    "the training users; writes tokenizer.json.")
    tok.add_argument("path")
    tok.add_argument("--out", help="output file (default PATH/tokenizer.json)")
    tok.add_argument("--vocab-size", type=int, default=4096)
    tok.add_argument("--users", type=int, default=2000, help="training users read (default 2000)")
    tok.set_defaults(func=_data_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

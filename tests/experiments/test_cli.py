"""The data commands of the ``maskstudy`` CLI, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from maskstudy.experiments.cli import build_parser, main
from maskstudy.experiments.config import EvalConfig
from tests.helpers import table_of, user_row, write_movielens_source


def run(*args):
    return subprocess.run([sys.executable, "-m", "maskstudy.experiments.cli", *args],
                          capture_output=True, text=True)


def test_synth_writes_valid_parquet(tmp_path):
    out = tmp_path / "w"
    res = run("data", "synth", "--users", "300", "--seed", "4", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "wrote 300 users (seed 4)" in res.stdout
    assert pq.ParquetFile(out / "users-00000.parquet").metadata.num_rows == 300
    assert json.loads((out / "world.json").read_text())["seed"] == 4
    assert run("data", "validate", str(out)).stdout.strip() == (
        f"{out}: 300 users, valid (modalities bill, minipro, spm, app, search; 90 days of "
        f"history, 30 of future)")


def test_validate_reports_the_broken_user(tmp_path, capsys):
    bad = table_of(user_row("u1", bill=[(-2, "M", "dining", 1.0)]),
                   user_row("u2", bill=[(-1, "M", "dining", 1.0), (-3, "M", "dining", 1.0)]))
    pq.write_table(bad, tmp_path / "users.parquet")
    assert main(["data", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "row 1 (user_id='u2'), field 'bill.ts': events not sorted by time" in err


def test_summary_and_tokenizer(world, tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["data", "summary", str(world), "--tasks", "ggsm", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "concert" in printed and "average" in printed
    summary = json.loads(out.read_text())
    assert len(summary["tasks"]) == 9
    assert 0 < summary["tasks"]["login"]["prevalence"] < 1
    assert "window" not in printed and summary["encoder_window"] is None
    # --window adds the bag of events on what a user tower of that many tokens reads
    assert main(["data", "summary", str(world), "--tasks", "ggsm", "--window", "64", "--json",
                 str(out)]) == 0
    assert "window: the events a text user tower of 64 tokens reads" in capsys.readouterr().out
    windowed = json.loads(out.read_text())
    assert windowed["encoder_window"] == {"max_tokens": 64, "input": "text",
                                          "activity_header": False}
    full = [r["bag_of_events_auc"] for r in windowed["tasks"].values()]
    window = [r["window_bag_of_events_auc"] for r in windowed["tasks"].values()]
    assert full == [r["bag_of_events_auc"] for r in summary["tasks"].values()]
    assert all(0 < a < 1 for a in window) and window != full  # 64 tokens cut every history
    # --ceiling adds the AUC of each label's probability given the world's latents
    assert main(["data", "summary", str(world), "--tasks", "ggsm", "--ceiling", "20", "--json",
                 str(out)]) == 0
    assert "ceiling: the AUC of P(label | the world's latents), 20 redrawn" in (
        capsys.readouterr().out)
    ceilinged = json.loads(out.read_text())
    assert ceilinged["ceiling_draws"] == 20
    ceiling = [r["ceiling_auc"] for r in ceilinged["tasks"].values()]
    assert np.mean(ceiling) > np.mean(full) and all(0.5 < a <= 1 for a in ceiling)
    tok = tmp_path / "tok.json"
    assert main(["data", "tokenizer", str(world), "--out", str(tok), "--vocab-size", "300",
                 "--users", "20"]) == 0
    assert tok.exists()


def test_movielens_builds_summarises_and_names_bad_sources(tmp_path, capsys):
    write_movielens_source(tmp_path / "src", users=40)
    out = tmp_path / "ml"
    assert main(["data", "movielens", "--out", str(out), "--source", str(tmp_path / "src")]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert f"wrote {meta['users']} MovieLens users" in printed and meta["users_in"] == 40
    assert main(["data", "validate", str(out)]) == 0
    summary = tmp_path / "s.json"
    assert main(["data", "summary", str(out), "--tasks", "movielens", "--probe-fraction", "0.5",
                 "--json", str(summary)]) == 0
    written = json.loads(summary.read_text())
    # Every task is scored or listed as skipped with its counts (40 users: some have no
    # positive among the probe users), never averaged as NaN.
    assert len(written["tasks"]) + len(written["skipped"]) == 14
    # data summary applies the runs' own threshold (eval.min_class_users).
    assert all(min(c["positives"], c["negatives"]) < EvalConfig().min_class_users
               for c in written["skipped"].values())
    assert json.loads(summary.read_text())["world"]["dataset"] == "MovieLens-100k"
    capsys.readouterr()
    assert main(["data", "movielens", "--out", str(out), "--source", str(tmp_path)]) == 2
    assert "ml-100k.inter: missing" in capsys.readouterr().err
    # the ceiling needs the latents of a synthetic world: one line naming the file
    assert main(["data", "summary", str(out), "--tasks", "movielens", "--probe-fraction", "0.5",
                 "--ceiling", "4"]) == 2
    assert f"--ceiling: {out}/world.json: no world.json" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["data"], ["data", "synth"], ["data", "validate"],
                                     ["data", "summary"], ["data", "tokenizer"],
                                     ["data", "import"], ["data", "example-log"],
                                     ["data", "movielens"], ["fit"], ["eval"], ["embed"],
                                     ["study"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: maskstudy" in capsys.readouterr().out


def test_data_import_from_flags(tmp_path, capsys):
    events = tmp_path / "log.csv"
    events.write_text("who,day,item,price\nA,2026-09-30,tea,3\nB,2026-10-02,cake,5\n"
                      "B,2026-10-03,cake,x\n")
    flags = ["data", "import", "--events", str(events), "--out", str(tmp_path / "ds"),
             "--user-column", "who", "--time-column", "day", "--split-time", "2026-10-01",
             "--modality", "order"]
    assert main([*flags, "--fields", "item:category,price:number"]) == 0
    printed = capsys.readouterr().out
    assert "imported 2 users (1 without history events)" in printed
    assert "1  bad_number" in printed
    # Mistakes in the flags end in one line.
    assert main([*flags, "--fields", "item,price:number"]) == 2
    assert "--fields 'item': expected name:kind" in capsys.readouterr().err
    assert main([*flags, "--fields", "item:category", "--tabular", "age"]) == 2
    assert "give users" in capsys.readouterr().err

"""Prints every benchmark's target checks as one table and writes it to RESULTS.md.

    python -m benchmarks.targets

Reads ``benchmarks/targets.json``, which each benchmark updates when it runs (``make bench``
runs them all, then this).
"""

from __future__ import annotations

import json

from benchmarks.common import TARGETS, write_section

ORDER = ("recipes", "schedule_overhead", "data_throughput", "sequence_length")


def cell(value) -> str:
    if isinstance(value, list):
        return ", ".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def main() -> None:
    if not TARGETS.exists():
        raise SystemExit(f"{TARGETS}: no results yet; run `make bench`")
    data = json.loads(TARGETS.read_text())
    rows, machines = [], set()
    for name in sorted(data, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        machines.add(data[name]["machine"])
        for row in data[name]["rows"]:
            interval = f"[{cell(row['interval'])}]" if row["interval"] else ""
            rows.append(f"| {row['what']} | {cell(row['measured'])} {interval} | "
                        f"{row['target']} | {row['verdict']} | {name} |")
    table = ("| what | measured (ratio) [95%] | target | verdict | benchmark |\n"
             "|---|---|---|---|---|\n" + "\n".join(rows))
    print(table)
    body = ("Every target of the performance issue, as the last run of each benchmark measured "
            "it (`python -m benchmarks.targets` after `make bench`). Machine: "
            + "; ".join(sorted(machines)) + ".\n\n" + table)
    write_section("Targets", body, first=True)


if __name__ == "__main__":
    main()

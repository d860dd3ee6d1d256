"""A small generated purchase log, the worked example of bringing your own data.

``write_example_log(out)`` writes what a shop would export, and what ``maskstudy data
import`` reads:

- ``events.csv``: one row per purchased line (customer, date without a time of day, item,
  category, quantity, amount) from 2026-01-01 to past the end of the 90-day future window;
  a few rows are broken the way real exports are (no customer, an unreadable date, a
  quantity in words, a customer missing from the customer table), so the import report has
  something to count;
- ``customers.csv``: one row per customer: age and tenure (features), a country (an
  attribute) and two labels of the 90 days after the split on 2026-10-01, ``repurchase_90d``
  (buys again) and ``spend_50_90d`` (spends 50 or more). Some customers joined after the
  split or never bought: they have no history;
- ``import.yaml`` (the import spec), ``tasks/shop.yaml`` (the two labels and two event rules
  as tasks) and ``data/shop.yaml`` (a data option), so that with
  ``MASKSTUDY_CONFIG_PATH=<out>`` every command takes ``data=shop``.

Customers have a shopping rate, category tastes and a price level; the future keeps their
tastes with some drift and some customers stop, so the history predicts the labels without
deciding them. A seed fixes every byte.
"""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import numpy as np

START, SPLIT, FUTURE_DAYS = date(2026, 1, 1), date(2026, 10, 1), 90
CATALOGUE = {
    "music": [("CD album", 12.0), ("Vinyl record", 24.0), ("Concert DVD", 15.0),
              ("Headphones", 45.0)],
    "books": [("Paperback novel", 9.0), ("Cookbook", 22.0), ("Travel guide", 16.0),
              ("Comic", 7.0)],
    "games": [("Board game", 30.0), ("Puzzle", 14.0), ("Video game", 55.0),
              ("Card game", 11.0)],
    "home": [("Scented candle", 8.0), ("Tea towel set", 10.0), ("Ceramic mug", 6.5),
             ("Table lamp", 38.0)],
    "garden": [("Seed packet", 3.0), ("Plant pot", 9.5), ("Garden gloves", 7.0),
               ("Watering can", 18.0)],
    "toys": [("Plush bear", 13.0), ("Building bricks", 27.0), ("Toy car", 8.0),
             ("Kite", 15.0)],
    "beauty": [("Hand cream", 6.0), ("Perfume", 48.0), ("Lip balm", 4.0),
               ("Face mask", 5.5)],
    "sports": [("Yoga mat", 21.0), ("Water bottle", 9.0), ("Running socks", 8.5),
               ("Tennis balls", 6.0)],
}
COUNTRIES = ("UK", "DE", "FR", "NL", "ES")

IMPORT_SPEC = """\
# maskstudy data import --spec {out}/import.yaml  (paths relative to this file)
events: events.csv
users: customers.csv
out: dataset
user_column: customer_id
time_column: date
modalities:
  purchase:
    fields: {item: category, category: category, quantity: number, amount: number}
    kind_field: category        # the action type contrastive answers count
    noun: purchases
    render: ["{category}", "{item}", "x{quantity:g}", "{amount:.2f}"]
split_time: "2026-10-01"
future_days: 90                 # history: back to each file's earliest event
tabular: [age, tenure_days]
attributes: [country]
labels: [repurchase_90d, spend_50_90d]
"""

TASKS = """\
# The shop's tasks: eval.tasks [shop.yaml] (found in MASKSTUDY_CONFIG_PATH's tasks/).
tasks:
  repurchase:
    title: Buys again within 90 days
    query: Will this customer buy again in the next 90 days?   # eval.query=task reads it
    label: repurchase_90d
  big_spender:
    title: Spends 50 or more within 90 days
    label: spend_50_90d
  music:
    title: Buys music
    event: {modality: purchase, field: category, op: in, value: [music]}
  bulk:
    title: Buys three or more of one item
    event: {modality: purchase, field: quantity, op: ge, value: 3}
"""

DATA_OPTION = """\
# The example shop (maskstudy data example-log, then data import): data=shop.
data:
  path: {out}/dataset
  empty_history: keep           # customers who joined after the split are scored too
  behaviour_query: What will this customer buy next?
  probe_fraction: 0.4           # a small shop: enough probe customers per task
  tokenizer_users: 1000
eval:
  tasks: [shop.yaml]
"""


def _customers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    categories = len(CATALOGUE)
    return {
        "rate": np.exp(rng.normal(-3.2, 1.0, n)),  # shopping days per day
        "taste": rng.dirichlet(np.full(categories, 0.35), n),
        "price": np.exp(rng.normal(-0.3, 0.4, n)),
        "fading": rng.random(n) < 0.3,  # buys less and less, and stops after the split
        "joined": np.where(rng.random(n) < 0.1, rng.integers(0, 365, n),
                           rng.integers(-900, 0, n)),  # days after START
        "age": np.clip(rng.normal(41, 13, n).round(), 18, 80),
        "country": rng.choice(len(COUNTRIES), n, p=(0.4, 0.2, 0.15, 0.15, 0.1)),
    }


def _purchases(rng: np.random.Generator, c: dict, i: int, first: int, last: int,
               rate: float, taste: np.ndarray) -> list[tuple]:
    """(day, item, category, quantity, amount) lines of customer ``i`` in days [first, last)."""
    days = np.arange(max(first, int(c["joined"][i])), last)
    days = days[rng.random(len(days)) < rate]
    day = np.repeat(days, 1 + rng.poisson(0.6, len(days)))  # lines per shopping day
    names = list(CATALOGUE)
    cats = rng.choice(len(names), size=len(day), p=taste)
    picks = rng.integers(4, size=len(day))
    quantity = rng.geometric(0.6, size=len(day))
    noise = rng.uniform(0.9, 1.1, size=len(day))
    out = []
    for d, k, j, q, z in zip(day.tolist(), cats.tolist(), picks.tolist(), quantity.tolist(),
                             noise.tolist()):
        item, price = CATALOGUE[names[k]][j]
        out.append((d, item, names[k], q, round(price * q * c["price"][i] * z, 2)))
    return out


def write_example_log(out: str | Path, *, customers: int = 600, seed: int = 0) -> list[Path]:
    """Writes the example into ``out``; returns the files written."""
    out = Path(out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c = _customers(rng, customers)
    split = (SPLIT - START).days
    end = split + FUTURE_DAYS
    rows, labels = [], []
    for i in range(customers):
        cid = f"C{10000 + i}"
        rate = c["rate"][i]
        if c["fading"][i]:  # the last three months of history at a third of the rate
            history = (_purchases(rng, c, i, 0, split - 90, rate, c["taste"][i])
                       + _purchases(rng, c, i, split - 90, split, rate / 3, c["taste"][i]))
        else:
            history = _purchases(rng, c, i, 0, split, rate, c["taste"][i])
        drifted = rng.dirichlet(c["taste"][i] * 20 + 0.05)
        future_rate = (rate / 10 if c["fading"][i] else rate) * np.exp(rng.normal(0, 0.3))
        # Past the future window too: an export does not stop where the study does.
        future = _purchases(rng, c, i, split, end + 20, future_rate, drifted)
        in_window = [p for p in future if p[0] < end]
        labels.append((int(bool(in_window)), int(sum(p[4] for p in in_window) >= 50)))
        rows += [(cid, *p) for p in history + future]
    rows.sort(key=lambda r: (r[1], r[0]))  # exported by date
    events = out / "events.csv"
    with events.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "date", "item", "category", "quantity", "amount"])
        for k, (cid, day, item, cat, quantity, amount) in enumerate(rows):
            when = (START + timedelta(days=day)).isoformat()
            # A few lines broken the way exports break, at fixed positions.
            if k % 397 == 5:
                cid = ""
            elif k % 397 == 11:
                when = "n/a"
            elif k % 397 == 17:
                quantity = "two"
            elif k % 397 == 23:
                cid = "C99999"  # not in the customer table
            w.writerow([cid, when, item, cat, quantity, f"{amount:.2f}"])
    table = out / "customers.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "age", "tenure_days", "country", "repurchase_90d",
                    "spend_50_90d"])
        for i, (repurchase, spend) in enumerate(labels):
            tenure = max(split - int(c["joined"][i]), 0)
            w.writerow([f"C{10000 + i}", int(c["age"][i]), tenure,
                        COUNTRIES[c["country"][i]], repurchase, spend])
    written = [events, table]
    for path, text in ((out / "import.yaml", IMPORT_SPEC), (out / "tasks" / "shop.yaml", TASKS),
                       (out / "data" / "shop.yaml", DATA_OPTION)):
        path.write_text(text.replace("{out}", out.as_posix()))
        written.append(path)
    return written

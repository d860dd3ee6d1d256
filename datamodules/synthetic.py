"""A deterministic synthetic user world with the papers' structure.

Latent traits (age band, city tier, consumption power, interests, sensitivities, risks,
activity, churn propensity) drive Poisson event streams per category (``world_vocab.py``).
History and future windows share the traits up to a drift, so the future is forecastable from
the history but never copied from it. Everything is vectorised over a chunk of users, so the
generator writes tens of thousands of users per minute on one core, and a seed fixes every
byte of the output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import world_vocab as V
from .dataset import FUTURE_DAYS, HISTORY_DAYS, BUILTIN_MODALITIES, DatasetSpec
from .schema import (
    DAY, EVENT_MODALITIES, event_struct, future_column, seconds_to_ts, user_schema,
)

GENERATOR_VERSION = 1
WORLD_FILE = "world.json"  # the world's metadata beside its users files
SALE_DATES = ("03-08", "05-20", "06-18", "11-11", "12-12")  # calendar big-sale days
SPM_POSITIONS = 8


@dataclass(frozen=True)
class WorldConfig:
    users: int = 2000
    seed: int = 0
    ref_date: str = "2026-06-01"  # the history/future split, midnight UTC
    chunk_users: int = 1000  # users per Parquet row group; part of the seed contract
    file_users: int = 50_000  # users per Parquet file
    activity: float = 0.5  # scales every event rate; 1.0 is a very active payment-app user
    history_days: int = HISTORY_DAYS  # the windows the world declares
    future_days: int = FUTURE_DAYS

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec(history_days=self.history_days, future_days=self.future_days)

    def ref_epoch(self) -> int:
        d = date.fromisoformat(self.ref_date)
        return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def sample_traits(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Latent traits of ``n`` users: a standardised score matrix plus categorical facts."""
    age = rng.choice(len(V.AGE_BANDS), size=n, p=V.AGE_P)
    tier = rng.choice(len(V.CITY_TIER_P), size=n, p=V.CITY_TIER_P) + 1
    z = np.empty((n, len(V.TRAITS)))
    noise = rng.standard_normal((n, len(V.TRAITS)))
    t = V.T
    z[:, t["youth"]] = (2.0 - age) / 1.5 + 0.2 * noise[:, t["youth"]]
    z[:, t["urban"]] = (2.5 - tier) / 1.1 + 0.2 * noise[:, t["urban"]]
    youth, urban = z[:, t["youth"]], z[:, t["urban"]]
    mid_age = 1.0 - np.abs(age - 2.0) / 2.0

    def mix(name: str, *parts: tuple[np.ndarray, float], scale: float = 1.0) -> None:
        v = noise[:, t[name]] * scale
        for x, w in parts:
            v = v + w * x
        z[:, t[name]] = v

    mix("power", (urban, 0.4), (mid_age, 0.5))
    mix("commute", (urban, 0.5), (mid_age, 0.4))
    mix("food", (urban, 0.2))
    mix("movie", (youth, 0.3))
    mix("concert", (youth, 0.4), (z[:, t["movie"]], 0.3))
    mix("fitness", (z[:, t["power"]], 0.3))
    mix("gaming", (youth, 0.5))
    mix("takeout", (youth, 0.3), (urban, 0.3), (z[:, t["fitness"]], -0.2))
    mix("green", (youth, -0.2))
    mix("community", (youth, 0.2))
    mix("physical", (youth, -0.3), (z[:, t["power"]], -0.2))
    mix("brand", (z[:, t["power"]], 0.6))
    mix("value", (z[:, t["power"]], -0.5))
    mix("promo", (z[:, t["value"]], 0.3), (youth, 0.2))
    mix("travel", (z[:, t["power"]], 0.4))
    mix("finance", (z[:, t["power"]], 0.4), (youth, -0.2))
    # Rare risk profiles: a small share of users carries a high score.
    fraudster = rng.random(n) < 0.05
    z[:, t["fraud"]] = 0.5 * noise[:, t["fraud"]] - 0.3 + 2.2 * fraudster
    launderer = rng.random(n) < 0.03
    z[:, t["launder"]] = 0.4 * noise[:, t["launder"]] - 0.5 + 1.8 * launderer
    log_activity = rng.normal(0.0, 0.7, n)  # heavy-tailed activity multiplier
    z[:, t["churn"]] = noise[:, t["churn"]] - 0.6 * log_activity
    return {"z": z, "age": age, "tier": tier, "log_activity": log_activity}


def _trend_position(rng: np.random.Generator, b: np.ndarray) -> np.ndarray:
    """Samples x in [0, 1) with density 1 + b (x - 1/2), b in (-1, 1): activity trends."""
    u = rng.random(b.shape[0])
    safe = np.where(np.abs(b) < 1e-6, 1.0, b)
    a = 1.0 - safe / 2.0
    x = (-a + np.sqrt(a * a + 2.0 * safe * u)) / safe
    return np.clip(np.where(np.abs(b) < 1e-6, u, x), 0.0, 1.0 - 1e-9)


class _ModalityTable:
    """The vocabulary of one modality as arrays: loadings, profiles, surface forms."""

    def __init__(self, modality: str):
        cats = V.MODALITY_CATEGORIES[modality]
        self.modality = modality
        self.cats = cats
        self.names = [c.name for c in cats]
        self.rate = np.array([c.rate for c in cats])
        self.activity_exp = np.array([c.activity_exp for c in cats])
        load = np.zeros((len(cats), len(V.TRAITS)))
        for i, c in enumerate(cats):
            for k, w in c.loadings.items():
                load[i, V.T[k]] = w
        self.load = load
        self.hour_cdf = np.cumsum([V.HOURS[c.hours] for c in cats], axis=1)
        self.dow_cdf = np.cumsum([V.DOW[c.dow] for c in cats], axis=1)
        self.sale_only = np.array([c.sale_only for c in cats])
        self.amount = np.array([c.amount for c in cats])
        forms: list[str] = []
        self.form_start, self.form_count = [], []
        self.brand_start, self.brand_count = [], []
        for c in cats:
            surface = c.forms
            if modality == "spm":  # page id -> page.module.position ids
                surface = tuple(f"{c.forms[0]}.c{m}.d{p}" for m in range(1, c.extra["modules"] + 1)
                                for p in range(1, SPM_POSITIONS + 1))
            self.form_start.append(len(forms))
            self.form_count.append(len(surface))
            forms += surface
            self.brand_start.append(len(forms))
            self.brand_count.append(len(c.brand_forms))
            forms += c.brand_forms
        self.forms = pa.array(forms, pa.string())
        self.category_names = pa.array(self.names, pa.string())
        for name in ("form_start", "form_count", "brand_start", "brand_count"):
            setattr(self, name, np.array(getattr(self, name)))

    def rates(self, z: np.ndarray, log_activity: np.ndarray) -> np.ndarray:
        """Expected events per day, (users, categories). Loadings act log-linearly and are
        normalised so ``Category.rate`` stays the population mean for unit-variance traits."""
        norm = 0.5 * (self.load ** 2).sum(axis=1)
        act = self.activity_exp * (log_activity[:, None] - 0.245)
        return self.rate * np.exp(z @ self.load.T - norm + act)


def _sale_days(window_start: int, days: int) -> np.ndarray:
    start = datetime.fromtimestamp(window_start, tz=timezone.utc).date()
    out = []
    for year in (start.year, start.year + 1):
        for md in SALE_DATES:
            d = date.fromisoformat(f"{year}-{md}")
            offset = (d - start).days
            if 0 <= offset < days:
                out.append(offset)
    return np.array(sorted(out), dtype=np.int64)


def _window_events(
    rng: np.random.Generator, table: _ModalityTable, z: np.ndarray, log_activity: np.ndarray,
    window_start: int, days: int, trend: np.ndarray, active: np.ndarray, activity: float,
) -> pa.ListArray:
    """One modality's events for every user of the chunk in one window, as list<struct>."""
    n = z.shape[0]
    rate = table.rates(z, log_activity) * active[:, None] * activity
    sale_days = _sale_days(window_start, days)
    span = np.where(table.sale_only, 10.0 * len(sale_days), float(days))
    counts = rng.poisson(rate * span)
    flat = np.repeat(np.arange(counts.size), counts.ravel())
    user, cat = np.divmod(flat, counts.shape[1])
    m = flat.size

    # Day: week from the user's activity trend, weekday from the category's rhythm.
    x = _trend_position(rng, trend[user])
    week = (x * days // 7).astype(np.int64)
    start_dow = (datetime.fromtimestamp(window_start, tz=timezone.utc).weekday())
    dow = (rng.random(m)[:, None] > table.dow_cdf[cat]).sum(axis=1)
    day = week * 7 + (dow - start_dow) % 7
    day = np.where(day >= days, day - 7, day)
    if len(sale_days):  # sale-only categories land on a sale day or its eve
        on_sale = table.sale_only[cat]
        pick = sale_days[rng.integers(0, len(sale_days), m)] - (rng.random(m) < 0.3)
        day = np.where(on_sale, np.clip(pick, 0, days - 1), day)
    hour = (rng.random(m)[:, None] > table.hour_cdf[cat]).sum(axis=1)
    ts = window_start + day * DAY + np.minimum(hour, 23) * 3600 + rng.integers(0, 3600, m)

    order = np.lexsort((ts, user))
    user, cat, ts = user[order], cat[order], ts[order]

    # Surface forms: brand merchants by brand taste, otherwise a Zipf-ish pick.
    u01 = rng.random(m)
    form = table.form_start[cat] + np.minimum(
        (table.form_count[cat] * u01 ** 1.6).astype(np.int64), table.form_count[cat] - 1)
    has_brand = table.brand_count[cat] > 0
    if has_brand.any():
        p_brand = _sigmoid(-1.8 + 1.3 * z[user, V.T["brand"]])
        use_brand = has_brand & (rng.random(m) < p_brand)
        brand_form = table.brand_start[cat] + rng.integers(0, 1 << 30, m) % np.maximum(
            table.brand_count[cat], 1)
        form = np.where(use_brand, brand_form, form)

    children: dict[str, pa.Array] = {"ts": seconds_to_ts(ts)}
    forms = table.forms.take(pa.array(form))
    categories = table.category_names.take(pa.array(cat))
    mu, sigma = table.amount[cat, 0], table.amount[cat, 1]
    if table.modality == "bill":
        power, value = z[user, V.T["power"]], z[user, V.T["value"]]
        amount = np.exp(mu + 0.6 * power - 0.15 * value + sigma * rng.standard_normal(m))
        children |= {"merchant": forms, "category": categories,
                     "amount": pa.array(np.round(amount, 2))}
    elif table.modality == "minipro":
        children |= {"name": forms, "category": categories}
    elif table.modality == "spm":
        children |= {"spm": forms}
    elif table.modality == "app":
        minutes = np.exp(mu + sigma * rng.standard_normal(m))
        children |= {"app": forms, "category": categories,
                     "minutes": pa.array(np.round(minutes, 1))}
    else:
        children |= {"query": forms}
    names = ["ts", *BUILTIN_MODALITIES[table.modality].fields]
    struct = pa.StructArray.from_arrays([children[k] for k in names],
                                        fields=list(event_struct(table.modality)))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(user, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), struct,
                                    type=pa.list_(event_struct(table.modality)))


def _tabular(rng: np.random.Generator, tr: dict[str, np.ndarray]) -> np.ndarray:
    z, n = tr["z"], tr["z"].shape[0]
    t = V.T
    power, fraud = z[:, t["power"]], z[:, t["fraud"]]
    act = tr["log_activity"]
    cols = [
        tr["age"].astype(float),
        tr["tier"].astype(float),
        np.round(np.clip(rng.lognormal(1.2, 0.6, n) - 0.5 * z[:, t["youth"]], 0, 20), 1),
        np.round(650 + 45 * power - 60 * fraud + 35 * rng.standard_normal(n)),
        rng.poisson(np.exp(0.3 * power)).astype(float),
        np.clip(np.round(3 + 1.2 * power + 0.8 * rng.standard_normal(n)), 0, 8),
        np.clip(np.round(1.5 + act + 0.5 * power + 0.7 * rng.standard_normal(n)), 0, 4),
        (rng.random(n) < _sigmoid(power - 0.6 * z[:, t["urban"]] - 0.5)).astype(float),
        (rng.random(n) < _sigmoid(power - 1.0 + 0.4 * (tr["age"] > 0))).astype(float),
        (rng.random(n) < _sigmoid(3.0 - 1.5 * fraud)).astype(float),
        (1 + rng.poisson(np.exp(0.4 * fraud - 1.0))).astype(float),
        np.clip(np.round(12 * np.exp(act) + 3 * rng.standard_normal(n)), 0, 30),
    ]
    return np.stack(cols, axis=1)


_TABLES: dict[str, _ModalityTable] = {}


def _modality_table(modality: str) -> _ModalityTable:
    if modality not in _TABLES:
        _TABLES[modality] = _ModalityTable(modality)
    return _TABLES[modality]


@dataclass(frozen=True)
class ChunkLatents:
    """What a chunk's histories are drawn from: the traits, the activity trend and whether
    the user churns. Given these, a user's future is independent of the history, so no model
    of the history can rank a future label better than its probability given them
    (:mod:`maskstudy.datamodules.ceiling`)."""

    traits: dict[str, np.ndarray]
    churned: np.ndarray
    trend: np.ndarray

    @property
    def users(self) -> int:
        return self.churned.shape[0]


def chunk_latents(config: WorldConfig, chunk: int,
                  n: int) -> tuple[ChunkLatents, np.random.Generator]:
    """The latents of users ``chunk * config.chunk_users`` .. ``+ n``, and the chunk's
    generator positioned after them (the seed contract: every byte follows from the seed)."""
    rng = np.random.default_rng([config.seed, chunk, GENERATOR_VERSION])
    tr = sample_traits(rng, n)
    # Some users churn: no activity at all in the future window. Churn-prone users, and most
    # of all those who do churn, fade towards the end of the history window.
    churn = tr["z"][:, V.T["churn"]]
    churned = rng.random(n) < _sigmoid(-2.9 + 1.3 * churn)
    trend = np.clip(-0.3 * churn - 1.0 * churned + 0.15 * rng.standard_normal(n), -0.95, 0.95)
    return ChunkLatents(tr, churned, trend), rng


def future_traits(rng: np.random.Generator,
                  latents: ChunkLatents) -> tuple[np.ndarray, np.ndarray]:
    """The future window's traits and log activity: the traits drift by a per-trait amount,
    activity follows the history trend."""
    z, log_act = latents.traits["z"], latents.traits["log_activity"]
    drift = np.array([V.DRIFT[name] for name in V.TRAITS])
    z_future = z + drift * rng.standard_normal(z.shape)
    log_act_future = (log_act + 0.25 * rng.standard_normal(latents.users)
                      + 0.5 * np.minimum(latents.trend, 0))
    return z_future, log_act_future


def future_window(rng: np.random.Generator, config: WorldConfig, modality: str,
                  future: tuple[np.ndarray, np.ndarray], churned: np.ndarray) -> pa.ListArray:
    """One modality's future events from the future traits (churned users have none)."""
    z_future, log_act_future = future
    return _window_events(rng, _modality_table(modality), z_future, log_act_future,
                          config.ref_epoch(), config.future_days, np.zeros(len(churned)),
                          (~churned).astype(float), config.activity)


def generate_chunk(config: WorldConfig, chunk: int, n: int) -> pa.Table:
    """Users ``chunk * config.chunk_users`` .. ``+ n`` of the world, as one Arrow table."""
    latents, rng = chunk_latents(config, chunk, n)
    tr = latents.traits
    z, log_act = tr["z"], tr["log_activity"]
    ref = config.ref_epoch()
    future = future_traits(rng, latents)
    columns: dict[str, pa.Array] = {}
    for m in EVENT_MODALITIES:
        columns[m] = _window_events(rng, _modality_table(m), z, log_act,
                                    ref - config.history_days * DAY, config.history_days,
                                    latents.trend, np.ones(n), config.activity)
        columns[future_column(m)] = future_window(rng, config, m, future, latents.churned)
    # Everyone in the world has some history: a silent user gets one page view.
    empty = sum(np.asarray(columns[m].value_lengths()) for m in EVENT_MODALITIES) == 0
    if empty.any():
        columns["spm"] = _ensure_one_event(columns["spm"], empty, ref, rng,
                                           min(30, config.history_days))
    ids = pa.array([user_id(config, chunk * config.chunk_users + i) for i in range(n)])
    tab = _tabular(rng, tr)
    tabular = pa.ListArray.from_arrays(pa.array(np.arange(0, tab.size + 1, tab.shape[1],
                                                          dtype=np.int32)),
                                       pa.array(tab.ravel()))
    arrays = [ids, seconds_to_ts(np.full(n, ref)), tabular]
    arrays += [columns[m] for m in EVENT_MODALITIES]
    arrays += [columns[future_column(m)] for m in EVENT_MODALITIES]
    return pa.Table.from_arrays(arrays, schema=user_schema(V.TABULAR_NAMES, spec=config.spec))


def _ensure_one_event(col: pa.ListArray, empty: np.ndarray, ref: int,
                      rng: np.random.Generator, days: int) -> pa.ListArray:
    """Adds one home-page view, within ``days`` before the split, to users with no history."""
    rows = col.to_pylist()
    home = f"{V.SPM[0].forms[0]}.c1.d1"
    for i in np.flatnonzero(empty):
        ts = datetime.fromtimestamp(ref - int(rng.integers(3600, days * DAY)), tz=timezone.utc)
        rows[i] = [{"ts": ts, "spm": home}]
    return pa.array(rows, type=col.type)


def user_id(config: WorldConfig, position: int) -> str:
    """The id of the user at ``position`` in the world."""
    return f"u{config.seed:03d}-{position:08d}"


def user_position(config: WorldConfig, uid: str) -> int | None:
    """The position of the user ``uid`` in the world (:func:`user_id`); None when ``uid`` is
    not one of its users."""
    match = re.fullmatch(rf"u{config.seed:03d}-(\d{{8}})", uid)
    position = int(match.group(1)) if match else None
    return position if position is not None and position < config.users else None


def write_world(config: WorldConfig, out: str | Path) -> dict:
    """Writes ``users-XXXXX.parquet`` files and ``world.json`` into ``out``; returns the
    world's metadata. Same config, same bytes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("users*.parquet"):
        stale.unlink()
    schema = user_schema(V.TABULAR_NAMES, spec=config.spec)
    files: list[str] = []
    writer = None
    written_in_file = 0
    n_chunks = -(-config.users // config.chunk_users)
    for chunk in range(n_chunks):
        n = min(config.chunk_users, config.users - chunk * config.chunk_users)
        if writer is None or written_in_file + n > config.file_users:
            if writer is not None:
                writer.close()
            name = f"users-{len(files):05d}.parquet"
            files.append(name)
            writer = pq.ParquetWriter(out / name, schema, compression="zstd")
            written_in_file = 0
        writer.write_table(generate_chunk(config, chunk, n), row_group_size=config.chunk_users)
        written_in_file += n
    if writer is not None:
        writer.close()
    meta = {
        "generator_version": GENERATOR_VERSION,
        "users": config.users,
        "seed": config.seed,
        "ref_date": config.ref_date,
        "chunk_users": config.chunk_users,
        "activity": config.activity,
        "files": files,
        "history_days": config.history_days,
        "future_days": config.future_days,
    }
    (out / WORLD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def world_config(path: str | Path) -> WorldConfig:
    """The :class:`WorldConfig` a world directory was written with (its ``world.json``, the
    metadata :func:`write_world` writes)."""
    file = Path(path) / WORLD_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file}: no {WORLD_FILE}: not a synthetic world (write one "
                                f"with `maskstudy data synth`)")
    meta = json.loads(file.read_text())
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{file}: generator_version {meta.get('generator_version')!r}, this "
                         f"generator is version {GENERATOR_VERSION}; write the world again")
    return WorldConfig(users=meta["users"], seed=meta["seed"], ref_date=meta["ref_date"],
                       chunk_users=meta["chunk_users"], activity=meta["activity"],
                       history_days=meta["history_days"], future_days=meta["future_days"])

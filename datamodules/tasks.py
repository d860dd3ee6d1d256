"""The benchmark task registry: the GG-SM paper's 9 tasks, the Query-as-Anchor paper's 10 and
the MovieLens suite.

Every task is a binary label read by one documented rule. An :class:`EventRule` reads the
user's FUTURE window, as the papers define their tasks: "at least one target event in the
prediction window" (MAU loss: no activity at all in the window). It names a modality, a field
predicate, a slice of the 30-day window and whether the label is negated. An
:class:`AttributeRule` reads one ``attr_<name>`` column (age, gender, occupation). Neither
reads a history column, and attribute and future columns never reach the model, so history
tokens cannot leak a label. Concert and log-in belong to both papers and are one task each.
Rules are plain data: a study on its own data can register tasks of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import (
    ATTRIBUTE_PREFIX, DAY, EVENT_FIELDS, FUTURE_DAYS, future_column, table_modalities, ts_seconds,
)

ANY = "any"
EVENT_OPS = ("in", "ge", "le", "startswith", "endswith", "has")


@dataclass(frozen=True)
class EventRule:
    """Counts future events of ``modality`` (or of every modality, ``any``) whose ``field``
    satisfies ``op value`` inside days ``[day_from, day_to)`` of the future window."""

    modality: str
    field: str | None = None
    op: str = "in"  # in | ge | le | startswith | endswith | has (a "|"-separated list has value)
    value: tuple[str, ...] | float | str | None = None
    day_from: int = 0
    day_to: int = FUTURE_DAYS
    min_count: int = 1
    negate: bool = False  # label = NOT (count >= min_count)

    def __post_init__(self) -> None:
        if self.modality != ANY and self.modality not in EVENT_FIELDS:
            raise ValueError(f"rule modality {self.modality!r}: expected one of "
                             f"{(ANY, *EVENT_FIELDS)}")
        if self.field is not None and self.field not in EVENT_FIELDS.get(self.modality, {}):
            raise ValueError(f"rule field {self.field!r}: not a field of {self.modality} events")
        if self.op not in EVENT_OPS:
            raise ValueError(f"rule op {self.op!r}: expected one of {' | '.join(EVENT_OPS)}")
        if not 0 <= self.day_from < self.day_to <= FUTURE_DAYS:
            raise ValueError(f"rule days [{self.day_from}, {self.day_to}): expected a slice of "
                             f"[0, {FUTURE_DAYS})")

    def describe(self) -> str:
        what = "any event" if self.modality == ANY else f"{self.modality} event"
        if self.field is not None:
            value = (", ".join(self.value) if isinstance(self.value, tuple) else self.value)
            what += {"in": f" with {self.field} in {{{value}}}",
                     "ge": f" with {self.field} >= {value}",
                     "le": f" with {self.field} <= {value}",
                     "has": f" with {self.field} including {value}",
                     "startswith": f" with {self.field} starting with '{value}'",
                     "endswith": f" with {self.field} ending in '{value}'"}[self.op]
        days = ("the future window" if (self.day_from, self.day_to) == (0, FUTURE_DAYS)
                else f"future days {self.day_from}-{self.day_to - 1}")
        count = "at least one" if self.min_count == 1 else f"at least {self.min_count}"
        counted = what if self.min_count == 1 else what.replace(" event", " events", 1)
        text = f"{count} {counted} in {days}"
        if self.negate and self.min_count == 1:
            return f"no {what.removeprefix('any ')} in {days}"
        return f"not ({text})" if self.negate else text

    def columns(self, modalities: tuple[str, ...]) -> list[str]:
        """The columns the rule reads, for a dataset with ``modalities``."""
        return [future_column(m) for m in (modalities if self.modality == ANY
                                           else (self.modality,))]


@dataclass(frozen=True)
class AttributeRule:
    """A user attribute (column ``attr_<attribute>``): ``in`` a set of values, or a number
    ``lt`` / ``ge`` a threshold."""

    attribute: str
    op: str
    value: tuple[str, ...] | float

    def __post_init__(self) -> None:
        if self.op not in ("in", "lt", "ge"):
            raise ValueError(f"attribute rule op {self.op!r}: expected in | lt | ge")

    @property
    def column(self) -> str:
        return ATTRIBUTE_PREFIX + self.attribute

    def describe(self) -> str:
        if self.op == "in":
            return f"{self.attribute} in {{{', '.join(self.value)}}}"
        return f"{self.attribute} {'<' if self.op == 'lt' else '>='} {self.value:g}"

    def columns(self, modalities: tuple[str, ...]) -> list[str]:
        return [self.column]


GGSM, QANCHOR, MOVIELENS = "ggsm", "qanchor", "movielens"
PAPERS = (GGSM, QANCHOR)


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    domains: dict[str, str]  # suite -> the domain the paper files the task under
    rule: EventRule | AttributeRule
    notes: str = ""

    @property
    def papers(self) -> tuple[str, ...]:
        return tuple(self.domains)

    def domain(self, suite: str) -> str:
        return self.domains.get(suite) or next(iter(self.domains.values()))


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("concert", "Concert click prediction", {GGSM: "user_prediction", QANCHOR: "engagement"},
         EventRule("bill", "category", "in", ("concert",)),
         "a concert-ticket payment; rare, the hardest task"),
    Task("login", "User log-in prediction", {GGSM: "user_prediction", QANCHOR: "engagement"},
         EventRule("spm", "spm", "startswith", "a10.b1001.", day_from=FUTURE_DAYS - 7),
         "a home-page view (log-in) in the last week of the window; spm prefix a10.b1001"),
    Task("mau_loss", "MAU loss prediction", {GGSM: "user_prediction"},
         EventRule(ANY, negate=True), "no activity in any modality for the whole window"),
    Task("transit", "Public transit preference", {GGSM: "behaviour_preference"},
         EventRule("bill", "category", "in", ("metro", "bus"), min_count=3),
         "three or more metro or bus payments"),
    Task("power", "Consumption power", {GGSM: "behaviour_preference"},
         EventRule("bill", "amount", "ge", 1500.0), "a single payment of 1,500 or more"),
    Task("food", "Food interest", {GGSM: "behaviour_preference"},
         EventRule("minipro", "category", "in", ("food",)),
         "a visit to a food-review or recipe mini-program"),
    Task("movie", "Movie interest", {GGSM: "behaviour_preference"},
         EventRule("bill", "category", "in", ("movie",)), "a cinema-ticket payment"),
    Task("achievement", "Achievement preference", {GGSM: "marketing_sensitivity"},
         EventRule("spm", "spm", "startswith", "a10.b1304."),
         "a view of the badge/achievement campaign page (spm a10.b1304)"),
    Task("physical", "Physical preference", {GGSM: "marketing_sensitivity"},
         EventRule("minipro", "category", "in", ("physical_rewards",)),
         "a visit to a physical-goods reward mini-program (points mall, gifts)"),
    Task("active", "Interest-community active user", {QANCHOR: "engagement"},
         EventRule("minipro", "category", "in", ("community",)),
         "a visit to an interest-community mini-program"),
    Task("forest", "Ant Forest engagement", {QANCHOR: "engagement"},
         EventRule("minipro", "category", "in", ("green",), min_count=2),
         "two or more visits to green-energy mini-programs"),
    Task("fraud", "Fraud detection", {QANCHOR: "risk"},
         EventRule("bill", "category", "in", ("dispute",)), "a payment dispute or chargeback"),
    Task("money", "Money-laundering detection", {QANCHOR: "risk"},
         EventRule("bill", "category", "in", ("transfer_out",), min_count=2),
         "two or more outgoing transfers"),
    Task("takeout", "Takeout interest", {QANCHOR: "marketing_sensitivity"},
         EventRule("bill", "category", "in", ("takeout",)), "a takeout payment"),
    Task("brand", "Brand sensitivity", {QANCHOR: "marketing_sensitivity"},
         EventRule("bill", "merchant", "endswith", " Flagship"),
         "a payment at a brand flagship store"),
    Task("promo", "Big-sale sensitivity", {QANCHOR: "marketing_sensitivity"},
         EventRule("minipro", "category", "in", ("bigsale",)),
         "a visit to a big-sale mini-program (the window holds the 06-18 sale)"),
    Task("value", "Cost-performance sensitivity", {QANCHOR: "marketing_sensitivity"},
         EventRule("minipro", "category", "in", ("deals",)),
         "a visit to a group-buy or price-comparison mini-program"),
    # MovieLens-100k: who the user is (attributes), what they watch next and how much.
    Task("female", "Gender: female", {MOVIELENS: "demographics"},
         AttributeRule("gender", "in", ("F",))),
    Task("under_25", "Age under 25", {MOVIELENS: "demographics"}, AttributeRule("age", "lt", 25)),
    Task("over_45", "Age 45 or over", {MOVIELENS: "demographics"}, AttributeRule("age", "ge", 45)),
    Task("student", "Occupation: student", {MOVIELENS: "demographics"},
         AttributeRule("occupation", "in", ("student",))),
    Task("technical", "Technical occupation", {MOVIELENS: "demographics"},
         AttributeRule("occupation", "in", ("engineer", "programmer", "technician", "scientist"))),
    Task("horror", "Rates a horror film", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Horror")),
    Task("children", "Rates a children's film", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Children's")),
    Task("animation", "Rates an animated film", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Animation")),
    Task("western", "Rates a western", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Western")),
    Task("film_noir", "Rates a film noir", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Film-Noir")),
    Task("documentary", "Rates a documentary", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Documentary")),
    Task("harsh", "Gives a 1-star rating", {MOVIELENS: "taste"},
         EventRule("rating", "rating", "le", 1.0)),
    Task("returning", "Returns after a week", {MOVIELENS: "activity"},
         EventRule("rating", day_from=7),
         "a rating in future days 7-29: the user comes back after the first week"),
    Task("heavy", "Heavy rater", {MOVIELENS: "activity"},
         EventRule("rating", min_count=25),
         "25 or more ratings in the future window; since the split puts a fixed share of each "
         "user's ratings in the future, history length nearly decides it"),
)}

# The GG-SM paper's login task and Query-as-Anchor's are one task; likewise concert.
DOMAINS = {
    GGSM: ("user_prediction", "behaviour_preference", "marketing_sensitivity"),
    QANCHOR: ("engagement", "risk", "marketing_sensitivity"),
    MOVIELENS: ("demographics", "taste", "activity"),
}


def task_names(suite: str | None = None) -> list[str]:
    """Task names of one suite (``ggsm``: 9, ``qanchor``: 10, ``movielens``: 14), or ``all``:
    the papers' 17 distinct tasks (their 19 slots, concert and login shared)."""
    if suite in (None, "all"):
        return [name for name, t in TASKS.items() if set(t.papers) & set(PAPERS)]
    if suite not in DOMAINS:
        raise ValueError(f"unknown task suite {suite!r}: expected one of {[*DOMAINS, 'all']}")
    return [name for name, t in TASKS.items() if suite in t.papers]


def resolve_tasks(names: list[str] | str) -> list[Task]:
    """Tasks by name or suite name; unknown names fail with the list of known ones."""
    if isinstance(names, str):
        names = task_names(names) if names in (*DOMAINS, "all") else [names]
    out = []
    for name in names:
        if name in DOMAINS or name == "all":
            out += [TASKS[n] for n in task_names(name)]
        elif name in TASKS:
            out.append(TASKS[name])
        else:
            raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)} "
                             f"or a suite ({', '.join([*DOMAINS, 'all'])})")
    return list({t.name: t for t in out}.values())


def _rule_counts(table: pa.Table, rule: EventRule) -> np.ndarray:
    n = table.num_rows
    ref = ts_seconds(table.column("ref_time"))
    modalities = (table_modalities(table, future=True) if rule.modality == ANY
                  else (rule.modality,))
    counts = np.zeros(n, dtype=np.int64)
    for m in modalities:
        col = table.column(future_column(m)).combine_chunks()
        flat = pc.list_flatten(col)
        if len(flat) == 0:
            continue
        parents = np.asarray(pc.list_parent_indices(col))
        ts = ts_seconds(flat.field("ts"))
        day = (ts - ref[parents]) // DAY
        keep = (day >= rule.day_from) & (day < rule.day_to)
        if rule.field is not None:
            values = flat.field(rule.field)
            if rule.op == "in":
                hit = pc.is_in(values, value_set=pa.array(list(rule.value), values.type))
            elif rule.op == "ge":
                hit = pc.greater_equal(values, rule.value)
            elif rule.op == "le":
                hit = pc.less_equal(values, rule.value)
            elif rule.op == "has":
                hit = pc.match_substring_regex(values, f"(^|\\|){re.escape(rule.value)}(\\||$)")
            elif rule.op == "startswith":
                hit = pc.starts_with(values, rule.value)
            else:
                hit = pc.ends_with(values, rule.value)
            keep &= np.asarray(hit.fill_null(False))
        counts += np.bincount(parents[keep], minlength=n)
    return counts


def _attribute_hits(table: pa.Table, rule: AttributeRule) -> np.ndarray:
    values = table.column(rule.column)
    if rule.op == "in":
        hit = pc.is_in(values, value_set=pa.array(list(rule.value), pa.string()))
    elif rule.op == "lt":
        hit = pc.less(values, rule.value)
    else:
        hit = pc.greater_equal(values, rule.value)
    return np.asarray(hit)


def label_columns(tasks: list[Task], modalities: tuple[str, ...]) -> list[str]:
    """The future and attribute columns the tasks' labels read."""
    return list(dict.fromkeys(c for t in tasks for c in t.rule.columns(modalities)))


def compute_labels(table: pa.Table, tasks: list[Task]) -> np.ndarray:
    """Labels (users, tasks) as int8 from the future and attribute columns of a user table."""
    out = np.empty((table.num_rows, len(tasks)), dtype=np.int8)
    for k, task in enumerate(tasks):
        if isinstance(task.rule, AttributeRule):
            out[:, k] = _attribute_hits(table, task.rule)
            continue
        hit = _rule_counts(table, task.rule) >= task.rule.min_count
        out[:, k] = ~hit if task.rule.negate else hit
    return out

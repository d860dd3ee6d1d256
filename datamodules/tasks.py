"""The benchmark task registry (the GG-SM paper's 9 tasks, the Query-as-Anchor paper's 10 and
the MovieLens suite), and tasks a study defines in YAML.

Every task is a binary label read by one documented rule. An :class:`EventRule` reads the
user's FUTURE window, as the papers define their tasks: "at least one target event in the
prediction window" (MAU loss: no activity at all in the window). It names a modality, a field
predicate, a slice of the future window and whether the label is negated. An
:class:`AttributeRule` reads one ``attr_<name>`` column (age, gender, occupation); a
:class:`LabelRule` reads a ``label_<name>`` column shipped with the data. None reads a history
column, and attribute, label and future columns never reach the model, so history tokens
cannot leak a label. Concert and log-in belong to both papers and are one task each.

Rules are plain data, checked against the dataset they are applied to (its modalities,
fields and future window). A task file (``experiments/tasks/*.yaml``) or an inline entry of
``eval.tasks`` defines tasks of its own::

    tasks:
      repurchase: {title: Buys again, event: {modality: purchase}}
      big_basket: {event: {modality: purchase, field: quantity, op: ge, value: 3}}
      high_value: {label: high_value}            # the column label_high_value
      young: {attribute: {attribute: age, op: lt, value: 30}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from .dataset import DatasetSpec
from .pairs import NO_ACTIVITY, REFERENCE_EVENTS, action_phrase, answer_text
from .schema import (
    ATTRIBUTE_PREFIX, DAY, LABEL_PREFIX, future_column, table_modalities, table_spec, ts_seconds,
)

ANY = "any"
EVENT_OPS = ("in", "ge", "le", "startswith", "endswith", "has")
NUMBER_OPS = ("ge", "le")


@dataclass(frozen=True)
class EventRule:
    """Counts future events of ``modality`` (or of every modality, ``any``) whose ``field``
    satisfies ``op value`` inside days ``[day_from, day_to)`` of the future window (a
    negative day counts from the window's end; ``day_to`` None: the window's end)."""

    modality: str
    field: str | None = None
    op: str = "in"  # in | ge | le | startswith | endswith | has (a "|"-separated list has value)
    value: tuple[str, ...] | float | str | None = None
    day_from: int = 0
    day_to: int | None = None
    min_count: int = 1
    negate: bool = False  # label = NOT (count >= min_count)

    def __post_init__(self) -> None:
        if self.op not in EVENT_OPS:
            raise ValueError(f"rule op {self.op!r}: expected one of {' | '.join(EVENT_OPS)}")
        if self.field is not None and self.value is None:
            raise ValueError(f"rule on field {self.field!r}: expected a value")
        if self.min_count < 1:
            raise ValueError(f"rule min_count {self.min_count}: expected at least 1")
        if self.op == "in" and isinstance(self.value, (str, int, float)):
            object.__setattr__(self, "value", (str(self.value),))
        elif isinstance(self.value, list):
            object.__setattr__(self, "value", tuple(str(v) for v in self.value))

    def days(self, future_days: int) -> tuple[int, int]:
        """The rule's slice ``[lo, hi)`` of a future window of ``future_days`` days."""
        lo = self.day_from if self.day_from >= 0 else future_days + self.day_from
        hi = future_days if self.day_to is None else (
            self.day_to if self.day_to >= 0 else future_days + self.day_to)
        return lo, hi

    def window(self, future_days: int) -> str:
        """Where the rule counts, in words: ``in the next 30 days``, ``in days 24-30 of the
        next 30``."""
        lo, hi = self.days(future_days)
        if (lo, hi) == (0, future_days):
            return f"in the next {future_days} days"
        return f"in days {lo + 1}-{hi} of the next {future_days}"

    def check(self, spec: DatasetSpec) -> None:
        """Raises ValueError when the rule does not fit the dataset."""
        if self.modality != ANY and self.modality not in spec.names:
            raise ValueError(f"rule modality {self.modality!r}: the dataset has "
                             f"{[ANY, *spec.names]}")
        if self.field is not None:
            if self.modality == ANY:
                raise ValueError("a rule over any modality cannot name a field")
            fields = spec.modality(self.modality).fields
            if self.field not in fields:
                raise ValueError(f"rule field {self.field!r}: not a field of {self.modality} "
                                 f"events ({list(fields)})")
            number = fields[self.field] == "number"
            if number != (self.op in NUMBER_OPS):
                raise ValueError(f"rule op {self.op!r} on {self.modality}.{self.field} (a "
                                 f"{fields[self.field]} field): expected "
                                 f"{' | '.join(NUMBER_OPS) if number else 'a text op'}")
        lo, hi = self.days(spec.future_days)
        if not 0 <= lo < hi <= spec.future_days:
            raise ValueError(f"rule days [{self.day_from}, {self.day_to}): expected a slice of "
                             f"the dataset's {spec.future_days}-day future window")

    def describe(self, future_days: int | None = None) -> str:
        future_days = future_days or DatasetSpec().future_days
        what = "any event" if self.modality == ANY else f"{self.modality} event"
        if self.field is not None:
            value = (", ".join(self.value) if isinstance(self.value, tuple) else self.value)
            what += {"in": f" with {self.field} in {{{value}}}",
                     "ge": f" with {self.field} >= {value}",
                     "le": f" with {self.field} <= {value}",
                     "has": f" with {self.field} including {value}",
                     "startswith": f" with {self.field} starting with '{value}'",
                     "endswith": f" with {self.field} ending in '{value}'"}[self.op]
        lo, hi = self.days(future_days)
        days = ("the future window" if (lo, hi) == (0, future_days)
                else f"future days {lo}-{hi - 1}")
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
        if self.op == "in" and not isinstance(self.value, tuple):
            values = self.value if isinstance(self.value, list) else [self.value]
            object.__setattr__(self, "value", tuple(str(v) for v in values))

    @property
    def column(self) -> str:
        return ATTRIBUTE_PREFIX + self.attribute

    def check(self, spec: DatasetSpec) -> None:
        pass  # the column is checked against the file (check_task_columns)

    def describe(self, future_days: int | None = None) -> str:
        if self.op == "in":
            return f"{self.attribute} in {{{', '.join(self.value)}}}"
        return f"{self.attribute} {'<' if self.op == 'lt' else '>='} {self.value:g}"

    def columns(self, modalities: tuple[str, ...]) -> list[str]:
        return [self.column]


@dataclass(frozen=True)
class LabelRule:
    """A label shipped with the data: the 0/1 column ``label_<label>``."""

    label: str

    @property
    def column(self) -> str:
        return LABEL_PREFIX + self.label

    def check(self, spec: DatasetSpec) -> None:
        pass  # the column is checked against the file (check_task_columns)

    def describe(self, future_days: int | None = None) -> str:
        return f"the data's label column {self.column}"

    def columns(self, modalities: tuple[str, ...]) -> list[str]:
        return [self.column]


def behaviour_sentence(rule, spec: DatasetSpec) -> str | None:
    """The behaviour answer a user who satisfies an event ``rule`` would get, reduced to the
    action types the rule names (``Next period: 30 events; concert payments.``, the count
    :data:`~.pairs.REFERENCE_EVENTS`); None when the answers cannot say it (an attribute or
    label, a number field, a count over every modality). The rule's days and minimum count
    are not said: answers name the whole window and count per action type."""
    if not isinstance(rule, EventRule):
        return None
    if rule.negate:
        return NO_ACTIVITY if rule.modality == ANY and rule.field is None else None
    if rule.modality == ANY:
        return None
    modality = spec.modality(rule.modality)
    if rule.field is None:
        kinds: tuple[str, ...] = (modality.name,)
    elif rule.field != modality.action_field:
        return None
    elif rule.op in ("in", "has"):
        kinds = rule.value if isinstance(rule.value, tuple) else (str(rule.value),)
    elif rule.op == "startswith" and modality.fields[rule.field] == "path":
        kinds = (".".join(str(rule.value).rstrip(".").split(".")[:2]),)
    else:
        return None
    return answer_text(REFERENCE_EVENTS, [action_phrase(modality, k) for k in kinds])


GGSM, QANCHOR, MOVIELENS = "ggsm", "qanchor", "movielens"
PAPERS = (GGSM, QANCHOR)


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    domains: dict[str, str]  # suite -> the domain the paper files the task under
    rule: EventRule | AttributeRule | LabelRule
    notes: str = ""
    # The scenario query (Query-as-Anchor): the question the user tower reads after the
    # history when a probe embeds users per task (eval.query: task). "": the title, asked.
    query: str = ""
    # The targeting sentence (FIND): what the answer tower reads to rank users for the task,
    # in the language of the behaviour answers it was trained on. "": written from the rule
    # where the answers can say it (see behaviour_sentence), else the title.
    target: str = ""

    @property
    def scenario(self) -> str:
        return self.query or f"{self.title}?"

    def targeting(self, spec: DatasetSpec | None = None) -> str:
        """The targeting sentence on a dataset declared by ``spec`` (default: the world)."""
        return (self.target or behaviour_sentence(self.rule, spec or DatasetSpec())
                or f"{self.title}.")

    @property
    def papers(self) -> tuple[str, ...]:
        return tuple(self.domains)

    def domain(self, suite: str) -> str:
        return self.domains.get(suite) or next(iter(self.domains.values()))


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("concert", "Concert click prediction", {GGSM: "user_prediction", QANCHOR: "engagement"},
         EventRule("bill", "category", "in", ("concert",)),
         "a concert-ticket payment; rare, the hardest task",
         query="Will this user buy concert tickets next period?"),
    Task("login", "User log-in prediction", {GGSM: "user_prediction", QANCHOR: "engagement"},
         EventRule("spm", "spm", "startswith", "a10.b1001.", day_from=-7),
         "a home-page view (log-in) in the last week of the window; spm prefix a10.b1001",
         query="Will this user open the app in the last week of next period?"),
    Task("mau_loss", "MAU loss prediction", {GGSM: "user_prediction"},
         EventRule(ANY, negate=True), "no activity in any modality for the whole window",
         query="Will this user stop using the app next period?"),
    Task("transit", "Public transit preference", {GGSM: "behaviour_preference"},
         EventRule("bill", "category", "in", ("metro", "bus"), min_count=3),
         "three or more metro or bus payments",
         query="Will this user pay for the metro or bus regularly next period?"),
    Task("power", "Consumption power", {GGSM: "behaviour_preference"},
         EventRule("bill", "amount", "ge", 1500.0), "a single payment of 1,500 or more",
         query="Will this user make a payment of 1,500 or more next period?",
         # answers carry no amounts: the categories whose payments reach 1,500
         target=answer_text(REFERENCE_EVENTS, ["luxury payments", "travel payments",
                                               "electronics payments"])),
    Task("food", "Food interest", {GGSM: "behaviour_preference"},
         EventRule("minipro", "category", "in", ("food",)),
         "a visit to a food-review or recipe mini-program",
         query="Will this user visit food-review or recipe mini-programs next period?"),
    Task("movie", "Movie interest", {GGSM: "behaviour_preference"},
         EventRule("bill", "category", "in", ("movie",)), "a cinema-ticket payment",
         query="Will this user buy cinema tickets next period?"),
    Task("achievement", "Achievement preference", {GGSM: "marketing_sensitivity"},
         EventRule("spm", "spm", "startswith", "a10.b1304."),
         "a view of the badge/achievement campaign page (spm a10.b1304)",
         query="Will this user view the badge and achievement campaign next period?"),
    Task("physical", "Physical preference", {GGSM: "marketing_sensitivity"},
         EventRule("minipro", "category", "in", ("physical_rewards",)),
         "a visit to a physical-goods reward mini-program (points mall, gifts)",
         query="Will this user visit a points mall or gift mini-program next period?"),
    Task("active", "Interest-community active user", {QANCHOR: "engagement"},
         EventRule("minipro", "category", "in", ("community",)),
         "a visit to an interest-community mini-program",
         query="Will this user be active in interest communities next period?"),
    Task("forest", "Ant Forest engagement", {QANCHOR: "engagement"},
         EventRule("minipro", "category", "in", ("green",), min_count=2),
         "two or more visits to green-energy mini-programs",
         query="Will this user engage with Ant Forest and green energy next period?"),
    Task("fraud", "Fraud detection", {QANCHOR: "risk"},
         EventRule("bill", "category", "in", ("dispute",)), "a payment dispute or chargeback",
         query="Will this user file a payment dispute or chargeback next period?"),
    Task("money", "Money-laundering detection", {QANCHOR: "risk"},
         EventRule("bill", "category", "in", ("transfer_out",), min_count=2),
         "two or more outgoing transfers",
         query="Will this user make repeated outgoing transfers next period?"),
    Task("takeout", "Takeout interest", {QANCHOR: "marketing_sensitivity"},
         EventRule("bill", "category", "in", ("takeout",)), "a takeout payment",
         query="Will this user order takeout next period?"),
    Task("brand", "Brand sensitivity", {QANCHOR: "marketing_sensitivity"},
         EventRule("bill", "merchant", "endswith", " Flagship"),
         "a payment at a brand flagship store",
         query="Will this user buy from a brand flagship store next period?",
         # answers name categories, not merchants: those with flagship stores
         target=answer_text(REFERENCE_EVENTS, ["luxury payments", "apparel payments",
                                               "electronics payments"])),
    Task("promo", "Big-sale sensitivity", {QANCHOR: "marketing_sensitivity"},
         EventRule("minipro", "category", "in", ("bigsale",)),
         "a visit to a big-sale mini-program (the window holds the 06-18 sale)",
         query="Will this user shop in the big sale next period?"),
    Task("value", "Cost-performance sensitivity", {QANCHOR: "marketing_sensitivity"},
         EventRule("minipro", "category", "in", ("deals",)),
         "a visit to a group-buy or price-comparison mini-program",
         query="Will this user look for group buys and price comparisons next period?"),
    # MovieLens-100k: who the user is (attributes), what they watch next and how much.
    Task("female", "Gender: female", {MOVIELENS: "demographics"},
         AttributeRule("gender", "in", ("F",)),
         query="Is this user a woman?"),
    Task("under_25", "Age under 25", {MOVIELENS: "demographics"}, AttributeRule("age", "lt", 25),
         query="Is this user younger than 25?"),
    Task("over_45", "Age 45 or over", {MOVIELENS: "demographics"}, AttributeRule("age", "ge", 45),
         query="Is this user 45 or older?"),
    Task("student", "Occupation: student", {MOVIELENS: "demographics"},
         AttributeRule("occupation", "in", ("student",)),
         query="Is this user a student?"),
    Task("technical", "Technical occupation", {MOVIELENS: "demographics"},
         AttributeRule("occupation", "in", ("engineer", "programmer", "technician", "scientist")),
         query="Does this user work in a technical occupation?"),
    Task("horror", "Rates a horror film", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Horror"),
         query="Will this user rate a horror film next period?"),
    Task("children", "Rates a children's film", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Children's"),
         query="Will this user rate a children's film next period?"),
    Task("animation", "Rates an animated film", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Animation"),
         query="Will this user rate an animated film next period?"),
    Task("western", "Rates a western", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Western"),
         query="Will this user rate a western next period?"),
    Task("film_noir", "Rates a film noir", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Film-Noir"),
         query="Will this user rate a film noir next period?"),
    Task("documentary", "Rates a documentary", {MOVIELENS: "taste"},
         EventRule("rating", "genres", "has", "Documentary"),
         query="Will this user rate a documentary next period?"),
    Task("harsh", "Gives a 1-star rating", {MOVIELENS: "taste"},
         EventRule("rating", "rating", "le", 1.0),
         query="Will this user give a 1-star rating next period?"),
    Task("returning", "Returns after a week", {MOVIELENS: "activity"},
         EventRule("rating", day_from=7),
         "a rating in future days 7-29: the user comes back after the first week",
         query="Will this user come back after the first week of next period?"),
    Task("heavy", "Heavy rater", {MOVIELENS: "activity"},
         EventRule("rating", min_count=25),
         "25 or more ratings in the future window; since the split puts a fixed share of each "
         "user's ratings in the future, history length nearly decides it",
         query="Will this user rate 25 or more films next period?"),
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


OWN = "own"  # the suite and domain of a study's own tasks unless they name one
RULE_KEYS = ("event", "attribute", "label")


def task_from_declaration(name: str, decl: dict, where: str = "") -> Task:
    """A task from its YAML form: ``{title, domain, notes, query, target, and one of event: {modality,
    field, op, value, day_from, day_to, min_count, negate}, attribute: {attribute, op,
    value}, label: <column name without label_>}``."""
    at = f"{where}task {name!r}" if where else f"task {name!r}"
    if not isinstance(decl, dict):
        raise ValueError(f"{at}: expected a mapping, got {decl!r}")
    unknown = set(decl) - {"name", "title", "domain", "notes", "query", "target", *RULE_KEYS}
    if unknown:
        raise ValueError(f"{at}: unknown key(s) {sorted(unknown)}; expected title, domain, "
                         f"notes, query, target and one of {' | '.join(RULE_KEYS)}")
    rules = [k for k in RULE_KEYS if k in decl]
    if len(rules) != 1:
        raise ValueError(f"{at}: expected exactly one rule ({' | '.join(RULE_KEYS)}), got "
                         f"{rules or 'none'}")
    body = decl[rules[0]]
    try:
        if rules[0] == "label":
            rule = LabelRule(str(body if body is not None else name))
        elif not isinstance(body, dict):
            raise ValueError(f"{rules[0]}: expected a mapping, got {body!r}")
        elif rules[0] == "event":
            rule = EventRule(**body)
        else:
            rule = AttributeRule(**body)
    except TypeError as e:  # an unknown or missing rule field
        raise ValueError(f"{at}: {rules[0]} rule: {e}") from e
    except ValueError as e:
        raise ValueError(f"{at}: {e}") from e
    domain = str(decl.get("domain", OWN))
    return Task(name, str(decl.get("title", name)), {OWN: domain}, rule,
                str(decl.get("notes", "")), str(decl.get("query", "")),
                str(decl.get("target", "")))


def load_task_file(path: Path) -> list[Task]:
    """The tasks of a YAML task file (a mapping ``tasks: {name: declaration}``)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict) or not data["tasks"]:
        raise ValueError(f"{path}: expected a mapping 'tasks:' of task names to declarations")
    return [task_from_declaration(str(n), d, f"{path}: ") for n, d in data["tasks"].items()]


def find_task_file(name: str, dirs: tuple[Path, ...] = ()) -> Path:
    """A task file as given, or under one of ``dirs`` or their ``tasks/`` folders."""
    candidates = [Path(name)] + [d / sub / name for d in dirs for sub in ("", "tasks")]
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"task file {name!r} not found (looked in {[str(c) for c in candidates]})")


def is_task_file(item) -> bool:
    return isinstance(item, str) and item.endswith((".yaml", ".yml"))


def resolve_tasks(items: list | str, dirs: tuple[Path, ...] = ()) -> list[Task]:
    """Tasks from names, suite names, task files (``*.yaml``, looked up in ``dirs``), inline
    declarations (``{name: ..., event: ...}``) and :class:`Task` objects; unknown names fail
    with the list of known ones. A name may appear once."""
    if isinstance(items, (str, dict, Task)):
        items = [items]
    out: list[Task] = []
    for item in items:
        if isinstance(item, Task):
            out.append(item)
        elif isinstance(item, dict):
            if "name" not in item:
                raise ValueError(f"inline task {item!r}: expected a 'name'")
            out.append(task_from_declaration(str(item["name"]), item))
        elif is_task_file(item):
            out += load_task_file(find_task_file(item, dirs))
        elif item in DOMAINS or item == "all":
            out += [TASKS[n] for n in task_names(item)]
        elif item in TASKS:
            out.append(TASKS[item])
        else:
            raise ValueError(f"unknown task {item!r}: expected one of {sorted(TASKS)}, a suite "
                             f"({', '.join([*DOMAINS, 'all'])}), a task file (*.yaml) or an "
                             f"inline declaration")
    unique: dict[str, Task] = {}
    for task in out:
        if task.name in unique and unique[task.name] != task:
            raise ValueError(f"task {task.name!r} is defined twice, differently")
        unique[task.name] = task
    return list(unique.values())


def check_tasks(tasks: list[Task], spec: DatasetSpec) -> None:
    """Every task's rule fits the dataset; the error names the task."""
    for task in tasks:
        try:
            task.rule.check(spec)
        except ValueError as e:
            raise ValueError(f"task {task.name!r}: {e}") from e


def _rule_counts(table: pa.Table, rule: EventRule) -> np.ndarray:
    n = table.num_rows
    ref = ts_seconds(table.column("ref_time"))
    lo, hi = rule.days(table_spec(table).future_days)
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
        keep = (day >= lo) & (day < hi)
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
        hit = pc.is_in(pc.cast(values, pa.string()),
                       value_set=pa.array(list(rule.value), pa.string()))
    elif rule.op == "lt":
        hit = pc.less(values, rule.value)
    else:
        hit = pc.greater_equal(values, rule.value)
    return np.asarray(hit)


def label_columns(tasks: list[Task], modalities: tuple[str, ...]) -> list[str]:
    """The future, attribute and label columns the tasks' labels read."""
    return list(dict.fromkeys(c for t in tasks for c in t.rule.columns(modalities)))


def event_counts(table: pa.Table, tasks: list[Task]) -> np.ndarray:
    """(users, tasks) int64: per event-rule task, the events its rule counts in its slice of
    the future window; -1 for attribute and label tasks, which count nothing."""
    out = np.full((table.num_rows, len(tasks)), -1, dtype=np.int64)
    for k, task in enumerate(tasks):
        if isinstance(task.rule, EventRule):
            out[:, k] = _rule_counts(table, task.rule)
    return out


def compute_labels(table: pa.Table, tasks: list[Task]) -> np.ndarray:
    """Labels (users, tasks) as int8 from the future, attribute and label columns of a user
    table."""
    out = np.empty((table.num_rows, len(tasks)), dtype=np.int8)
    for k, task in enumerate(tasks):
        if isinstance(task.rule, LabelRule):
            out[:, k] = pc.cast(table.column(task.rule.column), pa.int8()).to_numpy(
                zero_copy_only=False)
            continue
        if isinstance(task.rule, AttributeRule):
            out[:, k] = _attribute_hits(table, task.rule)
            continue
        hit = _rule_counts(table, task.rule) >= task.rule.min_count
        out[:, k] = ~hit if task.rule.negate else hit
    return out

"""What a dataset declares about itself: its windows and its event modalities.

A user file carries its declaration as JSON in the Parquet key-value metadata under
``maskstudy.dataset``::

    {"history_days": 270, "future_days": 90, "time_of_day": false,
     "modalities": ["bill", {"name": "purchase",
                             "fields": {"item": "category", "quantity": "number",
                                        "amount": "number"}}]}

A modality is a built-in name (``bill``, ``minipro``, ``spm``, ``app``, ``search`` of the
payment-app world, ``rating`` of MovieLens) or a declaration of its own: its fields and their
kinds, and optionally how an event renders as text (``render``, format strings over the
fields), which field names the action type of an event (``kind_field``) and the plural noun of
its events (``noun``). Everything that reads events (validation, the template, the tokenizer's
tags, the bag-of-events baseline, hierarchical event features, contrastive answers and task
rules) works from the declaration.

A file without the key is the payment-app world (its five modalities, 90 days of history, 30
of future); the older key ``maskstudy.modalities`` (a JSON list of built-in names) still reads.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field

import pyarrow as pa

DATASET_KEY = b"maskstudy.dataset"
LEGACY_MODALITIES_KEY = b"maskstudy.modalities"

# category: a name from a small set (counted, hashed); text: free text (counted as a whole);
# list: "|"-separated names, each counted on its own; path: a dotted page id, counted by its
# first two parts; number: a float; timestamp: a point in time (rendered as its date).
FIELD_KINDS = ("category", "text", "list", "path", "number", "timestamp")
NAME_KINDS = ("category", "text", "list", "path")  # fields whose values name things
SUMMARIES = ("sum", "max", "mean")
TS_TYPE = pa.timestamp("ms", tz="UTC")  # what Parquet stores; any unit is accepted on read


def arrow_type(kind: str) -> pa.DataType:
    return {"number": pa.float64(), "timestamp": TS_TYPE}.get(kind, pa.string())


@dataclass(frozen=True)
class Modality:
    """One event modality: its fields (schema order) and how its events read."""

    name: str
    fields: dict[str, str]  # field -> kind
    render: tuple[str, ...] = ()  # one format string per word group; () : every field in order
    kind_field: str | None = None  # the action type of an event; None: the first name field
    noun: str = ""  # plural noun of its events; "": the name with an s
    # number field -> summaries the bag-of-events baseline reads; None: sum and max of each
    summaries: dict[str, tuple[str, ...]] | None = None
    counted: tuple[str, ...] | None = None  # name fields the baseline counts; None: all
    quoted: bool = False  # answers quote the action type ("searches for 'x' x3")
    builtin: bool = False

    def __post_init__(self) -> None:
        where = f"modality {self.name!r}"
        if not self.name.isidentifier() or self.name in ("tabular", "events"):
            raise ValueError(f"{where}: expected a name of letters, digits and underscores, "
                             f"not 'tabular' or 'events'")
        if not self.fields:
            raise ValueError(f"{where}: declares no fields")
        for f, kind in self.fields.items():
            if kind not in FIELD_KINDS:
                raise ValueError(f"{where}, field {f!r}: kind {kind!r}, expected one of "
                                 f"{list(FIELD_KINDS)}")
            if f == "ts" or not f.isidentifier():
                raise ValueError(f"{where}, field {f!r}: expected an identifier other than 'ts'")
        for piece in self.render:
            used = self.piece_field(piece)
            if used not in self.fields:
                raise ValueError(f"{where}, render {piece!r}: expected exactly one field of "
                                 f"{list(self.fields)} in braces")
        if self.kind_field is not None and self.fields.get(self.kind_field) not in NAME_KINDS:
            raise ValueError(f"{where}, kind_field {self.kind_field!r}: expected a field of kind "
                             f"{' | '.join(NAME_KINDS)}")

    @staticmethod
    def piece_field(piece: str) -> str | None:
        names = [f for _, f, _, _ in string.Formatter().parse(piece) if f is not None]
        return names[0] if len(names) == 1 else None

    @property
    def pieces(self) -> tuple[str, ...]:
        """Format strings of an event's words after its date."""
        if self.render:
            return self.render
        return tuple("{%s}" % f if kind in NAME_KINDS else
                     "{%s:%%m-%%d}" % f if kind == "timestamp" else "%s {%s:g}" % (f, f)
                     for f, kind in self.fields.items())

    @property
    def name_fields(self) -> tuple[str, ...]:
        return tuple(f for f, kind in self.fields.items() if kind in NAME_KINDS)

    @property
    def number_fields(self) -> tuple[str, ...]:
        return tuple(f for f, kind in self.fields.items() if kind == "number")

    @property
    def action_field(self) -> str | None:
        """The field whose value is an event's action type (None: the modality itself)."""
        if self.kind_field is not None:
            return self.kind_field
        return next((f for f in self.name_fields if self.fields[f] != "text"),
                    self.name_fields[0] if self.name_fields else None)

    @property
    def plural(self) -> str:
        return self.noun or f"{self.name}s"

    @property
    def counted_fields(self) -> tuple[str, ...]:
        return self.name_fields if self.counted is None else self.counted

    @property
    def number_summaries(self) -> dict[str, tuple[str, ...]]:
        if self.summaries is None:
            return {f: ("sum", "max") for f in self.number_fields}
        return self.summaries

    def struct(self) -> pa.StructType:
        return pa.struct([pa.field("ts", TS_TYPE, nullable=False)]
                         + [pa.field(f, arrow_type(k), nullable=False)
                            for f, k in self.fields.items()])

    def declaration(self) -> str | dict:
        """What the metadata stores: the name of a built-in, else the declaration."""
        if self.builtin:
            return self.name
        out: dict = {"name": self.name, "fields": dict(self.fields)}
        for key in ("render", "kind_field", "noun", "quoted"):
            value = getattr(self, key)
            if value:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def declared(cls, name: str, decl: dict) -> "Modality":
        """A modality from its declaration: ``{fields: {...}, render: [...], ...}`` or the
        short form, a mapping of field to kind."""
        if not isinstance(decl, dict):
            raise ValueError(f"modality {name!r}: expected a mapping of fields to kinds, "
                             f"got {decl!r}")
        if name in BUILTIN_MODALITIES:
            raise ValueError(f"modality {name!r} is built in; give your own modality another "
                             f"name")
        if "fields" not in decl:
            decl = {"fields": decl}
        unknown = set(decl) - {"fields", "render", "kind_field", "noun", "quoted", "name"}
        if unknown:
            raise ValueError(f"modality {name!r}: unknown key(s) {sorted(unknown)}; expected "
                             f"fields, render, kind_field, noun, quoted")
        if not isinstance(decl["fields"], dict):
            raise ValueError(f"modality {name!r}: fields must map field names to kinds")
        return cls(name, {str(k): str(v) for k, v in decl["fields"].items()},
                   render=tuple(decl.get("render") or ()), kind_field=decl.get("kind_field"),
                   noun=decl.get("noun") or "", quoted=bool(decl.get("quoted", False)))


def _builtin(name, fields, **kw) -> Modality:
    return Modality(name, fields, builtin=True, **kw)


# The payment-app world of the papers, and MovieLens ratings. Their renderings, nouns and
# baseline summaries are the ones every measured study used.
BUILTIN_MODALITIES: dict[str, Modality] = {m.name: m for m in (
    _builtin("bill", {"merchant": "category", "category": "category", "amount": "number"},
             render=("{category}", "{merchant}", "{amount:.0f}"), kind_field="category",
             noun="payments", summaries={"amount": ("sum", "max")},
             counted=("category", "merchant")),
    _builtin("minipro", {"name": "category", "category": "category"},
             render=("{category}", "{name}"), kind_field="category", noun="visits",
             counted=("name", "category")),
    _builtin("spm", {"spm": "path"}, noun="page views"),
    _builtin("app", {"app": "category", "category": "category", "minutes": "number"},
             render=("{app}", "{minutes:.0f}min"), kind_field="category", noun="app sessions",
             summaries={}),
    _builtin("search", {"query": "text"}, noun="searches", quoted=True),
    _builtin("rating", {"title": "category", "genres": "list", "rating": "number"},
             render=("{title}", "{genres}", "rated {rating:g}"), kind_field="genres",
             noun="ratings", summaries={"rating": ("mean",)}),
)}
WORLD_MODALITIES = ("bill", "minipro", "spm", "app", "search")
HISTORY_DAYS, FUTURE_DAYS = 90, 30  # the papers' windows: what a file without a declaration has


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's modalities (template order) and windows."""

    modalities: tuple[Modality, ...] = field(
        default_factory=lambda: tuple(BUILTIN_MODALITIES[m] for m in WORLD_MODALITIES))
    history_days: int = HISTORY_DAYS
    future_days: int = FUTURE_DAYS
    time_of_day: bool = True  # event times carry an hour; False: dates only

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names:
            raise ValueError("a dataset declares at least one modality")
        if len(set(names)) != len(names):
            raise ValueError(f"modalities {names}: a name appears twice")
        for key in ("history_days", "future_days"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} {value!r}: expected a whole number of days >= 1")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def segments(self) -> tuple[str, ...]:
        """The template's segments: each modality, then the tabular features."""
        return self.names + ("tabular",)

    def modality(self, name: str) -> Modality:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"modality {name!r}: the dataset has {list(self.names)}")

    def metadata(self) -> dict[bytes, bytes]:
        return {DATASET_KEY: json.dumps({
            "history_days": self.history_days, "future_days": self.future_days,
            "time_of_day": self.time_of_day,
            "modalities": [m.declaration() for m in self.modalities]}).encode()}

    @classmethod
    def from_declaration(cls, decl: dict) -> "DatasetSpec":
        """The spec a JSON/YAML declaration describes (the metadata's form, or ``modalities``
        as a mapping of name to short declaration)."""
        if not isinstance(decl, dict):
            raise ValueError(f"expected a mapping, got {type(decl).__name__}")
        unknown = set(decl) - {"history_days", "future_days", "time_of_day", "modalities"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; expected history_days, "
                             f"future_days, time_of_day, modalities")
        raw = decl.get("modalities", list(WORLD_MODALITIES))
        items = list(raw.items()) if isinstance(raw, dict) else [
            (m, None) if isinstance(m, str) else (m.get("name") if isinstance(m, dict)
                                                 else None, m) for m in raw]
        modalities = []
        for name, body in items:
            if not isinstance(name, str):
                raise ValueError(f"modality entry {body!r}: expected a built-in name or a "
                                 f"mapping with a name and fields")
            if body is None or body == "builtin":
                if name not in BUILTIN_MODALITIES:
                    raise ValueError(f"unknown modality {name!r}: expected a built-in "
                                     f"({', '.join(BUILTIN_MODALITIES)}) or a declaration "
                                     f"of its fields")
                modalities.append(BUILTIN_MODALITIES[name])
            else:
                modalities.append(Modality.declared(name, body))
        return cls(tuple(modalities), decl.get("history_days", HISTORY_DAYS),
                   decl.get("future_days", FUTURE_DAYS), bool(decl.get("time_of_day", True)))


_SPECS: dict[bytes | None, DatasetSpec] = {}


def spec_of(schema: pa.Schema, file: str = "") -> DatasetSpec:
    """The declaration a file's schema carries (memoised: every row group repeats it).
    Raises ValueError naming the file and the key."""
    meta = schema.metadata or {}
    raw = meta.get(DATASET_KEY)
    legacy = meta.get(LEGACY_MODALITIES_KEY)
    key = raw if raw is not None else (b"legacy:" + legacy if legacy is not None else None)
    found = _SPECS.get(key)
    if found is not None:
        return found
    read = DATASET_KEY if raw is not None else LEGACY_MODALITIES_KEY
    where = f"{file}, metadata '{read.decode()}'"
    try:
        if raw is not None:
            spec = DatasetSpec.from_declaration(json.loads(raw))
        elif legacy is not None:
            names = json.loads(legacy)
            if not isinstance(names, list) or not names or not all(
                    isinstance(m, str) for m in names):
                raise ValueError(f"expected a non-empty JSON list of modality names, "
                                 f"got {names!r}")
            spec = DatasetSpec.from_declaration({"modalities": names})
        else:
            spec = DatasetSpec()
    except ValueError as e:  # json.JSONDecodeError is one too
        raise ValueError(f"{where}: {e}") from e
    _SPECS[key] = spec
    return spec

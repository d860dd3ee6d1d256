"""Serialisation of a user into the GG-SM input template, with segment ids.

    <bill> ... </bill> <minipro> ... </minipro> <spm> ... </spm> <app> ... </app>
    <search> ... </search> <tabular> ... </tabular> Instruction: {query} <USER>

(a dataset with other modalities has their segments instead, e.g. ``<rating> ... </rating>
<tabular> ... </tabular>`` for MovieLens).

Each event renders as one short phrase that starts with its date (``05-31 19h takeout
Ele.me 32``), in time order inside its segment. An event's ids are the concatenated ids of its
fields, each encoded once and memoised (dates, merchants and amounts repeat endlessly); for
tokenizers whose pre-tokenizer splits at spaces (ours, and the byte-level and metaspace BPEs of
Qwen and Llama) this equals encoding the whole phrase. Truncation keeps the most recent events of each
modality: first the per-modality caps (counted in events), then a total token budget shared
between the segments by water-filling (a short segment keeps everything, the rest of the
budget is split evenly among the longer ones). Only the kept events are rendered.

With ``data.activity_header`` each modality's segment opens with its counts over the whole
history (``<bill> 79 events, 5 in 14 days ...``), which truncation would otherwise hide; the
header's tokens come out of the budget before the events are shared out.

``segment_ids`` per position: 0 padding, 1 history (every token from ``<bill>`` to
``</tabular>``), 2 query (``Instruction: ...``), 3 the ``<USER>`` anchor. Masks read them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np
from tokenizers import Tokenizer

from .dataset import DatasetSpec, Modality
from .records import EventColumns, UserColumns
from .schema import DAY, RECENT_DAYS, recent
from .tokenizer import SpecialIds, special_ids

PAD_SEGMENT, HISTORY, QUERY, ANCHOR = 0, 1, 2, 3

# Query-as-Anchor's per-modality caps (events), the paper's demo defaults.
DEFAULT_CAPS = {"bill": 250, "minipro": 150, "spm": 150, "app": 100, "search": 10,
                "tabular": 50}
# Fewest tokens a template needs besides the segments' tags: a short query and the anchor.
MIN_FREE_TOKENS = 8


@dataclass(frozen=True)
class TemplateConfig:
    """The template's share of ``DataConfig`` (which owns the defaults)."""

    max_tokens: int  # the whole user-tower sequence, query and anchor included
    caps: dict[str, int]  # events kept per segment, newest first
    anchor: bool  # end with <USER>; without it the sequence ends with the query
    activity_header: bool = False  # each modality opens with its whole-history event counts

    def __post_init__(self) -> None:
        self.check()

    def check(self, segments: tuple[str, ...] | None = None) -> None:
        """Caps and budget against a dataset's segments (None: values only)."""
        bad = {k: v for k, v in self.caps.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"data.caps {bad}: expected whole numbers of events >= 0")
        if segments is None:
            return
        unknown = set(self.caps) - set(segments) - set(DEFAULT_CAPS)
        if unknown:
            raise ValueError(f"data.caps unknown segment(s) {sorted(unknown)}; the dataset's "
                             f"segments are {list(segments)}")
        if self.max_tokens < 2 * len(segments) + MIN_FREE_TOKENS:
            raise ValueError(f"data.max_tokens {self.max_tokens} is too small for the "
                             f"{2 * len(segments)} boundary tags plus query and anchor")


_CLOCK: dict[tuple[int, bool], str] = {}


def _clock(ts: np.ndarray, time_of_day: bool = True) -> list[str]:
    """'MM-DD HHh' for each timestamp (seconds, UTC), or 'MM-DD' for a dataset whose event
    times carry no time of day; memoised per hour."""
    out = []
    pattern = "%m-%d %Hh" if time_of_day else "%m-%d"
    for hour in (ts // 3600).tolist():
        text = _CLOCK.get((hour, time_of_day))
        if text is None:
            text = datetime.fromtimestamp(hour * 3600, tz=timezone.utc).strftime(pattern)
            _CLOCK[(hour, time_of_day)] = text
        out.append(text)
    return out


@lru_cache(maxsize=None)
def _piece_parts(piece: str) -> tuple[str, str, str, str]:
    """(text before, field, format spec, text after) of a one-field format string."""
    parts = list(string.Formatter().parse(piece))
    k = next(i for i, (_, f, _, _) in enumerate(parts) if f is not None)
    before = "".join(p[0] for p in parts[: k + 1])
    after = "".join(p[0] for p in parts[k + 1:])
    return before, parts[k][1], parts[k][2] or "", after


def _piece_values(modality: Modality, piece: str, ev: EventColumns, lo: int,
                  hi: int) -> list[str]:
    before, name, spec, after = _piece_parts(piece)
    col = ev.fields[name]
    kind = modality.fields[name]
    if col.codes is not None:
        values = col.strings(lo, hi)
        if spec:
            values = [format(v, spec) for v in values]
    elif kind == "timestamp":
        values = [format(datetime.fromtimestamp(int(t), tz=timezone.utc), spec or "%m-%d")
                  for t in col.values[lo:hi]]
    else:
        values = [format(v, spec) for v in col.values[lo:hi]]
    if before or after:
        values = [f"{before}{v}{after}" for v in values]
    return values


def event_pieces(modality: Modality, ev: EventColumns, lo: int, hi: int,
                 time_of_day: bool = True) -> list[tuple[str, ...]]:
    """The words of events ``lo:hi`` of one modality, oldest first, one tuple per event: the
    date, then one word group per piece of the modality's rendering."""
    if hi <= lo:
        return []
    columns = [_clock(ev.ts[lo:hi], time_of_day)]
    columns += [_piece_values(modality, piece, ev, lo, hi) for piece in modality.pieces]
    return list(zip(*columns))


def render_events(modality: Modality, ev: EventColumns, lo: int, hi: int,
                  time_of_day: bool = True) -> list[str]:
    """Text of events ``lo:hi`` of one modality, oldest first."""
    return [" ".join(p) for p in event_pieces(modality, ev, lo, hi, time_of_day)]


def render_tabular(names: list[str], values: np.ndarray) -> list[str]:
    return [f"{n}={v:g}" for n, v in zip(names, values)]


def water_fill(needs: list[list[int]], budget: int) -> list[int]:
    """How many items of each segment fit in ``budget`` tokens.

    ``needs[s]`` are item lengths in keep-priority order (most recent event first). Segments
    are served from the smallest total need up; each may take up to an even share of what is
    left, and what it does not use passes on to the larger segments."""
    keep = [0] * len(needs)
    totals = [sum(n) for n in needs]
    order = sorted(range(len(needs)), key=lambda s: totals[s])
    left = budget
    for rank, s in enumerate(order):
        share = left // (len(order) - rank)
        cum = np.cumsum(needs[s]) if needs[s] else np.zeros(0, dtype=np.int64)
        k = int(np.searchsorted(cum, share, side="right"))
        keep[s] = k
        left -= int(cum[k - 1]) if k else 0
    return keep


@dataclass
class EncodedUser:
    input_ids: list[int]
    segment_ids: list[int]


class UserTemplate:
    """Turns users of a :class:`UserColumns` into token ids and segment ids."""

    def __init__(self, tokenizer: Tokenizer, tabular_names: list[str],
                 config: TemplateConfig, spec: DatasetSpec | None = None):
        self.tok = tokenizer
        self.cfg = config
        self.spec = spec or DatasetSpec()
        self.modalities = self.spec.names
        self.segments = self.spec.segments
        config.check(self.segments)
        self.ids: SpecialIds = special_ids(tokenizer, self.segments)
        self.tabular_names = list(tabular_names)
        self._query_cache: dict[str, list[int]] = {}
        self._piece_ids: dict[str, list[int]] = {}

    def _encode(self, items: list[tuple[str, ...]]) -> list[list[int]]:
        """Ids of each item, the concatenation of its memoised pieces' ids."""
        cache = self._piece_ids
        missing = list({p for item in items for p in item if p not in cache})
        if missing:
            if len(cache) > 1_000_000:
                cache.clear()
            for p, e in zip(missing, self.tok.encode_batch(missing, add_special_tokens=False)):
                cache[p] = e.ids
        out = []
        for item in items:
            ids: list[int] = []
            for p in item:
                ids += cache[p]
            out.append(ids)
        return out

    def query_ids(self, query: str) -> list[int]:
        if query not in self._query_cache:
            text = f"Instruction: {query}".rstrip()
            self._query_cache[query] = self.tok.encode(text, add_special_tokens=False).ids
        return self._query_cache[query]

    def spans(self, users: UserColumns, i: int) -> list[tuple[int, int]]:
        """Per modality the (lo, hi) span of user ``i``'s newest events within the caps."""
        spans = []
        for m in self.modalities:
            lo, hi = users.history[m].span(i)
            spans.append((max(lo, hi - self.cfg.caps.get(m, hi - lo)), hi))
        return spans

    def history(self, users: UserColumns, i: int) -> list[list[list[int]]]:
        """Token ids of user ``i``'s history items per segment, oldest first.

        Only the newest events that could still fit are rendered: a modality is rendered in
        growing slices from the newest event until its tokens exceed the whole history budget
        (no segment can get more) or its cap is reached."""
        budget = self.cfg.max_tokens - 2 * len(self.segments)
        spans = self.spans(users, i)
        tab = render_tabular(self.tabular_names, users.tabular[i])
        tab = tab[: self.cfg.caps.get("tabular", len(tab))]
        taken = [0] * len(self.modalities)
        ids: list[list[list[int]]] = [[] for _ in self.modalities]
        tokens = [0] * len(self.modalities)
        step = max(budget // 8, 1)
        first = True
        while True:
            texts, owners = [], []
            for s_, (m, (lo, hi)) in enumerate(zip(self.modalities, spans)):
                if tokens[s_] > budget or taken[s_] >= hi - lo:
                    continue
                k = min(step, hi - lo - taken[s_])
                end = hi - taken[s_]
                texts += event_pieces(self.spec.modality(m), users.history[m], end - k, end,
                                      self.spec.time_of_day)
                owners.append((s_, k))
                taken[s_] += k
            if first:
                texts += [(t,) for t in tab]
            if not texts:
                break
            encoded = self._encode(texts)
            pos = 0
            for s_, k in owners:
                part = encoded[pos: pos + k]
                pos += k
                ids[s_] = part + ids[s_]
                tokens[s_] += sum(len(x) for x in part)
            if first:
                tab_ids = encoded[pos:]
                first = False
            step *= 2
        return ids + [tab_ids]

    def fixed_tokens(self) -> int:
        """The tokens every sequence spends besides its history and query: the segment tags."""
        return 2 * len(self.segments)

    def history_budget(self, query: str = "", reserve: int = 0) -> int:
        """The tokens left for the history segments' items under ``query`` (``reserve``: as
        in :meth:`encode`)."""
        q = self.query_ids(query)
        fixed = self.fixed_tokens() + max(len(q) + int(self.cfg.anchor), reserve)
        if fixed > self.cfg.max_tokens:
            raise ValueError(f"query {query!r} ({len(q)} tokens) and the template's fixed "
                             f"tokens need {fixed}: no room left in max_tokens="
                             f"{self.cfg.max_tokens}")
        return self.cfg.max_tokens - fixed

    def item_tokens(self, history) -> list[list[int]]:
        """Per segment, the tokens of each history item in keep priority: events newest
        first, tabular features in their order."""
        needs = [[len(x) for x in reversed(p)] for p in history[:-1]]
        needs.append([len(x) for x in history[-1]])
        return needs

    def activity_ids(self, users: UserColumns, i: int) -> list[list[int]]:
        """Per modality the ids of user ``i``'s activity header: the events of the whole
        history and of its last ``RECENT_DAYS`` days (``79 events, 5 in 14 days``); empty
        lists without ``activity_header``."""
        if not self.cfg.activity_header:
            return [[] for _ in self.modalities]
        ref_day = int(users.ref_time[i]) // DAY
        texts = []
        for m in self.modalities:
            ev = users.history[m]
            lo, hi = ev.span(i)
            n_recent = int(recent(ref_day - ev.ts[lo:hi] // DAY).sum())
            texts.append((f"{hi - lo} events, {n_recent} in {RECENT_DAYS} days",))
        return self._encode(texts)

    def window(self, users: UserColumns, i: int, query: str = "", history=None,
               reserve: int = 0) -> list[int]:
        """What :meth:`encode` keeps of user ``i``: per modality the number of its newest
        events, then the number of leading tabular features (the bag-of-events reference on
        this window, ``baseline.window_table``, is what a linear model reads of the same
        events)."""
        history = history if history is not None else self.history(users, i)
        budget = self.history_budget(query, reserve)
        header = sum(len(h) for h in self.activity_ids(users, i))
        if header > budget:
            raise ValueError(f"user {users.user_ids[i]!r}: the activity headers take {header} "
                             f"tokens, more than the {budget} data.max_tokens="
                             f"{self.cfg.max_tokens} leaves for the history")
        return water_fill(self.item_tokens(history), budget - header)

    def encode(self, users: UserColumns, i: int, query: str = "",
               history: list[list[list[int]]] | None = None, reserve: int = 0) -> EncodedUser:
        """User ``i`` with ``query`` in the template, truncated to ``max_tokens``.

        Pass ``history`` (from :meth:`history`) to encode several queries of one user
        without rendering the history again. ``reserve``: the tokens to leave after the
        history (at least the query's and the anchor's), so the history is the same under any
        query whose suffix is that short."""
        q = self.query_ids(query)
        pieces = history if history is not None else self.history(users, i)
        keep = self.window(users, i, query, pieces, reserve)
        headers = self.activity_ids(users, i) + [[]]  # none for the tabular segment
        ids: list[int] = []
        for s, name in enumerate(self.segments):
            items = pieces[s]
            kept = items[len(items) - keep[s]:] if name != "tabular" else items[: keep[s]]
            ids.append(self.ids.open[name])
            ids.extend(headers[s])
            for x in kept:
                ids.extend(x)
            ids.append(self.ids.close[name])
        segments = [HISTORY] * len(ids) + [QUERY] * len(q)
        ids.extend(q)
        if self.cfg.anchor:
            segments.append(ANCHOR)
            ids.append(self.ids.user)
        return EncodedUser(ids, segments)

    def encode_answer(self, text: str, max_tokens: int) -> list[int]:
        """Answer ids ending with ``<eos>``, truncated to ``max_tokens`` (eos kept)."""
        ids = self.tok.encode(text, add_special_tokens=False).ids[: max_tokens - 1]
        return ids + [self.ids.eos]

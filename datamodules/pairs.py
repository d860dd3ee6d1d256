"""Contrastive pairs (GG-SM paper, section 3).

(a) Behaviour pairs: the user's history with one fixed query about the next period, answered
    by a summary of the FUTURE window: events aggregated by action type (modality and
    category, page or query) with their dominant time bin, then a representative subset
    sampled in proportion to frequency.
(b) Query-answer pairs: a pool of user-understanding topics. Per user the topics most
    relevant to the HISTORY are chosen (the query enters the user tower, so choosing it must
    not look at the future); the answer describes the user's behaviour on that topic over the
    history and how it moves in the future window.

Every action type is keyed by ``(modality, kind)``, the kind read from the field the modality
declares as its action type (``dataset.Modality.action_field``): the category for bills,
mini-programs and apps, the page (``a.b`` prefix) for SPM ids, the query text for searches,
each genre of a rated movie (a movie of three genres counts once under each), a declared
modality's first category field. Time spans in the answers follow the dataset's windows.

(c) Scenario pairs (Query-as-Anchor): a task's scenario query, answered by the task's label
    on the user's future window ("Yes" / "No", the task's title and, for an event rule, how
    many events it counted). The task is drawn independently of the future. These answers
    are the evaluation tasks' labels on *training* users: the probe users stay disjoint, but a
    model trained on them has been supervised on those tasks (docs/model.md).

Answers are plain text; the template appends ``<eos>``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .dataset import DatasetSpec, Modality
from .records import EventColumns, UserColumns
from .schema import DAY

BEHAVIOUR_QUERY = "What will this user most likely do next period?"
ANSWER_OPENING = "Next period:"
NO_ACTIVITY = f"{ANSWER_OPENING} no activity."

def event_kinds(modality: Modality, ev: EventColumns, lo: int, hi: int) -> list[tuple[str, ...]]:
    """The action types of events ``lo:hi``, one tuple per event (several for a list field
    such as a movie's genres)."""
    field = modality.action_field
    if field is None:
        return [(modality.name,)] * (hi - lo)
    kinds = ev.fields[field].strings(lo, hi)
    kind = modality.fields[field]
    if kind == "path":
        return [(".".join(k.split(".")[:2]),) for k in kinds]
    if kind == "list":
        return [tuple(k.split("|")) for k in kinds]
    return [(k,) for k in kinds]


def _time_bin(ts: np.ndarray, time_of_day: bool = True) -> str:
    """The dominant time bin of some events: weekday/weekend crossed with part of day (the
    part of day only when event times carry one)."""
    dow = ((ts // DAY) + 3) % 7  # 1970-01-01 was a Thursday
    weekend = (dow >= 5).mean() > 0.5
    if not time_of_day:
        return "weekends" if weekend else "weekdays"
    hours = (ts % DAY) // 3600
    part = np.array(["night", "morning", "afternoon", "evening"])[
        np.digitize(hours, [6, 12, 18])]
    values, counts = np.unique(part, return_counts=True)
    return f"{'weekend' if weekend else 'weekday'} {values[counts.argmax()]}s"


def aggregate(users: UserColumns, i: int, future: bool) -> dict[tuple[str, str], np.ndarray]:
    """Timestamps of user ``i``'s events per action type, in one window."""
    cols = users.future if future else users.history
    out: dict[tuple[str, str], list[int]] = {}
    for m, ev in cols.items():
        lo, hi = ev.span(i)
        for kinds, t in zip(event_kinds(users.spec.modality(m), ev, lo, hi), ev.ts[lo:hi]):
            for kind in kinds:
                out.setdefault((m, kind), []).append(int(t))
    return {k: np.asarray(v) for k, v in out.items()}


def event_count(users: UserColumns, i: int, future: bool) -> int:
    cols = users.future if future else users.history
    return sum(ev.span(i)[1] - ev.span(i)[0] for ev in cols.values())


def action_phrase(modality: Modality, kind: str) -> str:
    """How answers name one action type: ``concert payments``, ``a10.b1001 views``,
    ``searches for 'hotpot'``."""
    if modality.quoted:
        return f"{modality.plural} for '{kind}'"
    noun = modality.plural.split()[-1]
    return noun if kind == modality.name else f"{kind} {noun}"


def _phrase(modality: Modality, kind: str, ts: np.ndarray, time_of_day: bool = True) -> str:
    if modality.quoted:
        return f"{action_phrase(modality, kind)} x{len(ts)}"
    return f"{len(ts)} {action_phrase(modality, kind)} ({_time_bin(ts, time_of_day)})"


def answer_text(events: int, phrases: list[str]) -> str:
    """A behaviour answer: ``Next period: 12 events; 5 concert payments (...); ...``."""
    return f"{ANSWER_OPENING} {events} events" + "".join(f"; {p}" for p in phrases) + "."


# Targeting sentences state this many events, and users are ranked by their similarity to a
# sentence minus their similarity to the bare count (REFERENCE_SENTENCE): every answer states
# its user's activity, which would otherwise outweigh the behaviour a sentence names.
REFERENCE_EVENTS = 30
REFERENCE_SENTENCE = answer_text(REFERENCE_EVENTS, [])

ANSWER_SELECTIONS = ("top", "sampled")
ANSWER_ACTIONS = 6  # action types a behaviour answer lists (data.answer_actions)


def behaviour_answer(agg: dict[tuple[str, str], np.ndarray], rng: np.random.Generator | None = None,
                     k: int = ANSWER_ACTIONS, total: int | None = None,
                     spec: DatasetSpec | None = None) -> str:
    """Summary of the future window (``agg`` from :func:`aggregate`): ``k`` action types
    listed most frequent first. Without ``rng`` they are the ``k`` most frequent (ties in the
    order ``agg`` lists them), so a user's answer depends on the user alone; with ``rng`` they
    are sampled in proportion to their frequency (the paper's "representative subset").
    ``total``: the number of events (default: the sum over action types, right when each
    event has one). ``spec``: the dataset's declaration (default: the payment-app world)."""
    spec = spec or DatasetSpec()
    if not agg:
        return NO_ACTIVITY
    keys = list(agg)
    counts = np.array([len(agg[key]) for key in keys], dtype=float)
    take = min(k, len(keys))
    if rng is None:
        chosen = np.argsort(-counts, kind="stable")[:take]
    else:
        chosen = rng.choice(len(keys), size=take, replace=False, p=counts / counts.sum())
    chosen = sorted(chosen, key=lambda j: -counts[j])
    total = int(counts.sum()) if total is None else total
    return answer_text(total, [_phrase(spec.modality(keys[j][0]), keys[j][1], agg[keys[j]],
                                       spec.time_of_day) for j in chosen])


@dataclass(frozen=True)
class Topic:
    name: str
    queries: tuple[str, ...]
    kinds: dict[str, tuple[str, ...]]  # modality -> kinds; search: keywords in the query

    def matches(self, key: tuple[str, str]) -> bool:
        modality, kind = key
        wanted = self.kinds.get(modality, ())
        if modality == "search":
            return any(w in kind for w in wanted)
        return kind in wanted


TOPICS = (
    Topic("finance", ("How does this user manage money?", "Is this user into investing?",
                      "Describe this user's financial habits."),
          {"minipro": ("finance",), "app": ("finance",), "spm": ("a30.b3001",),
           "search": ("fund", "savings", "stock", "credit card")}),
    Topic("travel", ("Does this user travel?", "Describe this user's travel plans.",
                     "Will this user book a trip?"),
          {"bill": ("travel",), "minipro": ("travel",), "search": ("flight", "hotel", "visa",
                                                                    "train")}),
    Topic("dining", ("What are this user's dining habits?", "Does this user eat out?",
                     "Describe this user's taste in food."),
          {"bill": ("dining",), "minipro": ("food",), "search": ("hotpot", "dim sum",
                                                                  "noodles", "brunch")}),
    Topic("takeout", ("How often does this user order takeout?",
                      "Is this user a food-delivery customer?"),
          {"bill": ("takeout",), "minipro": ("takeout",), "search": ("takeout", "delivery")}),
    Topic("fitness", ("Is this user into fitness?", "Describe this user's exercise habits."),
          {"bill": ("fitness",), "app": ("fitness",), "minipro": ("health",),
           "search": ("gym", "yoga", "running", "swimming")}),
    Topic("commute", ("How does this user get around?", "Does this user take public transit?",
                      "Describe this user's commute."),
          {"bill": ("metro", "bus", "ride_hailing", "fuel"), "minipro": ("transport",),
           "spm": ("a50.b5001",), "app": ("maps",)}),
    Topic("movies", ("Is this user a moviegoer?", "What does this user watch?"),
          {"bill": ("movie",), "minipro": ("movie",), "app": ("video",),
           "search": ("movie", "film", "cinema")}),
    Topic("live_music", ("Does this user go to concerts?", "Is this user into live music?"),
          {"bill": ("concert",), "minipro": ("concert",), "app": ("music",),
           "spm": ("a60.b6001",), "search": ("concert", "live house", "festival")}),
    Topic("gaming", ("Is this user a gamer?", "Describe this user's gaming habits."),
          {"bill": ("gaming",), "minipro": ("games",), "app": ("games",),
           "spm": ("a10.b1304",), "search": ("game", "achievement")}),
    Topic("big_sales", ("Does this user shop during big sales?",
                        "How does this user react to sales events?"),
          {"bill": ("bigsale_order", "apparel", "electronics"), "minipro": ("bigsale",),
           "app": ("shopping",), "search": ("618", "sale", "presale")}),
    Topic("deals", ("Is this user price-sensitive?", "Does this user hunt for deals?"),
          {"minipro": ("deals",), "spm": ("a10.b1203",),
           "search": ("cheapest", "group buy", "cashback", "discount")}),
    Topic("brands", ("Does this user prefer big brands?", "Describe this user's brand taste."),
          {"bill": ("luxury", "electronics", "apparel", "coffee")}),
    Topic("green_living", ("Does this user care about green living?",
                           "Is this user active in Ant Forest?"),
          {"minipro": ("green",), "spm": ("a21.b2101",), "bill": ("charity",),
           "search": ("forest", "tree", "carbon", "recycling")}),
    Topic("community", ("Is this user active in online communities?",
                        "Describe this user's social life."),
          {"minipro": ("community",), "spm": ("a22.b2201",), "app": ("social",)}),
    Topic("health", ("How does this user look after their health?",),
          {"bill": ("healthcare",), "minipro": ("health",)}),
    Topic("education", ("Is this user learning something?", "Does this user read a lot?"),
          {"bill": ("education",), "app": ("reading",)}),
    Topic("household", ("How does this user handle household bills?",),
          {"bill": ("utilities", "telecom", "groceries"), "minipro": ("utilities",),
           "search": ("electricity", "phone bill", "water bill")}),
    Topic("credit", ("Does this user rely on credit?", "Is this user borrowing money?"),
          {"bill": ("loan_repay",), "minipro": ("loans",), "spm": ("a30.b3105",),
           "search": ("loan", "borrow", "cash")}),
    Topic("media", ("What media does this user consume?", "Which apps fill this user's day?"),
          {"app": ("social", "video", "news", "music")}),
    Topic("coffee", ("Is this user a coffee drinker?",), {"bill": ("coffee",)}),
    Topic("transfers", ("How does money move in and out of this account?",),
          {"bill": ("transfer_in", "transfer_out")}),
    Topic("rewards", ("Does this user collect points and rewards?",
                      "Does this user like physical gifts?"),
          {"minipro": ("physical_rewards",), "spm": ("a40.b4001",)}),
)


# MovieLens: one topic per family of genres.
MOVIE_TOPICS = tuple(
    Topic(name, queries, {"rating": genres}) for name, queries, genres in (
        ("action", ("Does this user like action films?", "Is this user into adventure movies?"),
         ("Action", "Adventure")),
        ("comedy", ("Does this user watch comedies?",), ("Comedy",)),
        ("drama", ("Does this user like dramas?", "Is this user a serious-film viewer?"),
         ("Drama",)),
        ("romance", ("Does this user watch romantic films?",), ("Romance",)),
        ("suspense", ("Does this user like thrillers?", "Is this user into horror films?"),
         ("Thriller", "Horror")),
        ("crime", ("Does this user watch crime and mystery films?",),
         ("Crime", "Mystery", "Film-Noir")),
        ("science_fiction", ("Is this user a science-fiction fan?",), ("Sci-Fi", "Fantasy")),
        ("family", ("Does this user watch children's films?", "Is this user into animation?"),
         ("Children's", "Animation", "Musical")),
        ("history", ("Does this user watch war films and westerns?",), ("War", "Western")),
        ("documentary", ("Does this user watch documentaries?",), ("Documentary",)),
    ))


@lru_cache(maxsize=None)
def topics_for(modalities: tuple[str, ...]) -> tuple[Topic, ...]:
    """The topics a dataset's modalities can answer: the payment-app pool, the movie pool or
    any of their topics that name one of the modalities."""
    return tuple(t for t in TOPICS + MOVIE_TOPICS if set(t.kinds) & set(modalities))


def _level(n: int) -> str:
    return "none" if n == 0 else "low" if n < 5 else "moderate" if n < 20 else "high"


def _trend(history: int, future: int, spec: DatasetSpec) -> str:
    """How the future count compares with the history's rate over a future-window length."""
    per_period = history / (spec.history_days / spec.future_days)
    if future == 0:
        return "stops next period" if history else "stays absent next period"
    if future > 1.3 * per_period + 1:
        return f"rises next period ({future} events)"
    if future < 0.7 * per_period - 1:
        return f"falls next period ({future} events)"
    return f"holds steady next period ({future} events)"


_TOPICS_OF: dict[tuple[int, tuple[str, str]], tuple[int, ...]] = {}


def topics_of(key: tuple[str, str], topics: tuple[Topic, ...] = TOPICS) -> tuple[int, ...]:
    """Indices of the topics an action type belongs to (memoised per pool: kinds repeat)."""
    memo = (id(topics), key)
    found = _TOPICS_OF.get(memo)
    if found is None:
        found = _TOPICS_OF[memo] = tuple(t for t, topic in enumerate(topics) if topic.matches(key))
    return found


def relevant_topics(hist: dict[tuple[str, str], np.ndarray],
                    topics: tuple[Topic, ...] = TOPICS) -> np.ndarray:
    """History event count per topic."""
    score = np.zeros(len(topics))
    for key, ts in hist.items():
        for t in topics_of(key, topics):
            score[t] += len(ts)
    return score


def topic_answer(topic: Topic, hist: dict, fut: dict, spec: DatasetSpec | None = None) -> str:
    spec = spec or DatasetSpec()
    days = spec.history_days
    h = {k: v for k, v in hist.items() if topic.matches(k)}
    f = sum(len(v) for k, v in fut.items() if topic.matches(k))
    n = sum(len(v) for v in h.values())
    if n == 0:
        return (f"{topic.name.replace('_', ' ')}: no activity in the last {days} days; "
                f"{_trend(0, f, spec)}.")
    top = Counter({k: len(v) for k, v in h.items()}).most_common(3)
    detail = ", ".join(f"{c} {kind}" for (m, kind), c in top)
    when = _time_bin(np.concatenate(list(h.values())), spec.time_of_day)
    return (f"{topic.name.replace('_', ' ')}: {_level(n)} interest, {n} events in {days} days "
            f"({detail}), mostly {when}; {_trend(n, f, spec)}.")


def scenario_answer(title: str, label: bool, count: int = -1, window: str = "") -> str:
    """The answer of a scenario pair: the label, the task's title and, when the task's rule
    counts events (``count >= 0``), the count and where it counted (``window``)."""
    counted = "" if count < 0 else f", {count} matching event{'s' if count != 1 else ''} {window}"
    return f"{'Yes' if label else 'No'}. {title}{counted}."


@dataclass(frozen=True)
class Pair:
    kind: str  # behaviour | topic:<name> | scenario:<task>
    query: str
    answer: str


def user_pairs(users: UserColumns, i: int, rng: np.random.Generator, *,
               topics_per_user: int = 2, behaviour_query: str = BEHAVIOUR_QUERY,
               answer_actions: int = ANSWER_ACTIONS,
               answer_selection: str = "top") -> list[Pair]:
    """One behaviour pair plus ``topics_per_user`` query-answer pairs for user ``i``. The
    behaviour answer lists ``answer_actions`` action types; ``answer_selection``: ``top`` (the
    most frequent) or ``sampled`` (drawn in proportion to frequency, see
    :func:`behaviour_answer`).

    Queries and answers draw from separate random streams: the queries enter the user tower,
    so nothing about them may depend on the future, not even through a shared generator."""
    query_rng, answer_rng = rng.spawn(2)
    fut = aggregate(users, i, future=True)
    pairs = [Pair("behaviour", behaviour_query,
                  behaviour_answer(fut, answer_rng if answer_selection == "sampled" else None,
                                   answer_actions,
                                   total=event_count(users, i, future=True), spec=users.spec))]
    if topics_per_user <= 0:
        return pairs
    topics = topics_for(users.modalities)
    hist = aggregate(users, i, future=False)
    score = relevant_topics(hist, topics) + query_rng.random(len(topics))  # random tie-breaks
    for t in np.argsort(-score)[:topics_per_user]:
        topic = topics[t]
        query = topic.queries[query_rng.integers(len(topic.queries))]
        pairs.append(Pair(f"topic:{topic.name}", query,
                          topic_answer(topic, hist, fut, users.spec)))
    return pairs

"""Lightning DataModules: contrastive pairs for training, labelled users for linear probes.

The batch dictionary is the contract with ``lightning_modules``:

``ContrastiveDataModule`` batches
    ``user_input_ids``, ``user_attention_mask``, ``user_segment_ids``  (B, L_user)
    ``answer_input_ids``, ``answer_attention_mask``                    (B, L_answer)
    ``user_ids`` (list[str]), ``pair_kinds`` (list[str])
``ProbeDataModule`` batches
    ``user_input_ids``, ``user_attention_mask``, ``user_segment_ids``  (B, L_user)
    ``labels`` (B, tasks) int8, ``probe_index`` (B,) row of the user in ``labels``

With ``input.mode: hierarchical`` the user side also carries ``user_slot_types``,
``user_slot_index``, ``user_slot_values`` (B, L_user), ``user_event_features``
(B, L_user, F) and, with the text event encoder, ``user_event_vectors`` (B, L_user, D)
(see ``datamodules/hierarchical.py``).

Padding is dynamic (to the longest sequence of the batch, optionally to a multiple of 8), on
the right by default or on the left; masks are 1 for real tokens, segment id 0 for padding.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from . import baseline
from .dataset import DatasetSpec
from .pairs import (
    ANSWER_ACTIONS, ANSWER_SELECTIONS, BEHAVIOUR_QUERY, Pair, scenario_answer, topics_for,
    user_pairs,
)
from .records import UserColumns
from .schema import (
    EMPTY_HISTORY, DataValidationError, dataset_files, dataset_spec, tabular_names,
    validate_dataset,
)
from .splits import PROBE, SPLIT_NAMES, TRAIN, VAL
from .stream import SplitSpec, UserStream, split_tables
from .probe import MIN_SCORABLE, ProbeSet, all_columns, check_task_columns, history_columns
from .tasks import Task, compute_labels, event_counts, label_columns, resolve_tasks
from .hierarchical import (
    EventTextCache, HierarchicalTemplate, HierarchicalUser, InputConfig, default_text_encoder,
    event_texts, modality_slots,
)
from .template import (
    DEFAULT_CAPS, PAD_SEGMENT, TemplateConfig, UserTemplate, render_events, render_tabular,
)
from .tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)


def pad_sequences(seqs: list[list[int]], value: int, *, left: bool = False,
                  multiple_of: int = 1) -> torch.Tensor:
    """(B, L) long tensor, L the longest sequence rounded up to ``multiple_of``."""
    longest = max(len(s) for s in seqs)
    width = -(-longest // multiple_of) * multiple_of
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            if left:
                out[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
            else:
                out[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


@dataclass
class Collator:
    pad_id: int
    left_padding: bool = False
    pad_to_multiple_of: int = 1

    def _pad(self, seqs, value):
        return pad_sequences(seqs, value, left=self.left_padding,
                             multiple_of=self.pad_to_multiple_of)

    def user_side(self, samples: list[dict]) -> dict:
        ids = [s["input_ids"] for s in samples]
        out = {
            "user_input_ids": self._pad(ids, self.pad_id),
            "user_attention_mask": self._pad([[1] * len(x) for x in ids], 0),
            "user_segment_ids": self._pad([s["segment_ids"] for s in samples], PAD_SEGMENT),
        }
        if "slot_types" in samples[0]:  # hierarchical input
            out["user_slot_types"] = self._pad([s["slot_types"] for s in samples], 0)
            out["user_slot_index"] = self._pad([s["slot_index"] for s in samples], 0)
            width = out["user_input_ids"].shape[1]
            for key, name, dtype in (("slot_values", "user_slot_values", torch.float32),
                                     ("event_features", "user_event_features", torch.long),
                                     ("event_vectors", "user_event_vectors", torch.float32)):
                if samples[0].get(key) is None:
                    continue
                rows = [torch.as_tensor(np.asarray(s[key])) for s in samples]
                padded = torch.zeros((len(rows), width, *rows[0].shape[1:]), dtype=dtype)
                for b, r in enumerate(rows):
                    where = slice(width - len(r), width) if self.left_padding else slice(0, len(r))
                    padded[b, where] = r.to(dtype)
                out[name] = padded
        return out

    def contrastive(self, samples: list[dict]) -> dict:
        batch = self.user_side(samples)
        answers = [s["answer_ids"] for s in samples]
        batch["answer_input_ids"] = self._pad(answers, self.pad_id)
        batch["answer_attention_mask"] = self._pad([[1] * len(x) for x in answers], 0)
        batch["user_ids"] = [s["user_id"] for s in samples]
        batch["pair_kinds"] = [s["kind"] for s in samples]
        return batch

    def plain(self, samples: list[dict]) -> dict:
        batch = self.user_side(samples)
        batch["user_ids"] = [s["user_id"] for s in samples]
        return batch

    def probe(self, samples: list[dict]) -> dict:
        batch = self.user_side(samples)
        batch["labels"] = torch.from_numpy(np.stack([s["labels"] for s in samples]))
        batch["probe_index"] = torch.tensor([s["probe_index"] for s in samples])
        return batch


@dataclass
class DataConfig:
    """Everything that turns a dataset directory into batches."""

    path: str = "data/world"  # a users*.parquet directory (make world generates it)
    tokenizer: str | None = None  # tokenizer.json or a pretrained model dir; None: <path>/tokenizer.json
    vocab_size: int = 4096
    max_tokens: int = 256  # user-tower tokens, query and anchor included
    caps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))  # events per segment
    answer_max_tokens: int = 64
    # Query-answer pairs per user besides the behaviour pair. 0 for the tiny from-scratch
    # model, which with topic pairs learns to match the query to the topic without reading the
    # history (docs/learning.md); pretrained backbones can afford the paper's mix (2).
    topics_per_user: int = 0
    # Scenario pairs per user (Query-as-Anchor): a task's scenario query answered by its label
    # on the future window, drawn from scenario_tasks (names, suites, files; empty: the
    # evaluation's tasks). Per user: 1 behaviour : topics_per_user : scenarios_per_user.
    scenarios_per_user: int = 0
    scenario_tasks: list[Any] = field(default_factory=list)
    # Behaviour answers list the next period's most frequent action types (top), so one
    # user's answer depends on that user alone; sampled draws them in proportion to frequency
    # (the paper's wording), so one user's answer varies between epochs.
    answer_selection: str = "top"  # top | sampled
    # How many action types a behaviour answer lists: more describe more of the future (and
    # need a larger answer_max_tokens: six fill the default 64 tokens).
    answer_actions: int = ANSWER_ACTIONS
    behaviour_query: str = BEHAVIOUR_QUERY
    probe_query: str = ""  # instruction used when embedding users for probes
    anchor: bool = True  # end the user sequence with <USER> (needed by user_token pooling)
    # Text input: each modality's segment opens with its event counts over the whole history
    # and its last RECENT_DAYS days (``79 events, 5 in 14 days``), which truncation hides.
    activity_header: bool = False
    probe_fraction: float = 0.3  # users held out of training for the probes
    val_fraction: float = 0.05
    split_seed: int = 0
    seed: int | None = None  # shuffling and answer draws; None: the experiment's seed (0 alone)
    batch_size: int = 16
    eval_batch_size: int = 64
    num_workers: int = 1
    shuffle_buffer: int = 256
    left_padding: bool = False
    pad_to_multiple_of: int = 1
    validate: bool = True  # check the dataset's files before the first batch
    tokenizer_users: int = 2000  # users whose text trains a new tokenizer
    # Users without history events: an error, or kept (embedded from tabular features and
    # the query alone).
    empty_history: str = "error"  # error | keep
    # The windows the dataset declares; set, they must equal the declaration (a recipe can
    # state what data it was written for). None: whatever the dataset declares.
    history_days: int | None = None
    future_days: int | None = None

    def check(self) -> None:
        """Raises ValueError('data.<key> <what is wrong>')."""
        if self.answer_selection not in ANSWER_SELECTIONS:
            raise ValueError(f"data.answer_selection expected one of {list(ANSWER_SELECTIONS)}")
        for key in ("topics_per_user", "scenarios_per_user"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"data.{key} expected a whole number >= 0")
        if not isinstance(self.answer_actions, int) or self.answer_actions < 1:
            raise ValueError("data.answer_actions expected a whole number >= 1")
        if self.batch_size < 2:
            raise ValueError("data.batch_size contrastive training needs at least 2 pairs "
                             "per batch")
        for key in ("probe_fraction", "val_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"data.{key} expected a share in [0, 1)")
        if self.empty_history not in EMPTY_HISTORY:
            raise ValueError(f"data.empty_history expected one of {list(EMPTY_HISTORY)}")
        for key in ("history_days", "future_days"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{key} expected a whole number of days >= 1 or null")
        self.template_config()  # checks itself

    def opt_in_key_parts(self) -> list:
        """What the cache keys of backbones and references add for options that are on, and
        only then, so the keys of everything cached without them stay valid."""
        parts = [["activity_header", True]] if self.activity_header else []
        if self.answer_actions != ANSWER_ACTIONS:
            parts.append(["answer_actions", self.answer_actions])
        return parts

    def template_config(self) -> TemplateConfig:
        return TemplateConfig(self.max_tokens, dict(self.caps), self.anchor,
                              self.activity_header)

    def check_against(self, spec: DatasetSpec) -> None:
        """The config against the dataset's declaration (windows, template segments)."""
        for key in ("history_days", "future_days"):
            value, declared = getattr(self, key), getattr(spec, key)
            if value is not None and value != declared:
                raise DataValidationError(
                    f"data.{key} is {value}, but {self.path} declares {declared} days; the "
                    f"windows belong to the dataset (re-import it to change them), so leave "
                    f"data.{key} unset or set it to {declared}")
        try:
            self.template_config().check(spec.segments)
        except ValueError as e:  # "data.<key> ...": the key stays first for config checks
            raise DataValidationError(f"{e} (dataset {self.path})") from e


def _sample_seed(seed: int, epoch: int, user_id: str) -> list[int]:
    return [seed, epoch, zlib.crc32(user_id.encode())]


class UserDataModule(L.LightningDataModule):
    """Shared setup: dataset files, validation, tokenizer and template."""

    def __init__(self, config: DataConfig | None = None, *, input: InputConfig | None = None,
                 **overrides):
        super().__init__()
        self.input = input or InputConfig()
        self.input.check()
        unknown = sorted(set(overrides) - set(DataConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown data option {unknown[0]!r}")
        # A copy: the caller's config (an experiment's) is never changed behind its back.
        cfg = dataclasses.replace(config or DataConfig(), **overrides)
        cfg.caps = dict(cfg.caps)
        if cfg.seed is None:  # outside an experiment, which sets its own seed here
            cfg.seed = 0
        cfg.check()
        self.cfg = cfg
        self.files = dataset_files(cfg.path)
        self.spec = dataset_spec(cfg.path)
        self.modalities = self.spec.names
        cfg.check_against(self.spec)
        self.template: UserTemplate | None = None
        self._validated = False

    @property
    def tokenizer_path(self) -> Path:
        return Path(self.cfg.tokenizer) if self.cfg.tokenizer else Path(self.cfg.path) / "tokenizer.json"

    def split(self, code: int) -> SplitSpec:
        return SplitSpec(code, self.cfg.probe_fraction, self.cfg.val_fraction, self.cfg.split_seed)

    def prepare_data(self) -> None:
        if self.cfg.validate and not self._validated:
            validate_dataset(self.cfg.path, empty_history=self.cfg.empty_history)
            self._validated = True
        if not self.tokenizer_path.exists():
            build_tokenizer(self, self.tokenizer_path)

    def setup(self, stage: str | None = None) -> None:
        if self.template is None:
            self.prepare_data()
            tok = load_tokenizer(self.tokenizer_path, self.spec.segments)
            config = self.cfg.template_config()
            names = tabular_names(self.cfg.path)
            if self.input.mode == "text":
                self.template = UserTemplate(tok, names, config, self.spec)
            else:
                self.template = HierarchicalTemplate(tok, names, config, self.spec,
                                                     self.input, self._text_cache())

    def _text_cache(self) -> EventTextCache | None:
        """The text event encoder's cache, filled here with every distinct event text of the
        dataset (within the caps), so dataloader workers only read it."""
        if self.input.event_encoder != "text":
            return None
        encoder = self.input.text_encoder or default_text_encoder()
        cache = EventTextCache(encoder, self.input.cache_dir
                               or Path(self.cfg.path) / "event_cache")
        texts: set[str] = set()
        for table in split_tables(self.files, self.split(None), history_columns(self.modalities)):
            texts.update(event_texts(UserColumns(table, future=False), self.cfg.caps))
        new = cache.add(sorted(texts))
        log.info("event text cache %s: %d texts, %d newly encoded", cache.dir, len(texts), new)
        return cache

    @staticmethod
    def sample(enc) -> dict:
        """The user-side fields of one encoded user (hierarchical slots when present)."""
        out = {"input_ids": enc.input_ids, "segment_ids": enc.segment_ids}
        if isinstance(enc, HierarchicalUser):
            out.update(slot_types=enc.slot_types, slot_index=enc.slot_index,
                       slot_values=enc.slot_values, event_features=enc.event_features,
                       event_vectors=enc.event_vectors)
        return out

    def suffix(self, query: str) -> list[int]:
        """The token ids a scenario adds after the history: the query, then the anchor."""
        template = self.template
        return template.query_ids(query) + ([template.ids.user] if template.cfg.anchor else [])

    def sentences(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask), right-padded: texts as the answer tower reads them (up to
        ``data.answer_max_tokens``, ending with ``<eos>``)."""
        ids = [self.template.encode_answer(t, self.cfg.answer_max_tokens) for t in texts]
        pad = self.template.ids.pad
        return (pad_sequences(ids, pad),
                pad_sequences([[1] * len(x) for x in ids], 0))

    @property
    def collator(self) -> Collator:
        return Collator(self.template.ids.pad, self.cfg.left_padding, self.cfg.pad_to_multiple_of)

    @property
    def vocab_size(self) -> int:
        return self.template.tok.get_vocab_size()

    @property
    def modality_slots(self) -> int:
        """Event adapters a hierarchical model needs for this dataset's modalities."""
        return modality_slots(self.spec)

    def _make_plain(self, users: UserColumns, i: int, epoch: int, query: str | None = None,
                    reserve: int = 0) -> list[dict]:
        enc = self.template.encode(users, i, self.cfg.probe_query if query is None else query,
                                   reserve=reserve)
        return [{**self.sample(enc), "user_id": users.user_ids[i]}]

    def users_dataloader(self, split: str = "all", query: str | None = None,
                         reserve: int = 0) -> DataLoader:
        """One pass over the users of a split (``all``, ``train``, ``val``, ``probe``) in file
        order with ``query`` (None: the probe query), the history truncated to leave
        ``reserve`` tokens for the query and the anchor, for exporting embeddings; batches
        carry ``user_ids``."""
        codes = {"all": None, **SPLIT_NAMES}
        if split not in codes:
            raise ValueError(f"split {split!r}: expected one of {list(codes)}")
        make = partial(self._make_plain, query=query, reserve=reserve)
        stream = UserStream(self.files, self.split(codes[split]), make,
                            columns=history_columns(self.modalities), future=False,
                            cycle=False, shuffle=False, seed=self.cfg.seed)
        return self._loader(stream, self.cfg.eval_batch_size, self.collator.plain)

    def _loader(self, stream: UserStream, batch_size: int, collate) -> DataLoader:
        return DataLoader(stream, batch_size=batch_size, collate_fn=collate,
                          num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)


def build_tokenizer(dm: UserDataModule, out: Path, users: int | None = None) -> Path:
    """Trains a tokenizer on the text of up to ``users`` training users: templates, queries
    and answers, so every word the model will see is in its corpus."""
    cfg = dm.cfg
    limit = users or cfg.tokenizer_users
    names = tabular_names(cfg.path)
    split = dm.split(TRAIN)

    def texts():
        seen = 0
        for table in split_tables(dm.files, split, all_columns(dm.modalities)):
            users_ = UserColumns(table)
            for i in range(len(users_)):
                for m, ev in users_.history.items():
                    lo, hi = ev.span(i)
                    yield " ".join(render_events(dm.spec.modality(m), ev,
                                                 max(lo, hi - cfg.caps.get(m, 10**9)), hi,
                                                 dm.spec.time_of_day))
                yield " ".join(render_tabular(names, users_.tabular[i]))
                rng = np.random.default_rng(_sample_seed(cfg.seed, 0, users_.user_ids[i]))
                for p in user_pairs(users_, i, rng,
                                    topics_per_user=len(topics_for(dm.modalities))):
                    yield f"Instruction: {p.query} {p.answer}"
                seen += 1
                if seen >= limit:
                    return

    tok = train_tokenizer(texts(), cfg.vocab_size, dm.spec.segments)
    log.info("trained a %d-token tokenizer on %s", tok.get_vocab_size(), cfg.path)
    return save_tokenizer(tok, out)


class ContrastiveDataModule(UserDataModule):
    """(user history + query, answer) pairs from the train and val splits. ``scenarios``: the
    tasks whose scenario queries ``data.scenarios_per_user`` draws from, resolved (an
    experiment passes ``data.scenario_tasks`` or its evaluation tasks; None: resolved here
    from ``data.scenario_tasks``)."""

    def __init__(self, config: DataConfig | None = None, *, input: InputConfig | None = None,
                 scenarios: list[Task] | None = None, **overrides):
        super().__init__(config, input=input, **overrides)
        self.scenario_tasks: list[Task] = []
        if self.cfg.scenarios_per_user:
            self.scenario_tasks = list(scenarios or resolve_tasks(self.cfg.scenario_tasks))
            if not self.scenario_tasks:
                raise ValueError("data.scenarios_per_user needs tasks to ask about: set "
                                 "data.scenario_tasks (or the evaluation's eval.tasks)")
            check_task_columns(self.scenario_tasks, self.files[0])
        self._facts: tuple[UserColumns | None, np.ndarray, np.ndarray] = (None, None, None)

    def _scenario_facts(self, users: UserColumns) -> tuple[np.ndarray, np.ndarray]:
        """(labels, event counts) (users, scenario tasks) of a table, computed once per
        table the stream reads."""
        if self._facts[0] is not users:
            tasks = self.scenario_tasks
            self._facts = (users, compute_labels(users.table, tasks),
                           event_counts(users.table, tasks))
        return self._facts[1], self._facts[2]

    def _scenario_pairs(self, users: UserColumns, i: int, rng: np.random.Generator
                        ) -> list[Pair]:
        labels, counts = self._scenario_facts(users)
        tasks = self.scenario_tasks
        chosen = rng.choice(len(tasks), size=min(self.cfg.scenarios_per_user, len(tasks)),
                            replace=False)  # never reads the future: the query enters the tower
        days = users.spec.future_days
        return [Pair(f"scenario:{tasks[k].name}", tasks[k].scenario,
                     scenario_answer(tasks[k].title, bool(labels[i, k]), int(counts[i, k]),
                                     tasks[k].rule.window(days) if counts[i, k] >= 0 else ""))
                for k in chosen]

    def _make_pairs(self, users: UserColumns, i: int, epoch: int) -> list[dict]:
        cfg = self.cfg
        uid = users.user_ids[i]
        rng = np.random.default_rng(_sample_seed(cfg.seed, epoch, uid))
        out = []
        history = self.template.history(users, i)
        pairs = user_pairs(users, i, rng, topics_per_user=cfg.topics_per_user,
                           behaviour_query=cfg.behaviour_query,
                           answer_actions=cfg.answer_actions,
                           answer_selection=cfg.answer_selection)
        if self.scenario_tasks:
            pairs += self._scenario_pairs(
                users, i, np.random.default_rng([*_sample_seed(cfg.seed, epoch, uid), 1]))
        for pair in pairs:
            enc = self.template.encode(users, i, pair.query, history)
            out.append({**self.sample(enc),
                        "answer_ids": self.template.encode_answer(pair.answer,
                                                                  cfg.answer_max_tokens),
                        "user_id": uid, "kind": pair.kind})
        return out

    def stream(self, code: int, skip_batches: int = 0) -> UserStream:
        train = code == TRAIN
        columns = list(dict.fromkeys(
            all_columns(self.modalities) + label_columns(self.scenario_tasks, self.modalities)))
        return UserStream(self.files, self.split(code), self._make_pairs, columns=columns,
                          future=True, cycle=train, shuffle=train, seed=self.cfg.seed,
                          shuffle_buffer=self.cfg.shuffle_buffer if train else 0,
                          batch_size=self.cfg.batch_size, skip_batches=skip_batches)

    # The training stream's position travels in checkpoints (Lightning saves a datamodule's
    # state_dict), so a resumed run sees exactly the batches an uninterrupted run would.
    _resume_batches = 0

    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        # Checkpoints are written after an optimiser step: every micro-batch so far was used.
        return {"train_batches": trainer.global_step * trainer.accumulate_grad_batches}

    def load_state_dict(self, state: dict) -> None:
        self._resume_batches = int(state.get("train_batches", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.stream(TRAIN, self._resume_batches), self.cfg.batch_size,
                            self.collator.contrastive)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.stream(VAL), self.cfg.batch_size, self.collator.contrastive)


class ProbeDataModule(UserDataModule):
    """Probe users (disjoint from pretraining) with their task labels and per-task splits."""

    def __init__(self, config: DataConfig | None = None, *,
                 tasks: list[str | dict | Task] | str = "ggsm", test_fraction: float = 0.3,
                 input: InputConfig | None = None, min_class_users: int = MIN_SCORABLE,
                 sparse_tasks: str = "error", **overrides):
        super().__init__(config, input=input, **overrides)
        self.probe = ProbeSet(self.files, self.split(PROBE), resolve_tasks(tasks),
                              test_fraction=test_fraction, seed=self.cfg.split_seed,
                              min_class_users=min_class_users, sparse_tasks=sparse_tasks)

    @property
    def task_names(self) -> list[str]:
        return self.probe.task_names

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.probe.load()

    def _make_user(self, users: UserColumns, i: int, epoch: int,
                   query: str | None = None, reserve: int = 0) -> list[dict]:
        enc = self.template.encode(users, i, self.cfg.probe_query if query is None else query,
                                   reserve=reserve)
        k = self.probe.index[users.user_ids[i]]
        return [{**self.sample(enc), "labels": self.probe.labels[k], "probe_index": k}]

    def window_table(self, table: pa.Table | None = None) -> pa.Table:
        """The probe users' history table (label order; ``table`` if already read) cut to the
        window the user tower reads of each under ``data.probe_query``
        (``UserTemplate.window``)."""
        table = self.probe.history_table() if table is None else table
        users = UserColumns(table, future=False)
        kept = np.array([self.template.window(users, i, self.cfg.probe_query)
                         for i in range(users.n)], dtype=np.int64).reshape(users.n, -1)
        modalities = self.template.modalities
        return baseline.window_table(table, dict(zip(modalities, kept.T)), kept[:, -1])

    def window_features(self):
        """The bag-of-events features of what the user tower reads: the window
        (:meth:`window_table`) and, with ``data.activity_header``, the counts it states."""
        table = self.probe.history_table()
        extra = baseline.activity(table) if self.cfg.activity_header else None
        return baseline.features(self.window_table(table), extra)

    def probe_dataloader(self, *, all_ranks: bool = False, query: str | None = None,
                         reserve: int = 0) -> DataLoader:
        """One pass over the probe users in file order, sharded across dataloader workers and,
        unless ``all_ranks`` (evaluation on one rank), across DDP ranks. Users read
        ``query`` after their history (None: ``data.probe_query``), the history truncated to
        leave ``reserve`` tokens for the query and the anchor (see ``UserTemplate.encode``)."""
        make = partial(self._make_user, query=query, reserve=reserve)
        stream = UserStream(self.files, self.split(PROBE), make,
                            columns=history_columns(self.modalities), future=False,
                            cycle=False, shuffle=False, seed=self.cfg.seed,
                            rank_sharded=not all_ranks)
        return self._loader(stream, self.cfg.eval_batch_size, self.collator.probe)

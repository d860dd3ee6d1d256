"""The tokenizer: trained on the world's own text with HF ``tokenizers``, or a pretrained one.

Either way it carries the template's special tokens (boundary tags, ``<USER>``, ``<eos>``,
``<pad>``) as single ids, saves as ``tokenizer.json`` and loads with
``PreTrainedTokenizerFast``. The data path uses the fast backend directly (``encode_batch``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .schema import SEGMENTS

PAD, UNK, EOS, USER = "<pad>", "<unk>", "<eos>", "<USER>"


def tags(segments: tuple[str, ...] = SEGMENTS) -> tuple[str, ...]:
    """The boundary tags of a dataset's template segments."""
    return tuple(t for s in segments for t in (f"<{s}>", f"</{s}>"))


def special_tokens(segments: tuple[str, ...] = SEGMENTS) -> tuple[str, ...]:
    return (PAD, UNK, EOS, USER) + tags(segments)


# Where words split into pieces besides spaces: every character that is neither a word
# character (letters, digits, underscore) nor a space (or its marker), except a hyphen
# between digits. Page ids (``a10.b1001.c1.d4``) thus share pieces with other page ids,
# while a date (``05-31``) and a feature name (``credit_score``) stay one word each, so the
# BPE can give them one token: an event's date costs one token instead of three, and the
# template fits more history into its budget.
WORD_BREAKS = r"(?<![0-9])-|-(?![0-9])|[^\w\s\-\x{2581}]"

TAGS = tags()
SPECIAL_TOKENS = special_tokens()


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    eos: int
    user: int
    open: dict[str, int]
    close: dict[str, int]

    def all(self) -> list[int]:
        """Every special token id the template writes, sorted (the rows a pretrained
        backbone's embedding never learned)."""
        return sorted({self.pad, self.eos, self.user, *self.open.values(), *self.close.values()})


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096,
                    segments: tuple[str, ...] = SEGMENTS) -> Tokenizer:
    """BPE over space-marked words split at ``WORD_BREAKS``, with the special tokens of
    ``segments`` first; decodes back to the text."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(),
        pre_tokenizers.Split(Regex(WORD_BREAKS), behavior="isolated")])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=list(special_tokens(segments)),
                                  min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: parallel runs that each train the same tokenizer on first use
    # never read a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | Path, segments: tuple[str, ...] = SEGMENTS) -> Tokenizer:
    """A ``tokenizer.json`` file, or a pretrained model directory (the special tokens of
    ``segments`` added where missing)."""
    path = Path(path)
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    elif path.is_dir():
        from transformers import AutoTokenizer  # pretrained backbones only

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        tok = hf.backend_tokenizer
    else:
        raise FileNotFoundError(f"tokenizer {path}: no tokenizer.json file or model directory")
    missing = [t for t in special_tokens(segments) if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok


def special_ids(tok: Tokenizer, segments: tuple[str, ...] = SEGMENTS) -> SpecialIds:
    ids = {t: tok.token_to_id(t) for t in special_tokens(segments)}
    absent = [t for t, i in ids.items() if i is None]
    if absent:
        raise ValueError(f"tokenizer lacks the template's special tokens {absent}; "
                         f"load it with load_tokenizer()")
    return SpecialIds(pad=ids[PAD], eos=ids[EOS], user=ids[USER],
                      open={s: ids[f"<{s}>"] for s in segments},
                      close={s: ids[f"</{s}>"] for s in segments})


def hf_tokenizer(path: str | Path, segments: tuple[str, ...] = SEGMENTS):
    """The saved tokenizer as ``PreTrainedTokenizerFast`` (for HF tooling and backbones)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token=PAD, eos_token=EOS,
                                   unk_token=UNK,
                                   additional_special_tokens=[USER, *tags(segments)])


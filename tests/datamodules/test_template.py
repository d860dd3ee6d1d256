"""Template, segment ids, truncation and the tokenizer."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from maskstudy.datamodules.datamodules import DataConfig
from maskstudy.datamodules.dataset import BUILTIN_MODALITIES
from maskstudy.datamodules.records import UserColumns
from maskstudy.datamodules.schema import EVENT_MODALITIES, SEGMENTS
from maskstudy.datamodules.template import (
    ANCHOR, HISTORY, QUERY, TemplateConfig, UserTemplate, event_pieces, water_fill,
)
from maskstudy.datamodules.tokenizer import (
    SPECIAL_TOKENS, USER, hf_tokenizer, load_tokenizer, special_ids, train_tokenizer,
)
from tests.helpers import table_of, user_row


@pytest.fixture(scope="module")
def tok(world):
    return load_tokenizer(world / "tokenizer.json")


def make_template(tok, **cfg):
    defaults = DataConfig()
    cfg = {"max_tokens": defaults.max_tokens, "caps": defaults.caps, "anchor": True, **cfg}
    return UserTemplate(tok, ["a", "b"], TemplateConfig(**cfg))


def many_bills(n):
    return [(-89 + 88 * k / (n - 1), f"Shop{k}", "groceries", float(k)) for k in range(n)]


def test_template_layout_and_segment_ids(tok):
    users = UserColumns(table_of(user_row("u1", bill=many_bills(3), search=[(-1, "hotpot")])))
    t = make_template(tok)
    enc = t.encode(users, 0, "Is this user a gamer?")
    text = tok.decode(enc.input_ids, skip_special_tokens=False)
    order = [text.index(f"<{s}>") for s in SEGMENTS] + [text.index("Instruction:"),
                                                         text.index(USER)]
    assert order == sorted(order)
    assert text.rstrip().endswith(USER)
    assert "hotpot" in text and "a=1 b=2" in text
    seg = np.array(enc.segment_ids)
    assert len(seg) == len(enc.input_ids)
    # history, then the query, then exactly one anchor, in that order
    assert seg[0] == HISTORY and seg[-1] == ANCHOR and (seg == ANCHOR).sum() == 1
    q = np.flatnonzero(seg == QUERY)
    assert q.size and (np.diff(q) == 1).all() and q[-1] == len(seg) - 2
    assert (seg[: q[0]] == HISTORY).all()
    ids = special_ids(tok)
    assert enc.input_ids[q[0] - 1] == ids.close["tabular"]


def test_empty_query_still_has_instruction_and_anchor(tok):
    users = UserColumns(table_of(user_row("u1", bill=many_bills(2))))
    enc = make_template(tok).encode(users, 0, "")
    assert (np.array(enc.segment_ids) == QUERY).sum() >= 1
    assert enc.input_ids[-1] == special_ids(tok).user


def test_truncation_keeps_the_latest_events(tok):
    users = UserColumns(table_of(user_row("u1", bill=many_bills(60))))
    enc = make_template(tok, max_tokens=120).encode(users, 0, "q")
    assert len(enc.input_ids) <= 120
    text = tok.decode(enc.input_ids, skip_special_tokens=False)
    assert "Shop59" in text and "Shop58" in text
    assert "Shop0 " not in text and "Shop10 " not in text
    # what is kept is a contiguous run of the newest events
    kept = sorted(int(w[4:]) for w in text.split() if w.startswith("Shop"))
    assert kept == list(range(kept[0], 60))


def test_caps_count_events_per_modality(tok):
    users = UserColumns(table_of(user_row("u1", bill=many_bills(40),
                                          search=[(-50 + k, f"query{k}") for k in range(30)])))
    enc = make_template(tok, caps={"bill": 5, "search": 3}).encode(users, 0, "q")
    text = tok.decode(enc.input_ids, skip_special_tokens=False)
    assert sorted(int(w[4:]) for w in text.split() if w.startswith("Shop")) == list(range(35, 40))
    assert re.findall(r"query\d+", text) == ["query27", "query28", "query29"]


def test_budget_is_shared_between_modalities(tok):
    users = UserColumns(table_of(user_row("u1", bill=many_bills(80),
                                          search=[(-2, "hotpot")])))
    enc = make_template(tok, max_tokens=100).encode(users, 0, "")
    text = tok.decode(enc.input_ids, skip_special_tokens=False)
    assert "hotpot" in text  # a short segment is never starved by a long one
    assert len(enc.input_ids) <= 100


def test_window_counts_what_encode_keeps(tok):
    users = UserColumns(table_of(user_row("u1", bill=many_bills(60), search=[(-2, "hotpot")])))
    t = make_template(tok, max_tokens=120)
    text = tok.decode(t.encode(users, 0, "q").input_ids, skip_special_tokens=False)
    bills = [w for w in text.split() if w.startswith("Shop")]
    # bill, minipro, spm, app, search: their newest events kept; then both tabular features
    assert t.window(users, 0, "q") == [len(bills), 0, 0, 0, 1, 2]
    assert 0 < len(bills) < 60
    # a longer query leaves fewer tokens, so fewer events
    assert t.window(users, 0, "q " * 30)[0] < len(bills)


def test_activity_header_states_whole_history_counts_within_the_budget(tok):
    bills = [(-89 + k, f"Shop{k}", "groceries", 1.0) for k in range(80)]  # days -89 to -10
    users = UserColumns(table_of(user_row("u1", bill=bills, search=[(-40, "hotpot")])))
    plain = make_template(tok, max_tokens=120)
    t = make_template(tok, max_tokens=120, activity_header=True)
    enc = t.encode(users, 0, "q")
    text = tok.decode(enc.input_ids, skip_special_tokens=False)
    assert len(enc.input_ids) <= 120
    assert re.search(r"<bill>\s*80 events, 5 in 14 days", text)  # days -14 to -10
    assert re.search(r"<search>\s*1 events, 0 in 14 days", text)
    assert re.search(r"<minipro>\s*0 events, 0 in 14 days", text)
    assert "events" not in tok.decode(plain.encode(users, 0, "q").input_ids)
    # the header's tokens come out of the events' share
    header = sum(len(h) for h in t.activity_ids(users, 0))
    assert t.window(users, 0, "q")[0] < plain.window(users, 0, "q")[0]
    assert sum(len(x) for x in t.history(users, 0)[0][-t.window(users, 0, "q")[0]:]) <= (
        t.history_budget("q") - header)
    with pytest.raises(ValueError, match="activity headers take .* tokens"):
        make_template(tok, max_tokens=30, activity_header=True).encode(users, 0, "")


def test_water_fill():
    assert water_fill([[1, 1], [5] * 10, []], 20) == [2, 3, 0]
    assert water_fill([[3] * 3, [3] * 3], 100) == [3, 3]
    assert water_fill([[4] * 10, [4] * 10], 17) == [2, 2]


def test_bad_template_config():
    with pytest.raises(ValueError, match="unknown segment"):
        TemplateConfig(256, {"bills": 3}, True).check(SEGMENTS)
    with pytest.raises(ValueError, match="too small"):
        TemplateConfig(10, {}, True).check(SEGMENTS)
    with pytest.raises(ValueError, match="whole numbers of events"):
        TemplateConfig(256, {"bill": -1}, True)


def test_answers_end_with_eos(tok):
    t = make_template(tok)
    ids = t.encode_answer("Next period: 3 takeout payments. " * 50, max_tokens=20)
    assert len(ids) == 20 and ids[-1] == special_ids(tok).eos


def test_special_tokens_are_single_ids(tok):
    for token in SPECIAL_TOKENS:
        assert tok.encode(token, add_special_tokens=False).ids == [tok.token_to_id(token)]


def test_saved_tokenizer_loads_in_transformers(world):
    hf = hf_tokenizer(world / "tokenizer.json")
    assert hf.pad_token == "<pad>" and hf.eos_token == "<eos>"
    ids = hf("<bill> 05-29 13h dining </bill> <USER>", add_special_tokens=False)["input_ids"]
    assert ids[0] == hf.convert_tokens_to_ids("<bill>")
    assert ids[-1] == hf.convert_tokens_to_ids(USER)


def test_trained_tokenizer_has_the_special_tokens_first():
    tok = train_tokenizer(["05-29 13h dining Hotpot House 63"] * 10, 100)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


def test_dates_and_feature_names_stay_whole_words_and_page_ids_split():
    event = "05-29 22h a10.b1001.c2.d5 credit_score=750 x-ray"
    tok = train_tokenizer([event] * 10, 200)
    words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(event)]
    assert words == ["▁05-29", "▁22h", "▁a10", ".", "b1001", ".", "c2", ".", "d5",
                     "▁credit_score", "=", "750", "▁x", "-", "ray"]
    # A frequent date is one token, so an event's date costs one position of the budget.
    assert tok.encode("05-29 22h", add_special_tokens=False).tokens == ["▁05-29", "▁22h"]


def test_foreign_tokenizer_gets_the_special_tokens(tmp_path):
    """A tokenizer that never heard of the template (as a pretrained one) gets its tokens."""
    bare = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    bare.save(str(tmp_path / "t.json"))
    loaded = load_tokenizer(tmp_path / "t.json")
    ids = special_ids(loaded)
    assert ids.user >= 3 and loaded.encode("hello <USER>").ids == [0, ids.user]


def test_tokenizer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "nope.json")


def test_world_users_fit_the_budget(world, tok):
    table = pq.read_table(world / "users-00000.parquet").slice(0, 40)
    users = UserColumns(table)
    t = make_template(tok, max_tokens=256)
    t.tabular_names = [f"f{i}" for i in range(users.tabular.shape[1])]
    lengths = [len(t.encode(users, i, "What will this user most likely do next period?").input_ids)
               for i in range(len(users))]
    assert max(lengths) <= 256 and np.mean(lengths) > 200  # long histories fill the budget


def test_memoised_pieces_equal_whole_phrase_encoding(world, tok):
    users = UserColumns(pq.read_table(world / "users-00000.parquet").slice(0, 20))
    t = make_template(tok)
    checked = 0
    for m in EVENT_MODALITIES:
        ev = users.history[m]
        lo, hi = ev.span(0)[0], ev.span(19)[1]
        pieces = event_pieces(BUILTIN_MODALITIES[m], ev, lo, hi)
        whole = [e.ids for e in tok.encode_batch([" ".join(p) for p in pieces],
                                                 add_special_tokens=False)]
        assert t._encode(pieces) == whole
        checked += len(pieces)
    assert checked > 500

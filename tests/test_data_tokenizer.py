"""The tiny model's tokenizer: special tokens, digits, round trips, chat template, length budget,
and loading through transformers."""

import json

import pytest

from h1r.data.synth import build_curriculum
from h1r.data.tokenizer_train import chat_texts, length_table, train_from_jsonl, train_tokenizer
from h1r.errors import DataError
from h1r.tokenizer import SPECIAL_TOKENS, load_tokenizer
from h1r.utils.io import write_jsonl

MAX_TRACE_TOKENS = 120  # the demo's budget at the hardest level
MAX_PROMPT_TOKENS = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    rows = build_curriculum(seed=0, train_per_level=40, test_per_level=10, traces_per_problem=3)
    write_jsonl(d / "train.jsonl", rows["train"])
    train_from_jsonl(d / "train.jsonl", d / "tok", vocab_size=512)
    return d, rows


def test_special_tokens_are_single_fixed_ids(corpus):
    d, _ = corpus
    tok = load_tokenizer(d / "tok")
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.encode(f"a{t}b")[1] == i and len(tok.encode(t)) == 1
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2 and tok.token_to_id("<|im_end|>") in tok.stop_token_ids
    cfg = json.loads((d / "tok" / "tokenizer_config.json").read_text())
    flags = {v["content"]: v["special"] for v in cfg["added_tokens_decoder"].values()}
    assert flags == {t: t not in ("<think>", "</think>") for t in SPECIAL_TOKENS}
    assert 300 < tok.vocab_size <= 512


def test_digits_are_split_one_per_token(corpus):
    tok = load_tokenizer(corpus[0] / "tok")
    ids = tok.encode("x=12345/(-67)")
    digits = [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()]
    assert digits == list("1234567")


def test_round_trip(corpus):
    d, rows = corpus
    tok = load_tokenizer(d / "tok")
    texts = [tok.apply_chat_template(r["messages"], add_generation_prompt=False) for r in rows["train"][:300]]
    texts += ["unseen: héllo ∑ 😀\ttabs  and\n\nnewlines", "Compute 9^99 mod 7."]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_chat_template(corpus):
    d, rows = corpus
    tok = load_tokenizer(d / "tok")
    row = rows["test"][0]
    prompt = tok.apply_chat_template(row["messages"], add_generation_prompt=True)
    assert prompt == f"<|begin_of_text|><|im_start|>user\n{row['messages'][0]['content']}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True)
    assert ids[0] == tok.bos_token_id and ids[1] == tok.token_to_id("<|im_start|>")
    full = tok.apply_chat_template(rows["train"][0]["messages"], add_generation_prompt=False)
    assert "\n<think>\n" in full and full.endswith("}<|im_end|>\n")


def test_token_lengths_within_the_tiny_budget(corpus):
    d, rows = corpus
    tok = load_tokenizer(d / "tok")
    table = length_table(tok, rows["train"])
    assert sorted(table) == [1, 2, 3, 4, 5]
    for level, (prompt_mean, prompt_max, trace_mean, trace_max) in table.items():
        assert prompt_max <= MAX_PROMPT_TOKENS and trace_max <= MAX_TRACE_TOKENS, (level, table[level])
    assert table[5][2] > 2 * table[1][2]  # the hard levels are much longer
    assert table[1][2] < 40  # easy traces: a few dozen tokens


def test_loads_in_transformers(corpus):
    transformers = pytest.importorskip("transformers")
    d, rows = corpus
    ours = load_tokenizer(d / "tok")
    auto = transformers.AutoTokenizer.from_pretrained(str(d / "tok"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tok" / "tokenizer.json"))
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == (ours.bos_token, ours.eos_token, ours.pad_token)
    for row in rows["train"][:50]:
        text = auto.apply_chat_template(row["messages"], tokenize=False)
        assert text == ours.apply_chat_template(row["messages"], add_generation_prompt=False)
        ids = ours.encode(text)
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert fast(text, add_special_tokens=False)["input_ids"] == ids
        assert auto.decode(ids) == text
    assert auto.decode(ours.encode("<think>\n1+1=2\n</think>\n"), skip_special_tokens=True).startswith("<think>")


def test_training_inputs_are_checked(tmp_path):
    with pytest.raises(DataError, match="vocab size"):
        train_tokenizer(["abc"], vocab_size=100)
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "prompt": "no messages"}\n')
    with pytest.raises(DataError, match="row 1 has no 'messages'"):
        train_from_jsonl(tmp_path / "bad.jsonl", tmp_path / "out")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        train_from_jsonl(tmp_path / "empty.jsonl", tmp_path / "out")
    with pytest.raises(DataError, match="no such file"):
        train_from_jsonl(tmp_path / "missing.jsonl", tmp_path / "out")


def test_added_tokens_stay_out_of_the_merges():
    pieces = list(chat_texts([{"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "<think>\nok\n</think>\n\\boxed{1}"}]}]))
    assert not any(t in p for p in pieces for t in SPECIAL_TOKENS)
    assert "".join(pieces) == "user\nhi\nassistant\n\nok\n\n\\boxed{1}\n"

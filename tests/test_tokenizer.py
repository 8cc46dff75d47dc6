import pytest

from h1r.errors import CheckpointError
from h1r.tokenizer import load_tokenizer
from tests.helpers import tiny_tokenizer_dir


def test_chat_template_and_special_tokens(tmp_path):
    tok = load_tokenizer(tiny_tokenizer_dir(tmp_path))
    msgs = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "<think> w3 </think> w4"},
            {"role": "user", "content": "w5"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|im_start|>user\nw1 w2<|im_end|>\n<|im_start|>assistant\nw4<|im_end|>\n"
                    "<|im_start|>user\nw5<|im_end|>\n<|im_start|>assistant\n")  # old reasoning stripped
    ids = tok.apply_chat_template(msgs[:1], tokenize=True)
    assert ids[0] == tok.bos_token_id and tok.token_to_id("<|im_start|>") in ids
    assert set(tok.stop_token_ids) == {tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|im_end|>")}
    assert tok.decode(tok.encode("w1 w2")) .replace(" ", "") == "w1w2"


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_bad_messages(tmp_path):
    tok = load_tokenizer(tiny_tokenizer_dir(tmp_path))
    with pytest.raises(ValueError, match="message 0 must be an object"):
        tok.apply_chat_template([{"content": "x"}])


TEXT = "héllo wörld: 世界 🙂 x² ≤ √3"


def test_token_bytes_reassemble_utf8_byte_level(tmp_path):
    """Byte-level BPE splits multi-byte characters across tokens: each token's bytes (OpenAI's logprob
    `bytes`) must be its raw bytes, not U+FFFD, so that clients can join them back into the text."""
    from h1r.data.tokenizer_train import save_tokenizer, train_tokenizer

    tok = load_tokenizer(save_tokenizer(train_tokenizer(["hello world " * 20, "abc def"], vocab_size=300), tmp_path))
    ids = tok.encode(TEXT)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens are partial characters
    assert b"".join(tok.token_bytes(i) for i in ids) == TEXT.encode("utf-8")
    assert tok.token_bytes(tok.token_to_id("<|im_end|>")) == b"<|im_end|>"


def test_token_bytes_byte_fallback_metaspace(tmp_path):
    """SentencePiece-style BPE (Metaspace, <0xHH> byte fallback), as Llama-family tokenizers ship."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    for w in ["▁", "h", "é", "l", "o", "w", "ö", "r", "d", ":", "x"]:
        vocab[w] = len(vocab)
    t = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    ids = tok.encode(TEXT)
    assert any(tok.id_to_token(i).startswith("<0x") for i in ids)
    assert b"".join(tok.token_bytes(i) for i in ids) == (" " + TEXT).encode("utf-8")  # "▁" is a space

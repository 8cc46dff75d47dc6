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

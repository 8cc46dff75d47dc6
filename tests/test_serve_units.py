"""The server's pure parts: reasoning routing, choice text (stop strings, hold-back, streaming ==
whole), Prometheus text, and the error objects made from validation errors."""

import random

import pytest

from h1r.serve.errors import from_validation_error
from h1r.serve.metrics import Counter, Histogram, parse_text
from h1r.serve.protocol import ChatCompletionRequest, CompletionRequest
from h1r.serve.reasoning import CONTENT, REASONING, ReasoningParser, ReasoningRouter
from h1r.serve.text import ChoiceText
from tests.helpers import tiny_tokenizer_dir

START, END = 5, 6  # <think>, </think> in the tiny tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from h1r.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir(tmp_path_factory.mktemp("tok")))


def ids(tok, text):
    return tok.encode(text)


def test_router_follows_deepseek_r1_rules():
    r = ReasoningRouter(START, END)
    assert r.route([START, 10, 11]) == [(REASONING, [10, 11])]  # <think> dropped, reasoning from the start
    assert r.route([12, END]) == [(REASONING, [12]), (CONTENT, [])]  # the switch shows even without content
    assert r.route([13, END, 14]) == [(CONTENT, [13, END, 14])]  # a later </think> is plain (special) text
    no_think = ReasoningRouter(START, END)  # no </think>: everything is reasoning
    assert no_think.route([10, 11]) == [(REASONING, [10, 11])]
    off = ReasoningRouter(START, END, enabled=False)
    assert off.route([START, 10, END, 11]) == [(CONTENT, [START, 10, END, 11])]


def test_parser_names_its_token_and_option(tok):
    assert ReasoningParser(tok).end_id == tok.token_to_id("</think>") == END

    class NoThink:
        def token_to_id(self, t):
            return None

    with pytest.raises(Exception, match="--reasoning-parser none"):
        ReasoningParser(NoThink())
    with pytest.raises(Exception, match="unknown reasoning parser"):
        ReasoningParser(tok, "qwen3")


def _feed(tok, tokens, chunks, stop=(), split=True, include=False):
    ct = ChoiceText(tok, ids(tok, "user w1"), ReasoningRouter(START, END, split), list(stop), include)
    out = {REASONING: "", CONTENT: ""}
    i = 0
    for n in chunks:
        for k, v in ct.add(tokens[i:i + n]).items():
            out[k] += v
        i += n
    for k, v in ct.finish().items():
        out[k] += v
    return ct, out


@pytest.mark.parametrize("stop", [(), ("w3 w4",), ("w9", "w4 w5")])
def test_streamed_text_equals_whole_text(tok, stop):
    tokens = [START] + ids(tok, "w1 w2 w3") + [END] + ids(tok, "w4 w5 w6 w7")
    whole, _ = _feed(tok, tokens, [len(tokens)], stop)
    rng = random.Random(0)
    for _ in range(20):
        chunks, left = [], len(tokens)
        while left:
            chunks.append(min(left, rng.randint(1, 3)))
            left -= chunks[-1]
        _, streamed = _feed(tok, tokens, chunks, stop)
        assert streamed[REASONING] == whole.reasoning
        assert streamed[CONTENT] == (whole.content or "")


def test_reasoning_split_and_stop_strings(tok):
    tokens = [START] + ids(tok, "w1 w2") + [END] + ids(tok, "w3 w4 w5")
    ct, _ = _feed(tok, tokens, [1] * len(tokens))
    assert ct.reasoning.split() == ["w1", "w2"] and ct.content.split() == ["w3", "w4", "w5"]
    cut, _ = _feed(tok, tokens, [1] * len(tokens), stop=["w4"])
    assert cut.content.split() == ["w3"] and "w4" not in cut.content and cut.stopped
    kept, _ = _feed(tok, tokens, [1] * len(tokens), stop=["w4"], include=True)
    assert kept.content.rstrip().endswith("w4") and "w5" not in kept.content
    unfinished, _ = _feed(tok, [START] + ids(tok, "w1 w2"), [3])
    assert unfinished.content is None and unfinished.reasoning.split() == ["w1", "w2"]
    plain, _ = _feed(tok, tokens, [len(tokens)], split=False)
    assert plain.reasoning is None and plain.text.split() == ["w1", "w2", "w3", "w4", "w5"]


def test_hold_back_keeps_a_partial_stop_string_out_of_the_stream(tok):
    ct = ChoiceText(tok, ids(tok, "w1"), ReasoningRouter(START, END, False), ["w2 w3"])
    first = ct.add(ids(tok, "w1 w2")).get(CONTENT, "")
    assert "w2" not in first  # " w2" could be the start of "w2 w3": held back
    second = ct.add(ids(tok, "w3")).get(CONTENT, "") + ct.finish().get(CONTENT, "")
    assert ct.stopped and first + second == ct.text and ct.text.split() == ["w1"]


def test_finish_releases_a_trailing_partial_character(tmp_path):
    """A choice cut off (length) in the middle of a multi-byte character still returns its bytes (as
    U+FFFD, like decode), streamed or not."""
    from h1r.data.tokenizer_train import save_tokenizer, train_tokenizer
    from h1r.tokenizer import load_tokenizer

    bl = load_tokenizer(save_tokenizer(train_tokenizer(["hello world " * 20], vocab_size=300), tmp_path))
    tokens = bl.encode("ab 世界")[:-1]  # ends inside a character
    assert bl.decode(tokens).endswith("\ufffd")
    for pieces in ([tokens], [[t] for t in tokens]):  # whole, then token by token
        ct = ChoiceText(bl, bl.encode("x"), ReasoningRouter(None, None, False), [])
        streamed = "".join(ct.add(p).get(CONTENT, "") for p in pieces) + ct.finish().get(CONTENT, "")
        assert streamed == ct.text == bl.decode(tokens)


def test_prometheus_text():
    c = Counter("x_total", "help", ("endpoint", "status"))
    c.inc("chat", "200")
    c.inc("chat", "200")
    c.inc("chat", 'we"ird')
    h = Histogram("lat_seconds", "help", ("endpoint",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 5.0):
        h.observe(v, "chat")
    text = "\n".join(c.render() + h.render())
    assert "# TYPE x_total counter" in text and "# TYPE lat_seconds histogram" in text
    vals = parse_text(text)
    assert vals['x_total{endpoint="chat",status="200"}'] == 2
    assert vals['x_total{endpoint="chat",status="we\\"ird"}'] == 1
    assert vals['lat_seconds_bucket{endpoint="chat",le="0.1"}'] == 1  # cumulative buckets
    assert vals['lat_seconds_bucket{endpoint="chat",le="1"}'] == 3
    assert vals['lat_seconds_bucket{endpoint="chat",le="+Inf"}'] == 4 == vals['lat_seconds_count{endpoint="chat"}']
    assert vals['lat_seconds_sum{endpoint="chat"}'] == pytest.approx(6.05)


@pytest.mark.parametrize("body, param, words", [
    ('{"prompt": "x", "temperature": "hot"}', "temperature", "valid number"),
    ('{"prompt": "x", "n": 1.5}', "n", "valid integer"),
    ('{"prompt": "x", "top_p": 0}', "top_p", "greater than 0"),
    ('{"prompt": 3}', "prompt", "must be one of"),
    ('{"prompt": "x", "stop": [1]}', "stop", "must be one of"),
    ('{"temperature": 1}', "prompt", "required"),
    ('{"prompt": "x", "logprobs": 21}', "logprobs", "less than or equal to 20"),
    ('[1, 2]', None, "JSON object"),
    ('{"prompt": ', None, "not valid JSON"),
])
def test_validation_errors_name_the_field(body, param, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        CompletionRequest.model_validate_json(body)
    err = from_validation_error(e.value)
    assert err.status == 400 and err.param == param and words in err.message


def test_chat_message_errors_point_into_the_list():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate_json('{"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}')
    err = from_validation_error(e.value)
    assert err.param == "messages.1.role" and "required" in err.message


def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    from h1r.cli import main

    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-body-bytes", "10"]) == 2
    assert "--max-body-bytes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--api-key" in capsys.readouterr().out
